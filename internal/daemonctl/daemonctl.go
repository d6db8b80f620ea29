// Package daemonctl starts tripod's daemons detached (own session, output
// to a log file, a PID file) and finds and stops them again by PID without
// ever signalling a process that merely reused the PID: a process is
// addressed through a pidfd, and only after its command line has been
// checked to be the daemon recorded.
package daemonctl

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Spec is a daemon to start.
type Spec struct {
	Name    string // its binary's base name, e.g. "tripodd"
	Path    string
	Args    []string
	PIDFile string
	LogFile string
}

// Started is a daemon this process started (and is the parent of, until
// it exits).
type Started struct {
	Spec
	PID    int
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// Start runs s in a new session with stdin on /dev/null and stdout and
// stderr appended to its log file, then writes its PID file.
func Start(s Spec) (*Started, error) {
	if err := os.MkdirAll(filepath.Dir(s.LogFile), 0o755); err != nil {
		return nil, fmt.Errorf("log directory: %w", err)
	}
	log, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	defer log.Close()
	fmt.Fprintf(log, "--- %s starting: %s %s\n", time.Now().Format(time.RFC3339), s.Path, strings.Join(s.Args, " "))
	cmd := exec.Command(s.Path, s.Args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.Name, err)
	}
	p := &Started{Spec: s, PID: cmd.Process.Pid, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	if err := WritePIDFile(s.PIDFile, p.PID); err != nil {
		p.Kill()
		return nil, fmt.Errorf("pid file: %w", err)
	}
	return p, nil
}

// Exited is closed when the process has ended; Err then says how.
func (p *Started) Exited() <-chan struct{} { return p.exited }

// Err is the process's exit status once Exited is closed.
func (p *Started) Err() error { return p.err }

// Stop ends a process this process started: SIGTERM, then SIGKILL after
// grace. The PID file goes too.
func (p *Started) Stop(grace time.Duration) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		p.Kill()
	}
	os.Remove(p.PIDFile)
}

// Kill ends the process at once and waits for it.
func (p *Started) Kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	os.Remove(p.PIDFile)
}

// Proc is a running process, held by a pidfd.
type Proc struct {
	PID  int
	Args []string // its command line when found
	fd   int
}

// ErrNotRunning says no live process matches a PID file.
var ErrNotRunning = errors.New("not running")

// Find returns the process whose PID is in pidFile if it is still the
// daemon: its argv[0] has base name name, its arguments include every
// string of want (its socket, say), and it started when the PID file says
// (a process that reused the PID started later). A PID file naming
// anything else, or nothing, is ErrNotRunning. The caller closes the Proc.
func Find(pidFile, name string, want ...string) (*Proc, error) {
	b, err := os.ReadFile(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotRunning
	}
	if err != nil {
		return nil, err
	}
	pid, started, err := parsePIDFile(b)
	if err != nil {
		return nil, ErrNotRunning
	}
	p, err := Open(pid, name, want...)
	if err != nil {
		return nil, err
	}
	// Checked with the pidfd open: the process it pins is the one started.
	if ticks, err := startTicks(pid); err != nil || ticks != started {
		p.Close()
		return nil, ErrNotRunning
	}
	return p, nil
}

// Open returns the process pid if its argv[0] has base name name and its
// arguments include every string of want.
func Open(pid int, name string, want ...string) (*Proc, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil, ErrNotRunning
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	p := &Proc{PID: pid, fd: fd}
	// The pidfd pins the process: if it is still alive after its command
	// line was read, that command line was its own.
	args, err := Cmdline(pid)
	if err != nil || len(args) == 0 || filepath.Base(args[0]) != name || !p.alive() {
		p.Close()
		return nil, ErrNotRunning
	}
	p.Args = args
	for _, w := range want {
		if !slices.Contains(args[1:], w) && !slices.ContainsFunc(args[1:], func(a string) bool { return strings.HasSuffix(a, "="+w) }) {
			p.Close()
			return nil, ErrNotRunning
		}
	}
	return p, nil
}

// Close releases the pidfd.
func (p *Proc) Close() { unix.Close(p.fd) }

