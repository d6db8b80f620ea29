package play

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// worker runs one pod: it brings the containers to what the spec and the
// restart policy ask (init containers in order, each to completion, then
// the app containers), restarts with kubelet's back-off, and runs the
// probes. It holds the pod's lock while it lives.
type worker struct {
	n    *Node
	pod  *Pod
	key  string
	uid  string
	lock *podLock

	backoff  map[string]*backoff                    // by container name
	probes   map[string]*probeSet                   // by container ID
	exited   map[string]*runtimeapi.ContainerStatus // statuses of exited containers (final)
	notes    map[string]*ContainerNote
	said     map[string]string // the last event printed per container
	phase    string
	message  string
	wasReady bool
	wake     chan struct{}
	facts    podFacts
	hosts    string
}

func (n *Node) newWorker(p *Pod, uid string, lock *podLock) *worker {
	return &worker{n: n, pod: p, key: p.Key(), uid: uid, lock: lock,
		backoff: map[string]*backoff{}, probes: map[string]*probeSet{}, exited: map[string]*runtimeapi.ContainerStatus{},
		notes: map[string]*ContainerNote{}, said: map[string]string{}, wake: make(chan struct{}, 1)}
}

// backoff is kubelet's per-container crash-loop back-off: the first
// restart is immediate, then 10s, doubling to 5m; reset after a container
// ran without restart for twice the maximum.
type backoff struct {
	cur  time.Duration
	last time.Time
}

// wait is how long a restart of container name, which finished at
// finished, must still wait (0: restart now).
func (w *worker) wait(name string, finished time.Time) time.Duration {
	b := w.backoff[name]
	if b == nil {
		return 0
	}
	if finished.Sub(b.last) > 2*w.n.opts.MaxBackoff {
		delete(w.backoff, name)
		return 0
	}
	return max(0, b.cur-time.Since(finished))
}

// next records a restart of container name after it finished at finished.
func (w *worker) next(name string, finished time.Time) {
	b := w.backoff[name]
	if b == nil || finished.Sub(b.last) > 2*w.n.opts.MaxBackoff {
		w.backoff[name] = &backoff{cur: w.n.opts.Backoff, last: finished}
		return
	}
	b.cur = min(2*b.cur, w.n.opts.MaxBackoff)
	b.last = finished
}

// sayf prints an event about container ctr unless it is what was last
// said about it (a sync runs every second).
func (w *worker) sayf(ctr, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if w.said[ctr] == msg {
		return
	}
	w.said[ctr] = msg
	w.n.event(w.key, "%s", msg)
}

func (w *worker) note(name string) *ContainerNote {
	if w.notes[name] == nil {
		w.notes[name] = &ContainerNote{}
	}
	return w.notes[name]
}

func (w *worker) logDir() string {
	return filepath.Join(w.n.opts.Dir, "logs", fmt.Sprintf("%s_%s_%s", w.pod.Namespace, w.pod.Name, w.uid))
}

// errStopped says the pod was deleted (or is being) by someone else.
var errStopped = errors.New("pod deleted")

// record reads the pod's record.
func (w *worker) record(ctx context.Context) (*PodRecord, error) {
	st, err := w.n.st.Load(ctx)
	if err != nil {
		return nil, err
	}
	r := st.Pods[w.key]
	if r == nil || r.UID != w.uid || r.Deleting {
		return nil, errStopped
	}
	return r, nil
}

// runSandbox starts a new sandbox for the pod and records it.
func (w *worker) runSandbox(ctx context.Context, attempt uint32) (string, error) {
	cfg, err := w.n.sandboxConfig(w.pod, w.uid, attempt, w.logDir())
	if err != nil {
		return "", err
	}
	handler := ""
	if rc := w.pod.Spec.RuntimeClassName; rc != nil {
		handler = *rc
	}
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	resp, err := w.n.rt.RunPodSandbox(cctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		return "", w.sandboxError(err)
	}
	id := resp.PodSandboxId
	if err := w.n.st.pod(ctx, w.key, func(r *PodRecord) { r.Sandbox, r.SandboxAttempt = id, attempt }); err != nil {
		return id, err
	}
	if err := w.loadFacts(ctx, id); err != nil {
		return id, err
	}
	ip := w.facts.podIP
	if ip == "" {
		ip = "host network"
	}
	w.n.event(w.key, "sandbox %.13s started (%s)", id, ip)
	return id, nil
}

