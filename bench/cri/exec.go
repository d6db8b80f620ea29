package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
)

// execOpts sizes the exec and stats figures.
type execOpts struct {
	n          int           // sequential ExecSync calls into one container
	containers int           // concurrent callers, one container each
	dur        time.Duration // how long they call
	sessions   int           // idle interactive sessions held open
	statsCalls int           // calls of each stats RPC
}

type execResults struct {
	ctrStats, podStats         []time.Duration
	ctrStatsNote, podStatsNote string // why there are no samples
	execSync                   []time.Duration
	execPerSec                 float64
	execSyncNote               string
	sessionRSSKB, sessionPSSKB float64
	sessionDaemonKB            float64 // the daemon's part of sessionRSSKB
	sessionNote                string
}

// benchExec measures, with the pods of ctrs running: the stats calls,
// ExecSync latency into one container and throughput over several, and
// the memory an idle interactive exec session adds to the runtime.
func benchExec(ctx context.Context, rt runtimeapi.RuntimeServiceClient, kind string, d *daemon, ctrs []string, o execOpts) (execResults, error) {
	var x execResults
	if len(ctrs) == 0 {
		return x, errors.New("no running container")
	}
	// The idle sessions first, while the daemons are quiet: after the
	// ExecSync burst their heaps shrink for a while, which would hide
	// what the sessions add.
	m, err := idleSessions(ctx, rt, kind, d, ctrs[0], o.sessions)
	switch {
	case status.Code(err) == codes.Unimplemented:
		x.sessionNote = "n/a (Exec unimplemented)"
	case err != nil:
		// A broken session is a finding, not a reason to lose the run's
		// other figures.
		fmt.Fprintf(os.Stderr, "bench-cri: idle exec session: %v\n", err)
		x.sessionNote = "failed: " + firstLine(err.Error())
	default:
		x.sessionRSSKB, x.sessionPSSKB, x.sessionDaemonKB = m.rss, m.pss, m.daemon
	}

	x.ctrStats, x.ctrStatsNote = timeStats(o.statsCalls, len(ctrs), func() (int, error) {
		r, err := rt.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{})
		return len(r.GetStats()), err
	})
	x.podStats, x.podStatsNote = timeStats(o.statsCalls, len(ctrs), func() (int, error) {
		r, err := rt.ListPodSandboxStats(ctx, &runtimeapi.ListPodSandboxStatsRequest{})
		return len(r.GetStats()), err
	})

	execTrue := func(c string) (time.Duration, error) {
		t0 := time.Now()
		r, err := rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c, Cmd: []string{"/bin/true"}, Timeout: 30})
		dt := time.Since(t0)
		if err != nil {
			return 0, err
		}
		if r.ExitCode != 0 {
			return 0, fmt.Errorf("ExecSync true: exit code %d, stderr %q", r.ExitCode, r.Stderr)
		}
		return dt, nil
	}
	// Warm-up: the first exec pays for paging in the exec paths.
	for range 3 {
		if _, err := execTrue(ctrs[0]); err != nil {
			x.execSyncNote = note(err)
			break
		}
	}
	if x.execSyncNote == "" {
		for range o.n {
			dt, err := execTrue(ctrs[0])
			if err != nil {
				return x, fmt.Errorf("ExecSync: %w", err)
			}
			x.execSync = append(x.execSync, dt)
		}
		n := min(o.containers, len(ctrs))
		var done atomic.Int64
		var wg sync.WaitGroup
		errs := make([]error, n)
		t0 := time.Now()
		deadline := t0.Add(o.dur)
		for i := range n {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					if _, err := execTrue(ctrs[i]); err != nil {
						errs[i] = err
						return
					}
					done.Add(1)
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return x, fmt.Errorf("concurrent ExecSync: %w", err)
		}
		x.execPerSec = float64(done.Load()) / time.Since(t0).Seconds()
	}
	return x, nil
}

// timeStats times calls of a stats RPC that should report want items;
// an error (Unimplemented, say) becomes the note shown instead.
func timeStats(calls, want int, call func() (int, error)) ([]time.Duration, string) {
	if _, err := call(); err != nil { // warm-up
		return nil, note(err)
	}
	var ds []time.Duration
	for range calls {
		t0 := time.Now()
		n, err := call()
		if err != nil {
			return nil, note(err)
		}
		ds = append(ds, time.Since(t0))
		if n < want {
			fmt.Fprintf(os.Stderr, "bench-cri: a stats call reported %d items for %d running pods\n", n, want)
		}
	}
	return ds, ""
}

func note(err error) string {
	if status.Code(err) == codes.Unimplemented {
		return "n/a (unimplemented)"
	}
	return "failed: " + firstLine(status.Convert(err).Message())
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return s
}

// session is an interactive exec (a shell, stdin held open) through the
// CRI Exec RPC and the SPDY stream at the URL it returns, as kubectl exec
// -i reaches it through kubelet.
type session struct {
	stdin  *io.PipeWriter
	out    *lineWaiter
	done   chan error
	cancel context.CancelFunc
}

