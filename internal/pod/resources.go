package pod

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cgroups"
	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/oci"
)

// The ranges the kernel takes (CFS periods 1 ms to 1 s, quotas from 1 ms,
// v1 shares 2 to 2^18).
const (
	minCFSPeriod, maxCFSPeriod = 1000, 1000000
	minCFSQuota                = 1000
	minShares, maxShares       = 2, 262144
)

// ValidateResources checks limits before they reach a runtime or a cgroup,
// naming the offending field under prefix ("linux", "config.linux.resources")
// in an InvalidArgument error.
func (m *Manager) ValidateResources(prefix string, r oci.Resources) error {
	bad := func(field, format string, a ...any) error {
		return fmt.Errorf("%s.%s: %s: %w", prefix, field, fmt.Sprintf(format, a...), errdefs.ErrInvalidArgument)
	}
	switch {
	case r.CPUPeriod != 0 && (r.CPUPeriod < minCFSPeriod || r.CPUPeriod > maxCFSPeriod):
		return bad("cpu_period", "%d is outside %d..%d microseconds", r.CPUPeriod, minCFSPeriod, maxCFSPeriod)
	case r.CPUQuota != 0 && r.CPUQuota != -1 && r.CPUQuota < minCFSQuota:
		return bad("cpu_quota", "%d is below %d microseconds (-1 for none)", r.CPUQuota, minCFSQuota)
	case r.CPUShares != 0 && (r.CPUShares < minShares || r.CPUShares > maxShares):
		return bad("cpu_shares", "%d is outside %d..%d", r.CPUShares, minShares, maxShares)
	case r.MemoryLimit < 0:
		return bad("memory_limit_in_bytes", "%d is negative", r.MemoryLimit)
	case r.MemorySwap < -1:
		return bad("memory_swap_limit_in_bytes", "%d is negative (-1 for none)", r.MemorySwap)
	case r.MemorySwap > 0 && r.MemoryLimit > 0 && r.MemorySwap < r.MemoryLimit:
		return bad("memory_swap_limit_in_bytes", "%d is below memory_limit_in_bytes %d (it counts memory and swap together)", r.MemorySwap, r.MemoryLimit)
	}
	if err := checkCPUList(r.CpusetCpus, "/sys/devices/system/cpu/online"); err != nil {
		return bad("cpuset_cpus", "%v", err)
	}
	if err := checkCPUList(r.CpusetMems, "/sys/devices/system/node/online"); err != nil {
		return bad("cpuset_mems", "%v", err)
	}
	for _, h := range r.Hugepages {
		if !pageSizeRE.MatchString(h.PageSize) {
			return bad("hugepage_limits", "page size %q is not <size><KB|MB|GB>", h.PageSize)
		}
	}
	if len(r.Unified) > 0 {
		mounts, err := m.CgroupMounts()
		if err != nil {
			return err
		}
		if !mounts.V2() {
			return bad("unified", "cgroup v2 settings on a cgroup v1 host")
		}
		for k := range r.Unified {
			if strings.ContainsAny(k, "/\x00") || !strings.Contains(k, ".") || strings.HasPrefix(k, "cgroup.") {
				return bad("unified", "%q is not a cgroup v2 interface file a container may set", k)
			}
		}
	}
	return nil
}

var pageSizeRE = regexp.MustCompile(`^[1-9][0-9]*[KMGT]B$`)

// checkCPUList checks a cpuset list ("0-2,4") against the online set in
// file (a node without the file has node 0 only).
func checkCPUList(list, file string) error {
	if list == "" {
		return nil
	}
	want, err := parseList(list)
	if err != nil {
		return err
	}
	online := map[int]bool{0: true}
	if b, err := os.ReadFile(file); err == nil {
		if online, err = parseList(strings.TrimSpace(string(b))); err != nil {
			return err
		}
	}
	for n := range want {
		if !online[n] {
			return fmt.Errorf("%d is not online", n)
		}
	}
	return nil
}

func parseList(s string) (map[int]bool, error) {
	out := map[int]bool{}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a || b-a > 1<<16 {
			return nil, fmt.Errorf("%q is not a list such as 0-2,4", s)
		}
		for i := a; i <= b; i++ {
			out[i] = true
		}
	}
	return out, nil
}

