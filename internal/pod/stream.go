package pod

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/tripod-dev/tripod/internal/cni/nsutil"
	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/monitor"
	"github.com/tripod-dev/tripod/internal/netns"
)

// halfCloseIdle is how long a forwarded connection whose client has
// finished sending waits for more from the pod before it is closed: the
// client's stream gives no other sign that the client went away.
const halfCloseIdle = 10 * time.Second

// Attach connects the client's streams to a running container's stdio,
// which the monitor holds. It returns when the container's output ends,
// when the client's stdin ends (with stdin_once the container's stdin is
// closed instead and the output followed to its end), or when ctx ends.
func (m *Manager) Attach(ctx context.Context, id string, sio StreamIO) error {
	c, err := m.runningContainer(id)
	if err != nil {
		return err
	}
	m.mu.Lock()
	tty, hasStdin, once := c.TTY, c.Stdin, c.StdinOnce
	m.mu.Unlock()
	req := monitor.Request{ID: c.ID, Stdin: sio.Stdin != nil && hasStdin, Stdout: sio.Stdout != nil, Stderr: sio.Stderr != nil && !tty}
	sess, err := m.monitor().Attach(ctx, req)
	if err != nil {
		if errors.Is(err, monitor.ErrNotMonitored) {
			return fmt.Errorf("the stdio of container %s is no longer held (its monitor was restarted): %w", c.ID, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("attach to %s: %w", c.ID, err)
	}
	defer sess.Close()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	done := make(chan struct{})
	defer close(done)

	detached := make(chan struct{})
	if req.Stdin {
		go func() {
			io.Copy(sess, sio.Stdin)
			sess.CloseStdin()
			if !once {
				close(detached)
			}
		}()
	}
	if tty && sio.Resize != nil {
		go func() {
			for {
				select {
				case ws, ok := <-sio.Resize:
					if !ok {
						return
					}
					sess.Resize(ws.Width, ws.Height)
				case <-done:
					return
				}
			}
		}()
	}
	out := make(chan error, 1)
	go func() {
		for {
			stream, p, err := sess.Next()
			if err != nil {
				out <- err
				return
			}
			w := sio.Stdout
			if stream == "stderr" {
				w = sio.Stderr
			}
			if w == nil {
				continue
			}
			if _, err := w.Write(p); err != nil {
				out <- err
				return
			}
		}
	}()
	select {
	case err := <-out:
		if err == io.EOF {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("attach to %s: %w", c.ID, err)
	case <-detached:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// CheckPodReady reports NotFound for an unknown pod and FailedPrecondition
// for one that is not ready.
func (m *Manager) CheckPodReady(id string) error {
	_, _, err := m.readyPod(id)
	return err
}

func (m *Manager) readyPod(id string) (*Pod, string, error) {
	p, err := m.findPod(id)
	if err != nil {
		return nil, "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if p.State != Ready {
		return nil, "", fmt.Errorf("pod %s is %s, not ready: %w", p.ID, p.State, errdefs.ErrFailedPrecondition)
	}
	return p, p.Namespaces[netns.Net], nil
}

// PortForward connects stream to port on the pod's loopback address from
// inside the pod's network namespace (the host's for a host-network pod):
// nothing runs in the pod for it.
func (m *Manager) PortForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	p, nsPath, err := m.readyPod(podID)
	if err != nil {
		return err
	}
	if port <= 0 || port > 65535 {
		return fmt.Errorf("port: %d is out of range: %w", port, errdefs.ErrInvalidArgument)
	}
	conn, err := dialPod(ctx, nsPath, int(port))
	if err != nil {
		return fmt.Errorf("pod %s port %d: %w", p.ID, port, err)
	}
	defer conn.Close()

	var halfClosed atomic.Bool
	fromPod := make(chan error, 1)
	go func() {
		buf := make([]byte, 32<<10)
		for {
			if halfClosed.Load() {
				conn.SetReadDeadline(time.Now().Add(halfCloseIdle))
			}
			n, err := conn.Read(buf)
			if n > 0 {
				if _, werr := stream.Write(buf[:n]); werr != nil {
					fromPod <- werr
					return
				}
			}
			if err != nil {
				if err == io.EOF || errors.Is(err, os.ErrDeadlineExceeded) {
					err = nil
				}
				fromPod <- err
				return
			}
		}
	}()
	toPod := make(chan struct{})
	go func() {
		io.Copy(conn, stream)
		// The client has sent all it will: the pod reads EOF and may
		// still answer.
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		close(toPod)
	}()
	select {
	case err := <-fromPod:
		return err
	case <-toPod:
		halfClosed.Store(true)
		conn.SetReadDeadline(time.Now().Add(halfCloseIdle))
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-fromPod:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dialPod connects to port on loopback (IPv4, else IPv6) inside the
// network namespace at nsPath, or in tripodd's own when nsPath is empty.
// The socket is made on a thread inside the namespace and keeps it.
func dialPod(ctx context.Context, nsPath string, port int) (net.Conn, error) {
	var conn net.Conn
	dial := func() error {
		d := net.Dialer{Timeout: 10 * time.Second}
		var first error
		for _, host := range []string{"127.0.0.1", "::1"} {
			c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
			if err == nil {
				conn = c
				return nil
			}
			if first == nil {
				first = err
			}
		}
		return first
	}
	var err error
	if nsPath == "" {
		err = dial()
	} else {
		err = nsutil.Do(nsPath, dial)
	}
	return conn, err
}
