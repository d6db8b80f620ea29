package main_test

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// tripod and tripodd are the binaries under test, built with the rest of
// the node's programs into binDir (tripod up runs them from beside itself).
var tripod, tripodd, binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tripod-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	tripod, tripodd = filepath.Join(dir, "tripod"), filepath.Join(dir, "tripodd")
	// Daemons that tripod up detaches are orphaned when it exits: this
	// process adopts and reaps them, not PID 1 (which may not reap).
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "PR_SET_CHILD_SUBREAPER:", err)
		os.Exit(1)
	}
	for bin, pkg := range map[string]string{tripod: ".", tripodd: "../tripodd", filepath.Join(dir, "tripod-csi"): "../tripod-csi",
		filepath.Join(dir, "tripod-monitor"): "../tripod-monitor", filepath.Join(dir, "tripod-cni"): "../tripod-cni"} {
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	// The monitor's exec stage (C, through cgo), beside the monitor.
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "tripod-exec"), "../tripod-exec")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build ../tripod-exec: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// node is one running tripodd; the CLI reaches it through its sockets.
type node struct {
	root, state, sock string
}

func startNode(t *testing.T) node {
	t.Helper()
	sockDir := t.TempDir()
	if len(sockDir) > 80 {
		d, err := os.MkdirTemp("", "tpsock")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		sockDir = d
	}
	n := node{root: t.TempDir(), state: sockDir, sock: filepath.Join(sockDir, "tripod.sock")}
	cfg := filepath.Join(t.TempDir(), "tripod.toml")
	os.WriteFile(cfg, nil, 0o644)
	cmd := exec.Command(tripodd, "--config", cfg, "--root", n.root, "--state", n.state, "--listen", "unix://"+n.sock,
		"--registry-hosts-dir", t.TempDir())
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			t.Logf("tripodd log:\n%s", log.String())
		}
	})
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", filepath.Join(n.state, "admin.sock")); err == nil {
			c.Close()
			return n
		}
		if i > 1500 {
			t.Fatalf("tripodd did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n node) cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(tripod, append([]string{"--endpoint", "unix://" + n.sock, "--admin", filepath.Join(n.state, "admin.sock")}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (n node) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := n.cli(t, args...)
	if err != nil {
		t.Fatalf("tripod %v: %v\n%s", args, err, out)
	}
	return out
}

func testImage(marker string) v1.Image {
	return imagetest.Image(runtime.GOARCH, "1000",
		imagetest.Layer(imagetest.Entry{Name: "etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "etc/marker", Body: marker}),
		imagetest.Layer(imagetest.Entry{Name: "etc/.wh.marker"}, imagetest.Entry{Name: "bin/app", Size: 2 << 20, Mode: 0o755}))
}

// TestPullExportImport: pull with the CLI, export in both formats, import
// each into a fresh node: same image ID, names and unpacked files.
func TestPullExportImport(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	img := testImage("exported")
	reg.Push(t, "cli/app:1", img)
	cfg, _ := img.ConfigName()
	a := startNode(t)
	ref := reg.Host + "/cli/app:1"
	out := a.must(t, "images", "pull", ref)
	if !strings.Contains(out, cfg.String()) {
		t.Fatalf("pull output %q lacks %s", out, cfg)
	}
	if out := a.must(t, "images", "ls"); !strings.Contains(out, ref) {
		t.Fatalf("ls: %s", out)
	}
	dir := t.TempDir()
	for _, format := range []string{"oci", "docker"} {
		t.Run(format, func(t *testing.T) {
			file := filepath.Join(dir, format+".tar")
			a.must(t, "images", "export", "--format", format, "-o", file, ref)
			b := startNode(t)
			out := b.must(t, "images", "import", file)
			if !strings.Contains(out, cfg.String()) || !strings.Contains(out, ref) {
				t.Fatalf("import output: %q", out)
			}
			if out := b.must(t, "images", "ls"); !strings.Contains(out, ref) {
				t.Fatalf("ls after import: %s", out)
			}
			layers, _ := filepath.Glob(filepath.Join(b.root, "images/layers/sha256/*"))
			if len(layers) != 2 {
				t.Fatalf("%d layers unpacked", len(layers))
			}
			found := false
			for _, l := range layers {
				if fi, err := os.Stat(filepath.Join(l, "bin/app")); err == nil && fi.Size() == 2<<20 {
					found = true
				}
			}
			if !found {
				t.Fatal("bin/app not unpacked")
			}
		})
	}
	// Unknown image: an error, and no file.
	file := filepath.Join(dir, "none.tar")
	if out, err := a.cli(t, "images", "export", "-o", file, reg.Host+"/cli/none:1"); err == nil || !strings.Contains(out, "not_found") {
		t.Fatalf("export of a missing image: %v %s", err, out)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("export left %s", file)
	}
}

// TestImportLayoutDir imports an OCI layout directory holding a
// multi-platform index: the node's platform is chosen.
func TestImportLayoutDir(t *testing.T) {
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	mine := testImage("mine")
	theirs := imagetest.Image(other, "", imagetest.Layer(imagetest.Entry{Name: "x", Body: "theirs"}))
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendIndex(imagetest.Index(theirs, mine), layout.WithAnnotations(map[string]string{
		"io.containerd.image.name": "registry.k8s.io/pause:3.10"})); err != nil {
		t.Fatal(err)
	}
	n := startNode(t)
	out := n.must(t, "images", "import", dir)
	cfg, _ := mine.ConfigName()
	if !strings.Contains(out, cfg.String()) || !strings.Contains(out, "registry.k8s.io/pause:3.10") {
		t.Fatalf("import: %q", out)
	}
	ls := n.must(t, "images", "ls")
	if !strings.Contains(ls, "registry.k8s.io/pause:3.10") || !strings.Contains(ls, "true") {
		t.Fatalf("ls (the pause image is pinned): %s", ls)
	}
	// Garbage is refused and leaves nothing.
	junk := filepath.Join(t.TempDir(), "junk.tar")
	os.WriteFile(junk, []byte("not a tar at all"), 0o644)
	if out, err := n.cli(t, "images", "import", junk); err == nil || !strings.Contains(out, "invalid_argument") {
		t.Fatalf("junk import: %v %s", err, out)
	}
	if ents, _ := os.ReadDir(filepath.Join(n.root, "images/content/ingest")); len(ents) != 0 {
		t.Fatalf("import left %v", ents)
	}
}

// TestPullShowsProgress: a pull held mid-layer reports its progress (as
// plain lines, stderr not being a terminal) before it completes.
func TestPullShowsProgress(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	img := testImage("progress")
	reg.Push(t, "cli/slow:1", img)
	layers, _ := img.Layers()
	d, _ := layers[1].Digest()
	release := reg.Stall(d)
	defer release()
	n := startNode(t)
	cmd := exec.Command(tripod, "--endpoint", "unix://"+n.sock, "--admin", filepath.Join(n.state, "admin.sock"), "images", "pull", reg.Host+"/cli/slow:1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGKILL); cmd.Wait() })
	<-reg.Stalled()
	buf := make([]byte, 4096)
	var got string
	for !strings.Contains(got, "1/2 layers") {
		k, err := stderr.Read(buf)
		if err != nil {
			t.Fatalf("no progress line before the pull ended: %q %v", got, err)
		}
		got += string(buf[:k])
	}
	release()
	io.Copy(io.Discard, stderr)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("pull: %v", err)
	}
	cfg, _ := img.ConfigName()
	if strings.TrimSpace(stdout.String()) != cfg.String() {
		t.Fatalf("stdout %q", stdout.String())
	}
}
