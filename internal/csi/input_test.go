package csi_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tripod-dev/tripod/internal/csi/csitest"
	"github.com/tripod-dev/tripod/internal/csi/registration"
)

// IDs and paths that try to reach outside the driver's root or the given
// target are refused, and nothing outside is touched.
func TestPathTraversal(t *testing.T) {
	d := csitest.Start(t)
	c := mountCap("ext4", rw)
	vol := createVolume(t, d, "victim", 32*mib, c)
	outside := d.Path("outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	sentinel := filepath.Join(outside, "sentinel")
	if err := os.WriteFile(sentinel, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	badIDs := []string{
		"../../../../" + outside, "../volumes/" + vol.GetVolumeId(), vol.GetVolumeId() + "/../x",
		"/etc/passwd", "v" + strings.Repeat("0", 31) + "/..", ".", "..", "v\x00",
	}
	for _, id := range badIDs {
		_, err := d.Controller.ControllerGetVolume(ctx(t), &csi.ControllerGetVolumeRequest{VolumeId: id})
		wantCode(t, err, codes.NotFound, "ControllerGetVolume "+id)
		_, err = d.Node.NodeStageVolume(ctx(t), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: d.Path("s"), VolumeCapability: c})
		wantCode(t, err, codes.NotFound, "NodeStageVolume "+id)
		_, err = d.Controller.CreateVolume(ctx(t), &csi.CreateVolumeRequest{Name: "from-" + id, VolumeCapabilities: []*csi.VolumeCapability{c}, VolumeContentSource: fromSnapshot(id)})
		wantCode(t, err, codes.NotFound, "CreateVolume from snapshot "+id)
		if _, err := d.Controller.DeleteVolume(ctx(t), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Errorf("DeleteVolume %q: %v, want success (nothing by that ID)", id, err)
		}
		if _, err := d.Controller.DeleteSnapshot(ctx(t), &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
			t.Errorf("DeleteSnapshot %q: %v, want success (nothing by that ID)", id, err)
		}
	}
	// Staging and target paths: relative, unclean, inside the root.
	for _, p := range []string{"relative/staging", d.Path("a") + "/../b", filepath.Join(d.Root, "state"), d.Root + "/volumes/x"} {
		_, err := d.Node.NodeStageVolume(ctx(t), &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: p, VolumeCapability: c})
		wantCode(t, err, codes.InvalidArgument, "NodeStageVolume at "+p)
	}
	// A symlink planted at the staging or target path is not followed.
	link := d.Path("link")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	_, err := d.Node.NodeStageVolume(ctx(t), &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: link, VolumeCapability: c})
	wantCode(t, err, codes.InvalidArgument, "NodeStageVolume at a symlink")
	// A symlink whose parent resolves into the root.
	rootLink := d.Path("rootlink")
	if err := os.Symlink(d.Root, rootLink); err != nil {
		t.Fatal(err)
	}
	_, err = d.Node.NodeStageVolume(ctx(t), &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: filepath.Join(rootLink, "state"), VolumeCapability: c})
	wantCode(t, err, codes.InvalidArgument, "NodeStageVolume through a symlink into the root")

	staging := d.Path("staging")
	if _, err := d.Node.NodeStageVolume(ctx(t), &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, VolumeCapability: c}); err != nil {
		t.Fatal(err)
	}
	_, err = d.Node.NodePublishVolume(ctx(t), &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, TargetPath: link, VolumeCapability: c})
	wantCode(t, err, codes.InvalidArgument, "NodePublishVolume at a symlink")
	_, err = d.Node.NodeUnpublishVolume(ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: link})
	wantCode(t, err, codes.InvalidArgument, "NodeUnpublishVolume at a symlink")
	// Mount flags that name another device or path.
	evil := mountCap("ext4", rw)
	evil.GetMount().MountFlags = []string{"journal_path=/dev/vda"}
	_, err = d.Node.NodePublishVolume(ctx(t), &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, TargetPath: d.Path("t2"), VolumeCapability: evil})
	wantCode(t, err, codes.InvalidArgument, "mount flag naming a device")

	if b, err := os.ReadFile(sentinel); err != nil || string(b) != "keep" {
		t.Errorf("file outside the root changed: %q %v", b, err)
	}
	if mps, _ := csitest.Mounts(mustReal(t, outside)); len(mps) != 0 {
		t.Errorf("something was mounted outside: %v", mps)
	}
	if _, err := os.Lstat(link); err != nil {
		t.Errorf("symlink removed: %v", err)
	}
	if _, err := d.Node.NodeUnstageVolume(ctx(t), &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	deleteVolume(t, d, vol.GetVolumeId())
	csitest.AssertClean(t, d.Dir)
}

