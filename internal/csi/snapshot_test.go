package csi_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/tripod-dev/tripod/internal/csi/csitest"
)

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

// A snapshot of a mounted, in-use volume holds the volume as it was at
// snapshot time; a volume restored from it (larger than the source) and a
// clone of the live volume show the right contents.
func TestSnapshotContents(t *testing.T) {
	d := csitest.Start(t)
	c := mountCap("ext4", rw)
	src := createVolume(t, d, "snap-src", 64*mib, c)
	staging, target := stagePublish(t, d, src, c, false)
	before := make([]byte, 8*mib)
	rand.Read(before)
	if err := os.WriteFile(filepath.Join(target, "data"), before, 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := d.Controller.CreateSnapshot(ctx(t), &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: src.GetVolumeId()})
	if err != nil {
		t.Fatal(err)
	}
	if !snap.GetSnapshot().GetReadyToUse() || snap.GetSnapshot().GetSizeBytes() != 64*mib {
		t.Errorf("snapshot: %v", snap.GetSnapshot())
	}
	after := make([]byte, 8*mib)
	rand.Read(after)
	if err := os.WriteFile(filepath.Join(target, "data"), after, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "later"), []byte("later"), 0o644); err != nil {
		t.Fatal(err)
	}

	restoreReq := &csi.CreateVolumeRequest{
		Name: "restored", CapacityRange: &csi.CapacityRange{RequiredBytes: 128 * mib},
		VolumeCapabilities: []*csi.VolumeCapability{c}, VolumeContentSource: fromSnapshot(snap.GetSnapshot().GetSnapshotId()),
	}
	restored, err := d.Controller.CreateVolume(ctx(t), restoreReq)
	if err != nil {
		t.Fatal(err)
	}
	rs, rt := stagePublish(t, d, restored.GetVolume(), c, false)
	got, err := os.ReadFile(filepath.Join(rt, "data"))
	if err != nil || !bytes.Equal(got, before) {
		t.Errorf("restored volume does not hold the data at snapshot time (err %v)", err)
	}
	if _, err := os.Stat(filepath.Join(rt, "later")); !os.IsNotExist(err) {
		t.Errorf("restored volume holds a file written after the snapshot: %v", err)
	}
	if size := statfsSize(t, rt); size < 100*mib {
		t.Errorf("restored filesystem is %d bytes; the volume is 128 MiB", size)
	}

	clone, err := d.Controller.CreateVolume(ctx(t), &csi.CreateVolumeRequest{
		Name: "clone", VolumeCapabilities: []*csi.VolumeCapability{c}, CapacityRange: &csi.CapacityRange{RequiredBytes: 64 * mib},
		VolumeContentSource: fromVolume(src.GetVolumeId()),
	})
	if err != nil {
		t.Fatal(err)
	}
	cs, ct := stagePublish(t, d, clone.GetVolume(), c, false)
	got, err = os.ReadFile(filepath.Join(ct, "data"))
	if err != nil || !bytes.Equal(got, after) {
		t.Errorf("clone does not hold the source's current data (err %v)", err)
	}

	// A snapshot is independent of its source.
	unpublishUnstage(t, d, src, staging, target)
	deleteVolume(t, d, src.GetVolumeId())
	list, err := d.Controller.ListSnapshots(ctx(t), &csi.ListSnapshotsRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()})
	if err != nil || len(list.GetEntries()) != 1 {
		t.Errorf("snapshot gone with its source volume: %v %v", list, err)
	}
	// Too small a restore is out of range.
	restoreReq.Name, restoreReq.CapacityRange = "too-small", &csi.CapacityRange{RequiredBytes: 16 * mib, LimitBytes: 32 * mib}
	_, err = d.Controller.CreateVolume(ctx(t), restoreReq)
	wantCode(t, err, codes.OutOfRange, "restore into a volume smaller than the snapshot")

	unpublishUnstage(t, d, restored.GetVolume(), rs, rt)
	unpublishUnstage(t, d, clone.GetVolume(), cs, ct)
	deleteVolume(t, d, restored.GetVolume().GetVolumeId())
	deleteVolume(t, d, clone.GetVolume().GetVolumeId())
	if _, err := d.Controller.DeleteSnapshot(ctx(t), &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Join(d.Root, "snapshots"))
	vols, _ := os.ReadDir(filepath.Join(d.Root, "volumes"))
	if len(entries)+len(vols) != 0 {
		t.Errorf("images left after deleting everything: %d snapshots, %d volumes", len(entries), len(vols))
	}
	csitest.AssertClean(t, d.Dir)
}

// A group snapshot copies several volumes as of one instant.
func TestGroupSnapshot(t *testing.T) {
	d := csitest.Start(t)
	c := mountCap("ext4", rw)
	var vols []*csi.Volume
	var paths [][2]string
	for i, name := range []string{"g-a", "g-b"} {
		v := createVolume(t, d, name, 32*mib, c)
		s, tg := stagePublish(t, d, v, c, false)
		if err := os.WriteFile(filepath.Join(tg, "f"), []byte{byte('a' + i)}, 0o644); err != nil {
			t.Fatal(err)
		}
		vols, paths = append(vols, v), append(paths, [2]string{s, tg})
	}
	resp, err := d.Group.CreateVolumeGroupSnapshot(ctx(t), &csi.CreateVolumeGroupSnapshotRequest{
		Name: "grp", SourceVolumeIds: []string{vols[0].GetVolumeId(), vols[1].GetVolumeId()},
	})
	if err != nil {
		t.Fatal(err)
	}
	g := resp.GetGroupSnapshot()
	if len(g.GetSnapshots()) != 2 || !g.GetReadyToUse() {
		t.Fatalf("group snapshot: %v", g)
	}
	for _, s := range g.GetSnapshots() {
		if s.GetGroupSnapshotId() != g.GetGroupSnapshotId() {
			t.Errorf("member %s does not name its group", s.GetSnapshotId())
		}
		_, err := d.Controller.DeleteSnapshot(ctx(t), &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshotId()})
		wantCode(t, err, codes.FailedPrecondition, "deleting a member of a group snapshot alone")
	}
	if _, err := d.Group.DeleteVolumeGroupSnapshot(ctx(t), &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	for i, v := range vols {
		unpublishUnstage(t, d, v, paths[i][0], paths[i][1])
		deleteVolume(t, d, v.GetVolumeId())
	}
	if entries, _ := os.ReadDir(filepath.Join(d.Root, "snapshots")); len(entries) != 0 {
		t.Errorf("%d snapshot images left after deleting the group", len(entries))
	}
	csitest.AssertClean(t, d.Dir)
}
