package cgroup2test_test

import (
	"context"
	"fmt"
	"github.com/tripod-dev/tripod/internal/daemonctl"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
	"github.com/tripod-dev/tripod/internal/monitor"
	"github.com/tripod-dev/tripod/internal/vmtest"
)

// The TestGuest* tests run inside the VM that TestInVM boots: cgroup2 is
// mounted at /sys/fs/cgroup, runc is on PATH, tripodd is at $TRIPODD.

const cgroupRoot = "/sys/fs/cgroup"

// busyboxImage is the VM's busybox with its applets as links.
func busyboxImage(t *testing.T) []imagetest.Entry {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	es := []imagetest.Entry{{Name: "bin/", Type: '5'}, {Name: "bin/busybox", Body: string(bb), Mode: 0o755},
		{Name: "tmp/", Type: '5', Mode: 0o1777}, {Name: "etc/", Type: '5'},
		{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\n"}, {Name: "etc/group", Body: "root:x:0:\n"}}
	list, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	for _, a := range strings.Fields(string(list)) {
		if a != "busybox" {
			es = append(es, imagetest.Entry{Name: "bin/" + a, Type: '2', Linkname: "busybox"})
		}
	}
	return es
}

// guestEnv is a tripodd on a bridge network in the VM.
type guestEnv struct {
	t             *testing.T
	tag, subnet   string
	root, state   string
	logDir, image string
	rt            runtimeapi.RuntimeServiceClient
	daemon        *exec.Cmd
	daemonLog     *os.File
	daemonExited  chan error
	cgroupParent  string
}

func newGuestEnv(t *testing.T) *guestEnv {
	vmtest.Guest(t)
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err != nil {
		t.Fatalf("no cgroup v2 hierarchy at %s: %v", cgroupRoot, err)
	}
	e := &guestEnv{t: t, tag: cnitest.Tag(t), subnet: "10.88.7", root: t.TempDir(), state: t.TempDir(), logDir: t.TempDir()}
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	reg.Push(t, "test/busybox:1", imagetest.Image("amd64", "", imagetest.Layer(busyboxImage(t)...)))
	e.image = reg.Host + "/test/busybox:1"

	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: e.tag + "br"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	t.Cleanup(func() { netlink.LinkDel(br) })
	gw, _ := netlink.ParseAddr(e.subnet + ".1/24")
	if err := netlink.AddrAdd(br, gw); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	confDir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"%s","plugins":[
	  {"type":"bridge","bridge":"%sbr","ipam":{"type":"host-local","ranges":[[{"subnet":"%s.0/24","gateway":"%s.1"}]],"dataDir":"%s"}}]}`,
		e.tag, e.tag, e.subnet, e.subnet, filepath.Join(t.TempDir(), "ipam"))
	if err := os.WriteFile(filepath.Join(confDir, "10-test.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// The pods' cgroup parent is made here, as kubelet makes a pod's,
	// without any controller enabled below it: the runtime must cope.
	e.cgroupParent = "/" + e.tag + "-pods"
	if err := os.Mkdir(filepath.Join(cgroupRoot, e.cgroupParent), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(filepath.Join(cgroupRoot, e.cgroupParent)); err != nil {
			t.Errorf("pod cgroup parent: %v", err)
		}
	})
	cfg := filepath.Join(e.state, "tripod.toml")
	os.WriteFile(cfg, fmt.Appendf(nil, "[runtime]\ncgroup_parent = %q\n", e.cgroupParent), 0o644)
	sock := filepath.Join(e.state, "tripod.sock")
	logf, err := os.Create(filepath.Join(t.TempDir(), "tripodd.log"))
	if err != nil {
		t.Fatal(err)
	}
	e.daemonLog = logf
	e.daemon = exec.Command(os.Getenv("TRIPODD"), "--config", cfg, "--root", e.root, "--state", e.state, "--listen", "unix://"+sock,
		"--registry-hosts-dir", t.TempDir(), "--cni-conf-dir", confDir, "--cni-bin-dir", cnitest.BinDir(t), "--log-level", "debug")
	e.daemon.Stdout, e.daemon.Stderr = logf, logf
	if err := e.daemon.Start(); err != nil {
		t.Fatalf("tripodd: %v", err)
	}
	e.daemonExited = make(chan error, 1)
	go func() { e.daemonExited <- e.daemon.Wait() }()
	t.Cleanup(func() {
		e.daemon.Process.Signal(syscall.SIGKILL)
		<-e.daemonExited
		// The node's monitor, by the PID tripodd recorded.
		if pid, err := daemonctl.ReadPIDFile(filepath.Join(e.state, "runtime", monitor.PIDFile)); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("tripodd log:\n%s", b)
		}
		logf.Close()
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-e.daemonExited:
			e.daemonExited <- err
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("tripodd exited: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("tripodd did not listen")
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.rt = runtimeapi.NewRuntimeServiceClient(conn)
	img := runtimeapi.NewImageServiceClient(conn)
	if _, err := img.PullImage(ctx(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: e.image}}); err != nil {
		t.Fatal(err)
	}
	return e
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return c
}

func (e *guestEnv) podConfig(name string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: e.tag + "-" + name, Namespace: "test"},
		Hostname:     name,
		LogDirectory: filepath.Join(e.logDir, name),
		DnsConfig:    &runtimeapi.DNSConfig{Servers: []string{"10.0.0.10"}},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{CgroupParent: e.cgroupParent},
	}
}

func (e *guestEnv) create(pod string, pc *runtimeapi.PodSandboxConfig, name string, res *runtimeapi.LinuxContainerResources, cmd ...string) string {
	e.t.Helper()
	r, err := e.rt.CreateContainer(ctx(e.t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, SandboxConfig: pc,
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: name}, Image: &runtimeapi.ImageSpec{Image: e.image},
			Command: cmd, LogPath: name + ".log", Linux: &runtimeapi.LinuxContainerConfig{Resources: res}}})
	if err != nil {
		e.t.Fatalf("CreateContainer %s: %v", name, err)
	}
	if _, err := e.rt.StartContainer(ctx(e.t), &runtimeapi.StartContainerRequest{ContainerId: r.ContainerId}); err != nil {
		e.t.Fatalf("StartContainer %s: %v", name, err)
	}
	return r.ContainerId
}

func (e *guestEnv) status(id string) *runtimeapi.ContainerStatus {
	e.t.Helper()
	r, err := e.rt.ContainerStatus(ctx(e.t), &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		e.t.Fatalf("ContainerStatus: %v", err)
	}
	return r.Status
}

// waitExited waits (synchronisation, not a timing check) for a container
// to exit.
func (e *guestEnv) waitExited(id string) *runtimeapi.ContainerStatus {
	e.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st := e.status(id)
		if st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("container %s did not exit: %v", id, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readCgroup(t *testing.T, dir, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cgroupRoot, dir, file))
	if err != nil {
		t.Fatalf("cgroup file: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// oomKills reads the oom_kill counter of a cgroup's memory.events.
func oomKills(t *testing.T, dir string) int {
	for _, line := range strings.Split(readCgroup(t, dir, "memory.events"), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	t.Fatalf("%s/memory.events has no oom_kill line", dir)
	return 0
}

// TestGuestCgroupV2 runs a networked pod whose containers have memory and
// CPU limits on the unified hierarchy, over the CRI on tripodd's socket:
// the limits land in memory.max and cpu.max under the pod's cgroup
// parent, the container sees its own cgroup as the root (a cgroup
// namespace), exit codes come back, an OOM kill is reported as
// OOMKilled, and stopping and removing the pod leaves no cgroup behind.
func TestGuestCgroupV2(t *testing.T) {
	e := newGuestEnv(t)
	c := ctx(t)
	rc, err := e.rt.RuntimeConfig(c, &runtimeapi.RuntimeConfigRequest{})
	if err != nil || rc.Linux.CgroupDriver != runtimeapi.CgroupDriver_CGROUPFS {
		t.Fatalf("RuntimeConfig: %v %v", rc, err)
	}
	pc := e.podConfig("v2")
	rp, err := e.rt.RunPodSandbox(c, &runtimeapi.RunPodSandboxRequest{Config: pc})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	pod := rp.PodSandboxId
	ps, err := e.rt.PodSandboxStatus(c, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if err != nil || ps.Status.Network == nil || !strings.HasPrefix(ps.Status.Network.Ip, e.subnet+".") {
		t.Fatalf("pod status: %v %v", ps, err)
	}

	const memLimit = 64 << 20
	limited := e.create(pod, pc, "limited", &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: memLimit, CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512},
		"sh", "-c", "echo up; exec sleep 3600")
	cg := filepath.Join(e.cgroupParent, limited)
	if got := readCgroup(t, cg, "memory.max"); got != strconv.Itoa(memLimit) {
		t.Errorf("memory.max = %q, want %d", got, memLimit)
	}
	if got := readCgroup(t, cg, "cpu.max"); got != "50000 100000" {
		t.Errorf("cpu.max = %q, want \"50000 100000\"", got)
	}
	if got := readCgroup(t, cg, "cpu.weight"); got == "100" {
		t.Errorf("cpu.weight is the default 100: cpu shares 512 were not applied")
	}
	procs := readCgroup(t, cg, "cgroup.procs")
	if procs == "" {
		t.Errorf("no process in %s", cg)
	}
	// Inside, the container's own cgroup is the root of what it sees.
	ex, err := e.rt.ExecSync(c, &runtimeapi.ExecSyncRequest{ContainerId: limited, Cmd: []string{"cat", "/proc/self/cgroup", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max"}, Timeout: 60})
	if err != nil || ex.ExitCode != 0 {
		t.Fatalf("exec: %v %v %s", err, ex, ex.GetStderr())
	}
	if got, want := strings.Fields(string(ex.Stdout)), []string{"0::/", strconv.Itoa(memLimit), "50000", "100000"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("inside the container: %q, want %q", got, want)
	}

	// An exec'd process (tripod-exec's direct path when it is beside the
	// monitor, as here) is in the container's cgroup: the one whose
	// cgroup.procs the container sees as its root.
	ex, err = e.rt.ExecSync(c, &runtimeapi.ExecSyncRequest{ContainerId: limited, Cmd: []string{"sh", "-c", "grep -qx $$ /sys/fs/cgroup/cgroup.procs && echo in-cgroup"}, Timeout: 60})
	if err != nil || ex.ExitCode != 0 || strings.TrimSpace(string(ex.Stdout)) != "in-cgroup" {
		t.Fatalf("exec'd process not in the container's cgroup: %v %v %s", err, ex, ex.GetStderr())
	}
	// Both execs went the direct way (tripod-exec is beside the monitor).
	b, _ := os.ReadFile(e.daemonLog.Name())
	direct := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, `msg="exec started" container=`+limited) {
			if !strings.Contains(l, "via=direct") {
				t.Fatalf("an exec went through the runtime: %s", l)
			}
			direct++
		}
	}
	if direct != 2 {
		t.Fatalf("%d direct execs logged, want 2:\n%s", direct, b)
	}

	exit3 := e.create(pod, pc, "exit3", nil, "sh", "-c", "echo bye; exit 3")
	if st := e.waitExited(exit3); st.ExitCode != 3 || st.Reason != "Error" {
		t.Errorf("exit3: code %d reason %q, want 3 Error", st.ExitCode, st.Reason)
	}
	// The shell doubles a string until the 16 MiB limit is hit.
	oom := e.create(pod, pc, "oom", &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 16 << 20},
		"sh", "-c", "x=0123456789abcdef; while :; do x=$x$x; done")
	st := e.waitExited(oom)
	if st.Reason != "OOMKilled" || st.ExitCode != 137 {
		t.Errorf("oom: code %d reason %q, want 137 OOMKilled", st.ExitCode, st.Reason)
	}
	if n := oomKills(t, filepath.Join(e.cgroupParent, oom)); n < 1 {
		t.Errorf("memory.events of the oom container: oom_kill %d", n)
	}
	if st := e.status(limited); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING || st.Reason == "OOMKilled" {
		t.Errorf("the limited container after its neighbour's OOM: %v %q", st.State, st.Reason)
	}
	log, _ := os.ReadFile(filepath.Join(e.logDir, "v2", "limited.log"))
	if !strings.Contains(string(log), " stdout F up") {
		t.Errorf("limited.log: %q", log)
	}

	if _, err := e.rt.StopContainer(c, &runtimeapi.StopContainerRequest{ContainerId: limited, Timeout: 0}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if st := e.status(limited); st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 {
		t.Errorf("stopped: %v code %d", st.State, st.ExitCode)
	}
	if _, err := e.rt.StopPodSandbox(c, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	// No process is left anywhere under the pod's cgroup parent.
	filepath.WalkDir(filepath.Join(cgroupRoot, e.cgroupParent), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "cgroup.procs" {
			if b, _ := os.ReadFile(p); len(strings.TrimSpace(string(b))) > 0 {
				t.Errorf("%s after StopPodSandbox: %s", p, b)
			}
		}
		return nil
	})
	if _, err := e.rt.RemovePodSandbox(c, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	// The containers' cgroups are gone; the parent (kubelet's) is left
	// empty for its owner to remove.
	kids, _ := os.ReadDir(filepath.Join(cgroupRoot, e.cgroupParent))
	for _, k := range kids {
		if k.IsDir() {
			t.Errorf("cgroup %s/%s left after RemovePodSandbox", e.cgroupParent, k.Name())
		}
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), e.state) || strings.Contains(string(b), e.root) {
		t.Errorf("mounts left under tripodd's directories:\n%s", b)
	}
	if l, err := netlink.LinkByName(e.tag + "br"); err == nil {
		if ports, _ := netlink.LinkList(); countPorts(ports, l.Attrs().Index) > 0 {
			t.Errorf("veth ports left on the bridge")
		}
	}
}

func countPorts(links []netlink.Link, master int) int {
	n := 0
	for _, l := range links {
		if l.Attrs().MasterIndex == master {
			n++
		}
	}
	return n
}

// TestGuestMonitorDeath kills tripod-monitor under a running container on
// this older kernel, which keeps no exit status for pidfd holders: the
// container runs on, a new monitor adopts it and its log resumes, an exit
// after that is reported (its code if the monitor saw the zombie, else
// 255 marked unknown), the stop works and no cgroup is left.
func TestGuestMonitorDeath(t *testing.T) {
	e := newGuestEnv(t)
	c := ctx(t)
	pc := e.podConfig("md")
	rp, err := e.rt.RunPodSandbox(c, &runtimeapi.RunPodSandboxRequest{Config: pc})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	pod := rp.PodSandboxId
	ticker := e.create(pod, pc, "ticker", &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 32 << 20},
		"sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done")
	waiter := e.create(pod, pc, "waiter", nil, "sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 7")
	logPath := filepath.Join(e.logDir, "md", "ticker.log")
	waitLog(t, logPath, "tick 2\n")

	old, err := daemonctl.ReadPIDFile(filepath.Join(e.state, "runtime", monitor.PIDFile))
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.PidfdOpen(old, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	monitor.WaitPidfd(fd)
	unix.Close(fd)
	// The log resumes under the new monitor.
	b, _ := os.ReadFile(logPath)
	waitLog(t, logPath, fmt.Sprintf("tick %d\n", strings.Count(string(b), "tick")+3))
	if st := e.status(ticker); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("ticker after the monitor died: %v", st.State)
	}
	if _, err := e.rt.ExecSync(c, &runtimeapi.ExecSyncRequest{ContainerId: waiter, Cmd: []string{"touch", "/tmp/go"}, Timeout: 60}); err != nil {
		t.Fatal(err)
	}
	st := e.waitExited(waiter)
	if st.ExitCode != 7 && (st.ExitCode != 255 || !strings.Contains(st.Message, "unknown")) {
		t.Errorf("waiter: code %d message %q, want 7, or 255 marked unknown", st.ExitCode, st.Message)
	}
	t.Logf("exit after the adoption: code %d %q", st.ExitCode, st.Message)
	if _, err := e.rt.StopContainer(c, &runtimeapi.StopContainerRequest{ContainerId: ticker, Timeout: 0}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if st := e.status(ticker); st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Fatalf("stopped ticker: %v", st.State)
	}
	if _, err := e.rt.RemovePodSandbox(c, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	kids, _ := os.ReadDir(filepath.Join(cgroupRoot, e.cgroupParent))
	for _, k := range kids {
		if k.IsDir() {
			t.Errorf("cgroup %s/%s left after RemovePodSandbox", e.cgroupParent, k.Name())
		}
	}
}

// waitLog waits until file contains s.
func waitLog(t *testing.T, file, s string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, _ := os.ReadFile(file)
		if strings.Contains(string(b), s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never contained %q; has:\n%s", file, s, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
