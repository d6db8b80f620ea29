// Package nri serves Node Resource Interface plugins for the runtime core:
// it runs containerd/nri's runtime adaptation (the plugin socket, the
// plugin registry, pre-installed plugins) and implements pod.Hooks with it,
// applying what plugins ask for: adjustments to a container's OCI spec,
// resource updates of other containers, evictions.
package nri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"
	"github.com/containerd/nri/pkg/runtime-tools/generate"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tripod-dev/tripod/internal/metrics"
	"github.com/tripod-dev/tripod/internal/oci"
	"github.com/tripod-dev/tripod/internal/pod"
)

// Config says where plugins are and how long they may take.
type Config struct {
	SocketPath       string
	PluginPath       string
	PluginConfigPath string
	// RegistrationTimeout bounds a plugin's registration; RequestTimeout
	// its answer to one event, past which the plugin is dropped and the
	// request goes on without it.
	RegistrationTimeout, RequestTimeout time.Duration
	Version                             string
	Logger                              *slog.Logger
	Metrics                             *metrics.Registry
	// CDI injects the CDI devices plugins ask for; nil refuses them.
	CDI pod.DeviceInjector
}

// NRI is the runtime's side of NRI.
type NRI struct {
	a   *adaptation.Adaptation
	m   *pod.Manager
	cfg Config
	log *slog.Logger
	// plugins is the number of plugins registered: with none, events are
	// not built at all.
	plugins atomic.Int64
	calls   metrics.Vec // plugin, op, result
	count   metrics.Vec
}

// New prepares NRI for m; Start serves it. The adaptation's timeouts and
// logger are process-wide settings of containerd/nri: one NRI per process.
func New(cfg Config, m *pod.Manager) (*NRI, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New()
	}
	n := &NRI{m: m, cfg: cfg, log: cfg.Logger}
	n.calls = cfg.Metrics.Counter("tripod_nri_plugin_requests_total", "Requests relayed to NRI plugins, by plugin, event and result.", "plugin", "op", "result")
	n.count = cfg.Metrics.Gauge("tripod_nri_plugins", "NRI plugins registered.")
	nrilog.Set(logger{cfg.Logger})
	adaptation.SetPluginRegistrationTimeout(cfg.RegistrationTimeout)
	adaptation.SetPluginRequestTimeout(cfg.RequestTimeout)
	opts := []adaptation.Option{
		adaptation.WithPluginPath(cfg.PluginPath),
		adaptation.WithPluginConfigPath(cfg.PluginConfigPath),
		adaptation.WithSocketPath(cfg.SocketPath),
		adaptation.WithMetrics(pluginMetrics{n}),
	}
	if live(cfg.SocketPath) {
		// Another runtime serves plugins there: taking its socket away
		// would cut its plugins off. Pre-installed plugins still run.
		n.log.Warn("NRI socket in use by another process: external plugins will not reach tripodd", "socket", cfg.SocketPath)
		opts = append(opts, adaptation.WithDisabledExternalConnections())
	}
	a, err := adaptation.New("tripod", cfg.Version, n.sync, n.update, opts...)
	if err != nil {
		return nil, fmt.Errorf("nri: %w", err)
	}
	n.a = a
	return n, nil
}

// live reports whether something answers on a unix socket.
func live(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Start launches pre-installed plugins and listens for external ones.
func (n *NRI) Start() error {
	if err := n.a.Start(); err != nil {
		return fmt.Errorf("nri: %w", err)
	}
	if _, err := os.Stat(n.cfg.SocketPath); err == nil {
		// Plugins run as root; nobody else may drive containers.
		os.Chmod(n.cfg.SocketPath, 0o600)
	}
	n.log.Info("NRI serving", "socket", n.cfg.SocketPath, "pluginPath", n.cfg.PluginPath)
	return nil
}

// Stop closes the socket and stops the plugins.
func (n *NRI) Stop() { n.a.Stop() }

// active reports whether any plugin is registered.
func (n *NRI) active() bool { return n.plugins.Load() > 0 }

var _ pod.Hooks = (*NRI)(nil)

// BlockSync implements pod.Hooks.
func (n *NRI) BlockSync() func() {
	b := n.a.BlockPluginSync()
	return b.Unblock
}

// RunPod implements pod.Hooks.
func (n *NRI) RunPod(ctx context.Context, p *pod.Pod) error {
	if !n.active() {
		return nil
	}
	return n.a.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: podSandbox(p)})
}

