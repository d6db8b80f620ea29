package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cgroups"
	"github.com/tripod-dev/tripod/internal/netns"
	"github.com/tripod-dev/tripod/internal/pod"
)

// The CRI metrics carry cAdvisor's names, types and label sets, so the
// series kubelet exposes from them are the ones dashboards already query
// on /metrics/cadvisor. Values are unsigned integers: times in seconds
// are whole seconds.

// baseLabelKeys are kubelet's cAdvisor labels, in its order.
func baseLabelKeys() []string {
	return []string{"container", "id", "image", "name", "namespace", "pod"}
}

// metricInput is one cgroup's (a container's or a pod's) measurements.
type metricInput struct {
	st    *cgroups.Stats
	lim   *cgroups.Limits
	procs *cgroups.ProcessStats
	fs    *pod.FSUsage
	links []netns.LinkStats
	start int64 // ns since the epoch
	now   int64
	dev   func(major, minor uint64) string
}

// mval is one value with its extra labels; ts is set for a value measured
// earlier than the call (a cached walk).
type mval struct {
	v      uint64
	labels []string
	ts     int64
}

type metricDef struct {
	name, help string
	gauge      bool
	extra      []string
	values     func(x *metricInput) []mval
}

func one(v uint64) []mval { return []mval{{v: v}} }

func secs(ns uint64) uint64 { return ns / uint64(time.Second) }

// specBytes is a limit as cAdvisor reports it: 0 for none.
func specBytes(v uint64) uint64 {
	if v == cgroups.Unlimited {
		return 0
	}
	return v
}

// withStats runs f on the cgroup stats, none without them.
func withStats(f func(s *cgroups.Stats) []mval) func(*metricInput) []mval {
	return func(x *metricInput) []mval {
		if x.st == nil {
			return nil
		}
		return f(x.st)
	}
}

func withMemory(f func(m *cgroups.Memory) []mval) func(*metricInput) []mval {
	return withStats(func(s *cgroups.Stats) []mval {
		if !s.Memory.HasMemory {
			return nil
		}
		return f(&s.Memory)
	})
}

// withQuota gives the CFS counters only to cgroups with a quota, as
// cAdvisor does.
func withQuota(f func(c *cgroups.CPU) []mval) func(*metricInput) []mval {
	return func(x *metricInput) []mval {
		if x.st == nil || x.lim == nil || x.lim.CPUQuota <= 0 {
			return nil
		}
		return f(&x.st.CPU)
	}
}

func withLimits(f func(l *cgroups.Limits) []mval) func(*metricInput) []mval {
	return func(x *metricInput) []mval {
		if x.lim == nil {
			return nil
		}
		return f(x.lim)
	}
}

func withProcs(f func(p *cgroups.ProcessStats) []mval) func(*metricInput) []mval {
	return func(x *metricInput) []mval {
		if x.procs == nil {
			return nil
		}
		return f(x.procs)
	}
}

func withFS(f func(u *pod.FSUsage) uint64) func(*metricInput) []mval {
	return func(x *metricInput) []mval {
		if x.fs == nil || x.fs.Timestamp == 0 {
			return nil
		}
		return []mval{{v: f(x.fs), labels: []string{x.fs.Device}, ts: x.fs.Timestamp}}
	}
}

// perDevice gives one value per block device the cgroup did I/O on, named
// as the kernel names it (/dev/vda).
func perDevice(f func(d cgroups.DeviceIO) uint64) func(*metricInput) []mval {
	return func(x *metricInput) []mval {
		if x.st == nil {
			return nil
		}
		var out []mval
		for _, d := range x.st.IO {
			out = append(out, mval{v: f(d), labels: []string{x.dev(d.Major, d.Minor)}})
		}
		return out
	}
}

func perLink(f func(l netns.LinkStats) uint64) func(*metricInput) []mval {
	return func(x *metricInput) []mval {
		var out []mval
		for _, l := range x.links {
			out = append(out, mval{v: f(l), labels: []string{l.Name}})
		}
		return out
	}
}

