package main_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// subscribe opens a GetContainerEvents stream and waits for its headers,
// which tripodd sends once the subscription is in place.
func subscribe(t *testing.T, rt runtimeapi.RuntimeServiceClient) runtimeapi.RuntimeService_GetContainerEventsClient {
	t.Helper()
	ctx, cancel := context.WithCancel(testCtx(t))
	t.Cleanup(cancel)
	s, err := rt.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatalf("GetContainerEvents: %v", err)
	}
	if _, err := s.Header(); err != nil {
		t.Fatalf("GetContainerEvents headers: %v", err)
	}
	return s
}

// ev is an event as the tests compare them.
type ev struct {
	id  string
	typ runtimeapi.ContainerEventType
}

func (e ev) String() string {
	return fmt.Sprintf("%s:%s", e.id[:8], strings.TrimSuffix(strings.TrimPrefix(e.typ.String(), "CONTAINER_"), "_EVENT"))
}

// recvUntil reads events until one matches last (included).
func recvUntil(t *testing.T, s runtimeapi.RuntimeService_GetContainerEventsClient, last ev) []*runtimeapi.ContainerEventResponse {
	t.Helper()
	var out []*runtimeapi.ContainerEventResponse
	for {
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("events after %v: %v", out, err)
		}
		out = append(out, r)
		if r.ContainerId == last.id && r.ContainerEventType == last.typ {
			return out
		}
	}
}

func evs(rs []*runtimeapi.ContainerEventResponse) []ev {
	var out []ev
	for _, r := range rs {
		out = append(out, ev{r.ContainerId, r.ContainerEventType})
	}
	return out
}

func findStatus(r *runtimeapi.ContainerEventResponse, id string) *runtimeapi.ContainerStatus {
	for _, st := range r.ContainersStatuses {
		if st.Id == id {
			return st
		}
	}
	return nil
}

const (
	evCreated = runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT
	evStarted = runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT
	evStopped = runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT
	evDeleted = runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT
)

// TestContainerEventsTwoSubscribers: two subscribers see the same
// sequence for a pod's and a container's whole life, in order (a process
// that exits at once still reports STARTED before STOPPED), each event
// with the pod's status and its containers' statuses of that moment.
func TestContainerEventsTwoSubscribers(t *testing.T) {
	e := newPodEnv(t)
	ctx := testCtx(t)
	s1, s2 := subscribe(t, e.rt), subscribe(t, e.rt)

	pod := e.runPod("ev")
	c := e.create(pod, "c", "sh", "-c", "exit 3")
	e.start(c)
	e.waitExited(c)
	if _, err := e.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: c}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	want := []ev{{pod, evCreated}, {pod, evStarted}, {c, evCreated}, {c, evStarted}, {c, evStopped}, {c, evDeleted},
		{pod, evStopped}, {pod, evDeleted}}
	got1 := recvUntil(t, s1, want[len(want)-1])
	got2 := recvUntil(t, s2, want[len(want)-1])
	if fmt.Sprint(evs(got1)) != fmt.Sprint(want) || fmt.Sprint(evs(got2)) != fmt.Sprint(want) {
		t.Fatalf("sequences:\n got1 %v\n got2 %v\n want %v", evs(got1), evs(got2), want)
	}
	for _, r := range got1 {
		if r.PodSandboxStatus.GetMetadata().GetName() != "ev" || r.PodSandboxStatus.Id != pod || r.CreatedAt == 0 {
			t.Fatalf("event %v without its pod status: %v", ev{r.ContainerId, r.ContainerEventType}, r.PodSandboxStatus)
		}
	}
	if st := got1[1].PodSandboxStatus.State; st != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod STARTED event: pod is %v", st)
	}
	if st := findStatus(got1[2], c); st == nil || st.State != runtimeapi.ContainerState_CONTAINER_CREATED {
		t.Fatalf("CREATED event's container status: %v", st)
	}
	st := findStatus(got1[4], c)
	if st == nil || st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 3 || st.Reason != "Error" || st.FinishedAt == 0 {
		t.Fatalf("STOPPED event's container status: %v", st)
	}
	if findStatus(got1[5], c) != nil {
		t.Fatal("DELETED event still lists the container")
	}
	if st := got1[6].PodSandboxStatus.State; st != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Fatalf("pod STOPPED event: pod is %v", st)
	}
	for i := 1; i < len(got1); i++ {
		if got1[i].CreatedAt < got1[i-1].CreatedAt {
			t.Fatalf("event times go back: %v", evs(got1))
		}
	}
}

