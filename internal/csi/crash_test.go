package csi_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/tripod-dev/tripod/internal/csi/csitest"
	"github.com/tripod-dev/tripod/internal/csi/loop"
	"github.com/tripod-dev/tripod/internal/csi/mount"
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

// Killed while a staged source is frozen for the copy, and after copying
// but before recording the snapshot ready: after restart the filesystem is
// thawed (left frozen, every write in the pod would block for good), the
// partial snapshot is gone, and the retry succeeds.
func TestKillDuringCreateSnapshot(t *testing.T) {
	for _, point := range []string{"snapshot-frozen", "snapshot-written"} {
		t.Run(point, func(t *testing.T) {
			d := csitest.Start(t)
			c := mountCap("ext4", rw)
			vol := createVolume(t, d, "snap-crash-src", 32*mib, c)
			staging, target := stagePublish(t, d, vol, c, false)
			d.Stop()
			d.Env = []string{"TRIPOD_CSI_FAILPOINT=" + point}
			d.Restart()
			req := &csi.CreateSnapshotRequest{Name: "snap-crash", SourceVolumeId: vol.GetVolumeId()}
			_, err := d.Controller.CreateSnapshot(ctx(t), req)
			wantCode(t, err, codes.Unavailable, "CreateSnapshot with the driver killed mid-way")
			d.Exited()
			d.Env = nil
			d.Restart()
			if err := mount.Thaw(staging); !errors.Is(err, unix.EINVAL) {
				t.Errorf("filesystem still frozen after restart (thaw: %v)", err)
			}
			if err := os.WriteFile(filepath.Join(target, "f"), []byte("x"), 0o644); err != nil {
				t.Errorf("write after restart: %v", err)
			}
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
			unpublishUnstage(t, d, vol, staging, target)
			csitest.AssertClean(t, d.Dir)
		})
	}
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

// Volumes go through their whole life (create, stage, publish, write,
// snapshot, expand, clone, unpublish, unstage, delete) on several goroutines while the
// driver is killed with SIGKILL at a random moment, several times over.
// After each restart every volume's life is completed by retrying the
// calls, and in the end no volume, snapshot, image, mount or loop device
// is left.
func TestKillAtRandomPoints(t *testing.T) {
	d := csitest.Start(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	const vols = 4
	if err := os.MkdirAll(d.Path("t"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Even volumes are ext4, odd ones block devices that are also
	// published read-only (a loop device of its own) for a while.
	life := func(i, round int) error {
		c, block := mountCap("ext4", rw), i%2 == 1
		if block {
			c = blockCap(rw)
		}
		name := fmt.Sprintf("rand-%d-%d", round, i)
		resp, err := d.Controller.CreateVolume(ctx(t), &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 16 * mib}, VolumeCapabilities: []*csi.VolumeCapability{c}})
		if err != nil {
			return err
		}
		id := resp.GetVolume().GetVolumeId()
		staging, target := d.Path("s", name), d.Path("t", name)
		os.MkdirAll(staging, 0o755)
		if _, err := d.Node.NodeStageVolume(ctx(t), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c}); err != nil {
			return err
		}
		if _, err := d.Node.NodePublishVolume(ctx(t), &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c}); err != nil {
			return err
		}
		if block {
			ro := target + "-ro"
			if _, err := d.Node.NodePublishVolume(ctx(t), &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: ro, VolumeCapability: c, Readonly: true}); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_WRONLY, 0)
			if err != nil {
				return fmt.Errorf("open device: %w", err)
			}
			_, err = f.WriteAt([]byte(name), 4096)
			f.Close()
			if err != nil {
				return fmt.Errorf("write device: %w", err)
			}
			if _, err := d.Node.NodeUnpublishVolume(ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: ro}); err != nil {
				return err
			}
		} else if err := os.WriteFile(filepath.Join(target, "f"), []byte(name), 0o644); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		snap, err := d.Controller.CreateSnapshot(ctx(t), &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: id})
		if err != nil {
			return err
		}
		if _, err := d.Controller.DeleteSnapshot(ctx(t), &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()}); err != nil {
			return err
		}
		if _, err := d.Controller.ControllerExpandVolume(ctx(t), &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 24 * mib}}); err != nil {
			return err
		}
		clone, err := d.Controller.CreateVolume(ctx(t), &csi.CreateVolumeRequest{Name: name + "-clone", VolumeCapabilities: []*csi.VolumeCapability{c}, VolumeContentSource: fromVolume(id)})
		if err != nil {
			return err
		}
		if _, err := d.Controller.DeleteVolume(ctx(t), &csi.DeleteVolumeRequest{VolumeId: clone.GetVolume().GetVolumeId()}); err != nil {
			return err
		}
		if _, err := d.Node.NodeUnpublishVolume(ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			return err
		}
		if _, err := d.Node.NodeUnstageVolume(ctx(t), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			return err
		}
		_, err = d.Controller.DeleteVolume(ctx(t), &csi.DeleteVolumeRequest{VolumeId: id})
		return err
	}
	for round := range 4 {
		var wg sync.WaitGroup
		for i := range vols {
			wg.Go(func() { life(i, round) })
		}
		time.Sleep(time.Duration(rng.IntN(250)) * time.Millisecond)
		d.Kill()
		wg.Wait()
		d.Restart()
		// The CO retries every interrupted life from the start: each
		// call is idempotent, so the repeated ones are no-ops.
		for i := range vols {
			if err := life(i, round); err != nil {
				t.Fatalf("round %d volume %d: completing after restart: %v\n%s", round, i, err, d.Log())
			}
		}
	}
	list, err := d.Controller.ListVolumes(ctx(t), &csi.ListVolumesRequest{})
	if err != nil || len(list.GetEntries()) != 0 {
		t.Errorf("volumes left: %v %v", list, err)
	}
	snaps, err := d.Controller.ListSnapshots(ctx(t), &csi.ListSnapshotsRequest{})
	if err != nil || len(snaps.GetEntries()) != 0 {
		t.Errorf("snapshots left: %v %v", snaps, err)
	}
	for _, dir := range []string{"volumes", "snapshots"} {
		if imgs, _ := os.ReadDir(filepath.Join(d.Root, dir)); len(imgs) != 0 {
			t.Errorf("%d files left in %s", len(imgs), dir)
		}
	}
	csitest.AssertClean(t, d.Dir)
}

