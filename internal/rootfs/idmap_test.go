package rootfs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// userNS starts a process in a new user namespace mapping 0..65535 to
// hostID.. and returns the path of its namespace; it is killed at the end.
func userNS(t *testing.T, hostID int) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("skipped: needs root (user namespaces with arbitrary mappings, mounts)")
	}
	cmd := exec.Command("/bin/sleep", "3600")
	m := []syscall.SysProcIDMap{{ContainerID: 0, HostID: hostID, Size: 65536}}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER, UidMappings: m, GidMappings: m}
	if err := cmd.Start(); err != nil {
		t.Fatalf("user namespace: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid)
}

func TestMountIDMapped(t *testing.T) {
	ns := userNS(t, 200000)
	for _, attach := range []bool{false, true} {
		t.Run(fmt.Sprintf("attach=%v", attach), func(t *testing.T) {
			base := t.TempDir()
			l0, l1 := filepath.Join(base, "l0"), filepath.Join(base, "l1")
			os.MkdirAll(filepath.Join(l0, "etc"), 0o755)
			os.WriteFile(filepath.Join(l0, "etc/passwd"), []byte("root:x:0:0::/:/bin/sh\n"), 0o644)
			os.WriteFile(filepath.Join(l0, "gone"), []byte("x"), 0o644)
			os.MkdirAll(l1, 0o755)
			os.WriteFile(filepath.Join(l1, "owned"), nil, 0o644)
			os.Chown(filepath.Join(l1, "owned"), 33, 33)
			// A whiteout in the upper layer hides l0's file.
			if err := unix.Mknod(filepath.Join(l1, "gone"), unix.S_IFCHR, 0); err != nil {
				t.Fatal(err)
			}
			dir, target := filepath.Join(base, "rw"), filepath.Join(base, "rootfs")
			err := MountIDMapped([]string{l0, l1}, dir, target, IDMapped{UserNS: ns, UID: 200000, GID: 200000, attachLayers: attach})
			if err != nil {
				t.Fatal(err)
			}
			defer Unmount(target)
			uidOf := func(p string) int {
				var st unix.Stat_t
				if err := unix.Stat(p, &st); err != nil {
					t.Fatal(err)
				}
				return int(st.Uid)
			}
			if got := uidOf(filepath.Join(target, "etc/passwd")); got != 200000 {
				t.Errorf("image root's file is owned by %d on the host, want the namespace's root 200000", got)
			}
			if got := uidOf(filepath.Join(target, "owned")); got != 200033 {
				t.Errorf("image uid 33's file is owned by %d, want 200033", got)
			}
			if got := uidOf(target); got != 200000 {
				t.Errorf("/ is owned by %d, want 200000", got)
			}
			if _, err := os.Stat(filepath.Join(target, "gone")); !os.IsNotExist(err) {
				t.Errorf("whiteout: %v", err)
			}
			// The layers on disk are untouched; staging is gone.
			if got := uidOf(filepath.Join(l0, "etc/passwd")); got != 0 {
				t.Errorf("layer file now owned by %d", got)
			}
			if _, err := os.Stat(filepath.Join(dir, "idmap")); !os.IsNotExist(err) {
				t.Errorf("staging dir left: %v", err)
			}
			if err := Cleanup(dir); err != nil {
				t.Fatal(err)
			}
		})
	}
	if err := MountIDMapped([]string{t.TempDir()}, t.TempDir(), filepath.Join(t.TempDir(), "r"), IDMapped{UserNS: "/nonexistent"}); err == nil {
		t.Fatal("a missing user namespace was accepted")
	}
}

// TestCleanupStage: a staging mount a crash left behind is unmounted, and
// the layer under it keeps its files.
func TestCleanupStage(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("skipped: needs root (mounts)")
	}
	layer, dir := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(layer, "keep"), []byte("x"), 0o644)
	p := filepath.Join(dir, "idmap", "0")
	os.MkdirAll(p, 0o700)
	if err := unix.Mount(layer, p, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(dir); err != nil {
		Unmount(p)
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(layer, "keep")); err != nil {
		t.Fatalf("layer file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "idmap")); !os.IsNotExist(err) {
		t.Fatalf("stage left: %v", err)
	}
}