func openSession(ctx context.Context, rt runtimeapi.RuntimeServiceClient, ctr string) (*session, error) {
	r, err := rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: ctr, Cmd: []string{"/bin/sh"}, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(r.Url)
	if err != nil {
		return nil, fmt.Errorf("exec URL %q: %w", r.Url, err)
	}
	ex, err := remotecommand.NewSPDYExecutor(&rest.Config{}, "POST", u)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	sctx, cancel := context.WithCancel(ctx)
	s := &session{stdin: pw, out: newLineWaiter(), done: make(chan error, 1), cancel: cancel}
	go func() {
		s.done <- ex.StreamWithContext(sctx, remotecommand.StreamOptions{Stdin: pr, Stdout: s.out, Stderr: s.out})
	}()
	// The session is up once the shell has answered.
	go func() { fmt.Fprintln(pw, "echo ready-$((20+22))") }()
	select {
	case <-s.out.seen("ready-42"):
		return s, nil
	case err := <-s.done:
		cancel()
		return nil, fmt.Errorf("exec stream ended before the shell answered: %v (output %q)", err, s.out.String())
	case <-time.After(30 * time.Second):
		s.close()
		return nil, fmt.Errorf("no answer from the exec'd shell in 30s (output %q)", s.out.String())
	}
}

// close ends the shell by closing its stdin and waits for the stream.
func (s *session) close() error {
	defer s.cancel()
	s.stdin.Close()
	select {
	case err := <-s.done:
		return err
	case <-time.After(30 * time.Second):
		return errors.New("exec stream still open 30s after stdin closed")
	}
}

// perSession is what one idle session adds, in kB.
type perSession struct{ rss, pss, daemon float64 }

// idleSessions opens n idle sessions in ctr and returns the memory (kB
// per session) that the runtime's own processes gained: the daemon, its
// monitor or shims, and any process they started outside the containers
// (a runc exec that stays). The shells themselves are the containers'.
func idleSessions(ctx context.Context, rt runtimeapi.RuntimeServiceClient, kind string, d *daemon, ctr string, n int) (perSession, error) {
	// Warm-up: the first session pays for the streaming server's start
	// and its code paging in, once per runtime, not per session.
	s, err := openSession(ctx, rt, ctr)
	if err != nil {
		return perSession{}, err
	}
	if err := s.close(); err != nil {
		return perSession{}, err
	}
	time.Sleep(3 * time.Second)
	before := settledMemory(kind, d)
	var open []*session
	defer func() {
		for _, s := range open {
			s.close()
		}
	}()
	for range n {
		s, err := openSession(ctx, rt, ctr)
		if err != nil {
			return perSession{}, err
		}
		open = append(open, s)
	}
	time.Sleep(3 * time.Second)
	after := settledMemory(kind, d)
	for _, s := range open {
		if err := s.close(); err != nil {
			return perSession{}, err
		}
	}
	open = nil
	return perSession{
		rss:    float64(after.rss-before.rss) / float64(n),
		pss:    float64(after.pss-before.pss) / float64(n),
		daemon: float64(after.daemonRSS-before.daemonRSS) / float64(n),
	}, nil
}

// lineWaiter collects a stream's output and tells when a string shows up.
type lineWaiter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	ch   chan struct{}
}

func newLineWaiter() *lineWaiter { return &lineWaiter{} }

func (w *lineWaiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	w.check()
	return len(p), nil
}

func (w *lineWaiter) check() {
	if w.ch != nil && w.want != "" && strings.Contains(w.buf.String(), w.want) {
		close(w.ch)
		w.want = ""
	}
}

// seen returns a channel closed once s has been written.
func (w *lineWaiter) seen(s string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.want, w.ch = s, make(chan struct{})
	w.check()
	return w.ch
}

func (w *lineWaiter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// settledMemory is the median of a few samples of runtimeMemory, half a
// second apart: one sample can catch a collection in the middle.
func settledMemory(kind string, d *daemon) mem {
	var rs, ps, ds []int64
	for i := range 5 {
		if i > 0 {
			time.Sleep(500 * time.Millisecond)
		}
		m := runtimeMemory(kind, d)
		rs, ps, ds = append(rs, m.rss), append(ps, m.pss), append(ds, m.daemonRSS)
	}
	slices.Sort(rs)
	slices.Sort(ps)
	slices.Sort(ds)
	return mem{rss: rs[len(rs)/2], pss: ps[len(ps)/2], daemonRSS: ds[len(ds)/2]}
}

// runtimeMemory sums RSS and PSS of the runtime's own processes: the
// daemon, its helpers (see helperMemory) and their descendants that are
// not in the pods' cgroups.
func runtimeMemory(kind string, d *daemon) mem {
	procs := processes()
	ours := map[int]bool{d.cmd.Process.Pid: true}
	for _, p := range procs {
		if isHelper(kind, d.sock, p) {
			ours[p.pid] = true
		}
	}
	children := map[int][]int{}
	for _, p := range procs {
		children[p.ppid] = append(children[p.ppid], p.pid)
	}
	var walk func(pid int)
	walk = func(pid int) {
		for _, c := range children[pid] {
			if !ours[c] && !inPodCgroup(c) {
				ours[c] = true
				walk(c)
			}
		}
	}
	roots := make([]int, 0, len(ours))
	for pid := range ours {
		roots = append(roots, pid)
	}
	for _, pid := range roots {
		walk(pid)
	}
	var m mem
	for pid := range ours {
		r, ps := smaps(pid)
		m.rss += r
		m.pss += ps
	}
	m.daemonRSS, _ = smaps(d.cmd.Process.Pid)
	return m
}

// inPodCgroup says whether pid is in a cgroup under the pods' parent.
func inPodCgroup(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	return err == nil && bytes.Contains(b, []byte(":/tpbench/"))
}
