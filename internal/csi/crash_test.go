package csi_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/tripod-dev/tripod/internal/csi/csitest"
	"github.com/tripod-dev/tripod/internal/csi/loop"
)

// The driver is killed with SIGKILL inside CreateVolume (after recording
// the volume, and after writing the image but before marking it ready).
// After a restart nothing half-made is left and the retried call succeeds,
// leaving exactly one volume.
func TestKillDuringCreateVolume(t *testing.T) {
	for _, point := range []string{"create-recorded", "create-written"} {
		t.Run(point, func(t *testing.T) {
			d := csitest.StartEnv(t, []string{"TRIPOD_CSI_FAILPOINT=" + point})
			c := mountCap("ext4", rw)
			req := &csi.CreateVolumeRequest{Name: "crash", CapacityRange: &csi.CapacityRange{RequiredBytes: 32 * mib}, VolumeCapabilities: []*csi.VolumeCapability{c}}
			_, err := d.Controller.CreateVolume(ctx(t), req)
			wantCode(t, err, codes.Unavailable, "CreateVolume with the driver killed mid-way")
			if err := d.Exited(); err == nil || !strings.Contains(err.Error(), "killed") {
				t.Fatalf("driver did not die by SIGKILL: %v", err)
			}
			d.Env = nil
			d.Restart()
			list, err := d.Controller.ListVolumes(ctx(t), &csi.ListVolumesRequest{})
			if err != nil || len(list.GetEntries()) != 0 {
				t.Errorf("after restart: %d volumes listed (%v), want the unfinished one gone", len(list.GetEntries()), err)
			}
			if imgs, _ := os.ReadDir(filepath.Join(d.Root, "volumes")); len(imgs) != 0 {
				t.Errorf("after restart: %d images left", len(imgs))
			}
			resp, err := d.Controller.CreateVolume(ctx(t), req)
			if err != nil {
				t.Fatalf("retried CreateVolume: %v", err)
			}
			staging, target := stagePublish(t, d, resp.GetVolume(), c, false)
			if err := os.WriteFile(filepath.Join(target, "f"), []byte("ok"), 0o644); err != nil {
				t.Errorf("volume from a retried create is not usable: %v", err)
			}
			unpublishUnstage(t, d, resp.GetVolume(), staging, target)
			deleteVolume(t, d, resp.GetVolume().GetVolumeId())
			csitest.AssertClean(t, d.Dir)
		})
	}
}

// The driver is killed inside NodeStageVolume, after attaching the loop
// device and after mounting. After a restart the retried call completes
// with exactly one loop device for the volume (found again by its backing
// file, not attached twice) and nothing leaks after unstage.
func TestKillDuringNodeStage(t *testing.T) {
	for _, tc := range []struct {
		point string
		c     *csi.VolumeCapability
	}{
		{"stage-attached", mountCap("ext4", rw)},
		{"stage-mounted", mountCap("ext4", rw)},
		{"stage-attached", blockCap(rw)},
		// Killed between attaching a block volume's device (no
		// autoclear) and recording it: recover must detach it.
		{"stage-attach-unrecorded", blockCap(rw)},
	} {
		name := tc.point + "-" + map[bool]string{true: "block", false: "fs"}[tc.c.GetBlock() != nil]
		t.Run(name, func(t *testing.T) {
			d := csitest.Start(t)
			vol := createVolume(t, d, "stage-crash", 32*mib, tc.c)
			d.Stop()
			d.Env = []string{"TRIPOD_CSI_FAILPOINT=" + tc.point}
			d.Restart()
			staging := d.Path("staging")
			if err := os.MkdirAll(staging, 0o755); err != nil {
				t.Fatal(err)
			}
			stageReq := &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, VolumeCapability: tc.c}
			_, err := d.Node.NodeStageVolume(ctx(t), stageReq)
			wantCode(t, err, codes.Unavailable, "NodeStageVolume with the driver killed mid-way")
			d.Exited()
			d.Env = nil
			d.Restart()
			if _, err := d.Node.NodeStageVolume(ctx(t), stageReq); err != nil {
				t.Fatalf("retried NodeStageVolume: %v", err)
			}
			if _, err := d.Node.NodeStageVolume(ctx(t), stageReq); err != nil {
				t.Fatalf("repeated NodeStageVolume: %v", err)
			}
			devs, err := loop.Find(filepath.Join(mustReal(t, d.Root), "volumes", vol.GetVolumeId()+".img"))
			if err != nil || len(devs) != 1 {
				t.Errorf("loop devices for the volume after retry: %+v (%v), want exactly one", devs, err)
			}
			target := d.Path("target")
			if _, err := d.Node.NodePublishVolume(ctx(t), &csi.NodePublishVolumeRequest{
				VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, TargetPath: target, VolumeCapability: tc.c,
			}); err != nil {
				t.Fatal(err)
			}
			unpublishUnstage(t, d, vol, staging, target)
			deleteVolume(t, d, vol.GetVolumeId())
			csitest.AssertClean(t, d.Dir)
		})
	}
}

