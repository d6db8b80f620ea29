// Package csitest runs the real tripod-csi binary for tests: each driver
// gets its own root and socket under the test's temporary directory, and
// every mount and loop device under that directory is undone at cleanup,
// whether the test passed, failed or killed the driver.
package csitest

import (
	"context"
	"errors"
	"fmt"
	"github.com/tripod-dev/tripod/internal/mountinfo"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tripod-dev/tripod/internal/csi/loop"
)

// NeedRoot skips a test that needs loop devices and mounts.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root for loop devices and mounts")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("skipping: no loop device support: %v", err)
	}
}

// HasFS reports whether fs's mkfs is installed.
func HasFS(fs string) bool {
	_, err := exec.LookPath("mkfs." + fs)
	return err == nil
}

// NeedFS skips a test whose filesystem's tools are not installed.
func NeedFS(t testing.TB, fs string) {
	t.Helper()
	if !HasFS(fs) {
		t.Skipf("skipping: mkfs.%s not installed (make deps installs e2fsprogs and xfsprogs)", fs)
	}
}

// HasSysResource reports whether this process may grow a mounted ext4
// (the kernel's resize ioctl needs CAP_SYS_RESOURCE).
func HasSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			fmt.Sscanf(strings.TrimSpace(v), "%x", &caps)
			return caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}

// Binary returns the driver binary named by $TRIPOD_CSI_BIN (make test sets
// it to bin/tripod-csi; a package's TestMain sets it through Build when it
// is unset).
func Binary(t testing.TB) string {
	t.Helper()
	p := os.Getenv("TRIPOD_CSI_BIN")
	if p == "" {
		t.Fatal("TRIPOD_CSI_BIN is not set (make test sets it; TestMain should call csitest.Build)")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("TRIPOD_CSI_BIN: %v", err)
	}
	return p
}

// Build makes the driver binary for a test process unless TRIPOD_CSI_BIN
// already names one, and points TRIPOD_CSI_BIN at it. The returned func
// removes what Build made.
func Build() (cleanup func(), err error) {
	if os.Getenv("TRIPOD_CSI_BIN") != "" {
		return func() {}, nil
	}
	_, file, _, _ := runtime.Caller(0)
	modRoot := filepath.Join(filepath.Dir(file), "..", "..", "..")
	dir, err := os.MkdirTemp("", "tripod-csi-bin-")
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "tripod-csi")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/tripod-csi")
	cmd.Dir = modRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("go build ./cmd/tripod-csi: %v: %s", err, out)
	}
	os.Setenv("TRIPOD_CSI_BIN", bin)
	return func() { os.RemoveAll(dir) }, nil
}

// Driver is one running tripod-csi process.
type Driver struct {
	t      testing.TB
	Bin    string
	Dir    string // per-test directory: root, socket and paths for volumes
	Root   string
	Socket string
	NodeID string
	Args   []string
	// Env is added to the driver's environment at its next (re)start.
	Env  []string
	cmd  *exec.Cmd
	done chan error
	Conn *grpc.ClientConn

	Identity   csi.IdentityClient
	Controller csi.ControllerClient
	Node       csi.NodeClient
	Group      csi.GroupControllerClient
}

// Start runs the driver with extra flags in a fresh per-test directory.
func Start(t testing.TB, extra ...string) *Driver {
	t.Helper()
	return StartEnv(t, nil, extra...)
}

// StartEnv is Start with extra environment variables for the first run.
func StartEnv(t testing.TB, env []string, extra ...string) *Driver {
	t.Helper()
	NeedRoot(t)
	dir := t.TempDir()
	// Registered after TempDir's removal, so it runs before it.
	t.Cleanup(func() { CleanupDir(t, dir) })
	// The directory becomes a shared mount, as kubelet's is: a process
	// elsewhere on the machine that copies our mounts into a new mount
	// namespace (ip netns exec, for one) then gets copies that follow our
	// unmounts, instead of pinning a volume's filesystem and loop device.
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind %s: %v", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		t.Fatalf("make %s shared: %v", dir, err)
	}
	d := &Driver{
		t: t, Bin: Binary(t), Dir: dir, Root: filepath.Join(dir, "root"),
		Socket: filepath.Join(dir, "csi.sock"), NodeID: "node-" + filepath.Base(filepath.Dir(dir)),
		Env: env,
	}
	if len(d.NodeID) > 60 {
		d.NodeID = d.NodeID[:60]
	}
	if err := os.MkdirAll(d.Path(), 0o755); err != nil {
		t.Fatal(err)
	}
	d.Args = append([]string{"--endpoint", "unix://" + d.Socket, "--root", d.Root, "--node-id", d.NodeID, "--log-level", "warn"}, extra...)
	d.start()
	t.Cleanup(d.Stop)
	return d
}

