package pod

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tripod-dev/tripod/internal/errdefs"
)

// Hooks are called at the lifecycle points of pods and containers (NRI
// plugins are behind them, see internal/nri). Errors from RunPod,
// CreateContainer and StartContainer fail the request; the others are
// notifications whose errors are logged, so that no plugin can keep a pod
// from stopping or being removed. Every call gets copies it may keep.
type Hooks interface {
	// BlockSync holds off plugins that are connecting until unblock is
	// called: a pod or container being made is then either in a new
	// plugin's synchronization or reported to it by the next call.
	BlockSync() (unblock func())
	RunPod(ctx context.Context, p *Pod) error
	StopPod(ctx context.Context, p *Pod) error
	RemovePod(ctx context.Context, p *Pod) error
	// CreateContainer may adjust spec, the container's OCI spec.
	CreateContainer(ctx context.Context, p *Pod, c *Container, spec *specs.Spec) error
	PostCreateContainer(ctx context.Context, p *Pod, c *Container) error
	StartContainer(ctx context.Context, p *Pod, c *Container) error
	PostStartContainer(ctx context.Context, p *Pod, c *Container) error
	// UpdateContainer returns the resources to apply instead of r.
	UpdateContainer(ctx context.Context, p *Pod, c *Container, r *specs.LinuxResources) (*specs.LinuxResources, error)
	PostUpdateContainer(ctx context.Context, p *Pod, c *Container) error
	StopContainer(ctx context.Context, p *Pod, c *Container) error
	RemoveContainer(ctx context.Context, p *Pod, c *Container) error
}

// hookState is the Manager's side of its Hooks.
type hookState struct {
	h  Hooks
	mu sync.Mutex
	// stopped holds, per container whose exit was seen, a channel closed
	// once the hooks heard of it: the exit is noticed wherever it is
	// read (a status call too), but it is told in the background, and
	// RemoveContainer waits for it so that plugins see Stop before Remove.
	stopped map[string]chan struct{}
}

// SetHooks installs h; call it before serving.
func (m *Manager) SetHooks(h Hooks) {
	m.hk.h, m.hk.stopped = h, map[string]chan struct{}{}
}

// backgroundHookTimeout bounds a notification sent in the background (a
// container's exit); the hooks bound each plugin's answer themselves.
const backgroundHookTimeout = time.Minute

// snapshot copies a pod and a container under the lock for a hook.
func (m *Manager) snapshot(p *Pod, c *Container) (*Pod, *Container) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var pc *Pod
	if p != nil {
		cp := *p
		pc = &cp
	}
	var cc *Container
	if c != nil {
		cp := *c
		cc = &cp
	}
	return pc, cc
}

func (m *Manager) podOf(c *Container) *Pod {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pods[c.PodID]
}

// blockSync is Hooks.BlockSync, or nothing without hooks.
func (m *Manager) blockSync() func() {
	if m.hk.h == nil {
		return func() {}
	}
	return m.hk.h.BlockSync()
}

// hookRunPod lets the hooks see (and veto) a pod about to become ready;
// should a later step fail, they hear of its removal.
func (m *Manager) hookRunPod(ctx context.Context, p *Pod, u *undo) error {
	if m.hk.h == nil {
		return nil
	}
	pc, _ := m.snapshot(p, nil)
	if err := m.hk.h.RunPod(ctx, pc); err != nil {
		return fmt.Errorf("NRI RunPodSandbox: %w", err)
	}
	u.add(func(ctx context.Context) error { return m.hk.h.RemovePod(ctx, pc) })
	return nil
}

// hookStopPod tells the hooks a ready pod is stopping (its containers
// have stopped); only the first stop of a pod is told.
func (m *Manager) hookStopPod(ctx context.Context, p *Pod) {
	if m.hk.h == nil {
		return
	}
	m.mu.Lock()
	ready := p.State == Ready
	m.mu.Unlock()
	if !ready {
		return
	}
	// Plugins hear of the containers' stops first.
	for _, c := range m.podContainers(p.ID) {
		m.awaitStopHook(ctx, c)
	}
	pc, _ := m.snapshot(p, nil)
	if err := m.hk.h.StopPod(ctx, pc); err != nil {
		m.log.Warn("NRI StopPodSandbox", "pod", p.ID, "err", err)
	}
}

func (m *Manager) hookRemovePod(ctx context.Context, p *Pod) {
	if m.hk.h == nil {
		return
	}
	pc, _ := m.snapshot(p, nil)
	if err := m.hk.h.RemovePod(ctx, pc); err != nil {
		m.log.Warn("NRI RemovePodSandbox", "pod", p.ID, "err", err)
	}
}

