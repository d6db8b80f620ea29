// Package pod is tripodd's runtime core: pod sandboxes (pinned namespaces
// and a CNI attachment, no pause process) and their containers (an overlay
// rootfs, an OCI spec, an OCI runtime driven through tripod-monitor),
// persisted in bbolt so that tripodd can be killed at any point and pick
// everything up again. It knows nothing of gRPC.
package pod

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/tripod-dev/tripod/internal/cnirun"
	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/image"
	"github.com/tripod-dev/tripod/internal/metrics"
	"github.com/tripod-dev/tripod/internal/netns"
	"github.com/tripod-dev/tripod/internal/oci"
	"github.com/tripod-dev/tripod/internal/rootfs"
	"golang.org/x/sys/unix"
)

// Images is what the core needs from the image service.
type Images interface {
	Lookup(ref string) (image.Image, error)
	Config(img image.Image) ([]byte, error)
	LayerDirs(img image.Image) ([]string, error)
}

// Handler is an OCI runtime selectable per pod (RuntimeClass).
type Handler struct {
	Path string // binary, a name looked up in PATH or a path
	// Exec is how execs start: ExecDirect, ExecRuntime, or "" for direct
	// when the runtime is runc or crun.
	Exec string
}

// Handler.Exec values.
const (
	ExecDirect  = "direct"
	ExecRuntime = "runtime"
)

// Options configure a Manager.
type Options struct {
	Root, State    string // persistent and volatile directories of the runtime core
	CNI            *cnirun.Runner
	Handlers       map[string]Handler
	DefaultHandler string
	// CgroupDriver is "cgroupfs" or "systemd".
	CgroupDriver string
	// CgroupParent is used for pods that name none.
	CgroupParent string
	// MonitorPath is the tripod-monitor binary.
	MonitorPath string
	Logger      *slog.Logger
	Metrics     *metrics.Registry
	// CDI injects CDI devices into specs; nil refuses containers that ask
	// for any.
	CDI DeviceInjector
	// CrashAt names a point inside RunPod or CreateContainer where the
	// process kills itself with SIGKILL: the fault injection the restart
	// tests use (tripodd sets it from TRIPOD_CRASH_AT). Empty in production.
	CrashAt string
	// EventBuffer is how many events each subscriber may leave unread
	// before it is cut off (default 1024).
	EventBuffer int
}

// State of a pod or container.
type State string

// Pod and container states. Creating marks a record whose creation was not
// finished: at start-up it is rolled back.
const (
	Creating State = "creating"
	Ready    State = "ready"
	NotReady State = "notready"
	Created  State = "created"
	Running  State = "running"
	Exited   State = "exited"
)

// Meta names a pod or container as kubelet does.
type Meta struct {
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Attempt   uint32 `json:"attempt"`
}

// DNS is the pod's resolver configuration.
type DNS struct {
	Servers  []string `json:"servers,omitempty"`
	Searches []string `json:"searches,omitempty"`
	Options  []string `json:"options,omitempty"`
}

// PodConfig is what RunPodSandbox asks for.
type PodConfig struct {
	Meta         Meta
	Hostname     string
	LogDir       string
	DNS          *DNS
	Ports        []cnirun.PortMapping
	Bandwidth    *cnirun.Bandwidth
	Labels       map[string]string
	Annotations  map[string]string
	CgroupParent string
	Sysctls      map[string]string
	HostNetwork  bool
	HostPID      bool
	HostIPC      bool
	// SharePID gives the pod one PID namespace for all its containers.
	SharePID bool
	Handler  string
	// Privileged pods may run privileged containers.
	Privileged bool `json:",omitempty"`
	// UserNS, when set, gives the pod a user namespace with these
	// mappings, owning its other namespaces.
	UserNS *oci.IDMap `json:",omitempty"`
}

