package main_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// nriEvent is one call a test plugin received.
type nriEvent struct{ op, pod, ctr string }

// testPlugin is a real NRI plugin (containerd/nri's stub) run by the test
// against tripodd's NRI socket: it records every event and can adjust the
// containers it sees created.
type testPlugin struct {
	mu     sync.Mutex
	events []nriEvent
	// synced is closed after Synchronize; syncPods and syncCtrs are what
	// it was given.
	synced             chan struct{}
	syncPods, syncCtrs []string
	// adjust, if set, makes CreateContainer's adjustment.
	adjust func(*api.Container) *api.ContainerAdjustment
	// hook, if set, runs first in every event (c is nil for pod events);
	// its error is the event's.
	hook func(ctx context.Context, op string, c *api.Container) error
	// closed is closed when the runtime ends the plugin's connection.
	closed chan struct{}
	stub   stub.Stub
}

// startPlugin connects a plugin named idx-name to sock and waits until it
// is synchronized; it is stopped when the test ends.
func startPlugin(t *testing.T, sock, idx, name string, setup func(*testPlugin)) *testPlugin {
	t.Helper()
	p := &testPlugin{synced: make(chan struct{}), closed: make(chan struct{})}
	if setup != nil {
		setup(p)
	}
	var once sync.Once
	s, err := stub.New(p, stub.WithPluginName(name), stub.WithPluginIdx(idx), stub.WithSocketPath(sock),
		stub.WithLogger(quietLog{}), stub.WithOnClose(func() { once.Do(func() { close(p.closed) }) }))
	if err != nil {
		t.Fatal(err)
	}
	p.stub = s
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-p.synced:
	case err := <-done:
		done <- err
		t.Fatalf("plugin %s-%s: %v", idx, name, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("plugin %s-%s was never synchronized", idx, name)
	}
	return p
}

func (p *testPlugin) record(ctx context.Context, op string, pod *api.PodSandbox, c *api.Container) error {
	p.mu.Lock()
	p.events = append(p.events, nriEvent{op, pod.GetId(), c.GetId()})
	hook := p.hook
	p.mu.Unlock()
	if hook != nil {
		return hook(ctx, op, c)
	}
	return nil
}

// eventsOf lists the events about pod (and its containers), in order.
func (p *testPlugin) eventsOf(pod string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, e := range p.events {
		if e.pod == pod {
			out = append(out, e.op)
		}
	}
	return out
}

// waitEvents waits (synchronisation only) until the events about pod are
// at least n, and returns them.
func (p *testPlugin) waitEvents(t *testing.T, pod string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ev := p.eventsOf(pod)
		if len(ev) >= n || time.Now().After(deadline) {
			return ev
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *testPlugin) Synchronize(ctx context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	p.mu.Lock()
	for _, x := range pods {
		p.syncPods = append(p.syncPods, x.Id)
	}
	for _, x := range ctrs {
		p.syncCtrs = append(p.syncCtrs, x.Id)
	}
	p.mu.Unlock()
	close(p.synced)
	return nil, nil
}

func (p *testPlugin) RunPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return p.record(ctx, "RunPodSandbox", pod, nil)
}
func (p *testPlugin) StopPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return p.record(ctx, "StopPodSandbox", pod, nil)
}
func (p *testPlugin) RemovePodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return p.record(ctx, "RemovePodSandbox", pod, nil)
}

func (p *testPlugin) CreateContainer(ctx context.Context, pod *api.PodSandbox, c *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	if err := p.record(ctx, "CreateContainer", pod, c); err != nil {
		return nil, nil, err
	}
	if p.adjust != nil {
		return p.adjust(c), nil, nil
	}
	return nil, nil, nil
}

func (p *testPlugin) PostCreateContainer(ctx context.Context, pod *api.PodSandbox, c *api.Container) error {
	return p.record(ctx, "PostCreateContainer", pod, c)
}
func (p *testPlugin) StartContainer(ctx context.Context, pod *api.PodSandbox, c *api.Container) error {
	return p.record(ctx, "StartContainer", pod, c)
}
func (p *testPlugin) PostStartContainer(ctx context.Context, pod *api.PodSandbox, c *api.Container) error {
	return p.record(ctx, "PostStartContainer", pod, c)
}
func (p *testPlugin) StopContainer(ctx context.Context, pod *api.PodSandbox, c *api.Container) ([]*api.ContainerUpdate, error) {
	return nil, p.record(ctx, "StopContainer", pod, c)
}
func (p *testPlugin) UpdateContainer(ctx context.Context, pod *api.PodSandbox, c *api.Container, r *api.LinuxResources) ([]*api.ContainerUpdate, error) {
	return nil, p.record(ctx, "UpdateContainer", pod, c)
}
func (p *testPlugin) PostUpdateContainer(ctx context.Context, pod *api.PodSandbox, c *api.Container) error {
	return p.record(ctx, "PostUpdateContainer", pod, c)
}
func (p *testPlugin) RemoveContainer(ctx context.Context, pod *api.PodSandbox, c *api.Container) error {
	return p.record(ctx, "RemoveContainer", pod, c)
}

