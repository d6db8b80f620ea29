package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tripod-dev/tripod/internal/csi/loop"
	"github.com/tripod-dev/tripod/internal/csi/mount"
	"github.com/tripod-dev/tripod/internal/csi/state"
)

func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_GET_STORAGE_HEALTH,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             d.cfg.NodeID,
		MaxVolumesPerNode:  d.cfg.MaxVolumes,
		AccessibleTopology: d.topology(),
	}, nil
}

// lockVolume checks id and takes its lock. Unknown IDs are not refused here:
// lookupVolume answers NotFound for them under the lock.
func (d *Driver) lockVolume(ctx context.Context, id string) (func(), error) {
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if !validID('v', id) {
		id = ephemeralID(id)
	}
	return d.locks.lock(ctx, id)
}

// lockedVolume takes id's lock (as lockVolume) and looks the volume up under
// it. On success the caller must call unlock; on failure the lock is already
// released.
func (d *Driver) lockedVolume(ctx context.Context, id string) (v *state.Volume, unlock func(), err error) {
	unlock, err = d.lockVolume(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	v, err = d.lookupVolume(id)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return v, unlock, nil
}

// device returns an open loop device for v's image: the one already
// attached (after a restart, found by its backing file), or a new one.
// Filesystem volumes use autoclear, so the device goes with the last
// unmount, or with this process if it dies before mounting.
func (d *Driver) device(v *state.Volume, fresh bool) (*os.File, error) {
	file := d.volumeFile(v.ID)
	candidates := []string{v.Loop} // the recorded device spares a scan
	if fresh && v.Loop == "" {
		candidates = nil // nothing to find: spare the scan too
	} else if v.Loop == "" || !loop.Backing(v.Loop, file) {
		devs, err := loop.Find(file)
		if err != nil {
			return nil, err
		}
		candidates = candidates[:0]
		for _, dev := range devs {
			if !dev.ReadOnly {
				candidates = append(candidates, dev.Path)
			}
		}
	}
	for _, dev := range candidates {
		// Read-only: the fd only holds the device; a kernel that refuses
		// write opens of mounted block devices must still let us find it.
		f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // detached meanwhile
		}
		// Held open now: still ours means it stays ours.
		if loop.Backing(dev, file) && !loop.ReadOnly(dev) {
			return f, nil
		}
		f.Close()
	}
	f, err := loop.Attach(file, loop.Options{Autoclear: v.Access == state.AccessMount})
	if err != nil {
		return nil, err
	}
	if err := applyMutable(f.Name(), v.Mutable); err != nil {
		d.log.Warn("applying volume parameters", "volume", v.ID, "err", err)
	}
	return f, nil
}

