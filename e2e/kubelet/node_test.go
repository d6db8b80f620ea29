package kubelet_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/csi/csitest"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
	"github.com/tripod-dev/tripod/internal/monitor"
)

// busyboxRef is the image every pod here runs: an upstream name, served by
// the test's registry on 127.0.0.1 through tripodd's registry mirror
// configuration (hosts.toml), as a real node would pull it.
const busyboxRef = "registry.k8s.io/e2e-test-images/busybox:1.29-2"

// node is one tripod node under test: tripodd on a private root, state and
// socket, tripod's CNI plugins on a private bridge, and (once started) a
// kubelet. Everything it makes carries the test's tag and goes at the end
// of the test, in the order teardown lists.
type node struct {
	t     *testing.T
	tools tools
	tag   string
	dir   string // the test's directory: configs, logs, sockets
	start time.Time

	// tripodd
	root, state, sock, hosts, confDir string
	subnet, gateway                   string
	tripodd                           *proc
	conn                              *grpc.ClientConn
	rt                                runtimeapi.RuntimeServiceClient
	img                               runtimeapi.ImageServiceClient
	registry                          *imagetest.Registry

	// kubelet (kubelet_test.go)
	kubelet *kubeletProc

	// tripod-csi (controlplane_csi_test.go)
	csi              *proc
	csiRoot, csiSock string

	// stops are processes stopped first at teardown (control plane
	// clients, tripod-csi), in order; after are run last (API server,
	// etcd).
	stops []func()
	after []func()
}