// StopPod implements pod.Hooks.
func (n *NRI) StopPod(ctx context.Context, p *pod.Pod) error {
	if !n.active() {
		return nil
	}
	return n.a.StopPodSandbox(ctx, &api.StopPodSandboxRequest{Pod: podSandbox(p)})
}

// RemovePod implements pod.Hooks.
func (n *NRI) RemovePod(ctx context.Context, p *pod.Pod) error {
	if !n.active() {
		return nil
	}
	return n.a.RemovePodSandbox(ctx, &api.RemovePodSandboxRequest{Pod: podSandbox(p)})
}

// CreateContainer implements pod.Hooks: plugins' adjustments are applied
// to spec, their updates and evictions of other containers right away.
func (n *NRI) CreateContainer(ctx context.Context, p *pod.Pod, c *pod.Container, spec *specs.Spec) error {
	if !n.active() {
		return nil
	}
	resp, err := n.a.CreateContainer(ctx, &api.CreateContainerRequest{Pod: podSandbox(p), Container: container(c, spec)})
	if err != nil {
		return err
	}
	if err := n.adjust(spec, resp.Adjust); err != nil {
		return fmt.Errorf("applying plugins' adjustment: %w", err)
	}
	n.applyUpdates(ctx, resp.Update)
	n.evict(ctx, resp.Evict)
	return nil
}

// adjust applies an adjustment to spec with NRI's own applier, then checks
// what tripod cannot honour.
func (n *NRI) adjust(spec *specs.Spec, adj *api.ContainerAdjustment) error {
	if adj == nil {
		return nil
	}
	opts := []generate.GeneratorOption{generate.WithResourceChecker(checkResources)}
	if n.cfg.CDI != nil {
		opts = append(opts, generate.WithCDIDeviceInjector(n.cfg.CDI.Inject))
	}
	if err := generate.SpecGenerator(specEdit{spec}, opts...).Adjust(adj); err != nil {
		return err
	}
	if p := spec.Process; p != nil && p.OOMScoreAdj != nil {
		// Lowering it below tripodd's own needs CAP_SYS_RESOURCE, which
		// a host may withhold: the container would not start.
		p.OOMScoreAdj = oci.ClampOOMScoreAdj(*p.OOMScoreAdj)
	}
	if adj.GetLinux().GetCgroupsPath() != "" && !n.m.ValidCgroupsPath(spec.Linux.CgroupsPath) {
		return fmt.Errorf("cgroups path %q does not suit the %s cgroup driver", spec.Linux.CgroupsPath, n.m.CgroupDriver())
	}
	return nil
}

// PostCreateContainer implements pod.Hooks.
func (n *NRI) PostCreateContainer(ctx context.Context, p *pod.Pod, c *pod.Container) error {
	if !n.active() {
		return nil
	}
	pp, cc := n.pair(p, c)
	return n.a.PostCreateContainer(ctx, &api.PostCreateContainerRequest{Pod: pp, Container: cc})
}

// StartContainer implements pod.Hooks.
func (n *NRI) StartContainer(ctx context.Context, p *pod.Pod, c *pod.Container) error {
	if !n.active() {
		return nil
	}
	pp, cc := n.pair(p, c)
	return n.a.StartContainer(ctx, &api.StartContainerRequest{Pod: pp, Container: cc})
}

