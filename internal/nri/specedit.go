package nri

import (
	"fmt"
	"maps"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// specEdit is the set of primitive OCI spec edits NRI's adjustment
// applier (runtime-tools/generate) is written against, done directly on a
// spec tripod generated (which always has Process and Linux).
type specEdit struct{ s *specs.Spec }

func (e specEdit) Spec() *specs.Spec { return e.s }

func (e specEdit) process() *specs.Process {
	if e.s.Process == nil {
		e.s.Process = &specs.Process{}
	}
	return e.s.Process
}

func (e specEdit) linux() *specs.Linux {
	if e.s.Linux == nil {
		e.s.Linux = &specs.Linux{}
	}
	return e.s.Linux
}

func (e specEdit) resources() *specs.LinuxResources {
	l := e.linux()
	if l.Resources == nil {
		l.Resources = &specs.LinuxResources{}
	}
	return l.Resources
}

func (e specEdit) cpu() *specs.LinuxCPU {
	r := e.resources()
	if r.CPU == nil {
		r.CPU = &specs.LinuxCPU{}
	}
	return r.CPU
}

func (e specEdit) memory() *specs.LinuxMemory {
	r := e.resources()
	if r.Memory == nil {
		r.Memory = &specs.LinuxMemory{}
	}
	return r.Memory
}

func (e specEdit) hooks() *specs.Hooks {
	if e.s.Hooks == nil {
		e.s.Hooks = &specs.Hooks{}
	}
	return e.s.Hooks
}

func (e specEdit) AddAnnotation(key, value string) {
	if e.s.Annotations == nil {
		e.s.Annotations = map[string]string{}
	} else {
		// The map may be the container record's own.
		e.s.Annotations = maps.Clone(e.s.Annotations)
	}
	e.s.Annotations[key] = value
}

func (e specEdit) RemoveAnnotation(key string) {
	if _, ok := e.s.Annotations[key]; ok {
		e.s.Annotations = maps.Clone(e.s.Annotations)
		delete(e.s.Annotations, key)
	}
}

func (e specEdit) AddDevice(d specs.LinuxDevice) {
	l := e.linux()
	for i, old := range l.Devices {
		if old.Path == d.Path {
			l.Devices[i] = d
			return
		}
	}
	l.Devices = append(l.Devices, d)
}

func (e specEdit) RemoveDevice(path string) {
	l := e.linux()
	l.Devices = slices.DeleteFunc(l.Devices, func(d specs.LinuxDevice) bool { return d.Path == path })
}

func (e specEdit) AddLinuxResourcesDevice(allow bool, typ string, major, minor *int64, access string) {
	r := e.resources()
	r.Devices = append(r.Devices, specs.LinuxDeviceCgroup{Allow: allow, Type: typ, Major: major, Minor: minor, Access: access})
}

func (e specEdit) AddLinuxResourcesHugepageLimit(pageSize string, limit uint64) {
	r := e.resources()
	for i, h := range r.HugepageLimits {
		if h.Pagesize == pageSize {
			r.HugepageLimits[i].Limit = limit
			return
		}
	}
	r.HugepageLimits = append(r.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: pageSize, Limit: limit})
}

func (e specEdit) AddLinuxResourcesUnified(key, val string) {
	r := e.resources()
	if r.Unified == nil {
		r.Unified = map[string]string{}
	}
	r.Unified[key] = val
}

func (e specEdit) AddOrReplaceLinuxNamespace(ns, path string) error {
	t, err := nsType(ns)
	if err != nil {
		return err
	}
	l := e.linux()
	for i, n := range l.Namespaces {
		if n.Type == t {
			l.Namespaces[i].Path = path
			return nil
		}
	}
	l.Namespaces = append(l.Namespaces, specs.LinuxNamespace{Type: t, Path: path})
	return nil
}

func (e specEdit) RemoveLinuxNamespace(ns string) error {
	t, err := nsType(ns)
	if err != nil {
		return err
	}
	l := e.linux()
	l.Namespaces = slices.DeleteFunc(l.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == t })
	return nil
}

