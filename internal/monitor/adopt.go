package monitor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A monitor can die (a kill -9, the OOM killer) while its containers run
// on. Their inits are then reparented to the node's init, and the next
// monitor can never reap them; what it can do is adopt them: signal and
// watch them through a pidfd, read their logs again from their stdio pipes
// (or the FIFOs in the bundle that earlier monitors gave containers), and
// find out how they ended as well as the kernel still tells.

// The container's stdout and stderr FIFOs (of containers that earlier
// monitors made), and the monitor's record, in its bundle.
const (
	StdoutFIFO = "stdout.fifo"
	StderrFIFO = "stderr.fifo"
	RecordFile = "monitor.json"
)

// record is what a monitor writes at create for a successor to adopt the
// container with.
type record struct {
	Pid     int    `json:"pid"`
	Start   uint64 `json:"start"` // the init's start time (clock ticks after boot): tells a reused PID
	OOMFile string `json:"oomFile,omitempty"`
	OOMBase int64  `json:"oomBase"`
	LogPath string `json:"logPath,omitempty"`
	// The inodes of the stdout and stderr pipes (see stdioPipe); none
	// in records of containers given FIFOs in the bundle.
	StdoutPipe uint64 `json:"stdoutPipe,omitempty"`
	StderrPipe uint64 `json:"stderrPipe,omitempty"`
}

func writeRecord(bundle string, r record) error {
	b, _ := json.Marshal(r)
	tmp := filepath.Join(bundle, RecordFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(bundle, RecordFile))
}

func readRecord(bundle string) (record, error) {
	var r record
	b, err := os.ReadFile(filepath.Join(bundle, RecordFile))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w", RecordFile, err)
	}
	return r, nil
}

// stdioPipe makes a pipe for a container's stdout or stderr: r for this
// process, w for the container. w is the pipe opened again, read-write,
// through /proc: the pipe then always has a reader, so a container
// writing while no monitor reads never gets EPIPE (or SIGPIPE); it blocks
// once the pipe buffer is full, until a monitor reads again, one that
// opens the pipe anew through the container's /proc/PID/fd (see
// openStdioPipe). A pipe, not a FIFO on a host file system: CRIU dumps a
// pipe, and runc hands a restore the new container's pipes in its place;
// a FIFO outside the container's mounts it cannot dump.
func stdioPipe() (r, w *os.File, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, fmt.Errorf("pipe: %w", err)
	}
	defer unix.Close(p[1])
	// Blocking, as a container's stdout must be.
	wfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", p[0]), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(p[0])
		return nil, nil, fmt.Errorf("reopen pipe: %w", err)
	}
	// Non-blocking, so reads go through Go's poller.
	if err := unix.SetNonblock(p[0], true); err != nil {
		unix.Close(p[0])
		unix.Close(wfd)
		return nil, nil, err
	}
	return os.NewFile(uintptr(p[0]), "stdio"), os.NewFile(uintptr(wfd), "stdio"), nil
}

// inode is an open file's inode number (0 if unknown).
func inode(f *os.File) uint64 {
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil {
		return 0
	}
	return st.Ino
}

// openStdioPipe opens, for reading, the pipe of inode ino that process
// pid holds (its fd 1 or 2 unless it moved them: then any of its
// descriptors), or nil.
func openStdioPipe(pid int, ino uint64, fd int) *os.File {
	try := func(path string) *os.File {
		rfd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil
		}
		var st unix.Stat_t
		if unix.Fstat(rfd, &st) != nil || st.Ino != ino || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			unix.Close(rfd)
			return nil
		}
		return os.NewFile(uintptr(rfd), "stdio")
	}
	if f := try(fmt.Sprintf("/proc/%d/fd/%d", pid, fd)); f != nil {
		return f
	}
	want := fmt.Sprintf("pipe:[%d]", ino)
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if link, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && link == want {
			if f := try(filepath.Join(dir, e.Name())); f != nil {
				return f
			}
		}
	}
	return nil
}

