package cgroups

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Stats is what the kernel accounts for a cgroup (its subtree included).
// Counts the host's kernel does not provide stay zero; the Has* fields say
// which groups were there.
type Stats struct {
	CPU     CPU
	Memory  Memory
	Pids    Pids
	Hugetlb map[string]Hugetlb // by page size, "2MB"
	IO      []DeviceIO
	// Pressure is nil where the kernel keeps no pressure stall
	// information for the cgroup (v1 without the unified companion).
	Pressure *Pressure
}

// CPU times are in nanoseconds.
type CPU struct {
	UsageNs, UserNs, SystemNs uint64
	// PerCPUNs is per logical CPU (v1 only: v2 keeps no such split).
	PerCPUNs []uint64
	// CFS bandwidth: enforcement periods elapsed, those throttled, and
	// the time throttled.
	Periods, ThrottledPeriods, ThrottledNs uint64
}

// Memory sizes are in bytes.
type Memory struct {
	Usage, MaxUsage uint64
	// Limit is Unlimited when there is none.
	Limit uint64
	// WorkingSet is Usage less the inactive file cache: what the kernel
	// cannot reclaim without pressure (kubelet's eviction signal).
	WorkingSet                                uint64
	Cache, RSS, MappedFile, Kernel, Swap      uint64
	ActiveFile, InactiveFile                  uint64
	HasSwap                                   bool
	Failcnt                                   uint64
	Pgfault, Pgmajfault                       uint64 // this cgroup's own (v1) or its subtree's (v2)
	HierarchyPgfault, HierarchyPgmajfault     uint64
	OOMEvents, OOMKills                       uint64
	HasMaxUsage, HasKernel, HasOOM, HasMemory bool
}

// Pids counts tasks (threads); Limit is Unlimited when there is none.
type Pids struct {
	Current, Limit uint64
	Has            bool
}

// Hugetlb usage of one page size, in bytes.
type Hugetlb struct {
	Usage, MaxUsage uint64
	HasMaxUsage     bool
}

// DeviceIO is the block I/O done on one device.
type DeviceIO struct {
	Major, Minor                         uint64
	ReadBytes, WriteBytes, Reads, Writes uint64
}

// Pressure is pressure stall information per resource.
type Pressure struct{ CPU, Memory, IO PSI }

// PSI is one resource's pressure: Some is the share of time some tasks
// were stalled, Full all of them.
type PSI struct{ Some, Full PSIData }

// PSIData holds the averages (percent) and the total stall in
// microseconds.
type PSIData struct {
	Avg10, Avg60, Avg300 float64
	TotalUs              uint64
}

// Stats reads the cgroup's accounting. A cgroup that does not exist (the
// container is gone) is an error matching fs.ErrNotExist.
func (c *Cgroup) Stats() (*Stats, error) {
	if !c.Exists() {
		return nil, fmt.Errorf("cgroup %s: %w", c.Path, fs.ErrNotExist)
	}
	s := &Stats{}
	var err error
	if c.m.V2() {
		err = c.statsV2(s)
	} else {
		err = c.statsV1(s)
	}
	if err != nil {
		return nil, err
	}
	if d := c.unifiedDir(); d != "" {
		if s.Pressure, err = readPressure(d); err != nil {
			return nil, err
		}
	}
	// Removed while being read: the partial numbers would mislead.
	if !c.Exists() {
		return nil, fmt.Errorf("cgroup %s: %w", c.Path, fs.ErrNotExist)
	}
	return s, nil
}

