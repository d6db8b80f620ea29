package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// TestRuntimeStatusAndConfig: Version, Status (network readiness follows
// the CNI config), RuntimeConfig, UpdateRuntimeConfig, handlers.
func TestRuntimeStatusAndConfig(t *testing.T) {
	runtimePrereqs(t)
	e := newPodEnvWith(t, cnitest.BinDir(t), func(e *podEnv, _ *imagetest.Registry) {
		f, _ := os.OpenFile(filepath.Join(e.n.state, "none.toml"), os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString("[runtime.handlers.alt]\npath = \"/usr/sbin/runc\"\n[metrics]\naddress = \"127.0.0.1:0\"\n")
		f.Close()
	})
	ctx := testCtx(t)
	v, err := e.rt.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil || v.RuntimeName != "tripod" || v.RuntimeApiVersion != "v1" {
		t.Fatalf("Version: %v %v", v, err)
	}
	cond := func() map[string]*runtimeapi.RuntimeCondition {
		st, err := e.rt.Status(ctx, &runtimeapi.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*runtimeapi.RuntimeCondition{}
		for _, c := range st.Status.Conditions {
			out[c.Type] = c
		}
		if len(st.RuntimeHandlers) != 3 || st.RuntimeHandlers[0].Name != "alt" || st.RuntimeHandlers[1].Name != "runc" || st.RuntimeHandlers[2].Name != "" {
			t.Fatalf("handlers: %v", st.RuntimeHandlers)
		}
		return out
	}
	if c := cond(); !c[runtimeapi.RuntimeReady].Status || !c[runtimeapi.NetworkReady].Status {
		t.Fatalf("conditions: %v", c)
	}
	conf := filepath.Join(e.confDir, "10-test.conflist")
	saved, _ := os.ReadFile(conf)
	os.Remove(conf)
	if c := cond()[runtimeapi.NetworkReady]; c.Status || c.Reason != "NetworkPluginNotReady" {
		t.Fatalf("network ready without a config: %v", c)
	}
	if _, err := e.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: e.podConfig("nonet")}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("pod without a network config: %v", err)
	}
	os.WriteFile(conf, saved, 0o644)
	// The failed pod left its name free.
	e.runPod("nonet")

	rc, err := e.rt.RuntimeConfig(ctx, &runtimeapi.RuntimeConfigRequest{})
	if err != nil || rc.Linux.CgroupDriver != runtimeapi.CgroupDriver_CGROUPFS {
		t.Fatalf("RuntimeConfig: %v %v", rc, err)
	}
	if _, err := e.rt.UpdateRuntimeConfig(ctx, &runtimeapi.UpdateRuntimeConfigRequest{RuntimeConfig: &runtimeapi.RuntimeConfig{
		NetworkConfig: &runtimeapi.NetworkConfig{PodCidr: e.subnet}}}); err != nil {
		t.Fatal(err)
	}
	e.runPod("withcidr")
	if _, err := e.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: e.podConfig("badhandler"), RuntimeHandler: "nope"}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "runtime_handler") {
		t.Fatalf("unknown handler: %v", err)
	}
	// A pod on the second handler: its containers live in that
	// runtime's own state directory.
	alt, err := e.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: e.podConfig("alt"), RuntimeHandler: "alt"})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := e.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: alt.PodSandboxId})
	if err != nil || ps.Status.RuntimeHandler != "alt" {
		t.Fatalf("handler in status: %v %v", ps, err)
	}
	c := e.create(alt.PodSandboxId, "c", "sleep", "1000")
	e.start(c)
	out, err := exec.Command("/usr/sbin/runc", "--root", filepath.Join(e.n.state, "runtime", "runtime", "alt"), "state", c).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"status": "running"`) {
		t.Fatalf("container not run by the alt handler: %v %s", err, out)
	}
	// Every call and phase is counted.
	m := regexp.MustCompile(`metrics=(127\.0\.0\.1:\d+)`).FindStringSubmatch(e.d.log.String())
	if m == nil {
		t.Fatalf("no metrics address in the log:\n%s", e.d.log.String())
	}
	resp, err := http.Get("http://" + m[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`tripod_cri_requests_total{method="RunPodSandbox",code="OK"} 3`,
		`tripod_cri_requests_total{method="RunPodSandbox",code="FailedPrecondition"} 1`,
		`tripod_runtime_phases_total{phase="cni_add"} 3`, `tripod_runtime_phases_total{phase="netns"} 3`,
		`tripod_runtime_phases_total{phase="start"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("metrics lack %s:\n%s", want, body)
		}
	}
}

