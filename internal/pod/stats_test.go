package pod

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tripod-dev/tripod/internal/oci"
)

// TestDiskUsage counts allocated blocks as du does: a hard link once, a
// sparse file by what it holds, the directory itself not at all.
func TestDiskUsage(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a"), make([]byte, 256<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "a"), filepath.Join(dir, "a2")); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.MkdirAll(filepath.Join(dir, "d", "e"), 0o755); err != nil {
		t.Fatal(err)
	}
	bytes, inodes, err := diskUsage(dir)
	if err != nil {
		t.Fatal(err)
	}
	// a (a2 is the same inode), sparse, d, e.
	if inodes != 4 {
		t.Errorf("inodes %d, want 4", inodes)
	}
	if bytes < 256<<10 || bytes > 256<<10+64<<10 {
		t.Errorf("bytes %d for one 256 KiB file (linked twice), a hole and two directories", bytes)
	}
	if _, _, err := diskUsage(filepath.Join(dir, "gone")); err != nil {
		t.Errorf("a layer removed meanwhile: %v", err)
	}
}

func TestPodTotal(t *testing.T) {
	r := podTotal(ociRes(100000, 150000, 1024, 200<<20), nil)
	if r.CPUQuota != 150000 || r.MemoryLimit != 200<<20 {
		t.Errorf("without overhead: %+v", r)
	}
	o := ociRes(50000, 5000, 100, 16<<20) // quota per 50 ms: 10000 per 100 ms
	r = podTotal(ociRes(100000, 150000, 1024, 200<<20), &o)
	if r.CPUQuota != 160000 || r.CPUShares != 1124 || r.MemoryLimit != 216<<20 || r.CPUPeriod != 100000 {
		t.Errorf("with overhead: %+v", r)
	}
	// No container limit: the pod gets none either.
	r = podTotal(ociRes(0, 0, 2, 0), &o)
	if r.CPUQuota != 0 || r.MemoryLimit != 0 || r.CPUShares != 102 {
		t.Errorf("unlimited containers: %+v", r)
	}
}

func ociRes(period, quota, shares, mem int64) oci.Resources {
	return oci.Resources{CPUPeriod: period, CPUQuota: quota, CPUShares: shares, MemoryLimit: mem}
}
