package play

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// probeSet is the probes of one running container instance.
type probeSet struct {
	cancel context.CancelFunc
	mu     sync.Mutex
	// started: the startup probe succeeded, or there is none; liveness
	// and readiness wait for it.
	started bool
	ready   bool
	// failure is set when liveness or startup failed past the threshold:
	// the container is to be killed.
	failure string
	killed  bool
}

func (ps *probeSet) stop() { ps.cancel() }

// runProbes starts the probes of a running container on first sight, and
// acts on their results: readiness into the notes, a liveness or startup
// failure kills the container (the restart policy then decides).
func (w *worker) runProbes(ctx context.Context, ref ctrRef, cs *ctrState) {
	ct := ref.c
	ps := w.probes[cs.id]
	if ps == nil {
		pctx, cancel := context.WithCancel(ctx)
		ps = &probeSet{cancel: cancel, started: ct.StartupProbe == nil}
		w.probes[cs.id] = ps
		for _, p := range []struct {
			kind string
			pr   *corev1.Probe
		}{{"Startup", ct.StartupProbe}, {"Liveness", ct.LivenessProbe}, {"Readiness", ct.ReadinessProbe}} {
			if p.pr != nil {
				go w.probeLoop(pctx, ps, p.kind, p.pr, ct, cs.id, w.facts.podIP)
			}
		}
	}
	ps.mu.Lock()
	failure, ready, killed := ps.failure, ps.ready, ps.killed
	if ct.ReadinessProbe == nil {
		ready = ps.started
	}
	if failure != "" {
		ps.killed = true
		ready = false
	}
	ps.mu.Unlock()
	if n := w.note(ct.Name); n.Ready != ready {
		n.Ready = ready
		w.persist(ctx)
	}
	if failure == "" || killed {
		return
	}
	grace := *w.pod.Spec.TerminationGracePeriodSeconds
	if p := ct.LivenessProbe; p != nil && p.TerminationGracePeriodSeconds != nil && strings.HasPrefix(failure, "Liveness") {
		grace = *p.TerminationGracePeriodSeconds
	}
	if p := ct.StartupProbe; p != nil && p.TerminationGracePeriodSeconds != nil && strings.HasPrefix(failure, "Startup") {
		grace = *p.TerminationGracePeriodSeconds
	}
	w.sayf(ct.Name, "container %s: %s; killing it (grace %ds)", ct.Name, failure, grace)
	cctx, cancel := context.WithTimeout(ctx, time.Duration(grace)*time.Second+callTimeout)
	defer cancel()
	if _, err := w.n.rt.StopContainer(cctx, &runtimeapi.StopContainerRequest{ContainerId: cs.id, Timeout: grace}); err != nil {
		w.n.event(w.key, "StopContainer %s: %v", ct.Name, err)
	}
}

// probeLoop runs one probe every period after the initial delay, and
// reports threshold crossings to the worker.
func (w *worker) probeLoop(ctx context.Context, ps *probeSet, kind string, pr *corev1.Probe, ct *corev1.Container, id, podIP string) {
	wake := func() {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	sleep := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	if !sleep(time.Duration(pr.InitialDelaySeconds) * time.Second) {
		return
	}
	period := time.Duration(pr.PeriodSeconds) * time.Second
	successes, failures := int32(0), int32(0)
	for {
		ps.mu.Lock()
		started := ps.started
		ps.mu.Unlock()
		if kind != "Startup" && !started {
			if !sleep(period) {
				return
			}
			continue
		}
		ok, msg := w.probe(ctx, pr, ct, id, podIP)
		if ctx.Err() != nil {
			return
		}
		if ok {
			successes, failures = successes+1, 0
		} else {
			successes, failures = 0, failures+1
		}
		ps.mu.Lock()
		switch {
		case kind == "Startup" && ok:
			ps.started = true
			ps.mu.Unlock()
			wake()
			return
		case kind != "Readiness" && failures >= pr.FailureThreshold:
			ps.failure = fmt.Sprintf("%s probe failed %d time(s): %s", kind, failures, msg)
			ps.mu.Unlock()
			wake()
			return
		case kind == "Readiness" && ok && successes >= pr.SuccessThreshold && !ps.ready:
			ps.ready = true
			ps.mu.Unlock()
			wake()
		case kind == "Readiness" && !ok && failures >= pr.FailureThreshold && ps.ready:
			ps.ready = false
			ps.mu.Unlock()
			w.n.event(w.key, "container %s: readiness probe failed: %s", ct.Name, msg)
			wake()
		default:
			ps.mu.Unlock()
		}
		if !sleep(period) {
			return
		}
	}
}

// probe runs a probe once against the pod at podIP: success, or why not.
func (w *worker) probe(ctx context.Context, pr *corev1.Probe, ct *corev1.Container, id, podIP string) (bool, string) {
	timeout := time.Duration(pr.TimeoutSeconds) * time.Second
	h := &pr.ProbeHandler
	host := podIP
	switch {
	case h.Exec != nil:
		cctx, cancel := context.WithTimeout(ctx, timeout+callTimeout)
		defer cancel()
		resp, err := w.n.rt.ExecSync(cctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: h.Exec.Command, Timeout: int64(pr.TimeoutSeconds)})
		if err != nil {
			return false, err.Error()
		}
		if resp.ExitCode != 0 {
			out := strings.TrimSpace(string(resp.Stdout) + string(resp.Stderr))
			if len(out) > 200 {
				out = out[:200] + "…"
			}
			return false, fmt.Sprintf("command %q exited with %d: %s", h.Exec.Command, resp.ExitCode, out)
		}
		return true, ""
	case h.HTTPGet != nil:
		g := h.HTTPGet
		port, err := probePort(g.Port, ct)
		if err != nil {
			return false, err.Error()
		}
		if g.Host != "" {
			host = g.Host
		}
		u := url.URL{Scheme: strings.ToLower(string(g.Scheme)), Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: g.Path}
		if p, q, ok := strings.Cut(g.Path, "?"); ok {
			u.Path, u.RawQuery = p, q
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return false, err.Error()
		}
		req.Header.Set("User-Agent", "kube-probe/1.37")
		req.Header.Set("Accept", "*/*")
		for _, hd := range g.HTTPHeaders {
			if strings.EqualFold(hd.Name, "host") {
				req.Host = hd.Value
			} else {
				req.Header.Add(hd.Name, hd.Value)
			}
		}
		c := &http.Client{Timeout: timeout,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true, Proxy: nil},
			// As kubelet: redirects are followed on the same host only; one
			// elsewhere counts as success.
			CheckRedirect: func(r *http.Request, via []*http.Request) error {
				if r.URL.Hostname() != host || len(via) >= 10 {
					return http.ErrUseLastResponse
				}
				return nil
			}}
		resp, err := c.Do(req)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return false, fmt.Sprintf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return true, ""
	case h.TCPSocket != nil:
		port, err := probePort(h.TCPSocket.Port, ct)
		if err != nil {
			return false, err.Error()
		}
		if h.TCPSocket.Host != "" {
			host = h.TCPSocket.Host
		}
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	case h.GRPC != nil:
		conn, err := grpc.NewClient(net.JoinHostPort(host, strconv.Itoa(int(h.GRPC.Port))), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close()
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		svc := ""
		if h.GRPC.Service != nil {
			svc = *h.GRPC.Service
		}
		resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			return false, err.Error()
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			return false, fmt.Sprintf("service unhealthy (responded with %q)", resp.Status)
		}
		return true, ""
	}
	return false, "no probe handler"
}