// Pod is a pod sandbox.
type Pod struct {
	PodConfig
	ID         string                `json:"id"`
	State      State                 `json:"state"`
	CreatedAt  int64                 `json:"createdAt"`
	Dir        string                `json:"dir"`
	Namespaces map[netns.Kind]string `json:"namespaces,omitempty"`
	Shm        string                `json:"shm,omitempty"`
	// InitPID runs as PID 1 of a shared PID namespace (pinned as
	// Namespaces["pid"]).
	InitPID int                `json:"initPID,omitempty"`
	Net     *cnirun.Attachment `json:"net,omitempty"`
	// Detached is set once the CNI DEL has succeeded.
	Detached bool `json:"detached,omitempty"`
	// Overhead and Resources are the last UpdatePodSandboxResources'.
	Overhead  *oci.Resources `json:"overhead,omitempty"`
	Resources *oci.Resources `json:"resources,omitempty"`
}

// IPs are the pod's addresses, IPv4 first.
func (p *Pod) IPs() []string {
	if p.Net == nil || p.State != Ready {
		return nil
	}
	return p.Net.IPs
}

// Manager runs pods and containers.
type Manager struct {
	opt    Options
	log    *slog.Logger
	store  *store
	images Images

	mu         sync.Mutex
	pods       map[string]*Pod
	containers map[string]*Container
	names      map[string]string // reserved name → id
	podCIDR    string
	m          coreMetrics
	features   featureCache
	ev         eventState
	st         statsState
	resMu      sync.Mutex // serialises resource updates
	hk         hookState
	mon        monitorState
}

type coreMetrics struct {
	phase, phases metrics.Vec // phase
}

// New opens the metadata (under Root) and loads every record. Recover
// must run before the manager serves calls.
func New(opt Options) (*Manager, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Metrics == nil {
		opt.Metrics = metrics.New()
	}
	if opt.DefaultHandler == "" {
		opt.DefaultHandler = "runc"
	}
	if opt.Handlers == nil {
		opt.Handlers = map[string]Handler{}
	}
	if _, ok := opt.Handlers["runc"]; !ok {
		opt.Handlers["runc"] = Handler{Path: "runc"}
	}
	if opt.CgroupDriver == "" {
		opt.CgroupDriver = "cgroupfs"
	}
	for _, d := range []string{opt.Root, opt.State, filepath.Join(opt.State, "pods"), filepath.Join(opt.State, "containers"), filepath.Join(opt.Root, "containers")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("runtime dirs: %w", err)
		}
	}
	st, err := openStore(filepath.Join(opt.Root, "meta.db"))
	if err != nil {
		return nil, err
	}
	m := &Manager{opt: opt, log: opt.Logger, store: st, pods: map[string]*Pod{}, containers: map[string]*Container{}, names: map[string]string{},
		ev: newEventState(opt.EventBuffer), mon: monitorState{closed: make(chan struct{})}}
	m.m.phase = opt.Metrics.Counter("tripod_runtime_phase_seconds_total", "Time spent in each phase of pod and container operations.", "phase")
	m.m.phases = opt.Metrics.Counter("tripod_runtime_phases_total", "Completed phases of pod and container operations.", "phase")
	pods, err := loadAll[Pod](st, podBucket)
	if err != nil {
		st.db.Close()
		return nil, err
	}
	ctrs, err := loadAll[Container](st, containerBucket)
	if err != nil {
		st.db.Close()
		return nil, err
	}
	for _, p := range pods {
		m.pods[p.ID] = p
		m.names[podKey(p.Meta)] = p.ID
	}
	for _, c := range ctrs {
		m.containers[c.ID] = c
		m.names[containerKey(c.PodID, c.Meta)] = c.ID
	}
	return m, nil
}

// Close closes the metadata store. Pods and containers keep running.
func (m *Manager) Close() error {
	m.ev.stopBG()
	m.mon.mu.Lock()
	select {
	case <-m.mon.closed:
	default:
		close(m.mon.closed)
	}
	m.mon.mu.Unlock()
	return m.store.db.Close()
}

// LayersInUse returns the chain IDs containers' root filesystems use, for
// the image service's GC.
func (m *Manager) LayersInUse() map[string]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]bool{}
	for _, c := range m.containers {
		for _, id := range c.ChainIDs {
			out[id] = true
		}
		for _, v := range c.ImageVolumes {
			for _, id := range v.ChainIDs {
				out[id] = true
			}
		}
	}
	return out
}

