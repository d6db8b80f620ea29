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
	"strings"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/oci"
	"github.com/tripod-dev/tripod/internal/rootfs"
)

// Features are what a runtime handler can do on this kernel.
type Features struct {
	// RecursiveReadOnly: the runtime knows the "rro" mount option and the
	// kernel has mount_setattr(2).
	RecursiveReadOnly bool
	// UserNamespaces: the runtime joins user namespaces and makes
	// idmapped bind mounts, and the kernel's overlayfs takes idmapped
	// layers (Linux 5.19).
	UserNamespaces bool
}

// DefaultHandler is the handler of pods that name none.
func (m *Manager) DefaultHandler() string { return m.opt.DefaultHandler }

// featureCache remembers each handler binary's features, keyed by its
// path and modification time so that an upgraded runtime is probed again.
type featureCache struct {
	mu sync.Mutex
	m  map[string]Features
}

// HandlerFeatures probes (once per runtime binary) what handler can do.
func (m *Manager) HandlerFeatures(ctx context.Context, handler string) Features {
	h, ok := m.opt.Handlers[handler]
	if !ok {
		return Features{}
	}
	bin, err := exec.LookPath(h.Path)
	if err != nil {
		return Features{}
	}
	st, err := os.Stat(bin)
	if err != nil {
		return Features{}
	}
	key := fmt.Sprintf("%s@%d", bin, st.ModTime().UnixNano())
	m.features.mu.Lock()
	f, ok := m.features.m[key]
	m.features.mu.Unlock()
	if ok {
		return f
	}
	f = probeFeatures(ctx, bin)
	if ctx.Err() != nil {
		return f // cut short: probe again next time
	}
	m.features.mu.Lock()
	if m.features.m == nil {
		m.features.m = map[string]Features{}
	}
	m.features.m[key] = f
	m.features.mu.Unlock()
	return f
}

// probeFeatures asks an OCI runtime for its features document (`runc
// features`, also served by crun and youki). A runtime without one
// supports neither feature.
func probeFeatures(ctx context.Context, bin string) Features {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "features").Output()
	if err != nil {
		return Features{}
	}
	var doc struct {
		MountOptions []string `json:"mountOptions"`
		Linux        struct {
			Namespaces      []string `json:"namespaces"`
			MountExtensions struct {
				IDMap struct {
					Enabled *bool `json:"enabled"`
				} `json:"idmap"`
			} `json:"mountExtensions"`
		} `json:"linux"`
	}
	if json.Unmarshal(out, &doc) != nil {
		return Features{}
	}
	setattr := hasMountSetattr()
	idmap := doc.Linux.MountExtensions.IDMap.Enabled
	return Features{
		RecursiveReadOnly: setattr && slices.Contains(doc.MountOptions, "rro"),
		UserNamespaces: setattr && kernelAtLeast(5, 19) && idmap != nil && *idmap &&
			slices.Contains(doc.Linux.Namespaces, "user"),
	}
}

// hasMountSetattr reports whether the kernel has mount_setattr(2): called
// with a bad descriptor it fails with EBADF, or ENOSYS before Linux 5.12.
func hasMountSetattr() bool {
	err := unix.MountSetattr(-1, "", unix.AT_EMPTY_PATH, &unix.MountAttr{})
	return !errors.Is(err, unix.ENOSYS)
}

func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var a, b int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &a, &b)
	return a > major || a == major && b >= minor
}

