package pod

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/monitor"
	"github.com/tripod-dev/tripod/internal/netns"
	"github.com/tripod-dev/tripod/internal/oci"
	"github.com/tripod-dev/tripod/internal/rootfs"
)

// ContainerConfig is what CreateContainer asks for.
type ContainerConfig struct {
	Meta        Meta
	Image       string
	Command     []string
	Args        []string
	WorkingDir  string
	Env         []string
	Mounts      []oci.Mount
	ImageMounts []ImageMount
	Devices     []oci.Device
	Labels      map[string]string
	Annotations map[string]string
	LogPath     string // relative to the pod's log directory
	Resources   oci.Resources
	RunAsUser   *int64
	RunAsGroup  *int64
	RunAsName   string
	Privileged  bool
	ReadOnly    bool
	Security    oci.Security `json:",omitzero"`
	// UserImage is the image as the user named it (the CRI's
	// user_specified_image), for status.
	UserImage string `json:",omitempty"`
	// PIDTarget is a container of the pod whose PID namespace this one
	// joins (NamespaceMode TARGET).
	PIDTarget string `json:",omitempty"`
	// CDIDevices are fully qualified CDI device names (vendor/class=name).
	CDIDevices []string
	// Stdin keeps a stdin pipe open for attach; StdinOnce closes it after
	// the first attach; TTY gives the container a pseudo-terminal.
	Stdin     bool
	StdinOnce bool
	TTY       bool
}

// Container is one container of a pod.
type Container struct {
	ContainerConfig
	ID         string   `json:"id"`
	PodID      string   `json:"podID"`
	ImageID    string   `json:"imageID"`
	ChainIDs   []string `json:"chainIDs"`
	State      State    `json:"state"`
	CreatedAt  int64    `json:"createdAt"`
	StartedAt  int64    `json:"startedAt,omitempty"`
	FinishedAt int64    `json:"finishedAt,omitempty"`
	ExitCode   int32    `json:"exitCode"`
	Reason     string   `json:"reason,omitempty"`
	Message    string   `json:"message,omitempty"`
	Bundle     string   `json:"bundle"`
	RWDir      string   `json:"rwDir"`
	FullLog    string   `json:"fullLog,omitempty"`
	StopSignal string   `json:"stopSignal,omitempty"`
	Handler    string   `json:"handler"`
	Pid        int      `json:"pid,omitempty"`
	// User is the identity of the first process (uid, gid, groups).
	User *specs.User `json:"user,omitempty"`
	// ImageVolumes are the image mounts as made (their layers are in use).
	ImageVolumes []ImageVolume `json:"imageVolumes,omitempty"`
	// Restore is, until StartContainer restores it, the directory in
	// the bundle with the CRIU images of the checkpoint this container
	// is created from.
	Restore string `json:"restore,omitempty"`
	// starting is set while StartContainer runs the runtime's start.
	starting bool
}

func (m *Manager) runtimeArgs(handler string) (string, []string) {
	h := m.opt.Handlers[handler]
	args := []string{"--root", filepath.Join(m.opt.State, "runtime", handler)}
	if m.opt.CgroupDriver == "systemd" {
		args = append(args, "--systemd-cgroup")
	}
	return h.Path, args
}

