package pod

import (
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tripod-dev/tripod/internal/oci"
)

// withoutUnusableHugepages drops a container's hugepage limits where the
// host has no hugetlb controller to enforce them (a v1 host that has not
// mounted its hierarchy, as this project's VM; a v2 host that has not
// enabled it). kubelet sends a limit for every page size the kernel
// offers whatever the cgroup setup, and runc refuses to create a container
// whose limits it cannot set ("cannot set hugetlb limit"), so every pod
// kubelet starts would fail. containerd and CRI-O skip them the same way.
func (m *Manager) withoutUnusableHugepages(r oci.Resources) oci.Resources {
	if len(r.Hugepages) == 0 {
		return r
	}
	mounts, err := m.CgroupMounts()
	if err != nil {
		return r // runc reports the real problem
	}
	if mounts.V2() {
		b, err := os.ReadFile(filepath.Join(mounts.Unified.Mount, "cgroup.controllers"))
		if err == nil && slices.Contains(strings.Fields(string(b)), "hugetlb") {
			return r
		}
	} else if _, ok := mounts.V1["hugetlb"]; ok {
		return r
	}
	r.Hugepages = nil
	return r
}