// checkPodSecurity validates a pod's user namespace and sysctls against
// its namespaces and runtime handler.
func (m *Manager) checkPodSecurity(ctx context.Context, cfg *PodConfig) error {
	if err := checkSysctls(cfg); err != nil {
		return err
	}
	ns := cfg.UserNS
	if ns == nil {
		return nil
	}
	const field = "linux.security_context.namespace_options.userns_options"
	for _, x := range []struct {
		what string
		l    []specs.LinuxIDMapping
	}{{"uids", ns.UIDs}, {"gids", ns.GIDs}} {
		what, l := x.what, x.l
		switch {
		case len(l) != 1:
			return fmt.Errorf("%s.%s: exactly one mapping is supported, %d given: %w", field, what, len(l), errdefs.ErrInvalidArgument)
		case l[0].ContainerID != 0:
			return fmt.Errorf("%s.%s: container ID 0 must be mapped: %w", field, what, errdefs.ErrInvalidArgument)
		case l[0].Size == 0 || uint64(l[0].HostID)+uint64(l[0].Size) > 1<<32-1:
			return fmt.Errorf("%s.%s: mapping of %d IDs from host ID %d is out of range: %w", field, what, l[0].Size, l[0].HostID, errdefs.ErrInvalidArgument)
		case l[0].HostID == 0:
			return fmt.Errorf("%s.%s: mapping the host's root into a pod defeats the user namespace: %w", field, what, errdefs.ErrInvalidArgument)
		}
	}
	if cfg.HostNetwork || cfg.HostPID || cfg.HostIPC {
		return fmt.Errorf("%s: a pod with a user namespace cannot share the node's network, PID or IPC namespace: %w", field, errdefs.ErrInvalidArgument)
	}
	if cfg.Privileged {
		return fmt.Errorf("%s: a privileged pod cannot have a user namespace: %w", field, errdefs.ErrInvalidArgument)
	}
	if err := searchable(filepath.Join(m.opt.State, "containers"), ns.UIDs[0].HostID, ns.GIDs[0].HostID); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	if !m.HandlerFeatures(ctx, cfg.Handler).UserNamespaces {
		return fmt.Errorf("%s: runtime handler %q (%s) cannot run user namespaces with idmapped mounts (runc 1.2 or later and Linux 5.19 are needed): %w",
			field, cfg.Handler, m.opt.Handlers[cfg.Handler].Path, errdefs.ErrInvalidArgument)
	}
	return nil
}

// searchable checks that host IDs uid and gid may walk down to dir: the
// runtime sets a container's rootfs up from inside its user namespace,
// where the container's root has no power over the host's directories.
func searchable(dir string, uid, gid uint32) error {
	for d := dir; ; d = filepath.Dir(d) {
		var st unix.Stat_t
		if err := unix.Stat(d, &st); err != nil {
			return fmt.Errorf("%s: %w", d, err)
		}
		bit := uint32(0o001)
		switch {
		case st.Uid == uid:
			bit = 0o100
		case st.Gid == gid:
			bit = 0o010
		}
		if st.Mode&bit == 0 {
			return fmt.Errorf("%s (mode %o) must be searchable by the pod's root (host uid %d) for its containers to reach their rootfs: %w",
				d, st.Mode&0o7777, uid, errdefs.ErrFailedPrecondition)
		}
		if d == "/" || d == "." {
			return nil
		}
	}
}