// sandboxError names the field a RunPodSandbox failure is about where the
// runtime's message allows: host ports are the usual cause.
func (w *worker) sandboxError(err error) error {
	msg := status.Convert(err).Message()
	if hp := hostPorts(w.pod); len(hp) > 0 && strings.Contains(strings.ToLower(msg), "port") {
		var fields []string
		for _, h := range hp {
			fields = append(fields, fmt.Sprintf("%s (%d/%s)", h.field, h.pm.HostPort, h.pm.Protocol))
		}
		return fmt.Errorf("%s: RunPodSandbox: %s", strings.Join(fields, ", "), msg)
	}
	if rc := w.pod.Spec.RuntimeClassName; rc != nil && strings.Contains(msg, "runtime_handler") {
		return fmt.Errorf("spec.runtimeClassName %q: RunPodSandbox: %s", *rc, msg)
	}
	return fmt.Errorf("RunPodSandbox: %s", msg)
}

// loadFacts reads the sandbox's IPs for the containers' environment.
func (w *worker) loadFacts(ctx context.Context, id string) error {
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	resp, err := w.n.rt.PodSandboxStatus(cctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
	if err != nil {
		return fmt.Errorf("PodSandboxStatus: %w", err)
	}
	w.facts = podFacts{uid: w.uid, hostIP: hostIP(), node: nodeName()}
	if nw := resp.Status.GetNetwork(); nw != nil && nw.Ip != "" {
		w.facts.podIP = nw.Ip
		w.facts.podIPs = []string{nw.Ip}
		for _, a := range nw.AdditionalIps {
			w.facts.podIPs = append(w.facts.podIPs, a.Ip)
		}
	}
	if w.pod.Spec.HostNetwork {
		w.facts.podIP = w.facts.hostIP
		w.facts.podIPs = []string{w.facts.hostIP}
	}
	w.hosts, err = w.n.writeHosts(w.pod, w.uid, w.facts.podIP)
	return err
}

// ctrState is one container instance as a sync sees it.
type ctrState struct {
	id       string
	attempt  uint32
	state    runtimeapi.ContainerState
	exitCode int32
	reason   string
	finished time.Time
}

// containers lists the sandbox's containers by name, newest attempt first.
func (w *worker) containers(ctx context.Context, sandbox string) (map[string][]*ctrState, error) {
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	resp, err := w.n.rt.ListContainers(cctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: sandbox}})
	if err != nil {
		return nil, fmt.Errorf("ListContainers: %w", err)
	}
	out := map[string][]*ctrState{}
	for _, c := range resp.Containers {
		cs := &ctrState{id: c.Id, attempt: c.Metadata.GetAttempt(), state: c.State}
		if c.State == runtimeapi.ContainerState_CONTAINER_EXITED || c.State == runtimeapi.ContainerState_CONTAINER_UNKNOWN {
			st := w.exited[c.Id]
			if st == nil {
				r, err := w.n.rt.ContainerStatus(cctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.Id})
				if err != nil {
					return nil, fmt.Errorf("ContainerStatus: %w", err)
				}
				st = r.Status
				if st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
					w.exited[c.Id] = st
				}
			}
			cs.state, cs.exitCode, cs.reason, cs.finished = st.State, st.ExitCode, st.Reason, time.Unix(0, st.FinishedAt)
		}
		out[c.Metadata.GetName()] = append(out[c.Metadata.GetName()], cs)
	}
	for _, l := range out {
		sort.Slice(l, func(i, j int) bool { return l[i].attempt > l[j].attempt })
	}
	return out, nil
}

// startContainer creates and starts one attempt of a container.
func (w *worker) startContainer(ctx context.Context, sandbox string, ref ctrRef, attempt uint32, vols []VolumeRecord) (string, error) {
	ct := ref.c
	if err := w.n.ensureImage(ctx, ct.Image, ct.ImagePullPolicy); err != nil {
		return "", fmt.Errorf("%s.image: %w", ref.field, err)
	}
	if err := w.verifyNonRoot(ctx, ref); err != nil {
		return "", err
	}
	cfg, err := w.n.containerConfig(w.pod, ref, w.uid, attempt, &w.facts, vols, w.hosts)
	if err != nil {
		return "", err
	}
	scfg, err := w.n.sandboxConfig(w.pod, w.uid, 0, w.logDir())
	if err != nil {
		return "", err
	}
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	resp, err := w.n.rt.CreateContainer(cctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sandbox, Config: cfg, SandboxConfig: scfg})
	if err != nil {
		return "", fmt.Errorf("%s (%s): CreateContainer: %s", ref.field, ct.Name, status.Convert(err).Message())
	}
	if _, err := w.n.rt.StartContainer(cctx, &runtimeapi.StartContainerRequest{ContainerId: resp.ContainerId}); err != nil {
		w.n.rt.RemoveContainer(context.WithoutCancel(cctx), &runtimeapi.RemoveContainerRequest{ContainerId: resp.ContainerId})
		return "", fmt.Errorf("%s (%s): StartContainer: %s", ref.field, ct.Name, status.Convert(err).Message())
	}
	kind := "container"
	if ref.init {
		kind = "init container"
	}
	if attempt == 0 {
		w.sayf(ct.Name, "%s %s started", kind, ct.Name)
	} else {
		w.sayf(ct.Name, "%s %s restarted (restart %d)", kind, ct.Name, attempt)
	}
	return resp.ContainerId, nil
}

