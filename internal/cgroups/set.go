package cgroups

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrBelowUsage is returned when a memory limit would be under what the
// cgroup uses: v1's kernel refuses it after failing to reclaim enough
// (EBUSY); on v2 the kernel would accept it and OOM-kill, so it is refused
// before anything is written.
var ErrBelowUsage = errors.New("memory limit below current usage")

// Resources are limits to apply; zero values leave a setting as it is.
type Resources struct {
	CPUShares uint64
	// CPUQuota is in microseconds per period; -1 removes the quota.
	CPUQuota  int64
	CPUPeriod uint64
	// CpusetCpus and CpusetMems are lists such as "0-2,4".
	CpusetCpus, CpusetMems string
	// MemoryLimit is in bytes; -1 removes the limit.
	MemoryLimit int64
	// MemorySwap is memory plus swap (the v1 and OCI sense), in bytes; -1
	// for no limit.
	MemorySwap int64
	// Hugepages maps a page size ("2MB") to a limit in bytes.
	Hugepages map[string]uint64
	// Unified maps v2 interface files ("memory.high") to values; v2 only.
	Unified map[string]string
}

// Limits are the limits a cgroup has now. Unlimited means none.
type Limits struct {
	HasCPU                 bool
	CPUShares              uint64
	CPUQuota               int64 // -1 for none
	CPUPeriod              uint64
	CpusetCpus, CpusetMems string
	HasMemory              bool
	MemoryLimit            uint64
	MemorySwap             uint64 // memory plus swap, as in Resources
	MemoryReservation      uint64
	Hugepages              map[string]uint64
}

// Limits reads the cgroup's limits.
func (c *Cgroup) Limits() (Limits, error) {
	var l Limits
	var err error
	if c.m.V2() {
		d := c.unifiedDir()
		s, ok, err := readString(d, "cpu.max")
		if err != nil {
			return l, err
		}
		if ok {
			l.HasCPU = true
			q, p, _ := strings.Cut(s, " ")
			l.CPUQuota = -1
			if q != "max" {
				l.CPUQuota, _ = strconv.ParseInt(q, 10, 64)
			}
			l.CPUPeriod, _ = strconv.ParseUint(p, 10, 64)
		}
		if w, ok, err := readUint(d, "cpu.weight"); err != nil {
			return l, err
		} else if ok {
			l.HasCPU = true
			l.CPUShares = WeightToShares(w)
		}
		if l.MemoryLimit, l.HasMemory, err = readUint(d, "memory.max"); err != nil {
			return l, err
		}
		swap, ok, err := readUint(d, "memory.swap.max")
		switch {
		case err != nil:
			return l, err
		case !ok || swap == Unlimited || l.MemoryLimit == Unlimited:
			l.MemorySwap = Unlimited
		default:
			l.MemorySwap = l.MemoryLimit + swap
		}
		if l.MemoryReservation, _, err = readUint(d, "memory.low"); err != nil {
			return l, err
		}
		if l.MemoryReservation == Unlimited {
			l.MemoryReservation = 0
		}
		if l.CpusetCpus, _, err = readString(d, "cpuset.cpus"); err != nil {
			return l, err
		}
		if l.CpusetMems, _, err = readString(d, "cpuset.mems"); err != nil {
			return l, err
		}
		l.Hugepages, err = hugeLimits(d, true)
		return l, err
	}
	cpu := c.dir("cpu")
	var ok bool
	if l.CPUShares, l.HasCPU, err = readUint(cpu, "cpu.shares"); err != nil {
		return l, err
	}
	if l.CPUPeriod, _, err = readUint(cpu, "cpu.cfs_period_us"); err != nil {
		return l, err
	}
	if s, ok, err := readString(cpu, "cpu.cfs_quota_us"); err != nil {
		return l, err
	} else if ok {
		l.CPUQuota, _ = strconv.ParseInt(s, 10, 64)
	}
	mem := c.dir("memory")
	if l.MemoryLimit, l.HasMemory, err = readUint(mem, "memory.limit_in_bytes"); err != nil {
		return l, err
	}
	if l.MemorySwap, ok, err = readUint(mem, "memory.memsw.limit_in_bytes"); err != nil {
		return l, err
	} else if !ok {
		l.MemorySwap = Unlimited
	}
	if l.MemoryReservation, _, err = readUint(mem, "memory.soft_limit_in_bytes"); err != nil {
		return l, err
	}
	if l.MemoryReservation == Unlimited {
		l.MemoryReservation = 0
	}
	cs := c.dir("cpuset")
	if l.CpusetCpus, _, err = readString(cs, "cpuset.cpus"); err != nil {
		return l, err
	}
	if l.CpusetMems, _, err = readString(cs, "cpuset.mems"); err != nil {
		return l, err
	}
	l.Hugepages, err = hugeLimits(c.dir("hugetlb"), false)
	return l, err
}

