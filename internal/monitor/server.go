package monitor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxLine is the longest log line written in one entry; longer lines are
// split into partial (P) entries, as kubelet expects.
const maxLine = 16 << 10

// Server is a running monitor.
type Server struct {
	mu         sync.Mutex
	containers map[string]*container
	// byPid routes reaped statuses; unclaimed keeps those reaped before
	// anyone registered the pid (a runtime that exits very fast).
	byPid     map[int]chan unix.WaitStatus
	unclaimed map[int]unix.WaitStatus
	dir       string // of the socket; console sockets go there too
	stage     string // the exec stage binary; "" when there is none
}

type container struct {
	id, bundle, oomFile string
	pid                 int
	// pidfd refers to the init process itself: a signal through it can
	// never reach a process that reused the PID after the init was reaped.
	pidfd   int
	oomBase int64
	logMu   sync.Mutex
	logPath string
	log     *os.File
	done    chan struct{} // closed once exit is set
	exit    Exit

	// For attach. With a TTY, master is the pty (output, stdin, resize).
	tty, stdinOnce bool
	master         *os.File
	stdinMu        sync.Mutex
	stdin          *os.File // nil once closed (or never opened)
	attachMu       sync.Mutex
	attached       map[*attachment]struct{}
	outputDone     bool

	// For direct execs, prepared by the first.
	directMu sync.Mutex
	direct   *directPrep
}

// Serve runs a monitor on the socket at path until ctx ends. ready, if
// not nil, is written to and closed once the socket accepts calls.
func Serve(ctx context.Context, path string, ready io.WriteCloser) error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become child subreaper: %w", err)
	}
	s := &Server{containers: map[string]*container{}, byPid: map[int]chan unix.WaitStatus{}, unclaimed: map[int]unix.WaitStatus{},
		dir: filepath.Dir(path)}
	// The exec stage is beside this binary, as this binary is beside
	// tripodd.
	if exe, err := os.Executable(); err == nil {
		stage := filepath.Join(filepath.Dir(exe), ExecStage)
		if unix.Access(stage, unix.X_OK) == nil {
			s.stage = stage
		}
	}
	sigc := make(chan os.Signal, 16)
	signal.Notify(sigc, syscall.SIGCHLD)
	go s.reap(sigc)

	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("monitor socket: %w", err)
	}
	os.Chmod(path, 0o600)
	context.AfterFunc(ctx, func() { l.Close() })
	if ready != nil {
		ready.Write([]byte("ok\n"))
		ready.Close()
	}
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("monitor accept: %w", err)
		}
		go s.handle(conn)
	}
}

func (s *Server) reap(sigc chan os.Signal) {
	for range sigc {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err == unix.EINTR {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
			s.mu.Lock()
			if ch, ok := s.byPid[pid]; ok {
				delete(s.byPid, pid)
				ch <- ws
			} else {
				s.unclaimed[pid] = ws
			}
			s.mu.Unlock()
		}
	}
}