// merge lays the fields set in u over r: zero fields of an update leave a
// setting as it was (the CRI's "not specified").
func merge(r, u oci.Resources) oci.Resources {
	if u.CPUPeriod != 0 {
		r.CPUPeriod = u.CPUPeriod
	}
	if u.CPUQuota != 0 {
		r.CPUQuota = u.CPUQuota
	}
	if u.CPUShares != 0 {
		r.CPUShares = u.CPUShares
	}
	if u.MemoryLimit != 0 {
		// A container allowed no swap (memory+swap equal to memory) keeps
		// none, as the cgroup does.
		if u.MemorySwap == 0 && r.MemorySwap > 0 && r.MemorySwap == r.MemoryLimit {
			r.MemorySwap = u.MemoryLimit
		}
		r.MemoryLimit = u.MemoryLimit
	}
	if u.MemorySwap != 0 {
		r.MemorySwap = u.MemorySwap
	}
	if u.CpusetCpus != "" {
		r.CpusetCpus = u.CpusetCpus
	}
	if u.CpusetMems != "" {
		r.CpusetMems = u.CpusetMems
	}
	for _, h := range u.Hugepages {
		found := false
		for i := range r.Hugepages {
			if r.Hugepages[i].PageSize == h.PageSize {
				r.Hugepages[i].Limit, found = h.Limit, true
			}
		}
		if !found {
			r.Hugepages = append(r.Hugepages, h)
		}
	}
	if len(u.Unified) > 0 {
		un := maps.Clone(r.Unified)
		if un == nil {
			un = map[string]string{}
		}
		maps.Copy(un, u.Unified)
		r.Unified = un
	}
	return r
}

func toCgroup(r oci.Resources) cgroups.Resources {
	out := cgroups.Resources{CPUShares: uint64(max(r.CPUShares, 0)), CPUQuota: r.CPUQuota, CPUPeriod: uint64(max(r.CPUPeriod, 0)),
		CpusetCpus: r.CpusetCpus, CpusetMems: r.CpusetMems, MemoryLimit: r.MemoryLimit, MemorySwap: r.MemorySwap, Unified: r.Unified}
	if len(r.Hugepages) > 0 {
		out.Hugepages = map[string]uint64{}
		for _, h := range r.Hugepages {
			out.Hugepages[h.PageSize] = h.Limit
		}
	}
	return out
}

