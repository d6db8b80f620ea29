package csi_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/tripod-dev/tripod/internal/csi/csitest"
)

// Writing past a volume's size fails with ENOSPC: the filesystem on the
// loop device, not a quota, enforces it.
func TestSizeEnforced(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			csitest.NeedFS(t, fs)
			d := csitest.Start(t)
			size := 32 * mib
			if fs == "xfs" {
				size = 300 * mib
			}
			c := mountCap(fs, rw)
			vol := createVolume(t, d, "size-"+fs, size, c)
			if vol.GetCapacityBytes() != size {
				t.Errorf("capacity %d, want %d", vol.GetCapacityBytes(), size)
			}
			staging, target := stagePublish(t, d, vol, c, false)
			f, err := os.Create(filepath.Join(target, "fill"))
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, mib)
			var written int64
			for written <= 2*size {
				n, err := f.Write(buf)
				written += int64(n)
				if err != nil {
					if !errors.Is(err, unix.ENOSPC) {
						t.Fatalf("write after %d bytes: %v, want ENOSPC", written, err)
					}
					break
				}
			}
			f.Close()
			if written > size {
				t.Fatalf("wrote %d bytes into a %d-byte volume", written, size)
			}
			if written < size/2 {
				t.Errorf("only %d of %d bytes writable", written, size)
			}
			unpublishUnstage(t, d, vol, staging, target)
			deleteVolume(t, d, vol.GetVolumeId())
			csitest.AssertClean(t, d.Dir)
		})
	}
}

// A readonly publish refuses writes; the same volume published read-write
// elsewhere still takes them.
func TestReadOnlyPublish(t *testing.T) {
	d := csitest.Start(t)
	c := mountCap("ext4", rw)
	vol := createVolume(t, d, "ro", 32*mib, c)
	staging, target := stagePublish(t, d, vol, c, true)
	err := os.WriteFile(filepath.Join(target, "x"), []byte("x"), 0o644)
	if !errors.Is(err, unix.EROFS) {
		t.Errorf("write to readonly publish: %v, want EROFS", err)
	}
	rwTarget := d.Path("pods", "rw-target")
	if _, err := d.Node.NodePublishVolume(ctx(t), &csi.NodePublishVolumeRequest{
		VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, TargetPath: rwTarget, VolumeCapability: c,
	}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rwTarget, "x"), []byte("x"), 0o644); err != nil {
		t.Errorf("write to read-write publish: %v", err)
	}
	// Republishing the same target with another readonly flag is a
	// conflict, not a silent change.
	_, err = d.Node.NodePublishVolume(ctx(t), &csi.NodePublishVolumeRequest{
		VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, TargetPath: target, VolumeCapability: c,
	})
	wantCode(t, err, codes.AlreadyExists, "republish with other readonly flag")
	if _, err := d.Node.NodeUnpublishVolume(ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: rwTarget}); err != nil {
		t.Fatal(err)
	}
	unpublishUnstage(t, d, vol, staging, target)
	deleteVolume(t, d, vol.GetVolumeId())
	csitest.AssertClean(t, d.Dir)
}

// A block volume is published as the loop device itself: readable and
// writable as a device of the volume's size, and read-only when asked.
func TestBlockVolume(t *testing.T) {
	d := csitest.Start(t)
	c := blockCap(rw)
	size := 16 * mib
	vol := createVolume(t, d, "blk", size, c)
	staging, target := stagePublish(t, d, vol, c, false)
	var st unix.Stat_t
	if err := unix.Stat(target, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Fatalf("target %s is not a block device: %v mode %o", target, err, st.Mode)
	}
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	devSize, err := f.Seek(0, 2)
	if err != nil || devSize != size {
		t.Errorf("device size %d (%v), want %d", devSize, err, size)
	}
	pattern := make([]byte, 64*1024)
	rand.Read(pattern)
	for _, off := range []int64{0, size / 2, size - int64(len(pattern))} {
		if _, err := f.WriteAt(pattern, off); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(pattern))
	for _, off := range []int64{0, size / 2, size - int64(len(pattern))} {
		if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, pattern) {
			t.Fatalf("read back at %d: %v, equal=%v", off, err, bytes.Equal(got, pattern))
		}
	}
	if _, err := f.WriteAt(pattern, size); err == nil {
		t.Errorf("write past the end of the device succeeded")
	}
	f.Close()

	// Read-only publish: a device of its own that refuses writes but
	// shows the same data.
	roTarget := d.Path("pods", "ro-target")
	if _, err := d.Node.NodePublishVolume(ctx(t), &csi.NodePublishVolumeRequest{
		VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, TargetPath: roTarget, VolumeCapability: c, Readonly: true,
	}); err != nil {
		t.Fatal(err)
	}
	if f, err := os.OpenFile(roTarget, os.O_WRONLY, 0); err == nil {
		_, werr := f.WriteAt(pattern, 0)
		f.Close()
		if werr == nil {
			t.Errorf("write to read-only block publish succeeded")
		}
	}
	rf, err := os.Open(roTarget)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rf.ReadAt(got, size/2); err != nil || !bytes.Equal(got, pattern) {
		t.Errorf("read-only device does not show the volume's data: %v", err)
	}
	rf.Close()
	if _, err := d.Node.NodeUnpublishVolume(ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: roTarget}); err != nil {
		t.Fatal(err)
	}
	unpublishUnstage(t, d, vol, staging, target)
	deleteVolume(t, d, vol.GetVolumeId())
	csitest.AssertClean(t, d.Dir)
}

