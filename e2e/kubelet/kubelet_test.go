package kubelet_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tripod-dev/tripod/internal/csi/csitest"
)

// Paths kubelet uses whatever its --root-dir: pod logs (podLogsDir is
// configurable, but /var/log/pods is where operators and log shippers look,
// and the issue asks for it), the legacy container log links, and the
// device plugin socket (a constant in k8s.io/kubelet). The test removes
// exactly the entries its own pods and kubelet made there.
const (
	podLogsDir       = "/var/log/pods"
	containerLogsDir = "/var/log/containers"
	devicePluginsDir = "/var/lib/kubelet/device-plugins"
)

// kernelTunables are the sysctls kubelet sets at start (unless
// protectKernelDefaults, which makes it refuse to start on a host that has
// other values, like this one); the test puts back the host's values.
var kernelTunables = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// kubeletProc is a kubelet on the node: its private root directory, cgroup
// root and static pod directory, and what it changes outside them.
type kubeletProc struct {
	n           *node
	p           *proc
	root        string // --root-dir
	cgroupRoot  string // under every cgroup hierarchy
	manifests   string // staticPodPath
	healthz     string
	port        int    // kubelet's API (https)
	namespace   string // every pod of the test is in it
	madeDirs    []string
	hadFiles    map[string]bool
	sysctls     map[string]string
	cgroupsMade []string
}

// kubeletOptions are what differs between the standalone and the
// registered kubelet.
type kubeletOptions struct {
	kubeconfig string // empty: standalone
	pki        *pki   // signs the kubelet's serving certificate, verifies clients
}