// TestStopWithoutCNI: a pod stops and is removed after its network config
// and the plugins themselves are gone.
func TestStopWithoutCNI(t *testing.T) {
	runtimePrereqs(t)
	bin := t.TempDir()
	ents, _ := os.ReadDir(cnitest.BinDir(t))
	for _, ent := range ents {
		target, _ := filepath.EvalSymlinks(filepath.Join(cnitest.BinDir(t), ent.Name()))
		os.Symlink(target, filepath.Join(bin, ent.Name()))
	}
	e := newPodEnvBin(t, bin)
	ctx := testCtx(t)
	pod := e.runPod("gone")
	os.Remove(filepath.Join(e.confDir, "10-test.conflist"))
	os.RemoveAll(bin)
	if _, err := e.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatalf("StopPodSandbox without CNI: %v", err)
	}
	if _, err := e.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatalf("RemovePodSandbox without CNI: %v", err)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), e.n.state) {
		t.Fatal("namespace mounts left after stop")
	}
}

// TestReopenContainerLog: after kubelet renames the log, ReopenContainerLog
// makes new output go to a new file at the same path.
func TestReopenContainerLog(t *testing.T) {
	e := newPodEnv(t)
	ctx := testCtx(t)
	pod := e.runPod("rot")
	c := e.create(pod, "c", "sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done")
	e.start(c)
	log := filepath.Join(e.logDir, "rot", "c.log")
	waitFor(t, log, "line 1\n")
	if err := os.Rename(log, log+".1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.ReopenContainerLog(ctx, &runtimeapi.ReopenContainerLogRequest{ContainerId: c}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, log, "stdout F line")
	old, _ := os.ReadFile(log + ".1")
	cur, _ := os.ReadFile(log)
	if strings.Contains(string(cur), "line 0\n") || !strings.Contains(string(old), "line 0\n") {
		t.Fatalf("rotation mixed the files:\nold %s\nnew %s", old, cur)
	}
	e.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: c})
	if _, err := e.rt.ReopenContainerLog(ctx, &runtimeapi.ReopenContainerLogRequest{ContainerId: c}); err == nil {
		t.Fatal("ReopenContainerLog of a stopped container succeeded")
	}
}

// TestCrictlRuntime: the runtime through crictl: runp, create, start, ps,
// pods, logs, inspect, inspectp, stop, rm, stopp, rmp.
func TestCrictlRuntime(t *testing.T) {
	crictl := crictlPath(t)
	e := newPodEnv(t)
	cfg := filepath.Join(e.n.state, "crictl.yaml")
	os.WriteFile(cfg, []byte("runtime-endpoint: unix://"+e.n.sock+"\nimage-endpoint: unix://"+e.n.sock+"\ntimeout: 60\n"), 0o644)
	must := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(crictl, append([]string{"--config", cfg}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("crictl %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	podJSON, _ := json.Marshal(map[string]any{
		"metadata":      map[string]any{"name": "cri", "namespace": "test", "uid": e.tag + "-cri"},
		"log_directory": filepath.Join(e.logDir, "cri"),
		"linux":         map[string]any{"cgroup_parent": e.cgroup},
	})
	ctrJSON, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"name": "hello"},
		"image":    map[string]any{"image": e.image},
		"command":  []string{"sh", "-c", "echo hello from crictl; sleep 1000"},
		"log_path": "hello.log",
	})
	podFile, ctrFile := filepath.Join(e.n.state, "pod.json"), filepath.Join(e.n.state, "ctr.json")
	os.WriteFile(podFile, podJSON, 0o644)
	os.WriteFile(ctrFile, ctrJSON, 0o644)
	pod := must("runp", podFile)
	if out := must("pods", "-q"); out != pod {
		t.Fatalf("crictl pods: %q, want %q", out, pod)
	}
	var insp struct {
		Status struct {
			State   string
			Network struct{ IP string }
		}
	}
	json.Unmarshal([]byte(must("inspectp", pod)), &insp)
	if insp.Status.State != "SANDBOX_READY" || insp.Status.Network.IP == "" {
		t.Fatalf("inspectp: %+v", insp)
	}
	ctr := must("create", pod, ctrFile, podFile)
	must("start", ctr)
	if out := must("ps", "-q", "--pod", pod[:12]); out != ctr {
		t.Fatalf("crictl ps: %q", out)
	}
	waitFor(t, filepath.Join(e.logDir, "cri", "hello.log"), "hello from crictl")
	if out := must("logs", ctr); out != "hello from crictl" {
		t.Fatalf("crictl logs: %q", out)
	}
	var ci struct{ Status struct{ State string } }
	json.Unmarshal([]byte(must("inspect", ctr)), &ci)
	if ci.Status.State != "CONTAINER_RUNNING" {
		t.Fatalf("inspect: %+v", ci)
	}
	must("stop", "--timeout", "0", ctr)
	json.Unmarshal([]byte(must("inspect", ctr)), &ci)
	if ci.Status.State != "CONTAINER_EXITED" {
		t.Fatalf("inspect after stop: %+v", ci)
	}
	must("rm", ctr)
	if out := must("ps", "-a", "-q"); out != "" {
		t.Fatalf("containers after rm: %q", out)
	}
	must("stopp", pod)
	must("rmp", pod)
	if out := must("pods", "-q"); out != "" {
		t.Fatalf("pods after rmp: %q", out)
	}
}