func statfsSize(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * st.Bsize
}

// Online expansion: the controller grows the image and loop device, the
// node grows the mounted filesystem, and the pod sees the new size with
// its data intact.
func TestOnlineExpansion(t *testing.T) {
	fss := []string{"xfs"}
	if csitest.HasSysResource() {
		fss = append(fss, "ext4")
	} else {
		t.Log("ext4 online growth not tested: this host withholds CAP_SYS_RESOURCE from root (TestExpandExt4Offline covers ext4)")
	}
	for _, fs := range fss {
		t.Run(fs, func(t *testing.T) {
			csitest.NeedFS(t, fs)
			d := csitest.Start(t)
			c := mountCap(fs, rw)
			vol := createVolume(t, d, "grow-"+fs, 320*mib, c)
			staging, target := stagePublish(t, d, vol, c, false)
			data := make([]byte, 4*mib)
			rand.Read(data)
			if err := os.WriteFile(filepath.Join(target, "data"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			before := statfsSize(t, target)
			resp, err := d.Controller.ControllerExpandVolume(ctx(t), &csi.ControllerExpandVolumeRequest{
				VolumeId: vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 640 * mib}, VolumeCapability: c,
			})
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetCapacityBytes() != 640*mib || !resp.GetNodeExpansionRequired() {
				t.Errorf("ControllerExpandVolume: %v", resp)
			}
			if _, err := d.Node.NodeExpandVolume(ctx(t), &csi.NodeExpandVolumeRequest{
				VolumeId: vol.GetVolumeId(), VolumePath: target, CapacityRange: &csi.CapacityRange{RequiredBytes: 640 * mib},
			}); err != nil {
				t.Fatal(err)
			}
			after := statfsSize(t, target)
			if after < before+250*mib {
				t.Errorf("filesystem seen in the pod grew from %d to %d bytes, want about +320 MiB", before, after)
			}
			got, err := os.ReadFile(filepath.Join(target, "data"))
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("data changed by expansion: %v", err)
			}
			stats, err := d.Node.NodeGetVolumeStats(ctx(t), &csi.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId(), VolumePath: target})
			if err != nil || stats.GetUsage()[0].GetTotal() != after {
				t.Errorf("NodeGetVolumeStats: %v %v, want total %d", stats, err, after)
			}
			unpublishUnstage(t, d, vol, staging, target)
			deleteVolume(t, d, vol.GetVolumeId())
			csitest.AssertClean(t, d.Dir)
		})
	}
}

// Where the kernel refuses to grow a mounted ext4 (no CAP_SYS_RESOURCE),
// NodeExpandVolume says so (FailedPrecondition) and the next stage grows
// the filesystem before the volume is used. With the capability, growth is
// online and this test checks the offline path through an unstaged volume.
func TestExpandExt4Offline(t *testing.T) {
	d := csitest.Start(t)
	c := mountCap("ext4", rw)
	vol := createVolume(t, d, "grow-offline", 64*mib, c)
	staging, target := stagePublish(t, d, vol, c, false)
	if err := os.WriteFile(filepath.Join(target, "keep"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := statfsSize(t, target)
	unpublishUnstage(t, d, vol, staging, target)
	if _, err := d.Controller.ControllerExpandVolume(ctx(t), &csi.ControllerExpandVolumeRequest{
		VolumeId: vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 256 * mib},
	}); err != nil {
		t.Fatal(err)
	}
	staging, target = stagePublish(t, d, vol, c, false)
	if after := statfsSize(t, target); after < before+150*mib {
		t.Errorf("filesystem %d bytes after growing to 256 MiB while unstaged (was %d)", after, before)
	}
	if b, err := os.ReadFile(filepath.Join(target, "keep")); err != nil || string(b) != "kept" {
		t.Errorf("data lost: %q %v", b, err)
	}
	if !csitest.HasSysResource() {
		_, err := d.Controller.ControllerExpandVolume(ctx(t), &csi.ControllerExpandVolumeRequest{
			VolumeId: vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 320 * mib},
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = d.Node.NodeExpandVolume(ctx(t), &csi.NodeExpandVolumeRequest{VolumeId: vol.GetVolumeId(), VolumePath: target})
		wantCode(t, err, codes.FailedPrecondition, "online ext4 growth without CAP_SYS_RESOURCE")
	}
	unpublishUnstage(t, d, vol, staging, target)
	deleteVolume(t, d, vol.GetVolumeId())
	csitest.AssertClean(t, d.Dir)
}
