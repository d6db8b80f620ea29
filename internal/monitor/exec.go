package monitor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// An exec session costs no process of its own: `<runtime> exec --detach`
// starts the process and exits, the process is reparented to the monitor
// (a child subreaper, and the runtime's parent), which reaps it, and its
// stdio (pipes, or the pty master the runtime hands over on a console
// socket) go to the caller with the reply. The connection stays open and
// carries the exit status; any byte from the caller, or the caller going
// away, kills the process.

// startRuntime starts the OCI runtime with files as its stdio and returns
// its pid and a channel with its wait status.
func (s *Server) startRuntime(bin string, args []string, dir string, files []*os.File) (int, chan unix.WaitStatus, error) {
	if !strings.Contains(bin, "/") {
		var err error
		if bin, err = lookPath(bin); err != nil {
			return 0, nil, err
		}
	}
	s.mu.Lock() // hold the reaper off until the pid is registered
	defer s.mu.Unlock()
	p, err := os.StartProcess(bin, args, &os.ProcAttr{Dir: dir, Files: files})
	if err != nil {
		return 0, nil, fmt.Errorf("start %s: %w", bin, err)
	}
	ch := make(chan unix.WaitStatus, 1)
	s.byPid[p.Pid] = ch
	// The reaper waits for it by pid: the handle (a pidfd) would only
	// stay open until a garbage collection.
	pid := p.Pid
	p.Release()
	return pid, ch, nil
}

// pipe returns a pipe whose child end is an *os.File for StartProcess and
// whose parent end is a raw descriptor to pass on; parentReads says which
// end the parent keeps.
func pipe(parentReads bool) (child *os.File, parent int, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, -1, fmt.Errorf("pipe: %w", err)
	}
	if parentReads {
		return os.NewFile(uintptr(p[1]), "stdio"), p[0], nil
	}
	return os.NewFile(uintptr(p[0]), "stdio"), p[1], nil
}

func (s *Server) exec(conn *net.UnixConn, in io.Reader, req Request) {
	fail := func(err error) { json.NewEncoder(conn).Encode(Reply{Error: err.Error()}) }
	if req.ID == "" || req.Bundle == "" || req.Runtime == "" || len(req.Args) == 0 {
		fail(errors.New("exec: id, bundle, runtime and args are required"))
		return
	}
	var child []*os.File // the process's stdio
	var parent []int     // what the caller gets
	defer func() {
		closeAll(child)
		for _, fd := range parent {
			unix.Close(fd)
		}
	}()
	null, err := os.Open(os.DevNull)
	if err != nil {
		fail(err)
		return
	}
	if req.TTY {
		child = []*os.File{null, null, null}
	} else {
		child = []*os.File{null, nil, nil}
		if req.Stdin {
			f, fd, err := pipe(false)
			if err != nil {
				null.Close()
				fail(err)
				return
			}
			child[0] = f
			parent = append(parent, fd)
			null.Close()
		}
		for i := 1; i <= 2; i++ {
			f, fd, err := pipe(true)
			if err != nil {
				fail(err)
				return
			}
			child[i] = f
			parent = append(parent, fd)
		}
	}
	var pid int
	var master *os.File
	via := "runtime: not asked for direct"
	started := false
	if req.Direct {
		var reason string
		pid, master, reason, err = s.startDirect(req, child)
		if reason == "" {
			started, via = true, "direct"
		} else {
			via = "runtime: " + reason
		}
	}
	if !started {
		pid, master, err = s.startWithRuntime(req, child)
	}
	closeAll(child)
	child = nil
	if master != nil {
		defer master.Close()
	}
	if err != nil {
		fail(err)
		return
	}
	// The process is this monitor's child now (the runtime, its parent,
	// has exited) and only this monitor reaps it, so until its status is
	// taken below the pid cannot be reused.
	pidfd, perr := unix.PidfdOpen(pid, 0)
	if perr != nil {
		pidfd = -1
	} else {
		defer unix.Close(pidfd)
	}
	exited := s.watch(pid)

	if master != nil {
		mfd, err := dupFd(master)
		if err != nil {
			unix.Kill(pid, unix.SIGKILL)
			<-exited
			fail(err)
			return
		}
		parent = append(parent, mfd)
	}
	rep, _ := json.Marshal(Reply{Pid: pid, Via: via})
	if err := sendFds(conn, append(rep, '\n'), parent); err != nil {
		s.killExec(pid, pidfd)
		<-exited
		return
	}
	for _, fd := range parent {
		unix.Close(fd)
	}
	parent = nil

	stop := make(chan struct{})
	go func() {
		// A kill request (any byte but the newline that ended the
		// request), or the caller gone.
		var b [1]byte
		for {
			if _, err := in.Read(b[:]); err != nil || b[0] != '\n' {
				break
			}
		}
		close(stop)
	}()
	var st unix.WaitStatus
	select {
	case st = <-exited:
	case <-stop:
		s.killExec(pid, pidfd)
		st = <-exited
	}
	e := Exit{Pid: pid, FinishedAt: time.Now().UnixNano()}
	switch {
	case st.Exited():
		e.Code = int32(st.ExitStatus())
	case st.Signaled():
		e.Signal = int(st.Signal())
		e.Code = 128 + int32(st.Signal())
	}
	json.NewEncoder(conn).Encode(Reply{Exit: &e})
}

