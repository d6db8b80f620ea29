package server

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Streams hands out the single-use URLs of streaming sessions.
type Streams interface {
	GetExec(*runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error)
	GetAttach(*runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error)
	GetPortForward(*runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error)
}

// SetStreams sets the streaming server behind Exec, Attach and PortForward.
func (s *RuntimeServer) SetStreams(st Streams) { s.streams = st }

// Exec returns the URL of an exec session in a running container. The
// container is checked here so that a wrong ID or state is an error of
// this call, not of the session.
func (s *RuntimeServer) Exec(ctx context.Context, req *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error) {
	if req.ContainerId == "" {
		return nil, status.Error(codes.InvalidArgument, "container_id: required")
	}
	if len(req.Cmd) == 0 {
		return nil, status.Error(codes.InvalidArgument, "cmd: required")
	}
	if s.streams == nil {
		return nil, status.Error(codes.Unavailable, "no streaming server")
	}
	if err := s.m.CheckRunning(req.ContainerId); err != nil {
		return nil, toStatus(err)
	}
	return s.streams.GetExec(req)
}

// Attach returns the URL of an attach session to a running container.
func (s *RuntimeServer) Attach(ctx context.Context, req *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	if req.ContainerId == "" {
		return nil, status.Error(codes.InvalidArgument, "container_id: required")
	}
	if s.streams == nil {
		return nil, status.Error(codes.Unavailable, "no streaming server")
	}
	if err := s.m.CheckRunning(req.ContainerId); err != nil {
		return nil, toStatus(err)
	}
	return s.streams.GetAttach(req)
}

// PortForward returns the URL of a port-forward session to a ready pod.
func (s *RuntimeServer) PortForward(ctx context.Context, req *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	if req.PodSandboxId == "" {
		return nil, status.Error(codes.InvalidArgument, "pod_sandbox_id: required")
	}
	for _, p := range req.Port {
		if p <= 0 || p > 65535 {
			return nil, status.Errorf(codes.InvalidArgument, "port: %d is out of range", p)
		}
	}
	if s.streams == nil {
		return nil, status.Error(codes.Unavailable, "no streaming server")
	}
	if err := s.m.CheckPodReady(req.PodSandboxId); err != nil {
		return nil, toStatus(err)
	}
	return s.streams.GetPortForward(req)
}
