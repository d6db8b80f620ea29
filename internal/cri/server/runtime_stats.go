package server

import (
	"context"
	"maps"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cgroups"
	"github.com/tripod-dev/tripod/internal/netns"
	"github.com/tripod-dev/tripod/internal/oci"
	"github.com/tripod-dev/tripod/internal/pod"
)

// ContainerStats reports one container's usage; a container that is not
// running has zero CPU and memory usage.
func (s *RuntimeServer) ContainerStats(ctx context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	if req.ContainerId == "" {
		return nil, status.Error(codes.InvalidArgument, "container_id: required")
	}
	cs, err := s.m.ContainerStats(ctx, req.ContainerId)
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.ContainerStatsResponse{Stats: containerStatsCRI(cs)}, nil
}

// ListContainerStats reports the usage of the containers the filter
// selects.
func (s *RuntimeServer) ListContainerStats(ctx context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	f := pod.ContainerFilter{}
	if rf := req.Filter; rf != nil {
		f.ID, f.PodID, f.Labels = rf.Id, rf.PodSandboxId, rf.LabelSelector
	}
	list, err := s.m.ListContainerStats(ctx, f)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &runtimeapi.ListContainerStatsResponse{Stats: make([]*runtimeapi.ContainerStats, 0, len(list))}
	for _, cs := range list {
		resp.Stats = append(resp.Stats, containerStatsCRI(cs))
	}
	return resp, nil
}

// PodSandboxStats reports a pod's usage, network and containers.
func (s *RuntimeServer) PodSandboxStats(ctx context.Context, req *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	if req.PodSandboxId == "" {
		return nil, status.Error(codes.InvalidArgument, "pod_sandbox_id: required")
	}
	ps, err := s.m.PodStats(ctx, req.PodSandboxId)
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.PodSandboxStatsResponse{Stats: podStatsCRI(ps)}, nil
}

// ListPodSandboxStats reports the usage of the pods the filter selects.
func (s *RuntimeServer) ListPodSandboxStats(ctx context.Context, req *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	f := pod.PodFilter{}
	if rf := req.Filter; rf != nil {
		f.ID, f.Labels = rf.Id, rf.LabelSelector
	}
	list, err := s.m.ListPodStats(ctx, f)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &runtimeapi.ListPodSandboxStatsResponse{Stats: make([]*runtimeapi.PodSandboxStats, 0, len(list))}
	for _, ps := range list {
		resp.Stats = append(resp.Stats, podStatsCRI(ps))
	}
	return resp, nil
}

// UpdateContainerResources changes a running container's limits in place.
func (s *RuntimeServer) UpdateContainerResources(ctx context.Context, req *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	if req.ContainerId == "" {
		return nil, status.Error(codes.InvalidArgument, "container_id: required")
	}
	if req.Linux == nil {
		return nil, status.Error(codes.InvalidArgument, "linux: required (windows resources do not apply to a Linux runtime)")
	}
	if err := s.m.UpdateContainerResources(ctx, req.ContainerId, ociResources(req.Linux)); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.UpdateContainerResourcesResponse{}, nil
}

// UpdatePodSandboxResources records a pod's overhead and resources and
// applies them to its own cgroup.
func (s *RuntimeServer) UpdatePodSandboxResources(ctx context.Context, req *runtimeapi.UpdatePodSandboxResourcesRequest) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	if req.PodSandboxId == "" {
		return nil, status.Error(codes.InvalidArgument, "pod_sandbox_id: required")
	}
	var overhead, res *oci.Resources
	if req.Overhead != nil {
		r := ociResources(req.Overhead)
		overhead = &r
	}
	if req.Resources != nil {
		r := ociResources(req.Resources)
		res = &r
	}
	if err := s.m.UpdatePodResources(ctx, req.PodSandboxId, overhead, res); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.UpdatePodSandboxResourcesResponse{}, nil
}

// ociResources is the core's form of CRI Linux resources.
func ociResources(r *runtimeapi.LinuxContainerResources) oci.Resources {
	out := oci.Resources{CPUPeriod: r.CpuPeriod, CPUQuota: r.CpuQuota, CPUShares: r.CpuShares, MemoryLimit: r.MemoryLimitInBytes,
		CpusetCpus: r.CpusetCpus, CpusetMems: r.CpusetMems, OOMScoreAdj: r.OomScoreAdj, MemorySwap: r.MemorySwapLimitInBytes,
		Unified: maps.Clone(r.Unified)}
	for _, h := range r.HugepageLimits {
		out.Hugepages = append(out.Hugepages, oci.Hugepage{PageSize: h.PageSize, Limit: h.Limit})
	}
	return out
}

// criResources is the CRI form of a container's recorded resources.
func criResources(r oci.Resources) *runtimeapi.ContainerResources {
	l := &runtimeapi.LinuxContainerResources{CpuPeriod: r.CPUPeriod, CpuQuota: r.CPUQuota, CpuShares: r.CPUShares,
		MemoryLimitInBytes: r.MemoryLimit, OomScoreAdj: r.OOMScoreAdj, CpusetCpus: r.CpusetCpus, CpusetMems: r.CpusetMems,
		Unified: maps.Clone(r.Unified), MemorySwapLimitInBytes: r.MemorySwap}
	for _, h := range r.Hugepages {
		l.HugepageLimits = append(l.HugepageLimits, &runtimeapi.HugepageLimit{PageSize: h.PageSize, Limit: h.Limit})
	}
	return &runtimeapi.ContainerResources{Linux: l}
}

