// Package daemon wires tripodd together: config → core services → CRI
// gRPC server on its socket, plus the metrics endpoint.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/adminapi"
	"github.com/tripod-dev/tripod/internal/cdi"
	"github.com/tripod-dev/tripod/internal/cnirun"
	"github.com/tripod-dev/tripod/internal/config"
	"github.com/tripod-dev/tripod/internal/cri/server"
	"github.com/tripod-dev/tripod/internal/cri/stream"
	"github.com/tripod-dev/tripod/internal/image"
	"github.com/tripod-dev/tripod/internal/image/pull"
	"github.com/tripod-dev/tripod/internal/metrics"
	"github.com/tripod-dev/tripod/internal/nri"
	"github.com/tripod-dev/tripod/internal/pod"
)

// Version is set at build time.
var Version = "dev"

// Daemon is a running tripodd.
type Daemon struct {
	cfg     config.Config
	log     *slog.Logger
	Images  *image.Service
	Pods    *pod.Manager
	Metrics *metrics.Registry
	nri     *nri.NRI
	grpc    *grpc.Server
	lis     net.Listener
	http    *http.Server
	admin   *http.Server
	adminL  net.Listener
	stream  *stream.Server
	// Addr is the CRI listener's address; MetricsAddr the metrics one.
	Addr, MetricsAddr string
}

// ImageRoot is where the image store lives under the root directory.
func ImageRoot(root string) string { return filepath.Join(root, "images") }

// New opens the stores (repairing them) and binds the sockets; Serve
// starts answering.
func New(ctx context.Context, cfg config.Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	for _, d := range []string{cfg.Root, cfg.State} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, err
		}
	}
	d := &Daemon{cfg: cfg, log: log, Metrics: metrics.New()}
	plat := config.NodePlatform()
	if cfg.Image.Platform != "" {
		plat = cfg.Image.Platform
	}
	os_, arch, variant, _ := config.ParsePlatform(plat)
	auths := map[string]pull.Auth{}
	for h, a := range cfg.Image.Auths {
		auths[h] = pull.Auth{Username: a.Username, Password: a.Password, Auth: a.Auth, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
	}
	pinned := append([]string{}, cfg.Image.PinnedImages...)
	if cfg.Image.PauseImage != "" {
		pinned = append(pinned, cfg.Image.PauseImage)
	}
	handlers := map[string]pod.Handler{}
	for name, h := range cfg.Runtime.Handlers {
		handlers[name] = pod.Handler{Path: h.Path, Exec: h.Exec}
	}
	// The runtime's metadata loads first: the image store's start-up
	// repair asks it which layers containers use.
	var err error
	var devices pod.DeviceInjector
	if len(cfg.Runtime.CDISpecDirs) > 0 {
		if devices, err = cdi.New(cfg.Runtime.CDISpecDirs, log); err != nil {
			return nil, err
		}
	}
	d.Pods, err = pod.New(pod.Options{
		Root:           filepath.Join(cfg.Root, "runtime"),
		State:          filepath.Join(cfg.State, "runtime"),
		CNI:            cnirun.New(cfg.Runtime.CNIConfDir, filepath.SplitList(cfg.Runtime.CNIBinDir), filepath.Join(cfg.Root, "cni-cache")),
		Handlers:       handlers,
		DefaultHandler: cfg.Runtime.DefaultHandler,
		CgroupDriver:   cfg.Runtime.CgroupDriver,
		CgroupParent:   cfg.Runtime.CgroupParent,
		MonitorPath:    cfg.Runtime.MonitorPath,
		EventBuffer:    cfg.Runtime.EventBuffer,
		Logger:         log,
		Metrics:        d.Metrics,
		CDI:            devices,
		CrashAt:        os.Getenv("TRIPOD_CRASH_AT"),
	})
	if err != nil {
		return nil, err
	}
	d.Images, err = image.New(ctx, image.Options{
		Root:             ImageRoot(cfg.Root),
		ContainerDir:     filepath.Join(cfg.Root, "runtime", "containers"), // the pod core's writable layers
		HostsDir:         cfg.Image.RegistryHostsDir,
		Auths:            auths,
		Platform:         pull.Platform{OS: os_, Architecture: arch, Variant: variant},
		MaxDownloads:     cfg.Image.MaxConcurrentDownloads,
		AllowDeviceNodes: cfg.Image.AllowDeviceNodes,
		Pinned:           pinned,
		UserAgent:        "tripodd/" + Version,
		Logger:           log,
		Metrics:          d.Metrics,
		LayersInUse:      d.Pods.LayersInUse,
	})
	if err != nil {
		d.Pods.Close()
		return nil, err
	}
	if err := d.Pods.Recover(ctx, d.Images); err != nil {
		d.Pods.Close()
		d.Images.Close()
		return nil, fmt.Errorf("runtime recovery: %w", err)
	}
	if cfg.NRI.Enable {
		if d.nri, err = newNRI(cfg, d, devices); err != nil {
			d.Pods.Close()
			d.Images.Close()
			return nil, err
		}
	}
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(16 << 20), grpc.MaxSendMsgSize(16 << 20), grpc.UnaryInterceptor(rpcMetrics(d.Metrics))}
	if cfg.TLS.Enabled() {
		creds, err := serverTLS(cfg.TLS)
		if err != nil {
			d.Images.Close()
			d.Pods.Close()
			return nil, err
		}
		opts = append(opts, grpc.Creds(creds))
	}
	d.lis, err = listen(cfg.Listen, cfg.TLS.Enabled())
	if err != nil {
		d.Images.Close()
		d.Pods.Close()
		return nil, err
	}
	d.Addr = d.lis.Addr().String()
	if d.stream, err = newStreamServer(cfg.Streaming, d.Pods); err != nil {
		d.lis.Close()
		d.Images.Close()
		d.Pods.Close()
		return nil, err
	}
	d.grpc = grpc.NewServer(opts...)
	runtimeapi.RegisterImageServiceServer(d.grpc, server.NewImageServer(d.Images))
	rs := server.NewRuntimeServer(d.Pods, Version)
	rs.SetStreams(d.stream)
	runtimeapi.RegisterRuntimeServiceServer(d.grpc, rs)

	adminPath := filepath.Join(cfg.State, adminapi.Socket)
	if d.adminL, err = listen("unix://"+adminPath, false); err != nil {
		d.stream.Close()
		d.lis.Close()
		d.Images.Close()
		d.Pods.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(adminPath, 0o600); err != nil {
		d.stream.Close()
		d.adminL.Close()
		d.lis.Close()
		d.Images.Close()
		d.Pods.Close()
		return nil, err
	}
	d.admin = &http.Server{Handler: adminHandler(d.Images), ReadHeaderTimeout: 10 * time.Second}
	go d.admin.Serve(d.adminL)

	if cfg.Metrics.Address != "" {
		ml, err := net.Listen("tcp", cfg.Metrics.Address)
		if err != nil {
			d.admin.Close()
			d.lis.Close()
			d.Images.Close()
			d.Pods.Close()
			d.stream.Close()
			return nil, fmt.Errorf("metrics listener: %w", err)
		}
		d.MetricsAddr = ml.Addr().String()
		mux := http.NewServeMux()
		mux.Handle("/metrics", withGoroutines(d.Metrics))
		d.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go d.http.Serve(ml)
	}
	return d, nil
}