// watch returns a channel that receives pid's wait status.
func (s *Server) watch(pid int) chan unix.WaitStatus {
	ch := make(chan unix.WaitStatus, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ws, ok := s.unclaimed[pid]; ok {
		delete(s.unclaimed, pid)
		ch <- ws
		return ch
	}
	s.byPid[pid] = ch
	return ch
}

func (s *Server) handle(conn net.Conn) {
	defer conn.Close()
	var req Request
	dec := json.NewDecoder(conn)
	if err := dec.Decode(&req); err != nil {
		return
	}
	// What the caller sends after its request (exec and attach), less
	// the newline that ended the request.
	rest, _ := io.ReadAll(dec.Buffered())
	in := io.MultiReader(bytes.NewReader(bytes.TrimLeft(rest, "\n")), conn)
	var rep Reply
	var err error
	switch req.Op {
	case "exec":
		s.exec(conn.(*net.UnixConn), in, req)
		return
	case "attach":
		s.attach(conn, in, req)
		return
	case "ping":
	case "create":
		rep.Pid, err = s.create(req)
	case "wait":
		s.mu.Lock()
		c := s.containers[req.ID]
		s.mu.Unlock()
		if c == nil {
			err = fmt.Errorf("container %s: not monitored", req.ID)
			break
		}
		// A closed connection (the caller gave up) ends the wait.
		gone := make(chan struct{})
		go func() { io.Copy(io.Discard, conn); close(gone) }()
		select {
		case <-c.done:
			e := c.exit
			rep.Exit = &e
		case <-gone:
			return
		}
	case "state":
		s.mu.Lock()
		c := s.containers[req.ID]
		s.mu.Unlock()
		if c != nil {
			rep = c.state()
		}
	case "kill":
		// Signals the container's init directly: no OCI runtime exec on
		// the stop path. Killing the init of a PID namespace ends all of it.
		s.mu.Lock()
		c := s.containers[req.ID]
		switch {
		case c == nil:
			err = fmt.Errorf("container %s: not monitored", req.ID)
		case c.pidfd < 0:
			rep.Known = true // already exited
		default:
			rep.Known, rep.Running = true, true
			if kerr := unix.PidfdSendSignal(c.pidfd, unix.Signal(req.Signal), nil, 0); kerr != nil && kerr != unix.ESRCH {
				err = fmt.Errorf("signal %s: %w", req.ID, kerr)
			}
		}
		s.mu.Unlock()
	case "adopt":
		rep, err = s.adopt(req)
	case "reopen":
		s.mu.Lock()
		c := s.containers[req.ID]
		s.mu.Unlock()
		if c == nil {
			err = fmt.Errorf("container %s: not monitored", req.ID)
			break
		}
		err = c.reopen()
	case "forget":
		s.mu.Lock()
		c := s.containers[req.ID]
		delete(s.containers, req.ID)
		s.mu.Unlock()
		if c != nil {
			c.closeLog()
			c.closeStdin(false)
			c.endAttach()
		}
	default:
		err = fmt.Errorf("unknown op %q", req.Op)
	}
	if err != nil {
		rep.Error = err.Error()
	}
	json.NewEncoder(conn).Encode(rep)
}

// create runs `<runtime> create` with the container's stdout and stderr on
// pipes this process reads (or, with a TTY, a pty whose master the
// runtime hands over on a console socket), and starts watching the
// container's init. With Stdin the container's stdin is a pipe whose write
// end this process keeps for attach.
func (s *Server) create(req Request) (int, error) {
	if req.ID == "" || req.Bundle == "" || req.Runtime == "" {
		return 0, errors.New("create: id, bundle and runtime are required")
	}
	s.mu.Lock()
	if _, ok := s.containers[req.ID]; ok {
		s.mu.Unlock()
		return 0, fmt.Errorf("container %s: already monitored", req.ID)
	}
	s.mu.Unlock()
	c := &container{id: req.ID, bundle: req.Bundle, oomFile: req.OOMFile, logPath: req.LogPath, done: make(chan struct{}), pidfd: -1,
		tty: req.TTY, stdinOnce: req.StdinOnce}
	if err := c.reopen(); err != nil {
		return 0, err
	}
	// Everything opened here is closed on failure; what the container
	// keeps is taken out of the list.
	var opened []*os.File
	ok := false
	defer func() {
		if !ok {
			closeAll(opened)
			c.closeLog()
		}
	}()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	opened = append(opened, null)
	stdio := []*os.File{null, null, null}
	var outR, errR *os.File
	pidFile := filepath.Join(req.Bundle, "init.pid")
	logFile := filepath.Join(req.Bundle, "runtime.log")
	args := append([]string{req.Runtime}, req.RuntimeArgs...)
	verb := "create"
	args = append(args, "--log", logFile, "--log-format", "json")
	if req.Restore != nil {
		if req.TTY {
			return 0, errors.New("create: restoring a container with a TTY is not supported")
		}
		verb = "restore"
		args = append(append(args, "restore", "--detach", "--bundle", req.Bundle, "--pid-file", pidFile), req.Restore...)
	} else {
		args = append(args, "create", "--bundle", req.Bundle, "--pid-file", pidFile)
	}
	var console *net.UnixListener
	if req.TTY {
		l, path, err := s.listenConsole()
		if err != nil {
			return 0, err
		}
		defer l.Close()
		console = l
		args = append(args, "--console-socket", path)
	} else {
		// Pipes that a monitor started after this one died can open
		// again through /proc to resume the logs (see stdioPipe). (A
		// TTY's master and a stdin pipe cannot be reopened: they go with
		// this process.)
		var outW, errW *os.File
		if outR, outW, err = stdioPipe(); err != nil {
			return 0, err
		}
		opened = append(opened, outR, outW)
		if errR, errW, err = stdioPipe(); err != nil {
			return 0, err
		}
		opened = append(opened, errR, errW)
		stdio[1], stdio[2] = outW, errW
		if req.Stdin {
			inR, inW, err := os.Pipe()
			if err != nil {
				return 0, err
			}
			opened = append(opened, inR, inW)
			stdio[0], c.stdin = inR, inW
		}
	}
	args = append(args, req.ID)
	_, ch, err := s.startRuntime(req.Runtime, args, req.Bundle, stdio)
	if err != nil {
		return 0, err
	}
	// The runtime's copies are all the container needs.
	for _, f := range stdio {
		f.Close()
	}
	var consoleC chan *os.File
	var consoleErr error
	if console != nil {
		consoleC = make(chan *os.File, 1)
		go func() {
			f, err := recvConsole(console)
			consoleErr = err
			consoleC <- f
		}()
	}
	ws := <-ch
	if console != nil {
		console.Close()
		if c.master = <-consoleC; c.master != nil {
			opened = append(opened, c.master)
		}
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		return 0, fmt.Errorf("%s %s: %s: %s", req.Runtime, verb, describe(ws), runtimeError(logFile))
	}
	if console != nil && c.master == nil {
		// The caller's rollback deletes what the runtime created.
		return 0, fmt.Errorf("%s create: %v", req.Runtime, consoleErr)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, fmt.Errorf("%s %s: pid file: %w", req.Runtime, verb, err)
	}
	c.pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	if c.pid <= 0 {
		return 0, fmt.Errorf("%s %s: bad pid file %q", req.Runtime, verb, b)
	}
	if req.TTY && req.Stdin {
		c.stdin = c.master
	}
	c.oomBase = oomKills(c.oomFile)
	// What a successor needs to adopt the container should this process
	// die: who the init is, and the OOM counter's starting point.
	rec := record{Pid: c.pid, Start: startTime(c.pid), OOMFile: c.oomFile, OOMBase: c.oomBase, LogPath: c.logPath}
	if outR != nil && errR != nil {
		rec.StdoutPipe, rec.StderrPipe = inode(outR), inode(errR)
	}
	if err := writeRecord(req.Bundle, rec); err != nil {
		return 0, fmt.Errorf("monitor record: %w", err)
	}
	ok = true
	// Opened before the init can be reaped (only this process reaps it).
	if fd, err := unix.PidfdOpen(c.pid, 0); err == nil {
		c.pidfd = fd
	}
	initCh := s.watch(c.pid)
	s.mu.Lock()
	s.containers[req.ID] = c
	s.mu.Unlock()

	if c.master != nil {
		outR, errR = c.master, nil
	}
	copiers := c.copyLogs(outR, errR)
	go func() {
		ws := <-initCh
		s.finish(c, exitOf(c.pid, ws), copiers)
	}()
	return c.pid, nil
}

// exitOf turns a wait status into an Exit.
func exitOf(pid int, ws unix.WaitStatus) Exit {
	e := Exit{Pid: pid, FinishedAt: time.Now().UnixNano()}
	switch {
	case ws.Exited():
		e.Code = int32(ws.ExitStatus())
	case ws.Signaled():
		e.Signal = int(ws.Signal())
		e.Code = 128 + int32(ws.Signal())
	}
	return e
}

// copyLogs copies the container's stdout and stderr into its log; the
// returned group is done when both have ended.
func (c *container) copyLogs(out, err *os.File) *sync.WaitGroup {
	var copiers sync.WaitGroup
	for stream, r := range map[string]*os.File{"stdout": out, "stderr": err} {
		if r == nil {
			continue
		}
		kind := frameStdout
		if stream == "stderr" {
			kind = frameStderr
		}
		copiers.Add(1)
		go func() { defer copiers.Done(); c.copyLog(r, stream, kind) }()
	}
	return &copiers
}

// finish records a container's exit once its init has ended: the OOM
// check, the last of its log, exit.json, then the waiters.
func (s *Server) finish(c *container, e Exit, copiers *sync.WaitGroup) {
	if c.oomFile != "" && oomKills(c.oomFile) > c.oomBase {
		e.OOMKilled = true
	}
	// Let the log catch up with what the container wrote last, but never
	// hang on a descendant that kept the pipe open.
	drained := make(chan struct{})
	go func() { copiers.Wait(); c.endAttach(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(2 * time.Second):
	}
	c.closeStdin(false)
	writeExit(c.bundle, e)
	s.mu.Lock()
	c.exit = e
	if c.pidfd >= 0 {
		unix.Close(c.pidfd)
		c.pidfd = -1
	}
	s.mu.Unlock()
	close(c.done)
}

func describe(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return "exit status " + strconv.Itoa(ws.ExitStatus())
}

// runtimeError extracts the error messages from an OCI runtime's JSON log.
func runtimeError(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var msgs []string
	for _, line := range bytes.Split(b, []byte("\n")) {
		var m struct{ Level, Msg string }
		if json.Unmarshal(line, &m) == nil && (m.Level == "error" || m.Level == "fatal") {
			msgs = append(msgs, m.Msg)
		}
	}
	return strings.Join(msgs, "; ")
}

func lookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("runtime %q not found in PATH", name)
}

// oomKills reads the oom_kill counter of a cgroup memory file.
func oomKills(path string) int64 {
	if path == "" {
		return 0
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

func (c *container) reopen() error {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	if c.log != nil {
		c.log.Close()
		c.log = nil
	}
	if c.logPath == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(c.logPath), 0o755); err != nil {
		return fmt.Errorf("log dir: %w", err)
	}
	f, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	c.log = f
	return nil
}

func (c *container) closeLog() {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	if c.log != nil {
		c.log.Close()
		c.log = nil
	}
}

// copyLog writes r's lines as CRI log entries until r ends, and hands
// each chunk to the attached clients as it is read (a prompt without a
// newline reaches them at once; the log keeps it until its line ends).
func (c *container) copyLog(r *os.File, stream string, kind byte) {
	defer r.Close()
	buf := make([]byte, 32<<10)
	var pending, entry []byte // pending: the current line's start
	write := func(text []byte, tag string) {
		entry = entry[:0]
		entry = time.Now().AppendFormat(entry, time.RFC3339Nano)
		entry = append(entry, ' ')
		entry = append(entry, stream...)
		entry = append(entry, ' ')
		entry = append(entry, tag...)
		entry = append(entry, ' ')
		entry = append(entry, text...)
		entry = append(entry, '\n')
		c.logMu.Lock()
		if c.log != nil {
			c.log.Write(entry)
		}
		c.logMu.Unlock()
	}
	for {
		n, err := r.Read(buf)
		if n > 0 {
			c.fanout(kind, buf[:n])
			data := buf[:n]
			for len(data) > 0 {
				nl := bytes.IndexByte(data, '\n')
				if nl < 0 {
					pending = append(pending, data...)
					break
				}
				pending = append(pending, data[:nl]...)
				data = data[nl+1:]
				for len(pending) > maxLine {
					write(pending[:maxLine], "P")
					pending = append(pending[:0], pending[maxLine:]...)
				}
				write(pending, "F")
				pending = pending[:0]
			}
			// Lines longer than maxLine go out in partial entries.
			for len(pending) >= maxLine {
				write(pending[:maxLine], "P")
				pending = append(pending[:0], pending[maxLine:]...)
			}
		}
		if err != nil {
			if len(pending) > 0 {
				write(pending, "F")
			}
			return
		}
	}
}

// Pause is the init of a pod's shared PID namespace: it only reaps the
// orphans reparented to it, until killed.
func Pause() {
	sigc := make(chan os.Signal, 16)
	signal.Notify(sigc, syscall.SIGCHLD)
	for range sigc {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err == unix.EINTR {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
		}
	}
}
