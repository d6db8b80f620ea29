package csi_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tripod-dev/tripod/internal/csi/csitest"
)

const mib = int64(1) << 20

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func mountCap(fs string, mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

const rw = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER

func createVolume(t *testing.T, d *csitest.Driver, name string, size int64, c *csi.VolumeCapability) *csi.Volume {
	t.Helper()
	resp, err := d.Controller.CreateVolume(ctx(t), &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{c},
	})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.GetVolume()
}

// stagePublish stages and publishes vol, returning the target path.
func stagePublish(t *testing.T, d *csitest.Driver, vol *csi.Volume, c *csi.VolumeCapability, ro bool) (staging, target string) {
	t.Helper()
	staging = d.Path("staging", vol.GetVolumeId())
	target = d.Path("pods", vol.GetVolumeId(), "target")
	for _, dir := range []string{staging, filepath.Dir(target)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Node.NodeStageVolume(ctx(t), &csi.NodeStageVolumeRequest{
		VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, VolumeCapability: c,
	}); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
	if _, err := d.Node.NodePublishVolume(ctx(t), &csi.NodePublishVolumeRequest{
		VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, TargetPath: target,
		VolumeCapability: c, Readonly: ro,
	}); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	return staging, target
}

func unpublishUnstage(t *testing.T, d *csitest.Driver, vol *csi.Volume, staging, target string) {
	t.Helper()
	if _, err := d.Node.NodeUnpublishVolume(ctx(t), &csi.NodeUnpublishVolumeRequest{
		VolumeId: vol.GetVolumeId(), TargetPath: target,
	}); err != nil {
		t.Fatalf("NodeUnpublishVolume: %v", err)
	}
	if _, err := d.Node.NodeUnstageVolume(ctx(t), &csi.NodeUnstageVolumeRequest{
		VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
	}); err != nil {
		t.Fatalf("NodeUnstageVolume: %v", err)
	}
}

func deleteVolume(t *testing.T, d *csitest.Driver, id string) {
	t.Helper()
	if _, err := d.Controller.DeleteVolume(ctx(t), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
}

func wantCode(t *testing.T, err error, want codes.Code, what string) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: got %v (%v), want %v", what, got, err, want)
	}
}
