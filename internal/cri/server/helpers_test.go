package server_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/config"
	"github.com/tripod-dev/tripod/internal/daemon"
)

// env is one tripodd, in-process but reached only through its socket.
type env struct {
	t      *testing.T
	cfg    config.Config
	d      *daemon.Daemon
	images runtimeapi.ImageServiceClient
	stop   func()
}

// socketDir returns a directory short enough for a unix socket path.
func socketDir(t *testing.T) string {
	dir := t.TempDir()
	if len(dir) < 80 {
		return dir
	}
	dir, err := os.MkdirTemp("", "tpsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func start(t *testing.T, tweak func(*config.Config)) *env {
	t.Helper()
	cfg := config.Default()
	cfg.Root = filepath.Join(t.TempDir(), "root")
	cfg.State = filepath.Join(t.TempDir(), "state")
	cfg.Listen = "unix://" + filepath.Join(socketDir(t), "tripod.sock")
	cfg.Image.RegistryHostsDir = filepath.Join(t.TempDir(), "certs.d")
	if tweak != nil {
		tweak(&cfg)
	}
	e := &env{t: t, cfg: cfg}
	e.boot()
	return e
}

func (e *env) boot() {
	t := e.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := daemon.New(ctx, e.cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("daemon: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx) }()
	conn, err := grpc.NewClient("unix://"+strings.TrimPrefix(e.cfg.Listen, "unix://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon stopped with: %v", err)
		}
	}
	t.Cleanup(stop)
	e.d = d
	e.images = runtimeapi.NewImageServiceClient(conn)
	e.stop = stop
}

// testWriter sends daemon logs to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func (e *env) pull(ref string, auth *runtimeapi.AuthConfig) (string, error) {
	resp, err := e.images.PullImage(ctx(e.t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Auth: auth})
	if err != nil {
		return "", err
	}
	return resp.ImageRef, nil
}

func (e *env) mustPull(ref string) string {
	e.t.Helper()
	id, err := e.pull(ref, nil)
	if err != nil {
		e.t.Fatalf("pull %s: %v", ref, err)
	}
	return id
}

func (e *env) list() []*runtimeapi.Image {
	e.t.Helper()
	resp, err := e.images.ListImages(ctx(e.t), &runtimeapi.ListImagesRequest{})
	if err != nil {
		e.t.Fatalf("list: %v", err)
	}
	return resp.Images
}

func (e *env) status(ref string, verbose bool) *runtimeapi.ImageStatusResponse {
	e.t.Helper()
	resp, err := e.images.ImageStatus(ctx(e.t), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Verbose: verbose})
	if err != nil {
		e.t.Fatalf("status %s: %v", ref, err)
	}
	return resp
}

func (e *env) remove(ref string) {
	e.t.Helper()
	if _, err := e.images.RemoveImage(ctx(e.t), &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		e.t.Fatalf("remove %s: %v", ref, err)
	}
}

func (e *env) imageRoot() string { return daemon.ImageRoot(e.cfg.Root) }

// storeFiles lists what is in the image store's blob, layer and partial
// directories: after removing everything, all are empty.
func (e *env) storeFiles() (blobs, layers, partial []string) {
	e.t.Helper()
	ls := func(dir string) []string {
		ents, err := os.ReadDir(filepath.Join(e.imageRoot(), dir))
		if err != nil {
			e.t.Fatal(err)
		}
		var out []string
		for _, x := range ents {
			out = append(out, x.Name())
		}
		return out
	}
	return ls("content/blobs/sha256"), ls("layers/sha256"), append(ls("content/ingest"), ls("layers/tmp")...)
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v (code %v), want code %v", err, status.Code(err), code)
	}
}