// TestContainerEventsAfterRestart: a container that exits while tripodd is
// down (kill -9) is reported STOPPED, with its exit code, to subscribers
// that connect after the restart (kubelet reconnecting), in agreement with
// ListContainers; until the container is removed. A container still
// running across the restart reports its later exit at once, without
// anyone asking for its status.
func TestContainerEventsAfterRestart(t *testing.T) {
	e := newPodEnv(t)
	ctx := testCtx(t)
	pod := e.runPod("evr")
	loop := []string{"sh", "-c", "trap 'exit 5' TERM; echo ready; while true; do sleep 0.1; done"}
	downed := e.create(pod, "down", loop...)
	e.start(downed)
	kept := e.create(pod, "kept", loop...)
	e.start(kept)
	waitFor(t, filepath.Join(e.logDir, "evr", "down.log"), "ready")
	waitFor(t, filepath.Join(e.logDir, "evr", "kept.log"), "ready")
	pidDown := containerPid(t, statusInfo(t, e, downed))
	pidKept := containerPid(t, statusInfo(t, e, kept))

	e.d.kill()
	if err := syscall.Kill(pidDown, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, filepath.Join(e.n.state, "runtime", "containers", downed, "exit.json"), "code")
	e.boot()

	lc, err := e.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_EXITED}}})
	if err != nil || len(lc.Containers) != 1 || lc.Containers[0].Id != downed {
		t.Fatalf("exited containers after restart: %v %v", lc.GetContainers(), err)
	}
	for i, s := range []runtimeapi.RuntimeService_GetContainerEventsClient{subscribe(t, e.rt), subscribe(t, e.rt)} {
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		st := findStatus(r, downed)
		if r.ContainerId != downed || r.ContainerEventType != evStopped || st == nil || st.ExitCode != 5 ||
			st.State != runtimeapi.ContainerState_CONTAINER_EXITED || r.PodSandboxStatus.GetId() != pod {
			t.Fatalf("subscriber %d's first event after the restart: %v", i, r)
		}
		if st := findStatus(r, kept); st == nil || st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Fatalf("the running container in that event: %v", st)
		}
	}

	live := subscribe(t, e.rt)
	recvUntil(t, live, ev{downed, evStopped}) // its replay
	if err := syscall.Kill(pidKept, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := recvUntil(t, live, ev{kept, evStopped})
	if st := findStatus(r[len(r)-1], kept); st == nil || st.ExitCode != 5 {
		t.Fatalf("exit of a container adopted at the restart: %v", st)
	}

	if _, err := e.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: downed}); err != nil {
		t.Fatal(err)
	}
	recvUntil(t, live, ev{downed, evDeleted})
	// Removed: no longer replayed. The next subscriber's first event is
	// the next thing that happens.
	late := subscribe(t, e.rt)
	next := e.create(pod, "next", "sleep", "1000")
	first, err := late.Recv()
	if err != nil || first.ContainerId != next || first.ContainerEventType != evCreated {
		t.Fatalf("late subscriber's first event: %v %v", first, err)
	}
}

// TestContainerEventsSlowSubscriber: a subscriber that reads nothing does
// not hold up the runtime: containers are created, started and removed
// while it sleeps, another subscriber sees every event, and the sleeper,
// once it reads, gets what was buffered for it, then ResourceExhausted.
func TestContainerEventsSlowSubscriber(t *testing.T) {
	runtimePrereqs(t)
	e := newPodEnvWith(t, cnitest.BinDir(t), func(e *podEnv, _ *imagetest.Registry) {
		f, err := os.OpenFile(filepath.Join(e.n.state, "none.toml"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		// none.toml ends in its [runtime] table.
		fmt.Fprintln(f, "event_buffer = 8")
	})
	ctx := testCtx(t)
	// The sleeper's connection has a fixed 64 KiB flow-control window, so
	// tripodd's sends to it block soon and its buffer fills.
	conn, err := grpc.NewClient("unix://"+e.n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	slow := subscribe(t, runtimeapi.NewRuntimeServiceClient(conn))
	fast := subscribe(t, e.rt)
	type result struct {
		rs  []*runtimeapi.ContainerEventResponse
		err error
	}
	pod := e.runPod("evs")
	const n = 20
	var last string
	fastDone := make(chan result, 1)
	go func() {
		var rs []*runtimeapi.ContainerEventResponse
		for len(rs) < 2+4*n {
			r, err := fast.Recv()
			if err != nil {
				fastDone <- result{rs, err}
				return
			}
			rs = append(rs, r)
		}
		fastDone <- result{rs, nil}
	}()
	big := strings.Repeat("x", 8<<10) // every event carries it: 8 KiB or more each
	for i := range n {
		resp, err := e.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, SandboxConfig: e.podConfig("evs"),
			Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: fmt.Sprintf("c%d", i)},
				Image: &runtimeapi.ImageSpec{Image: e.image}, Command: []string{"sleep", "1000"}, Annotations: map[string]string{"big": big}}})
		if err != nil {
			t.Fatalf("CreateContainer %d with a stalled subscriber: %v", i, err)
		}
		e.start(resp.ContainerId)
		if _, err := e.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: resp.ContainerId}); err != nil {
			t.Fatal(err)
		}
		last = resp.ContainerId
	}
	res := <-fastDone
	if res.err != nil {
		t.Fatalf("fast subscriber after %d events: %v", len(res.rs), res.err)
	}
	got := evs(res.rs)
	if got[0] != (ev{pod, evCreated}) || got[1] != (ev{pod, evStarted}) || got[len(got)-1] != (ev{last, evDeleted}) {
		t.Fatalf("fast subscriber's events: %v", got)
	}
	for i := 2; i < len(got); i += 4 {
		id := got[i].id
		if fmt.Sprint(got[i:i+4]) != fmt.Sprint([]ev{{id, evCreated}, {id, evStarted}, {id, evStopped}, {id, evDeleted}}) {
			t.Fatalf("fast subscriber's events out of order at %d: %v", i, got)
		}
	}
	var slowGot int
	for {
		_, err := slow.Recv()
		if err != nil {
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("slow subscriber ended with %v after %d events, want ResourceExhausted", err, slowGot)
			}
			break
		}
		slowGot++
	}
	if slowGot == 0 || slowGot >= len(got) {
		t.Fatalf("slow subscriber got %d of %d events before it was cut off", slowGot, len(got))
	}
}