func hugeLimits(dir string, v2 bool) (map[string]uint64, error) {
	if dir == "" {
		return nil, nil
	}
	sizes, err := hugePageSizes(dir, v2)
	if err != nil || len(sizes) == 0 {
		return nil, err
	}
	suffix := ".limit_in_bytes"
	if v2 {
		suffix = ".max"
	}
	out := map[string]uint64{}
	for _, size := range sizes {
		v, _, err := readUint(dir, "hugetlb."+size+suffix)
		if err != nil {
			return nil, err
		}
		out[size] = v
	}
	return out, nil
}

// SharesToWeight converts cgroup v1 CPU shares to a v2 cpu.weight the way
// runc does (a quadratic in log2(shares) through 2→1, 1024→100 and
// 262144→10000), so a container's weight is the same whether runc or an
// update set it.
func SharesToWeight(shares uint64) uint64 {
	switch {
	case shares == 0:
		return 0
	case shares <= 2:
		return 1
	case shares >= 262144:
		return 10000
	}
	l := math.Log2(float64(shares))
	return uint64(math.Ceil(math.Pow(10, (l*l+125*l)/612.0-7.0/34.0)))
}

// WeightToShares inverts SharesToWeight. Several shares map to one weight
// (the conversion rounds up); the largest is taken, which gives back the
// round values kubelet uses (2, 1024, 262144).
func WeightToShares(w uint64) uint64 {
	switch {
	case w <= 1:
		return 2
	case w >= 10000:
		return 262144
	}
	// Solve l² + 125l − 612(log10 w + 7/34) = 0 for l = log2(shares).
	k := 612 * (math.Log10(float64(w)) + 7.0/34.0)
	l := (-125 + math.Sqrt(125*125+4*k)) / 2
	s := uint64(math.Round(math.Pow(2, l)))
	for s > 2 && SharesToWeight(s) > w {
		s--
	}
	for SharesToWeight(s+1) <= w {
		s++
	}
	return s
}

// write is one cgroup file to set, with the value to restore on rollback.
type write struct {
	dir, file, value, old string
}

