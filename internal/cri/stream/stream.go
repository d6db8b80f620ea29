// Package stream is tripodd's CRI streaming server: the HTTP endpoint
// behind the URLs that Exec, Attach and PortForward return. It is
// kubelet's own server (k8s.io/cri-streaming: SPDY and WebSocket,
// single-use tokens that expire after a minute) over the pod core.
package stream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/tripod-dev/tripod/internal/pod"
)

// Config is where the server listens.
type Config struct {
	Address string      // host:port; port 0 picks a free one
	TLS     *tls.Config // nil: plain HTTP
}

// Server serves streaming sessions.
type Server struct {
	lib  streaming.Server
	http *http.Server
	lis  net.Listener
	tls  bool
	// URL is the base of the streaming URLs (the bound address).
	URL string

	mu    sync.Mutex
	conns map[net.Conn]struct{} // hijacked: http.Server.Close leaves them
}

// New binds cfg.Address for the sessions of m.
func New(cfg Config, m *pod.Manager) (*Server, error) {
	lis, err := net.Listen("tcp", cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("streaming server: %w", err)
	}
	base := &url.URL{Scheme: "http", Host: lis.Addr().String()}
	if cfg.TLS != nil {
		base.Scheme = "https"
	}
	lc := streaming.DefaultConfig
	lc.Addr = base.Host
	lc.BaseURL = base
	lc.TLSConfig = cfg.TLS
	lib, err := streaming.NewServer(lc, runtime{m})
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("streaming server: %w", err)
	}
	s := &Server{lib: lib, lis: lis, tls: cfg.TLS != nil, URL: base.String(), conns: map[net.Conn]struct{}{}}
	s.http = &http.Server{Handler: http.HandlerFunc(s.serveHTTP), TLSConfig: cfg.TLS, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// Serve answers until Close.
func (s *Server) Serve() error {
	var err error
	if s.tls {
		err = s.http.ServeTLS(s.lis, "", "")
	} else {
		err = s.http.Serve(s.lis)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops listening and ends every session (exec'd processes are
// killed with their sessions).
func (s *Server) Close() error {
	err := s.http.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	return err
}

// GetExec, GetAttach and GetPortForward return a single-use URL for a
// request.
func (s *Server) GetExec(req *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error) {
	return s.lib.GetExec(req)
}

// GetAttach returns the URL of an attach session.
func (s *Server) GetAttach(req *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	return s.lib.GetAttach(req)
}

// GetPortForward returns the URL of a port-forward session.
func (s *Server) GetPortForward(req *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	return s.lib.GetPortForward(req)
}

// serveHTTP gives each session a context that ends when the client's
// connection does. Once upgraded (SPDY or WebSocket) the connection is
// hijacked and net/http no longer watches it, so the session would
// otherwise only notice a client gone when writing to it.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	s.lib.ServeHTTP(&watchWriter{ResponseWriter: w, cancel: cancel, srv: s}, r.WithContext(ctx))
}

// watchWriter hands out, when hijacked, a connection whose failing read
// (the client closed it) cancels the session's context.
type watchWriter struct {
	http.ResponseWriter
	cancel context.CancelFunc
	srv    *Server
}

func (w *watchWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be hijacked")
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	// Bytes the server read ahead come first; every later read goes
	// through the watching connection.
	var pre []byte
	if n := brw.Reader.Buffered(); n > 0 {
		pre, _ = brw.Reader.Peek(n)
		pre = append([]byte(nil), pre...)
	}
	wc := &watchConn{Conn: conn, pre: pre, cancel: w.cancel, srv: w.srv}
	w.srv.mu.Lock()
	w.srv.conns[wc] = struct{}{}
	w.srv.mu.Unlock()
	return wc, bufio.NewReadWriter(bufio.NewReader(wc), bufio.NewWriter(wc)), nil
}

func (w *watchWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

type watchConn struct {
	net.Conn
	pre    []byte
	cancel context.CancelFunc
	srv    *Server
	once   sync.Once
}

func (c *watchConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	n, err := c.Conn.Read(p)
	if err != nil {
		c.cancel()
	}
	return n, err
}

func (c *watchConn) Close() error {
	c.once.Do(func() {
		c.cancel()
		c.srv.mu.Lock()
		delete(c.srv.conns, c)
		c.srv.mu.Unlock()
	})
	return c.Conn.Close()
}

// runtime adapts the pod core to the library's Runtime.
type runtime struct{ m *pod.Manager }

// exitError carries a non-zero exit code to the client, which the library
// recognises by these methods (k8s.io/utils/exec.ExitError).
type exitError struct{ code int32 }

func (e exitError) Error() string   { return fmt.Sprintf("command terminated with exit code %d", e.code) }
func (e exitError) String() string  { return e.Error() }
func (e exitError) Exited() bool    { return true }
func (e exitError) ExitStatus() int { return int(e.code) }

func streams(ctx context.Context, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) pod.StreamIO {
	sio := pod.StreamIO{TTY: tty}
	if in != nil {
		sio.Stdin = in
	}
	if out != nil {
		sio.Stdout = out
	}
	if errw != nil {
		sio.Stderr = errw
	}
	if resize != nil {
		ch := make(chan pod.WinSize)
		go func() {
			defer close(ch)
			for {
				select {
				case ts, ok := <-resize:
					if !ok {
						return
					}
					select {
					case ch <- pod.WinSize{Width: ts.Width, Height: ts.Height}:
					case <-ctx.Done():
						return
					}
				case <-ctx.Done():
					return
				}
			}
		}()
		sio.Resize = ch
	}
	return sio
}

func (r runtime) Exec(ctx context.Context, id string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	code, err := r.m.Exec(ctx, id, cmd, streams(ctx, in, out, errw, tty, resize))
	if err != nil {
		return err
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}

func (r runtime) Attach(ctx context.Context, id string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	return r.m.Attach(ctx, id, streams(ctx, in, out, errw, tty, resize))
}

func (r runtime) PortForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	return r.m.PortForward(ctx, podID, port, stream)
}