// Bad requests get the codes the CSI spec assigns.
func TestErrorCodes(t *testing.T) {
	d := csitest.Start(t, "--capacity", "96Mi")
	c := mountCap("ext4", rw)
	req := func(name string, cr *csi.CapacityRange, caps ...*csi.VolumeCapability) *csi.CreateVolumeRequest {
		return &csi.CreateVolumeRequest{Name: name, CapacityRange: cr, VolumeCapabilities: caps}
	}
	cases := []struct {
		what string
		req  *csi.CreateVolumeRequest
		want codes.Code
	}{
		{"no name", req("", nil, c), codes.InvalidArgument},
		{"no capabilities", req("x", nil), codes.InvalidArgument},
		{"multi-node mode", req("x", nil, mountCap("ext4", csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)), codes.InvalidArgument},
		{"unknown filesystem", req("x", nil, mountCap("zfs", rw)), codes.InvalidArgument},
		{"mixed access types", req("x", nil, c, blockCap(rw)), codes.InvalidArgument},
		{"limit below required", req("x", &csi.CapacityRange{RequiredBytes: 20 * mib, LimitBytes: 10 * mib}, c), codes.InvalidArgument},
		{"negative size", req("x", &csi.CapacityRange{RequiredBytes: -1}, c), codes.InvalidArgument},
		{"xfs under its minimum", req("x", &csi.CapacityRange{LimitBytes: 100 * mib}, mountCap("xfs", rw)), codes.OutOfRange},
		{"beyond capacity", req("x", &csi.CapacityRange{RequiredBytes: 200 * mib}, c), codes.ResourceExhausted},
	}
	for _, tc := range cases {
		if strings.Contains(tc.what, "xfs") && !csitest.HasFS("xfs") {
			t.Logf("skipping case %q: mkfs.xfs not installed (make deps installs xfsprogs)", tc.what)
			continue
		}
		_, err := d.Controller.CreateVolume(ctx(t), tc.req)
		wantCode(t, err, tc.want, "CreateVolume: "+tc.what)
	}
	bad := &csi.CreateVolumeRequest{Name: "p", VolumeCapabilities: []*csi.VolumeCapability{c}, Parameters: map[string]string{"nonsense": "1"}}
	_, err := d.Controller.CreateVolume(ctx(t), bad)
	wantCode(t, err, codes.InvalidArgument, "CreateVolume with an unknown parameter")

	vol := createVolume(t, d, "a", 64*mib, c)
	_, err = d.Controller.CreateVolume(ctx(t), req("a", &csi.CapacityRange{RequiredBytes: 80 * mib}, c))
	wantCode(t, err, codes.AlreadyExists, "CreateVolume of an existing name with another size")
	_, err = d.Controller.CreateVolume(ctx(t), req("b", &csi.CapacityRange{RequiredBytes: 64 * mib}, c))
	wantCode(t, err, codes.ResourceExhausted, "CreateVolume past --capacity")
	capResp, err := d.Controller.GetCapacity(ctx(t), &csi.GetCapacityRequest{})
	if err != nil || capResp.GetAvailableCapacity() != 32*mib {
		t.Errorf("GetCapacity: %v %v, want 32 MiB left of 96", capResp, err)
	}
	other, err := d.Controller.GetCapacity(ctx(t), &csi.GetCapacityRequest{AccessibleTopology: &csi.Topology{Segments: map[string]string{"topology.csi.tripod.dev/node": "elsewhere"}}})
	if err != nil || other.GetAvailableCapacity() != 0 {
		t.Errorf("GetCapacity for another node: %v %v, want 0", other, err)
	}
	_, err = d.Controller.ControllerExpandVolume(ctx(t), &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 16 * mib, LimitBytes: 32 * mib}})
	wantCode(t, err, codes.OutOfRange, "shrinking below the current size")
	_, err = d.Controller.ControllerExpandVolume(ctx(t), &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 200 * mib}})
	wantCode(t, err, codes.ResourceExhausted, "growing past --capacity")
	_, err = d.Controller.ControllerModifyVolume(ctx(t), &csi.ControllerModifyVolumeRequest{VolumeId: vol.GetVolumeId(), MutableParameters: map[string]string{"directIO": "maybe"}})
	wantCode(t, err, codes.InvalidArgument, "modify with a bad value")
	_, err = d.Controller.ListVolumes(ctx(t), &csi.ListVolumesRequest{StartingToken: "garbage"})
	wantCode(t, err, codes.Aborted, "ListVolumes with a token the driver never issued")

	// A staged volume cannot be deleted.
	staging := d.Path("staging")
	if _, err := d.Node.NodeStageVolume(ctx(t), &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, VolumeCapability: c}); err != nil {
		t.Fatal(err)
	}
	_, err = d.Controller.DeleteVolume(ctx(t), &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()})
	wantCode(t, err, codes.FailedPrecondition, "DeleteVolume of a staged volume")
	_, err = d.Node.NodePublishVolume(ctx(t), &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: d.Path("t"), VolumeCapability: c})
	wantCode(t, err, codes.FailedPrecondition, "NodePublishVolume without a staging path")
	_, err = d.Node.NodePublishVolume(ctx(t), &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, TargetPath: d.Path("t"), VolumeCapability: blockCap(rw)})
	wantCode(t, err, codes.InvalidArgument, "NodePublishVolume of a filesystem volume as a block device")

	// Modify applies to the attached device.
	if _, err := d.Controller.ControllerModifyVolume(ctx(t), &csi.ControllerModifyVolumeRequest{VolumeId: vol.GetVolumeId(), MutableParameters: map[string]string{"readAheadKiB": "512"}}); err != nil {
		t.Fatal(err)
	}
	loops, _ := csitest.Loops(mustReal(t, d.Dir))
	if len(loops) != 1 {
		t.Fatalf("loop devices: %+v", loops)
	}
	ra, _ := os.ReadFile("/sys/block/" + filepath.Base(loops[0].Path) + "/queue/read_ahead_kb")
	if strings.TrimSpace(string(ra)) != "512" {
		t.Errorf("read_ahead_kb of %s is %q after ControllerModifyVolume, want 512", loops[0].Path, ra)
	}
	if _, err := d.Node.NodeUnstageVolume(ctx(t), &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	deleteVolume(t, d, vol.GetVolumeId())
	csitest.AssertClean(t, d.Dir)
}

