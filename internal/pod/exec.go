package pod

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tripod-dev/tripod/internal/errdefs"
)

// maxExecOutput caps each stream of an ExecSync, as kubelet does.
const maxExecOutput = 16 << 20

// execReapGrace bounds the wait for the runtime client to reap an exec'd
// process killed on timeout.
const execReapGrace = 5 * time.Second

// capped is a buffer that silently drops what goes past its cap.
type capped struct{ bytes.Buffer }

func (c *capped) Write(p []byte) (int, error) {
	if room := maxExecOutput - c.Len(); room < len(p) {
		if room > 0 {
			c.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return c.Buffer.Write(p)
}

// ExecSync runs cmd in a running container and returns its output and exit
// code. A timeout (0 for none) kills the process and is an error.
func (m *Manager) ExecSync(ctx context.Context, id string, cmd []string, timeout time.Duration) (stdout, stderr []byte, code int32, err error) {
	if len(cmd) == 0 {
		return nil, nil, 0, fmt.Errorf("cmd: required: %w", errdefs.ErrInvalidArgument)
	}
	c, err := m.findContainer(id)
	if err != nil {
		return nil, nil, 0, err
	}
	m.refresh(c)
	m.mu.Lock()
	st := c.State
	m.mu.Unlock()
	if st != Running {
		return nil, nil, 0, fmt.Errorf("container %s is not running: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	dir, err := os.MkdirTemp(c.Bundle, "exec-")
	if err != nil {
		return nil, nil, 0, fmt.Errorf("exec: %w", err)
	}
	defer os.RemoveAll(dir)
	pidFile := filepath.Join(dir, "pid")
	bin, args := m.runtimeArgs(c.Handler)
	args = append(args, "exec", "--pid-file", pidFile, c.ID)
	run := exec.Command(bin, append(args, cmd...)...)
	var o, e capped
	run.Stdout, run.Stderr = &o, &e
	if err := run.Start(); err != nil {
		return nil, nil, 0, fmt.Errorf("exec: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		// Kill the process inside the container, then let the runtime
		// client (its parent) reap it: killed first, the client would
		// leave it a zombie under the container's init, which may never
		// reap it.
		killed := false
		if b, rerr := os.ReadFile(pidFile); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				killed = syscall.Kill(pid, syscall.SIGKILL) == nil
			}
		}
		if killed {
			select {
			case <-done:
			case <-time.After(execReapGrace):
				run.Process.Kill()
				<-done
			}
		} else {
			run.Process.Kill()
			<-done
		}
		return o.Bytes(), e.Bytes(), 0, fmt.Errorf("exec in %s: timed out after %v: %w", c.ID, timeout, ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return o.Bytes(), e.Bytes(), int32(ee.ExitCode()), nil
	}
	if err != nil {
		return nil, nil, 0, fmt.Errorf("exec in %s: %w", c.ID, err)
	}
	return o.Bytes(), e.Bytes(), 0, nil
}