// Killed after recording a larger size but before growing the image: the
// restarted driver completes the growth (the volume is healthy again) and
// the retried expansion, controller and node, succeeds.
func TestKillDuringExpand(t *testing.T) {
	csitest.NeedFS(t, "xfs")
	d := csitest.Start(t)
	c := mountCap("xfs", rw)
	vol := createVolume(t, d, "expand-crash", 320*mib, c)
	staging, target := stagePublish(t, d, vol, c, false)
	before := statfsSize(t, target)
	d.Stop()
	d.Env = []string{"TRIPOD_CSI_FAILPOINT=expand-recorded"}
	d.Restart()
	req := &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 640 * mib}}
	_, err := d.Controller.ControllerExpandVolume(ctx(t), req)
	wantCode(t, err, codes.Unavailable, "ControllerExpandVolume with the driver killed mid-way")
	d.Exited()
	d.Env = nil
	d.Restart()
	h, err := d.Controller.ControllerGetVolumeHealth(ctx(t), &csi.ControllerGetVolumeHealthRequest{VolumeId: vol.GetVolumeId()})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Errorf("volume health after restart: %v %v, want healthy", h, err)
	}
	resp, err := d.Controller.ControllerExpandVolume(ctx(t), req)
	if err != nil || resp.GetCapacityBytes() != 640*mib {
		t.Fatalf("retried ControllerExpandVolume: %v %v", resp, err)
	}
	if _, err := d.Node.NodeExpandVolume(ctx(t), &csi.NodeExpandVolumeRequest{VolumeId: vol.GetVolumeId(), VolumePath: target}); err != nil {
		t.Fatal(err)
	}
	if size := statfsSize(t, target); size < before+250*mib {
		t.Errorf("filesystem is %d bytes after expansion from 320 to 640 MiB (was %d)", size, before)
	}
	unpublishUnstage(t, d, vol, staging, target)
	deleteVolume(t, d, vol.GetVolumeId())
	csitest.AssertClean(t, d.Dir)
}