// runtime runs the container's OCI runtime with a command.
func (m *Manager) runtime(ctx context.Context, c *Container, cmd ...string) error {
	bin, args := m.runtimeArgs(c.Handler)
	out, err := exec.CommandContext(ctx, bin, append(args, cmd...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s %s: %w: %s", bin, cmd[0], c.ID, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (m *Manager) monitor() monitor.Client {
	return monitor.Client{Path: filepath.Join(m.opt.State, monitor.Socket)}
}

func (m *Manager) cgroupsPath(p *Pod, id string) string {
	if m.opt.CgroupDriver == "systemd" {
		parent := p.CgroupParent
		if parent == "" {
			parent = m.opt.CgroupParent
		}
		if parent == "" || !strings.HasSuffix(parent, ".slice") {
			parent = "system.slice"
		}
		return parent + ":tripod:" + id
	}
	parent := p.CgroupParent
	if parent == "" {
		parent = m.opt.CgroupParent
	}
	if parent == "" {
		parent = "/tripod"
	}
	return filepath.Join(parent, id)
}

// CreateContainer creates a container in a ready pod. On failure or when
// ctx ends every step is undone and the name released.
func (m *Manager) CreateContainer(ctx context.Context, podID string, cfg ContainerConfig) (_ *Container, err error) {
	p, err := m.findPod(podID)
	if err != nil {
		return nil, err
	}
	switch {
	case cfg.Meta.Name == "":
		return nil, fmt.Errorf("config.metadata.name: required: %w", errdefs.ErrInvalidArgument)
	case cfg.Image == "":
		return nil, fmt.Errorf("config.image: required: %w", errdefs.ErrInvalidArgument)
	}
	if err := m.ValidateResources("config.linux.resources", cfg.Resources); err != nil {
		return nil, err
	}
	m.mu.Lock()
	ready := p.State == Ready
	m.mu.Unlock()
	if !ready {
		return nil, fmt.Errorf("pod %s is not ready: %w", p.ID, errdefs.ErrFailedPrecondition)
	}
	// A checkpoint archive as the image: a restore (see restore.go). It
	// is read whole and checked before anything is made, and its
	// process and mounts are checked as a request's would be.
	var ckpt *checkpointArchive
	lookup := cfg.Image
	if isArchiveRef(cfg.Image) {
		if err := criuCheck(ctx, "config.image: "+cfg.Image+" is a checkpoint archive; restoring it"); err != nil {
			return nil, err
		}
		if ckpt, err = openCheckpoint(cfg.Image); err != nil {
			return nil, err
		}
		ckpt.apply(&cfg)
		lookup = ckpt.imageRef()
	}
	if err := m.checkContainerSecurity(ctx, p, &cfg); err != nil {
		return nil, err
	}
	if m.images == nil {
		return nil, fmt.Errorf("no image service: %w", errdefs.ErrUnavailable)
	}
	img, err := m.images.Lookup(lookup)
	if err != nil {
		if ckpt != nil {
			return nil, fmt.Errorf("config.image: checkpoint archive %s was taken of a container of image %s (%s), which is not in the image store (pull it first): %w",
				ckpt.path, ckpt.config.RootfsImageName, ckpt.config.RootfsImageRef, err)
		}
		return nil, fmt.Errorf("config.image %q: %w", cfg.Image, err)
	}
	raw, err := m.images.Config(img)
	if err != nil {
		return nil, fmt.Errorf("image %s config: %w", img.ID, err)
	}
	var icfg v1.ConfigFile
	if err := json.Unmarshal(raw, &icfg); err != nil {
		return nil, fmt.Errorf("image %s config: %w", img.ID, err)
	}
	layers, err := m.images.LayerDirs(img)
	if err != nil {
		return nil, err
	}
	c := &Container{ContainerConfig: cfg, ID: newID(), PodID: p.ID, ImageID: img.ID, State: Creating,
		CreatedAt: time.Now().UnixNano(), Handler: p.Handler, StopSignal: icfg.Config.StopSignal}
	for _, l := range img.Layers {
		c.ChainIDs = append(c.ChainIDs, l.ChainID)
	}
	c.Bundle = filepath.Join(m.opt.State, "containers", c.ID)
	c.RWDir = filepath.Join(m.opt.Root, "containers", c.ID)
	var volDirs [][]string
	if c.ImageVolumes, volDirs, err = m.resolveImageVolumes(c.Bundle, cfg.ImageMounts); err != nil {
		return nil, err
	}
	if p.LogDir != "" && cfg.LogPath != "" {
		c.FullLog = filepath.Join(p.LogDir, cfg.LogPath)
	}
	key := containerKey(p.ID, cfg.Meta)
	if err := m.reserve(key, c.ID, "container"); err != nil {
		return nil, err
	}
	var u undo
	u.add(func(context.Context) error { m.release(key, c.ID); return nil })
	defer func() {
		if err != nil {
			u.run(m.log, "CreateContainer "+c.ID)
		}
	}()
	if err := m.store.put(containerBucket, c.ID, c); err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.containers[c.ID] = c // LayersInUse must see it before the mount
	m.mu.Unlock()
	u.add(func(context.Context) error {
		m.mu.Lock()
		delete(m.containers, c.ID)
		if c.State != Creating {
			m.publishLocked(ContainerDeleted, c.ID, c.PodID)
		}
		m.mu.Unlock()
		return m.store.delete(containerBucket, c.ID)
	})
	u.add(func(context.Context) error {
		if err := rootfs.Cleanup(c.RWDir); err != nil {
			return err // never remove recursively through a mount
		}
		return errors.Join(os.RemoveAll(c.Bundle), os.RemoveAll(c.RWDir))
	})
	t := time.Now()
	root := filepath.Join(c.Bundle, "rootfs")
	if err := m.mountRootfs(p, layers, c.RWDir, root); err != nil {
		return nil, err
	}
	u.add(func(context.Context) error { return rootfs.Unmount(root) })
	if err := m.mountImageVolumes(c, volDirs); err != nil {
		return nil, err
	}
	u.add(func(context.Context) error { return m.unmountImageVolumes(c) })
	if ckpt != nil {
		c.Restore = filepath.Join(c.Bundle, restoreDir)
		if err := ckpt.unpack(ctx, c.Restore, root); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}
	m.phase("rootfs", t)
	m.crashpoint("ctr-rootfs")

	t = time.Now()
	spec, err := m.spec(p, c, &icfg.Config, root)
	if err != nil {
		return nil, fmt.Errorf("config: %w", errdefs.Wrap(errdefs.ErrInvalidArgument, err))
	}
	if err := m.injectCDI(spec, c); err != nil {
		return nil, err
	}
	unblock := m.blockSync()
	defer unblock()
	if err := m.hookCreateContainer(ctx, p, c, spec, &u); err != nil {
		return nil, err
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(c.Bundle, "config.json"), b, 0o600); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := m.ensureMonitor(ctx); err != nil {
		return nil, err
	}
	bin, args := m.runtimeArgs(c.Handler)
	u.add(func(ctx context.Context) error {
		m.monitor().Call(ctx, monitor.Request{Op: "forget", ID: c.ID})
		m.runtime(ctx, c, "delete", "--force", c.ID)
		return nil
	})
	// A restored container has no runtime create: StartContainer's
	// restore makes and starts it in one.
	var rep monitor.Reply
	if ckpt == nil {
		rep, err = m.monitor().Call(ctx, monitor.Request{Op: "create", ID: c.ID, Bundle: c.Bundle, Runtime: bin, RuntimeArgs: args,
			LogPath: c.FullLog, OOMFile: m.oomFile(spec.Linux.CgroupsPath), TTY: c.TTY, Stdin: c.Stdin, StdinOnce: c.StdinOnce})
		if err != nil {
			return nil, fmt.Errorf("create container: %w", err)
		}
	}
	m.phase("oci_create", t)
	m.crashpoint("ctr-create")
	m.mu.Lock()
	c.Pid = rep.Pid
	c.User = &spec.Process.User
	c.State = Created
	m.publishLocked(ContainerCreated, c.ID, c.PodID)
	cp := *c
	m.mu.Unlock()
	if err := m.store.put(containerBucket, c.ID, &cp); err != nil {
		return nil, err
	}
	m.hookPostCreate(ctx, p, c)
	return &cp, nil
}

func (m *Manager) spec(p *Pod, c *Container, img *v1.Config, root string) (*specs.Spec, error) {
	ns := map[specs.LinuxNamespaceType]string{specs.PIDNamespace: ""}
	if p.HostPID {
		delete(ns, specs.PIDNamespace)
	}
	for kind, t := range map[netns.Kind]specs.LinuxNamespaceType{netns.Net: specs.NetworkNamespace, netns.IPC: specs.IPCNamespace,
		netns.UTS: specs.UTSNamespace, netns.PID: specs.PIDNamespace} {
		if path, ok := p.Namespaces[kind]; ok {
			ns[t] = path
		}
	}
	files := map[string]string{"/etc/hosts": filepath.Join(p.Dir, "hosts"), "/etc/resolv.conf": filepath.Join(p.Dir, "resolv.conf"),
		"/etc/hostname": filepath.Join(p.Dir, "hostname")}
	in := oci.Input{
		Image: img, Rootfs: root, Command: c.Command, Args: c.Args, Env: c.Env, WorkingDir: c.WorkingDir,
		User: c.RunAsUser, Username: c.RunAsName, Group: c.RunAsGroup, Mounts: append(slices.Clone(c.Mounts), c.imageVolumeMounts()...), Devices: c.Devices,
		Resources: m.withoutUnusableHugepages(c.Resources), Privileged: c.Privileged, ReadOnly: c.ReadOnly, Annotations: c.Annotations,
		Sysctls: p.Sysctls, CgroupsPath: m.cgroupsPath(p, c.ID), Namespaces: ns, Files: files, ShmDir: p.Shm,
	}
	if _, ok := ns[specs.UTSNamespace]; ok {
		in.Hostname = p.hostname()
	}
	if p.HostIPC {
		in.ShmDir = "/dev/shm"
	}
	if unifiedCgroups() && !c.Privileged {
		ns[specs.CgroupNamespace] = ""
	}
	if err := m.securityInput(p, c, &in); err != nil {
		return nil, err
	}
	spec, err := oci.Generate(in)
	if err != nil {
		return nil, err
	}
	if c.TTY {
		withTerminal(spec)
	}
	return spec, nil
}

// StartContainer starts a created container.
func (m *Manager) StartContainer(ctx context.Context, id string) error {
	c, err := m.findContainer(id)
	if err != nil {
		return err
	}
	m.mu.Lock()
	st, starting := c.State, c.starting
	if st == Created && !starting {
		c.starting = true
	}
	m.mu.Unlock()
	if st != Created || starting {
		return fmt.Errorf("container %s is %s, not created: %w", c.ID, st, errdefs.ErrFailedPrecondition)
	}
	if err := m.hookStart(ctx, c); err != nil {
		m.mu.Lock()
		c.starting = false
		m.mu.Unlock()
		return err
	}
	t := time.Now()
	if c.Restore != "" {
		err = m.restore(ctx, c)
	} else {
		err = m.runtime(ctx, c, "start", c.ID)
	}
	m.mu.Lock()
	c.starting = false
	if err != nil {
		m.mu.Unlock()
		return err
	}
	m.phase("start", t)
	// The process runs from inside `runtime start`: a short one may have
	// ended before it returned, its exit recorded (and the start reported
	// with it: see setExit).
	c.StartedAt = t.UnixNano()
	running := c.State == Created
	if running {
		c.State = Running
		m.publishLocked(ContainerStarted, c.ID, c.PodID)
	}
	cp := *c
	m.mu.Unlock()
	if running {
		m.watchExit(c)
	}
	if err := m.store.put(containerBucket, c.ID, &cp); err != nil {
		return err
	}
	m.hookPostStart(ctx, c)
	return nil
}

func (m *Manager) findContainer(id string) (*Container, error) {
	if id == "" {
		return nil, fmt.Errorf("container_id: required: %w", errdefs.ErrInvalidArgument)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, ok := m.containers[id]; ok && c.State != Creating {
		return c, nil
	}
	var found *Container
	for cid, c := range m.containers {
		if strings.HasPrefix(cid, id) && c.State != Creating {
			if found != nil {
				return nil, fmt.Errorf("container ID prefix %q is ambiguous: %w", id, errdefs.ErrInvalidArgument)
			}
			found = c
		}
	}
	if found == nil {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return found, nil
}

// refresh records the exit of a created or running container whose exit
// record the monitor has written.
func (m *Manager) refresh(c *Container) {
	m.mu.Lock()
	st := c.State
	m.mu.Unlock()
	if st != Running && st != Created {
		return
	}
	e, ok := monitor.ReadExit(c.Bundle)
	if !ok {
		return
	}
	m.setExit(c, e)
}

// currentState is c's state once any exit the monitor recorded is taken
// in (see refresh).
func (m *Manager) currentState(c *Container) State {
	m.refresh(c)
	m.mu.Lock()
	defer m.mu.Unlock()
	return c.State
}

func (m *Manager) setExit(c *Container, e monitor.Exit) {
	m.mu.Lock()
	if c.State == Exited {
		m.mu.Unlock()
		return
	}
	if c.State == Created && c.starting {
		// It exited before StartContainer could record the start.
		c.StartedAt = time.Now().UnixNano()
		m.publishLocked(ContainerStarted, c.ID, c.PodID)
	}
	c.State = Exited
	c.FinishedAt = e.FinishedAt
	c.ExitCode = e.Code
	if e.Unknown {
		c.Message = "exit status unknown: tripod-monitor was restarted while the container ran"
	}
	switch {
	case e.OOMKilled:
		c.Reason = "OOMKilled"
	case e.Code == 0:
		c.Reason = "Completed"
	default:
		c.Reason = "Error"
	}
	if c.StartedAt == 0 {
		c.StartedAt = e.FinishedAt
	}
	m.publishLocked(ContainerStopped, c.ID, c.PodID)
	stopped := m.stopping(c)
	cp := *c
	m.mu.Unlock()
	if err := m.store.put(containerBucket, c.ID, &cp); err != nil {
		m.log.Warn("recording exit", "container", c.ID, "err", err)
	}
	m.exited(c, stopped)
}

// Container returns a container by ID or unique prefix.
func (m *Manager) Container(id string) (*Container, error) {
	c, err := m.findContainer(id)
	if err != nil {
		return nil, err
	}
	m.refresh(c)
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := *c
	return &cp, nil
}

// ContainerFilter selects containers; zero fields match all.
type ContainerFilter struct {
	ID, PodID string
	State     State
	Labels    map[string]string
}

// Containers lists containers matching f.
func (m *Manager) Containers(f ContainerFilter) []*Container {
	m.mu.Lock()
	var all []*Container
	for _, c := range m.containers {
		if c.State != Creating {
			all = append(all, c)
		}
	}
	m.mu.Unlock()
	var out []*Container
	for _, c := range all {
		m.refresh(c)
		m.mu.Lock()
		cp := *c
		m.mu.Unlock()
		if f.ID != "" && !strings.HasPrefix(cp.ID, f.ID) {
			continue
		}
		if f.PodID != "" && !strings.HasPrefix(cp.PodID, f.PodID) {
			continue
		}
		if f.State != "" && cp.State != f.State {
			continue
		}
		if !matchLabels(cp.Labels, f.Labels) {
			continue
		}
		out = append(out, &cp)
	}
	slices.SortFunc(out, func(a, b *Container) int { return int(b.CreatedAt - a.CreatedAt) })
	return out
}

// StopContainer sends the image's stop signal (SIGTERM by default), waits
// up to timeout seconds, then kills. Stopping an unknown or stopped
// container succeeds.
func (m *Manager) StopContainer(ctx context.Context, id string, timeout int64) error {
	c, err := m.findContainer(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	st := m.currentState(c)
	if st != Running && st != Created {
		return nil
	}
	m.mu.Lock()
	unrestored := c.Restore != ""
	m.mu.Unlock()
	if unrestored {
		// Created from a checkpoint and never started: nothing runs.
		m.setExit(c, monitor.Exit{FinishedAt: time.Now().UnixNano()})
		return nil
	}
	if st == Running && timeout > 0 {
		sig := c.StopSignal
		if sig == "" {
			sig = "SIGTERM"
		}
		waitExeced(ctx, c.Pid)
		caught := catches(c.Pid, sig)
		if err := m.signal(ctx, c, sig, false); err == nil {
			wctx, cancel := context.WithTimeout(ctx, time.Duration(timeout)*time.Second)
			if !caught {
				go m.resendWhenCaught(wctx, c, sig)
			}
			err := m.wait(wctx, c)
			cancel()
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
	if err := m.signal(ctx, c, "SIGKILL", true); err != nil {
		// Already gone: the exit is on its way.
		m.log.Debug("kill", "container", c.ID, "err", err)
	}
	return m.wait(ctx, c)
}

// catches reports whether process pid has a handler for sig. The kernel
// drops a signal without one sent to the init of a PID namespace, so a
// stop signal that arrives before a just-started init has set up its
// handler is lost.
func catches(pid int, sig string) bool {
	num := signalNum(sig)
	if pid <= 0 || num <= 0 {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return true
	}
	if stillRuntimeInit(pid) {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err != nil || mask&(1<<(num-1)) != 0
		}
	}
	return true
}

// stillRuntimeInit reports whether pid is still the OCI runtime's own init
// (runc names it "runc:[2:INIT]"): right after `runtime start` returns it
// may not have exec'd the container's process yet. A signal must not reach
// it then: runc's Go init dies of SIGTERM with exit status 2 instead of the
// container handling it.
func stillRuntimeInit(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.HasPrefix(string(comm), "runc:")
}

// waitExeced waits, briefly, until pid is no longer the runtime's init.
func waitExeced(ctx context.Context, pid int) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for pid > 0 && stillRuntimeInit(pid) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// resendWhenCaught sends sig once more as soon as the container's init
// catches it (it was starting when the first one was dropped), until ctx
// ends. Only the monitor signals, through its pidfd: never a reused PID.
func (m *Manager) resendWhenCaught(ctx context.Context, c *Container, sig string) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if catches(c.Pid, sig) {
				m.signal(ctx, c, sig, false)
				return
			}
		}
	}
}

func signalNum(sig string) int {
	if n, err := strconv.Atoi(sig); err == nil {
		return n
	}
	name := strings.ToUpper(sig)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	return int(unix.SignalNum(name))
}

// signal sends sig to the container's init through the monitor (no OCI
// runtime exec: it is on every stop's path); all, for a container without
// a PID namespace of its own, goes through the runtime to reach every
// process.
func (m *Manager) signal(ctx context.Context, c *Container, sig string, all bool) error {
	m.mu.Lock()
	p := m.pods[c.PodID]
	ownPID := p != nil && !p.HostPID && !p.SharePID
	m.mu.Unlock()
	num := signalNum(sig)
	if num > 0 && (ownPID || !all) {
		if _, err := m.monitor().Call(ctx, monitor.Request{Op: "kill", ID: c.ID, Signal: num}); err == nil {
			return nil
		}
	}
	args := []string{"kill"}
	if all {
		args = append(args, "--all")
	}
	return m.runtime(ctx, c, append(args, c.ID, sig)...)
}

// wait blocks until the monitor reports c's exit, then records it.
func (m *Manager) wait(ctx context.Context, c *Container) error {
	rep, err := m.monitor().Call(ctx, monitor.Request{Op: "wait", ID: c.ID})
	if err != nil && ctx.Err() == nil {
		// The monitor died: a new one adopts the container (or tells
		// how it ended).
		if _, uerr := m.monitorUp(ctx); uerr == nil {
			rep, err = m.monitor().Call(ctx, monitor.Request{Op: "wait", ID: c.ID})
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// No monitor knows it: the record on disk or the runtime's view
		// is all there is.
		if e, ok := monitor.ReadExit(c.Bundle); ok {
			m.setExit(c, e)
			return nil
		}
		if !m.alive(ctx, c) {
			m.setExit(c, monitor.Exit{Code: 255, Unknown: true, FinishedAt: time.Now().UnixNano()})
			return nil
		}
		return fmt.Errorf("wait for container %s: %w", c.ID, err)
	}
	m.setExit(c, *rep.Exit)
	return nil
}

// alive asks the OCI runtime whether the container still runs.
func (m *Manager) alive(ctx context.Context, c *Container) bool {
	bin, args := m.runtimeArgs(c.Handler)
	out, err := exec.CommandContext(ctx, bin, append(args, "state", c.ID)...).Output()
	if err != nil {
		return false
	}
	var st struct{ Status string }
	return json.Unmarshal(out, &st) == nil && (st.Status == "running" || st.Status == "created" || st.Status == "paused")
}

// RemoveContainer kills (if needed) and removes a container and its
// writable layer. An unknown container is not an error.
func (m *Manager) RemoveContainer(ctx context.Context, id string) error {
	c, err := m.findContainer(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := m.StopContainer(ctx, c.ID, 0); err != nil {
		return err
	}
	if err := m.destroy(ctx, c); err != nil {
		return err
	}
	m.hookRemoveContainer(ctx, c)
	return nil
}

// destroy releases everything a container holds; every step is
// idempotent so it also finishes a container a crash left half made.
func (m *Manager) destroy(ctx context.Context, c *Container) error {
	// A plain delete first: runc's --force sleeps 100 ms before its first
	// look even at a stopped container; a stopped container's leftover
	// processes (no PID namespace of its own) are killed either way.
	if err := m.runtime(ctx, c, "delete", c.ID); err != nil {
		if err := m.runtime(ctx, c, "delete", "--force", c.ID); err != nil && m.alive(ctx, c) {
			return err
		}
	}
	m.monitor().Call(ctx, monitor.Request{Op: "forget", ID: c.ID})
	if err := rootfs.Unmount(filepath.Join(c.Bundle, "rootfs")); err != nil {
		return err
	}
	if err := rootfs.Cleanup(c.RWDir); err != nil {
		return err
	}
	if err := m.unmountImageVolumes(c); err != nil {
		return err
	}
	if err := errors.Join(os.RemoveAll(c.Bundle), os.RemoveAll(c.RWDir)); err != nil {
		return fmt.Errorf("remove container %s: %w", c.ID, err)
	}
	if err := m.store.delete(containerBucket, c.ID); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.containers, c.ID)
	if c.State != Creating {
		m.publishLocked(ContainerDeleted, c.ID, c.PodID)
	}
	m.mu.Unlock()
	m.forgetStats(c.ID)
	m.release(containerKey(c.PodID, c.Meta), c.ID)
	return nil
}

// ReopenLog makes the monitor reopen a running container's log file
// (after kubelet rotated it).
func (m *Manager) ReopenLog(ctx context.Context, id string) error {
	c, err := m.findContainer(id)
	if err != nil {
		return err
	}
	st := m.currentState(c)
	if st != Running {
		return fmt.Errorf("container %s is not running: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	if _, err := m.monitor().Call(ctx, monitor.Request{Op: "reopen", ID: c.ID}); err != nil {
		return fmt.Errorf("reopen log of %s: %w", c.ID, err)
	}
	return nil
}
