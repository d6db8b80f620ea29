package main_test

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cgroups"
)

// cgroupFile reads a cgroup file of this host's v1 hierarchy for
// controller (the tests of this file run on the VM's cgroup v1).
func cgroupFile(t *testing.T, ctrl, path, file string) string {
	t.Helper()
	m, err := cgroups.Discover()
	if err != nil {
		t.Fatal(err)
	}
	h, ok := m.V1[ctrl]
	if !ok {
		t.Fatalf("no %s hierarchy on this host", ctrl)
	}
	b, err := os.ReadFile(filepath.Join(h.Mount, path, file))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func cgroupUint(t *testing.T, ctrl, path, file string) uint64 {
	t.Helper()
	s := cgroupFile(t, ctrl, path, file)
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("%s/%s: %q", path, file, s)
	}
	return v
}

func v1Host(t *testing.T) {
	m, err := cgroups.Discover()
	if err != nil {
		t.Fatal(err)
	}
	if m.V2() {
		t.Skip("skipped: these tests read cgroup v1 files to check the stats against; this host runs v2")
	}
}

// ownPod runs a pod with a cgroup of its own under the test's, as kubelet
// gives each pod (pod<uid>).
func (e *podEnv) ownPod(name string) (id, cgroup string) {
	e.t.Helper()
	cfg := e.podConfig(name)
	cfg.Linux.CgroupParent = e.cgroup + "/pod" + name
	resp, err := e.rt.RunPodSandbox(testCtx(e.t), &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		e.t.Fatalf("RunPodSandbox %s: %v", name, err)
	}
	return resp.PodSandboxId, cfg.Linux.CgroupParent
}

// createWith creates a container with resources (its pod's cgroup parent
// taken from the pod's config).
func (e *podEnv) createWith(podID, podName, name string, res *runtimeapi.LinuxContainerResources, cmd ...string) string {
	e.t.Helper()
	resp, err := e.rt.CreateContainer(testCtx(e.t), &runtimeapi.CreateContainerRequest{PodSandboxId: podID, SandboxConfig: e.podConfig(podName),
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: name}, Image: &runtimeapi.ImageSpec{Image: e.image},
			Command: cmd, LogPath: name + ".log", Labels: map[string]string{"ctr": name}, Linux: &runtimeapi.LinuxContainerConfig{Resources: res}}})
	if err != nil {
		e.t.Fatalf("CreateContainer %s: %v", name, err)
	}
	return resp.ContainerId
}

// waitPath waits (synchronisation) until path exists.
func waitPath(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *podEnv) ctrStats(id string) *runtimeapi.ContainerStats {
	e.t.Helper()
	r, err := e.rt.ContainerStats(testCtx(e.t), &runtimeapi.ContainerStatsRequest{ContainerId: id})
	if err != nil {
		e.t.Fatalf("ContainerStats: %v", err)
	}
	return r.Stats
}

func (e *podEnv) podStats(id string) *runtimeapi.PodSandboxStats {
	e.t.Helper()
	r, err := e.rt.PodSandboxStats(testCtx(e.t), &runtimeapi.PodSandboxStatsRequest{PodSandboxId: id})
	if err != nil {
		e.t.Fatalf("PodSandboxStats: %v", err)
	}
	return r.Stats
}

// psiTotal is the "some" or "full" total (µs) of a cgroup's pressure file
// in the cgroup2 hierarchy (the companion one on a hybrid host); ok is
// false without one.
func psiTotal(t *testing.T, path, file, kind string) (uint64, bool) {
	t.Helper()
	m, err := cgroups.Discover()
	if err != nil || m.Unified == nil {
		return 0, false
	}
	b, err := os.ReadFile(filepath.Join(m.Unified.Mount, path, file))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 5 && f[0] == kind {
			v, err := strconv.ParseUint(strings.TrimPrefix(f[4], "total="), 10, 64)
			return v, err == nil
		}
	}
	return 0, false
}

func within(a, b, slack uint64) bool { return a+slack >= b && b+slack >= a }