// quietLog keeps the stub's logrus lines out of the test output.
type quietLog struct{}

func (quietLog) Debugf(context.Context, string, ...any) {}
func (quietLog) Infof(context.Context, string, ...any)  {}
func (quietLog) Warnf(context.Context, string, ...any)  {}
func (quietLog) Errorf(context.Context, string, ...any) {}

// execOut runs cmd in a container and returns its stdout; a non-zero exit
// fails the test.
func (e *podEnv) execOut(id string, cmd ...string) string {
	e.t.Helper()
	r, err := e.rt.ExecSync(testCtx(e.t), &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 30})
	if err != nil {
		e.t.Fatalf("exec %v: %v", cmd, err)
	}
	if r.ExitCode != 0 {
		e.t.Fatalf("exec %v: exit %d: %s%s", cmd, r.ExitCode, r.Stdout, r.Stderr)
	}
	return string(r.Stdout)
}

// TestNRIPlugin: a plugin connected to tripodd's NRI socket sees a pod's
// and a container's lifecycle in order, adjusts the container (an
// environment variable and a bind mount, seen from inside it), updates a
// running container's memory limit on its own (seen in its cgroup), and a
// plugin connecting later is handed the running pod and container.
func TestNRIPlugin(t *testing.T) {
	e := newPodEnv(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("from the plugin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	plug := startPlugin(t, e.n.nriSock(), "10", e.tag+"-watch", func(p *testPlugin) {
		p.adjust = func(c *api.Container) *api.ContainerAdjustment {
			adj := &api.ContainerAdjustment{}
			adj.AddEnv("TP_NRI", "adjusted-"+c.Name)
			adj.AddMount(&api.Mount{Destination: "/tp-nri", Type: "bind", Source: src, Options: []string{"rbind", "ro"}})
			return adj
		}
	})

	podID := e.runPod("nri")
	ctr := e.create(podID, "nri", "sleep", "3600")
	e.start(ctr)
	if got := e.execOut(ctr, "cat", "/tp-nri/hello"); got != "from the plugin\n" {
		t.Fatalf("plugin's mount: read %q", got)
	}
	env := e.execOut(ctr, "env")
	if !slices.Contains(strings.Split(env, "\n"), "TP_NRI=adjusted-nri") || !strings.Contains(env, "GREETING=hi") {
		t.Fatalf("plugin's env var missing (or the CRI's lost):\n%s", env)
	}

	// An update the plugin asks for on its own reaches the cgroup.
	const limit = 96 << 20
	up := &api.ContainerUpdate{}
	up.SetContainerId(ctr)
	up.SetLinuxMemoryLimit(limit)
	failed, err := plug.stub.UpdateContainers([]*api.ContainerUpdate{up})
	if err != nil || len(failed) > 0 {
		t.Fatalf("UpdateContainers: failed %v, %v", failed, err)
	}
	memFile := filepath.Join("/sys/fs/cgroup/memory", e.cgroup, ctr, "memory.limit_in_bytes")
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		memFile = filepath.Join("/sys/fs/cgroup", e.cgroup, ctr, "memory.max")
	}
	if b, err := os.ReadFile(memFile); err != nil || strings.TrimSpace(string(b)) != fmt.Sprint(limit) {
		t.Fatalf("memory limit after the plugin's update: %q, %v", b, err)
	}

	// The CRI's own resize passes through the plugins too.
	if _, err := e.rt.UpdateContainerResources(testCtx(t), &runtimeapi.UpdateContainerResourcesRequest{ContainerId: ctr,
		Linux: &runtimeapi.LinuxContainerResources{CpuShares: 512}}); err != nil {
		t.Fatal(err)
	}
	if got := cgroupUint(t, "cpu", filepath.Join(e.cgroup, ctr), "cpu.shares"); got != 512 {
		t.Fatalf("cpu.shares after UpdateContainerResources: %d", got)
	}
	// A plugin connecting now is handed what runs.
	late := startPlugin(t, e.n.nriSock(), "20", e.tag+"-late", nil)
	late.mu.Lock()
	pods, ctrs := late.syncPods, late.syncCtrs
	late.mu.Unlock()
	if !slices.Contains(pods, podID) || !slices.Contains(ctrs, ctr) {
		t.Fatalf("late plugin synchronized with pods %v, containers %v; want %s and %s", pods, ctrs, podID, ctr)
	}

	ctx := testCtx(t)
	if _, err := e.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: ctr, Timeout: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: ctr}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
	// A second stop is no new event.
	if _, err := e.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
	want := []string{"RunPodSandbox", "CreateContainer", "PostCreateContainer", "StartContainer", "PostStartContainer",
		"UpdateContainer", "PostUpdateContainer", "StopContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox"}
	if got := plug.waitEvents(t, podID, len(want)); !slices.Equal(got, want) {
		t.Fatalf("first plugin's events:\n got %v\nwant %v", got, want)
	}
	if got := late.waitEvents(t, podID, len(want[7:])); !slices.Equal(got, want[7:]) {
		t.Fatalf("late plugin's events:\n got %v\nwant %v", got, want[7:])
	}
}

