package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/tripod-dev/tripod/internal/mountinfo"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// upEnv is a node stack that `tripod up` brings up inside a network
// namespace of its own (the default network's bridge, masquerading and
// forwarding stay there), with every directory under one temporary
// directory: nothing of the host's /run/tripod, /etc/cni or /opt/cni/bin
// is touched.
type upEnv struct {
	t      *testing.T
	tag    string
	ns     *cnitest.Netns
	dir    string // everything below; short, for socket paths
	cgroup string
	path   string // PATH the commands run with
}

func (e *upEnv) p(rel string) string { return filepath.Join(e.dir, rel) }

func upPrereqs(t *testing.T) {
	t.Helper()
	cnitest.Root(t)
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatal("runc is not on PATH (make test puts .tools/bin, where make go-tools builds runc, first)")
	}
	if _, err := os.Stat(imagetest.BusyboxPath); err != nil {
		t.Fatalf("%s (busybox-static, installed by make deps) is needed for a runnable image", imagetest.BusyboxPath)
	}
}

func newUpEnv(t *testing.T) *upEnv {
	upPrereqs(t)
	tag := cnitest.Tag(t)
	dir, err := os.MkdirTemp("", tag)
	if err != nil {
		t.Fatal(err)
	}
	e := &upEnv{t: t, tag: tag, dir: dir, cgroup: "/" + tag + "-pods", path: os.Getenv("PATH")}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e.ns = cnitest.NewNetns(t, tag)
	e.ns.Do(t, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	// The tripodd config: pods that name no cgroup parent land under this
	// test's, kubelet's plugin registration stays off.
	os.WriteFile(e.p("tripod.toml"), fmt.Appendf(nil, "[runtime]\ncgroup_parent = %q\n\n[csi]\nregistration_dir = \"\"\n", e.cgroup), 0o644)
	t.Cleanup(e.cleanup)
	return e
}

// upArgs are the flags that keep tripod up inside e.dir.
func (e *upEnv) upArgs() []string {
	return []string{"--config", e.p("tripod.toml"), "--root", e.p("root"), "--state", e.p("state"),
		"--csi-endpoint", "unix://" + e.p("state/csi.sock"), "--cni-bin-dir", e.p("cni/bin"), "--cni-conf-dir", e.p("cni/net.d"),
		"--log-dir", e.p("log"), "--crictl-config", e.p("crictl.yaml"), "--bridge", e.tag + "br", "--ipam-dir", e.p("ipam")}
}

// stackArgs are what down and status need to find the stack.
func (e *upEnv) stackArgs() []string {
	return []string{"--config", e.p("tripod.toml"), "--state", e.p("state")}
}

// tripod runs the CLI inside the test's network namespace.
func (e *upEnv) tripod(args ...string) (string, error) {
	var out []byte
	err := e.ns.Try(func() error {
		cmd := exec.Command(tripod, args...)
		cmd.Env = append(os.Environ(), "PATH="+e.path)
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	return string(out), err
}

func (e *upEnv) must(args ...string) string {
	e.t.Helper()
	out, err := e.tripod(args...)
	if err != nil {
		e.t.Fatalf("tripod %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (e *upEnv) crictl(args ...string) string {
	e.t.Helper()
	out, err := exec.Command("crictl", append([]string{"--config", e.p("crictl.yaml")}, args...)...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("crictl %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// pid reads a PID file of the stack (0 when there is none).
func (e *upEnv) pid(file string) int {
	b, err := os.ReadFile(e.p(file))
	if err != nil {
		return 0
	}
	// "<pid> <start ticks>"
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

// running reports whether pid is a live process (not a zombie).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// procsOf lists the live processes whose command line mentions e.dir:
// tripodd, tripod-csi and tripod-monitor, which all name their sockets.
func (e *upEnv) procsOf() []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() || !running(pid) {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if strings.Contains(string(b), e.dir) {
			out = append(out, fmt.Sprintf("%d %s", pid, strings.ReplaceAll(string(b), "\x00", " ")))
		}
	}
	return out
}

// cgroupProcs lists the processes in the test's cgroup parent (the
// containers).
func (e *upEnv) cgroupProcs() []int {
	var pids []int
	files, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/pids", e.cgroup, "*", "cgroup.procs"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(s); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// mounts lists the mount points under e.dir.
func (e *upEnv) mounts() []string {
	mps, err := mountinfo.Under(e.dir)
	if err != nil {
		e.t.Fatal(err)
	}
	return slices.DeleteFunc(mps, func(mp string) bool { return mp == e.dir })
}

// sockets lists the unix sockets left under e.dir.
func (e *upEnv) sockets() []string {
	var out []string
	filepath.Walk(e.dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode()&os.ModeSocket != 0 {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// nothingLeft fails the test if any process, container, mount or socket
// of the stack is still there.
func (e *upEnv) nothingLeft() {
	e.t.Helper()
	if p := e.procsOf(); len(p) > 0 {
		e.t.Errorf("processes left: %q", p)
	}
	if p := e.cgroupProcs(); len(p) > 0 {
		e.t.Errorf("container processes left: %v", p)
	}
	if m := e.mounts(); len(m) > 0 {
		e.t.Errorf("mounts left: %q", m)
	}
	if s := e.sockets(); len(s) > 0 {
		e.t.Errorf("sockets left: %q", s)
	}
	for _, f := range []string{"state/tripodd.pid", "state/tripod-csi.pid"} {
		if _, err := os.Stat(e.p(f)); err == nil {
			e.t.Errorf("%s left", f)
		}
	}
}

// cleanup removes what a failed test left: pods through the stack, then
// any process of it by PID, mounts, the cgroup parent; and reaps the
// daemons this process adopted.
func (e *upEnv) cleanup() {
	if len(e.procsOf()) > 0 {
		if out, err := e.tripod(append([]string{"down", "--pods", "--timeout", "5s"}, e.stackArgs()...)...); err != nil {
			e.t.Logf("cleanup: tripod down --pods: %v\n%s", err, out)
		}
	}
	for _, p := range e.procsOf() {
		pid, _ := strconv.Atoi(strings.Fields(p)[0])
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range e.cgroupProcs() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	m := e.mounts()
	for i := len(m) - 1; i >= 0; i-- {
		unix.Unmount(m[i], unix.MNT_DETACH)
	}
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hierarchies {
		kids, _ := filepath.Glob(filepath.Join(h, e.cgroup, "*", "cgroup.procs"))
		for _, k := range kids {
			os.Remove(filepath.Dir(k))
		}
		os.Remove(filepath.Join(h, e.cgroup))
	}
	reapAdopted()
	if e.t.Failed() {
		for _, l := range []string{"tripodd.log", "tripod-csi.log"} {
			b, _ := os.ReadFile(e.p("log/" + l))
			e.t.Logf("%s:\n%s", l, b)
		}
	}
}

// reapAdopted waits for the dead processes this test process adopted as
// their subreaper (daemons orphaned by tripod up), each by PID.
func reapAdopted() {
	me := strconv.Itoa(os.Getpid())
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := 0
		ents, _ := os.ReadDir("/proc")
		for _, ent := range ents {
			pid, err := strconv.Atoi(ent.Name())
			if err != nil {
				continue
			}
			b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
			if err != nil {
				continue
			}
			f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
			if len(f) < 2 || f[1] != me {
				continue
			}
			if f[0] == "Z" {
				var ws unix.WaitStatus
				unix.Wait4(pid, &ws, unix.WNOHANG, nil)
			} else {
				left++
			}
		}
		if left == 0 || time.Now().After(deadline) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// importBusybox loads a busybox image into the stack's tripodd through
// `tripod images import` (tripodd in its namespace cannot reach a registry
// on the host's loopback) and returns its name.
func (e *upEnv) importBusybox() string {
	e.t.Helper()
	entries, err := imagetest.Busybox()
	if err != nil {
		e.t.Fatal(err)
	}
	ref := "tripod.test/" + e.tag + "/busybox:1"
	l, err := layout.Write(e.p("layout"), empty.Index)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := l.AppendImage(imagetest.Image(runtime.GOARCH, "", imagetest.Layer(entries...)),
		layout.WithAnnotations(map[string]string{"io.containerd.image.name": ref})); err != nil {
		e.t.Fatal(err)
	}
	out := e.must("--endpoint", "unix://"+e.p("state/tripod.sock"), "--admin", e.p("state/admin.sock"), "images", "import", e.p("layout"))
	if !strings.Contains(out, ref) {
		e.t.Fatalf("import: %s", out)
	}
	os.RemoveAll(e.p("layout"))
	return ref
}

// runWeb starts a pod on the default network with a hostPort and a
// busybox httpd serving a page that names the test, and returns the pod
// and container IDs and the pod's IP.
func (e *upEnv) runWeb(image string) (pod, ctr, ip string) {
	e.t.Helper()
	podJSON, _ := json.Marshal(map[string]any{
		"metadata":      map[string]any{"name": "web", "namespace": "default", "uid": e.tag + "-web"},
		"log_directory": e.p("pods/web"),
		"port_mappings": []map[string]any{{"container_port": 80, "host_port": 8080}},
	})
	ctrJSON, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"name": "httpd"},
		"image":    map[string]any{"image": image},
		"command":  []string{"sh", "-c", "mkdir /www && echo hello from " + e.tag + " > /www/index.html && exec httpd -f -p 80 -h /www"},
		"log_path": "httpd.log",
	})
	os.WriteFile(e.p("pod.json"), podJSON, 0o644)
	os.WriteFile(e.p("ctr.json"), ctrJSON, 0o644)
	pod = e.crictl("runp", e.p("pod.json"))
	ctr = e.crictl("create", pod, e.p("ctr.json"), e.p("pod.json"))
	e.crictl("start", ctr)
	var insp struct {
		Status struct {
			State   string
			Network struct{ IP string }
		}
	}
	json.Unmarshal([]byte(e.crictl("inspectp", pod)), &insp)
	if insp.Status.State != "SANDBOX_READY" {
		e.t.Fatalf("inspectp: %+v", insp)
	}
	return pod, ctr, insp.Status.Network.IP
}

// get fetches http://addr/ from the test's namespace (the host side of
// the pod network), retrying while the server starts.
func (e *upEnv) get(addr string) string {
	e.t.Helper()
	var body string
	var last error
	for i := 0; i < 100; i++ {
		last = e.ns.Try(func() error {
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr)
			b, err := io.ReadAll(c)
			body = string(b)
			return err
		})
		if last == nil && strings.Contains(body, "200 OK") {
			return body
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("GET http://%s/: %v %q", addr, last, body)
	return ""
}

// TestUpDown: tripod up on an empty machine (as far as tripod is
// concerned) installs the plugins and a default network on a free range,
// starts both daemons and answers; crictl works as printed; a pod runs on
// the default network with a hostPort; a second up changes nothing; down
// leaves the pod running, the next up adopts it; down --pods leaves
// nothing: no process, container, mount, socket or PID file.
func TestUpDown(t *testing.T) {
	e := newUpEnv(t)
	// An address of the host inside 10.88/16: the default network must
	// take another range.
	e.ns.Do(t, func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: e.tag + "x"}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("10.88.7.1/24")
		return netlink.AddrAdd(br, a)
	})
	out := e.must(append([]string{"up"}, e.upArgs()...)...)
	t.Logf("tripod up:\n%s", out)
	for _, want := range []string{"tripod is up.", "unix://" + e.p("state/tripod.sock"), "unix://" + e.p("state/csi.sock"),
		"10.89.0.0/16", "crictl --config " + e.p("crictl.yaml") + " info", "tripod down --config " + e.p("tripod.toml") + " --state " + e.p("state")} {
		if !strings.Contains(out, want) {
			t.Errorf("up output lacks %q:\n%s", want, out)
		}
	}
	criPID, csiPID := e.pid("state/tripodd.pid"), e.pid("state/tripod-csi.pid")
	if !running(criPID) || !running(csiPID) {
		t.Fatalf("daemons not running: tripodd %d, tripod-csi %d", criPID, csiPID)
	}
	// Detached: each leads a session of its own, so the terminal's
	// hangup or Ctrl-C does not reach them.
	for _, pid := range []int{criPID, csiPID} {
		if sid, _ := unix.Getsid(pid); sid != pid {
			t.Errorf("pid %d is in session %d", pid, sid)
		}
	}
	if target, err := os.Readlink(e.p("cni/bin/bridge")); err != nil || target != "tripod-cni" {
		t.Errorf("bridge plugin: %q %v", target, err)
	}

	// The sockets answer: crictl through the config tripod up wrote, the
	// CSI driver's Identity service directly.
	if v := e.crictl("version"); !strings.Contains(v, "RuntimeName:  tripod") {
		t.Errorf("crictl version: %s", v)
	}
	var info struct {
		Status struct {
			Conditions []struct {
				Type   string
				Status bool
			}
		}
	}
	json.Unmarshal([]byte(e.crictl("info")), &info)
	if len(info.Status.Conditions) != 2 || !info.Status.Conditions[0].Status || !info.Status.Conditions[1].Status {
		t.Errorf("crictl info conditions: %+v", info.Status.Conditions)
	}
	conn, err := grpc.NewClient("unix://"+e.p("state/csi.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	pi, err := csi.NewIdentityClient(conn).GetPluginInfo(context.Background(), &csi.GetPluginInfoRequest{})
	conn.Close()
	if err != nil || pi.Name != "csi.tripod.dev" {
		t.Fatalf("CSI GetPluginInfo: %v %v", pi, err)
	}

	image := e.importBusybox()
	pod, ctr, ip := e.runWeb(image)
	if !strings.HasPrefix(ip, "10.89.") {
		t.Fatalf("pod IP %s is not on the default network 10.89.0.0/16", ip)
	}
	want := "hello from " + e.tag
	if body := e.get(ip + ":80"); !strings.Contains(body, want) {
		t.Fatalf("pod: %q", body)
	}
	// The hostPort, through the bridge's gateway address (local to the
	// host side).
	if body := e.get("10.89.0.1:8080"); !strings.Contains(body, want) {
		t.Fatalf("hostPort: %q", body)
	}

	out = e.must(append([]string{"up"}, e.upArgs()...)...)
	if !strings.Contains(out, "already running") || e.pid("state/tripodd.pid") != criPID || e.pid("state/tripod-csi.pid") != csiPID {
		t.Fatalf("second up: %s", out)
	}
	if out := e.must(append([]string{"status"}, e.stackArgs()...)...); !strings.Contains(out, "1 pod(s)") {
		t.Errorf("status: %s", out)
	}

	// down: the daemons go, the pod stays.
	out = e.must(append([]string{"down"}, e.stackArgs()...)...)
	if !strings.Contains(out, "1 pod(s) keep running") {
		t.Errorf("down output: %s", out)
	}
	if running(criPID) || running(csiPID) {
		t.Fatalf("still running after down: tripodd %v, tripod-csi %v", running(criPID), running(csiPID))
	}
	for _, s := range []string{"state/tripod.sock", "state/admin.sock", "state/csi.sock", "state/tripodd.pid", "state/tripod-csi.pid"} {
		if _, err := os.Stat(e.p(s)); err == nil {
			t.Errorf("%s left after down", s)
		}
	}
	if out, err := e.tripod(append([]string{"status"}, e.stackArgs()...)...); err == nil || !strings.Contains(out, "tripodd    not running") {
		t.Errorf("status after down: %v %s", err, out)
	}
	if body := e.get(ip + ":80"); !strings.Contains(body, want) {
		t.Fatalf("pod after down: %q", body)
	}

	// up again adopts it.
	e.must(append([]string{"up"}, e.upArgs()...)...)
	if ps := e.crictl("ps", "-q"); ps != ctr {
		t.Fatalf("containers after the second up: %q, want %s", ps, ctr)
	}
	out = e.must(append([]string{"down", "--pods"}, e.stackArgs()...)...)
	for _, w := range []string{"removed pod default/web (" + pod[:13] + ")", "no pods left", "tripod-monitor"} {
		if !strings.Contains(out, w) {
			t.Errorf("down --pods output lacks %q:\n%s", w, out)
		}
	}
	e.nothingLeft()
	// What up installed stays for the next one: plugins and network.
	if _, err := os.Stat(e.p("cni/net.d/10-tripod.conflist")); err != nil {
		t.Error(err)
	}
	if out := e.must(append([]string{"down"}, e.stackArgs()...)...); !strings.Contains(out, "not running") {
		t.Errorf("down when down: %s", out)
	}
}

// TestUpRefuses: tripod up says exactly what is wrong and leaves nothing
// behind, whether it stops before starting anything (runc missing, a
// socket in use) or after (a daemon that exits at start-up: what was
// started is stopped, what was written is removed).
func TestUpRefuses(t *testing.T) {
	t.Run("runc missing", func(t *testing.T) {
		e := newUpEnv(t)
		e.path = "/nonexistent-" + e.tag
		out, err := e.tripod(append([]string{"up"}, e.upArgs()...)...)
		if err == nil || !strings.Contains(out, "runc not found") || !strings.Contains(out, "not on PATH (/nonexistent-"+e.tag+")") {
			t.Fatalf("up without runc: %v\n%s", err, out)
		}
		e.nothingStarted()
	})
	for _, sock := range []string{"tripod.sock", "csi.sock"} {
		t.Run(sock+" in use", func(t *testing.T) {
			e := newUpEnv(t)
			os.MkdirAll(e.p("state"), 0o755)
			var l net.Listener
			e.ns.Do(t, func() error {
				var err error
				l, err = net.Listen("unix", e.p("state/"+sock))
				return err
			})
			defer l.Close()
			out, err := e.tripod(append([]string{"up"}, e.upArgs()...)...)
			want := fmt.Sprintf("socket %s is already in use by pid %d (", e.p("state/"+sock), os.Getpid())
			if err == nil || !strings.Contains(out, want) {
				t.Fatalf("up with %s taken: %v\n%s\nwant %q", sock, err, out, want)
			}
			l.Close()
			e.nothingStarted()
		})
	}
	t.Run("daemon fails", func(t *testing.T) {
		e := newUpEnv(t)
		f, _ := os.OpenFile(e.p("tripod.toml"), os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString("default_fstype = \"btrfs\"\n")
		f.Close()
		out, err := e.tripod(append([]string{"up"}, e.upArgs()...)...)
		if err == nil || !strings.Contains(out, "tripod-csi exited while starting") || !strings.Contains(out, `default_fstype "btrfs"`) ||
			!strings.Contains(out, "stopped what this run started") {
			t.Fatalf("up with a bad [csi] table: %v\n%s", err, out)
		}
		// tripodd had been started with it: gone again.
		e.nothingLeft()
		if _, err := os.Stat(e.p("cni")); err == nil {
			t.Error("the CNI files this run wrote are still there")
		}
	})
}

// nothingStarted checks a refused up: no process, socket, PID file, and
// no CNI file written.
func (e *upEnv) nothingStarted() {
	e.t.Helper()
	e.nothingLeft()
	if ents, _ := os.ReadDir(e.p("state")); slices.ContainsFunc(ents, func(d os.DirEntry) bool { return d.Name() != "up.lock" }) {
		e.t.Errorf("state left: %v", ents)
	}
	if _, err := os.Stat(e.p("cni")); err == nil {
		e.t.Error("CNI files written")
	}
}