// metricDefs lists the metrics the host's kernel can give on its cgroup
// hierarchy.
func metricDefs(mounts *cgroups.Mounts) []metricDef {
	ds := []metricDef{
		{name: "container_last_seen", help: "Last time a container was seen by the exporter", gauge: true,
			values: func(x *metricInput) []mval { return one(uint64(x.now / int64(time.Second))) }},
		{name: "container_start_time_seconds", help: "Start time of the container since unix epoch in seconds.", gauge: true,
			values: func(x *metricInput) []mval { return one(uint64(x.start / int64(time.Second))) }},
		{name: "container_cpu_user_seconds_total", help: "Cumulative user cpu time consumed in seconds.",
			values: withStats(func(s *cgroups.Stats) []mval { return one(secs(s.CPU.UserNs)) })},
		{name: "container_cpu_system_seconds_total", help: "Cumulative system cpu time consumed in seconds.",
			values: withStats(func(s *cgroups.Stats) []mval { return one(secs(s.CPU.SystemNs)) })},
		{name: "container_cpu_usage_seconds_total", help: "Cumulative cpu time consumed in seconds.", extra: []string{"cpu"},
			values: withStats(func(s *cgroups.Stats) []mval {
				if len(s.CPU.PerCPUNs) == 0 {
					return []mval{{v: secs(s.CPU.UsageNs), labels: []string{"total"}}}
				}
				var out []mval
				for i, ns := range s.CPU.PerCPUNs {
					if ns > 0 {
						out = append(out, mval{v: secs(ns), labels: []string{fmt.Sprintf("cpu%02d", i)}})
					}
				}
				return out
			})},
		{name: "container_cpu_cfs_periods_total", help: "Number of elapsed enforcement period intervals.",
			values: withQuota(func(c *cgroups.CPU) []mval { return one(c.Periods) })},
		{name: "container_cpu_cfs_throttled_periods_total", help: "Number of throttled period intervals.",
			values: withQuota(func(c *cgroups.CPU) []mval { return one(c.ThrottledPeriods) })},
		{name: "container_cpu_cfs_throttled_seconds_total", help: "Total time duration the container has been throttled.",
			values: withQuota(func(c *cgroups.CPU) []mval { return one(secs(c.ThrottledNs)) })},

		{name: "container_memory_cache", help: "Number of bytes of page cache memory.", gauge: true,
			values: withMemory(func(m *cgroups.Memory) []mval { return one(m.Cache) })},
		{name: "container_memory_rss", help: "Size of RSS in bytes.", gauge: true,
			values: withMemory(func(m *cgroups.Memory) []mval { return one(m.RSS) })},
		{name: "container_memory_kernel_usage", help: "Size of kernel memory allocated in bytes.", gauge: true,
			values: withMemory(func(m *cgroups.Memory) []mval {
				if !m.HasKernel {
					return nil
				}
				return one(m.Kernel)
			})},
		{name: "container_memory_mapped_file", help: "Size of memory mapped files in bytes.", gauge: true,
			values: withMemory(func(m *cgroups.Memory) []mval { return one(m.MappedFile) })},
		{name: "container_memory_swap", help: "Container swap usage in bytes.", gauge: true,
			values: withMemory(func(m *cgroups.Memory) []mval {
				if !m.HasSwap {
					return nil
				}
				return one(m.Swap)
			})},
		{name: "container_memory_failcnt", help: "Number of memory usage hits limits",
			values: withMemory(func(m *cgroups.Memory) []mval { return one(m.Failcnt) })},
		{name: "container_memory_usage_bytes", help: "Current memory usage in bytes, including all memory regardless of when it was accessed", gauge: true,
			values: withMemory(func(m *cgroups.Memory) []mval { return one(m.Usage) })},
		{name: "container_memory_max_usage_bytes", help: "Maximum memory usage recorded in bytes", gauge: true,
			values: withMemory(func(m *cgroups.Memory) []mval {
				if !m.HasMaxUsage {
					return nil
				}
				return one(m.MaxUsage)
			})},
		{name: "container_memory_working_set_bytes", help: "Current working set in bytes.", gauge: true,
			values: withMemory(func(m *cgroups.Memory) []mval { return one(m.WorkingSet) })},
		{name: "container_memory_failures_total", help: "Cumulative count of memory allocation failures.", extra: []string{"failure_type", "scope"},
			values: withMemory(func(m *cgroups.Memory) []mval {
				return []mval{{v: m.Pgfault, labels: []string{"pgfault", "container"}}, {v: m.Pgmajfault, labels: []string{"pgmajfault", "container"}},
					{v: m.HierarchyPgfault, labels: []string{"pgfault", "hierarchy"}}, {v: m.HierarchyPgmajfault, labels: []string{"pgmajfault", "hierarchy"}}}
			})},
		{name: "container_oom_events_total", help: "Count of out of memory events observed for the container",
			values: withMemory(func(m *cgroups.Memory) []mval {
				if !m.HasOOM {
					return nil
				}
				return one(m.OOMEvents)
			})},

		{name: "container_processes", help: "Number of processes running inside the container.", gauge: true,
			values: withProcs(func(p *cgroups.ProcessStats) []mval { return one(p.Processes) })},
		{name: "container_threads", help: "Number of threads running inside the container", gauge: true,
			values: withProcs(func(p *cgroups.ProcessStats) []mval { return one(p.Threads) })},
		{name: "container_threads_max", help: "Maximum number of threads allowed inside the container, infinity if value is zero", gauge: true,
			values: withStats(func(s *cgroups.Stats) []mval {
				if !s.Pids.Has {
					return nil
				}
				return one(specBytes(s.Pids.Limit))
			})},
		{name: "container_file_descriptors", help: "Number of open file descriptors for the container.", gauge: true,
			values: withProcs(func(p *cgroups.ProcessStats) []mval { return one(p.FDs) })},
		{name: "container_sockets", help: "Number of open sockets for the container.", gauge: true,
			values: withProcs(func(p *cgroups.ProcessStats) []mval { return one(p.Sockets) })},
		{name: "container_ulimits_soft", help: "Soft ulimit values for the container root process. Unlimited if -1, except priority and nice", gauge: true, extra: []string{"ulimit"},
			values: withProcs(func(p *cgroups.ProcessStats) []mval {
				if p.Processes == 0 || p.OpenFilesSoft == 0 || p.OpenFilesSoft == cgroups.Unlimited {
					return nil
				}
				return []mval{{v: p.OpenFilesSoft, labels: []string{"max_open_files"}}}
			})},

		{name: "container_spec_cpu_period", help: "CPU period of the container.", gauge: true,
			values: withLimits(func(l *cgroups.Limits) []mval {
				if !l.HasCPU {
					return nil
				}
				return one(l.CPUPeriod)
			})},
		{name: "container_spec_cpu_quota", help: "CPU quota of the container.", gauge: true,
			values: withLimits(func(l *cgroups.Limits) []mval {
				if l.CPUQuota <= 0 {
					return nil
				}
				return one(uint64(l.CPUQuota))
			})},
		{name: "container_spec_cpu_shares", help: "CPU share of the container.", gauge: true,
			values: withLimits(func(l *cgroups.Limits) []mval {
				if !l.HasCPU {
					return nil
				}
				return one(l.CPUShares)
			})},
		{name: "container_spec_memory_limit_bytes", help: "Memory limit for the container.", gauge: true,
			values: withLimits(func(l *cgroups.Limits) []mval {
				if !l.HasMemory {
					return nil
				}
				return one(specBytes(l.MemoryLimit))
			})},
		{name: "container_spec_memory_swap_limit_bytes", help: "Memory swap limit for the container.", gauge: true,
			values: withLimits(func(l *cgroups.Limits) []mval {
				if !l.HasMemory {
					return nil
				}
				return one(specBytes(l.MemorySwap))
			})},
		{name: "container_spec_memory_reservation_limit_bytes", help: "Memory reservation limit for the container.", gauge: true,
			values: withLimits(func(l *cgroups.Limits) []mval {
				if !l.HasMemory {
					return nil
				}
				return one(l.MemoryReservation)
			})},

		{name: "container_fs_inodes_free", help: "Number of available Inodes", gauge: true, extra: []string{"device"},
			values: withFS(func(u *pod.FSUsage) uint64 { return u.InodesFree })},
		{name: "container_fs_inodes_total", help: "Number of Inodes", gauge: true, extra: []string{"device"},
			values: withFS(func(u *pod.FSUsage) uint64 { return u.InodesTotal })},
		{name: "container_fs_limit_bytes", help: "Number of bytes that can be consumed by the container on this filesystem.", gauge: true, extra: []string{"device"},
			values: withFS(func(u *pod.FSUsage) uint64 { return u.Capacity })},
		{name: "container_fs_usage_bytes", help: "Number of bytes that are consumed by the container on this filesystem.", gauge: true, extra: []string{"device"},
			values: withFS(func(u *pod.FSUsage) uint64 { return u.Bytes })},
		{name: "container_fs_reads_bytes_total", help: "Cumulative count of bytes read", extra: []string{"device"},
			values: perDevice(func(d cgroups.DeviceIO) uint64 { return d.ReadBytes })},
		{name: "container_fs_reads_total", help: "Cumulative count of reads completed", extra: []string{"device"},
			values: perDevice(func(d cgroups.DeviceIO) uint64 { return d.Reads })},
		{name: "container_fs_writes_bytes_total", help: "Cumulative count of bytes written", extra: []string{"device"},
			values: perDevice(func(d cgroups.DeviceIO) uint64 { return d.WriteBytes })},
		{name: "container_fs_writes_total", help: "Cumulative count of writes completed", extra: []string{"device"},
			values: perDevice(func(d cgroups.DeviceIO) uint64 { return d.Writes })},
		{name: "container_blkio_device_usage_total", help: "Blkio Device bytes usage", extra: []string{"device", "major", "minor", "operation"},
			values: func(x *metricInput) []mval {
				if x.st == nil {
					return nil
				}
				var out []mval
				for _, d := range x.st.IO {
					dev, ma, mi := x.dev(d.Major, d.Minor), strconv.FormatUint(d.Major, 10), strconv.FormatUint(d.Minor, 10)
					out = append(out, mval{v: d.ReadBytes, labels: []string{dev, ma, mi, "Read"}}, mval{v: d.WriteBytes, labels: []string{dev, ma, mi, "Write"}})
				}
				return out
			}},

		{name: "container_network_receive_bytes_total", help: "Cumulative count of bytes received", extra: []string{"interface"},
			values: perLink(func(l netns.LinkStats) uint64 { return l.RxBytes })},
		{name: "container_network_receive_packets_total", help: "Cumulative count of packets received", extra: []string{"interface"},
			values: perLink(func(l netns.LinkStats) uint64 { return l.RxPackets })},
		{name: "container_network_receive_packets_dropped_total", help: "Cumulative count of packets dropped while receiving", extra: []string{"interface"},
			values: perLink(func(l netns.LinkStats) uint64 { return l.RxDropped })},
		{name: "container_network_receive_errors_total", help: "Cumulative count of errors encountered while receiving", extra: []string{"interface"},
			values: perLink(func(l netns.LinkStats) uint64 { return l.RxErrors })},
		{name: "container_network_transmit_bytes_total", help: "Cumulative count of bytes transmitted", extra: []string{"interface"},
			values: perLink(func(l netns.LinkStats) uint64 { return l.TxBytes })},
		{name: "container_network_transmit_packets_total", help: "Cumulative count of packets transmitted", extra: []string{"interface"},
			values: perLink(func(l netns.LinkStats) uint64 { return l.TxPackets })},
		{name: "container_network_transmit_packets_dropped_total", help: "Cumulative count of packets dropped while transmitting", extra: []string{"interface"},
			values: perLink(func(l netns.LinkStats) uint64 { return l.TxDropped })},
		{name: "container_network_transmit_errors_total", help: "Cumulative count of errors encountered while transmitting", extra: []string{"interface"},
			values: perLink(func(l netns.LinkStats) uint64 { return l.TxErrors })},
	}
	if mounts == nil {
		return ds
	}
	if mounts.HasController("hugetlb") {
		ds = append(ds, metricDef{name: "container_hugetlb_usage_bytes", help: "Current hugepage usage", gauge: true, extra: []string{"pagesize"},
			values: withStats(func(s *cgroups.Stats) []mval {
				var out []mval
				for size, h := range s.Hugetlb {
					out = append(out, mval{v: h.Usage, labels: []string{size}})
				}
				return out
			})})
		if !mounts.V2() { // v2 keeps no hugetlb peak
			ds = append(ds, metricDef{name: "container_hugetlb_max_usage_bytes", help: "Maximum hugepage usages recorded", gauge: true, extra: []string{"pagesize"},
				values: withStats(func(s *cgroups.Stats) []mval {
					var out []mval
					for size, h := range s.Hugetlb {
						out = append(out, mval{v: h.MaxUsage, labels: []string{size}})
					}
					return out
				})})
		}
	}
	if mounts.HasPressure() {
		for _, r := range []struct {
			res string
			get func(p *cgroups.Pressure) cgroups.PSI
		}{
			{"cpu", func(p *cgroups.Pressure) cgroups.PSI { return p.CPU }},
			{"memory", func(p *cgroups.Pressure) cgroups.PSI { return p.Memory }},
			{"io", func(p *cgroups.Pressure) cgroups.PSI { return p.IO }},
		} {
			ds = append(ds,
				metricDef{name: "container_pressure_" + r.res + "_stalled_seconds_total",
					help: "Total time duration no tasks in the container could make progress due to " + strings.ToUpper(r.res) + " congestion.",
					values: withStats(func(s *cgroups.Stats) []mval {
						if s.Pressure == nil {
							return nil
						}
						return one(r.get(s.Pressure).Full.TotalUs / 1e6)
					})},
				metricDef{name: "container_pressure_" + r.res + "_waiting_seconds_total",
					help: "Total time duration tasks in the container have waited due to " + strings.ToUpper(r.res) + " congestion.",
					values: withStats(func(s *cgroups.Stats) []mval {
						if s.Pressure == nil {
							return nil
						}
						return one(r.get(s.Pressure).Some.TotalUs / 1e6)
					})})
		}
	}
	return ds
}