func u64(v uint64) *runtimeapi.UInt64Value { return &runtimeapi.UInt64Value{Value: v} }

func psiCRI(p cgroups.PSI) *runtimeapi.PsiStats {
	d := func(x cgroups.PSIData) *runtimeapi.PsiData {
		return &runtimeapi.PsiData{Total: x.TotalUs * 1000, Avg10: x.Avg10, Avg60: x.Avg60, Avg300: x.Avg300}
	}
	return &runtimeapi.PsiStats{Full: d(p.Full), Some: d(p.Some)}
}

// cpuMemCRI fills CPU and memory usage from a cgroup's stats; nil stats
// (nothing running) give zero usage.
func cpuMemCRI(ts int64, st *cgroups.Stats, nanoCores *uint64) (*runtimeapi.CpuUsage, *runtimeapi.MemoryUsage) {
	cpu := &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: u64(0), UsageNanoCores: u64(0)}
	mem := &runtimeapi.MemoryUsage{Timestamp: ts, WorkingSetBytes: u64(0), UsageBytes: u64(0), RssBytes: u64(0),
		PageFaults: u64(0), MajorPageFaults: u64(0)}
	if st == nil {
		return cpu, mem
	}
	cpu.UsageCoreNanoSeconds = u64(st.CPU.UsageNs)
	cpu.UsageNanoCores = nil
	if nanoCores != nil {
		cpu.UsageNanoCores = u64(*nanoCores)
	}
	m := st.Memory
	mem.WorkingSetBytes, mem.UsageBytes, mem.RssBytes = u64(m.WorkingSet), u64(m.Usage), u64(m.RSS)
	mem.PageFaults, mem.MajorPageFaults = u64(m.Pgfault), u64(m.Pgmajfault)
	if m.Limit != cgroups.Unlimited && m.Limit > 0 {
		avail := uint64(0)
		if m.Limit > m.WorkingSet {
			avail = m.Limit - m.WorkingSet
		}
		mem.AvailableBytes = u64(avail)
	}
	if p := st.Pressure; p != nil {
		cpu.Psi, mem.Psi = psiCRI(p.CPU), psiCRI(p.Memory)
	}
	return cpu, mem
}

func containerStatsCRI(s *pod.ContainerStats) *runtimeapi.ContainerStats {
	out := &runtimeapi.ContainerStats{Attributes: &runtimeapi.ContainerAttributes{Id: s.ID, Metadata: ctrMeta(&s.Container),
		Labels: s.Labels, Annotations: s.Annotations}}
	out.Cpu, out.Memory = cpuMemCRI(s.Timestamp, s.Stats, s.NanoCores)
	fsu := s.WritableLayer
	out.WritableLayer = &runtimeapi.FilesystemUsage{Timestamp: fsu.Timestamp, FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: fsu.Mountpoint},
		UsedBytes: u64(fsu.Bytes), InodesUsed: u64(fsu.Inodes)}
	if st := s.Stats; st != nil {
		if st.Memory.HasSwap {
			out.Swap = &runtimeapi.SwapUsage{Timestamp: s.Timestamp, SwapUsageBytes: u64(st.Memory.Swap)}
			if lim := s.Limits; lim.MemorySwap != cgroups.Unlimited && lim.MemorySwap >= lim.MemoryLimit && lim.MemorySwap > 0 {
				swapLimit := lim.MemorySwap - lim.MemoryLimit
				out.Swap.SwapAvailableBytes = u64(swapLimit - min(swapLimit, st.Memory.Swap))
			}
		}
		if p := st.Pressure; p != nil {
			out.Io = &runtimeapi.IoUsage{Timestamp: s.Timestamp, Psi: psiCRI(p.IO)}
		}
	}
	return out
}

func linkCRI(l netns.LinkStats) *runtimeapi.NetworkInterfaceUsage {
	return &runtimeapi.NetworkInterfaceUsage{Name: l.Name, RxBytes: u64(l.RxBytes), RxErrors: u64(l.RxErrors),
		TxBytes: u64(l.TxBytes), TxErrors: u64(l.TxErrors)}
}

func podStatsCRI(s *pod.PodStats) *runtimeapi.PodSandboxStats {
	out := &runtimeapi.PodSandboxStats{
		Attributes: &runtimeapi.PodSandboxAttributes{Id: s.ID, Metadata: podMeta(&s.Pod), Labels: s.Labels, Annotations: s.Annotations},
		Linux:      &runtimeapi.LinuxPodSandboxStats{},
	}
	l := out.Linux
	l.Cpu, l.Memory = cpuMemCRI(s.Timestamp, s.Stats, s.NanoCores)
	l.Process = &runtimeapi.ProcessUsage{Timestamp: s.Timestamp, ProcessCount: u64(s.Processes)}
	if s.Stats != nil && s.Stats.Pressure != nil {
		l.Io = &runtimeapi.IoUsage{Timestamp: s.Timestamp, Psi: psiCRI(s.Stats.Pressure.IO)}
	}
	if len(s.Links) > 0 {
		l.Network = &runtimeapi.NetworkUsage{Timestamp: s.Timestamp}
		for _, link := range s.Links {
			if link.Name == s.Default {
				l.Network.DefaultInterface = linkCRI(link)
			} else {
				l.Network.Interfaces = append(l.Network.Interfaces, linkCRI(link))
			}
		}
	}
	for _, c := range s.Containers {
		l.Containers = append(l.Containers, containerStatsCRI(c))
	}
	return out
}