// TestContainerAndPodStats checks the CRI stats of a pod with a cgroup of
// its own, running a container that fills 32 MiB of the pod's tmpfs,
// writes a 1 MiB file in its writable layer and burns CPU, against the
// kernel's cgroup files; network counters after pings between two pods on
// the bridge; filters; an exited container; unknown IDs.
func TestContainerAndPodStats(t *testing.T) {
	v1Host(t)
	e := newPodEnv(t)
	ctx := testCtx(t)
	podA, podCg := e.ownPod("a")
	podB := e.runPod("b")
	burn := e.createWith(podA, "a", "burn", &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512,
		MemoryLimitInBytes: 128 << 20, MemorySwapLimitInBytes: 128 << 20},
		"sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=32 2>/dev/null; head -c 1048576 /dev/zero > /tmp/written; touch /tmp/ready; while :; do :; done")
	e.start(burn)
	upper := filepath.Join(e.n.root, "runtime", "containers", burn, "upper")
	waitPath(t, filepath.Join(upper, "tmp", "ready"))
	ctrCg := podCg + "/" + burn

	s1 := e.ctrStats(burn)
	if a := s1.Attributes; a.Id != burn || a.Metadata.Name != "burn" || a.Labels["ctr"] != "burn" {
		t.Fatalf("attributes: %v", a)
	}
	usageFile := cgroupUint(t, "cpuacct", ctrCg, "cpuacct.usage")
	if u := s1.Cpu.UsageCoreNanoSeconds.Value; u == 0 || u > usageFile {
		t.Errorf("cpu usage %d, cpuacct.usage read after it %d", u, usageFile)
	}
	memFile := cgroupUint(t, "memory", ctrCg, "memory.usage_in_bytes")
	m := s1.Memory
	if !within(m.UsageBytes.Value, memFile, 4<<20) || m.UsageBytes.Value < 32<<20 {
		t.Errorf("memory usage %d, memory.usage_in_bytes %d (32 MiB in tmpfs)", m.UsageBytes.Value, memFile)
	}
	// tmpfs pages are not reclaimable without swap: in the working set.
	if m.WorkingSetBytes.Value < 32<<20 || m.WorkingSetBytes.Value > m.UsageBytes.Value {
		t.Errorf("working set %d of usage %d", m.WorkingSetBytes.Value, m.UsageBytes.Value)
	}
	if m.AvailableBytes == nil || m.AvailableBytes.Value != 128<<20-m.WorkingSetBytes.Value {
		t.Errorf("available %v, want limit - working set = %d", m.AvailableBytes, 128<<20-m.WorkingSetBytes.Value)
	}
	if m.RssBytes == nil || m.PageFaults.Value == 0 {
		t.Errorf("rss %v, page faults %v", m.RssBytes, m.PageFaults)
	}
	// The writable layer: the 1 MiB file and a few small entries runc and
	// the shell made.
	w := s1.WritableLayer
	if w.UsedBytes.Value < 1<<20 || w.UsedBytes.Value > 1<<20+256<<10 || w.InodesUsed.Value < 3 || w.FsId.Mountpoint == "" {
		t.Errorf("writable layer after a 1 MiB file: %v", w)
	}
	if _, err := e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: burn, Cmd: []string{"sh", "-c", "head -c 2097152 /dev/zero > /tmp/more"}, Timeout: 30}); err != nil {
		t.Fatal(err)
	}
	w2 := e.ctrStats(burn).WritableLayer
	if d := w2.UsedBytes.Value - w.UsedBytes.Value; d < 2<<20 || d > 2<<20+64<<10 || w2.InodesUsed.Value != w.InodesUsed.Value+1 {
		t.Errorf("writable layer grew by %d bytes and %d inodes after a 2 MiB file", d, w2.InodesUsed.Value-w.InodesUsed.Value)
	}

	// The loop burns CPU (at most half a core, its quota): usage rises
	// and, from the second sample, a rate is given.
	deadline := time.Now().Add(60 * time.Second)
	for {
		s2 := e.ctrStats(burn)
		if s2.Cpu.UsageCoreNanoSeconds.Value > s1.Cpu.UsageCoreNanoSeconds.Value+200_000_000 {
			if s2.Cpu.UsageNanoCores == nil || s2.Cpu.UsageNanoCores.Value == 0 || s2.Cpu.UsageNanoCores.Value > 2_100_000_000 {
				t.Errorf("usage_nano_cores: %v", s2.Cpu.UsageNanoCores)
			}
			if s2.Cpu.Timestamp <= s1.Cpu.Timestamp {
				t.Errorf("timestamps %d then %d", s1.Cpu.Timestamp, s2.Cpu.Timestamp)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cpu usage did not rise: %d then %d", s1.Cpu.UsageCoreNanoSeconds.Value, s2.Cpu.UsageCoreNanoSeconds.Value)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Pressure stall information, where the kernel keeps it for the
	// cgroup: a counter in nanoseconds, never ahead of the file.
	if total, ok := psiTotal(t, ctrCg, "cpu.pressure", "some"); ok {
		s3 := e.ctrStats(burn)
		after, _ := psiTotal(t, ctrCg, "cpu.pressure", "some")
		if s3.Cpu.Psi == nil || s3.Cpu.Psi.Some.Total < total*1000 || s3.Cpu.Psi.Some.Total > after*1000 || s3.Memory.Psi == nil || s3.Io == nil {
			t.Errorf("cpu pressure %v, cpu.pressure total %d then %d µs", s3.Cpu.Psi, total, after)
		}
	} else {
		t.Logf("no cgroup2 pressure files for %s: pressure not checked", ctrCg)
	}

	// The pod's totals come from its own cgroup, which holds the
	// container's usage.
	ps := e.podStats(podA)
	if ps.Attributes.Id != podA || ps.Attributes.Metadata.Name != "a" {
		t.Fatalf("pod attributes: %v", ps.Attributes)
	}
	// The container is still burning CPU: read it before its pod.
	ctrUsage := cgroupUint(t, "cpuacct", ctrCg, "cpuacct.usage")
	podUsage := cgroupUint(t, "cpuacct", podCg, "cpuacct.usage")
	if u := ps.Linux.Cpu.UsageCoreNanoSeconds.Value; u > podUsage || u < s1.Cpu.UsageCoreNanoSeconds.Value || podUsage < ctrUsage {
		t.Errorf("pod cpu %d, pod cgroup %d, container cgroup %d", u, podUsage, ctrUsage)
	}
	if !within(ps.Linux.Memory.UsageBytes.Value, cgroupUint(t, "memory", podCg, "memory.usage_in_bytes"), 4<<20) {
		t.Errorf("pod memory %d", ps.Linux.Memory.UsageBytes.Value)
	}
	if ps.Linux.Process.ProcessCount.Value != 1 || len(ps.Linux.Containers) != 1 || ps.Linux.Containers[0].Attributes.Id != burn {
		t.Errorf("pod processes %v, containers %d", ps.Linux.Process.ProcessCount, len(ps.Linux.Containers))
	}
	if n := ps.Linux.Network; n == nil || n.DefaultInterface == nil || n.DefaultInterface.Name != "eth0" {
		t.Fatalf("pod network: %v", n)
	}

	// Five pings from pod a to pod b: each way at least 5 × 98 bytes
	// (ICMP echo of 56 bytes, IP and Ethernet headers) on both eth0s.
	st, err := e.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podB})
	if err != nil {
		t.Fatal(err)
	}
	aBefore, bBefore := ps.Linux.Network.DefaultInterface, e.podStats(podB).Linux.Network.DefaultInterface
	r, err := e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: burn, Cmd: []string{"ping", "-c", "5", "-i", "0.2", st.Status.Network.Ip}, Timeout: 30})
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("ping: %v %s %s", err, r.GetStdout(), r.GetStderr())
	}
	aAfter, bAfter := e.podStats(podA).Linux.Network.DefaultInterface, e.podStats(podB).Linux.Network.DefaultInterface
	for name, d := range map[string]uint64{"a tx": aAfter.TxBytes.Value - aBefore.TxBytes.Value, "a rx": aAfter.RxBytes.Value - aBefore.RxBytes.Value,
		"b tx": bAfter.TxBytes.Value - bBefore.TxBytes.Value, "b rx": bAfter.RxBytes.Value - bBefore.RxBytes.Value} {
		if d < 5*98 {
			t.Errorf("%s grew by %d bytes over 5 pings", name, d)
		}
	}
	// Pod b shares its cgroup parent with no container running: zero
	// usage, no processes.
	if pb := e.podStats(podB); pb.Linux.Cpu.UsageCoreNanoSeconds.Value != 0 || pb.Linux.Process.ProcessCount.Value != 0 || len(pb.Linux.Containers) != 0 {
		t.Errorf("pod b: %v", pb.Linux)
	}

	// An exited container: zero usage, its writable layer still counted.
	job := e.createWith(podB, "b", "job", nil, "sh", "-c", "head -c 4096 /dev/urandom > /tmp/x")
	e.start(job)
	e.waitExited(job)
	js := e.ctrStats(job)
	if js.Cpu.UsageCoreNanoSeconds.Value != 0 || js.Memory.WorkingSetBytes.Value != 0 || js.Cpu.Timestamp == 0 || js.WritableLayer.UsedBytes.Value < 4096 {
		t.Errorf("exited container stats: %v", js)
	}

	// Lists and their filters.
	list := func(f *runtimeapi.ContainerStatsFilter) []string {
		r, err := e.rt.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{Filter: f})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, s := range r.Stats {
			ids = append(ids, s.Attributes.Id)
		}
		slices.Sort(ids)
		return ids
	}
	both := []string{burn, job}
	slices.Sort(both)
	for name, c := range map[string]struct {
		f    *runtimeapi.ContainerStatsFilter
		want []string
	}{
		"nil":        {nil, both},
		"id":         {&runtimeapi.ContainerStatsFilter{Id: burn}, []string{burn}},
		"id prefix":  {&runtimeapi.ContainerStatsFilter{Id: job[:12]}, []string{job}},
		"pod":        {&runtimeapi.ContainerStatsFilter{PodSandboxId: podB}, []string{job}},
		"label":      {&runtimeapi.ContainerStatsFilter{LabelSelector: map[string]string{"ctr": "burn"}}, []string{burn}},
		"no match":   {&runtimeapi.ContainerStatsFilter{LabelSelector: map[string]string{"ctr": "nope"}}, nil},
		"pod, label": {&runtimeapi.ContainerStatsFilter{PodSandboxId: podA, LabelSelector: map[string]string{"ctr": "job"}}, nil},
	} {
		if got := list(c.f); !slices.Equal(got, c.want) {
			t.Errorf("ListContainerStats %s = %v, want %v", name, got, c.want)
		}
	}
	lp, err := e.rt.ListPodSandboxStats(ctx, &runtimeapi.ListPodSandboxStatsRequest{Filter: &runtimeapi.PodSandboxStatsFilter{LabelSelector: map[string]string{"app": "b"}}})
	if err != nil || len(lp.Stats) != 1 || lp.Stats[0].Attributes.Id != podB || len(lp.Stats[0].Linux.Containers) != 1 {
		t.Errorf("ListPodSandboxStats by label: %v %v", lp, err)
	}
	if lp, err := e.rt.ListPodSandboxStats(ctx, &runtimeapi.ListPodSandboxStatsRequest{}); err != nil || len(lp.Stats) != 2 {
		t.Errorf("ListPodSandboxStats: %v %v", lp, err)
	}

	for name, err := range map[string]error{
		"ContainerStats unknown": func() error {
			_, err := e.rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: "nope"})
			return err
		}(),
		"PodSandboxStats unknown": func() error {
			_, err := e.rt.PodSandboxStats(ctx, &runtimeapi.PodSandboxStatsRequest{PodSandboxId: "nope"})
			return err
		}(),
	} {
		if status.Code(err) != codes.NotFound {
			t.Errorf("%s: %v, want NotFound", name, err)
		}
	}
	if _, err := e.rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "container_id") {
		t.Errorf("ContainerStats without an ID: %v", err)
	}
}