// PostStartContainer implements pod.Hooks.
func (n *NRI) PostStartContainer(ctx context.Context, p *pod.Pod, c *pod.Container) error {
	if !n.active() {
		return nil
	}
	pp, cc := n.pair(p, c)
	return n.a.PostStartContainer(ctx, &api.PostStartContainerRequest{Pod: pp, Container: cc})
}

// UpdateContainer implements pod.Hooks: plugins may change the resources
// asked for, and update or evict other containers.
func (n *NRI) UpdateContainer(ctx context.Context, p *pod.Pod, c *pod.Container, r *specs.LinuxResources) (*specs.LinuxResources, error) {
	if !n.active() {
		return r, nil
	}
	pp, cc := n.pair(p, c)
	resp, err := n.a.UpdateContainer(ctx, &api.UpdateContainerRequest{Pod: pp, Container: cc,
		LinuxResources: api.FromOCILinuxResources(r, nil)})
	if err != nil {
		return nil, err
	}
	var others []*api.ContainerUpdate
	for _, u := range resp.Update {
		switch {
		case u == nil:
		case u.ContainerId == c.ID:
			if res := u.GetLinux().GetResources(); res != nil {
				r = res.ToOCI()
			}
		default:
			others = append(others, u)
		}
	}
	n.applyUpdates(ctx, others)
	n.evict(ctx, resp.Evict)
	return r, nil
}

// PostUpdateContainer implements pod.Hooks.
func (n *NRI) PostUpdateContainer(ctx context.Context, p *pod.Pod, c *pod.Container) error {
	if !n.active() {
		return nil
	}
	pp, cc := n.pair(p, c)
	return n.a.PostUpdateContainer(ctx, &api.PostUpdateContainerRequest{Pod: pp, Container: cc})
}

// StopContainer implements pod.Hooks; plugins may update other
// containers (hand them what the stopped one freed).
func (n *NRI) StopContainer(ctx context.Context, p *pod.Pod, c *pod.Container) error {
	if !n.active() {
		return nil
	}
	pp, cc := n.pair(p, c)
	resp, err := n.a.StopContainer(ctx, &api.StopContainerRequest{Pod: pp, Container: cc})
	if err != nil {
		return err
	}
	n.applyUpdates(ctx, resp.Update)
	return nil
}

// RemoveContainer implements pod.Hooks.
func (n *NRI) RemoveContainer(ctx context.Context, p *pod.Pod, c *pod.Container) error {
	if !n.active() {
		return nil
	}
	pp, cc := n.pair(p, c)
	return n.a.RemoveContainer(ctx, &api.RemoveContainerRequest{Pod: pp, Container: cc})
}

// pair describes a pod and one of its containers, with the container's
// spec unless it has none (any more).
func (n *NRI) pair(p *pod.Pod, c *pod.Container) (*api.PodSandbox, *api.Container) {
	spec, err := n.m.Spec(c)
	if err != nil {
		n.log.Debug("NRI: container without spec", "container", c.ID, "err", err)
		spec = nil
	}
	return podSandbox(p), container(c, spec)
}

// sync hands a connecting plugin every pod and container (the adaptation
// holds new ones off meanwhile) and applies the updates it asks for.
func (n *NRI) sync(ctx context.Context, cb adaptation.SyncCB) error {
	var pods []*api.PodSandbox
	byID := map[string]*pod.Pod{}
	for _, p := range n.m.Pods(pod.PodFilter{}) {
		pods = append(pods, podSandbox(p))
		byID[p.ID] = p
	}
	var ctrs []*api.Container
	for _, c := range n.m.Containers(pod.ContainerFilter{}) {
		spec, err := n.m.Spec(c)
		if err != nil {
			// Being removed: the plugin hears of it as an event.
			n.log.Debug("NRI sync: container without spec", "container", c.ID, "err", err)
			continue
		}
		ctrs = append(ctrs, container(c, spec))
	}
	updates, err := cb(ctx, pods, ctrs)
	if err != nil {
		return err
	}
	n.applyUpdates(ctx, updates)
	return nil
}