func (d *Driver) start() {
	d.t.Helper()
	d.cmd = exec.Command(d.Bin, d.Args...)
	d.cmd.Env = append(os.Environ(), d.Env...)
	logf, err := os.OpenFile(filepath.Join(d.Dir, "driver.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		d.t.Fatalf("start driver: %v", err)
	}
	logf.Close()
	d.done = make(chan error, 1)
	go func(c *exec.Cmd, done chan error) { done <- c.Wait() }(d.cmd, d.done)
	d.connect()
}

// connect waits for the driver to answer Probe on its socket.
func (d *Driver) connect() {
	d.t.Helper()
	conn, err := grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.t.Fatalf("dial: %v", err)
	}
	d.Conn = conn
	d.Identity = csi.NewIdentityClient(conn)
	d.Controller = csi.NewControllerClient(conn)
	d.Node = csi.NewNodeClient(conn)
	d.Group = csi.NewGroupControllerClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		select {
		case err := <-d.done:
			d.done <- err
			d.t.Fatalf("driver exited: %v\n%s", err, d.Log())
		default:
		}
		if _, err := os.Stat(d.Socket); err == nil {
			if _, err := d.Identity.Probe(ctx, &csi.ProbeRequest{}); err == nil {
				return
			}
		}
		select {
		case <-ctx.Done():
			d.t.Fatalf("driver did not come up: %v\n%s", ctx.Err(), d.Log())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Log returns what the driver wrote to stderr.
func (d *Driver) Log() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "driver.log"))
	return string(b)
}

// Kill ends the driver with SIGKILL (its PID only) and waits for it.
func (d *Driver) Kill() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
	d.Conn.Close()
	d.cmd = nil
}

// Exited waits for a driver that is expected to die by itself (at a fail
// point) and reports how it ended.
func (d *Driver) Exited() error {
	err := <-d.done
	d.Conn.Close()
	d.cmd = nil
	return err
}

// Restart starts the driver again on the same root and socket.
func (d *Driver) Restart() {
	d.t.Helper()
	d.start()
}

// Stop ends the driver with SIGTERM, falling back to SIGKILL.
func (d *Driver) Stop() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
	}
	d.Conn.Close()
	d.cmd = nil
}

// Path returns a path under the per-test directory's "paths" (which Start
// creates), outside the driver's root: for staging and target paths.
func (d *Driver) Path(parts ...string) string {
	return filepath.Join(append([]string{d.Dir, "paths"}, parts...)...)
}

// Mounts lists the mount points under dir, deepest first.
func Mounts(dir string) ([]string, error) { return mountinfo.Under(dir) }

// Loops lists loop devices whose backing file is under dir.
func Loops(dir string) ([]loop.Device, error) {
	all, err := loop.List()
	if err != nil {
		return nil, err
	}
	var out []loop.Device
	for _, l := range all {
		if strings.HasPrefix(l.Backing, dir+"/") {
			out = append(out, l)
		}
	}
	return out, nil
}

// CleanupDir unmounts everything under dir and detaches every loop device
// backed by a file under it, reporting what it had to clean up.
func CleanupDir(t testing.TB, dir string) {
	real, err := filepath.EvalSymlinks(dir)
	if err == nil {
		dir = real
	}
	for range 8 {
		mps, err := Mounts(dir)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		if len(mps) == 0 {
			break
		}
		for _, mp := range mps {
			if err := unix.Unmount(mp, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) {
				t.Errorf("cleanup: unmount %s: %v", mp, err)
			}
		}
	}
	loops, err := Loops(dir)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	for _, l := range loops {
		if err := loop.Detach(l.Path); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
}

// AssertClean fails the test if anything is mounted or attached under dir.
func AssertClean(t testing.TB, dir string) {
	t.Helper()
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	mps, err := Mounts(dir)
	if err != nil {
		t.Fatal(err)
	}
	mps = slices.DeleteFunc(mps, func(mp string) bool { return mp == dir }) // Start's shared bind
	if len(mps) > 0 {
		t.Errorf("mounts left under %s: %v", dir, mps)
	}
	// Autoclear devices go away asynchronously after their last unmount.
	deadline := time.Now().Add(5 * time.Second)
	for {
		loops, err := Loops(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(loops) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("loop devices left under %s: %+v", dir, loops)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