func (e *podEnv) update(id string, r *runtimeapi.LinuxContainerResources) error {
	_, err := e.rt.UpdateContainerResources(testCtx(e.t), &runtimeapi.UpdateContainerResourcesRequest{ContainerId: id, Linux: r})
	return err
}

// TestUpdateResources resizes a running container in place (the cgroup
// files, ContainerStatus.resources and the stats follow, and the new
// limits survive a restart of tripodd), refuses a memory limit below what
// the container holds in tmpfs without touching any limit, names invalid
// fields, and applies a pod's resources plus overhead to its own cgroup.
func TestUpdateResources(t *testing.T) {
	v1Host(t)
	e := newPodEnv(t)
	ctx := testCtx(t)
	podA, podCg := e.ownPod("a")
	podB := e.runPod("b")
	app := e.createWith(podA, "a", "app", &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512,
		MemoryLimitInBytes: 128 << 20, MemorySwapLimitInBytes: 128 << 20},
		"sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=32 2>/dev/null; touch /tmp/ready; exec sleep 100000")
	e.start(app)
	waitPath(t, filepath.Join(e.n.root, "runtime", "containers", app, "upper", "tmp", "ready"))
	cg := podCg + "/" + app
	if r := e.status(app).Resources.GetLinux(); r.CpuQuota != 50000 || r.MemoryLimitInBytes != 128<<20 || r.MemorySwapLimitInBytes != 128<<20 {
		t.Fatalf("resources at creation: %v", r)
	}

	if err := e.update(app, &runtimeapi.LinuxContainerResources{CpuQuota: 150000, CpuShares: 1024, MemoryLimitInBytes: 256 << 20,
		MemorySwapLimitInBytes: 256 << 20, CpusetCpus: "0"}); err != nil {
		t.Fatal(err)
	}
	files := func(want map[string]string) {
		t.Helper()
		for f, v := range want {
			ctrl, _, _ := strings.Cut(f, ".")
			if ctrl == "cpu" && strings.HasPrefix(f, "cpuset") {
				ctrl = "cpuset"
			}
			if got := cgroupFile(t, ctrl, cg, f); got != v {
				t.Errorf("%s = %s, want %s", f, got, v)
			}
		}
	}
	files(map[string]string{"cpu.cfs_quota_us": "150000", "cpu.cfs_period_us": "100000", "cpu.shares": "1024",
		"memory.limit_in_bytes": strconv.Itoa(256 << 20), "memory.memsw.limit_in_bytes": strconv.Itoa(256 << 20), "cpuset.cpus": "0"})
	r := e.status(app).Resources.GetLinux()
	if r.CpuQuota != 150000 || r.CpuPeriod != 100000 || r.CpuShares != 1024 || r.MemoryLimitInBytes != 256<<20 || r.CpusetCpus != "0" {
		t.Errorf("status after resize: %v", r)
	}
	if m := e.ctrStats(app).Memory; m.AvailableBytes.GetValue() != 256<<20-m.WorkingSetBytes.Value {
		t.Errorf("available after resize: %v of %v", m.AvailableBytes, m.WorkingSetBytes)
	}
	// Memory alone: a container allowed no swap keeps none.
	if err := e.update(app, &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 200 << 20}); err != nil {
		t.Fatal(err)
	}
	files(map[string]string{"memory.limit_in_bytes": strconv.Itoa(200 << 20), "memory.memsw.limit_in_bytes": strconv.Itoa(200 << 20)})

	// 8 MiB is below the 32 MiB the container holds in tmpfs: the kernel
	// cannot reclaim them, nothing changes.
	err := e.update(app, &runtimeapi.LinuxContainerResources{CpuQuota: 20000, MemoryLimitInBytes: 8 << 20, MemorySwapLimitInBytes: 8 << 20})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "memory_limit_in_bytes") || !strings.Contains(err.Error(), "usage") {
		t.Fatalf("limit below usage: %v", err)
	}
	files(map[string]string{"memory.limit_in_bytes": strconv.Itoa(200 << 20), "memory.memsw.limit_in_bytes": strconv.Itoa(200 << 20), "cpu.cfs_quota_us": "150000"})
	if r := e.status(app).Resources.GetLinux(); r.MemoryLimitInBytes != 200<<20 || r.CpuQuota != 150000 {
		t.Errorf("status after a refused resize: %v", r)
	}
	// The container is still there and running.
	if st := e.status(app); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("after the refused resize: %v", st.State)
	}

	for field, bad := range map[string]*runtimeapi.LinuxContainerResources{
		"cpu_period":                 {CpuPeriod: 10},
		"cpu_quota":                  {CpuQuota: 5},
		"cpu_shares":                 {CpuShares: 1 << 20},
		"memory_limit_in_bytes":      {MemoryLimitInBytes: -5},
		"memory_swap_limit_in_bytes": {MemoryLimitInBytes: 64 << 20, MemorySwapLimitInBytes: 32 << 20},
		"cpuset_cpus":                {CpusetCpus: "4096"},
		"cpuset_mems":                {CpusetMems: "0-x"},
		"hugepage_limits":            {HugepageLimits: []*runtimeapi.HugepageLimit{{PageSize: "2XB", Limit: 1}}},
		"unified":                    {Unified: map[string]string{"memory.high": "1"}},
	} {
		err := e.update(app, bad)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "linux."+field) {
			t.Errorf("%s: %v, want InvalidArgument naming linux.%s", field, err, field)
		}
	}
	files(map[string]string{"cpu.cfs_period_us": "100000", "cpu.shares": "1024", "cpuset.cpus": "0"})
	if err := e.update("nope", &runtimeapi.LinuxContainerResources{CpuShares: 2}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown container: %v", err)
	}
	if _, err := e.rt.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: app}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no linux resources: %v", err)
	}
	job := e.createWith(podB, "b", "job", nil, "true")
	e.start(job)
	e.waitExited(job)
	if err := e.update(job, &runtimeapi.LinuxContainerResources{CpuShares: 2}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("exited container: %v", err)
	}

	// Recorded: a restarted tripodd reports the same.
	e.d.kill()
	e.boot()
	if r := e.status(app).Resources.GetLinux(); r.MemoryLimitInBytes != 200<<20 || r.MemorySwapLimitInBytes != 200<<20 || r.CpuQuota != 150000 || r.CpusetCpus != "0" {
		t.Errorf("resources after a restart: %v", r)
	}

	// The pod's own cgroup gets the containers' sum plus the overhead.
	_, err = e.rt.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podA,
		Overhead:  &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 10000, CpuShares: 100, MemoryLimitInBytes: 16 << 20},
		Resources: &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 150000, CpuShares: 1024, MemoryLimitInBytes: 200 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]string{"cpu.cfs_quota_us": "160000", "cpu.shares": "1124", "memory.limit_in_bytes": strconv.Itoa(216 << 20)} {
		ctrl, _, _ := strings.Cut(f, ".")
		if got := cgroupFile(t, ctrl, podCg, f); got != want {
			t.Errorf("pod cgroup %s = %s, want %s", f, got, want)
		}
	}
	// Below what the pod uses: refused, the pod's limit kept.
	_, err = e.rt.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podA,
		Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 4 << 20}})
	if status.Code(err) != codes.FailedPrecondition || cgroupFile(t, "memory", podCg, "memory.limit_in_bytes") != strconv.Itoa(216<<20) {
		t.Errorf("pod limit below usage: %v, limit now %s", err, cgroupFile(t, "memory", podCg, "memory.limit_in_bytes"))
	}
	// Pod b's cgroup parent holds pod a too: recorded, not applied.
	before := cgroupFile(t, "memory", e.cgroup, "memory.limit_in_bytes")
	if _, err := e.rt.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podB,
		Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 64 << 20}}); err != nil {
		t.Fatal(err)
	}
	if after := cgroupFile(t, "memory", e.cgroup, "memory.limit_in_bytes"); after != before {
		t.Errorf("a shared cgroup parent was limited: %s → %s", before, after)
	}
	for name, c := range map[string]struct {
		req  *runtimeapi.UpdatePodSandboxResourcesRequest
		code codes.Code
	}{
		"unknown": {&runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: "nope"}, codes.NotFound},
		"no id":   {&runtimeapi.UpdatePodSandboxResourcesRequest{}, codes.InvalidArgument},
		"invalid": {&runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podA, Overhead: &runtimeapi.LinuxContainerResources{CpuShares: -1}}, codes.InvalidArgument},
	} {
		if _, err := e.rt.UpdatePodSandboxResources(ctx, c.req); status.Code(err) != c.code {
			t.Errorf("UpdatePodSandboxResources %s: %v, want %v", name, err, c.code)
		}
	}
}