func podKey(md Meta) string {
	return fmt.Sprintf("pod/%s/%s/%s/%d", md.Name, md.Namespace, md.UID, md.Attempt)
}

func containerKey(podID string, md Meta) string {
	return fmt.Sprintf("ctr/%s/%s/%d", podID, md.Name, md.Attempt)
}

func newID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// reserve claims a name for id; release gives it back.
func (m *Manager) reserve(key, id, what string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if other, ok := m.names[key]; ok {
		return fmt.Errorf("%s name %q is in use by %s: %w", what, key, other, errdefs.ErrAlreadyExists)
	}
	m.names[key] = id
	return nil
}

func (m *Manager) release(key, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.names[key] == id {
		delete(m.names, key)
	}
}

// undo is a stack of rollback steps.
type undo []func(context.Context) error

func (u *undo) add(f func(context.Context) error) { *u = append(*u, f) }

// run undoes in reverse order on a context of its own: the caller's may be
// the one that timed out.
func (u undo) run(log *slog.Logger, what string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i](ctx); err != nil {
			log.Warn("rollback step failed", "of", what, "err", err)
		}
	}
}

func (m *Manager) crashpoint(name string) {
	if m.opt.CrashAt == name {
		m.log.Warn("crash point reached: SIGKILL", "point", name)
		unix.Kill(os.Getpid(), unix.SIGKILL)
	}
}

func (m *Manager) phase(name string, start time.Time) {
	m.m.phase.Add(time.Since(start).Seconds(), name)
	m.m.phases.Inc(name)
}