// nsType accepts the short names (net, ipc...) as well as the OCI ones.
func nsType(ns string) (specs.LinuxNamespaceType, error) {
	switch ns {
	case "net", "network":
		return specs.NetworkNamespace, nil
	case "pid":
		return specs.PIDNamespace, nil
	case "mnt", "mount":
		return specs.MountNamespace, nil
	case "ipc":
		return specs.IPCNamespace, nil
	case "uts":
		return specs.UTSNamespace, nil
	case "user":
		return specs.UserNamespace, nil
	case "cgroup":
		return specs.CgroupNamespace, nil
	case "time":
		return specs.TimeNamespace, nil
	}
	return "", fmt.Errorf("unknown namespace type %q", ns)
}

// AddPreStartHook adds a prestart hook: deprecated in OCI, still run by
// runc, and still asked for by plugins.
func (e specEdit) AddPreStartHook(h specs.Hook) {
	hs := e.hooks()
	//lint:ignore SA1019 plugins may still ask for prestart hooks
	hs.Prestart = append(hs.Prestart, h)
}

func (e specEdit) AddPostStartHook(h specs.Hook) {
	hs := e.hooks()
	hs.Poststart = append(hs.Poststart, h)
}
func (e specEdit) AddPostStopHook(h specs.Hook) {
	hs := e.hooks()
	hs.Poststop = append(hs.Poststop, h)
}

func (e specEdit) AddProcessEnv(name, value string) {
	p := e.process()
	p.Env = append(p.Env, name+"="+value)
}

func (e specEdit) ClearProcessEnv() { e.process().Env = nil }

func (e specEdit) AddMount(m specs.Mount) { e.s.Mounts = append(e.s.Mounts, m) }

func (e specEdit) RemoveMount(dest string) {
	e.s.Mounts = slices.DeleteFunc(e.s.Mounts, func(m specs.Mount) bool { return m.Destination == dest })
}

func (e specEdit) ClearMounts() { e.s.Mounts = nil }

func (e specEdit) Mounts() []specs.Mount { return slices.Clone(e.s.Mounts) }

func (e specEdit) AddLinuxSysctl(key, value string) {
	l := e.linux()
	if l.Sysctl == nil {
		l.Sysctl = map[string]string{}
	} else {
		l.Sysctl = maps.Clone(l.Sysctl) // may be the pod record's own
	}
	l.Sysctl[key] = value
}

func (e specEdit) RemoveLinuxSysctl(key string) {
	l := e.linux()
	if _, ok := l.Sysctl[key]; ok {
		l.Sysctl = maps.Clone(l.Sysctl)
		delete(l.Sysctl, key)
	}
}

func (e specEdit) SetProcessArgs(args []string)         { e.process().Args = slices.Clone(args) }
func (e specEdit) SetLinuxCgroupsPath(path string)      { e.linux().CgroupsPath = path }
func (e specEdit) SetLinuxResourcesCPUCpus(cpus string) { e.cpu().Cpus = cpus }
func (e specEdit) SetLinuxResourcesCPUMems(mems string) { e.cpu().Mems = mems }
func (e specEdit) SetLinuxResourcesCPUPeriod(v uint64)  { e.cpu().Period = &v }
func (e specEdit) SetLinuxResourcesCPUQuota(v int64)    { e.cpu().Quota = &v }
func (e specEdit) SetLinuxResourcesCPUShares(v uint64)  { e.cpu().Shares = &v }
func (e specEdit) SetLinuxResourcesCPURealtimePeriod(v uint64) {
	e.cpu().RealtimePeriod = &v
}
func (e specEdit) SetLinuxResourcesCPURealtimeRuntime(v int64) {
	e.cpu().RealtimeRuntime = &v
}
func (e specEdit) SetLinuxResourcesMemoryLimit(v int64) { e.memory().Limit = &v }
func (e specEdit) SetLinuxResourcesMemorySwap(v int64)  { e.memory().Swap = &v }
func (e specEdit) SetProcessOOMScoreAdj(v int)          { e.process().OOMScoreAdj = &v }

func (e specEdit) SetLinuxRootPropagation(rp string) error {
	switch rp {
	case "", "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable":
		e.linux().RootfsPropagation = rp
		return nil
	}
	return fmt.Errorf("rootfs propagation %q is not one of [r]private, [r]slave, [r]shared, [r]unbindable", rp)
}