// verifyNonRoot enforces runAsNonRoot as kubelet does, from the user the
// container would run as.
func (w *worker) verifyNonRoot(ctx context.Context, ref ctrRef) error {
	nonRoot, uid := false, (*int64)(nil)
	if psc := w.pod.Spec.SecurityContext; psc != nil {
		nonRoot = psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
		uid = psc.RunAsUser
	}
	if csc := ref.c.SecurityContext; csc != nil {
		if csc.RunAsNonRoot != nil {
			nonRoot = *csc.RunAsNonRoot
		}
		if csc.RunAsUser != nil {
			uid = csc.RunAsUser
		}
	}
	if !nonRoot {
		return nil
	}
	f := ref.field + ".securityContext.runAsNonRoot"
	if uid != nil {
		if *uid == 0 {
			return fmt.Errorf("%s: runAsUser is 0", f)
		}
		return nil
	}
	img, err := w.n.imageStatus(ctx, ref.c.Image)
	if err != nil || img == nil {
		return fmt.Errorf("%s: image %s: %v", f, ref.c.Image, err)
	}
	switch {
	case img.Uid != nil && img.Uid.Value == 0:
		return fmt.Errorf("%s: image %s runs as root", f, ref.c.Image)
	case img.Uid != nil:
		return nil
	case img.Username != "":
		return fmt.Errorf("%s: image %s runs as user %q, which cannot be verified to be non-root: set runAsUser", f, ref.c.Image, img.Username)
	}
	return fmt.Errorf("%s: image %s runs as root", f, ref.c.Image)
}

// removeOlder removes the container instances of a name older than keep
// (the previous one stays, for its logs).
func (w *worker) removeOlder(ctx context.Context, list []*ctrState, keep *ctrState) {
	for _, c := range list {
		if c.attempt < keep.attempt {
			cctx, cancel := withTimeout(ctx)
			w.n.rt.RemoveContainer(cctx, &runtimeapi.RemoveContainerRequest{ContainerId: c.id})
			cancel()
			delete(w.exited, c.id)
		}
	}
}

// syncResult says what a sync found.
type syncResult int

const (
	syncRunning syncResult = iota
	syncTerminal
)