// applyErr turns a cgroup write's failure into a CRI-meaningful error.
func applyErr(what string, err error) error {
	switch {
	case errors.Is(err, cgroups.ErrBelowUsage):
		return fmt.Errorf("%s: memory_limit_in_bytes: %w", what, errdefs.Wrap(errdefs.ErrFailedPrecondition, err))
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ERANGE):
		return fmt.Errorf("%s: the kernel refused a value: %w", what, errdefs.Wrap(errdefs.ErrInvalidArgument, err))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// UpdateContainerResources applies new limits to a created or running
// container's cgroup, then records them (ContainerStatus reports them,
// and they survive a restart). Fields left zero keep their values. The
// cgroup files are written directly, in an order the kernel accepts at
// every step, and restored if one write fails, so a refused update (a
// memory limit under what the container uses) leaves the old limits.
func (m *Manager) UpdateContainerResources(ctx context.Context, id string, u oci.Resources) error {
	if err := m.ValidateResources("linux", u); err != nil {
		return err
	}
	c, err := m.findContainer(id)
	if err != nil {
		return err
	}
	m.refresh(c)
	m.resMu.Lock()
	defer m.resMu.Unlock()
	m.mu.Lock()
	st, p, cur := c.State, m.pods[c.PodID], c.Resources
	m.mu.Unlock()
	if st != Running && st != Created {
		return fmt.Errorf("container %s is %s: %w", c.ID, st, errdefs.ErrFailedPrecondition)
	}
	next := merge(cur, u)
	if err := m.ValidateResources("linux", next); err != nil {
		return err
	}
	// NRI plugins see the whole new set and may adjust it; what they
	// return is then written in full (writing an unchanged limit again is
	// harmless).
	if m.hk.h != nil {
		pc, cc := m.snapshot(p, c)
		adj, err := m.hk.h.UpdateContainer(ctx, pc, cc, next.Linux())
		if err != nil {
			return fmt.Errorf("NRI UpdateContainer: %w", err)
		}
		u = oci.ResourcesFrom(adj)
		u.OOMScoreAdj = next.OOMScoreAdj
		next = merge(cur, u)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	path, err := m.cgroupPath(m.cgroupsPath(p, c.ID))
	if err != nil {
		return err
	}
	mounts, err := m.CgroupMounts()
	if err != nil {
		return err
	}
	// The cgroup first, the record after: a crash between them leaves the
	// old record, and kubelet retries the resize (the writes are
	// idempotent).
	if err := mounts.Open(path).Set(toCgroup(u)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("container %s is no longer running: %w", c.ID, errdefs.ErrFailedPrecondition)
		}
		return applyErr("update container "+c.ID, err)
	}
	m.mu.Lock()
	c.Resources = next
	cp := *c
	m.mu.Unlock()
	if err := m.store.put(containerBucket, c.ID, &cp); err != nil {
		return err
	}
	if m.hk.h != nil {
		pc, cc := m.snapshot(p, c)
		if err := m.hk.h.PostUpdateContainer(ctx, pc, cc); err != nil {
			m.log.Warn("NRI PostUpdateContainer", "container", c.ID, "err", err)
		}
	}
	return nil
}

// UpdatePodResources records a pod's overhead and the sum of its
// containers' resources, and applies their sum to the pod's own cgroup
// when it has one (the kubelet-made pod<UID> cgroup, shared with no other
// pod); a cgroup parent shared by several pods is left alone.
func (m *Manager) UpdatePodResources(ctx context.Context, id string, overhead, res *oci.Resources) error {
	for prefix, r := range map[string]*oci.Resources{"overhead": overhead, "resources": res} {
		if r != nil {
			if err := m.ValidateResources(prefix, *r); err != nil {
				return err
			}
		}
	}
	p, err := m.findPod(id)
	if err != nil {
		return err
	}
	m.resMu.Lock()
	defer m.resMu.Unlock()
	m.mu.Lock()
	ready := p.State == Ready
	m.mu.Unlock()
	if !ready {
		return fmt.Errorf("pod %s is not ready: %w", p.ID, errdefs.ErrFailedPrecondition)
	}
	if path := m.podCgroup(p); path != "" && res != nil {
		mounts, err := m.CgroupMounts()
		if err != nil {
			return err
		}
		cg := mounts.Open(path)
		if cg.Exists() {
			if err := cg.Set(toCgroup(podTotal(*res, overhead))); err != nil {
				return applyErr("update pod "+p.ID, err)
			}
		}
	}
	m.mu.Lock()
	p.Overhead, p.Resources = overhead, res
	cp := *p
	m.mu.Unlock()
	return m.store.put(podBucket, p.ID, &cp)
}

// podTotal is what the pod cgroup gets: the containers' sum plus the
// overhead, limits only where the containers have them (as kubelet sizes
// pod cgroups).
func podTotal(r oci.Resources, o *oci.Resources) oci.Resources {
	t := oci.Resources{CPUPeriod: r.CPUPeriod, CPUQuota: r.CPUQuota, CPUShares: r.CPUShares, MemoryLimit: r.MemoryLimit,
		MemorySwap: r.MemorySwap, CpusetCpus: r.CpusetCpus, CpusetMems: r.CpusetMems, Hugepages: r.Hugepages}
	if o == nil {
		return t
	}
	if t.CPUShares > 0 {
		t.CPUShares = min(t.CPUShares+o.CPUShares, maxShares)
	}
	if t.CPUQuota > 0 && o.CPUQuota > 0 {
		q := o.CPUQuota
		if o.CPUPeriod > 0 && t.CPUPeriod > 0 && o.CPUPeriod != t.CPUPeriod {
			q = q * t.CPUPeriod / o.CPUPeriod
		}
		t.CPUQuota += q
	}
	if t.MemoryLimit > 0 && o.MemoryLimit > 0 {
		if t.MemorySwap > 0 {
			t.MemorySwap += o.MemoryLimit
		}
		t.MemoryLimit += o.MemoryLimit
	}
	return t
}
