package csi_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/csi/csitest"
	"github.com/tripod-dev/tripod/internal/csi/loop"
	"github.com/tripod-dev/tripod/internal/csi/mount"
)

// With its root on a filesystem that shares extents (xfs with reflink),
// a snapshot of a volume holding 64 MiB of data takes almost no space:
// the copy is a reflink, not a second 64 MiB. A volume restored from it
// holds the data.
func TestSnapshotReflink(t *testing.T) {
	csitest.NeedRoot(t)
	csitest.NeedFS(t, "xfs")
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "root.img"), filepath.Join(dir, "mnt")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(2 << 30)
	f.Close()
	if err := mount.Format(context.Background(), img, "xfs"); err != nil {
		t.Fatal(err)
	}
	dev, err := loop.Attach(img, loop.Options{Autoclear: true})
	if err != nil {
		t.Fatal(err)
	}
	target, err := mount.OpenTarget(mnt, true)
	if err != nil {
		t.Fatal(err)
	}
	err = mount.Mount(dev.Name(), target, "xfs", 0, "")
	target.Close()
	dev.Close()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(mnt, "root")
	// Runs after the driver's own cleanup: its volumes' devices first,
	// then the filesystem under them (whose device autoclears).
	t.Cleanup(func() {
		csitest.CleanupDir(t, root)
		if err := mount.Unmount(mnt); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	d := csitest.Start(t, "--root", root)
	c := mountCap("ext4", rw)
	vol := createVolume(t, d, "reflink-src", 256*mib, c)
	staging, tgt := stagePublish(t, d, vol, c, false)
	data := make([]byte, 64*mib)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(tgt, "data"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	used := func() int64 {
		unix.Sync()
		var st unix.Statfs_t
		if err := unix.Statfs(root, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Blocks-st.Bfree) * st.Bsize
	}
	before := used()
	snap, err := d.Controller.CreateSnapshot(ctx(t), &csi.CreateSnapshotRequest{Name: "reflink-snap", SourceVolumeId: vol.GetVolumeId()})
	if err != nil {
		t.Fatal(err)
	}
	grew := used() - before
	t.Logf("the snapshot of 64 MiB of data took %d KiB of the root filesystem", grew>>10)
	if grew > 16*mib {
		t.Errorf("snapshot of a volume holding 64 MiB took %d MiB: not a reflink", grew/mib)
	}
	restored, err := d.Controller.CreateVolume(ctx(t), &csi.CreateVolumeRequest{
		Name: "reflink-restored", VolumeCapabilities: []*csi.VolumeCapability{c},
		CapacityRange:       &csi.CapacityRange{RequiredBytes: 256 * mib},
		VolumeContentSource: fromSnapshot(snap.GetSnapshot().GetSnapshotId()),
	})
	if err != nil {
		t.Fatal(err)
	}
	rs, rt := stagePublish(t, d, restored.GetVolume(), c, false)
	if got, err := os.ReadFile(filepath.Join(rt, "data")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("restored volume does not hold the snapshot's data (%v)", err)
	}
	unpublishUnstage(t, d, restored.GetVolume(), rs, rt)
	unpublishUnstage(t, d, vol, staging, tgt)
	deleteVolume(t, d, restored.GetVolume().GetVolumeId())
	deleteVolume(t, d, vol.GetVolumeId())
	if _, err := d.Controller.DeleteSnapshot(ctx(t), &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	csitest.AssertClean(t, d.Dir)
	csitest.AssertClean(t, root)
}