// Killed after copying a snapshot but before recording it ready: the
// partial snapshot is gone after restart and the retry succeeds.
func TestKillDuringCreateSnapshot(t *testing.T) {
	d := csitest.Start(t)
	vol := createVolume(t, d, "snap-crash-src", 32*mib, mountCap("ext4", rw))
	d.Stop()
	d.Env = []string{"TRIPOD_CSI_FAILPOINT=snapshot-written"}
	d.Restart()
	req := &csi.CreateSnapshotRequest{Name: "snap-crash", SourceVolumeId: vol.GetVolumeId()}
	_, err := d.Controller.CreateSnapshot(ctx(t), req)
	wantCode(t, err, codes.Unavailable, "CreateSnapshot with the driver killed mid-way")
	d.Exited()
	d.Env = nil
	d.Restart()
	if imgs, _ := os.ReadDir(filepath.Join(d.Root, "snapshots")); len(imgs) != 0 {
		t.Errorf("after restart: %d snapshot images left", len(imgs))
	}
	if _, err := d.Controller.CreateSnapshot(ctx(t), req); err != nil {
		t.Fatalf("retried CreateSnapshot: %v", err)
	}
	list, err := d.Controller.ListSnapshots(ctx(t), &csi.ListSnapshotsRequest{})
	if err != nil || len(list.GetEntries()) != 1 {
		t.Errorf("ListSnapshots: %v %v, want one", list, err)
	}
	csitest.AssertClean(t, d.Dir)
}

// A restart while volumes are staged and published keeps them: the same
// loop devices, the same mounts, and unpublish/unstage work afterwards.
func TestRestartKeepsStagedVolumes(t *testing.T) {
	d := csitest.Start(t)
	fsCap, blkCap := mountCap("ext4", rw), blockCap(rw)
	fsVol := createVolume(t, d, "keep-fs", 32*mib, fsCap)
	blkVol := createVolume(t, d, "keep-blk", 32*mib, blkCap)
	fsS, fsT := stagePublish(t, d, fsVol, fsCap, false)
	blkS, blkT := stagePublish(t, d, blkVol, blkCap, false)
	before, _ := csitest.Loops(mustReal(t, d.Dir))
	d.Kill()
	d.Restart()
	after, _ := csitest.Loops(mustReal(t, d.Dir))
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("loop devices changed across restart:\nbefore %+v\nafter  %+v", before, after)
	}
	// Retried stage/publish calls (kubelet repeats them) are no-ops.
	s2, t2 := stagePublish(t, d, fsVol, fsCap, false)
	if s2 != fsS || t2 != fsT {
		t.Fatal("paths differ")
	}
	stagePublish(t, d, blkVol, blkCap, false)
	if again, _ := csitest.Loops(mustReal(t, d.Dir)); len(again) != len(before) {
		t.Errorf("repeated stage after restart attached more devices: %+v", again)
	}
	if err := os.WriteFile(filepath.Join(fsT, "f"), []byte("x"), 0o644); err != nil {
		t.Error(err)
	}
	unpublishUnstage(t, d, fsVol, fsS, fsT)
	unpublishUnstage(t, d, blkVol, blkS, blkT)
	deleteVolume(t, d, fsVol.GetVolumeId())
	deleteVolume(t, d, blkVol.GetVolumeId())
	csitest.AssertClean(t, d.Dir)
}