// update applies the updates a plugin asks for on its own; it returns
// those that failed.
func (n *NRI) update(ctx context.Context, updates []*api.ContainerUpdate) ([]*api.ContainerUpdate, error) {
	return n.applyUpdates(ctx, updates), nil
}

// applyUpdates applies resource updates to containers; failures are
// logged (and returned) unless the plugin said to ignore them.
func (n *NRI) applyUpdates(ctx context.Context, updates []*api.ContainerUpdate) []*api.ContainerUpdate {
	var failed []*api.ContainerUpdate
	for _, u := range updates {
		if u == nil {
			continue
		}
		res := u.GetLinux().GetResources()
		if res == nil {
			continue
		}
		if err := n.m.ApplyResources(ctx, u.ContainerId, res.ToOCI()); err != nil {
			if !u.IgnoreFailure {
				n.log.Warn("NRI container update failed", "container", u.ContainerId, "err", err)
				failed = append(failed, u)
			}
		}
	}
	return failed
}

func (n *NRI) evict(ctx context.Context, evictions []*api.ContainerEviction) {
	for _, e := range evictions {
		if err := n.m.Evict(ctx, e.ContainerId, e.Reason); err != nil {
			n.log.Warn("NRI eviction failed", "container", e.ContainerId, "err", err)
		}
	}
}

// checkResources refuses limits no cgroup can take, before the runtime
// fails on them less clearly.
func checkResources(r *specs.LinuxResources) error {
	if r == nil {
		return nil
	}
	if m := r.Memory; m != nil {
		if m.Limit != nil && *m.Limit < 0 && *m.Limit != -1 {
			return fmt.Errorf("memory limit %d", *m.Limit)
		}
		// Without swap accounting (cgroup v1 without memsw) a swap limit
		// cannot be set: it follows the memory limit there anyway.
		if m.Swap != nil && !swapAccounting() {
			m.Swap = nil
		}
	}
	if c := r.CPU; c != nil && c.Quota != nil && *c.Quota != -1 && *c.Quota < 1000 {
		return errors.New("cpu quota below 1ms")
	}
	return nil
}

// swapAccounting reports whether memory+swap limits can be set.
func swapAccounting() bool {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return true // v2: memory.swap.max
	}
	_, err := os.Stat("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
	return err == nil
}

// pluginMetrics feeds the adaptation's plugin events into tripod's
// metrics and keeps the plugin count.
type pluginMetrics struct{ n *NRI }

func (pm pluginMetrics) RecordPluginInvocation(plugin, op string, err error) {
	res := "ok"
	if err != nil {
		res = "error"
	}
	pm.n.calls.Inc(plugin, op, res)
}

func (pluginMetrics) RecordPluginLatency(string, string, time.Duration) {}

func (pluginMetrics) RecordPluginAdjustments(string, string, *api.ContainerAdjustment, int, int) {}

func (pm pluginMetrics) UpdatePluginCount(count int) {
	pm.n.plugins.Store(int64(count))
	pm.n.count.Set(float64(count))
}

// logger sends containerd/nri's log lines to tripodd's.
type logger struct{ l *slog.Logger }

func (g logger) Debugf(ctx context.Context, f string, a ...any) {
	g.l.DebugContext(ctx, "nri: "+fmt.Sprintf(f, a...))
}
func (g logger) Infof(ctx context.Context, f string, a ...any) {
	g.l.InfoContext(ctx, "nri: "+fmt.Sprintf(f, a...))
}
func (g logger) Warnf(ctx context.Context, f string, a ...any) {
	g.l.WarnContext(ctx, "nri: "+fmt.Sprintf(f, a...))
}
func (g logger) Errorf(ctx context.Context, f string, a ...any) {
	g.l.ErrorContext(ctx, "nri: "+fmt.Sprintf(f, a...))
}
