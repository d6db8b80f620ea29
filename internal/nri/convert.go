package nri

import (
	"maps"
	"slices"

	"github.com/containerd/nri/pkg/api"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tripod-dev/tripod/internal/netns"
	"github.com/tripod-dev/tripod/internal/pod"
)

// podSandbox describes a pod to plugins.
func podSandbox(p *pod.Pod) *api.PodSandbox {
	out := &api.PodSandbox{
		Id: p.ID, Name: p.Meta.Name, Uid: p.Meta.UID, Namespace: p.Meta.Namespace,
		Labels: maps.Clone(p.Labels), Annotations: maps.Clone(p.Annotations), RuntimeHandler: p.Handler,
		Pid:   uint32(p.InitPID),
		Linux: &api.LinuxPodSandbox{CgroupParent: p.CgroupParent},
	}
	if p.Net != nil {
		out.Ips = slices.Clone(p.Net.IPs)
	}
	for _, k := range []struct {
		kind netns.Kind
		typ  string
	}{{netns.Net, "network"}, {netns.IPC, "ipc"}, {netns.UTS, "uts"}, {netns.PID, "pid"}} {
		if path, ok := p.Namespaces[k.kind]; ok {
			out.Linux.Namespaces = append(out.Linux.Namespaces, &api.LinuxNamespace{Type: k.typ, Path: path})
		}
	}
	return out
}

func containerState(s pod.State) api.ContainerState {
	switch s {
	case pod.Creating, pod.Created:
		return api.ContainerState_CONTAINER_CREATED
	case pod.Running:
		return api.ContainerState_CONTAINER_RUNNING
	case pod.Exited:
		return api.ContainerState_CONTAINER_STOPPED
	}
	return api.ContainerState_CONTAINER_UNKNOWN
}

// container describes a container to plugins; spec, when known, gives
// what it runs with (after CDI and earlier plugins' adjustments).
func container(c *pod.Container, spec *specs.Spec) *api.Container {
	out := &api.Container{
		Id: c.ID, PodSandboxId: c.PodID, Name: c.Meta.Name, State: containerState(c.State),
		Labels: maps.Clone(c.Labels), Annotations: maps.Clone(c.Annotations),
		Pid: uint32(c.Pid), CreatedAt: c.CreatedAt, StartedAt: c.StartedAt, FinishedAt: c.FinishedAt,
		ExitCode: c.ExitCode, StatusReason: c.Reason, StatusMessage: c.Message,
		Image: &api.Image{Name: c.Image},
	}
	for _, d := range c.CDIDevices {
		out.CDIDevices = append(out.CDIDevices, &api.CDIDevice{Name: d})
	}
	if spec == nil {
		return out
	}
	out.Annotations = maps.Clone(spec.Annotations)
	out.Mounts = api.FromOCIMounts(spec.Mounts)
	out.Hooks = api.FromOCIHooks(spec.Hooks)
	if p := spec.Process; p != nil {
		out.Args = slices.Clone(p.Args)
		out.Env = slices.Clone(p.Env)
		out.User = &api.User{Uid: p.User.UID, Gid: p.User.GID, AdditionalGids: slices.Clone(p.User.AdditionalGids)}
		for _, r := range p.Rlimits {
			out.Rlimits = append(out.Rlimits, &api.POSIXRlimit{Type: r.Type, Hard: r.Hard, Soft: r.Soft})
		}
	}
	if l := spec.Linux; l != nil {
		out.Linux = &api.LinuxContainer{
			Namespaces:  api.FromOCILinuxNamespaces(l.Namespaces),
			Devices:     api.FromOCILinuxDevices(l.Devices),
			Resources:   api.FromOCILinuxResources(l.Resources, nil),
			CgroupsPath: l.CgroupsPath,
			Sysctl:      maps.Clone(l.Sysctl),
		}
		if p := spec.Process; p != nil {
			if p.OOMScoreAdj != nil {
				out.Linux.OomScoreAdj = api.Int(p.OOMScoreAdj)
			}
			out.Linux.IoPriority = api.FromOCILinuxIOPriority(p.IOPriority)
			out.Linux.Scheduler = api.FromOCILinuxScheduler(p.Scheduler)
		}
		if l.Seccomp != nil {
			out.Linux.SeccompPolicy = api.FromOCILinuxSeccomp(l.Seccomp)
		}
	}
	return out
}