// findStdioPipe opens a container's stdio pipe through its init, else
// through any process of its cgroup (the one whose oomFile is given): the
// init may have closed its own copy while a child writes on.
func findStdioPipe(pid int, oomFile string, ino uint64, fd int) *os.File {
	if f := openStdioPipe(pid, ino, fd); f != nil || oomFile == "" {
		return f
	}
	b, _ := os.ReadFile(filepath.Join(filepath.Dir(oomFile), "cgroup.procs"))
	for _, p := range strings.Fields(string(b)) {
		if other, err := strconv.Atoi(p); err == nil && other != pid {
			if f := openStdioPipe(other, ino, fd); f != nil {
				return f
			}
		}
	}
	return nil
}

// openFIFO makes a FIFO at path and opens both ends. The container's end
// is opened read-write: the FIFO then always has a reader, so a container
// writing while no monitor reads never gets EPIPE (or SIGPIPE); it blocks
// once the pipe buffer is full, until a monitor reads again.
func openFIFO(path string) (r, w *os.File, err error) {
	os.Remove(path)
	if err := unix.Mkfifo(path, 0o600); err != nil {
		return nil, nil, fmt.Errorf("mkfifo %s: %w", path, err)
	}
	wfd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", path, err)
	}
	r, err = openFIFOReader(path)
	if err != nil {
		unix.Close(wfd)
		return nil, nil, err
	}
	// Blocking, as a container's stdout must be.
	return r, os.NewFile(uintptr(wfd), path), nil
}