// RunPod creates and starts a pod sandbox. On any failure, or when ctx
// ends, every step taken is undone and the name released.
func (m *Manager) RunPod(ctx context.Context, cfg PodConfig) (_ *Pod, err error) {
	if err := validatePod(&cfg); err != nil {
		return nil, err
	}
	if cfg.Handler == "" {
		cfg.Handler = m.opt.DefaultHandler
	}
	if _, ok := m.opt.Handlers[cfg.Handler]; !ok {
		return nil, fmt.Errorf("runtime_handler: %q is not configured: %w", cfg.Handler, errdefs.ErrInvalidArgument)
	}
	if err := m.checkPodSecurity(ctx, &cfg); err != nil {
		return nil, err
	}
	p := &Pod{PodConfig: cfg, ID: newID(), State: Creating, CreatedAt: time.Now().UnixNano()}
	p.Dir = filepath.Join(m.opt.State, "pods", p.ID)
	key := podKey(cfg.Meta)
	t := time.Now()
	if err := m.reserve(key, p.ID, "pod"); err != nil {
		return nil, err
	}
	m.phase("reserve", t)
	var u undo
	u.add(func(context.Context) error { m.release(key, p.ID); return nil })
	defer func() {
		if err != nil {
			u.run(m.log, "RunPodSandbox "+p.ID)
		}
	}()
	if err := os.MkdirAll(p.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("pod dir: %w", err)
	}
	u.add(func(context.Context) error { return os.RemoveAll(p.Dir) })
	// Everything the rollback needs (namespace paths, the CNI config
	// list) is in the first record, written before any of it exists and
	// marked Creating: a kill -9 from here on is rolled back at the next
	// start from what this record says. One write here and one at the
	// end keep the fsyncs per pod to two.
	var kinds []netns.Kind
	if !cfg.HostNetwork {
		kinds = append(kinds, netns.Net, netns.UTS)
	}
	if !cfg.HostIPC {
		kinds = append(kinds, netns.IPC)
	}
	nsDir := filepath.Join(p.Dir, "ns")
	p.Namespaces = map[netns.Kind]string{}
	for _, k := range kinds {
		p.Namespaces[k] = filepath.Join(nsDir, string(k))
	}
	if cfg.SharePID && !cfg.HostPID {
		p.Namespaces[netns.PID] = filepath.Join(nsDir, "pid")
	}
	if cfg.UserNS != nil {
		p.Namespaces[userKind] = filepath.Join(nsDir, string(userKind))
	}
	if !cfg.HostIPC {
		p.Shm = filepath.Join(p.Dir, "shm")
	}
	var list *libcni.NetworkConfigList
	if !cfg.HostNetwork {
		if m.opt.CNI == nil {
			return nil, fmt.Errorf("no CNI configured for a pod network: %w", errdefs.ErrFailedPrecondition)
		}
		if list, err = m.opt.CNI.Load(); err != nil {
			return nil, fmt.Errorf("network not ready: %w", errdefs.Wrap(errdefs.ErrFailedPrecondition, err))
		}
		p.Net = &cnirun.Attachment{ConfList: list.Bytes}
	}
	if err := m.store.put(podBucket, p.ID, p); err != nil {
		return nil, err
	}
	u.add(func(context.Context) error { return m.store.delete(podBucket, p.ID) })

	t = time.Now()
	if p.UserNS != nil {
		err = m.pinUserPod(p, kinds)
	} else {
		_, err = netns.Pin(nsDir, kinds, p.hostname())
	}
	if err != nil {
		return nil, err
	}
	u.add(func(context.Context) error { return netns.Unpin(p.Namespaces) })
	m.crashpoint("pod-netns")
	if p.Shm != "" {
		if err := os.MkdirAll(p.Shm, 0o1777); err != nil {
			return nil, err
		}
		if err := unix.Mount("shm", p.Shm, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=65536k"); err != nil {
			return nil, fmt.Errorf("pod /dev/shm: %w", err)
		}
		u.add(func(context.Context) error { return rootfs.Unmount(p.Shm) })
	}
	if pidPath, ok := p.Namespaces[netns.PID]; ok {
		pid := p.InitPID // the user namespace's helper, if any
		if pid == 0 {
			if pid, err = m.startPodInit(pidPath); err != nil {
				return nil, err
			}
		}
		p.InitPID = pid
		u.add(func(context.Context) error { stopPodInit(pid, pidPath); return nil })
		if err := m.store.put(podBucket, p.ID, p); err != nil {
			return nil, err
		}
	}
	m.phase("netns", t)
	if err := writePodFiles(p); err != nil {
		return nil, err
	}
	if err := chownPodFiles(p); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	if !cfg.HostNetwork {
		t = time.Now()
		cp := m.cniPod(p)
		att, err := m.opt.CNI.Add(ctx, list, cp)
		if err != nil {
			return nil, err
		}
		p.Net = &att
		u.add(func(ctx context.Context) error { return m.opt.CNI.Del(ctx, att, cp) })
		m.crashpoint("pod-cni-add")
		m.phase("cni_add", t)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	unblock := m.blockSync()
	defer unblock()
	if err := m.hookRunPod(ctx, p, &u); err != nil {
		return nil, err
	}
	p.State = Ready
	if err := m.store.put(podBucket, p.ID, p); err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.pods[p.ID] = p
	m.publishLocked(ContainerCreated, p.ID, p.ID)
	m.publishLocked(ContainerStarted, p.ID, p.ID)
	m.mu.Unlock()
	m.log.Info("pod started", "pod", p.ID, "name", cfg.Meta.Name, "namespace", cfg.Meta.Namespace, "ips", p.IPs())
	return p, nil
}

func validatePod(cfg *PodConfig) error {
	switch {
	case cfg.Meta.Name == "":
		return fmt.Errorf("metadata.name: required: %w", errdefs.ErrInvalidArgument)
	case cfg.Meta.UID == "":
		return fmt.Errorf("metadata.uid: required: %w", errdefs.ErrInvalidArgument)
	case cfg.Meta.Namespace == "":
		return fmt.Errorf("metadata.namespace: required: %w", errdefs.ErrInvalidArgument)
	}
	for _, pm := range cfg.Ports {
		if pm.ContainerPort <= 0 || pm.ContainerPort > 65535 || pm.HostPort < 0 || pm.HostPort > 65535 {
			return fmt.Errorf("port_mappings: port out of range (%d→%d): %w", pm.HostPort, pm.ContainerPort, errdefs.ErrInvalidArgument)
		}
	}
	if cfg.Hostname != "" && (len(cfg.Hostname) > 64 || strings.ContainsAny(cfg.Hostname, "/ \x00")) {
		return fmt.Errorf("hostname: %q is not a valid host name: %w", cfg.Hostname, errdefs.ErrInvalidArgument)
	}
	return nil
}

func (m *Manager) cniPod(p *Pod) cnirun.Pod {
	cp := cnirun.Pod{ID: p.ID, Name: p.Meta.Name, Namespace: p.Meta.Namespace, UID: p.Meta.UID,
		NetNS: p.Namespaces[netns.Net], Bandwidth: p.Bandwidth}
	for _, pm := range p.Ports {
		if pm.HostPort > 0 {
			cp.Ports = append(cp.Ports, pm)
		}
	}
	if p.DNS != nil {
		cp.DNS = &cnirun.DNS{Servers: p.DNS.Servers, Searches: p.DNS.Searches, Options: p.DNS.Options}
	}
	m.mu.Lock()
	cp.PodCIDR = m.podCIDR
	m.mu.Unlock()
	return cp
}

// hostname is the pod's host name: the one asked for, or its name cut to
// what a host name may be (63 characters).
func (p *Pod) hostname() string {
	if p.Hostname != "" {
		return p.Hostname
	}
	h := p.Meta.Name
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}

// writePodFiles writes the hostname, hosts and resolv.conf the pod's
// containers bind-mount.
func writePodFiles(p *Pod) error {
	hostname := p.Hostname
	if hostname == "" {
		if p.HostNetwork {
			h, err := os.Hostname()
			if err != nil {
				return err
			}
			hostname = h
		} else {
			hostname = p.hostname()
		}
	}
	files := map[string]string{"hostname": hostname + "\n"}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if p.HostNetwork {
		if b, err := os.ReadFile("/etc/hosts"); err == nil {
			hosts = string(b)
		}
	}
	files["hosts"] = hosts
	resolv := ""
	if p.DNS != nil && (len(p.DNS.Servers) > 0 || len(p.DNS.Searches) > 0 || len(p.DNS.Options) > 0) {
		var b strings.Builder
		if len(p.DNS.Searches) > 0 {
			fmt.Fprintf(&b, "search %s\n", strings.Join(p.DNS.Searches, " "))
		}
		for _, s := range p.DNS.Servers {
			fmt.Fprintf(&b, "nameserver %s\n", s)
		}
		if len(p.DNS.Options) > 0 {
			fmt.Fprintf(&b, "options %s\n", strings.Join(p.DNS.Options, " "))
		}
		resolv = b.String()
	} else if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		resolv = string(b)
	}
	files["resolv.conf"] = resolv
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(p.Dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("pod %s: %w", name, err)
		}
	}
	return nil
}

