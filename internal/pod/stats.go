package pod

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cgroups"
	"github.com/tripod-dev/tripod/internal/cnirun"
	"github.com/tripod-dev/tripod/internal/netns"
)

// fsCacheTTL bounds how stale a listed writable layer's usage may be: a
// walk of every container's upper directory on every ListContainerStats
// (kubelet calls it every few seconds) would cost more than the answer is
// worth. ContainerStats of one container always walks.
const fsCacheTTL = 2 * time.Second

// nanoCoresWindow is the shortest interval a CPU rate is kept over: the
// previous sample is replaced only once it is this old, so callers that
// poll often still get a rate over a useful window.
const nanoCoresWindow = time.Second

// statsState is what stats calls keep between calls, in memory only.
type statsState struct {
	once      sync.Once
	mounts    *cgroups.Mounts
	mountsErr error

	mu   sync.Mutex
	cpu  map[string]cpuSample // container ID, or "pod/" + pod ID
	fs   map[string]FSUsage   // container ID
	devs map[uint64]string    // st_dev → the mounted device's name
}

type cpuSample struct {
	usageNs uint64
	at      int64
}

// FSUsage is a writable layer's use of its filesystem.
type FSUsage struct {
	Timestamp int64
	// Mountpoint is the directory holding the writable layers (what
	// ImageFsInfo reports for containers), Device the filesystem's source.
	Mountpoint, Device string
	// Bytes (allocated, as du counts them) and inodes of the layer.
	Bytes, Inodes uint64
	// The filesystem's size and inodes.
	Capacity, InodesTotal, InodesFree uint64
}

// ContainerStats is one container's resource use.
type ContainerStats struct {
	Container
	Timestamp int64
	// Cgroup is the container's cgroup path.
	Cgroup string
	// Stats is nil when the container has no cgroup any more (it exited).
	Stats *cgroups.Stats
	// NanoCores is the CPU rate since an earlier sample; nil for the first.
	NanoCores     *uint64
	Limits        cgroups.Limits
	Procs         cgroups.ProcessStats
	WritableLayer FSUsage
}

// PodStats is a pod's resource use.
type PodStats struct {
	Pod
	Timestamp int64
	// Cgroup is the pod's own cgroup, read for the totals; "" when the pod
	// shares its cgroup parent with others and the totals are its
	// containers' sum.
	Cgroup    string
	Stats     *cgroups.Stats
	NanoCores *uint64
	Limits    *cgroups.Limits // of the pod's own cgroup
	// Links are the interfaces of the pod's network namespace; Default
	// names the one CNI attached.
	Links      []netns.LinkStats
	Default    string
	Processes  uint64
	Containers []*ContainerStats
}

// statsOpts choose what a stats call measures.
type statsOpts struct {
	// fresh walks writable layers whatever the cache holds.
	fresh bool
	// full counts file descriptors and reads limits (for metrics).
	full bool
}

// CgroupMounts is the host's cgroup layout, read once.
func (m *Manager) CgroupMounts() (*cgroups.Mounts, error) {
	m.st.once.Do(func() { m.st.mounts, m.st.mountsErr = cgroups.Discover() })
	return m.st.mounts, m.st.mountsErr
}

// cgroupPath turns what the runtime was given as cgroupsPath into the
// cgroup's path in the hierarchies.
func (m *Manager) cgroupPath(spec string) (string, error) {
	if m.opt.CgroupDriver == "systemd" {
		return cgroups.SystemdPath(spec)
	}
	return spec, nil
}

// podCgroup is the pod's own cgroup: its cgroup parent, when that holds no
// other pod (kubelet gives each pod one, pod<UID>); "" otherwise, as for
// the configured default parent that pods naming none share.
func (m *Manager) podCgroup(p *Pod) string {
	path := m.parentPath(p.CgroupParent)
	if path == "" || path == "/" || p.CgroupParent == m.opt.CgroupParent {
		return ""
	}
	m.mu.Lock()
	others := make([]string, 0, len(m.pods))
	for _, o := range m.pods {
		if o.ID != p.ID {
			others = append(others, o.CgroupParent)
		}
	}
	m.mu.Unlock()
	for _, o := range others {
		if op := m.parentPath(o); op == path || strings.HasPrefix(op, path+"/") {
			return ""
		}
	}
	return path
}

