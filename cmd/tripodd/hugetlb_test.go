package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cgroups"
)

// TestHugepageLimits: kubelet sends a hugepage limit for every page size
// the kernel offers (0 for sizes a pod did not request). Where the hugetlb
// controller is mounted the limit reaches the container's cgroup; where it
// is not (this project's VM), the container still starts (runc refuses
// limits it cannot set, which failed every pod kubelet started).
func TestHugepageLimits(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/mm/hugepages/hugepages-2048kB"); err != nil {
		t.Skip("skipped: the kernel offers no 2 MB huge pages")
	}
	e := newPodEnv(t)
	mounts, err := cgroups.Discover()
	if err != nil {
		t.Fatal(err)
	}
	pod, parent := e.ownPod("huge")
	id := e.createWith(pod, "huge", "huge", &runtimeapi.LinuxContainerResources{
		HugepageLimits: []*runtimeapi.HugepageLimit{{PageSize: "2MB", Limit: 0}}}, "sleep", "60")
	e.start(id)
	if st := e.status(id); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("container %v, want running", st.State)
	}
	h, ok := mounts.V1["hugetlb"]
	if mounts.V2() {
		b, _ := os.ReadFile(filepath.Join(mounts.Unified.Mount, "cgroup.controllers"))
		ok = strings.Contains(" "+string(b)+" ", " hugetlb ")
		h = *mounts.Unified
	}
	if !ok {
		t.Logf("no hugetlb controller here: the container started without the limit")
		return
	}
	file := "hugetlb.2MB.limit_in_bytes"
	if mounts.V2() {
		file = "hugetlb.2MB.max"
	}
	limits, _ := filepath.Glob(filepath.Join(h.Mount, parent, "*", file))
	if len(limits) != 1 {
		t.Fatalf("container cgroup's %s: found %v", file, limits)
	}
	b, err := os.ReadFile(limits[0])
	if err != nil {
		t.Fatal(err)
	}
	if v := strings.TrimSpace(string(b)); v != "0" {
		t.Errorf("%s = %s, want 0", limits[0], v)
	}
}