// TestSharedPIDNamespace: in a pod sharing its PID namespace, a container
// sees another's processes; stopping the pod ends its init.
func TestSharedPIDNamespace(t *testing.T) {
	e := newPodEnv(t)
	ctx := testCtx(t)
	pc := e.podConfig("shared")
	pc.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD}}
	resp, err := e.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pc})
	if err != nil {
		t.Fatal(err)
	}
	pod := resp.PodSandboxId
	ps, _ := e.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if ps.Status.Linux.Namespaces.Options.Pid != runtimeapi.NamespaceMode_POD {
		t.Fatalf("pid mode in status: %v", ps.Status.Linux.Namespaces.Options)
	}
	sleeper := e.create(pod, "sleeper", "sleep", "1000")
	e.start(sleeper)
	looker := e.create(pod, "looker", "sh", "-c", "ps -o pid,args")
	e.start(looker)
	if st := e.waitExited(looker); st.ExitCode != 0 {
		t.Fatalf("ps exited %d", st.ExitCode)
	}
	out := waitFor(t, filepath.Join(e.logDir, "shared", "looker.log"), "sleep 1000")
	if !strings.Contains(out, "stdout F     1 ") && !strings.Contains(out, "stdout F 1 ") {
		t.Fatalf("no PID 1 (the pod's init) in the shared namespace:\n%s", out)
	}
	pidFile := filepath.Join(e.n.state, "runtime", "pods", pod, "ns", "pid")
	var initPID int
	for _, d := range mustReadDir(t, "/proc") {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.HasSuffix(string(cmd), "\x00pause\x00") && sameNS(pid, pidFile) {
			initPID = pid
		}
	}
	if initPID == 0 {
		t.Fatal("the pod's init process was not found")
	}
	if _, err := e.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", initPID)); err == nil && !strings.Contains(string(b), "State:\tZ") {
		t.Fatalf("the pod's init %d survived StopPodSandbox", initPID)
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Fatalf("pid namespace still pinned: %v", err)
	}
}

func mustReadDir(t *testing.T, dir string) []os.DirEntry {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ents
}

func sameNS(pid int, pinned string) bool {
	a, err1 := os.Stat(fmt.Sprintf("/proc/%d/ns/pid", pid))
	b, err2 := os.Stat(pinned)
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// TestImageRemovalKeepsLayers: removing the image of a container (and the
// GC that follows) leaves the layers its rootfs stacks on; the container
// still starts and runs.
func TestImageRemovalKeepsLayers(t *testing.T) {
	e := newPodEnv(t)
	ctx := testCtx(t)
	pod := e.runPod("keep")
	c := e.create(pod, "c", "sh", "-c", "echo still here; sleep 1000")
	var lower []string
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mounts), "\n") {
		if strings.Contains(line, filepath.Join(c, "rootfs")) {
			if m := regexp.MustCompile(`lowerdir=([^,]+)`).FindStringSubmatch(line); m != nil {
				lower = strings.Split(m[1], ":")
			}
		}
	}
	if len(lower) == 0 {
		t.Fatal("no overlay rootfs mount found for the container")
	}
	if _, err := e.img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: e.image}}); err != nil {
		t.Fatal(err)
	}
	if li, _ := e.img.ListImages(ctx, &runtimeapi.ListImagesRequest{}); len(li.Images) != 0 {
		t.Fatalf("image still listed: %v", li.Images)
	}
	for _, l := range lower {
		if _, err := os.Stat(filepath.Join(l, "bin", "busybox")); err != nil {
			t.Fatalf("layer %s was freed under a container: %v", l, err)
		}
	}
	e.start(c)
	waitFor(t, filepath.Join(e.logDir, "keep", "c.log"), "still here")
}