// parentPath is a cgroup parent's path in the hierarchies; "" for none.
func (m *Manager) parentPath(parent string) string {
	if parent == "" {
		return ""
	}
	if m.opt.CgroupDriver == "systemd" {
		path, err := cgroups.SystemdSlice(parent)
		if err != nil {
			return ""
		}
		return path
	}
	return "/" + strings.Trim(filepath.Clean("/"+parent), "/")
}

// ContainerStats measures one container. An unknown ID is NotFound; a
// container that is not running has zero usage (Stats nil), not an error.
func (m *Manager) ContainerStats(ctx context.Context, id string) (*ContainerStats, error) {
	c, err := m.Container(id)
	if err != nil {
		return nil, err
	}
	return m.containerStats(ctx, c, statsOpts{fresh: true})
}

// ListContainerStats measures the containers f selects.
func (m *Manager) ListContainerStats(ctx context.Context, f ContainerFilter) ([]*ContainerStats, error) {
	cs := m.Containers(f)
	out := make([]*ContainerStats, 0, len(cs))
	for _, c := range cs {
		s, err := m.containerStats(ctx, c, statsOpts{})
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	if f.ID == "" && f.PodID == "" && len(f.Labels) == 0 && f.State == "" {
		m.pruneStats()
	}
	return out, nil
}

func (m *Manager) containerStats(ctx context.Context, c *Container, o statsOpts) (*ContainerStats, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := &ContainerStats{Container: *c, Timestamp: time.Now().UnixNano()}
	m.mu.Lock()
	p := m.pods[c.PodID]
	m.mu.Unlock()
	var err error
	if s.WritableLayer, err = m.layerUsage(c, o.fresh); err != nil {
		return nil, err
	}
	if p == nil || (c.State != Running && c.State != Created) {
		return s, nil
	}
	if s.Cgroup, err = m.cgroupPath(m.cgroupsPath(p, c.ID)); err != nil {
		return nil, err
	}
	mounts, err := m.CgroupMounts()
	if err != nil {
		return nil, err
	}
	cg := mounts.Open(s.Cgroup)
	st, err := cg.Stats()
	if errors.Is(err, fs.ErrNotExist) {
		// It exited and the runtime removed its cgroup since the state
		// was read: zero usage.
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", c.ID, err)
	}
	s.Stats = st
	s.NanoCores = m.nanoCores(c.ID, st.CPU.UsageNs, s.Timestamp)
	if o.full {
		if s.Limits, err = cg.Limits(); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if s.Procs, err = cg.Processes("/proc"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	} else if pids, err := cg.Procs(); err == nil {
		s.Procs.Processes = uint64(len(pids))
	}
	return s, nil
}

// nanoCores is the CPU rate since the kept sample of key (nil without
// one), and keeps this sample once the old one is a window old.
func (m *Manager) nanoCores(key string, usage uint64, at int64) *uint64 {
	m.st.mu.Lock()
	defer m.st.mu.Unlock()
	if m.st.cpu == nil {
		m.st.cpu = map[string]cpuSample{}
	}
	prev, ok := m.st.cpu[key]
	var out *uint64
	if ok && at > prev.at && usage >= prev.usageNs {
		v := uint64(float64(usage-prev.usageNs) / float64(at-prev.at) * 1e9)
		out = &v
	}
	if !ok || usage < prev.usageNs || time.Duration(at-prev.at) >= nanoCoresWindow {
		m.st.cpu[key] = cpuSample{usageNs: usage, at: at}
	}
	return out
}

// forgetStats drops what the stats calls keep about a container.
func (m *Manager) forgetStats(id string) {
	m.st.mu.Lock()
	defer m.st.mu.Unlock()
	delete(m.st.cpu, id)
	delete(m.st.cpu, "pod/"+id)
	delete(m.st.fs, id)
}

// pruneStats drops kept samples of containers and pods that are gone.
func (m *Manager) pruneStats() {
	m.mu.Lock()
	live := map[string]bool{}
	for id := range m.containers {
		live[id] = true
	}
	for id := range m.pods {
		live["pod/"+id] = true
	}
	m.mu.Unlock()
	m.st.mu.Lock()
	defer m.st.mu.Unlock()
	for k := range m.st.cpu {
		if !live[k] {
			delete(m.st.cpu, k)
		}
	}
	for k := range m.st.fs {
		if !live[k] {
			delete(m.st.fs, k)
		}
	}
}

// layerUsage measures a container's writable layer (its overlay upper
// directory), from the cache when a recent walk is there and fresh is not
// asked for.
func (m *Manager) layerUsage(c *Container, fresh bool) (FSUsage, error) {
	now := time.Now()
	if !fresh {
		m.st.mu.Lock()
		u, ok := m.st.fs[c.ID]
		m.st.mu.Unlock()
		if ok && now.Sub(time.Unix(0, u.Timestamp)) < fsCacheTTL {
			return u, nil
		}
	}
	u := FSUsage{Timestamp: now.UnixNano(), Mountpoint: filepath.Dir(c.RWDir)}
	upper := filepath.Join(c.RWDir, "upper")
	var sfs unix.Statfs_t
	if err := unix.Statfs(upper, &sfs); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return u, nil
		}
		return u, fmt.Errorf("writable layer of %s: %w", c.ID, err)
	}
	u.Capacity, u.InodesTotal, u.InodesFree = sfs.Blocks*uint64(sfs.Bsize), sfs.Files, sfs.Ffree
	var err error
	if u.Bytes, u.Inodes, err = diskUsage(upper); err != nil {
		return u, fmt.Errorf("writable layer of %s: %w", c.ID, err)
	}
	var st unix.Stat_t
	if unix.Stat(upper, &st) == nil {
		u.Device = m.deviceName(st.Dev)
	}
	m.st.mu.Lock()
	if m.st.fs == nil {
		m.st.fs = map[string]FSUsage{}
	}
	m.st.fs[c.ID] = u
	m.st.mu.Unlock()
	return u, nil
}