// sync does one round: at most one step of the init sequence, or every
// app container's due action. first reports errors of the first round to
// the caller (tripod play fails and rolls back); later errors are events
// and back-off, as kubelet's CreateContainerError.
func (w *worker) sync(ctx context.Context, first bool) (syncResult, error) {
	rec, err := w.record(ctx)
	if err != nil {
		return syncRunning, err
	}
	if rec.Phase == PhaseSucceeded || rec.Phase == PhaseFailed {
		return syncTerminal, nil
	}
	sandbox := rec.Sandbox
	if sandbox != "" {
		cctx, cancel := withTimeout(ctx)
		resp, err := w.n.rt.PodSandboxStatus(cctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sandbox})
		cancel()
		switch {
		case status.Code(err) == codes.NotFound || (err == nil && resp.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY):
			// As kubelet: a pod that may not restart and whose containers
			// already ran fails with its sandbox; others get a new one.
			if w.pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
				if all, lerr := w.containers(ctx, sandbox); lerr == nil && len(all) > 0 {
					w.sayf("", "sandbox %.13s is gone or not ready, and restartPolicy is Never", sandbox)
					return w.finish(ctx, sandbox, PhaseFailed, "the pod's sandbox was lost")
				}
			}
			w.sayf("", "sandbox %.13s is gone or not ready (the node restarted?); starting a new one", sandbox)
			w.killSandbox(ctx, sandbox)
			sandbox = ""
			rec.SandboxAttempt++
		case err != nil:
			return syncRunning, fmt.Errorf("PodSandboxStatus: %w", err)
		case w.facts.uid == "":
			if err := w.loadFacts(ctx, sandbox); err != nil {
				return syncRunning, err
			}
		}
	}
	if sandbox == "" {
		w.stopProbes()
		for _, n := range w.notes {
			*n = ContainerNote{}
		}
		w.wasReady = false
		w.said = map[string]string{}
		if sandbox, err = w.runSandbox(ctx, rec.SandboxAttempt); err != nil {
			return syncRunning, err
		}
		w.persist(ctx)
	}
	all, err := w.containers(ctx, sandbox)
	if err != nil {
		return syncRunning, err
	}
	refs := allContainers(w.pod)
	policy := w.pod.Spec.RestartPolicy

	// Init containers: one at a time, each to completion.
	for _, ref := range refs {
		if !ref.init {
			continue
		}
		name := ref.c.Name
		list := all[name]
		if len(list) == 0 {
			return syncRunning, w.start(ctx, first, sandbox, ref, 0, rec.Volumes)
		}
		cs := list[0]
		switch cs.state {
		case runtimeapi.ContainerState_CONTAINER_CREATED:
			return syncRunning, w.startCreated(ctx, cs.id)
		case runtimeapi.ContainerState_CONTAINER_RUNNING:
			w.setPhase(ctx, PhasePending, "initializing: "+name)
			return syncRunning, nil
		}
		if cs.exitCode == 0 {
			w.sayf(name, "init container %s completed", name)
			continue
		}
		w.sayf(name, "init container %s failed (exit code %d)", name, cs.exitCode)
		if policy == corev1.RestartPolicyNever {
			return w.finish(ctx, sandbox, PhaseFailed, fmt.Sprintf("init container %s failed with exit code %d", name, cs.exitCode))
		}
		if d := w.wait(name, cs.finished); d > 0 {
			w.waiting(ctx, name, "Init:CrashLoopBackOff", fmt.Sprintf("back-off %s restarting failed init container", w.backoff[name].cur))
			return syncRunning, nil
		}
		w.next(name, cs.finished)
		err := w.start(ctx, first, sandbox, ref, cs.attempt+1, rec.Volumes)
		w.removeOlder(ctx, list, cs)
		return syncRunning, err
	}

	// App containers.
	live, failed := 0, 0
	for _, ref := range refs {
		if ref.init {
			continue
		}
		name := ref.c.Name
		list := all[name]
		if len(list) == 0 {
			live++
			if err := w.start(ctx, first, sandbox, ref, 0, rec.Volumes); err != nil {
				return syncRunning, err
			}
			continue
		}
		cs := list[0]
		switch cs.state {
		case runtimeapi.ContainerState_CONTAINER_CREATED:
			live++
			if err := w.startCreated(ctx, cs.id); err != nil {
				return syncRunning, err
			}
			continue
		case runtimeapi.ContainerState_CONTAINER_RUNNING:
			live++
			w.runProbes(ctx, ref, cs)
			continue
		}
		if ps := w.probes[cs.id]; ps != nil {
			ps.stop()
			delete(w.probes, cs.id)
		}
		w.note(name).Ready = false
		restart := policy == corev1.RestartPolicyAlways || (policy == corev1.RestartPolicyOnFailure && cs.exitCode != 0)
		how := "completed"
		if cs.exitCode != 0 {
			how = fmt.Sprintf("exited with code %d", cs.exitCode)
			if cs.reason != "" {
				how += " (" + cs.reason + ")"
			}
		}
		if !restart {
			w.sayf(name, "container %s %s; restartPolicy %s: not restarted", name, how, policy)
			w.note(name).Waiting = ""
			if cs.exitCode != 0 {
				failed++
			}
			continue
		}
		live++
		if d := w.wait(name, cs.finished); d > 0 {
			w.sayf(name, "container %s %s; restarting in %s", name, how, d.Round(time.Second))
			w.waiting(ctx, name, "CrashLoopBackOff", fmt.Sprintf("back-off %s restarting failed container", w.backoff[name].cur))
			continue
		}
		w.sayf(name, "container %s %s; restarting", name, how)
		w.next(name, cs.finished)
		if err := w.start(ctx, first, sandbox, ref, cs.attempt+1, rec.Volumes); err != nil {
			return syncRunning, err
		}
		w.removeOlder(ctx, list, cs)
	}
	if live == 0 {
		if failed > 0 {
			return w.finish(ctx, sandbox, PhaseFailed, fmt.Sprintf("%d container(s) failed", failed))
		}
		return w.finish(ctx, sandbox, PhaseSucceeded, "all containers completed")
	}
	if r := w.ready(); r != w.wasReady {
		w.wasReady = r
		if r {
			w.sayf("", "ready")
		} else {
			w.sayf("", "not ready")
		}
	}
	w.setPhase(ctx, PhaseRunning, "")
	return syncRunning, nil
}

