package main_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/config"
)

// tripodd is the binary under test, built once for the package.
var tripodd string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tripodd-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tripodd = filepath.Join(dir, "tripodd")
	out, err := exec.Command("go", "build", "-o", tripodd, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build tripodd: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	// tripodd starts tripod-monitor from beside its own binary.
	out, err = exec.Command("go", "build", "-o", filepath.Join(dir, "tripod-monitor"), "../tripod-monitor").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build tripod-monitor: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	// and tripod-monitor its exec stage from beside its own.
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "tripod-exec"), "../tripod-exec")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err = cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build tripod-exec: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	// Pods here run in the host's namespace: tripod's nftables tables that
	// the tests create there go again afterwards.
	dropTables, err := cnitest.TablesSince()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := cnitest.Main(m)
	if err := dropTables(); err != nil {
		fmt.Fprintln(os.Stderr, "removing test-created nftables tables:", err)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects a daemon's log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// node is the directories of one tripodd instance.
type node struct {
	root, state, sock, hosts string
}

// nriSock is the node's NRI plugin socket, beside its CRI socket (a path
// short enough for a unix socket): never the host's.
func (n node) nriSock() string { return filepath.Join(filepath.Dir(n.sock), "nri.sock") }

func newNode(t *testing.T) node {
	sockDir := t.TempDir()
	if len(sockDir) > 80 {
		d, err := os.MkdirTemp("", "tpsock")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		sockDir = d
	}
	return node{root: t.TempDir(), state: t.TempDir(), sock: filepath.Join(sockDir, "tripod.sock"), hosts: t.TempDir()}
}

// daemonProc is a running tripodd process.
type daemonProc struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan error
}

// startDaemon runs tripodd for n and waits for its socket; the process is
// killed (by its PID) when the test ends, if still running.
func startDaemon(t *testing.T, n node, extra ...string) *daemonProc {
	t.Helper()
	return startDaemonEnv(t, n, nil, extra...)
}

// startDaemonEnv is startDaemon with more environment variables.
func startDaemonEnv(t *testing.T, n node, env []string, extra ...string) *daemonProc {
	t.Helper()
	args := append([]string{"--config", filepath.Join(n.state, "none.toml"), "--root", n.root, "--state", n.state,
		"--listen", "unix://" + n.sock, "--registry-hosts-dir", n.hosts, "--nri-socket", n.nriSock()}, extra...)
	if _, err := os.Stat(filepath.Join(n.state, "none.toml")); err != nil {
		os.WriteFile(filepath.Join(n.state, "none.toml"), nil, 0o644)
	}
	p := &daemonProc{cmd: exec.Command(tripodd, args...), log: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("tripodd log:\n%s", p.log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", n.sock); err == nil {
			c.Close()
			return p
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("tripodd exited: %v\n%s", err, p.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("tripodd did not listen on %s:\n%s", n.sock, p.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill sends SIGKILL to this daemon (through its process handle, a pidfd,
// so never to a reused PID) and waits until it is reaped.
func (p *daemonProc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	err := <-p.done
	p.done <- err
}

// stop asks the daemon to exit (SIGTERM) and waits.
func (p *daemonProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("tripodd exit: %v\n%s", err, p.log.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("tripodd did not stop on SIGTERM")
	}
}

func client(t *testing.T, n node) runtimeapi.ImageServiceClient {
	conn, err := grpc.NewClient("unix://"+n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return runtimeapi.NewImageServiceClient(conn)
}

func testCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func TestConfigDefault(t *testing.T) {
	out, err := exec.Command(tripodd, "config", "default").Output()
	if err != nil {
		t.Fatal(err)
	}
	var got config.Config
	dec := toml.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("default config does not parse: %v\n%s", err, out)
	}
	want := config.Default()
	if got.Root != want.Root || got.Listen != want.Listen || got.Image.RegistryHostsDir != want.Image.RegistryHostsDir ||
		got.Image.MaxConcurrentDownloads != want.Image.MaxConcurrentDownloads || got.Image.PauseImage != want.Image.PauseImage {
		t.Fatalf("printed default differs: %+v", got)
	}
	for _, field := range []string{"root", "state", "listen", "registry_hosts_dir", "pause_image", "max_concurrent_downloads", "[metrics]"} {
		if !strings.Contains(string(out), field) {
			t.Fatalf("default config lacks %s", field)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"listen":                         "listen = 'tcp://10.0.0.1:1234'\n",
		"root":                           "root = 'relative/dir'\n",
		"image.max_concurrent_downloads": "[image]\nmax_concurrent_downloads = 0\n",
		"image.platform":                 "[image]\nplatform = 'linux'\n",
		"metrics.address":                "[metrics]\naddress = '0.0.0.0:9000'\n",
		"unknown_field":                  "unknown_field = 1\n",
	}
	for field, body := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(field, ".", "_")+".toml")
		os.WriteFile(p, []byte(body), 0o644)
		out, err := exec.Command(tripodd, "--config", p, "config", "check").CombinedOutput()
		if err == nil || !strings.Contains(string(out), field) {
			t.Fatalf("%s: err %v, output %q does not name the field", field, err, out)
		}
	}
	// Flags override the file.
	p := filepath.Join(dir, "ok.toml")
	os.WriteFile(p, []byte("root = '/from/file'\n"), 0o644)
	out, err := exec.Command(tripodd, "--config", p, "--root", "/from/flag", "--listen", "unix:///x/y.sock", "config", "check").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "root = '/from/flag'") || !strings.Contains(string(out), "unix:///x/y.sock") {
		t.Fatalf("flags did not override: %v %s", err, out)
	}
	// A missing explicit config is an error.
	if out, err := exec.Command(tripodd, "--config", filepath.Join(dir, "missing.toml"), "config", "check").CombinedOutput(); err == nil {
		t.Fatalf("missing --config accepted: %s", out)
	}
}

// TestSideBySide: two daemons with their own root, state and socket run
// at once; a second one on a root in use is refused.
func TestSideBySide(t *testing.T) {
	a, b := newNode(t), newNode(t)
	startDaemon(t, a)
	startDaemon(t, b)
	for _, n := range []node{a, b} {
		if _, err := client(t, n).ListImages(testCtx(t), &runtimeapi.ListImagesRequest{}); err != nil {
			t.Fatal(err)
		}
		for sock, mode := range map[string]os.FileMode{n.sock: 0o660, filepath.Join(n.state, "admin.sock"): 0o600} {
			if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != mode {
				t.Fatalf("%s: %v %v, want mode %o", sock, fi.Mode(), err, mode)
			}
		}
	}
	c := b
	c.sock = filepath.Join(filepath.Dir(b.sock), "other.sock")
	args := []string{"--config", filepath.Join(b.state, "none.toml"), "--root", a.root, "--state", c.state, "--listen", "unix://" + c.sock}
	out, err := exec.Command(tripodd, args...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") {
		t.Fatalf("second daemon on the same root: %v %s", err, out)
	}
	// And one on a socket a live daemon answers on.
	args = []string{"--config", filepath.Join(b.state, "none.toml"), "--root", t.TempDir(), "--state", c.state, "--listen", "unix://" + a.sock}
	out, err = exec.Command(tripodd, args...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another daemon") {
		t.Fatalf("second daemon on a live socket: %v %s", err, out)
	}
}