// startKubelet runs kubelet against the node's tripodd and waits for its
// health endpoint.
func (n *node) startKubelet(opt kubeletOptions) *kubeletProc {
	t := n.t
	k := &kubeletProc{n: n, root: filepath.Join(n.dir, "kubelet"), cgroupRoot: "/" + n.tag + "-kubelet",
		manifests: filepath.Join(n.dir, "manifests"), namespace: n.tag, hadFiles: map[string]bool{}, sysctls: map[string]string{}}
	n.kubelet = k
	for _, d := range []string{k.root, k.manifests, filepath.Join(n.dir, "kubelet-pki")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// What kubelet creates outside its root: remember what was there.
	for _, d := range []string{podLogsDir, containerLogsDir, "/var/lib/kubelet", devicePluginsDir} {
		if _, err := os.Stat(d); errors.Is(err, fs.ErrNotExist) {
			k.madeDirs = append(k.madeDirs, d)
		}
	}
	for _, f := range []string{"kubelet.sock", "kubelet_internal_checkpoint"} {
		_, err := os.Lstat(filepath.Join(devicePluginsDir, f))
		k.hadFiles[f] = err == nil
	}
	for _, s := range kernelTunables {
		b, err := os.ReadFile("/proc/sys/" + s)
		if err != nil {
			t.Fatal(err)
		}
		k.sysctls[s] = strings.TrimSpace(string(b))
	}
	k.makeCgroupRoot()

	cert, key := opt.pki.serving(t, filepath.Join(n.dir, "kubelet-pki"), "kubelet", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	port, healthz := freePort(t), freePort(t)
	k.port = port
	k.healthz = fmt.Sprintf("http://127.0.0.1:%d/healthz", healthz)
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# kubelet 1.35+ refuses cgroup v1 (this host's) unless told otherwise.
failCgroupV1: false
# Otherwise kubelet leaves KUBE-* iptables chains on the host.
makeIPTablesUtilChains: false
# tripodd's RuntimeConfig answers cgroupfs here (no systemd).
cgroupDriver: cgroupfs
cgroupRoot: %s
staticPodPath: %s
fileCheckFrequency: 2s
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: %s
authorization:
  mode: AlwaysAllow
failSwapOn: false
`, k.cgroupRoot, k.manifests, port, healthz, cert, key, opt.pki.caFile)
	confPath := filepath.Join(n.dir, "kubelet.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--config", confPath, "--root-dir", k.root, "--cert-dir", filepath.Join(n.dir, "kubelet-pki"),
		"--container-runtime-endpoint", "unix://" + n.sock, "--hostname-override", "localhost", "--v", "2"}
	if opt.kubeconfig != "" {
		args = append(args, "--kubeconfig", opt.kubeconfig)
	}
	k.p = startProc(t, n.dir, "kubelet", nil, n.tools.kubelet, args...)
	if err := waitFor(ctxFor(t, 2*time.Minute), "kubelet healthz", func(ctx context.Context) (bool, error) {
		body, err := httpGet(ctx, nil, k.healthz)
		if err != nil {
			return false, err
		}
		return strings.TrimSpace(body) == "ok", nil
	}, k.p); err != nil {
		t.Fatal(err)
	}
	n.step("kubelet healthy (root %s, cgroup root %s)", k.root, k.cgroupRoot)
	return k
}

// makeCgroupRoot creates the kubelet's cgroup root in every hierarchy:
// kubelet requires it to exist, and a unique one keeps this kubelet's
// kubepods tree apart from anything else on the host.
func (k *kubeletProc) makeCgroupRoot() {
	t := k.n.t
	hs, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hs {
		if fi, err := os.Stat(h); err != nil || !fi.IsDir() {
			continue
		}
		d := filepath.Join(h, k.cgroupRoot)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatalf("cgroup root: %v", err)
		}
		k.cgroupsMade = append(k.cgroupsMade, d)
		// A v1 cpuset cgroup starts with no CPUs and memory nodes.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				os.WriteFile(filepath.Join(d, f), b, 0o644)
			}
		}
	}
}

// writeManifest puts a static pod manifest in place the way kubelet
// expects: written to a hidden file (which kubelet ignores) and renamed, so
// kubelet never reads half a file.
func (k *kubeletProc) writeManifest(name string, yaml []byte) {
	t := k.n.t
	tmp := filepath.Join(k.manifests, "."+name+".yaml")
	if err := os.WriteFile(tmp, yaml, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(k.manifests, name+".yaml")); err != nil {
		t.Fatal(err)
	}
}

func (k *kubeletProc) removeManifest(name string) {
	if err := os.Remove(filepath.Join(k.manifests, name+".yaml")); err != nil {
		k.n.t.Fatal(err)
	}
}

// podLogs are the log directories of the test's pods under /var/log/pods
// (named namespace_name_uid).
func (k *kubeletProc) podLogs() []string {
	m, _ := filepath.Glob(filepath.Join(podLogsDir, k.namespace+"_*"))
	return m
}

// cleanup runs after kubelet and tripodd are gone and every pod removed:
// unmount what is left under kubelet's root (its own rshared bind of the
// root, and volumes a failed test left), remove the cgroup tree, the log
// entries of the test's pods, kubelet's device plugin socket and the
// directories it made, and put the kernel tunables back.
func (k *kubeletProc) cleanup() {
	t := k.n.t
	csitest.CleanupDir(t, k.root)
	for i := len(k.cgroupsMade) - 1; i >= 0; i-- {
		if err := removeCgroupTree(k.cgroupsMade[i]); err != nil {
			t.Errorf("teardown: %v", err)
		}
	}
	for _, d := range k.podLogs() {
		if err := os.RemoveAll(d); err != nil {
			t.Errorf("teardown: %v", err)
		}
	}
	links, _ := filepath.Glob(filepath.Join(containerLogsDir, "*_"+k.namespace+"_*.log"))
	for _, l := range links {
		os.Remove(l)
	}
	for f, had := range k.hadFiles {
		if !had {
			os.Remove(filepath.Join(devicePluginsDir, f))
		}
	}
	// Deepest first; only if empty (anything else's files stay).
	for _, d := range slices.Backward(k.madeDirs) {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Logf("teardown: left %s: %v", d, err)
		}
	}
	for s, v := range k.sysctls {
		if err := os.WriteFile("/proc/sys/"+s, []byte(v), 0o644); err != nil {
			t.Errorf("teardown: restoring %s=%s: %v", s, v, err)
		}
	}
}

// removeCgroupTree removes a cgroup directory and its children, deepest
// first, killing (by PID) any process still in one.
func removeCgroupTree(dir string) error {
	var dirs []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var errs []error
	for _, d := range slices.Backward(dirs) {
		var err error
		for range 50 {
			if b, rerr := os.ReadFile(filepath.Join(d, "cgroup.procs")); rerr == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			if err = os.Remove(d); err == nil || errors.Is(err, fs.ErrNotExist) {
				err = nil
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// freePort is a TCP port on 127.0.0.1 nothing listens on now.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// httpGet fetches url (with client, or a plain one), failing with errRetry
// until it answers 200.
func httpGet(ctx context.Context, client *http.Client, url string) (string, error) {
	if client == nil {
		client = &http.Client{}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", retry("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	if _, err := io.Copy(&b, resp.Body); err != nil {
		return "", retry("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", retry("GET %s: %s: %s", url, resp.Status, b.String())
	}
	return b.String(), nil
}

// podCgroups lists the pod cgroups (kubepods/[qos/]pod<uid>) under the
// kubelet's cgroup root, in the pids hierarchy.
func (k *kubeletProc) podCgroups() []string {
	var out []string
	filepath.WalkDir(filepath.Join("/sys/fs/cgroup/pids", k.cgroupRoot), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && strings.HasPrefix(d.Name(), "pod") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// runningKubelet is the PID of a kubelet process on the machine, or 0.
func runningKubelet() int {
	comms, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, f := range comms {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == "kubelet" {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil {
				return pid
			}
		}
	}
	return 0
}
