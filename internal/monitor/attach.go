package monitor

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
)

// Attach: the monitor already reads every container's output for its log,
// so attached clients get a copy of each chunk as it is logged, and write
// to the stdin pipe (or pty) the monitor holds. A container costs nothing
// more while no one is attached; each attached client costs a goroutine
// and a bounded queue here.

// attachQueue bounds the chunks waiting for one attached client. A client
// that falls this far behind is detached rather than allowed to stall the
// container's output and its log.
const attachQueue = 256

type attachment struct {
	out            chan []byte // encoded frames
	stdout, stderr bool
	overrun        bool // set (under attachMu) when dropped for falling behind
}

// fanout hands a chunk of output to the clients attached to that stream.
func (c *container) fanout(kind byte, p []byte) {
	c.attachMu.Lock()
	defer c.attachMu.Unlock()
	if len(c.attached) == 0 {
		return
	}
	var frame []byte
	for a := range c.attached {
		if (kind == frameStdout && !a.stdout) || (kind == frameStderr && !a.stderr) {
			continue
		}
		if frame == nil {
			frame = encodeFrame(kind, p)
		}
		select {
		case a.out <- frame:
		default:
			a.overrun = true
			delete(c.attached, a)
			close(a.out)
		}
	}
}

// endAttach tells every attached client that the output has ended.
func (c *container) endAttach() {
	c.attachMu.Lock()
	defer c.attachMu.Unlock()
	c.outputDone = true
	for a := range c.attached {
		delete(c.attached, a)
		close(a.out)
	}
}

// detach removes a; it reports whether a was still attached.
func (c *container) detach(a *attachment) {
	c.attachMu.Lock()
	defer c.attachMu.Unlock()
	if _, ok := c.attached[a]; ok {
		delete(c.attached, a)
		close(a.out)
	}
}

// closeStdin ends the container's stdin: a pipe is closed (the process
// reads EOF); a terminal takes no more input, and first an end-of-file
// character when sendEOF is set.
func (c *container) closeStdin(sendEOF bool) {
	c.stdinMu.Lock()
	defer c.stdinMu.Unlock()
	if c.stdin == nil {
		return
	}
	if c.stdin == c.master {
		if sendEOF {
			c.master.Write([]byte{4})
		}
	} else {
		c.stdin.Close()
	}
	c.stdin = nil
}

func (c *container) writeStdin(p []byte) {
	c.stdinMu.Lock()
	f := c.stdin
	c.stdinMu.Unlock()
	if f != nil {
		f.Write(p)
	}
}

func (c *container) hasStdin() bool {
	c.stdinMu.Lock()
	defer c.stdinMu.Unlock()
	return c.stdin != nil
}

func (s *Server) attach(conn net.Conn, in io.Reader, req Request) {
	s.mu.Lock()
	c := s.containers[req.ID]
	s.mu.Unlock()
	if c == nil {
		json.NewEncoder(conn).Encode(Reply{Error: fmt.Sprintf("container %s: not monitored", req.ID)})
		return
	}
	a := &attachment{out: make(chan []byte, attachQueue), stdout: req.Stdout, stderr: req.Stderr}
	c.attachMu.Lock()
	ended := c.outputDone
	if !ended {
		if c.attached == nil {
			c.attached = map[*attachment]struct{}{}
		}
		c.attached[a] = struct{}{}
	}
	c.attachMu.Unlock()
	// Only the first attach that takes stdin ends it (stdin_once).
	useStdin := req.Stdin && c.hasStdin()
	if err := json.NewEncoder(conn).Encode(Reply{Known: true, Running: !ended}); err != nil || ended {
		c.detach(a)
		conn.Write(encodeFrame(frameEnd, nil))
		return
	}
	written := make(chan struct{})
	go func() {
		defer close(written)
		for f := range a.out {
			if _, err := conn.Write(f); err != nil {
				// The reader below sees the connection fail too.
				conn.Close()
				for range a.out {
				}
				return
			}
		}
		c.attachMu.Lock()
		overrun := a.overrun
		c.attachMu.Unlock()
		if overrun {
			conn.Close() // not an end of output: the client lost data
			return
		}
		conn.Write(encodeFrame(frameEnd, nil))
	}()
	br := bufio.NewReader(in)
	for {
		kind, p, err := readFrame(br)
		if err != nil {
			break
		}
		switch kind {
		case frameStdin:
			if useStdin {
				c.writeStdin(p)
			}
		case frameStdinClose:
			if useStdin && c.stdinOnce {
				c.closeStdin(true)
			}
		case frameResize:
			if len(p) == 4 && c.master != nil {
				setWinsize(c.master, binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:]))
			}
		}
	}
	// The client detached (or the output ended and it went away).
	c.detach(a)
	<-written
	if useStdin && c.stdinOnce {
		c.closeStdin(true)
	}
}

// AttachSession is a client attached to a container's stdio.
type AttachSession struct {
	conn net.Conn
	r    *bufio.Reader
	wmu  sync.Mutex
}

// ErrNotMonitored is returned by Attach for a container this monitor does
// not hold (it was restarted since the container was created).
var ErrNotMonitored = errors.New("not monitored")

// Attach attaches to a container's output streams (req.Stdout,
// req.Stderr) and, with req.Stdin, its stdin.
func (c Client) Attach(ctx context.Context, req Request) (*AttachSession, error) {
	req.Op = "attach"
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return nil, fmt.Errorf("monitor: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	// No newline after the request: what follows it on the connection
	// is the session's own traffic.
	b, _ := json.Marshal(req)
	if _, err := conn.Write(b); err != nil {
		conn.Close()
		return nil, fmt.Errorf("monitor attach: %w", err)
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadBytes('\n')
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("monitor attach: %w", err)
	}
	var rep Reply
	if err := json.Unmarshal(line, &rep); err != nil {
		conn.Close()
		return nil, fmt.Errorf("monitor attach: %w", err)
	}
	if rep.Error != "" {
		conn.Close()
		if strings.HasSuffix(rep.Error, "not monitored") {
			return nil, fmt.Errorf("monitor attach: %s: %w", rep.Error, ErrNotMonitored)
		}
		return nil, errors.New(rep.Error)
	}
	return &AttachSession{conn: conn, r: br}, nil
}

// Next returns the next chunk of output: stream is "stdout" or "stderr";
// io.EOF once the container's output has ended.
func (a *AttachSession) Next() (stream string, p []byte, err error) {
	for {
		kind, p, err := readFrame(a.r)
		if err != nil {
			return "", nil, err
		}
		switch kind {
		case frameStdout:
			return "stdout", p, nil
		case frameStderr:
			return "stderr", p, nil
		case frameEnd:
			return "", nil, io.EOF
		}
	}
}

func (a *AttachSession) send(kind byte, p []byte) error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	_, err := a.conn.Write(encodeFrame(kind, p))
	return err
}

// Write sends p to the container's stdin.
func (a *AttachSession) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		n := min(len(p), 32<<10)
		if err := a.send(frameStdin, p[:n]); err != nil {
			return 0, err
		}
		p = p[n:]
	}
	return total, nil
}

// CloseStdin tells the monitor the client's stdin has ended.
func (a *AttachSession) CloseStdin() error { return a.send(frameStdinClose, nil) }

// Resize sets the terminal size of a container with a TTY.
func (a *AttachSession) Resize(width, height uint16) error {
	var p [4]byte
	binary.BigEndian.PutUint16(p[:], width)
	binary.BigEndian.PutUint16(p[2:], height)
	return a.send(frameResize, p[:])
}

// Close detaches.
func (a *AttachSession) Close() error { return a.conn.Close() }