// ListMetricDescriptors names the metrics ListPodSandboxMetrics gives on
// this host.
func (s *RuntimeServer) ListMetricDescriptors(ctx context.Context, req *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	mounts, err := s.m.CgroupMounts()
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &runtimeapi.ListMetricDescriptorsResponse{}
	for _, d := range metricDefs(mounts) {
		resp.Descriptors = append(resp.Descriptors, &runtimeapi.MetricDescriptor{Name: d.name, Help: d.help,
			LabelKeys: append(baseLabelKeys(), d.extra...)})
	}
	return resp, nil
}

// ListPodSandboxMetrics measures every pod: its own cgroup and network as
// pod-level metrics (container=""), each container's cgroup and writable
// layer as container metrics.
func (s *RuntimeServer) ListPodSandboxMetrics(ctx context.Context, req *runtimeapi.ListPodSandboxMetricsRequest) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	mounts, err := s.m.CgroupMounts()
	if err != nil {
		return nil, toStatus(err)
	}
	pods, err := s.m.PodMetrics(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	defs := metricDefs(mounts)
	devs := map[string]string{}
	dev := func(major, minor uint64) string {
		key := fmt.Sprintf("%d:%d", major, minor)
		if name, ok := devs[key]; ok {
			return name
		}
		name := key
		if b, err := os.ReadFile(filepath.Join("/sys/dev/block", key, "uevent")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "DEVNAME="); ok {
					name = "/dev/" + v
				}
			}
		}
		devs[key] = name
		return name
	}
	now := time.Now().UnixNano()
	resp := &runtimeapi.ListPodSandboxMetricsResponse{}
	for _, p := range pods {
		pm := &runtimeapi.PodSandboxMetrics{PodSandboxId: p.ID}
		in := &metricInput{links: p.Links, start: p.CreatedAt, now: now, dev: dev}
		if p.Cgroup != "" {
			// Only a cgroup of the pod's own: a summed one would count its
			// containers twice in any sum by pod.
			in.st, in.lim = p.Stats, p.Limits
		}
		pm.Metrics = collect(defs, in, []string{"", p.Cgroup, "", "", p.Meta.Namespace, p.Meta.Name})
		for _, c := range p.Containers {
			start := c.StartedAt
			if start == 0 {
				start = c.CreatedAt
			}
			in := &metricInput{st: c.Stats, fs: &c.WritableLayer, start: start, now: now, dev: dev}
			if c.Stats != nil {
				in.lim, in.procs = &c.Limits, &c.Procs
			}
			pm.ContainerMetrics = append(pm.ContainerMetrics, &runtimeapi.ContainerMetrics{ContainerId: c.ID,
				Metrics: collect(defs, in, []string{c.Meta.Name, c.Cgroup, c.Image, c.ID, p.Meta.Namespace, p.Meta.Name})})
		}
		resp.PodMetrics = append(resp.PodMetrics, pm)
	}
	return resp, nil
}

// collect evaluates every definition on in, with base label values.
func collect(defs []metricDef, in *metricInput, base []string) []*runtimeapi.Metric {
	var out []*runtimeapi.Metric
	for _, d := range defs {
		for _, v := range d.values(in) {
			labels := append(append(make([]string, 0, len(base)+len(v.labels)), base...), v.labels...)
			typ := runtimeapi.MetricType_COUNTER
			if d.gauge {
				typ = runtimeapi.MetricType_GAUGE
			}
			out = append(out, &runtimeapi.Metric{Name: d.name, Timestamp: v.ts, MetricType: typ, LabelValues: labels, Value: u64(v.v)})
		}
	}
	return out
}
