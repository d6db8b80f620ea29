package pod

import (
	"os"
	"path/filepath"
)

const cgroupMount = "/sys/fs/cgroup"

// unifiedCgroups reports whether the node runs the unified (v2)
// hierarchy alone at /sys/fs/cgroup. A hybrid v1 host mounts cgroup2 at
// /sys/fs/cgroup/unified, without controllers, and counts as v1.
//
// On v2 a container gets a cgroup namespace of its own (unless
// privileged), as kubelet expects there: it sees its cgroup as the root
// of /sys/fs/cgroup and reads its limits at /sys/fs/cgroup/memory.max.
func unifiedCgroups() bool {
	_, err := os.Stat(filepath.Join(cgroupMount, "cgroup.controllers"))
	return err == nil
}

// oomFile is the cgroup file whose oom_kill counter reveals an OOM kill:
// memory.events of the container's cgroup on v2 (it counts the kills in
// the cgroup and below), memory.oom_control of the memory hierarchy on v1.
// With the systemd driver the path is systemd's to choose: none.
func (m *Manager) oomFile(cgroupsPath string) string {
	if m.opt.CgroupDriver != "cgroupfs" {
		return ""
	}
	if unifiedCgroups() {
		return filepath.Join(cgroupMount, cgroupsPath, "memory.events")
	}
	return filepath.Join(cgroupMount, "memory", cgroupsPath, "memory.oom_control")
}