// listen binds the CRI endpoint. A unix socket left by a dead daemon is
// replaced; one a live daemon answers on is not.
func listen(endpoint string, mutualTLS bool) (net.Listener, error) {
	network, addr, err := config.ParseListenTLS(endpoint, mutualTLS)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if err := os.MkdirAll(filepath.Dir(addr), 0o711); err != nil {
			return nil, err
		}
		if c, err := net.DialTimeout("unix", addr, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another daemon is listening there", addr)
		}
		if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", endpoint, err)
	}
	if network == "unix" {
		if err := os.Chmod(addr, 0o660); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

// Serve answers CRI calls until ctx ends, then stops gracefully (in-flight
// calls get a few seconds) and closes the stores.
func (d *Daemon) Serve(ctx context.Context) error {
	if d.nri != nil {
		// Plugins connect once pods can be asked for; they are stopped
		// after the last CRI call.
		if err := d.nri.Start(); err != nil {
			return err
		}
		defer d.nri.Stop()
	}
	errc := make(chan error, 1)
	go func() { errc <- d.grpc.Serve(d.lis) }()
	go func() {
		if err := d.stream.Serve(); err != nil {
			d.log.Error("streaming server", "err", err)
		}
	}()
	d.log.Info("tripodd serving", "listen", d.cfg.Listen, "streaming", d.stream.URL, "root", d.cfg.Root, "state", d.cfg.State,
		"registryHostsDir", d.cfg.Image.RegistryHostsDir, "metrics", d.MetricsAddr, "version", Version)
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		done := make(chan struct{})
		go func() { d.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			d.grpc.Stop()
		}
	}
	if d.http != nil {
		d.http.Close()
	}
	d.stream.Close()
	d.admin.Close()
	if cerr := d.Images.Close(); err == nil {
		err = cerr
	}
	if cerr := d.Pods.Close(); err == nil {
		err = cerr
	}
	return err
}

// rpcMetrics counts every CRI call by method and status code, and the time
// spent in each method.
func rpcMetrics(reg *metrics.Registry) grpc.UnaryServerInterceptor {
	calls := reg.Counter("tripod_cri_requests_total", "CRI calls by method and gRPC status code.", "method", "code")
	secs := reg.Counter("tripod_cri_request_seconds_total", "Time spent answering CRI calls, by method.", "method")
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		t := time.Now()
		resp, err := handler(ctx, req)
		method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
		calls.Inc(method, status.Code(err).String())
		secs.Add(time.Since(t).Seconds(), method)
		return resp, err
	}
}

// serverTLS builds mutual-TLS credentials for the CRI endpoint: the CRI
// carries no authentication, so the client certificate is what admits a
// caller.
func serverTLS(c config.TLS) (credentials.TransportCredentials, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: loading server certificate: %w", err)
	}
	pem, err := os.ReadFile(c.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("tls: reading client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls: %s holds no PEM certificate", c.ClientCAFile)
	}
	return credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}), nil
}