// TestRunPodTimeout: a RunPodSandbox whose CNI ADD outlives the caller's
// deadline is undone (DEL, namespaces, records) and its name released.
func TestRunPodTimeout(t *testing.T) {
	runtimePrereqs(t)
	// The plugin directory: tripod's plugins plus "slow", a plugin that
	// holds ADD for a minute (a stand-in for a stuck network).
	bin := t.TempDir()
	ents, _ := os.ReadDir(cnitest.BinDir(t))
	for _, ent := range ents {
		target, _ := filepath.EvalSymlinks(filepath.Join(cnitest.BinDir(t), ent.Name()))
		os.Symlink(target, filepath.Join(bin, ent.Name()))
	}
	os.WriteFile(filepath.Join(bin, "slow"), []byte("#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && exec sleep 60\nexit 0\n"), 0o755)
	e := newPodEnvBin(t, bin)
	conf := filepath.Join(e.confDir, "10-test.conflist")
	orig, _ := os.ReadFile(conf)
	slow := strings.Replace(string(orig), `{"type":"portmap"`, `{"type":"slow"},{"type":"portmap"`, 1)
	os.WriteFile(conf, []byte(slow), 0o644)

	ctx, cancel := context.WithTimeout(testCtx(t), 3*time.Second)
	_, err := e.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: e.podConfig("slow")})
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("RunPodSandbox past its deadline: %v", err)
	}
	// The undo runs on the daemon's side after the caller gave up: wait
	// (synchronisation) until the name is free again.
	os.WriteFile(conf, orig, 0o644)
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := e.rt.RunPodSandbox(testCtx(t), &runtimeapi.RunPodSandboxRequest{Config: e.podConfig("slow")})
		if err == nil {
			break
		}
		if status.Code(err) != codes.AlreadyExists || time.Now().After(deadline) {
			t.Fatalf("name not released after the timeout: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	lp, _ := e.rt.ListPodSandbox(testCtx(t), &runtimeapi.ListPodSandboxRequest{})
	if len(lp.Items) != 1 {
		t.Fatalf("pods: %v", lp.Items)
	}
	// One pod, one attachment: the timed-out one left no bridge port
	// and no IP reservation behind.
	br, err := netlink.LinkByName(e.tag + "br")
	if err != nil {
		t.Fatal(err)
	}
	links, _ := netlink.LinkList()
	ports := 0
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			ports++
		}
	}
	ips, _ := filepath.Glob(filepath.Join(filepath.Dir(e.confDir), "*", "ipam", e.tag, "10.*"))
	if ports != 1 || len(ips) != 1 {
		t.Fatalf("after a timed-out and a good pod: %d bridge ports, IP reservations %v", ports, ips)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if n := strings.Count(string(mounts), filepath.Join(e.n.state, "runtime", "pods")); n != 4 {
		t.Fatalf("%d pod mounts, want the 4 of one pod (net, uts, ipc, shm)", n)
	}
}

// TestStopSignalBeforeHandler: a stop signal that reaches a container's
// init before it has set up its handler is dropped by the kernel (it is
// PID 1 of its namespace); tripodd sends it again once the handler is
// there, so the container still ends gracefully (code 0, not 137).
func TestStopSignalBeforeHandler(t *testing.T) {
	e := newPodEnv(t)
	ctx := testCtx(t)
	pod := e.runPod("late")
	c := e.create(pod, "c", "sh", "-c", "sleep 2; trap 'echo graceful; exit 0' TERM; while :; do sleep 0.1; done")
	e.start(c)
	if _, err := e.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: c, Timeout: 30}); err != nil {
		t.Fatal(err)
	}
	if st := e.status(c); st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 0 {
		t.Fatalf("stopped: %v code %d, want a graceful exit 0", st.State, st.ExitCode)
	}
	waitFor(t, filepath.Join(e.logDir, "late", "c.log"), "stdout F graceful")
}