// startWithRuntime starts req's process with `<runtime> exec --detach`
// and returns its pid (and, with a TTY, the pty master).
func (s *Server) startWithRuntime(req Request, child []*os.File) (int, *os.File, error) {
	b := make([]byte, 6)
	rand.Read(b)
	tag := hex.EncodeToString(b)
	pidFile := filepath.Join(req.Bundle, "exec-"+tag+".pid")
	logFile := filepath.Join(req.Bundle, "exec-"+tag+".log")
	defer os.Remove(pidFile)
	defer os.Remove(logFile)
	args := append([]string{req.Runtime}, req.RuntimeArgs...)
	args = append(args, "--log", logFile, "--log-format", "json", "exec", "--detach", "--pid-file", pidFile)
	var console *net.UnixListener
	if req.TTY {
		l, path, err := s.listenConsole()
		if err != nil {
			return 0, nil, err
		}
		defer l.Close()
		console = l
		args = append(args, "--tty", "--console-socket", path)
	}
	for _, e := range req.Env {
		args = append(args, "--env", e)
	}
	args = append(args, req.ID)
	args = append(args, req.Args...)

	_, runtimeDone, err := s.startRuntime(req.Runtime, args, req.Bundle, child)
	if err != nil {
		return 0, nil, err
	}
	type recv struct {
		f   *os.File
		err error
	}
	var consoleC chan recv
	if console != nil {
		consoleC = make(chan recv, 1)
		go func() {
			f, err := recvConsole(console)
			consoleC <- recv{f, err}
		}()
	}
	ws := <-runtimeDone
	var master *os.File
	if consoleC != nil {
		console.Close() // unblocks an accept the runtime never connected to
		r := <-consoleC
		master, err = r.f, r.err
	}
	fail := func(err error) (int, *os.File, error) {
		if master != nil {
			master.Close()
		}
		return 0, nil, err
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		msg := runtimeError(logFile)
		if msg == "" {
			msg = describe(ws)
		}
		return fail(fmt.Errorf("%s exec: %s", filepath.Base(req.Runtime), msg))
	}
	if console != nil && err != nil {
		return fail(err)
	}
	pb, err := os.ReadFile(pidFile)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(pb)))
	if err != nil || pid <= 0 {
		return fail(fmt.Errorf("%s exec: no pid file: %v", filepath.Base(req.Runtime), err))
	}
	return pid, master, nil
}

func (s *Server) killExec(pid, pidfd int) {
	if pidfd >= 0 {
		unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
		return
	}
	unix.Kill(pid, unix.SIGKILL)
}

func dupFd(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return nfd, derr
}

// ExecSession is a process started in a container by the monitor.
type ExecSession struct {
	Pid int
	// Via says how the monitor started the process (Reply.Via).
	Via string
	// Stdin (nil unless asked for), Stdout and Stderr are pipes to the
	// process; with a TTY, Console is the pty master instead.
	Stdin, Stdout, Stderr, Console *os.File
	conn                           *net.UnixConn
	rest                           io.Reader
	exit                           chan execResult
}

type execResult struct {
	exit Exit
	err  error
}

// Exec starts req.Args in a running container. Close the session when
// done: that kills the process if it still runs.
func (c Client) Exec(ctx context.Context, req Request) (*ExecSession, error) {
	req.Op = "exec"
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return nil, fmt.Errorf("monitor: %w", err)
	}
	conn := nc.(*net.UnixConn)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	// No newline after the request: what follows it on the connection
	// is the session's own traffic.
	b, _ := json.Marshal(req)
	if _, err := conn.Write(b); err != nil {
		conn.Close()
		return nil, fmt.Errorf("monitor exec: %w", err)
	}
	line, rest, files, err := readReply(conn, 4)
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("monitor exec: %w", err)
	}
	var rep Reply
	if err := json.Unmarshal(line, &rep); err != nil || rep.Error != "" {
		closeAll(files)
		conn.Close()
		if rep.Error != "" {
			return nil, errors.New(rep.Error)
		}
		return nil, fmt.Errorf("monitor exec: %w", err)
	}
	want := 2
	if req.Stdin {
		want = 3
	}
	if req.TTY {
		want = 1
	}
	if len(files) != want {
		closeAll(files)
		conn.Close()
		return nil, fmt.Errorf("monitor exec: got %d descriptors, want %d", len(files), want)
	}
	s := &ExecSession{Pid: rep.Pid, Via: rep.Via, conn: conn, exit: make(chan execResult, 1)}
	if req.TTY {
		s.Console = files[0]
	} else {
		if req.Stdin {
			s.Stdin, files = files[0], files[1:]
		}
		s.Stdout, s.Stderr = files[0], files[1]
	}
	s.rest = io.MultiReader(strings.NewReader(string(rest)), conn)
	go func() {
		var rep Reply
		err := json.NewDecoder(s.rest).Decode(&rep)
		switch {
		case err != nil:
			s.exit <- execResult{err: fmt.Errorf("monitor exec: lost the exit status: %w", err)}
		case rep.Exit == nil:
			s.exit <- execResult{err: errors.New("monitor exec: no exit status")}
		default:
			s.exit <- execResult{exit: *rep.Exit}
		}
	}()
	return s, nil
}

// Wait returns the process's exit. When ctx ends first the process is
// killed and its exit returned with ctx's error.
func (s *ExecSession) Wait(ctx context.Context) (Exit, error) {
	select {
	case r := <-s.exit:
		return r.exit, r.err
	case <-ctx.Done():
	}
	s.conn.Write([]byte{'k'})
	select {
	case r := <-s.exit:
		if r.err != nil {
			return r.exit, r.err
		}
		return r.exit, ctx.Err()
	case <-time.After(10 * time.Second):
		s.conn.Close()
		return Exit{}, fmt.Errorf("exec process %d did not die: %w", s.Pid, ctx.Err())
	}
}

// Close releases the session; a process still running is killed.
func (s *ExecSession) Close() {
	s.conn.Close()
	closeAll([]*os.File{s.Stdin, s.Stdout, s.Stderr, s.Console})
}
