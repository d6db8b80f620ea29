package pod

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/monitor"
)

// maxExecOutput caps what ExecSync returns, stdout and stderr together:
// kubelet's CRI client takes replies of at most 16 MiB, so a reply past
// that would reach it as an error instead of truncated output.
const maxExecOutput = 16<<20 - 64<<10

// drainGrace is how long output is still read after an exec'd process
// exits: a descendant that keeps the pipe open must not hold the call.
const drainGrace = 2 * time.Second

// WinSize is a terminal size in characters.
type WinSize struct{ Width, Height uint16 }

// StreamIO are a streaming session's ends on the client's side; a nil
// stream is not wanted. With TTY, output all goes to Stdout.
type StreamIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	TTY            bool
	Resize         <-chan WinSize
}

// outputBudget is what ExecSync may still keep, shared by both streams.
type outputBudget struct {
	mu     sync.Mutex
	remain int
}

// capped keeps what fits in its budget and drops the rest; each is
// written by one goroutine only.
type capped struct {
	budget *outputBudget
	buf    bytes.Buffer
}

func (c *capped) Write(p []byte) (int, error) {
	c.budget.mu.Lock()
	n := min(len(p), c.budget.remain)
	c.budget.remain -= n
	c.budget.mu.Unlock()
	c.buf.Write(p[:n])
	return len(p), nil
}

// runningContainer finds a container and checks that it runs.
func (m *Manager) runningContainer(id string) (*Container, error) {
	c, err := m.findContainer(id)
	if err != nil {
		return nil, err
	}
	st := m.currentState(c)
	if st != Running {
		return nil, fmt.Errorf("container %s is %s, not running: %w", c.ID, st, errdefs.ErrFailedPrecondition)
	}
	return c, nil
}

// CheckRunning reports NotFound for an unknown container and
// FailedPrecondition for one that does not run.
func (m *Manager) CheckRunning(id string) error {
	_, err := m.runningContainer(id)
	return err
}

// ExecSync runs cmd in a running container and returns its output (at most
// maxExecOutput bytes of both streams) and exit code. A timeout (0 for
// none) kills the process and is an error wrapping
// context.DeadlineExceeded, which kubelet reads as a probe timeout.
func (m *Manager) ExecSync(ctx context.Context, id string, cmd []string, timeout time.Duration) (stdout, stderr []byte, code int32, err error) {
	if len(cmd) == 0 {
		return nil, nil, 0, fmt.Errorf("cmd: required: %w", errdefs.ErrInvalidArgument)
	}
	c, err := m.runningContainer(id)
	if err != nil {
		return nil, nil, 0, err
	}
	ectx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		ectx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	budget := &outputBudget{remain: maxExecOutput}
	o, e := &capped{budget: budget}, &capped{budget: budget}
	code, err = m.exec(ectx, c, cmd, StreamIO{Stdout: o, Stderr: e})
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return o.buf.Bytes(), e.buf.Bytes(), 0, fmt.Errorf("exec in %s: timed out after %v: %w", c.ID, timeout, err)
		}
		return nil, nil, 0, err
	}
	return o.buf.Bytes(), e.buf.Bytes(), code, nil
}

// Exec runs cmd in a running container with the client's streams and
// returns its exit code (128+signal when killed by one). When ctx ends
// (the client went away) the process is killed.
func (m *Manager) Exec(ctx context.Context, id string, cmd []string, sio StreamIO) (int32, error) {
	if len(cmd) == 0 {
		return 0, fmt.Errorf("cmd: required: %w", errdefs.ErrInvalidArgument)
	}
	c, err := m.runningContainer(id)
	if err != nil {
		return 0, err
	}
	return m.exec(ctx, c, cmd, sio)
}

// exec starts cmd through the monitor (no process of tripod's stays with
// it), copies the streams and waits for the exit.
func (m *Manager) exec(ctx context.Context, c *Container, cmd []string, sio StreamIO) (int32, error) {
	if err := m.ensureMonitor(ctx); err != nil {
		return 0, err
	}
	bin, args := m.runtimeArgs(c.Handler)
	req := monitor.Request{ID: c.ID, Bundle: c.Bundle, Runtime: bin, RuntimeArgs: args, Args: cmd, TTY: sio.TTY, Stdin: sio.Stdin != nil,
		Direct: m.directExec(c.Handler)}
	if sio.TTY {
		req.Env = []string{"TERM=xterm"}
	}
	sess, err := m.monitor().Exec(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		// The container may have ended meanwhile: say so precisely.
		if _, rerr := m.runningContainer(c.ID); rerr != nil {
			return 0, rerr
		}
		return 0, fmt.Errorf("exec in %s: %w", c.ID, err)
	}
	defer sess.Close()
	m.log.Debug("exec started", "container", c.ID, "pid", sess.Pid, "via", sess.Via)

	var outputs sync.WaitGroup
	copyOut := func(w io.Writer, r *os.File) {
		defer outputs.Done()
		if w == nil {
			w = io.Discard
		}
		io.Copy(w, r) // a pty master ends with EIO once the process is gone
	}
	done := make(chan struct{})
	defer close(done)
	if sio.TTY {
		outputs.Add(1)
		go copyOut(sio.Stdout, sess.Console)
		if sio.Stdin != nil {
			go io.Copy(sess.Console, sio.Stdin)
		}
		if sio.Resize != nil {
			go func() {
				for {
					select {
					case ws, ok := <-sio.Resize:
						if !ok {
							return
						}
						monitor.SetWinsize(sess.Console, ws.Width, ws.Height)
					case <-done:
						return
					}
				}
			}()
		}
	} else {
		outputs.Add(2)
		go copyOut(sio.Stdout, sess.Stdout)
		go copyOut(sio.Stderr, sess.Stderr)
		if sio.Stdin != nil {
			go func() {
				io.Copy(sess.Stdin, sio.Stdin)
				sess.Stdin.Close() // the process reads EOF
			}()
		}
	}
	exit, werr := sess.Wait(ctx)
	drained := make(chan struct{})
	go func() { outputs.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainGrace):
		sess.Close() // unblocks the copies
		<-drained
	}
	if werr != nil {
		return exit.Code, fmt.Errorf("exec in %s: %w", c.ID, werr)
	}
	return exit.Code, nil
}

// directExec says whether execs into the handler's containers may skip
// the OCI runtime (the monitor's exec stage, see internal/monitor): by
// default for runc and crun, whose exec the stage does the same way.
func (m *Manager) directExec(handler string) bool {
	h := m.opt.Handlers[handler]
	switch h.Exec {
	case ExecDirect:
		return true
	case ExecRuntime:
		return false
	}
	switch filepath.Base(h.Path) {
	case "runc", "crun":
		return true
	}
	return false
}

// withTerminal gives a container's process a terminal, with the TERM
// kubelet's runtimes set.
func withTerminal(s *specs.Spec) {
	if s.Process == nil {
		return
	}
	s.Process.Terminal = true
	for _, e := range s.Process.Env {
		if strings.HasPrefix(e, "TERM=") {
			return
		}
	}
	s.Process.Env = append(s.Process.Env, "TERM=xterm")
}
