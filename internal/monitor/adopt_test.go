package monitor

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// startExiting starts `sh -c 'exit CODE'` and returns its pid and a pidfd.
func startExiting(t *testing.T, code int) (*exec.Cmd, int) {
	t.Helper()
	cmd := exec.Command("sh", "-c", fmt.Sprintf("exit %d", code))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return cmd, fd
}

// An adopted init's status is read from /proc while it is a zombie.
func TestExitFromZombie(t *testing.T) {
	cmd, fd := startExiting(t, 5)
	start := startTime(cmd.Process.Pid)
	if start == 0 {
		t.Fatal("no start time for a live process")
	}
	WaitPidfd(fd) // exited, not reaped: a zombie
	e := exitAfterAdoption(cmd.Process.Pid, start, fd)
	cmd.Wait()
	if e.Code != 5 || e.Unknown {
		t.Fatalf("exit %+v, want code 5", e)
	}
}

// Once reaped by someone else, the kernel (6.15+) still tells through the
// pidfd; older ones do not, and the status is unknown (255).
func TestExitAfterReap(t *testing.T) {
	cmd, fd := startExiting(t, 9)
	start := startTime(cmd.Process.Pid)
	cmd.Wait() // reaped: /proc knows nothing more
	e := exitAfterAdoption(cmd.Process.Pid, start, fd)
	_, _, supported := pidfdExitStatus(fd)
	switch {
	case e.Code == 9 && !e.Unknown:
	case e.Code == 255 && e.Unknown && !kernelKeepsExit(t):
		t.Logf("this kernel keeps no exit status for pidfds (PIDFD_GET_INFO supported: %v): 255", supported)
	default:
		t.Fatalf("exit %+v, want code 9", e)
	}
}

func kernelKeepsExit(t *testing.T) bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var major, minor int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
	return major > 6 || major == 6 && minor >= 15
}

// A FIFO's container end keeps it writable with no monitor reading, and a
// reader opened later gets what was written meanwhile.
func TestFIFOOutlivesReader(t *testing.T) {
	path := t.TempDir() + "/out.fifo"
	r, w, err := openFIFO(path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r.Close() // the monitor dies
	if _, err := w.Write([]byte("while nobody reads\n")); err != nil {
		t.Fatalf("write with no reader: %v", err)
	}
	r2, err := openFIFOReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	buf := make([]byte, 64)
	n, err := r2.Read(buf)
	if err != nil || string(buf[:n]) != "while nobody reads\n" {
		t.Fatalf("read %q %v", buf[:n], err)
	}
}

// A stdio pipe's container end keeps it writable with no monitor reading,
// and a successor reopening it through the holder's /proc/PID/fd (here
// this process's) gets what was written meanwhile; a wrong inode finds
// nothing.
func TestStdioPipeOutlivesReader(t *testing.T) {
	r, w, err := stdioPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ino := inode(r)
	if link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", w.Fd())); err != nil || link != fmt.Sprintf("pipe:[%d]", ino) {
		t.Fatalf("the container's end is %q (%v), not the pipe %d", link, err, ino)
	}
	r.Close() // the monitor dies
	if _, err := w.Write([]byte("while nobody reads\n")); err != nil {
		t.Fatalf("write with no reader: %v", err)
	}
	if f := openStdioPipe(os.Getpid(), ino+1, int(w.Fd())); f != nil {
		f.Close()
		t.Fatal("a pipe of another inode was opened")
	}
	// Found through another process of the cgroup when the init (here
	// a PID that is not) lacks it.
	cg := t.TempDir()
	os.WriteFile(filepath.Join(cg, "memory.events"), nil, 0o644)
	os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o644)
	if f := findStdioPipe(1<<22, filepath.Join(cg, "memory.events"), ino, 1); f == nil {
		t.Fatal("the pipe was not found through the cgroup's other processes")
	} else {
		f.Close()
	}
	// Found by its inode though not at the fd number given.
	r2 := openStdioPipe(os.Getpid(), ino, 1<<20)
	if r2 == nil {
		t.Fatal("the pipe was not found through /proc")
	}
	defer r2.Close()
	buf := make([]byte, 64)
	n, err := r2.Read(buf)
	if err != nil || string(buf[:n]) != "while nobody reads\n" {
		t.Fatalf("read %q %v", buf[:n], err)
	}
}
