package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// SocketPath turns an endpoint (unix:///path or /path) into a socket path.
func SocketPath(endpoint string) (string, error) {
	p := endpoint
	if rest, ok := strings.CutPrefix(endpoint, "unix://"); ok {
		p = rest
	} else if strings.Contains(endpoint, "://") {
		return "", fmt.Errorf("endpoint %q: only unix:// sockets are served", endpoint)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("endpoint %q: socket path must be absolute", endpoint)
	}
	return p, nil
}

// Listen opens a unix socket at path, replacing a stale one left by a
// killed predecessor. The socket is made 0660: only root (kubelet) and the
// sidecars' group talk to a storage driver.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return l, nil
}

// Serve serves every CSI service of d on l until ctx ends.
func (d *Driver) Serve(ctx context.Context, l net.Listener) error {
	srv := grpc.NewServer(grpc.UnaryInterceptor(d.logCalls))
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterControllerServer(srv, d)
	csi.RegisterGroupControllerServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	if d.cfg.OnIdle != nil {
		go d.watchIdle(ctx)
	}
	stop := context.AfterFunc(ctx, func() {
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			srv.Stop()
		}
	})
	defer stop()
	d.log.Info("serving", "name", d.cfg.Name, "node", d.cfg.NodeID, "socket", l.Addr().String(), "root", d.cfg.Root)
	if err := srv.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// watchIdle runs OnIdle when a busy spell has been followed by IdleAfter
// without calls.
func (d *Driver) watchIdle(ctx context.Context) {
	t := time.NewTimer(d.cfg.IdleAfter)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.activity:
			t.Reset(d.cfg.IdleAfter)
		case <-t.C:
			d.cfg.OnIdle()
		}
	}
}

func (d *Driver) logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	select {
	case d.activity <- struct{}{}:
	default:
	}
	start := time.Now()
	resp, err := h(ctx, req)
	method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
	if err != nil {
		d.log.Warn("call failed", "method", method, "code", status.Code(err).String(), "err", status.Convert(err).Message(), "took", time.Since(start))
	} else if d.log.Enabled(ctx, slog.LevelDebug) {
		d.log.Debug("call", "method", method, "took", time.Since(start))
	}
	return resp, err
}