// An inline (ephemeral) volume is created, formatted and mounted by one
// NodePublishVolume and gone after NodeUnpublishVolume.
func TestEphemeralVolume(t *testing.T) {
	d := csitest.Start(t)
	target := d.Path("pod", "inline")
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		t.Fatal(err)
	}
	req := &csi.NodePublishVolumeRequest{
		VolumeId: "csi-0123456789abcdef", TargetPath: target, VolumeCapability: mountCap("", rw),
		VolumeContext: map[string]string{"csi.storage.k8s.io/ephemeral": "true", "size": "48Mi"},
	}
	for range 2 { // the second call is kubelet's retry: a no-op
		if _, err := d.Node.NodePublishVolume(ctx(t), req); err != nil {
			t.Fatal(err)
		}
	}
	if size := statfsSize(t, target); size < 30*mib || size > 48*mib {
		t.Errorf("inline volume is %d bytes, want about 48 MiB", size)
	}
	if err := os.WriteFile(filepath.Join(target, "f"), []byte("x"), 0o644); err != nil {
		t.Errorf("inline volume not writable: %v", err)
	}
	if list, _ := d.Controller.ListVolumes(ctx(t), &csi.ListVolumesRequest{}); len(list.GetEntries()) != 1 {
		t.Errorf("ListVolumes: %d entries, want the inline volume", len(list.GetEntries()))
	}
	if _, err := d.Node.NodeUnpublishVolume(ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if list, _ := d.Controller.ListVolumes(ctx(t), &csi.ListVolumesRequest{}); len(list.GetEntries()) != 0 {
		t.Errorf("inline volume outlived its pod: %v", list)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("target not removed: %v", err)
	}
	csitest.AssertClean(t, d.Dir)
}

// With --registration-dir the driver answers kubelet's plugin registration
// itself: GetInfo names the driver and its CSI socket.
func TestKubeletRegistration(t *testing.T) {
	csitest.NeedRoot(t)
	regDir := filepath.Join(t.TempDir(), "plugins_registry")
	d := csitest.Start(t, "--registration-dir", regDir, "--name", "test.tripod.dev")
	sock := registration.SocketPath(regDir, "test.tripod.dev")
	msgs, err := registration.NewMessages()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var info protoreflect.ProtoMessage
	for range 200 { // the registration socket appears just after the CSI one
		info = msgs.PluginInfo.New().Interface()
		err = conn.Invoke(context.Background(), "/"+registration.ServiceName+"/GetInfo", msgs.InfoRequest.New().Interface(), info)
		if err == nil {
			break
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 20e6}, nil)
	}
	if err != nil {
		t.Fatalf("GetInfo: %v", err)
	}
	f := info.ProtoReflect().Descriptor().Fields()
	get := func(n protoreflect.Name) string { return info.ProtoReflect().Get(f.ByName(n)).String() }
	if get("type") != "CSIPlugin" || get("name") != "test.tripod.dev" || get("endpoint") != d.Socket {
		t.Errorf("GetInfo: type %q name %q endpoint %q", get("type"), get("name"), get("endpoint"))
	}
	status := msgs.RegistrationStatus.New()
	status.Set(status.Descriptor().Fields().ByName("plugin_registered"), protoreflect.ValueOfBool(true))
	if err := conn.Invoke(context.Background(), "/"+registration.ServiceName+"/NotifyRegistrationStatus", status.Interface(), msgs.RegistrationStatusResponse.New().Interface()); err != nil {
		t.Errorf("NotifyRegistrationStatus: %v", err)
	}
	resp, err := d.Identity.GetPluginInfo(ctx(t), &csi.GetPluginInfoRequest{})
	if err != nil || resp.GetName() != "test.tripod.dev" {
		t.Errorf("GetPluginInfo: %v %v", resp, err)
	}
	d.Stop()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("registration socket left after stop: %v", err)
	}
}