func (c *Cgroup) statsV1(s *Stats) error {
	acct := c.dir("cpuacct")
	var err error
	var ok bool
	if s.CPU.UsageNs, _, err = readUint(acct, "cpuacct.usage"); err != nil {
		return err
	}
	user, okU, err := readUint(acct, "cpuacct.usage_user")
	if err != nil {
		return err
	}
	sys, okS, err := readUint(acct, "cpuacct.usage_sys")
	if err != nil {
		return err
	}
	if okU && okS {
		s.CPU.UserNs, s.CPU.SystemNs = user, sys
	} else {
		// Older kernels: cpuacct.stat in USER_HZ ticks (100 per second).
		st, err := readKeyed(acct, "cpuacct.stat")
		if err != nil {
			return err
		}
		s.CPU.UserNs, s.CPU.SystemNs = st["user"]*10_000_000, st["system"]*10_000_000
	}
	if s.CPU.PerCPUNs, _, err = readInts(acct, "cpuacct.usage_percpu"); err != nil {
		return err
	}
	cst, err := readKeyed(c.dir("cpu"), "cpu.stat")
	if err != nil {
		return err
	}
	s.CPU.Periods, s.CPU.ThrottledPeriods, s.CPU.ThrottledNs = cst["nr_periods"], cst["nr_throttled"], cst["throttled_time"]

	mem := c.dir("memory")
	m := &s.Memory
	if m.Usage, m.HasMemory, err = readUint(mem, "memory.usage_in_bytes"); err != nil {
		return err
	}
	if m.MaxUsage, m.HasMaxUsage, err = readUint(mem, "memory.max_usage_in_bytes"); err != nil {
		return err
	}
	if m.Limit, ok, err = readUint(mem, "memory.limit_in_bytes"); err != nil {
		return err
	} else if !ok {
		m.Limit = Unlimited
	}
	if m.Failcnt, _, err = readUint(mem, "memory.failcnt"); err != nil {
		return err
	}
	if m.Kernel, m.HasKernel, err = readUint(mem, "memory.kmem.usage_in_bytes"); err != nil {
		return err
	}
	ms, err := readKeyed(mem, "memory.stat")
	if err != nil {
		return err
	}
	m.Cache, m.RSS, m.MappedFile = ms["total_cache"], ms["total_rss"], ms["total_mapped_file"]
	m.ActiveFile, m.InactiveFile = ms["total_active_file"], ms["total_inactive_file"]
	m.Pgfault, m.Pgmajfault = ms["pgfault"], ms["pgmajfault"]
	m.HierarchyPgfault, m.HierarchyPgmajfault = ms["total_pgfault"], ms["total_pgmajfault"]
	if v, ok := ms["total_swap"]; ok {
		m.Swap, m.HasSwap = v, true
	} else if memsw, ok, err := readUint(mem, "memory.memsw.usage_in_bytes"); err != nil {
		return err
	} else if ok && memsw >= m.Usage {
		m.Swap, m.HasSwap = memsw-m.Usage, true
	}
	oom, err := readKeyed(mem, "memory.oom_control")
	if err != nil {
		return err
	}
	if v, ok := oom["oom_kill"]; ok {
		// v1 counts kills only; each is an OOM event.
		m.OOMKills, m.OOMEvents, m.HasOOM = v, v, true
	}
	m.WorkingSet = sub(m.Usage, m.InactiveFile)

	if err := readPids(c.dir("pids"), &s.Pids); err != nil {
		return err
	}
	if s.Hugetlb, err = readHugetlb(c.dir("hugetlb"), false); err != nil {
		return err
	}
	s.IO, err = readBlkioV1(c.dir("blkio"))
	return err
}

func (c *Cgroup) statsV2(s *Stats) error {
	d := c.unifiedDir()
	cst, err := readKeyed(d, "cpu.stat")
	if err != nil {
		return err
	}
	s.CPU.UsageNs, s.CPU.UserNs, s.CPU.SystemNs = cst["usage_usec"]*1000, cst["user_usec"]*1000, cst["system_usec"]*1000
	s.CPU.Periods, s.CPU.ThrottledPeriods, s.CPU.ThrottledNs = cst["nr_periods"], cst["nr_throttled"], cst["throttled_usec"]*1000

	m := &s.Memory
	var ok bool
	if m.Usage, m.HasMemory, err = readUint(d, "memory.current"); err != nil {
		return err
	}
	if m.MaxUsage, m.HasMaxUsage, err = readUint(d, "memory.peak"); err != nil {
		return err
	}
	if m.Limit, ok, err = readUint(d, "memory.max"); err != nil {
		return err
	} else if !ok {
		m.Limit = Unlimited
	}
	ms, err := readKeyed(d, "memory.stat")
	if err != nil {
		return err
	}
	m.Cache, m.RSS, m.MappedFile = ms["file"], ms["anon"], ms["file_mapped"]
	m.ActiveFile, m.InactiveFile = ms["active_file"], ms["inactive_file"]
	// v2's memory.stat is the subtree's only.
	m.Pgfault, m.Pgmajfault = ms["pgfault"], ms["pgmajfault"]
	m.HierarchyPgfault, m.HierarchyPgmajfault = m.Pgfault, m.Pgmajfault
	if k, ok := ms["kernel"]; ok {
		m.Kernel, m.HasKernel = k, true
	} else if ms != nil {
		// Before 5.18 memory.stat has no "kernel" line: its parts.
		m.Kernel, m.HasKernel = ms["kernel_stack"]+ms["slab"]+ms["sock"]+ms["percpu"]+ms["pagetables"], true
	}
	if m.Swap, m.HasSwap, err = readUint(d, "memory.swap.current"); err != nil {
		return err
	}
	ev, err := readKeyed(d, "memory.events")
	if err != nil {
		return err
	}
	if ev != nil {
		m.Failcnt, m.OOMEvents, m.OOMKills, m.HasOOM = ev["max"], ev["oom"], ev["oom_kill"], true
	}
	m.WorkingSet = sub(m.Usage, m.InactiveFile)

	if err := readPids(d, &s.Pids); err != nil {
		return err
	}
	if s.Hugetlb, err = readHugetlb(d, true); err != nil {
		return err
	}
	s.IO, err = readIOStat(d)
	return err
}

