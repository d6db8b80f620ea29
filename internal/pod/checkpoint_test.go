package pod

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func readTar(t *testing.T, r io.Reader) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out[hdr.Name] = b
	}
}

// TestCheckpointArchive: the archive holds the metadata, CRIU's images
// under checkpoint/, the writable layer as rootfs-diff.tar and its overlay
// whiteouts (real 0/0 character devices) as deleted.files; it appears at
// its location whole or not at all, and is recognised as an archive to
// restore.
func TestCheckpointArchive(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (mknod of overlay whiteouts)")
	}
	dir := t.TempDir()
	images, upper := filepath.Join(dir, "images"), filepath.Join(dir, "upper")
	for _, d := range []string{images, filepath.Join(upper, "etc")} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(filepath.Join(images, "pages-1.img"), []byte("pages"), 0o600)
	os.WriteFile(filepath.Join(upper, "etc", "changed"), []byte("new content"), 0o644)
	os.Symlink("changed", filepath.Join(upper, "etc", "link"))
	if err := unix.Mknod(filepath.Join(upper, "etc", "gone"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	loc := filepath.Join(dir, "out", "ckpt.tar")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := writeCheckpointArchive(ctx, loc, images, upper, map[string][]byte{ckptSpec: []byte("{}"), ckptConfig: []byte("{}")}); err == nil {
		t.Fatal("cancelled write succeeded")
	}
	if left, _ := os.ReadDir(filepath.Dir(loc)); len(left) != 0 {
		t.Fatalf("a failed write left %v", left)
	}

	if err := writeCheckpointArchive(context.Background(), loc, images, upper, map[string][]byte{ckptSpec: []byte(`{"ociVersion":"1.2.0"}`), ckptConfig: []byte(`{"id":"x"}`)}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(loc)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := readTar(t, f)
	if string(got[ckptSpec]) != `{"ociVersion":"1.2.0"}` || string(got[ckptConfig]) != `{"id":"x"}` || string(got["checkpoint/pages-1.img"]) != "pages" {
		t.Fatalf("archive entries: %v", slices.Sorted(func(yield func(string) bool) {
			for k := range got {
				if !yield(k) {
					return
				}
			}
		}))
	}
	var deleted []string
	if err := json.Unmarshal(got[ckptDeleted], &deleted); err != nil || len(deleted) != 1 || deleted[0] != "/etc/gone" {
		t.Fatalf("deleted.files %s: %v", got[ckptDeleted], err)
	}
	diff := readTar(t, bytes.NewReader(got[ckptRootfs]))
	if _, ok := diff["etc/"]; !ok || string(diff["etc/changed"]) != "new content" || len(diff) != 3 {
		t.Fatalf("rootfs-diff.tar: %v", diff)
	}
	if _, ok := diff["etc/gone"]; ok {
		t.Fatal("a whiteout went into rootfs-diff.tar")
	}
	if _, err := openCheckpoint(loc); err == nil || !strings.Contains(err.Error(), "no checkpoint/inventory.img") {
		t.Fatalf("an archive without CRIU's inventory: %v", err)
	}
}