// diskUsage counts the blocks (as du does: hard links once) and inodes
// under dir, dir itself excluded. Entries removed during the walk are
// skipped.
func diskUsage(dir string) (bytes, inodes uint64, err error) {
	seen := map[uint64]bool{}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if p == dir {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return err
		}
		if st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		inodes++
		bytes += uint64(st.Blocks) * 512
		return nil
	})
	return bytes, inodes, err
}

// deviceName is the source of the mount whose device number is dev (from
// mountinfo), "" when none is found.
func (m *Manager) deviceName(dev uint64) string {
	m.st.mu.Lock()
	name, ok := m.st.devs[dev]
	m.st.mu.Unlock()
	if ok {
		return name
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	want := fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fl, gl := strings.Fields(pre), strings.Fields(post)
		if ok && len(fl) > 2 && len(gl) > 1 && fl[2] == want {
			name = gl[1]
			break
		}
	}
	m.st.mu.Lock()
	if m.st.devs == nil {
		m.st.devs = map[uint64]string{}
	}
	m.st.devs[dev] = name
	m.st.mu.Unlock()
	return name
}

// PodStats measures one pod: its cgroup's totals, its network namespace's
// interfaces and its containers.
func (m *Manager) PodStats(ctx context.Context, id string) (*PodStats, error) {
	p, err := m.Pod(id)
	if err != nil {
		return nil, err
	}
	var cs []*Container
	for _, c := range m.Containers(ContainerFilter{PodID: p.ID}) {
		if c.PodID == p.ID {
			cs = append(cs, c)
		}
	}
	return m.podStats(ctx, p, cs, statsOpts{fresh: true})
}