// checkSysctls accepts only sysctls of namespaces the pod owns: IPC ones
// without host IPC, network ones without host networking, the UTS domain
// name. The runtime would fail the container on any other; refusing the
// pod names the culprit.
func checkSysctls(cfg *PodConfig) error {
	for k := range cfg.Sysctls {
		name := strings.ReplaceAll(k, "/", ".")
		ipc := strings.HasPrefix(name, "fs.mqueue.") || strings.HasPrefix(name, "kernel.shm") ||
			strings.HasPrefix(name, "kernel.msg") || name == "kernel.sem"
		var why string
		switch {
		case ipc && cfg.HostIPC:
			why = "an IPC sysctl in a pod sharing the node's IPC namespace"
		case ipc:
		case strings.HasPrefix(name, "net."):
			if cfg.HostNetwork {
				why = "a network sysctl in a pod on the node's network"
			}
		case name == "kernel.domainname" || name == "kernel.hostname":
			if cfg.HostNetwork {
				why = "a UTS sysctl in a pod sharing the node's UTS namespace"
			}
		default:
			why = "not a namespaced sysctl"
		}
		if why != "" {
			return fmt.Errorf("linux.sysctls[%s]: %s: %w", k, why, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// checkContainerSecurity validates a container's security settings
// against its pod and runtime handler before anything is made.
func (m *Manager) checkContainerSecurity(ctx context.Context, p *Pod, cfg *ContainerConfig) error {
	const sc = "config.linux.security_context"
	if cfg.Privileged && !p.Privileged {
		return fmt.Errorf("%s.privileged: the pod sandbox is not privileged: %w", sc, errdefs.ErrInvalidArgument)
	}
	for i, mt := range cfg.Mounts {
		if !mt.RecursiveReadOnly {
			continue
		}
		switch {
		case !mt.Readonly:
			return fmt.Errorf("config.mounts[%d].recursive_read_only: needs readonly: %w", i, errdefs.ErrInvalidArgument)
		case mt.Propagation != "" && mt.Propagation != "private":
			return fmt.Errorf("config.mounts[%d].recursive_read_only: needs private propagation: %w", i, errdefs.ErrInvalidArgument)
		case !m.HandlerFeatures(ctx, p.Handler).RecursiveReadOnly:
			return fmt.Errorf("config.mounts[%d].recursive_read_only: runtime handler %q cannot make recursive read-only mounts: %w",
				i, p.Handler, errdefs.ErrInvalidArgument)
		}
	}
	for i, mt := range cfg.Mounts {
		if (mt.UIDMappings != nil || mt.GIDMappings != nil) && !m.HandlerFeatures(ctx, p.Handler).UserNamespaces {
			return fmt.Errorf("config.mounts[%d]: runtime handler %q cannot make idmapped mounts: %w", i, p.Handler, errdefs.ErrInvalidArgument)
		}
	}
	if cfg.PIDTarget != "" {
		if _, err := m.pidTarget(p, cfg.PIDTarget); err != nil {
			return err
		}
	}
	return nil
}

// pidTarget is the PID namespace of another running container of the pod
// (NamespaceMode TARGET, as for ephemeral debug containers).
func (m *Manager) pidTarget(p *Pod, id string) (string, error) {
	const field = "config.linux.security_context.namespace_options.target_id"
	t, err := m.findContainer(id)
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	m.refresh(t)
	m.mu.Lock()
	podID, st, pid := t.PodID, t.State, t.Pid
	m.mu.Unlock()
	switch {
	case podID != p.ID:
		return "", fmt.Errorf("%s: container %s is not in pod %s: %w", field, t.ID, p.ID, errdefs.ErrInvalidArgument)
	case st != Running || pid <= 0:
		return "", fmt.Errorf("%s: container %s is not running: %w", field, t.ID, errdefs.ErrFailedPrecondition)
	}
	return fmt.Sprintf("/proc/%d/ns/pid", pid), nil
}

// securityInput completes a container's spec input with its security
// context and, in a pod with a user namespace, the namespace to join and
// its mappings.
func (m *Manager) securityInput(p *Pod, c *Container, in *oci.Input) error {
	in.Security = c.Security
	if c.PIDTarget != "" {
		path, err := m.pidTarget(p, c.PIDTarget)
		if err != nil {
			return err
		}
		in.Namespaces[specs.PIDNamespace] = path
	}
	if p.UserNS == nil {
		return nil
	}
	in.Namespaces[specs.UserNamespace] = p.Namespaces[userKind]
	in.IDMap = p.UserNS
	// kubelet sends the default masks unless the pod asked for an
	// unmasked /proc, which Kubernetes allows only with a user namespace:
	// there, empty lists mean "none" (the CRI cannot tell empty from unset).
	if len(in.Security.MaskedPaths) == 0 && len(in.Security.ReadonlyPaths) == 0 {
		in.Security.MaskedPaths, in.Security.ReadonlyPaths = []string{}, []string{}
	}
	return nil
}

// mountRootfs mounts a container's root filesystem, idmapped into the
// pod's user namespace if it has one.
func (m *Manager) mountRootfs(p *Pod, layers []string, dir, target string) error {
	if p.UserNS == nil {
		return rootfs.Mount(layers, dir, target)
	}
	return rootfs.MountIDMapped(layers, dir, target, rootfs.IDMapped{UserNS: p.Namespaces[userKind],
		UID: p.UserNS.UIDs[0].HostID, GID: p.UserNS.GIDs[0].HostID})
}