func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}

func readPids(dir string, p *Pids) error {
	var err error
	if p.Current, p.Has, err = readUint(dir, "pids.current"); err != nil || !p.Has {
		return err
	}
	var ok bool
	if p.Limit, ok, err = readUint(dir, "pids.max"); err != nil {
		return err
	} else if !ok {
		p.Limit = Unlimited
	}
	return nil
}

// hugePageSizes lists the page sizes the controller has files for.
func hugePageSizes(dir string, v2 bool) ([]string, error) {
	suffix := ".limit_in_bytes"
	if v2 {
		suffix = ".max"
	}
	files, err := filepath.Glob(filepath.Join(dir, "hugetlb.*"+suffix))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range files {
		size := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "hugetlb."), suffix)
		if size != "" && !strings.Contains(size, ".") {
			out = append(out, size)
		}
	}
	return out, nil
}

func readHugetlb(dir string, v2 bool) (map[string]Hugetlb, error) {
	if dir == "" {
		return nil, nil
	}
	sizes, err := hugePageSizes(dir, v2)
	if err != nil || len(sizes) == 0 {
		return nil, err
	}
	out := map[string]Hugetlb{}
	for _, size := range sizes {
		var h Hugetlb
		if v2 {
			if h.Usage, _, err = readUint(dir, "hugetlb."+size+".current"); err != nil {
				return nil, err
			}
		} else {
			if h.Usage, _, err = readUint(dir, "hugetlb."+size+".usage_in_bytes"); err != nil {
				return nil, err
			}
			if h.MaxUsage, h.HasMaxUsage, err = readUint(dir, "hugetlb."+size+".max_usage_in_bytes"); err != nil {
				return nil, err
			}
		}
		out[size] = h
	}
	return out, nil
}

func parseDev(s string) (uint64, uint64, bool) {
	ma, mi, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, false
	}
	a, err1 := strconv.ParseUint(ma, 10, 64)
	b, err2 := strconv.ParseUint(mi, 10, 64)
	return a, b, err1 == nil && err2 == nil
}

// readIOStat reads v2's io.stat: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 ...".
func readIOStat(dir string) ([]DeviceIO, error) {
	s, ok, err := readString(dir, "io.stat")
	if !ok || err != nil {
		return nil, err
	}
	var out []DeviceIO
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		d := DeviceIO{}
		if d.Major, d.Minor, ok = parseDev(f[0]); !ok {
			continue
		}
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "rbytes":
				d.ReadBytes = n
			case "wbytes":
				d.WriteBytes = n
			case "rios":
				d.Reads = n
			case "wios":
				d.Writes = n
			}
		}
		out = append(out, d)
	}
	return out, nil
}

