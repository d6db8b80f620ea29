package server

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/events"
	"github.com/tripod-dev/tripod/internal/pod"
)

var eventTypes = map[pod.EventKind]runtimeapi.ContainerEventType{
	pod.ContainerCreated: runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT,
	pod.ContainerStarted: runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT,
	pod.ContainerStopped: runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT,
	pod.ContainerDeleted: runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT,
}

// GetContainerEvents streams container and pod sandbox lifecycle events
// until the client goes away. Each carries the pod's status and all its
// containers' statuses as they were right after the transition. A
// subscriber that falls more than the configured buffer behind is cut off
// with ResourceExhausted: it has missed events and must relist (kubelet's
// evented PLEG falls back to relisting when its stream fails).
func (s *RuntimeServer) GetContainerEvents(_ *runtimeapi.GetEventsRequest, stream runtimeapi.RuntimeService_GetContainerEventsServer) error {
	replay, sub := s.m.Subscribe()
	defer sub.Close()
	// Headers out now: a client that waits for them knows it is
	// subscribed before it acts.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for _, e := range replay {
		if err := stream.Send(criEvent(e)); err != nil {
			return err
		}
	}
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-sub.C():
			if !ok {
				if errors.Is(sub.Err(), events.ErrOverflow) {
					return status.Error(codes.ResourceExhausted, "container events: this subscriber fell behind and missed events; relist and subscribe again")
				}
				return nil
			}
			if err := stream.Send(criEvent(e)); err != nil {
				return err
			}
		}
	}
}

func criEvent(e pod.Event) *runtimeapi.ContainerEventResponse {
	out := &runtimeapi.ContainerEventResponse{ContainerId: e.ContainerID, ContainerEventType: eventTypes[e.Kind], CreatedAt: e.Time}
	if e.Pod.ID != "" {
		out.PodSandboxStatus = podStatus(&e.Pod)
	}
	for i := range e.Containers {
		out.ContainersStatuses = append(out.ContainersStatuses, containerStatus(&e.Containers[i]))
	}
	return out
}
