// Package cgroups reads and writes Linux control groups, v1 (one hierarchy
// per controller, or a few controllers sharing one: cpu and cpuacct may be
// one mount or two) and v2 (one unified hierarchy), wherever the host has
// mounted them: mount points come from mountinfo, never from a fixed list.
// It has no state beyond the mount table, so a test can point it at a
// directory of files written in the kernel's formats.
package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"github.com/tripod-dev/tripod/internal/mountinfo"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Hierarchy is one mounted cgroup hierarchy.
type Hierarchy struct {
	// Mount is where it is mounted; Root is the cgroup mounted there
	// ("/" unless the mount was made inside a cgroup namespace).
	Mount, Root string
}

// Mounts is the host's cgroup layout.
type Mounts struct {
	// V1 maps a v1 controller (cpu, cpuacct, memory, pids, cpuset, blkio,
	// hugetlb, ...) to its hierarchy.
	V1 map[string]Hierarchy
	// Unified is the cgroup2 hierarchy, if one is mounted: the only one on
	// a v2 host, a controller-less companion of the v1 ones on a hybrid
	// host (where it still gives pressure stall information).
	Unified *Hierarchy
}

// Discover reads the calling process's mount table.
func Discover() (*Mounts, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("cgroup mounts: %w", err)
	}
	defer f.Close()
	return ParseMountinfo(f)
}

// ParseMountinfo reads a mount table in the format of
// /proc/<pid>/mountinfo. The first mount of each controller wins, as it
// does for the runtime that creates the cgroups.
func ParseMountinfo(r io.Reader) (*Mounts, error) {
	m := &Mounts{V1: map[string]Hierarchy{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		h := Hierarchy{Mount: mountinfo.Unescape(f[4]), Root: mountinfo.Unescape(f[3])}
		switch g[0] {
		case "cgroup2":
			if m.Unified == nil {
				m.Unified = &h
			}
		case "cgroup":
			for _, opt := range strings.Split(g[2], ",") {
				if notController(opt) {
					continue
				}
				if _, dup := m.V1[opt]; !dup {
					m.V1[opt] = h
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	if len(m.V1) == 0 && m.Unified == nil {
		return nil, errors.New("no cgroup hierarchy is mounted")
	}
	return m, nil
}

// notController reports the v1 super options that name no controller.
func notController(opt string) bool {
	switch opt {
	case "rw", "ro", "clone_children", "noprefix", "xattr", "cpuset_v2_mode", "favordynmods", "nofavordynmods":
		return true
	}
	return strings.Contains(opt, "=") && !strings.HasPrefix(opt, "name=")
}

// V2 reports whether the host runs the unified hierarchy only. A host with
// any v1 controller mounted is v1 (hybrid), as it is for runc.
func (m *Mounts) V2() bool {
	for c := range m.V1 {
		if !strings.HasPrefix(c, "name=") {
			return false
		}
	}
	return m.Unified != nil
}

// Cgroup is one cgroup, named by its path inside the hierarchies
// ("/kubepods/pod1/abc"); it need not exist.
type Cgroup struct {
	m    *Mounts
	Path string
}

// Open names the cgroup at path.
func (m *Mounts) Open(path string) *Cgroup {
	return &Cgroup{m: m, Path: "/" + strings.TrimLeft(filepath.Clean("/"+path), "/")}
}

func join(h Hierarchy, path string) string {
	if h.Root != "/" && (path == h.Root || strings.HasPrefix(path, h.Root+"/")) {
		path = strings.TrimPrefix(path, h.Root)
	}
	return filepath.Join(h.Mount, path)
}

// dir is the directory of the cgroup for a v1 controller (ignored on v2);
// "" when that controller is not mounted.
func (c *Cgroup) dir(controller string) string {
	if c.m.V2() {
		return join(*c.m.Unified, c.Path)
	}
	h, ok := c.m.V1[controller]
	if !ok {
		return ""
	}
	return join(h, c.Path)
}

// unifiedDir is the cgroup's directory in the cgroup2 hierarchy, on a v2
// or a hybrid host; "" without one.
func (c *Cgroup) unifiedDir() string {
	if c.m.Unified == nil {
		return ""
	}
	return join(*c.m.Unified, c.Path)
}

// Exists reports whether the cgroup is there (its memory cgroup on v1,
// where the runtime always creates one).
func (c *Cgroup) Exists() bool {
	d := c.dir("memory")
	if d == "" {
		d = c.dir("cpu")
	}
	if d == "" {
		return false
	}
	_, err := os.Stat(d)
	return err == nil
}

// SystemdPath expands a systemd cgroup driver's "slice:prefix:name" (as
// runc takes it) to the cgroup's path: slices nest by their dashes
// ("a-b.slice" lives in "a.slice/a-b.slice") and the container is the scope
// "prefix-name.scope".
func SystemdPath(spec string) (string, error) {
	parts := strings.Split(spec, ":")
	if len(parts) != 3 {
		return "", fmt.Errorf("systemd cgroup %q is not slice:prefix:name", spec)
	}
	path, err := SystemdSlice(parts[0])
	if err != nil {
		return "", err
	}
	prefix, name := parts[1], parts[2]
	unit := name
	if prefix != "" {
		unit = prefix + "-" + name
	}
	if !strings.HasSuffix(unit, ".slice") {
		unit += ".scope"
	}
	return filepath.Join(path, unit), nil
}

// SystemdSlice is the cgroup path of a systemd slice ("" is system.slice).
func SystemdSlice(slice string) (string, error) {
	if slice == "" {
		slice = "system.slice"
	}
	path := "/"
	if slice == "-.slice" {
		return path, nil
	}
	base, ok := strings.CutSuffix(slice, ".slice")
	if !ok || strings.Contains(slice, "/") {
		return "", fmt.Errorf("systemd slice %q is not a slice name", slice)
	}
	var acc string
	for _, comp := range strings.Split(base, "-") {
		if comp == "" {
			return "", fmt.Errorf("systemd slice %q has an empty component", slice)
		}
		if acc != "" {
			acc += "-"
		}
		acc += comp
		path = filepath.Join(path, acc+".slice")
	}
	return path, nil
}

// HasController reports whether a controller (hugetlb, pids, ...) is
// usable: mounted on v1, enabled at the root of the v2 hierarchy.
func (m *Mounts) HasController(name string) bool {
	if !m.V2() {
		_, ok := m.V1[name]
		return ok
	}
	s, _, err := readString(m.Unified.Mount, "cgroup.controllers")
	if err != nil {
		return false
	}
	for _, c := range strings.Fields(s) {
		if c == name {
			return true
		}
	}
	return false
}

// HasPressure reports whether cgroups carry pressure stall information:
// the kernel keeps it (/proc/pressure) and a cgroup2 hierarchy shows it
// (on a hybrid host, the runtime's companion cgroups there).
func (m *Mounts) HasPressure() bool {
	if m.Unified == nil {
		return false
	}
	_, err := os.Stat("/proc/pressure/cpu")
	return err == nil
}