// readBlkioV1 reads the throttle policy's per-device byte and operation
// counts (kept by every v1 kernel, unlike CFQ's), the subtree's where the
// kernel has the _recursive files.
func readBlkioV1(dir string) ([]DeviceIO, error) {
	if dir == "" {
		return nil, nil
	}
	byDev := map[[2]uint64]*DeviceIO{}
	var order [][2]uint64
	for _, f := range []struct {
		name        string
		read, write func(*DeviceIO, uint64)
	}{
		{"blkio.throttle.io_service_bytes", func(d *DeviceIO, n uint64) { d.ReadBytes = n }, func(d *DeviceIO, n uint64) { d.WriteBytes = n }},
		{"blkio.throttle.io_serviced", func(d *DeviceIO, n uint64) { d.Reads = n }, func(d *DeviceIO, n uint64) { d.Writes = n }},
	} {
		s, ok, err := readString(dir, f.name+"_recursive")
		if err == nil && !ok {
			s, ok, err = readString(dir, f.name)
		}
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		for _, line := range strings.Split(s, "\n") {
			fl := strings.Fields(line)
			if len(fl) != 3 {
				continue
			}
			ma, mi, ok := parseDev(fl[0])
			n, err := strconv.ParseUint(fl[2], 10, 64)
			if !ok || err != nil {
				continue
			}
			key := [2]uint64{ma, mi}
			d := byDev[key]
			if d == nil {
				d = &DeviceIO{Major: ma, Minor: mi}
				byDev[key] = d
				order = append(order, key)
			}
			switch fl[1] {
			case "Read":
				f.read(d, n)
			case "Write":
				f.write(d, n)
			}
		}
	}
	out := make([]DeviceIO, 0, len(order))
	for _, k := range order {
		out = append(out, *byDev[k])
	}
	return out, nil
}

// readPressure reads cpu.pressure, memory.pressure and io.pressure; nil
// when the kernel has none for the cgroup.
func readPressure(dir string) (*Pressure, error) {
	p := &Pressure{}
	found := false
	for _, r := range []struct {
		name string
		dst  *PSI
	}{{"cpu.pressure", &p.CPU}, {"memory.pressure", &p.Memory}, {"io.pressure", &p.IO}} {
		s, ok, err := readString(dir, r.name)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		found = true
		for _, line := range strings.Split(s, "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			var d *PSIData
			switch f[0] {
			case "some":
				d = &r.dst.Some
			case "full":
				d = &r.dst.Full
			default:
				continue
			}
			for _, kv := range f[1:] {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "avg10":
					d.Avg10, _ = strconv.ParseFloat(v, 64)
				case "avg60":
					d.Avg60, _ = strconv.ParseFloat(v, 64)
				case "avg300":
					d.Avg300, _ = strconv.ParseFloat(v, 64)
				case "total":
					d.TotalUs, _ = strconv.ParseUint(v, 10, 64)
				}
			}
		}
	}
	if !found {
		return nil, nil
	}
	return p, nil
}

// Procs lists the processes directly in the cgroup (not its children's).
func (c *Cgroup) Procs() ([]int, error) {
	d := c.dir("pids")
	if d == "" {
		d = c.dir("memory")
	}
	ids, ok, err := readInts(d, "cgroup.procs")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("cgroup %s: %w", c.Path, fs.ErrNotExist)
	}
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out, nil
}

// ProcessStats counts what the processes of a cgroup hold.
type ProcessStats struct {
	Processes, Threads, FDs, Sockets uint64
	// OpenFilesSoft is the first process's soft RLIMIT_NOFILE
	// (Unlimited for none); zero when there is no process.
	OpenFilesSoft uint64
}

// Processes counts the cgroup's processes, their threads, open file
// descriptors and sockets from /proc (procDir, normally "/proc"). Processes
// that exit while being counted are skipped.
func (c *Cgroup) Processes(procDir string) (ProcessStats, error) {
	var ps ProcessStats
	pids, err := c.Procs()
	if err != nil {
		return ps, err
	}
	for i, pid := range pids {
		base := filepath.Join(procDir, strconv.Itoa(pid))
		tasks, err := os.ReadDir(filepath.Join(base, "task"))
		if err != nil {
			continue
		}
		ps.Processes++
		ps.Threads += uint64(len(tasks))
		fds, err := os.ReadDir(filepath.Join(base, "fd"))
		if err == nil {
			ps.FDs += uint64(len(fds))
			for _, fd := range fds {
				if l, err := os.Readlink(filepath.Join(base, "fd", fd.Name())); err == nil && strings.HasPrefix(l, "socket:") {
					ps.Sockets++
				}
			}
		}
		if i == 0 {
			ps.OpenFilesSoft = openFilesSoft(filepath.Join(base, "limits"))
		}
	}
	return ps, nil
}

func openFilesSoft(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0
			}
			if f[0] == "unlimited" {
				return Unlimited
			}
			n, _ := strconv.ParseUint(f[0], 10, 64)
			return n
		}
	}
	return 0
}
