// Package oci generates OCI runtime specs for containers from the image's
// config and the container's own settings.
package oci

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Mount is a bind mount from the host.
type Mount struct {
	HostPath, ContainerPath string
	Readonly                bool
	// Propagation is "private", "rslave" or "rshared".
	Propagation string
	// RecursiveReadOnly makes submounts read-only too (needs Readonly and
	// private propagation).
	RecursiveReadOnly bool `json:",omitempty"`
	// UIDMappings and GIDMappings make the mount idmapped; in a pod with a
	// user namespace they default to its mappings.
	UIDMappings []specs.LinuxIDMapping `json:",omitempty"`
	GIDMappings []specs.LinuxIDMapping `json:",omitempty"`
}

// Device is a host device exposed in the container.
type Device struct {
	HostPath, ContainerPath, Permissions string
}

// Resources are the container's cgroup limits.
type Resources struct {
	CPUPeriod, CPUQuota, CPUShares int64
	MemoryLimit                    int64
	CpusetCpus, CpusetMems         string
	OOMScoreAdj                    int64
	// MemorySwap is memory plus swap (0 unset, -1 unlimited).
	MemorySwap int64             `json:",omitempty"`
	Hugepages  []Hugepage        `json:",omitempty"`
	Unified    map[string]string `json:",omitempty"`
}

// Hugepage limits the hugetlb use of one page size ("2MB").
type Hugepage struct {
	PageSize string
	Limit    uint64
}

// Input is everything a spec is made of.
type Input struct {
	Image       *v1.Config
	Rootfs      string
	Command     []string
	Args        []string
	Env         []string // KEY=VALUE, over the image's
	WorkingDir  string
	User        *int64 // run as this uid rather than the image's user
	Username    string // or as this user name
	Group       *int64
	Hostname    string
	Mounts      []Mount
	Devices     []Device
	Resources   Resources
	Privileged  bool
	ReadOnly    bool
	Annotations map[string]string
	Sysctls     map[string]string
	CgroupsPath string
	// Namespaces maps a kind (network, ipc, uts, pid, cgroup) to a path to join;
	// an empty path means a new namespace; a missing kind the host's.
	Namespaces map[specs.LinuxNamespaceType]string
	// Files are bind-mounted read-write at their keys (resolv.conf, hosts,
	// hostname, /dev/shm).
	Files map[string]string
	// ShmDir, if set, is bind-mounted at /dev/shm.
	ShmDir   string
	Security Security
	// IDMap is the mappings of the user namespace the container joins
	// (Namespaces[user]), for its idmapped mounts.
	IDMap *IDMap
}

// Generate builds the spec.
func Generate(in Input) (*specs.Spec, error) {
	img := in.Image
	if img == nil {
		img = &v1.Config{}
	}
	args, err := processArgs(img, in.Command, in.Args)
	if err != nil {
		return nil, err
	}
	cwd := in.WorkingDir
	if cwd == "" {
		cwd = img.WorkingDir
	}
	if cwd == "" {
		cwd = "/"
	}
	env := mergeEnv(img.Env, in.Env)
	user, err := resolveUser(in.Rootfs, img.User, in.User, in.Username, in.Group, in.Security.SupplementalGroups, in.Security.StrictGroups)
	if err != nil {
		return nil, err
	}
	s := &specs.Spec{
		Version:  specs.Version,
		Hostname: in.Hostname,
		Root:     &specs.Root{Path: in.Rootfs, Readonly: in.ReadOnly},
		Process: &specs.Process{
			Args: args, Env: env, Cwd: cwd, User: user,
			OOMScoreAdj: clampOOM(in.Resources.OOMScoreAdj),
		},
		Annotations: in.Annotations,
		Linux: &specs.Linux{
			CgroupsPath: in.CgroupsPath,
			Sysctl:      in.Sysctls,
			Resources:   resources(in),
		},
	}
	if err := applySecurity(s, in); err != nil {
		return nil, err
	}
	for _, kind := range []specs.LinuxNamespaceType{specs.UserNamespace, specs.PIDNamespace, specs.NetworkNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.CgroupNamespace, specs.MountNamespace} {
		path, ok := in.Namespaces[kind]
		if kind == specs.MountNamespace {
			ok = true
		}
		if ok {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: kind, Path: path})
		}
	}
	s.Mounts = baseMounts(in)
	// Mounts made in a bidirectional volume only reach the host if the
	// container's root is itself shared (slave for host-to-container).
	for _, m := range in.Mounts {
		switch {
		case m.Propagation == "rshared":
			s.Linux.RootfsPropagation = "rshared"
		case m.Propagation == "rslave" && s.Linux.RootfsPropagation == "":
			s.Linux.RootfsPropagation = "rslave"
		}
	}
	for _, d := range in.Devices {
		dev, err := device(d)
		if err != nil {
			return nil, err
		}
		s.Linux.Devices = append(s.Linux.Devices, dev)
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{
			Allow: true, Type: dev.Type, Major: &dev.Major, Minor: &dev.Minor, Access: cgroupAccess(d.Permissions)})
	}
	return s, nil
}