// hookCreateContainer lets the hooks adjust (or veto) a container's spec;
// should a later step fail, they hear of its stop and removal.
func (m *Manager) hookCreateContainer(ctx context.Context, p *Pod, c *Container, spec *specs.Spec, u *undo) error {
	if m.hk.h == nil {
		return nil
	}
	pc, cc := m.snapshot(p, c)
	if err := m.hk.h.CreateContainer(ctx, pc, cc, spec); err != nil {
		return fmt.Errorf("NRI CreateContainer: %w", err)
	}
	u.add(func(ctx context.Context) error {
		return errors.Join(m.hk.h.StopContainer(ctx, pc, cc), m.hk.h.RemoveContainer(ctx, pc, cc))
	})
	return nil
}

func (m *Manager) hookPostCreate(ctx context.Context, p *Pod, c *Container) {
	if m.hk.h == nil {
		return
	}
	pc, cc := m.snapshot(p, c)
	if err := m.hk.h.PostCreateContainer(ctx, pc, cc); err != nil {
		m.log.Warn("NRI PostCreateContainer", "container", c.ID, "err", err)
	}
}

func (m *Manager) hookStart(ctx context.Context, c *Container) error {
	if m.hk.h == nil {
		return nil
	}
	pc, cc := m.snapshot(m.podOf(c), c)
	if err := m.hk.h.StartContainer(ctx, pc, cc); err != nil {
		return fmt.Errorf("NRI StartContainer: %w", err)
	}
	return nil
}

func (m *Manager) hookPostStart(ctx context.Context, c *Container) {
	if m.hk.h == nil {
		return
	}
	pc, cc := m.snapshot(m.podOf(c), c)
	if err := m.hk.h.PostStartContainer(ctx, pc, cc); err != nil {
		m.log.Warn("NRI PostStartContainer", "container", c.ID, "err", err)
	}
}

// stopping registers c's exit for awaitStopHook. setExit calls it once
// per container, under m.mu with the state change, so that whoever sees
// the container exited also finds the hooks' pending StopContainer to
// wait for.
func (m *Manager) stopping(c *Container) chan struct{} {
	if m.hk.h == nil {
		return nil
	}
	done := make(chan struct{})
	m.hk.mu.Lock()
	m.hk.stopped[c.ID] = done
	m.hk.mu.Unlock()
	return done
}

// exited tells the hooks, in the background, that c has exited, then
// closes done (from stopping).
func (m *Manager) exited(c *Container, done chan struct{}) {
	if m.hk.h == nil || done == nil {
		return
	}
	pc, cc := m.snapshot(m.podOf(c), c)
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), backgroundHookTimeout)
		defer cancel()
		if err := m.hk.h.StopContainer(ctx, pc, cc); err != nil {
			m.log.Warn("NRI StopContainer", "container", cc.ID, "err", err)
		}
	}()
}