// findPod resolves a full ID or a unique prefix.
func (m *Manager) findPod(id string) (*Pod, error) {
	if id == "" {
		return nil, fmt.Errorf("pod_sandbox_id: required: %w", errdefs.ErrInvalidArgument)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.pods[id]; ok {
		return p, nil
	}
	var found *Pod
	for pid, p := range m.pods {
		if strings.HasPrefix(pid, id) {
			if found != nil {
				return nil, fmt.Errorf("pod ID prefix %q is ambiguous: %w", id, errdefs.ErrInvalidArgument)
			}
			found = p
		}
	}
	if found == nil {
		return nil, fmt.Errorf("pod sandbox %q: %w", id, errdefs.ErrNotFound)
	}
	return found, nil
}

// Pod returns a pod by ID (or unique prefix).
func (m *Manager) Pod(id string) (*Pod, error) {
	p, err := m.findPod(id)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := *p
	return &cp, nil
}

// PodFilter selects pods; zero fields match all.
type PodFilter struct {
	ID     string
	State  State
	Labels map[string]string
}

// Pods lists pods matching f.
func (m *Manager) Pods(f PodFilter) []*Pod {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Pod
	for _, p := range m.pods {
		if p.State == Creating {
			continue
		}
		if f.ID != "" && !strings.HasPrefix(p.ID, f.ID) {
			continue
		}
		if f.State != "" && p.State != f.State {
			continue
		}
		if !matchLabels(p.Labels, f.Labels) {
			continue
		}
		cp := *p
		out = append(out, &cp)
	}
	slices.SortFunc(out, func(a, b *Pod) int { return int(b.CreatedAt - a.CreatedAt) })
	return out
}

func matchLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// StopPod stops the pod's containers (SIGKILL), detaches it from the
// network and unpins its namespaces. Stopping an unknown or stopped pod
// succeeds: kubelet retries it freely.
func (m *Manager) StopPod(ctx context.Context, id string) error {
	p, err := m.findPod(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, c := range m.podContainers(p.ID) {
		if err := m.StopContainer(ctx, c.ID, 0); err != nil {
			return fmt.Errorf("stop pod %s: %w", p.ID, err)
		}
	}
	m.hookStopPod(ctx, p)
	return m.teardownPod(ctx, p)
}

// teardownPod releases what a pod holds on the node; each step is
// idempotent, so it also finishes a pod a crash left half made.
func (m *Manager) teardownPod(ctx context.Context, p *Pod) error {
	t := time.Now()
	if p.Net != nil && !p.Detached && m.opt.CNI != nil {
		if err := m.opt.CNI.Del(ctx, *p.Net, m.cniPod(p)); err != nil {
			return fmt.Errorf("stop pod %s: %w", p.ID, err)
		}
	}
	m.phase("cni_del", t)
	if path, ok := p.Namespaces[netns.PID]; ok {
		stopPodInit(p.InitPID, path)
	}
	if err := netns.Unpin(p.Namespaces); err != nil {
		return fmt.Errorf("stop pod %s: %w", p.ID, err)
	}
	if p.Shm != "" {
		if err := rootfs.Unmount(p.Shm); err != nil {
			return err
		}
	}
	m.mu.Lock()
	p.Detached = true
	wasReady := p.State == Ready
	if p.State != Creating {
		p.State = NotReady
	}
	if wasReady {
		m.publishLocked(ContainerStopped, p.ID, p.ID)
	}
	cp := *p
	m.mu.Unlock()
	return m.store.put(podBucket, p.ID, &cp)
}

// RemovePod stops and removes a pod and all its containers. An unknown pod
// is not an error.
func (m *Manager) RemovePod(ctx context.Context, id string) error {
	p, err := m.findPod(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, c := range m.podContainers(p.ID) {
		if err := m.RemoveContainer(ctx, c.ID); err != nil {
			return fmt.Errorf("remove pod %s: %w", p.ID, err)
		}
	}
	m.hookStopPod(ctx, p) // removed without a stop
	if err := m.teardownPod(ctx, p); err != nil {
		return err
	}
	m.hookRemovePod(ctx, p)
	if err := os.RemoveAll(p.Dir); err != nil {
		return fmt.Errorf("remove pod %s: %w", p.ID, err)
	}
	if err := m.store.delete(podBucket, p.ID); err != nil {
		return err
	}
	m.mu.Lock()
	m.publishLocked(ContainerDeleted, p.ID, p.ID)
	delete(m.pods, p.ID)
	m.mu.Unlock()
	m.forgetStats(p.ID)
	m.release(podKey(p.Meta), p.ID)
	return nil
}

func (m *Manager) podContainers(podID string) []*Container {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Container
	for _, c := range m.containers {
		if c.PodID == podID {
			out = append(out, c)
		}
	}
	return out
}

// SetPodCIDR records the node's pod CIDR, passed to CNI as ipRanges.
func (m *Manager) SetPodCIDR(cidr string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.podCIDR = cidr
}

// CgroupDriver is the configured driver.
func (m *Manager) CgroupDriver() string { return m.opt.CgroupDriver }

// NetworkStatus reports whether pods can be networked.
func (m *Manager) NetworkStatus(ctx context.Context) error {
	if m.opt.CNI == nil {
		return errors.New("no CNI configured")
	}
	return m.opt.CNI.Status(ctx)
}

// Handlers lists the configured runtime handlers.
func (m *Manager) Handlers() []string {
	var out []string
	for h := range m.opt.Handlers {
		out = append(out, h)
	}
	slices.Sort(out)
	return out
}