// start starts a container; a failure is returned on the first round,
// otherwise shown and retried with back-off.
func (w *worker) start(ctx context.Context, first bool, sandbox string, ref ctrRef, attempt uint32, vols []VolumeRecord) error {
	name := ref.c.Name
	if b := w.backoff[name]; b != nil && !first {
		if d := b.cur - time.Since(b.last); d > 0 && w.note(name).Waiting == "CreateContainerError" {
			return nil
		}
	}
	if _, err := w.startContainer(ctx, sandbox, ref, attempt, vols); err != nil {
		if first {
			return err
		}
		w.next(name, time.Now())
		w.sayf(name, "%v; retrying in %s", err, w.backoff[name].cur)
		w.waiting(ctx, name, "CreateContainerError", err.Error())
		return nil
	}
	n := w.note(name)
	n.Waiting, n.Message = "", ""
	return nil
}

func (w *worker) startCreated(ctx context.Context, id string) error {
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	if _, err := w.n.rt.StartContainer(cctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		w.n.rt.RemoveContainer(cctx, &runtimeapi.RemoveContainerRequest{ContainerId: id})
		return fmt.Errorf("StartContainer %.13s: %w", id, err)
	}
	return nil
}

// waiting notes why a container is not running.
func (w *worker) waiting(ctx context.Context, name, reason, msg string) {
	n := w.note(name)
	n.Waiting, n.Message = reason, msg
	w.persist(ctx)
}

func (w *worker) setPhase(ctx context.Context, phase, msg string) {
	w.phase, w.message = phase, msg
	w.persist(ctx)
}

// persist writes the notes and phase when they changed.
func (w *worker) persist(ctx context.Context) {
	phase := w.phase
	if phase == "" {
		phase = PhasePending
	}
	notes := map[string]*ContainerNote{}
	for k, v := range w.notes {
		c := *v
		notes[k] = &c
	}
	w.n.st.pod(ctx, w.key, func(r *PodRecord) {
		old, _ := json.Marshal(r.Containers)
		now, _ := json.Marshal(notes)
		if r.Phase == phase && r.Message == w.message && string(old) == string(now) {
			return
		}
		r.Phase, r.Message, r.Containers = phase, w.message, notes
	})
}

// finish ends a pod whose containers will not run again: as kubelet, the
// sandbox is stopped (its IP and ports freed); the record stays, with its
// logs, until tripod delete.
func (w *worker) finish(ctx context.Context, sandbox, phase, msg string) (syncResult, error) {
	w.stopProbes()
	cctx, cancel := withTimeout(ctx)
	_, err := w.n.rt.StopPodSandbox(cctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox})
	cancel()
	if err != nil {
		return syncRunning, fmt.Errorf("StopPodSandbox: %w", err)
	}
	for _, n := range w.notes {
		n.Ready = false
	}
	w.setPhase(ctx, phase, msg)
	w.sayf("", "%s: %s", phase, msg)
	return syncTerminal, nil
}

// killSandbox stops and removes a sandbox that went bad.
func (w *worker) killSandbox(ctx context.Context, id string) {
	w.stopProbes()
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	w.n.rt.StopPodSandbox(cctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id})
	w.n.rt.RemovePodSandbox(cctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id})
	w.exited = map[string]*runtimeapi.ContainerStatus{}
}

func (w *worker) stopProbes() {
	for id, ps := range w.probes {
		ps.stop()
		delete(w.probes, id)
	}
}

// run syncs the pod every second (and when a probe has news) until it is
// terminal, deleted, or ctx ends.
func (w *worker) run(ctx context.Context) error {
	defer w.stopProbes()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastErr := ""
	for {
		res, err := w.sync(ctx, false)
		switch {
		case errors.Is(err, errStopped):
			w.n.event(w.key, "deleted")
			return err
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			if err.Error() != lastErr {
				w.n.event(w.key, "sync: %v", err)
				lastErr = err.Error()
			}
		case res == syncTerminal:
			return nil
		default:
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-w.wake:
		}
	}
}

// ready reports whether every app container is ready.
func (w *worker) ready() bool {
	for _, c := range w.pod.Spec.Containers {
		if n := w.notes[c.Name]; n == nil || !n.Ready {
			return false
		}
	}
	return true
}
