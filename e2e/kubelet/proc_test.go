package kubelet_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// proc is a process this test started; its output goes to a file in the
// test's directory (kubelet's is long), whose tail is printed when the
// test fails.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

// startProc starts path with args, logging to dir/name.log.
func startProc(t *testing.T, dir, name string, env []string, path string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, logPath: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p.cmd = exec.Command(path, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.Env = append(os.Environ(), env...)
	// Should the test binary die without its cleanups (a panic, go test's
	// timeout), the kernel kills what it started.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p
}

// running reports whether the process has not exited.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, then SIGKILL after grace, through the process handle
// (a pidfd, so never to a reused PID), and waits until it is reaped.
func (p *proc) stop(grace time.Duration) {
	if p == nil || !p.running() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// tail is the end of the process's log.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// exitError says how the process ended, with its log's tail.
func (p *proc) exitError() error {
	return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail(8<<10))
}

// waitFor polls cond until it returns true or an error that is not
// errRetry's, the context ends, or one of the watched processes exits.
func waitFor(ctx context.Context, what string, cond func(context.Context) (bool, error), watch ...*proc) error {
	var last error
	for {
		ok, err := cond(ctx)
		if ok && err == nil {
			return nil
		}
		if err != nil && !errors.Is(err, errRetry) {
			return fmt.Errorf("%s: %w", what, err)
		}
		last = err
		for _, p := range watch {
			if p != nil && !p.running() {
				return fmt.Errorf("%s: %w", what, p.exitError())
			}
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%s: %w (last: %v)", what, ctx.Err(), last)
			}
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// errRetry marks a condition's error as "not yet": waitFor keeps polling.
var errRetry = errors.New("not yet")

func retry(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errRetry, fmt.Sprintf(format, args...))
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