func (p *Proc) alive() bool {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n == 0
}

// Signal sends sig to the process (never to a successor of its PID).
func (p *Proc) Signal(sig syscall.Signal) error {
	err := unix.PidfdSendSignal(p.fd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// Wait returns when the process has exited (a zombie counts: its parent
// may not be us), or ctx ends.
func (p *Proc) Wait(ctx context.Context) error {
	for {
		if !p.alive() {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, 100); err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// Stop sends SIGTERM and waits up to grace, then SIGKILL and waits for the
// exit. killed says SIGKILL was needed.
func (p *Proc) Stop(ctx context.Context, grace time.Duration) (killed bool, err error) {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return false, fmt.Errorf("SIGTERM %d: %w", p.PID, err)
	}
	wctx, cancel := context.WithTimeout(ctx, grace)
	err = p.Wait(wctx)
	cancel()
	if err == nil {
		return false, nil
	}
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return true, fmt.Errorf("SIGKILL %d: %w", p.PID, err)
	}
	return true, p.Wait(ctx)
}

// Cmdline is a process's argument vector.
func Cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), nil
}

// Flag returns the value of --name (as "--name value" or "--name=value")
// in a command line.
func Flag(args []string, name string) (string, bool) {
	for i, a := range args {
		if a == "--"+name || a == "-"+name {
			if i+1 < len(args) {
				return args[i+1], true
			}
			return "", false
		}
		for _, p := range []string{"--" + name + "=", "-" + name + "="} {
			if v, ok := strings.CutPrefix(a, p); ok {
				return v, true
			}
		}
	}
	return "", false
}

// startTicks is when a process started, in clock ticks after boot
// (/proc/PID/stat's field 22).
// WritePIDFile records pid and the process's start time (clock ticks after
// boot) in path: a later process that reuses the PID has another start
// time. Exact, and immune to the wall clock stepping.
func WritePIDFile(path string, pid int) error {
	ticks, err := startTicks(pid)
	if err != nil {
		return err
	}
	return writeFile(path, fmt.Appendf(nil, "%d %d\n", pid, ticks))
}

// ReadPIDFile returns the PID in path if that process is still the one
// the file was written for (ErrNotRunning otherwise).
func ReadPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, ErrNotRunning
	}
	pid, started, err := parsePIDFile(b)
	if err != nil {
		return 0, ErrNotRunning
	}
	if ticks, err := startTicks(pid); err != nil || ticks != started {
		return 0, ErrNotRunning
	}
	return pid, nil
}

func parsePIDFile(b []byte) (pid int, started uint64, err error) {
	if _, err := fmt.Sscanf(string(b), "%d %d", &pid, &started); err != nil || pid <= 0 {
		return 0, 0, fmt.Errorf("pid file %q: want \"<pid> <start ticks>\"", b)
	}
	return pid, started, nil
}

func startTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses: fields start after the last ')'.
	rest := b[bytes.LastIndexByte(b, ')')+1:]
	f := strings.Fields(string(rest))
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Answering reports whether something accepts connections on the unix
// socket at path.
func Answering(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// SocketHolder finds a process holding the listening unix socket bound at
// path (in this network namespace's socket table) and its command name;
// pid 0 when none is found.
func SocketHolder(path string) (pid int, comm string) {
	inode := listeningInode(path)
	if inode == "" {
		return 0, ""
	}
	want := "socket:[" + inode + "]"
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", e.Name(), "fd"))
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join("/proc", e.Name(), "fd", fd.Name())); err == nil && l == want {
				c, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
				return p, strings.TrimSpace(string(c))
			}
		}
	}
	return 0, ""
}

// listeningInode reads /proc/net/unix for the listening socket bound at
// path: "Num RefCount Protocol Flags Type St Inode Path".
func listeningInode(path string) string {
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 8 || f[7] != path {
			continue
		}
		// __SO_ACCEPTCON marks a listening socket.
		if flags, err := strconv.ParseUint(f[3], 16, 32); err == nil && flags&0x10000 != 0 {
			return f[6]
		}
	}
	return ""
}

// writeFile writes b to path whole (beside it, then renamed).
func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