// newNode starts tripodd with its CNI network and a registry holding the
// test image. Teardown is registered before anything is made.
func newNode(t *testing.T, tl tools) *node {
	n := &node{t: t, tools: tl, tag: cnitest.Tag(t), dir: t.TempDir(), start: time.Now()}
	// Socket paths must fit in 108 bytes: keep the directory short.
	if len(n.dir) > 60 {
		d, err := os.MkdirTemp("", "tpk")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		n.dir = d
	}
	t.Cleanup(n.teardown)
	for _, d := range []string{"tripod/root", "tripod/state", "tripod/hosts", "tripod/net.d"} {
		if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	n.root, n.state, n.hosts, n.confDir = filepath.Join(n.dir, "tripod/root"), filepath.Join(n.dir, "tripod/state"),
		filepath.Join(n.dir, "tripod/hosts"), filepath.Join(n.dir, "tripod/net.d")
	n.sock = filepath.Join(n.state, "tripod.sock")

	n.registry = imagetest.NewRegistry(t, imagetest.Options{})
	n.registry.Push(t, "e2e-test-images/busybox:1.29-2", busyboxImage(t))
	for _, host := range []string{"registry.k8s.io"} {
		os.MkdirAll(filepath.Join(n.hosts, host), 0o755)
		os.WriteFile(filepath.Join(n.hosts, host, "hosts.toml"), fmt.Appendf(nil, "server = \"http://%s\"\n", n.registry.Host), 0o644)
	}

	n.network()
	// Pods kubelet runs name their cgroup parent; the default only
	// matters for pods that do not. NRI and CDI are off: their default
	// socket and directories are the host's.
	conf := fmt.Sprintf("[runtime]\ncgroup_parent = %q\ncdi_spec_dirs = []\n[nri]\nenable = false\n", "/"+n.tag+"-tripod")
	if err := os.WriteFile(filepath.Join(n.dir, "tripod/tripod.toml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	n.startTripodd()
	n.step("tripodd serving on %s, CNI network %s", n.sock, n.subnet)
	return n
}

// step logs progress with the time since the test began.
func (n *node) step(format string, args ...any) {
	n.t.Helper()
	n.t.Logf("[%5.1fs] %s", time.Since(n.start).Seconds(), fmt.Sprintf(format, args...))
}

// network makes the pods' bridge (with the gateway address, so the host
// reaches the pods without the plugin turning on ip_forward) and a
// conflist for it with tripod's bridge, host-local and portmap plugins.
func (n *node) network() {
	t := n.t
	b := make([]byte, 2)
	rand.Read(b)
	n.subnet = fmt.Sprintf("10.%d.%d.0/24", 100+int(b[0])%100, b[1])
	n.gateway = strings.Replace(n.subnet, ".0/24", ".1", 1)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.tag + "br"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	addr, _ := netlink.ParseAddr(n.gateway + "/24")
	if err := netlink.AddrAdd(br, addr); err != nil {
		t.Fatalf("bridge address: %v", err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"%s","plugins":[
  {"type":"bridge","bridge":"%sbr","ipam":{"type":"host-local","ranges":[[{"subnet":"%s","gateway":"%s"}]],"dataDir":"%s"}},
  {"type":"portmap","capabilities":{"portMappings":true}}]}`, n.tag, n.tag, n.subnet, n.gateway, filepath.Join(n.dir, "tripod/ipam"))
	if err := os.WriteFile(filepath.Join(n.confDir, "10-"+n.tag+".conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (n *node) tripoddArgs(sock string) []string {
	return []string{"--config", filepath.Join(n.dir, "tripod/tripod.toml"), "--root", n.root, "--state", n.state,
		"--listen", "unix://" + sock, "--registry-hosts-dir", n.hosts, "--cni-conf-dir", n.confDir, "--cni-bin-dir", n.tools.cniBin}
}

func (n *node) startTripodd() {
	t := n.t
	n.tripodd = startProc(t, n.dir, "tripodd", nil, n.tools.tripodd, n.tripoddArgs(n.sock)...)
	if err := waitFor(ctxFor(t, 30*time.Second), "tripodd socket", func(context.Context) (bool, error) {
		c, err := net.Dial("unix", n.sock)
		if err != nil {
			return false, retry("%v", err)
		}
		c.Close()
		return true, nil
	}, n.tripodd); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	n.conn, n.rt, n.img = conn, runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
}

// busyboxImage is Debian's busybox-static with its applets as links.
func busyboxImage(t *testing.T) v1.Image {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("/bin/busybox (busybox-static) makes the test image: %v", err)
	}
	es := []imagetest.Entry{{Name: "bin/", Type: '5'}, {Name: "bin/busybox", Body: string(bb), Mode: 0o755},
		{Name: "tmp/", Type: '5', Mode: 0o1777}, {Name: "etc/", Type: '5'},
		{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"},
		{Name: "etc/group", Body: "root:x:0:\nnogroup:x:65534:\n"}}
	list, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	for _, a := range strings.Fields(string(list)) {
		if a != "busybox" {
			es = append(es, imagetest.Entry{Name: "bin/" + a, Type: '2', Linkname: "busybox"})
		}
	}
	return imagetest.Image(runtime.GOARCH, "", imagetest.Layer(es...))
}

// sandboxes lists tripodd's pod sandboxes, all or those with labels.
func (n *node) sandboxes(ctx context.Context, labels map[string]string) ([]*runtimeapi.PodSandbox, error) {
	var f *runtimeapi.PodSandboxFilter
	if labels != nil {
		f = &runtimeapi.PodSandboxFilter{LabelSelector: labels}
	}
	r, err := n.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: f})
	if err != nil {
		return nil, err
	}
	return r.Items, nil
}

// containers lists tripodd's containers, all or those with labels.
func (n *node) containers(ctx context.Context, labels map[string]string) ([]*runtimeapi.Container, error) {
	var f *runtimeapi.ContainerFilter
	if labels != nil {
		f = &runtimeapi.ContainerFilter{LabelSelector: labels}
	}
	r, err := n.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: f})
	if err != nil {
		return nil, err
	}
	return r.Containers, nil
}

// teardown stops what the test started and removes what it made, in an
// order that lets each step succeed: kubelet and the other clients first,
// then every pod through tripodd, tripodd and its monitor, the mounts under
// kubelet's root, cgroups, log directories and kubelet's host files, the
// bridge, and last the control plane.
func (n *node) teardown() {
	t := n.t
	for _, stop := range n.stops {
		stop()
	}
	if n.kubelet != nil {
		n.kubelet.p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("kubelet log (tail):\n%s", n.kubelet.p.tail(16<<10))
		}
	}
	if n.tripodd != nil {
		n.removePods()
		if t.Failed() {
			t.Logf("tripodd log (tail):\n%s", n.tripodd.tail(16<<10))
		}
		n.tripodd.stop(10 * time.Second)
		if n.conn != nil {
			n.conn.Close()
		}
		n.killMonitors()
	}
	if n.kubelet != nil {
		n.kubelet.cleanup()
	}
	if n.csi != nil {
		n.csi.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("tripod-csi log (tail):\n%s", n.csi.tail(8<<10))
		}
		csitest.CleanupDir(t, n.csiRoot)
	}
	// tripodd's namespace pins and rootfs mounts went with the pods.
	if mps, err := csitest.Mounts(n.dir); err != nil || len(mps) > 0 {
		t.Errorf("teardown: mounts left under %s: %v (%v)", n.dir, mps, err)
		csitest.CleanupDir(t, n.dir)
	}
	if l, err := netlink.LinkByName(n.tag + "br"); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			t.Errorf("teardown: bridge: %v", err)
		}
	}
	cnitest.NoLinks(t, n.tag)
	for i := len(n.after) - 1; i >= 0; i-- {
		n.after[i]()
	}
	if d := os.Getenv("TRIPOD_E2E_LOGS"); d != "" {
		n.keepLogs(filepath.Join(d, t.Name()))
	}
}

// keepLogs copies every component's log into dir (for CI artifacts).
func (n *node) keepLogs(dir string) {
	logs, _ := filepath.Glob(filepath.Join(n.dir, "*.log"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		n.t.Logf("keeping logs: %v", err)
		return
	}
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, filepath.Base(l)), b, 0o644)
		}
		if err != nil {
			n.t.Logf("keeping logs: %v", err)
		}
	}
}

// killMonitors ends the node-wide tripod-monitor tripodd started (it
// outlives tripodd by design): the one its PID file names, and any other
// serving this node's monitor socket (found by its exact command line,
// which names the test's own directory), which the test reports.
func (n *node) killMonitors() {
	sock := filepath.Join(n.state, "runtime", monitor.Socket)
	recorded := -1
	if b, err := os.ReadFile(filepath.Join(n.state, "runtime", monitor.PIDFile)); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			recorded = pid
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range cmdlines {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) != 2 || filepath.Base(args[0]) != "tripod-monitor" || args[1] != sock {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if err != nil || pid == recorded {
			continue
		}
		n.t.Logf("teardown: a tripod-monitor (PID %d) on %s that tripodd's PID file does not name; killing it", pid, sock)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// removePods removes every pod tripodd holds, through a running tripodd
// (the test's, or a fresh one on the same root if that one died).
func (n *node) removePods() {
	t := n.t
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rt := n.rt
	if !n.tripodd.running() {
		sock := n.sock + ".cleanup"
		p := startProc(t, n.dir, "tripodd-cleanup", nil, n.tools.tripodd, n.tripoddArgs(sock)...)
		defer p.stop(10 * time.Second)
		if err := waitFor(ctx, "cleanup tripodd", func(context.Context) (bool, error) {
			c, err := net.Dial("unix", sock)
			if err != nil {
				return false, retry("%v", err)
			}
			c.Close()
			return true, nil
		}, p); err != nil {
			t.Errorf("teardown: %v", err)
			return
		}
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Errorf("teardown: %v", err)
			return
		}
		defer conn.Close()
		rt = runtimeapi.NewRuntimeServiceClient(conn)
	}
	r, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Errorf("teardown: list pods: %v", err)
		return
	}
	for _, p := range r.Items {
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			t.Errorf("teardown: remove pod %s: %v", p.Id, err)
		}
	}
}