// Set applies r. The writes are ordered so every intermediate state is one
// the kernel accepts; if one fails, those already made are undone and the
// cgroup keeps its old limits.
func (c *Cgroup) Set(r Resources) error {
	if !c.Exists() {
		return fmt.Errorf("cgroup %s: %w", c.Path, unix.ENOENT)
	}
	var ws []write
	var err error
	if c.m.V2() {
		ws, err = c.planV2(r)
	} else {
		ws, err = c.planV1(r)
	}
	if err != nil {
		return err
	}
	for i := range ws {
		if ws[i].old, _, err = readString(ws[i].dir, ws[i].file); err != nil {
			return err
		}
		if ws[i].file == "cpu.max" && ws[i].old != "" {
			// cpu.max reads back as "quota period".
			ws[i].old = strings.Join(strings.Fields(ws[i].old), " ")
		}
	}
	for i, w := range ws {
		if err := writeFile(w.dir, w.file, w.value); err != nil {
			for j := i - 1; j >= 0; j-- {
				writeFile(ws[j].dir, ws[j].file, ws[j].old)
			}
			if errors.Is(err, unix.EBUSY) && strings.HasPrefix(w.file, "memory.") {
				usage, _, _ := readUint(c.dir("memory"), "memory.usage_in_bytes")
				return fmt.Errorf("%w: the kernel could not reclaim enough to set %s to %s (usage %d bytes): %v", ErrBelowUsage, w.file, w.value, usage, err)
			}
			return err
		}
	}
	return nil
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

func (c *Cgroup) planV1(r Resources) ([]write, error) {
	if len(r.Unified) > 0 {
		return nil, errors.New("unified resources need cgroup v2; this host is v1")
	}
	var ws []write
	cpu := c.dir("cpu")
	if r.CPUShares != 0 {
		ws = append(ws, write{dir: cpu, file: "cpu.shares", value: strconv.FormatUint(r.CPUShares, 10)})
	}
	if r.CPUPeriod != 0 || r.CPUQuota != 0 {
		cur, err := c.Limits()
		if err != nil {
			return nil, err
		}
		period, quota := r.CPUPeriod, r.CPUQuota
		if quota == 0 {
			quota = cur.CPUQuota
		}
		// The kernel checks quota against period on each write: write the
		// one that keeps the pair valid first.
		pw := write{dir: cpu, file: "cpu.cfs_period_us", value: strconv.FormatUint(period, 10)}
		qw := write{dir: cpu, file: "cpu.cfs_quota_us", value: itoa(quota)}
		switch {
		case period == 0:
			ws = append(ws, qw)
		case r.CPUQuota == 0:
			ws = append(ws, pw)
		case period < cur.CPUPeriod:
			ws = append(ws, qw, pw)
		default:
			ws = append(ws, pw, qw)
		}
	}
	cs := c.dir("cpuset")
	if r.CpusetCpus != "" {
		ws = append(ws, write{dir: cs, file: "cpuset.cpus", value: r.CpusetCpus})
	}
	if r.CpusetMems != "" {
		ws = append(ws, write{dir: cs, file: "cpuset.mems", value: r.CpusetMems})
	}
	mem := c.dir("memory")
	if r.MemoryLimit != 0 || r.MemorySwap != 0 {
		cur, err := c.Limits()
		if err != nil {
			return nil, err
		}
		limit, swap := r.MemoryLimit, r.MemorySwap
		_, hasMemsw, err := readString(mem, "memory.memsw.limit_in_bytes")
		if err != nil {
			return nil, err
		}
		// A container allowed no swap (memsw == limit) keeps none.
		if swap == 0 && hasMemsw && cur.MemorySwap == cur.MemoryLimit && cur.MemorySwap != Unlimited {
			swap = limit
		}
		if swap != 0 && !hasMemsw {
			return nil, errors.New("memory swap limit: the kernel has no swap accounting (memory.memsw.*)")
		}
		lw := write{dir: mem, file: "memory.limit_in_bytes", value: itoa(limit)}
		sw := write{dir: mem, file: "memory.memsw.limit_in_bytes", value: itoa(swap)}
		// memory ≤ memory+swap must hold after each write.
		newSwap := uint64(swap)
		if swap < 0 {
			newSwap = Unlimited
		}
		switch {
		case swap == 0:
			ws = append(ws, lw)
		case limit == 0:
			ws = append(ws, sw)
		case newSwap > cur.MemorySwap || cur.MemorySwap == Unlimited && swap < 0:
			ws = append(ws, sw, lw)
		default:
			ws = append(ws, lw, sw)
		}
	}
	hw, err := hugeWrites(c.dir("hugetlb"), r.Hugepages, false)
	return append(ws, hw...), err
}

func hugeWrites(dir string, limits map[string]uint64, v2 bool) ([]write, error) {
	if len(limits) == 0 {
		return nil, nil
	}
	sizes, err := hugePageSizes(dir, v2)
	if err != nil {
		return nil, err
	}
	suffix := ".limit_in_bytes"
	if v2 {
		suffix = ".max"
	}
	var ws []write
	for size, limit := range limits {
		found := false
		for _, s := range sizes {
			found = found || s == size
		}
		if !found {
			return nil, fmt.Errorf("hugepage size %q: the kernel has no hugetlb controller for it (sizes: %v)", size, sizes)
		}
		ws = append(ws, write{dir: dir, file: "hugetlb." + size + suffix, value: strconv.FormatUint(limit, 10)})
	}
	return ws, nil
}

func (c *Cgroup) planV2(r Resources) ([]write, error) {
	d := c.unifiedDir()
	var ws []write
	if r.CPUShares != 0 {
		ws = append(ws, write{dir: d, file: "cpu.weight", value: strconv.FormatUint(SharesToWeight(r.CPUShares), 10)})
	}
	if r.CPUPeriod != 0 || r.CPUQuota != 0 {
		cur, err := c.Limits()
		if err != nil {
			return nil, err
		}
		period, quota := r.CPUPeriod, r.CPUQuota
		if period == 0 {
			period = cur.CPUPeriod
		}
		if quota == 0 {
			quota = cur.CPUQuota
		}
		q := "max"
		if quota > 0 {
			q = itoa(quota)
		}
		ws = append(ws, write{dir: d, file: "cpu.max", value: q + " " + strconv.FormatUint(period, 10)})
	}
	if r.CpusetCpus != "" {
		ws = append(ws, write{dir: d, file: "cpuset.cpus", value: r.CpusetCpus})
	}
	if r.CpusetMems != "" {
		ws = append(ws, write{dir: d, file: "cpuset.mems", value: r.CpusetMems})
	}
	if r.MemoryLimit > 0 {
		usage, _, err := readUint(d, "memory.current")
		if err != nil {
			return nil, err
		}
		if uint64(r.MemoryLimit) < usage {
			return nil, fmt.Errorf("%w: %d bytes is less than the %d in use, and cgroup v2 would OOM-kill to get there", ErrBelowUsage, r.MemoryLimit, usage)
		}
	}
	if r.MemoryLimit != 0 {
		v := "max"
		if r.MemoryLimit > 0 {
			v = itoa(r.MemoryLimit)
		}
		ws = append(ws, write{dir: d, file: "memory.max", value: v})
	}
	if r.MemorySwap != 0 {
		// v2 limits swap alone: memory+swap less memory.
		v := "max"
		if r.MemorySwap > 0 {
			limit := r.MemoryLimit
			if limit == 0 {
				cur, err := c.Limits()
				if err != nil {
					return nil, err
				}
				limit = int64(cur.MemoryLimit)
			}
			if limit > 0 && limit != math.MaxInt64 {
				if r.MemorySwap < limit {
					return nil, fmt.Errorf("memory swap limit %d is below the memory limit %d", r.MemorySwap, limit)
				}
				v = itoa(r.MemorySwap - limit)
			}
		}
		if _, ok, err := readString(d, "memory.swap.max"); err != nil {
			return nil, err
		} else if ok {
			ws = append(ws, write{dir: d, file: "memory.swap.max", value: v})
		}
	}
	hw, err := hugeWrites(d, r.Hugepages, true)
	if err != nil {
		return nil, err
	}
	ws = append(ws, hw...)
	for k, v := range r.Unified {
		if k != filepath.Base(k) || !strings.Contains(k, ".") || strings.HasPrefix(k, "cgroup.") {
			return nil, fmt.Errorf("unified %q is not a cgroup v2 interface file a container may set", k)
		}
		if _, ok, err := readString(d, k); err != nil {
			return nil, err
		} else if !ok {
			return nil, fmt.Errorf("unified %q: the kernel has no such file (controller not enabled?)", k)
		}
		ws = append(ws, write{dir: d, file: k, value: v})
	}
	return ws, nil
}
