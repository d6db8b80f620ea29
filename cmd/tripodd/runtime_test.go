package main_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"github.com/tripod-dev/tripod/internal/daemonctl"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
	"github.com/tripod-dev/tripod/internal/monitor"
)

// podEnv is a tripodd with a bridge network of its own and a runnable
// busybox image in a local registry.
type podEnv struct {
	t       *testing.T
	n       node
	tag     string
	subnet  string
	cgroup  string
	logDir  string
	image   string
	extra   []string
	d       *daemonProc
	rt      runtimeapi.RuntimeServiceClient
	img     runtimeapi.ImageServiceClient
	confDir string
}

func runtimePrereqs(t *testing.T) {
	t.Helper()
	cnitest.Root(t)
	if _, err := os.Stat("/usr/sbin/runc"); err != nil {
		t.Skip("skipped: runc is not installed (apt-get install runc)")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("skipped: /bin/busybox (busybox-static) is needed to build a runnable image")
	}
}

// busyboxImage is busybox-static with its applets as links.
func busyboxImage(t *testing.T) []imagetest.Entry {
	es, err := imagetest.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func newPodEnv(t *testing.T) *podEnv {
	runtimePrereqs(t)
	return newPodEnvBin(t, cnitest.BinDir(t))
}

// newPodEnvBin is newPodEnv with the CNI plugins taken from bin.
func newPodEnvBin(t *testing.T, bin string) *podEnv { return newPodEnvWith(t, bin, nil) }

// newPodEnvWith runs setup (with the registry) before the daemon starts.
func newPodEnvWith(t *testing.T, bin string, setup func(*podEnv, *imagetest.Registry)) *podEnv {
	e := &podEnv{t: t, n: newNode(t), tag: cnitest.Tag(t)}
	// Searchable as /run/tripod is: a user namespace's root must walk
	// down to its containers' rootfs (the test's temporary directories
	// are 0700).
	for _, d := range []string{e.n.state, filepath.Dir(e.n.state)} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	b := make([]byte, 2)
	rand.Read(b)
	e.subnet = fmt.Sprintf("10.%d.%d.0/24", 100+int(b[0])%100, b[1])
	e.cgroup = "/" + e.tag + "-pods"
	e.logDir = t.TempDir()
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	reg.Push(t, "test/busybox:1", imagetest.Image("amd64", "", imagetest.Layer(busyboxImage(t)...)))
	e.image = reg.Host + "/test/busybox:1"
	e.confDir = t.TempDir()
	// The bridge is made here with the gateway address, and the plugin
	// is not the gateway: with isGateway it would turn on the host's
	// ip_forward, which new network namespaces inherit (other packages'
	// tests depend on it being off). Host-to-pod traffic needs no forwarding.
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: e.tag + "br"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	t.Cleanup(func() { netlink.LinkDel(br) })
	gw, _ := netlink.ParseAddr(strings.Replace(e.subnet, ".0/24", ".1/24", 1))
	if err := netlink.AddrAdd(br, gw); err != nil {
		t.Fatalf("bridge address: %v", err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"%s","plugins":[
	  {"type":"bridge","bridge":"%sbr","ipam":{"type":"host-local","ranges":[[{"subnet":"%s","gateway":"%s"}]],"dataDir":"%s"}},
	  {"type":"portmap","capabilities":{"portMappings":true}}]}`, e.tag, e.tag, e.subnet, gw.IP, filepath.Join(t.TempDir(), "ipam"))
	os.WriteFile(filepath.Join(e.confDir, "10-test.conflist"), []byte(conf), 0o644)
	e.extra = []string{"--cni-conf-dir", e.confDir, "--cni-bin-dir", bin}
	t.Cleanup(func() {
		// After the daemon and the pods: the monitor, the bridge, the
		// cgroup parents (each by name, all unique to this test).
		if pid, err := daemonctl.ReadPIDFile(filepath.Join(e.n.state, "runtime", monitor.PIDFile)); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if l, err := netlink.LinkByName(e.tag + "br"); err == nil {
			netlink.LinkDel(l)
		}
		// Any container process a failed test left behind sits in this
		// test's own cgroup parent: kill those by PID.
		procs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/pids", e.cgroup, "*", "cgroup.procs"))
		for _, f := range procs {
			b, _ := os.ReadFile(f)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		// Every hierarchy mounted here, whatever the controllers' mount
		// names are on this host (cpu and cpuacct may be one or two).
		hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
		for _, h := range hierarchies {
			kids, _ := filepath.Glob(filepath.Join(h, e.cgroup, "*", "cgroup.procs"))
			for _, k := range kids {
				os.Remove(filepath.Dir(k))
			}
			os.Remove(filepath.Join(h, e.cgroup))
		}
	})
	// Registered after the node cleanup, so it runs before it, and
	// before any daemon a test started has been killed... or after: it
	// brings up a daemon of its own either way.
	t.Cleanup(e.removeAll)
	// Pods that name no cgroup parent (critest's) land under this test's.
	os.WriteFile(filepath.Join(e.n.state, "none.toml"), fmt.Appendf(nil, "[runtime]\ncgroup_parent = %q\n", e.cgroup), 0o644)
	if setup != nil {
		setup(e, reg)
	}
	e.boot()
	ctx := testCtx(t)
	if _, err := e.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: e.image}}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *podEnv) boot() {
	e.d = startDaemon(e.t, e.n, e.extra...)
	conn, err := grpc.NewClient("unix://"+e.n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	e.rt = runtimeapi.NewRuntimeServiceClient(conn)
	e.img = runtimeapi.NewImageServiceClient(conn)
}

// removeAll runs a fresh tripodd on the node (whatever state the test
// left it in), removes every pod through it, and kills it by PID.
func (e *podEnv) removeAll() {
	t := e.t
	sock := e.n.sock + ".cleanup"
	cmd := exec.Command(tripodd, "--config", filepath.Join(e.n.state, "none.toml"), "--root", e.n.root, "--state", e.n.state,
		"--listen", "unix://"+sock, "--registry-hosts-dir", e.n.hosts, "--cni-conf-dir", e.confDir, "--cni-bin-dir", cnitest.BinDir(t),
		"--nri-socket", e.n.nriSock())
	// Any config this test removed is back for the teardown.
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Errorf("cleanup daemon: %v", err)
		return
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("cleanup daemon did not start:\n%s", log.String())
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Error(err)
		return
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lp, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	for _, p := range lp.Items {
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			t.Errorf("cleanup: remove pod %s: %v\n%s", p.Id, err, log.String())
		}
	}
}

// runPod starts a pod (removed at the end of the test by removeAll).
func (e *podEnv) runPod(name string, ports ...*runtimeapi.PortMapping) string {
	e.t.Helper()
	resp, err := e.rt.RunPodSandbox(testCtx(e.t), &runtimeapi.RunPodSandboxRequest{Config: e.podConfig(name, ports...)})
	if err != nil {
		e.t.Fatalf("RunPodSandbox %s: %v", name, err)
	}
	return resp.PodSandboxId
}

func (e *podEnv) podConfig(name string, ports ...*runtimeapi.PortMapping) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: e.tag + "-" + name, Namespace: "test"},
		Hostname:     name,
		LogDirectory: filepath.Join(e.logDir, name),
		DnsConfig:    &runtimeapi.DNSConfig{Servers: []string{"10.0.0.10"}, Searches: []string{"test.svc.cluster.local"}},
		PortMappings: ports,
		Labels:       map[string]string{"app": name},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{CgroupParent: e.cgroup},
	}
}

func (e *podEnv) create(podID, name string, cmd ...string) string {
	e.t.Helper()
	resp, err := e.rt.CreateContainer(testCtx(e.t), &runtimeapi.CreateContainerRequest{PodSandboxId: podID,
		SandboxConfig: e.podConfig(name),
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: name}, Image: &runtimeapi.ImageSpec{Image: e.image},
			Command: cmd, LogPath: name + ".log", Envs: []*runtimeapi.KeyValue{{Key: "GREETING", Value: []byte("hi")}},
			Labels: map[string]string{"ctr": name}}})
	if err != nil {
		e.t.Fatalf("CreateContainer %s: %v", name, err)
	}
	return resp.ContainerId
}

func (e *podEnv) start(id string) {
	e.t.Helper()
	if _, err := e.rt.StartContainer(testCtx(e.t), &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		e.t.Fatalf("StartContainer: %v", err)
	}
}

func (e *podEnv) status(id string) *runtimeapi.ContainerStatus {
	e.t.Helper()
	r, err := e.rt.ContainerStatus(testCtx(e.t), &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		e.t.Fatalf("ContainerStatus: %v", err)
	}
	return r.Status
}

// waitExited waits (synchronisation, not a timing check) for a container
// to exit.
func (e *podEnv) waitExited(id string) *runtimeapi.ContainerStatus {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := e.status(id)
		if st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("container %s did not exit: %v", id, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFor waits until file contains s.
func waitFor(t *testing.T, file, s string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, _ := os.ReadFile(file)
		if strings.Contains(string(b), s) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never contained %q; has:\n%s", file, s, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort(t *testing.T) int32 {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

// TestPodLifecycle runs a networked pod with a web server behind a
// hostPort and a job, over the CRI on tripodd's socket: pod status and
// IP, list filters, logs in the CRI format, exit codes and reasons, stop
// with timeout, idempotent stop and remove, errors with their codes.
func TestPodLifecycle(t *testing.T) {
	e := newPodEnv(t)
	ctx := testCtx(t)
	hostPort := freePort(t)
	pod := e.runPod("web", &runtimeapi.PortMapping{HostPort: hostPort, ContainerPort: 8080, HostIp: "127.0.0.1"})

	ps, err := e.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if err != nil {
		t.Fatal(err)
	}
	_, ipnet, _ := net.ParseCIDR(e.subnet)
	if ps.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY || ps.Status.Network == nil || !ipnet.Contains(net.ParseIP(ps.Status.Network.Ip)) {
		t.Fatalf("pod status: %v", ps.Status)
	}
	if _, err := e.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: e.podConfig("web")}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("same pod name twice: %v, want AlreadyExists", err)
	}
	bad := e.podConfig("bad")
	bad.Metadata.Uid = ""
	if _, err := e.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: bad}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "metadata.uid") {
		t.Fatalf("pod without uid: %v", err)
	}

	web := e.create(pod, "web", "sh", "-c", "mkdir -p /www && hostname > /www/index.html && cat /etc/resolv.conf && echo $GREETING && exec httpd -f -p 8080 -h /www")
	if st := e.status(web); st.State != runtimeapi.ContainerState_CONTAINER_CREATED {
		t.Fatalf("created container: %v", st.State)
	}
	e.start(web)
	logPath := filepath.Join(e.logDir, "web", "web.log")
	log := waitFor(t, logPath, "stdout F hi")
	if !strings.Contains(log, "stdout F nameserver 10.0.0.10") || !strings.Contains(log, "search test.svc.cluster.local") {
		t.Fatalf("log lacks resolv.conf:\n%s", log)
	}
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		f := strings.SplitN(line, " ", 4)
		if len(f) < 4 || f[1] != "stdout" || f[2] != "F" {
			t.Fatalf("log line %q is not in the CRI format", line)
		}
		if _, err := time.Parse(time.RFC3339Nano, f[0]); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
	}
	// The hostPort on loopback, and the pod IP from the host.
	for _, url := range []string{fmt.Sprintf("http://127.0.0.1:%d/index.html", hostPort), "http://" + ps.Status.Network.Ip + ":8080/index.html"} {
		var body []byte
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := http.Get(url)
			if err == nil {
				body, _ = io.ReadAll(resp.Body)
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: %v", url, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if strings.TrimSpace(string(body)) != "web" {
			t.Fatalf("GET %s = %q, want the pod's hostname", url, body)
		}
	}

	job := e.create(pod, "job", "sh", "-c", "echo out; echo err >&2; head -c 40000 /dev/zero | tr '\\0' x; echo; printf 'no newline'; exit 3")
	e.start(job)
	st := e.waitExited(job)
	if st.ExitCode != 3 || st.Reason != "Error" || st.FinishedAt < st.StartedAt || st.StartedAt < st.CreatedAt {
		t.Fatalf("job status: code %d reason %q times %d %d %d", st.ExitCode, st.Reason, st.CreatedAt, st.StartedAt, st.FinishedAt)
	}
	jlog := waitFor(t, filepath.Join(e.logDir, "web", "job.log"), "no newline")
	for _, want := range []string{" stdout F out\n", " stderr F err\n"} {
		if !strings.Contains(jlog, want) {
			t.Fatalf("job log lacks %q:\n%s", want, jlog)
		}
	}
	// A 40000-byte line is split into partial (P) entries ending in a full
	// (F) one, and nothing is lost.
	var long strings.Builder
	partials := 0
	for _, line := range strings.Split(jlog, "\n") {
		f := strings.SplitN(line, " ", 4)
		if len(f) == 4 && strings.HasPrefix(f[3], "x") {
			long.WriteString(f[3])
			if f[2] == "P" {
				partials++
			}
		}
	}
	if long.Len() != 40000 || partials < 2 {
		t.Fatalf("long line: %d bytes in %d partial entries", long.Len(), partials)
	}

	// Filters.
	lc, err := e.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		PodSandboxId: pod, State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}})
	if err != nil || len(lc.Containers) != 1 || lc.Containers[0].Id != web {
		t.Fatalf("running containers: %v %v", lc, err)
	}
	lc, err = e.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"ctr": "job"}}})
	if err != nil || len(lc.Containers) != 1 || lc.Containers[0].Id != job {
		t.Fatalf("containers labelled job: %v %v", lc, err)
	}
	lp, err := e.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{Id: pod[:12],
		LabelSelector: map[string]string{"app": "web"}, State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}}})
	if err != nil || len(lp.Items) != 1 {
		t.Fatalf("pods by prefix, label and state: %v %v", lp, err)
	}

	// httpd as PID 1 ignores SIGTERM: the stop ends in SIGKILL.
	if _, err := e.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: web, Timeout: 1}); err != nil {
		t.Fatal(err)
	}
	if st := e.status(web); st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 {
		t.Fatalf("stopped web: %v code %d", st.State, st.ExitCode)
	}
	for range 2 {
		if _, err := e.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
			t.Fatalf("StopPodSandbox: %v", err)
		}
	}
	ps, _ = e.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if ps.Status.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Fatalf("stopped pod: %v", ps.Status.State)
	}
	if _, err := e.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: "0123456789ab"}); err != nil {
		t.Fatalf("stop unknown container: %v", err)
	}
	if _, err := e.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "0123456789ab"}); status.Code(err) != codes.NotFound {
		t.Fatalf("status of unknown container: %v", err)
	}
	for range 2 {
		if _, err := e.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
			t.Fatalf("RemovePodSandbox: %v", err)
		}
	}
	if lc, _ := e.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); len(lc.Containers) != 0 {
		t.Fatalf("containers left: %v", lc.Containers)
	}
	if _, err := os.Stat(filepath.Join(e.n.state, "runtime", "pods", pod)); !os.IsNotExist(err) {
		t.Fatalf("pod dir left: %v", err)
	}
}