// awaitStopHook waits until the hooks have heard of c's exit, if it has
// exited.
func (m *Manager) awaitStopHook(ctx context.Context, c *Container) {
	if m.hk.h == nil {
		return
	}
	m.hk.mu.Lock()
	done := m.hk.stopped[c.ID]
	m.hk.mu.Unlock()
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func (m *Manager) hookRemoveContainer(ctx context.Context, c *Container) {
	if m.hk.h == nil {
		return
	}
	m.awaitStopHook(ctx, c)
	m.hk.mu.Lock()
	delete(m.hk.stopped, c.ID)
	m.hk.mu.Unlock()
	pc, cc := m.snapshot(m.podOf(c), c)
	if pc == nil {
		pc = &Pod{ID: c.PodID}
	}
	if err := m.hk.h.RemoveContainer(ctx, pc, cc); err != nil {
		m.log.Warn("NRI RemoveContainer", "container", c.ID, "err", err)
	}
}

// Spec reads a created container's OCI spec from its bundle.
func (m *Manager) Spec(c *Container) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(c.Bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("spec of %s: %w", c.ID, err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("spec of %s: %w", c.ID, err)
	}
	return &s, nil
}

// UpdateResources changes a created or running container's cgroup limits
// to r (what the hooks make of it), through the OCI runtime, and records
// them in its spec.
func (m *Manager) UpdateResources(ctx context.Context, id string, r *specs.LinuxResources) error {
	c, err := m.findContainer(id)
	if err != nil {
		return err
	}
	if m.hk.h != nil {
		pc, cc := m.snapshot(m.podOf(c), c)
		if r, err = m.hk.h.UpdateContainer(ctx, pc, cc, r); err != nil {
			return fmt.Errorf("NRI UpdateContainer: %w", err)
		}
	}
	if err := m.ApplyResources(ctx, c.ID, r); err != nil {
		return err
	}
	if m.hk.h != nil {
		pc, cc := m.snapshot(m.podOf(c), c)
		if err := m.hk.h.PostUpdateContainer(ctx, pc, cc); err != nil {
			m.log.Warn("NRI PostUpdateContainer", "container", c.ID, "err", err)
		}
	}
	return nil
}

// ApplyResources sets a created or running container's cgroup limits to r
// with `<runtime> update` and records them in the bundle's spec, without
// the hooks (the updates plugins ask for themselves).
func (m *Manager) ApplyResources(ctx context.Context, id string, r *specs.LinuxResources) error {
	c, err := m.findContainer(id)
	if err != nil {
		return err
	}
	st := m.currentState(c)
	if st != Running && st != Created {
		return fmt.Errorf("container %s is %s: %w", c.ID, st, errdefs.ErrFailedPrecondition)
	}
	if r == nil {
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	bin, args := m.runtimeArgs(c.Handler)
	cmd := exec.CommandContext(ctx, bin, append(args, "update", "--resources", "-", c.ID)...)
	cmd.Stdin = bytes.NewReader(b)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s update %s: %w: %s", bin, c.ID, err, strings.TrimSpace(string(out)))
	}
	spec, err := m.Spec(c)
	if err != nil {
		return err
	}
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	spec.Linux.Resources = mergeResources(spec.Linux.Resources, r)
	if b, err = json.Marshal(spec); err != nil {
		return err
	}
	// Readers (Spec) never see half a file.
	tmp := filepath.Join(c.Bundle, "config.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(c.Bundle, "config.json"))
}

// mergeResources lays the CPU, memory, pids, hugepage and unified limits
// set in r over old, as the runtime's update does; devices stay.
func mergeResources(old, r *specs.LinuxResources) *specs.LinuxResources {
	if old == nil {
		old = &specs.LinuxResources{}
	}
	out := *old
	if r.CPU != nil {
		cpu := specs.LinuxCPU{}
		if old.CPU != nil {
			cpu = *old.CPU
		}
		n := r.CPU
		if n.Shares != nil {
			cpu.Shares = n.Shares
		}
		if n.Quota != nil {
			cpu.Quota = n.Quota
		}
		if n.Period != nil {
			cpu.Period = n.Period
		}
		if n.RealtimeRuntime != nil {
			cpu.RealtimeRuntime = n.RealtimeRuntime
		}
		if n.RealtimePeriod != nil {
			cpu.RealtimePeriod = n.RealtimePeriod
		}
		if n.Cpus != "" {
			cpu.Cpus = n.Cpus
		}
		if n.Mems != "" {
			cpu.Mems = n.Mems
		}
		out.CPU = &cpu
	}
	if r.Memory != nil {
		mem := specs.LinuxMemory{}
		if old.Memory != nil {
			mem = *old.Memory
		}
		n := r.Memory
		if n.Limit != nil {
			mem.Limit = n.Limit
		}
		if n.Reservation != nil {
			mem.Reservation = n.Reservation
		}
		if n.Swap != nil {
			mem.Swap = n.Swap
		}
		if n.Swappiness != nil {
			mem.Swappiness = n.Swappiness
		}
		out.Memory = &mem
	}
	if r.Pids != nil {
		out.Pids = r.Pids
	}
	if len(r.HugepageLimits) > 0 {
		out.HugepageLimits = r.HugepageLimits
	}
	if len(r.Unified) > 0 {
		out.Unified = r.Unified
	}
	return &out
}

// Evict stops a container at a plugin's request (SIGKILL, as kubelet's
// own evictions end) and says why in its status message.
func (m *Manager) Evict(ctx context.Context, id, reason string) error {
	c, err := m.findContainer(id)
	if err != nil {
		return err
	}
	if err := m.StopContainer(ctx, c.ID, 0); err != nil {
		return fmt.Errorf("evict %s: %w", c.ID, err)
	}
	m.mu.Lock()
	c.Message = "evicted by an NRI plugin: " + reason
	cp := *c
	m.mu.Unlock()
	return m.store.put(containerBucket, c.ID, &cp)
}

// ValidCgroupsPath reports whether path is a cgroups path the configured
// driver takes: slice:prefix:name for systemd, an absolute path for
// cgroupfs.
func (m *Manager) ValidCgroupsPath(path string) bool {
	if m.opt.CgroupDriver == "systemd" {
		parts := strings.Split(path, ":")
		return len(parts) == 3 && strings.HasSuffix(parts[0], ".slice") && parts[2] != ""
	}
	return filepath.IsAbs(path) && filepath.Clean(path) != "/"
}