// ListPodStats measures the pods f selects.
func (m *Manager) ListPodStats(ctx context.Context, f PodFilter) ([]*PodStats, error) {
	return m.listPodStats(ctx, f, statsOpts{})
}

// PodMetrics measures every pod with what the metrics need besides.
func (m *Manager) PodMetrics(ctx context.Context) ([]*PodStats, error) {
	return m.listPodStats(ctx, PodFilter{}, statsOpts{full: true})
}

func (m *Manager) listPodStats(ctx context.Context, f PodFilter, o statsOpts) ([]*PodStats, error) {
	ps := m.Pods(f)
	// One pass over the containers for all pods.
	byPod := map[string][]*Container{}
	for _, c := range m.Containers(ContainerFilter{}) {
		byPod[c.PodID] = append(byPod[c.PodID], c)
	}
	out := make([]*PodStats, 0, len(ps))
	for _, p := range ps {
		s, err := m.podStats(ctx, p, byPod[p.ID], o)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	if f.ID == "" && f.State == "" && len(f.Labels) == 0 {
		m.pruneStats()
	}
	return out, nil
}

// podStats measures pod p and its containers cs.
func (m *Manager) podStats(ctx context.Context, p *Pod, cs []*Container, o statsOpts) (*PodStats, error) {
	s := &PodStats{Pod: *p, Timestamp: time.Now().UnixNano()}
	for _, c := range cs {
		st, err := m.containerStats(ctx, c, o)
		if err != nil {
			return nil, err
		}
		s.Containers = append(s.Containers, st)
		s.Processes += st.Procs.Processes
	}
	if path := m.podCgroup(p); path != "" {
		mounts, err := m.CgroupMounts()
		if err != nil {
			return nil, err
		}
		cg := mounts.Open(path)
		st, err := cg.Stats()
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("pod %s: %w", p.ID, err)
		default:
			s.Cgroup, s.Stats = path, st
			if o.full {
				l, err := cg.Limits()
				if err != nil && !errors.Is(err, fs.ErrNotExist) {
					return nil, err
				}
				s.Limits = &l
			}
		}
	}
	if s.Stats == nil {
		s.Stats = sumStats(s.Containers)
	}
	if s.Stats != nil {
		s.NanoCores = m.nanoCores("pod/"+p.ID, s.Stats.CPU.UsageNs, s.Timestamp)
	}
	if path, ok := p.Namespaces[netns.Net]; ok && p.State == Ready {
		links, err := netns.Links(path)
		if err != nil && netns.Pinned(path) {
			return nil, fmt.Errorf("pod %s network: %w", p.ID, err)
		}
		s.Links, s.Default = links, cnirun.IfName
	}
	return s, nil
}

// sumStats adds up the usage of a pod's running containers; nil when none
// runs.
func sumStats(cs []*ContainerStats) *cgroups.Stats {
	var out *cgroups.Stats
	for _, c := range cs {
		s := c.Stats
		if s == nil {
			continue
		}
		if out == nil {
			out = &cgroups.Stats{Memory: cgroups.Memory{Limit: cgroups.Unlimited}, Pids: cgroups.Pids{Limit: cgroups.Unlimited}}
		}
		out.CPU.UsageNs += s.CPU.UsageNs
		out.CPU.UserNs += s.CPU.UserNs
		out.CPU.SystemNs += s.CPU.SystemNs
		mo, mi := &out.Memory, &s.Memory
		mo.Usage += mi.Usage
		mo.WorkingSet += mi.WorkingSet
		mo.RSS += mi.RSS
		mo.Cache += mi.Cache
		mo.Swap += mi.Swap
		mo.Pgfault += mi.Pgfault
		mo.Pgmajfault += mi.Pgmajfault
		mo.HasMemory = mo.HasMemory || mi.HasMemory
		mo.HasSwap = mo.HasSwap || mi.HasSwap
		out.Pids.Current += s.Pids.Current
		out.Pids.Has = out.Pids.Has || s.Pids.Has
	}
	return out
}