// TestNRIPluginFailures: a plugin that hangs is dropped after the request
// timeout and the pod starts without it, while it still hangs; a plugin
// that rejects a container fails its creation, which leaves nothing
// behind; one whose stop and remove handlers fail cannot keep a pod from
// going.
func TestNRIPluginFailures(t *testing.T) {
	runtimePrereqs(t)
	e := newPodEnvConf(t, "[nri]\nplugin_request_timeout = '1s'\n", nil)

	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	hung := startPlugin(t, e.n.nriSock(), "10", e.tag+"-hung", func(p *testPlugin) {
		p.hook = func(ctx context.Context, op string, _ *api.Container) error {
			if op == "RunPodSandbox" {
				entered <- struct{}{}
				<-release // deaf to ctx: a plugin stuck for good
			}
			return nil
		}
	})
	podID := e.runPod("hung")
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the hung plugin never got RunPodSandbox")
	}
	// The pod is up while the plugin is still stuck in its handler.
	if st, err := e.rt.PodSandboxStatus(testCtx(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID}); err != nil ||
		st.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod after a hung plugin: %v %v", st, err)
	}
	close(release)
	select {
	case <-hung.closed:
	case <-time.After(30 * time.Second):
		t.Fatal("tripodd kept the hung plugin connected")
	}

	failing := startPlugin(t, e.n.nriSock(), "20", e.tag+"-failing", func(p *testPlugin) {
		p.hook = func(ctx context.Context, op string, c *api.Container) error {
			switch {
			case op == "CreateContainer" && c.GetName() == "rejected":
				return errors.New("tp: plugin rejects this container")
			case op == "StopContainer", op == "RemoveContainer", op == "StopPodSandbox", op == "RemovePodSandbox":
				return errors.New("tp: plugin fails on purpose")
			}
			return nil
		}
	})
	ctx := testCtx(t)
	bundles := func() int { return len(mustReadDir(t, filepath.Join(e.n.state, "runtime", "containers"))) }
	before := bundles()
	_, err := e.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: podID, SandboxConfig: e.podConfig("hung"),
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "rejected"},
			Image: &runtimeapi.ImageSpec{Image: e.image}, Command: []string{"sleep", "3600"}}})
	if err == nil || !strings.Contains(err.Error(), "tp: plugin rejects this container") {
		t.Fatalf("CreateContainer rejected by a plugin: %v", err)
	}
	if n := bundles(); n != before {
		t.Fatalf("a rejected container left %d bundle(s) behind", n-before)
	}
	if l, err := e.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); err != nil || len(l.Containers) != 0 {
		t.Fatalf("containers after a rejected creation: %v %v", l, err)
	}
	if strings.Contains(mountinfo(t), filepath.Join(e.n.state, "runtime", "containers")) {
		t.Fatal("a rejected container left its rootfs mounted")
	}

	ctr := e.create(podID, "victim", "sleep", "3600")
	e.start(ctr)
	if _, err := e.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatalf("stop with a failing plugin: %v", err)
	}
	if _, err := e.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatalf("remove with a failing plugin: %v", err)
	}
	if _, err := e.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctr}); err == nil {
		t.Fatal("container still there after its pod was removed")
	}
	want := []string{"CreateContainer", "CreateContainer", "PostCreateContainer", "StartContainer", "PostStartContainer",
		"StopContainer", "StopPodSandbox", "RemoveContainer", "RemovePodSandbox"}
	if got := failing.waitEvents(t, podID, len(want)); !slices.Equal(got, want) {
		t.Fatalf("failing plugin's events:\n got %v\nwant %v", got, want)
	}
}

func mountinfo(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// newPodEnvConf is newPodEnvWith with conf appended to the daemon's config
// file (which ends in its [runtime] table), before setup.
func newPodEnvConf(t *testing.T, conf string, setup func(*podEnv, *imagetest.Registry)) *podEnv {
	return newPodEnvWith(t, cnitest.BinDir(t), func(e *podEnv, reg *imagetest.Registry) {
		f, err := os.OpenFile(filepath.Join(e.n.state, "none.toml"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(conf); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if setup != nil {
			setup(e, reg)
		}
	})
}