// openFIFOReader opens a FIFO's reading end without waiting for a writer;
// non-blocking, so reads go through Go's poller. Once no writer is left
// (every process of the container has ended) reads return EOF.
func openFIFOReader(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// procStat returns the fields of /proc/PID/stat after the command name,
// numbered as in proc(5) minus 3 (the state is [0]).
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// startTime is a process's start time in clock ticks after boot (0 if it
// is gone).
func startTime(pid int) uint64 {
	f, err := procStat(pid)
	if err != nil || len(f) < 20 {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

// adopt takes over a container another monitor started: known ones are
// answered as by state; an exit already recorded is returned; a running
// init is watched through a pidfd and its logs resumed.
func (s *Server) adopt(req Request) (Reply, error) {
	if req.ID == "" || req.Bundle == "" {
		return Reply{}, errors.New("adopt: id and bundle are required")
	}
	s.mu.Lock()
	known := s.containers[req.ID]
	s.mu.Unlock()
	if known != nil {
		return known.state(), nil
	}
	c := &container{id: req.ID, bundle: req.Bundle, done: make(chan struct{}), pidfd: -1}
	if e, ok := ReadExit(req.Bundle); ok {
		c.pid, c.exit = e.Pid, e
		close(c.done)
		return s.register(c).state(), nil
	}
	rec, err := readRecord(req.Bundle)
	if err != nil {
		return Reply{}, fmt.Errorf("adopt %s: %w", req.ID, err)
	}
	c.pid, c.oomFile, c.oomBase, c.logPath = rec.Pid, rec.OOMFile, rec.OOMBase, rec.LogPath
	// The pidfd pins the process; checked after it is open, the start
	// time tells whether it is still the init and not a reused PID.
	fd, err := unix.PidfdOpen(c.pid, 0)
	if err == nil && (rec.Start == 0 || startTime(c.pid) != rec.Start) {
		unix.Close(fd)
		err = unix.ESRCH
	}
	if err != nil {
		// Ended (and reaped) while no monitor held it: how is lost.
		e := Exit{Pid: c.pid, Code: 255, Unknown: true, FinishedAt: time.Now().UnixNano()}
		if c.oomFile != "" && oomKills(c.oomFile) > c.oomBase {
			e.OOMKilled = true
		}
		writeExit(c.bundle, e)
		c.exit = e
		close(c.done)
		return s.register(c).state(), nil
	}
	c.pidfd = fd
	if err := c.reopen(); err != nil {
		unix.Close(fd)
		return Reply{}, err
	}
	var streams [2]*os.File
	if rec.StdoutPipe != 0 {
		streams[0], streams[1] = findStdioPipe(c.pid, rec.OOMFile, rec.StdoutPipe, 1), findStdioPipe(c.pid, rec.OOMFile, rec.StderrPipe, 2)
	} else {
		for i, name := range []string{StdoutFIFO, StderrFIFO} {
			if f, err := openFIFOReader(filepath.Join(req.Bundle, name)); err == nil {
				streams[i] = f
			}
		}
	}
	if got := s.register(c); got != c {
		// Adopted by a concurrent call meanwhile.
		unix.Close(fd)
		c.closeLog()
		for _, f := range streams {
			if f != nil {
				f.Close()
			}
		}
		return got.state(), nil
	}
	copiers := c.copyLogs(streams[0], streams[1])
	go func() {
		WaitPidfd(fd)
		s.finish(c, exitAfterAdoption(c.pid, rec.Start, fd), copiers)
	}()
	return c.state(), nil
}

// register adds c unless a container of that ID is known, and returns the
// one that is.
func (s *Server) register(c *container) *container {
	s.mu.Lock()
	defer s.mu.Unlock()
	if known, ok := s.containers[c.id]; ok {
		return known
	}
	s.containers[c.id] = c
	return c
}

// state is the container as a state or adopt reply.
func (c *container) state() Reply {
	rep := Reply{Known: true, Pid: c.pid}
	select {
	case <-c.done:
		e := c.exit
		rep.Exit = &e
	default:
		rep.Running = true
	}
	return rep
}

// WaitPidfd blocks until the process ends, through Go's poller (a pidfd
// turns readable when its process exits) rather than a thread per
// container. The pidfd is duplicated: the caller keeps its own for kill.
func WaitPidfd(pidfd int) {
	dup, err := unix.FcntlInt(uintptr(pidfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		pollPidfd(pidfd)
		return
	}
	unix.SetNonblock(dup, true)
	f := os.NewFile(uintptr(dup), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		pollPidfd(pidfd)
		return
	}
	if err := rc.Read(func(fd uintptr) bool { return exited(int(fd)) }); err != nil {
		pollPidfd(pidfd)
	}
}

func exited(pidfd int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// pollPidfd is WaitPidfd without the poller.
func pollPidfd(pidfd int) {
	for {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != unix.EINTR {
			return
		}
	}
}

// exitAfterAdoption finds out how an adopted init ended. It is not this
// process's child, so no wait status comes: while it is a zombie its
// status is in /proc/PID/stat (the exit_code field); once reaped, kernels
// from 6.15 keep it for holders of a pidfd (PIDFD_INFO_EXIT). Otherwise
// it is unknown: code 255.
func exitAfterAdoption(pid int, start uint64, pidfd int) Exit {
	if f, err := procStat(pid); err == nil && len(f) >= 50 && f[0] == "Z" && startTime(pid) == start {
		if code, err := strconv.Atoi(f[49]); err == nil {
			return exitOf(pid, unix.WaitStatus(code))
		}
	}
	// Whoever reaps orphans (the node's init) may take a moment.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ws, ok, supported := pidfdExitStatus(pidfd)
		if ok {
			return exitOf(pid, ws)
		}
		if !supported || time.Now().After(deadline) {
			return Exit{Pid: pid, Code: 255, Unknown: true, FinishedAt: time.Now().UnixNano()}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pidfdInfo is the first version (64 bytes) of the kernel's struct
// pidfd_info, which holds the exit status.
type pidfdInfo struct {
	Mask, CgroupID                                                    uint64
	Pid, Tgid, Ppid, Ruid, Rgid, Euid, Egid, Suid, Sgid, Fsuid, Fsgid uint32
	ExitCode                                                          int32
}

const (
	// pidfdGetInfo is _IOWR(0xFF, 11, struct pidfd_info) at 64 bytes;
	// the kernel takes any size from the first version on.
	pidfdGetInfo  = 0xC040FF0B
	pidfdInfoExit = 1 << 3
)

// pidfdExitStatus asks the kernel for the exit status of a reaped process.
// supported is false when the kernel has no PIDFD_GET_INFO.
func pidfdExitStatus(pidfd int) (ws unix.WaitStatus, ok, supported bool) {
	info := pidfdInfo{Mask: pidfdInfoExit}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(pidfd), pidfdGetInfo, uintptr(unsafe.Pointer(&info)))
	switch errno {
	case 0:
	case unix.ENOTTY, unix.EINVAL:
		return 0, false, false
	default:
		return 0, false, true
	}
	if info.Mask&pidfdInfoExit == 0 {
		return 0, false, true
	}
	return unix.WaitStatus(info.ExitCode), true, true
}