func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	staging := req.GetStagingTargetPath()
	if err := d.checkPath("staging target path", staging); err != nil {
		return nil, err
	}
	access, fs, err := d.requireCap(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	v, unlock, err := d.lockedVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := capFits(v, access, fs); err != nil {
		return nil, err
	}
	if v.Staging != "" && v.Staging != staging {
		return nil, status.Errorf(codes.AlreadyExists, "volume %s is staged at %s", v.ID, v.Staging)
	}
	newly := v.Staging == ""
	if err := d.stage(ctx, v, staging, true, req.GetVolumeCapability().GetMount().GetMountFlags(), newly); err != nil {
		// Undo the record of a stage that left nothing mounted, so a
		// refused path does not pin the volume to it.
		if ok, _ := mount.IsMountPoint(staging); newly && !ok {
			if derr := d.detachIdle(v); derr == nil {
				v.Staging = ""
				d.store.PutVolumeVolatile(v)
			}
		}
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// stage attaches v and, for a filesystem volume, mounts it at dir. Every
// step checks what is already there, so a retry after a crash finishes.
//
// fresh says v was neither staged nor published before this call, so no
// loop device of it exists (unstage detaches them before clearing the
// record, recover detaches those of unstaged volumes at start-up).
//
// The staging path (when asStaging) and the loop device are recorded after
// the attach and before the mount, in one write: a crash before the write
// leaves a device that either autoclears (filesystem volumes) or belongs
// to no staged volume, which recover detaches; a crash after it leaves a
// record that a retry or recover acts on. A mount never exists unrecorded.
func (d *Driver) stage(ctx context.Context, v *state.Volume, dir string, asStaging bool, flags []string, fresh bool) error {
	target, err := mount.OpenTarget(dir, true)
	if err != nil {
		return pathError("staging target path", err)
	}
	defer target.Close()
	dev, err := d.device(v, fresh)
	if err != nil {
		return internal(err, "attach volume %s", v.ID)
	}
	defer dev.Close()
	d.failpoint("stage-attach-unrecorded")
	if (asStaging && v.Staging != dir) || v.Loop != dev.Name() {
		if asStaging {
			v.Staging = dir
		}
		v.Loop = dev.Name()
		if err := d.store.PutVolumeVolatile(v); err != nil {
			return internal(err, "record volume")
		}
	}
	d.failpoint("stage-attached")
	if v.Access == state.AccessBlock {
		return nil
	}
	mflags, data := mountOptions(flags)
	justMounted := false
	if ok, err := mount.IsMountPoint(dir); err != nil {
		return internal(err, "check staging path")
	} else if ok {
		if !sameDevice(dir, dev.Name()) {
			return status.Errorf(codes.AlreadyExists, "staging path %s holds another mount", dir)
		}
	} else {
		if err := mount.Mount(dev.Name(), target, v.FsType, mflags, data); err != nil {
			return internal(err, "stage volume %s", v.ID)
		}
		justMounted = true
		d.failpoint("stage-mounted")
	}
	// The image may have grown while unstaged (an offline expansion, or
	// a clone into a larger volume): grow the filesystem of a mount made
	// now to match. (A mount that was already there is in use: growing it
	// is NodeExpandVolume's job, which the CO calls for it.) Where the
	// kernel refuses to grow a mounted ext4, the mount just made is not in
	// use yet: grow it unmounted and mount it again.
	if !justMounted {
		return nil
	}
	err = d.growFS(ctx, v, dev.Name(), dir)
	if errors.Is(err, mount.ErrOnlineResizeDenied) {
		if err := mount.Unmount(dir); err != nil {
			return internal(err, "unmount for offline growth")
		}
		if err := mount.GrowOffline(ctx, dev.Name(), v.FsType); err != nil {
			return internal(err, "grow filesystem of %s", v.ID)
		}
		if err := d.grown(v); err != nil {
			return internal(err, "stage volume %s", v.ID)
		}
		if err := mount.Mount(dev.Name(), target, v.FsType, mflags, data); err != nil {
			return internal(err, "stage volume %s", v.ID)
		}
		return nil
	}
	if err != nil {
		return growError(v, err)
	}
	return nil
}

func growError(v *state.Volume, err error) error {
	if errors.Is(err, mount.ErrOnlineResizeDenied) {
		return status.Errorf(codes.FailedPrecondition, "volume %s: %v; its %s filesystem grows when next staged", v.ID, err, v.FsType)
	}
	return internal(err, "grow filesystem of %s", v.ID)
}

// growFS grows the filesystem mounted at dir when its device is larger.
// The volume record says how large a device the filesystem was last made or
// grown for (FsSize), so staging an unchanged volume costs no resize2fs.
func (d *Driver) growFS(ctx context.Context, v *state.Volume, dev, dir string) error {
	size, err := loop.Size(dev)
	if err != nil {
		return err
	}
	if size < v.Capacity {
		if err := loop.Resize(dev); err != nil {
			return err
		}
	}
	if v.FsSize >= v.Capacity {
		return nil
	}
	if err := mount.Grow(ctx, dev, dir, v.FsType); err != nil {
		return err
	}
	return d.grown(v)
}

// grown records that v's filesystem fills its device. Not durable: lost,
// it only costs one resize that finds nothing to do.
func (d *Driver) grown(v *state.Volume) error {
	v.FsSize = v.Capacity
	if err := d.store.PutVolumeVolatile(v); err != nil {
		return fmt.Errorf("record filesystem size: %w", err)
	}
	return nil
}

func sameDevice(mountPoint, dev string) bool {
	a, err1 := mount.DeviceOf(mountPoint)
	b, err2 := mount.Rdev(dev)
	return err1 == nil && err2 == nil && a == b
}

// mountOptions splits CSI mount flags into mount(2) flags and the
// filesystem's option string.
func mountOptions(flags []string) (uintptr, string) {
	var mf uintptr
	var data []string
	for _, f := range flags {
		for _, o := range strings.Split(f, ",") {
			switch o {
			case "ro":
				mf |= unix.MS_RDONLY
			case "rw", "defaults", "":
			case "noexec":
				mf |= unix.MS_NOEXEC
			case "nosuid":
				mf |= unix.MS_NOSUID
			case "nodev":
				mf |= unix.MS_NODEV
			case "noatime":
				mf |= unix.MS_NOATIME
			case "nodiratime":
				mf |= unix.MS_NODIRATIME
			case "relatime":
				mf |= unix.MS_RELATIME
			case "strictatime":
				mf |= unix.MS_STRICTATIME
			case "sync":
				mf |= unix.MS_SYNCHRONOUS
			case "dirsync":
				mf |= unix.MS_DIRSYNC
			case "lazytime":
				mf |= unix.MS_LAZYTIME
			default:
				data = append(data, o)
			}
		}
	}
	return mf, strings.Join(data, ",")
}

// pathError maps a failure to open a CO-given path to a gRPC error.
func pathError(what string, err error) error {
	if errors.Is(err, mount.ErrSymlink) {
		return status.Errorf(codes.InvalidArgument, "%s: %v", what, err)
	}
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return status.Errorf(codes.NotFound, "%s: %v", what, err)
	}
	return status.Errorf(codes.FailedPrecondition, "%s: %v", what, err)
}

func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	staging := req.GetStagingTargetPath()
	if err := d.checkPath("staging target path", staging); err != nil {
		return nil, err
	}
	v, unlock, err := d.lockedVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if v.Staging != "" && v.Staging != staging {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged at %s, not %s", v.ID, v.Staging, staging)
	}
	if len(v.Targets) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still published at %s", v.ID, v.Targets[0].Path)
	}
	if err := d.unstage(v, staging); err != nil {
		return nil, err
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// unstage undoes stage: unmount (the autoclear loop device then goes with
// it) and detach whatever device is left.
func (d *Driver) unstage(v *state.Volume, dir string) error {
	if v.Access == state.AccessMount {
		if err := mount.Unmount(dir); err != nil {
			return internal(err, "unstage volume %s", v.ID)
		}
	}
	if err := d.detachIdle(v); err != nil {
		return err
	}
	if v.Staging != "" {
		v.Staging = ""
		if err := d.store.PutVolumeVolatile(v); err != nil {
			return internal(err, "record volume")
		}
	}
	return nil
}

// detachIdle detaches v's loop devices. A device still mounted somewhere
// is only marked autoclear by the kernel, so this never pulls a device out
// from under a mount.
func (d *Driver) detachIdle(v *state.Volume) error {
	file := d.volumeFile(v.ID)
	var devs []string
	if v.Loop != "" {
		// The device a volume was staged with; an autoclear device
		// (filesystem volumes) is usually gone with the unmount.
		if loop.Backing(v.Loop, file) {
			devs = append(devs, v.Loop)
		}
	} else {
		found, err := loop.Find(file)
		if err != nil {
			return internal(err, "find loop devices")
		}
		for _, dev := range found {
			if !dev.ReadOnly {
				devs = append(devs, dev.Path)
			}
		}
	}
	for _, dev := range devs {
		if err := loop.Detach(dev); err != nil {
			return internal(err, "detach")
		}
	}
	v.Loop = ""
	return nil
}

const ephemeralKey = "csi.storage.k8s.io/ephemeral"

func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	target := req.GetTargetPath()
	if err := d.checkPath("target path", target); err != nil {
		return nil, err
	}
	access, fs, err := d.requireCap(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	ro := req.GetReadonly() || readOnlyMode(req.GetVolumeCapability())
	flags := req.GetVolumeCapability().GetMount().GetMountFlags()
	if req.GetVolumeContext()[ephemeralKey] == "true" {
		return d.publishEphemeral(ctx, req, ro, flags)
	}
	staging := req.GetStagingTargetPath()
	if staging == "" {
		return nil, status.Error(codes.FailedPrecondition, "staging target path is required: the volume must be staged first")
	}
	if err := d.checkPath("staging target path", staging); err != nil {
		return nil, err
	}
	v, unlock, err := d.lockedVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := capFits(v, access, fs); err != nil {
		return nil, err
	}
	if v.Staging != staging {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", v.ID, staging)
	}
	if t, ok := v.Target(target); ok && t.ReadOnly != ro {
		return nil, status.Errorf(codes.AlreadyExists, "volume %s is published at %s with readonly=%v", v.ID, target, t.ReadOnly)
	}
	if req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		for _, t := range v.Targets {
			if t.Path != target {
				return nil, status.Errorf(codes.FailedPrecondition, "single-writer volume %s is already published at %s", v.ID, t.Path)
			}
		}
	}
	t, _ := v.Target(target)
	t.Path, t.ReadOnly = target, ro
	v.SetTarget(t)
	if err := d.store.PutVolumeVolatile(v); err != nil {
		return nil, internal(err, "record volume")
	}
	if err := d.publish(v, &t, staging, flags); err != nil {
		if ok, _ := mount.IsMountPoint(target); !ok {
			if t, _ := v.Target(target); t.Loop != "" {
				loop.Detach(t.Loop)
			}
			v.DropTarget(target)
			d.store.PutVolumeVolatile(v)
		}
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// publish bind-mounts the staged filesystem (or the loop device of a block
// volume) at t.Path.
func (d *Driver) publish(v *state.Volume, t *state.Target, staging string, flags []string) error {
	tf, err := mount.OpenTarget(t.Path, v.Access == state.AccessMount)
	if err != nil {
		return pathError("target path", err)
	}
	defer tf.Close()
	var source string
	if v.Access == state.AccessMount {
		if ok, err := mount.IsMountPoint(staging); err != nil || !ok {
			return status.Errorf(codes.FailedPrecondition, "volume %s: staging path %s is not mounted", v.ID, staging)
		}
		source = staging
	} else {
		dev, err := d.blockDevice(v, t)
		if err != nil {
			return err
		}
		source = dev
	}
	if ok, err := mount.IsMountPoint(t.Path); err != nil {
		return internal(err, "check target")
	} else if ok {
		if v.Access == state.AccessMount && !sameMount(t.Path, staging) {
			return status.Errorf(codes.AlreadyExists, "target %s holds another mount", t.Path)
		}
		return nil
	}
	if err := mount.Bind(source, tf, t.ReadOnly); err != nil {
		return internal(err, "publish volume %s", v.ID)
	}
	if mf, _ := mountOptions(flags); mf&^unix.MS_RDONLY != 0 {
		if t.ReadOnly {
			mf |= unix.MS_RDONLY
		}
		if err := unix.Mount("", t.Path, "", unix.MS_BIND|unix.MS_REMOUNT|mf, ""); err != nil {
			mount.Unmount(t.Path)
			return internal(err, "apply mount flags at %s", t.Path)
		}
	}
	return nil
}

// blockDevice returns the device node to publish: the staged loop device,
// or for a read-only publish a read-only loop device of its own (a
// read-only bind mount of a device node still lets writes through).
func (d *Driver) blockDevice(v *state.Volume, t *state.Target) (string, error) {
	file := d.volumeFile(v.ID)
	if !t.ReadOnly && v.Loop != "" && loop.Backing(v.Loop, file) {
		return v.Loop, nil
	}
	devs, err := loop.Find(file)
	if err != nil {
		return "", internal(err, "find loop devices")
	}
	for _, dev := range devs {
		if dev.ReadOnly == t.ReadOnly && (!t.ReadOnly || dev.Path == t.Loop) {
			return dev.Path, nil
		}
	}
	if !t.ReadOnly {
		return "", status.Errorf(codes.FailedPrecondition, "volume %s is not staged: no loop device", v.ID)
	}
	f, err := loop.Attach(file, loop.Options{ReadOnly: true})
	if err != nil {
		return "", internal(err, "attach read-only device")
	}
	f.Close()
	t.Loop = f.Name()
	v.SetTarget(*t)
	if err := d.store.PutVolumeVolatile(v); err != nil {
		loop.Detach(t.Loop)
		return "", internal(err, "record volume")
	}
	return t.Loop, nil
}

func sameMount(a, b string) bool {
	x, err1 := mount.DeviceOf(a)
	y, err2 := mount.DeviceOf(b)
	return err1 == nil && err2 == nil && x == y
}

func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	target := req.GetTargetPath()
	if err := d.checkPath("target path", target); err != nil {
		return nil, err
	}
	v, unlock, err := d.lockedVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := d.unpublish(v, target); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func (d *Driver) unpublish(v *state.Volume, target string) error {
	var st unix.Stat_t
	if err := unix.Lstat(target, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return status.Errorf(codes.InvalidArgument, "target path %s is a symbolic link", target)
	}
	if err := mount.Unmount(target); err != nil {
		return internal(err, "unpublish volume %s", v.ID)
	}
	// Only an empty directory or the (unmounted) device placeholder
	// file goes: rmdir refuses a directory with data in it.
	if err := unix.Rmdir(target); errors.Is(err, unix.ENOTDIR) {
		var st unix.Stat_t
		if unix.Lstat(target, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == 0 {
			unix.Unlink(target)
		}
	} else if err != nil && !errors.Is(err, unix.ENOENT) {
		return internal(err, "remove target %s", target)
	}
	t, ok := v.Target(target)
	if ok && t.Loop != "" {
		if err := loop.Detach(t.Loop); err != nil {
			return internal(err, "detach read-only device")
		}
	}
	if ok {
		v.DropTarget(target)
		if err := d.store.PutVolumeVolatile(v); err != nil {
			return internal(err, "record volume")
		}
	}
	if v.Ephemeral && len(v.Targets) == 0 {
		v.Phase = state.Deleting
		if err := d.store.PutVolumeVolatile(v); err != nil {
			return internal(err, "record volume")
		}
		return d.finishDelete(v, false)
	}
	return nil
}

// publishEphemeral serves an inline volume declared in a pod: created,
// formatted and mounted at the target in one call, deleted at unpublish.
func (d *Driver) publishEphemeral(ctx context.Context, req *csi.NodePublishVolumeRequest, ro bool, flags []string) (*csi.NodePublishVolumeResponse, error) {
	vc := req.GetVolumeContext()
	if req.GetVolumeCapability().GetBlock() != nil {
		return nil, status.Error(codes.InvalidArgument, "inline volumes are filesystems, not block devices")
	}
	size := defaultSize
	if s := vc["size"]; s != "" {
		n, err := parseQuantity(s)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "volume attribute size=%q: %v", s, err)
		}
		size = n
	}
	fs := req.GetVolumeCapability().GetMount().GetFsType()
	if vc["fsType"] != "" {
		fs = vc["fsType"]
	}
	if fs == "" {
		fs = d.cfg.DefaultFsType
	}
	if !mount.Supported(fs) {
		return nil, status.Errorf(codes.InvalidArgument, "filesystem %q not supported", fs)
	}
	mutable := map[string]string{}
	for _, k := range []string{ParamDirectIO, ParamReadAheadKiB} {
		if s, ok := vc[k]; ok {
			mutable[k] = s
		}
	}
	if err := checkMutable(mutable); err != nil {
		return nil, err
	}
	size, err := sizeFor(&csi.CapacityRange{RequiredBytes: size}, minSize(state.AccessMount, fs))
	if err != nil {
		return nil, err
	}
	handle := req.GetVolumeId()
	id := ephemeralID(handle)
	unlock, err := d.locks.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	spec := &volumeSpec{name: "ephemeral:" + handle, access: state.AccessMount, fsType: fs, size: size, required: size, params: map[string]string{}, mutable: mutable}
	v, err := d.createVolume(ctx, id, spec, true)
	if err != nil {
		if status.Code(err) == codes.AlreadyExists {
			return nil, status.Errorf(codes.AlreadyExists, "inline volume %s exists with other attributes", handle)
		}
		return nil, err
	}
	target := req.GetTargetPath()
	t, had := v.Target(target)
	if had && t.ReadOnly != ro {
		return nil, status.Errorf(codes.AlreadyExists, "inline volume %s is published with readonly=%v", handle, t.ReadOnly)
	}
	fresh := len(v.Targets) == 0
	v.SetTarget(state.Target{Path: target, ReadOnly: ro})
	if err := d.store.PutVolumeVolatile(v); err != nil {
		return nil, internal(err, "record volume")
	}
	if ro {
		flags = append(flags, "ro")
	}
	if err := d.stage(ctx, v, target, false, flags, fresh); err != nil {
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// parseQuantity reads a size such as "512Mi", "1Gi", "100M" or "1048576".
func parseQuantity(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"Ki", kib}, {"Mi", mib}, {"Gi", gib}, {"Ti", gib << 10}, {"k", 1000}, {"M", 1000 * 1000}, {"G", 1000 * 1000 * 1000}, {"T", 1000 * 1000 * 1000 * 1000}}
	mult := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("want a positive size such as 1Gi")
	}
	return n * mult, nil
}