func processArgs(img *v1.Config, command, args []string) ([]string, error) {
	var out []string
	switch {
	case len(command) > 0:
		out = append(append(out, command...), args...)
	case len(args) > 0:
		out = append(append(out, img.Entrypoint...), args...)
	default:
		out = append(append(out, img.Entrypoint...), img.Cmd...)
	}
	if len(out) == 0 {
		return nil, errors.New("no command: neither the container nor its image gives one")
	}
	return out, nil
}

func mergeEnv(base, over []string) []string {
	idx := map[string]int{}
	var out []string
	for _, list := range [][]string{base, over} {
		for _, kv := range list {
			k, _, _ := strings.Cut(kv, "=")
			if i, ok := idx[k]; ok {
				out[i] = kv
				continue
			}
			idx[k] = len(out)
			out = append(out, kv)
		}
	}
	if _, ok := idx["PATH"]; !ok {
		out = append(out, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	return out
}

// clampOOM never asks for a lower oom_score_adj than this process has:
// without CAP_SYS_RESOURCE (as on some hosts, even for root) lowering it
// fails, and a container must not fail to start over it.
func clampOOM(want int64) *int {
	v := int(want)
	if b, err := os.ReadFile("/proc/self/oom_score_adj"); err == nil {
		if cur, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v < cur {
			v = cur
		}
	}
	return &v
}

// Linux is r as OCI resources (cgroup limits only, no device rules).
func (r Resources) Linux() *specs.LinuxResources {
	out := resources(Input{Resources: r})
	out.Devices = nil
	return out
}

// ResourcesFrom is the inverse of Linux for the fields Resources has.
func ResourcesFrom(l *specs.LinuxResources) Resources {
	var r Resources
	if l == nil {
		return r
	}
	if c := l.CPU; c != nil {
		r.CpusetCpus, r.CpusetMems = c.Cpus, c.Mems
		if c.Shares != nil {
			r.CPUShares = int64(*c.Shares)
		}
		if c.Quota != nil {
			r.CPUQuota = *c.Quota
		}
		if c.Period != nil {
			r.CPUPeriod = int64(*c.Period)
		}
	}
	if m := l.Memory; m != nil {
		if m.Limit != nil {
			r.MemoryLimit = *m.Limit
		}
		if m.Swap != nil {
			r.MemorySwap = *m.Swap
		}
	}
	for _, h := range l.HugepageLimits {
		r.Hugepages = append(r.Hugepages, Hugepage{PageSize: h.Pagesize, Limit: h.Limit})
	}
	r.Unified = l.Unified
	return r
}

func resources(in Input) *specs.LinuxResources {
	r := &specs.LinuxResources{
		// Deny every device but the standard set runc creates.
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	if in.Privileged {
		r.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
	}
	res := in.Resources
	if res.CPUPeriod > 0 || res.CPUQuota > 0 || res.CPUShares > 0 || res.CpusetCpus != "" || res.CpusetMems != "" {
		r.CPU = &specs.LinuxCPU{Cpus: res.CpusetCpus, Mems: res.CpusetMems}
		if res.CPUShares > 0 {
			v := uint64(res.CPUShares)
			r.CPU.Shares = &v
		}
		if res.CPUQuota > 0 {
			r.CPU.Quota = &res.CPUQuota
		}
		if res.CPUPeriod > 0 {
			v := uint64(res.CPUPeriod)
			r.CPU.Period = &v
		}
	}
	if res.MemoryLimit > 0 {
		r.Memory = &specs.LinuxMemory{Limit: &res.MemoryLimit}
		if res.MemorySwap != 0 {
			r.Memory.Swap = &res.MemorySwap
		}
	}
	for _, h := range res.Hugepages {
		r.HugepageLimits = append(r.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: h.PageSize, Limit: h.Limit})
	}
	r.Unified = res.Unified
	return r
}

func baseMounts(in Input) []specs.Mount {
	ms := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
	}
	sysOpts := []string{"nosuid", "noexec", "nodev", "ro"}
	if in.Privileged {
		sysOpts = sysOpts[:3]
	}
	if _, ok := in.Namespaces[specs.NetworkNamespace]; ok {
		ms = append(ms, specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: sysOpts})
	} else {
		// sysfs cannot be mounted afresh outside a new network namespace.
		ms = append(ms, specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: append([]string{"rbind"}, sysOpts...)})
	}
	cgOpts := []string{"nosuid", "noexec", "nodev", "relatime", "ro"}
	if in.Privileged {
		cgOpts = cgOpts[:4]
	}
	ms = append(ms, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: cgOpts})
	if in.ShmDir != "" {
		ms = append(ms, specs.Mount{Destination: "/dev/shm", Type: "bind", Source: in.ShmDir, Options: []string{"rbind", "nosuid", "noexec", "nodev"}})
	} else {
		ms = append(ms, specs.Mount{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}})
	}
	user := map[string]bool{}
	for _, m := range in.Mounts {
		user[filepath.Clean(m.ContainerPath)] = true
	}
	for _, dst := range sortedKeys(in.Files) {
		if user[dst] {
			continue // the container's own mount wins
		}
		ms = append(ms, specs.Mount{Destination: dst, Type: "bind", Source: in.Files[dst], Options: []string{"rbind", "rprivate", "rw"}})
	}
	for _, m := range in.Mounts {
		opts := []string{"rbind"}
		switch m.Propagation {
		case "rshared":
			opts = append(opts, "rshared")
		case "rslave":
			opts = append(opts, "rslave")
		default:
			opts = append(opts, "rprivate")
		}
		if m.Readonly {
			opts = append(opts, "ro")
			if m.RecursiveReadOnly {
				opts = append(opts, "rro")
			}
		} else {
			opts = append(opts, "rw")
		}
		mt := specs.Mount{Destination: m.ContainerPath, Type: "bind", Source: m.HostPath, Options: opts,
			UIDMappings: m.UIDMappings, GIDMappings: m.GIDMappings}
		if in.IDMap != nil && mt.UIDMappings == nil && mt.GIDMappings == nil {
			mt.UIDMappings, mt.GIDMappings = in.IDMap.UIDs, in.IDMap.GIDs
		}
		ms = append(ms, mt)
	}
	return ms
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	for i := 1; i < len(ks); i++ {
		for j := i; j > 0 && ks[j] < ks[j-1]; j-- {
			ks[j], ks[j-1] = ks[j-1], ks[j]
		}
	}
	return ks
}