func mustReal(t *testing.T, p string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// 50 CreateVolume calls at once (each name asked twice, as a CO retrying
// would) yield 50 distinct, usable volumes; deleting them all at once
// leaves nothing.
func TestConcurrentCreateVolume(t *testing.T) {
	d := csitest.Start(t)
	c := mountCap("ext4", rw)
	const n = 50
	ids := make([]string, 2*n)
	errs := make([]error, 2*n)
	var wg sync.WaitGroup
	for i := range 2 * n {
		wg.Go(func() {
			resp, err := d.Controller.CreateVolume(ctx(t), &csi.CreateVolumeRequest{
				Name: fmt.Sprintf("conc-%d", i%n), CapacityRange: &csi.CapacityRange{RequiredBytes: 16 * mib},
				VolumeCapabilities: []*csi.VolumeCapability{c},
			})
			ids[i], errs[i] = resp.GetVolume().GetVolumeId(), err
		})
	}
	wg.Wait()
	uniq := map[string]bool{}
	for i := range 2 * n {
		if errs[i] != nil {
			t.Fatalf("CreateVolume %d: %v", i, errs[i])
		}
		if ids[i] != ids[(i+n)%(2*n)] {
			t.Errorf("two creates of one name returned %s and %s", ids[i], ids[(i+n)%(2*n)])
		}
		uniq[ids[i]] = true
	}
	if len(uniq) != n {
		t.Errorf("%d distinct volumes, want %d", len(uniq), n)
	}
	list, err := d.Controller.ListVolumes(ctx(t), &csi.ListVolumesRequest{})
	if err != nil || len(list.GetEntries()) != n {
		t.Errorf("ListVolumes: %d entries (%v), want %d", len(list.GetEntries()), err, n)
	}
	for id := range uniq {
		wg.Go(func() {
			if _, err := d.Controller.DeleteVolume(ctx(t), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Errorf("DeleteVolume %s: %v", id, err)
			}
		})
	}
	wg.Wait()
	if imgs, _ := os.ReadDir(filepath.Join(d.Root, "volumes")); len(imgs) != 0 {
		t.Errorf("%d images left after deleting all volumes", len(imgs))
	}
	csitest.AssertClean(t, d.Dir)
}

// A reboot (simulated: driver killed, every mount under the test's
// directory undone, every loop device detached) leaves records of staging
// and publishing that nothing backs any more. The restarted driver drops
// them: the volume can be deleted, or staged again, and an inline volume
// whose pod is gone is removed.
func TestRestartAfterReboot(t *testing.T) {
	d := csitest.Start(t)
	c, bc := mountCap("ext4", rw), blockCap(rw)
	gone := createVolume(t, d, "reboot-delete", 32*mib, c)
	again := createVolume(t, d, "reboot-restage", 32*mib, c)
	blk := createVolume(t, d, "reboot-block", 32*mib, bc)
	stagePublish(t, d, gone, c, false)
	s2, t2 := stagePublish(t, d, again, c, false)
	stagePublish(t, d, blk, bc, false)
	inline := d.Path("inline")
	if _, err := d.Node.NodePublishVolume(ctx(t), &csi.NodePublishVolumeRequest{
		VolumeId: "csi-inline-reboot", TargetPath: inline, VolumeCapability: mountCap("", rw),
		VolumeContext: map[string]string{"csi.storage.k8s.io/ephemeral": "true", "size": "16Mi"},
	}); err != nil {
		t.Fatal(err)
	}
	d.Kill()
	csitest.CleanupDir(t, mustReal(t, d.Dir+"/paths"))
	csitest.CleanupDir(t, mustReal(t, d.Root))
	d.Restart()

	deleteVolume(t, d, gone.GetVolumeId())
	deleteVolume(t, d, blk.GetVolumeId())
	list, err := d.Controller.ListVolumes(ctx(t), &csi.ListVolumesRequest{})
	if err != nil || len(list.GetEntries()) != 1 || list.GetEntries()[0].GetVolume().GetVolumeId() != again.GetVolumeId() {
		t.Errorf("after reboot: %v %v, want only %s (the inline volume gone with its pod)", list, err, again.GetVolumeId())
	}
	// kubelet stages and publishes the surviving pod's volume again.
	s3, t3 := stagePublish(t, d, again, c, false)
	if s3 != s2 || t3 != t2 {
		t.Fatal("paths differ")
	}
	if err := os.WriteFile(filepath.Join(t3, "f"), []byte("x"), 0o644); err != nil {
		t.Error(err)
	}
	unpublishUnstage(t, d, again, s3, t3)
	deleteVolume(t, d, again.GetVolumeId())
	csitest.AssertClean(t, d.Dir)
}