// volumeAt finds which of v's paths (staging or a target) path is.
func (d *Driver) volumeAt(v *state.Volume, path string) error {
	if path == "" {
		return status.Error(codes.InvalidArgument, "volume path is required")
	}
	if _, ok := v.Target(path); ok || (path == v.Staging && v.Staging != "") {
		if _, err := os.Lstat(path); err != nil {
			return status.Errorf(codes.NotFound, "volume path %s: %v", path, err)
		}
		return nil
	}
	return status.Errorf(codes.NotFound, "volume %s is not staged or published at %q", v.ID, path)
}

func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	v, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	path := req.GetVolumePath()
	if err := d.volumeAt(v, path); err != nil {
		return nil, err
	}
	if v.Access == state.AccessBlock {
		devs, err := loop.Find(d.volumeFile(v.ID))
		if err != nil || len(devs) == 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s has no loop device", v.ID)
		}
		size, err := loop.Size(devs[0].Path)
		if err != nil {
			return nil, internal(err, "device size")
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Total: size, Unit: csi.VolumeUsage_BYTES}}}, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return nil, internal(err, "statfs %s", path)
	}
	bs := st.Bsize
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
	}}, nil
}

func (d *Driver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	v, unlock, err := d.lockedVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	path := req.GetVolumePath()
	if err := d.volumeAt(v, path); err != nil {
		return nil, err
	}
	if req.GetCapacityRange().GetRequiredBytes() > v.Capacity {
		return nil, status.Errorf(codes.OutOfRange, "volume %s is %d bytes: expand it through the controller first", v.ID, v.Capacity)
	}
	devs, err := loop.Find(d.volumeFile(v.ID))
	if err != nil {
		return nil, internal(err, "find loop devices")
	}
	for _, dev := range devs {
		if err := loop.Resize(dev.Path); err != nil {
			return nil, internal(err, "refresh device size")
		}
	}
	if v.Access == state.AccessMount {
		if len(devs) == 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not attached", v.ID)
		}
		if err := d.growFS(ctx, v, devs[0].Path, path); err != nil {
			return nil, growError(v, err)
		}
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: v.Capacity}, nil
}

