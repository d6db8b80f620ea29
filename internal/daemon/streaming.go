package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"runtime"

	"github.com/tripod-dev/tripod/internal/config"
	"github.com/tripod-dev/tripod/internal/cri/stream"
	"github.com/tripod-dev/tripod/internal/metrics"
	"github.com/tripod-dev/tripod/internal/pod"
)

// newStreamServer binds the streaming server ([streaming]).
func newStreamServer(c config.Streaming, m *pod.Manager) (*stream.Server, error) {
	cfg := stream.Config{Address: c.Address}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("streaming: loading certificate: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if c.ClientCAFile != "" {
			pem, err := os.ReadFile(c.ClientCAFile)
			if err != nil {
				return nil, fmt.Errorf("streaming: reading client CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("streaming: %s holds no PEM certificate", c.ClientCAFile)
			}
			cfg.TLS.ClientCAs, cfg.TLS.ClientAuth = pool, tls.RequireAndVerifyClientCert
		}
	}
	return stream.New(cfg, m)
}

// withGoroutines serves reg with go_goroutines taken at each scrape: a
// leak of sessions shows as growth there.
func withGoroutines(reg *metrics.Registry) http.Handler {
	g := reg.Gauge("go_goroutines", "Goroutines that currently exist.")
	h := reg.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.Set(float64(runtime.NumGoroutine()))
		h.ServeHTTP(w, r)
	})
}