func device(d Device) (specs.LinuxDevice, error) {
	var st unix.Stat_t
	if err := unix.Stat(d.HostPath, &st); err != nil {
		return specs.LinuxDevice{}, fmt.Errorf("device %s: %w", d.HostPath, err)
	}
	var typ string
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		typ = "c"
	case unix.S_IFBLK:
		typ = "b"
	default:
		return specs.LinuxDevice{}, fmt.Errorf("device %s: not a device node", d.HostPath)
	}
	mode := os.FileMode(st.Mode & 0o777)
	uid, gid := st.Uid, st.Gid
	dst := d.ContainerPath
	if dst == "" {
		dst = d.HostPath
	}
	return specs.LinuxDevice{Path: dst, Type: typ, Major: int64(unix.Major(st.Rdev)), Minor: int64(unix.Minor(st.Rdev)),
		FileMode: &mode, UID: &uid, GID: &gid}, nil
}

func cgroupAccess(perms string) string {
	if perms == "" {
		return "rwm"
	}
	return perms
}

// bounded keeps the capabilities this process's bounding set has: asking
// runc for one the host withholds (CAP_SYS_RESOURCE on some VMs) fails the
// container.
func bounded(caps []string) []string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return caps
	}
	var bnd uint64
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			if bnd, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				return caps
			}
		}
	}
	bit := map[string]int{}
	for i, c := range allCaps() {
		bit[c] = i
	}
	var out []string
	for _, c := range caps {
		if i, ok := bit[c]; ok && bnd&(1<<i) != 0 {
			out = append(out, c)
		}
	}
	return out
}

// allCaps lists the capabilities in the order of their bit numbers.
func allCaps() []string {
	var out []string
	for _, c := range []string{"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
		"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
		"SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE",
		"SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN",
		"SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"} {
		out = append(out, "CAP_"+c)
	}
	return out
}