func (d *Driver) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	v, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	h := d.health(v)
	if v.Access == state.AccessMount {
		for _, p := range append([]string{v.Staging}, targetPaths(v)...) {
			if p == "" {
				continue
			}
			if ok, err := mount.IsMountPoint(p); err != nil || !ok {
				h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
					Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: "NotMounted",
					Message: fmt.Sprintf("%s should hold the volume but is not a mount point", p)})
			}
		}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}

func targetPaths(v *state.Volume) []string {
	var out []string
	for _, t := range v.Targets {
		out = append(out, t.Path)
	}
	return out
}

func (d *Driver) NodeGetStorageHealth(ctx context.Context, req *csi.NodeGetStorageHealthRequest) (*csi.NodeGetStorageHealthResponse, error) {
	resp := &csi.NodeGetStorageHealthResponse{}
	if err := d.store.Check(); err != nil {
		resp.BackendHealth = append(resp.BackendHealth, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
			Status: csi.StorageHealthErrorType_STORAGE_UNREACHABLE, Reason: "StoreNotWritable", Message: err.Error()})
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		resp.BackendHealth = append(resp.BackendHealth, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
			Status: csi.StorageHealthErrorType_STORAGE_DEGRADED, Reason: "NoLoopControl", Message: err.Error()})
	}
	return resp, nil
}