// TestPodSandboxMetrics checks ListMetricDescriptors against cAdvisor's
// names and ListPodSandboxMetrics's values against the cgroup files of a
// running container and its pod's own cgroup: label sets as described,
// limits exact, usage within what changes between two reads.
func TestPodSandboxMetrics(t *testing.T) {
	v1Host(t)
	e := newPodEnv(t)
	ctx := testCtx(t)
	podA, podCg := e.ownPod("a")
	app := e.createWith(podA, "a", "app", &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 20000, CpuShares: 1024,
		MemoryLimitInBytes: 64 << 20, MemorySwapLimitInBytes: 64 << 20},
		"sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=16 2>/dev/null; head -c 1048576 /dev/zero > /tmp/written; touch /tmp/ready; exec sleep 100000")
	e.start(app)
	upper := filepath.Join(e.n.root, "runtime", "containers", app, "upper")
	waitPath(t, filepath.Join(upper, "tmp", "ready"))
	cg := podCg + "/" + app

	dr, err := e.rt.ListMetricDescriptors(ctx, &runtimeapi.ListMetricDescriptorsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	descs := map[string]*runtimeapi.MetricDescriptor{}
	for _, d := range dr.Descriptors {
		if d.Help == "" || !slices.Equal(d.LabelKeys[:6], []string{"container", "id", "image", "name", "namespace", "pod"}) {
			t.Errorf("descriptor %s: help %q, labels %v", d.Name, d.Help, d.LabelKeys)
		}
		descs[d.Name] = d
	}
	// cAdvisor's names that cgroup v1 with its memsw, kmem, pids and
	// blkio files gives, and a network namespace.
	for _, name := range []string{"container_cpu_usage_seconds_total", "container_cpu_user_seconds_total", "container_cpu_system_seconds_total",
		"container_cpu_cfs_periods_total", "container_cpu_cfs_throttled_periods_total", "container_cpu_cfs_throttled_seconds_total",
		"container_memory_usage_bytes", "container_memory_working_set_bytes", "container_memory_rss", "container_memory_cache",
		"container_memory_swap", "container_memory_failcnt", "container_memory_failures_total", "container_memory_kernel_usage",
		"container_memory_mapped_file", "container_memory_max_usage_bytes", "container_oom_events_total",
		"container_network_receive_bytes_total", "container_network_transmit_bytes_total", "container_network_receive_packets_total",
		"container_network_transmit_packets_total", "container_network_receive_errors_total", "container_network_transmit_errors_total",
		"container_network_receive_packets_dropped_total", "container_network_transmit_packets_dropped_total",
		"container_fs_usage_bytes", "container_fs_limit_bytes", "container_fs_inodes_free", "container_fs_inodes_total",
		"container_fs_reads_bytes_total", "container_fs_writes_bytes_total", "container_fs_reads_total", "container_fs_writes_total",
		"container_blkio_device_usage_total", "container_processes", "container_threads", "container_threads_max",
		"container_file_descriptors", "container_sockets", "container_spec_cpu_period", "container_spec_cpu_quota", "container_spec_cpu_shares",
		"container_spec_memory_limit_bytes", "container_spec_memory_swap_limit_bytes", "container_spec_memory_reservation_limit_bytes",
		"container_last_seen", "container_start_time_seconds"} {
		if descs[name] == nil {
			t.Errorf("no descriptor %s", name)
		}
	}
	m, _ := cgroups.Discover()
	if _, hugetlb := m.V1["hugetlb"]; (descs["container_hugetlb_usage_bytes"] != nil) != hugetlb {
		t.Errorf("hugetlb descriptors without a hugetlb controller, or the reverse")
	}

	mr, err := e.rt.ListPodSandboxMetrics(ctx, &runtimeapi.ListPodSandboxMetricsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var pm *runtimeapi.PodSandboxMetrics
	for _, p := range mr.PodMetrics {
		if p.PodSandboxId == podA {
			pm = p
		}
	}
	if pm == nil || len(pm.ContainerMetrics) != 1 || pm.ContainerMetrics[0].ContainerId != app {
		t.Fatalf("pod metrics: %v", pm)
	}
	// Every metric has the labels its descriptor names.
	check := func(ms []*runtimeapi.Metric) map[string][]*runtimeapi.Metric {
		by := map[string][]*runtimeapi.Metric{}
		for _, x := range ms {
			d := descs[x.Name]
			if d == nil || len(x.LabelValues) != len(d.LabelKeys) {
				t.Errorf("metric %s: labels %v for descriptor %v", x.Name, x.LabelValues, d)
				continue
			}
			by[x.Name] = append(by[x.Name], x)
		}
		return by
	}
	ctr, podLevel := check(pm.ContainerMetrics[0].Metrics), check(pm.Metrics)
	value := func(by map[string][]*runtimeapi.Metric, name string) uint64 {
		t.Helper()
		if len(by[name]) != 1 {
			t.Fatalf("%s: %d values", name, len(by[name]))
		}
		return by[name][0].Value.Value
	}
	st := e.status(app)
	if l := ctr["container_memory_usage_bytes"][0].LabelValues; !slices.Equal(l, []string{"app", cg, e.image, app, "test", "a"}) {
		t.Errorf("container labels %v", l)
	}
	memStat := map[string]uint64{}
	for _, line := range strings.Split(cgroupFile(t, "memory", cg, "memory.stat"), "\n") {
		k, v, _ := strings.Cut(line, " ")
		memStat[k], _ = strconv.ParseUint(v, 10, 64)
	}
	for name, want := range map[string]uint64{
		// Limits: exact.
		"container_spec_memory_limit_bytes":      cgroupUint(t, "memory", cg, "memory.limit_in_bytes"),
		"container_spec_memory_swap_limit_bytes": cgroupUint(t, "memory", cg, "memory.memsw.limit_in_bytes"),
		"container_spec_cpu_quota":               cgroupUint(t, "cpu", cg, "cpu.cfs_quota_us"),
		"container_spec_cpu_period":              cgroupUint(t, "cpu", cg, "cpu.cfs_period_us"),
		"container_spec_cpu_shares":              cgroupUint(t, "cpu", cg, "cpu.shares"),
		"container_oom_events_total":             0,
		"container_processes":                    1,
		"container_threads":                      1,
		"container_start_time_seconds":           uint64(st.StartedAt / 1e9),
	} {
		if got := value(ctr, name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	if got := value(ctr, "container_spec_memory_limit_bytes"); got != 64<<20 {
		t.Errorf("memory limit %d", got)
	}
	// Usage: the sleeping container's memory moves little between reads.
	for name, c := range map[string]struct{ want, slack uint64 }{
		"container_memory_usage_bytes":       {cgroupUint(t, "memory", cg, "memory.usage_in_bytes"), 2 << 20},
		"container_memory_cache":             {memStat["total_cache"], 2 << 20},
		"container_memory_rss":               {memStat["total_rss"], 2 << 20},
		"container_memory_mapped_file":       {memStat["total_mapped_file"], 2 << 20},
		"container_memory_working_set_bytes": {cgroupUint(t, "memory", cg, "memory.usage_in_bytes") - memStat["total_inactive_file"], 2 << 20},
		"container_memory_kernel_usage":      {cgroupUint(t, "memory", cg, "memory.kmem.usage_in_bytes"), 2 << 20},
	} {
		if got := value(ctr, name); !within(got, c.want, c.slack) {
			t.Errorf("%s = %d, cgroup says %d", name, got, c.want)
		}
	}
	if value(ctr, "container_memory_cache") < 16<<20 {
		t.Errorf("the 16 MiB in tmpfs are not in the cache: %d", value(ctr, "container_memory_cache"))
	}
	var cpuSum uint64
	for _, x := range ctr["container_cpu_usage_seconds_total"] {
		if !strings.HasPrefix(x.LabelValues[6], "cpu") {
			t.Errorf("cpu label %q", x.LabelValues[6])
		}
		cpuSum += x.Value.Value
	}
	if cpuSum > cgroupUint(t, "cpuacct", cg, "cpuacct.usage")/1e9 {
		t.Errorf("cpu seconds %d above cpuacct.usage", cpuSum)
	}
	cpuStat := map[string]uint64{}
	for _, line := range strings.Split(cgroupFile(t, "cpu", cg, "cpu.stat"), "\n") {
		k, v, _ := strings.Cut(line, " ")
		cpuStat[k], _ = strconv.ParseUint(v, 10, 64)
	}
	if p := value(ctr, "container_cpu_cfs_periods_total"); p > cpuStat["nr_periods"] {
		t.Errorf("cfs periods %d, above cpu.stat's %d read after", p, cpuStat["nr_periods"])
	}
	if got := value(ctr, "container_threads_max"); got != 0 || cgroupFile(t, "pids", cg, "pids.max") != "max" {
		t.Errorf("threads max %d (0 is no limit), pids.max %s", got, cgroupFile(t, "pids", cg, "pids.max"))
	}
	if got := len(ctr["container_memory_failures_total"]); got != 4 {
		t.Errorf("%d memory failure series, want 4", got)
	}
	if fds := value(ctr, "container_file_descriptors"); fds < 3 {
		t.Errorf("file descriptors %d", fds)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(upper, &sfs); err != nil {
		t.Fatal(err)
	}
	if got := value(ctr, "container_fs_limit_bytes"); got != sfs.Blocks*uint64(sfs.Bsize) {
		t.Errorf("fs limit %d, statfs %d", got, sfs.Blocks*uint64(sfs.Bsize))
	}
	if got := value(ctr, "container_fs_inodes_total"); got != sfs.Files {
		t.Errorf("fs inodes %d, statfs %d", got, sfs.Files)
	}
	if got := value(ctr, "container_fs_usage_bytes"); got < 1<<20 || got > 1<<20+256<<10 {
		t.Errorf("fs usage %d after a 1 MiB file", got)
	}

	if _, ok := psiTotal(t, cg, "memory.pressure", "full"); ok {
		after, _ := psiTotal(t, cg, "memory.pressure", "full")
		if got := value(ctr, "container_pressure_memory_stalled_seconds_total"); got > after/1e6 {
			t.Errorf("memory stalled %d s, memory.pressure %d µs", got, after)
		}
	} else if descs["container_pressure_cpu_waiting_seconds_total"] != nil {
		t.Errorf("pressure descriptors without pressure files for %s", cg)
	}

	// The pod: its own cgroup and its network, with container "".
	if got, want := value(podLevel, "container_memory_usage_bytes"), cgroupUint(t, "memory", podCg, "memory.usage_in_bytes"); !within(got, want, 2<<20) {
		t.Errorf("pod memory %d, cgroup %d", got, want)
	}
	rx := podLevel["container_network_receive_bytes_total"]
	if len(rx) != 1 || !slices.Equal(rx[0].LabelValues, []string{"", podCg, "", "", "test", "a", "eth0"}) {
		t.Errorf("pod network series: %v", rx)
	}
	if len(podLevel["container_processes"]) != 0 || len(podLevel["container_fs_usage_bytes"]) != 0 {
		t.Error("container-only metrics at pod level")
	}
}
