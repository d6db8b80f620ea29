package server

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CheckpointContainer dumps a running container with CRIU into an archive
// at the location given (kubelet's checkpoint API names a .tar under
// /var/lib/kubelet/checkpoints); the container keeps running.
func (s *RuntimeServer) CheckpointContainer(ctx context.Context, req *runtimeapi.CheckpointContainerRequest) (*runtimeapi.CheckpointContainerResponse, error) {
	if req.ContainerId == "" {
		return nil, status.Error(codes.InvalidArgument, "container_id: required")
	}
	if req.Location == "" {
		return nil, status.Error(codes.InvalidArgument, "location: required")
	}
	if err := s.m.Checkpoint(ctx, req.ContainerId, req.Location, time.Duration(req.Timeout)*time.Second); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.CheckpointContainerResponse{}, nil
}
