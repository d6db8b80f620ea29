package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

func TestParseMountinfo(t *testing.T) {
	// This VM's table: v1 with cpu and cpuacct as separate mounts, a
	// controller-less cgroup2 beside them, and a mount point with a space.
	hybrid := `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids\040x rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	m, err := ParseMountinfo(strings.NewReader(hybrid))
	if err != nil {
		t.Fatal(err)
	}
	if m.V2() {
		t.Fatal("hybrid host taken for v2")
	}
	for ctrl, mnt := range map[string]string{"cpu": "/sys/fs/cgroup/cpu", "cpuacct": "/sys/fs/cgroup/cpuacct", "memory": "/sys/fs/cgroup/memory",
		"pids": "/sys/fs/cgroup/pids x", "name=systemd": "/sys/fs/cgroup/systemd"} {
		if m.V1[ctrl].Mount != mnt {
			t.Errorf("%s mounted at %q, want %q", ctrl, m.V1[ctrl].Mount, mnt)
		}
	}
	if _, ok := m.V1["xattr"]; ok {
		t.Error("the xattr option taken for a controller")
	}
	if m.Unified == nil || m.Unified.Mount != "/sys/fs/cgroup/unified" {
		t.Errorf("unified: %+v", m.Unified)
	}
	cg := m.Open("tp/pod/../ctr")
	if cg.Path != "/tp/ctr" || cg.dir("cpuacct") != "/sys/fs/cgroup/cpuacct/tp/ctr" || cg.dir("hugetlb") != "" {
		t.Errorf("paths: %q %q %q", cg.Path, cg.dir("cpuacct"), cg.dir("hugetlb"))
	}

	// cpu and cpuacct co-mounted, and a mount made in a cgroup namespace.
	m, err = ParseMountinfo(strings.NewReader("32 31 0:29 /kubepods /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d := m.Open("/kubepods/pod1").dir("cpuacct"); d != "/sys/fs/cgroup/cpu,cpuacct/pod1" {
		t.Errorf("namespaced root: %q", d)
	}

	m, err = ParseMountinfo(strings.NewReader("30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"))
	if err != nil || !m.V2() || m.Open("/a").dir("memory") != "/sys/fs/cgroup/a" {
		t.Fatalf("v2: %v %+v", err, m)
	}
	if _, err := ParseMountinfo(strings.NewReader("22 1 0:21 / /proc rw - proc proc rw\n")); err == nil {
		t.Error("no cgroup mount accepted")
	}
}

func TestSystemdPath(t *testing.T) {
	for in, want := range map[string]string{
		"system.slice:tripod:abc":                      "/system.slice/tripod-abc.scope",
		"kubepods-burstable-pod12.slice:cri-tripod:id": "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/cri-tripod-id.scope",
		"-.slice:tripod:x":                             "/tripod-x.scope",
	} {
		if got, err := SystemdPath(in); err != nil || got != want {
			t.Errorf("SystemdPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"a:b", "foo:tripod:x", "a--b.slice:p:x"} {
		if _, err := SystemdPath(bad); err == nil {
			t.Errorf("SystemdPath(%q) accepted", bad)
		}
	}
}

// v2Fixture writes a cgroup2 hierarchy in the kernel's formats (as a 6.x
// kernel prints them) and returns its mounts and the container's path.
func v2Fixture(t *testing.T) (*Mounts, string, string) {
	root := t.TempDir()
	dir := filepath.Join(root, "kubepods", "pod1", "ctr")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"cpu.stat":            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\ncore_sched.force_idle_usec 0\nnr_periods 40\nnr_throttled 7\nthrottled_usec 350000\nnr_bursts 0\nburst_usec 0\n",
		"cpu.max":             "20000 100000\n",
		"cpu.weight":          "100\n",
		"cpuset.cpus":         "\n",
		"cpuset.mems":         "\n",
		"memory.current":      "52428800\n",
		"memory.peak":         "62914560\n",
		"memory.max":          "67108864\n",
		"memory.low":          "0\n",
		"memory.swap.current": "4096\n",
		"memory.swap.max":     "0\n",
		"memory.stat": "anon 31457280\nfile 20971520\nkernel 1048576\nkernel_stack 65536\npagetables 131072\nsec_pagetables 0\npercpu 0\nsock 0\nvmalloc 0\nshmem 0\n" +
			"file_mapped 4194304\nfile_dirty 0\nfile_writeback 0\nswapcached 0\nanon_thp 0\ninactive_anon 31457280\nactive_anon 0\n" +
			"inactive_file 8388608\nactive_file 12582912\nunevictable 0\nslab_reclaimable 0\nslab_unreclaimable 0\nslab 0\n" +
			"pgfault 12345\npgmajfault 12\n",
		"memory.events":        "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n",
		"pids.current":         "5\n",
		"pids.max":             "max\n",
		"hugetlb.2MB.current":  "4194304\n",
		"hugetlb.2MB.max":      "max\n",
		"hugetlb.2MB.rsvd.max": "max\n",
		"hugetlb.1GB.current":  "0\n",
		"hugetlb.1GB.max":      "0\n",
		"io.stat":              "253:0 rbytes=1048576 wbytes=2097152 rios=16 wios=32 dbytes=0 dios=0\n8:16 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
		"cpu.pressure":         "some avg10=1.50 avg60=0.75 avg300=0.10 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=6543\n",
		"memory.pressure":      "some avg10=0.00 avg60=0.00 avg300=0.00 total=42\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=41\n",
		"io.pressure":          "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=3\n",
		"cgroup.procs":         "1234\n1240\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := ParseMountinfo(strings.NewReader(fmt.Sprintf("30 23 0:26 / %s rw - cgroup2 cgroup2 rw\n", root)))
	if err != nil {
		t.Fatal(err)
	}
	return m, "/kubepods/pod1/ctr", dir
}

func TestStatsV2(t *testing.T) {
	m, path, _ := v2Fixture(t)
	s, err := m.Open(path).Stats()
	if err != nil {
		t.Fatal(err)
	}
	if c := s.CPU; c.UsageNs != 2_500_000_000 || c.UserNs != 2_000_000_000 || c.SystemNs != 500_000_000 ||
		c.Periods != 40 || c.ThrottledPeriods != 7 || c.ThrottledNs != 350_000_000 || len(c.PerCPUNs) != 0 {
		t.Errorf("cpu: %+v", c)
	}
	mem := s.Memory
	if mem.Usage != 52428800 || mem.MaxUsage != 62914560 || mem.Limit != 67108864 || mem.RSS != 31457280 || mem.Cache != 20971520 ||
		mem.MappedFile != 4194304 || mem.Kernel != 1048576 || mem.Swap != 4096 || !mem.HasSwap || mem.InactiveFile != 8388608 ||
		mem.WorkingSet != 52428800-8388608 || mem.Failcnt != 3 || mem.OOMEvents != 2 || mem.OOMKills != 1 ||
		mem.Pgfault != 12345 || mem.Pgmajfault != 12 || mem.HierarchyPgfault != 12345 {
		t.Errorf("memory: %+v", mem)
	}
	if s.Pids.Current != 5 || s.Pids.Limit != Unlimited {
		t.Errorf("pids: %+v", s.Pids)
	}
	if len(s.Hugetlb) != 2 || s.Hugetlb["2MB"].Usage != 4194304 {
		t.Errorf("hugetlb: %+v", s.Hugetlb)
	}
	if len(s.IO) != 2 || s.IO[0] != (DeviceIO{Major: 253, Minor: 0, ReadBytes: 1048576, WriteBytes: 2097152, Reads: 16, Writes: 32}) {
		t.Errorf("io: %+v", s.IO)
	}
	if p := s.Pressure; p == nil || p.CPU.Some.TotalUs != 123456 || p.CPU.Some.Avg10 != 1.5 || p.CPU.Full.TotalUs != 6543 ||
		p.Memory.Full.TotalUs != 41 || p.IO.Some.TotalUs != 7 {
		t.Errorf("pressure: %+v", p)
	}
	l, err := m.Open(path).Limits()
	if err != nil {
		t.Fatal(err)
	}
	if l.CPUQuota != 20000 || l.CPUPeriod != 100000 || l.CPUShares != 1024 || l.MemoryLimit != 67108864 || l.MemorySwap != 67108864 ||
		l.Hugepages["2MB"] != Unlimited || l.Hugepages["1GB"] != 0 || len(l.Hugepages) != 2 {
		t.Errorf("limits: %+v", l)
	}
	procs, err := m.Open(path).Procs()
	if err != nil || len(procs) != 2 || procs[0] != 1234 {
		t.Errorf("procs: %v %v", procs, err)
	}
	if _, err := m.Open("/kubepods/gone").Stats(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stats of a missing cgroup: %v", err)
	}
}

func TestSharesWeight(t *testing.T) {
	for shares, weight := range map[uint64]uint64{2: 1, 1024: 100, 262144: 10000, 512: 59} {
		if w := SharesToWeight(shares); w != weight {
			t.Errorf("SharesToWeight(%d) = %d, want %d", shares, w, weight)
		}
		if s := WeightToShares(weight); SharesToWeight(s) != weight {
			t.Errorf("WeightToShares(%d) = %d, which maps back to %d", weight, s, SharesToWeight(s))
		}
	}
	if WeightToShares(100) != 1024 {
		t.Errorf("WeightToShares(100) = %d", WeightToShares(100))
	}
}

func read(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestSetV2(t *testing.T) {
	m, path, dir := v2Fixture(t)
	cg := m.Open(path)
	err := cg.Set(Resources{CPUShares: 512, CPUQuota: 50000, MemoryLimit: 100 << 20, MemorySwap: 100 << 20,
		Hugepages: map[string]uint64{"2MB": 8 << 20}, Unified: map[string]string{"memory.low": "1048576"}})
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{"cpu.weight": "59", "cpu.max": "50000 100000", "memory.max": "104857600",
		"memory.swap.max": "0", "hugetlb.2MB.max": "8388608", "memory.low": "1048576"} {
		if got := read(t, dir, file); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	// Below memory.current (50 MiB): refused before anything is written.
	err = cg.Set(Resources{CPUQuota: 10000, MemoryLimit: 10 << 20})
	if !errors.Is(err, ErrBelowUsage) {
		t.Fatalf("limit below usage: %v", err)
	}
	if read(t, dir, "memory.max") != "104857600" || read(t, dir, "cpu.max") != "50000 100000" {
		t.Error("a refused update changed limits")
	}
	// A write that fails (memory.max made unwritable) undoes the ones
	// before it.
	os.Remove(filepath.Join(dir, "memory.max"))
	os.Mkdir(filepath.Join(dir, "memory.max"), 0o755)
	err = cg.Set(Resources{CPUShares: 2, CPUQuota: -1, MemoryLimit: 200 << 20})
	if err == nil || !strings.Contains(err.Error(), "memory.max") {
		t.Fatalf("failing write: %v", err)
	}
	if read(t, dir, "cpu.weight") != "59" || read(t, dir, "cpu.max") != "50000 100000" {
		t.Errorf("not rolled back: weight %s, cpu.max %s", read(t, dir, "cpu.weight"), read(t, dir, "cpu.max"))
	}
	for _, bad := range []Resources{{Unified: map[string]string{"../x.max": "1"}}, {Unified: map[string]string{"cgroup.procs": "1"}},
		{Unified: map[string]string{"io.max": "1"}}, {Hugepages: map[string]uint64{"16GB": 1}}} {
		if err := cg.Set(bad); err == nil {
			t.Errorf("Set(%+v) accepted", bad)
		}
	}
}

// v1Cgroup makes a cgroup named after the test in every v1 hierarchy of
// this host (removed at the end) and returns it.
func v1Cgroup(t *testing.T) (*Mounts, *Cgroup) {
	cnitest.Root(t)
	m, err := Discover()
	if err != nil {
		t.Fatal(err)
	}
	if m.V2() {
		t.Skip("skipped: this host runs cgroup v2; the v1 tests need v1 hierarchies (v2 is covered by the fixture tests)")
	}
	cg := m.Open("/" + cnitest.Tag(t) + "-cg")
	var dirs []string
	for ctrl := range m.V1 {
		if strings.HasPrefix(ctrl, "name=") {
			continue
		}
		d := cg.dir(ctrl)
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	if d := cg.unifiedDir(); d != "" {
		os.Mkdir(d, 0o755)
		dirs = append(dirs, d)
	}
	// A new cpuset cgroup starts with no CPUs: give it its parent's.
	if cs := cg.dir("cpuset"); cs != "" {
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if err := writeFile(cs, f, read(t, filepath.Dir(cs), f)); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(func() {
		for _, d := range dirs {
			for i := 0; i < 50; i++ {
				if err := os.Remove(d); err == nil || errors.Is(err, fs.ErrNotExist) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	return m, cg
}

// startIn starts a shell command inside cg (in every hierarchy) and kills
// it at the end of the test.
func startIn(t *testing.T, m *Mounts, cg *Cgroup, script string) *exec.Cmd {
	cmd := exec.Command("/bin/sh", "-c", "read x; "+script)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := strconv.Itoa(cmd.Process.Pid)
	for ctrl := range m.V1 {
		if !strings.HasPrefix(ctrl, "name=") {
			if err := writeFile(cg.dir(ctrl), "cgroup.procs", pid); err != nil {
				t.Fatal(err)
			}
		}
	}
	if d := cg.unifiedDir(); d != "" {
		writeFile(d, "cgroup.procs", pid)
	}
	in.Write([]byte("go\n"))
	return cmd
}

// TestStatsV1 reads a real v1 cgroup on this host while a process in it
// burns CPU and holds memory in a tmpfs file, and checks the numbers
// against the kernel's own files.
func TestStatsV1(t *testing.T) {
	m, cg := v1Cgroup(t)
	shm := t.TempDir()
	if err := syscall.Mount("tmpfs", shm, "tmpfs", 0, "size=64m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(shm, syscall.MNT_DETACH) })
	startIn(t, m, cg, fmt.Sprintf("dd if=/dev/zero of=%s/fill bs=1M count=24 2>/dev/null; touch %s/done; while :; do :; done", shm, shm))
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(shm, "done")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the filler never finished")
		}
		time.Sleep(20 * time.Millisecond)
	}
	s1, err := cg.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// The 24 MiB written to tmpfs are charged to this cgroup as cache
	// (shmem), and stay in its working set: tmpfs pages are not
	// reclaimable without swap.
	if s1.Memory.Usage < 24<<20 || s1.Memory.Cache < 24<<20 || s1.Memory.WorkingSet > s1.Memory.Usage || s1.Memory.Limit != Unlimited {
		t.Errorf("memory after 24 MiB in tmpfs: %+v", s1.Memory)
	}
	kernelUsage, _ := strconv.ParseUint(read(t, cg.dir("memory"), "memory.usage_in_bytes"), 10, 64)
	if diff := int64(kernelUsage) - int64(s1.Memory.Usage); diff < -1<<20 || diff > 1<<20 {
		t.Errorf("usage %d, memory.usage_in_bytes %d", s1.Memory.Usage, kernelUsage)
	}
	if cg.dir("pids") != "" && (!s1.Pids.Has || s1.Pids.Current != 1) {
		t.Errorf("pids: %+v", s1.Pids)
	}
	if len(s1.CPU.PerCPUNs) == 0 {
		t.Error("no per-CPU usage on v1")
	}
	// The loop burns CPU: usage rises between two reads.
	for {
		s2, err := cg.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if s2.CPU.UsageNs > s1.CPU.UsageNs+50_000_000 {
			if s2.CPU.UserNs+s2.CPU.SystemNs == 0 {
				t.Errorf("cpu: no user/system split: %+v", s2.CPU)
			}
			var sum uint64
			for _, v := range s2.CPU.PerCPUNs {
				sum += v
			}
			if sum < s1.CPU.UsageNs {
				t.Errorf("per-CPU usage %d below an earlier total %d", sum, s1.CPU.UsageNs)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cpu usage did not rise: %d then %d", s1.CPU.UsageNs, s2.CPU.UsageNs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m.Unified != nil && (s1.Pressure == nil) {
		t.Error("no pressure information from the unified companion hierarchy")
	}
	ps, err := cg.Processes("/proc")
	if err != nil || ps.Processes != 1 || ps.Threads != 1 || ps.FDs < 3 || ps.OpenFilesSoft == 0 {
		t.Errorf("processes: %+v %v", ps, err)
	}

	// Limits, then a memory limit below what tmpfs holds: the kernel
	// cannot reclaim it, refuses, and the old limits stay.
	if err := cg.Set(Resources{CPUShares: 512, CPUPeriod: 50000, CPUQuota: 25000, MemoryLimit: 64 << 20, MemorySwap: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{"cpu.shares": "512", "cpu.cfs_period_us": "50000", "cpu.cfs_quota_us": "25000"} {
		if got := read(t, cg.dir("cpu"), file); got != want {
			t.Errorf("%s = %s, want %s", file, got, want)
		}
	}
	if got := read(t, cg.dir("memory"), "memory.limit_in_bytes"); got != strconv.Itoa(64<<20) {
		t.Errorf("memory.limit_in_bytes = %s", got)
	}
	err = cg.Set(Resources{CPUQuota: 10000, MemoryLimit: 8 << 20})
	if !errors.Is(err, ErrBelowUsage) {
		t.Fatalf("limit below usage: %v", err)
	}
	if got := read(t, cg.dir("memory"), "memory.limit_in_bytes"); got != strconv.Itoa(64<<20) {
		t.Errorf("after the refused update memory.limit_in_bytes = %s", got)
	}
	if got := read(t, cg.dir("cpu"), "cpu.cfs_quota_us"); got != "25000" {
		t.Errorf("after the refused update cpu.cfs_quota_us = %s (not rolled back)", got)
	}
	l, err := cg.Limits()
	if err != nil || l.CPUShares != 512 || l.CPUQuota != 25000 || l.CPUPeriod != 50000 || l.MemoryLimit != 64<<20 {
		t.Errorf("limits: %+v %v", l, err)
	}
	// Raising both memory and memory+swap needs memsw written first.
	if err := cg.Set(Resources{MemoryLimit: 128 << 20, MemorySwap: 128 << 20}); err != nil {
		t.Fatal(err)
	}
	// Memory alone keeps a no-swap container without swap.
	if err := cg.Set(Resources{MemoryLimit: 96 << 20}); err != nil {
		t.Fatal(err)
	}
	if l, _ := cg.Limits(); l.MemoryLimit != 96<<20 || (l.MemorySwap != 96<<20 && l.MemorySwap != Unlimited) {
		t.Errorf("limits after lowering memory alone: %+v", l)
	}
	if err := cg.Set(Resources{Unified: map[string]string{"memory.high": "1"}}); err == nil {
		t.Error("unified resources accepted on v1")
	}
}
