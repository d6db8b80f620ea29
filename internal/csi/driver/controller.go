package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tripod-dev/tripod/internal/csi/loop"
	"github.com/tripod-dev/tripod/internal/csi/mount"
	"github.com/tripod-dev/tripod/internal/csi/state"
)

func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csi.ControllerServiceCapability_RPC_PUBLISH_READONLY,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES_PUBLISHED_NODES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.ControllerServiceCapability_RPC_MODIFY_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *Driver) csiVolume(v *state.Volume) *csi.Volume {
	out := &csi.Volume{
		VolumeId:           v.ID,
		CapacityBytes:      v.Capacity,
		AccessibleTopology: []*csi.Topology{d.topology()},
	}
	if v.FsType != "" {
		out.VolumeContext = map[string]string{"fsType": v.FsType}
	}
	switch {
	case v.SourceSnapshot != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.SourceSnapshot}}}
	case v.SourceVolume != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.SourceVolume}}}
	}
	return out
}

// reachable reports whether the accessibility requirements allow this node.
func (d *Driver) reachable(req *csi.TopologyRequirement) bool {
	if len(req.GetRequisite()) == 0 {
		return true
	}
	for _, t := range req.GetRequisite() {
		if d.matches(t) {
			return true
		}
	}
	return false
}

func (d *Driver) matches(t *csi.Topology) bool {
	for k, v := range t.GetSegments() {
		if k != TopologyKey || v != d.cfg.NodeID {
			return false
		}
	}
	return true
}

// volumeSpec is what a CreateVolume asks for, compared against an existing
// volume of the same name.
type volumeSpec struct {
	name, access, fsType  string
	size, required, limit int64
	params, mutable       map[string]string
	srcSnap, srcVol       string
}

func (s *volumeSpec) compatible(v *state.Volume) bool {
	return v.Access == s.access && v.FsType == s.fsType &&
		v.Capacity >= s.required && (s.limit == 0 || v.Capacity <= s.limit) &&
		sameMap(v.Params, s.params) && v.SourceSnapshot == s.srcSnap && v.SourceVolume == s.srcVol
}

// fitSource checks that a source (a snapshot or volume, named as in "snapshot
// ID", that "holds" or "is" a volume of access and fsType) fits s, and grows
// s.size to the source's size within the limit.
func (s *volumeSpec) fitSource(name, verb, access, fsType string, size int64) error {
	if access != s.access || fsType != s.fsType {
		return status.Errorf(codes.InvalidArgument, "%s %s a %s %s volume, not %s %s", name, verb, access, fsType, s.access, s.fsType)
	}
	if s.size < size {
		if s.limit > 0 && s.limit < size {
			return status.Errorf(codes.OutOfRange, "%s needs %d bytes, limit is %d", name, size, s.limit)
		}
		s.size = size
	}
	return nil
}

func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	access, fsType, err := d.parseCaps(req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	params, err := checkParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	if err := checkMutable(req.GetMutableParameters()); err != nil {
		return nil, err
	}
	size, err := sizeFor(req.GetCapacityRange(), minSize(access, fsType))
	if err != nil {
		return nil, err
	}
	if !d.reachable(req.GetAccessibilityRequirements()) {
		return nil, status.Errorf(codes.ResourceExhausted, "volume must be reachable from topology this node (%s=%s) is not in", TopologyKey, d.cfg.NodeID)
	}
	spec := &volumeSpec{
		name: req.GetName(), access: access, fsType: fsType, size: size,
		required: req.GetCapacityRange().GetRequiredBytes(), limit: req.GetCapacityRange().GetLimitBytes(),
		params: params, mutable: req.GetMutableParameters(),
	}
	keys := []string{}
	switch src := req.GetVolumeContentSource().GetType().(type) {
	case *csi.VolumeContentSource_Snapshot:
		spec.srcSnap = src.Snapshot.GetSnapshotId()
		if spec.srcSnap == "" {
			return nil, status.Error(codes.InvalidArgument, "snapshot source needs a snapshot id")
		}
		keys = append(keys, spec.srcSnap)
	case *csi.VolumeContentSource_Volume:
		spec.srcVol = src.Volume.GetVolumeId()
		if spec.srcVol == "" {
			return nil, status.Error(codes.InvalidArgument, "volume source needs a volume id")
		}
		keys = append(keys, spec.srcVol)
	case nil:
	default:
		return nil, status.Error(codes.InvalidArgument, "unsupported volume content source")
	}
	id := makeID("v", spec.name)
	unlock, err := d.locks.lockAll(ctx, append(keys, id))
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := d.createVolume(ctx, id, spec, false)
	if err != nil {
		return nil, err
	}
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(v)}, nil
}

// createVolume makes volume id (locked by the caller) or returns the
// existing one. The record is written first, in phase Creating, so a crash
// mid-way is finished (or undone) by a retry or by recover.
func (d *Driver) createVolume(ctx context.Context, id string, spec *volumeSpec, ephemeral bool) (*state.Volume, error) {
	v, err := d.store.Volume(id)
	switch {
	case err == nil && v.Phase == state.Ready:
		if v.Name != spec.name || !spec.compatible(v) {
			return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with different size, capabilities, parameters or source", spec.name)
		}
		return v, nil
	case err == nil && v.Phase == state.Deleting:
		if err := d.finishDelete(v, true); err != nil {
			return nil, err
		}
	case err != nil && !errors.Is(err, state.ErrNotFound):
		return nil, internal(err, "read volume")
	}
	// Creating (a retry after a crash) starts the work over from a
	// fresh file: nothing of it was handed out yet.

	var snap *state.Snapshot
	var srcVol *state.Volume
	switch {
	case spec.srcSnap != "":
		snap, err = d.lookupSnapshot(spec.srcSnap)
		if err != nil {
			return nil, err
		}
		if err := spec.fitSource("snapshot "+snap.ID, "holds", snap.Access, snap.FsType, snap.Size); err != nil {
			return nil, err
		}
	case spec.srcVol != "":
		srcVol, err = d.lookupVolume(spec.srcVol)
		if err != nil {
			return nil, err
		}
		if err := spec.fitSource("volume "+srcVol.ID, "is", srcVol.Access, srcVol.FsType, srcVol.Capacity); err != nil {
			return nil, err
		}
	}

	v = &state.Volume{
		ID: id, Name: spec.name, Phase: state.Creating, Access: spec.access, FsType: spec.fsType,
		Capacity: spec.size, Params: spec.params, Mutable: spec.mutable,
		SourceSnapshot: spec.srcSnap, SourceVolume: spec.srcVol, Ephemeral: ephemeral,
		Created: time.Now().UTC(),
	}
	if err := d.reserve(v); err != nil {
		return nil, err
	}
	d.failpoint("create-recorded")
	file := d.volumeFile(id)
	switch {
	case snap != nil:
		err = copySparse(ctx, d.snapshotFile(snap.ID), file, spec.size)
		v.FsSize = snap.FsSize
	case srcVol != nil:
		err = d.copyVolume(ctx, srcVol, file, spec.size, true)
		v.FsSize = srcVol.FsSize
	default:
		err = makeImage(ctx, file, spec.size, spec.fsType)
		v.FsSize = spec.size
	}
	if err != nil {
		os.Remove(file)
		d.store.DeleteVolume(id)
		if errors.Is(err, unix.ENOSPC) {
			return nil, status.Errorf(codes.ResourceExhausted, "create volume %s: %v", spec.name, err)
		}
		return nil, internal(err, "create volume %s", spec.name)
	}
	d.failpoint("create-written")
	v.Phase = state.Ready
	if err := d.store.PutVolume(v); err != nil {
		return nil, internal(err, "record volume")
	}
	d.log.Info("volume created", "id", id, "name", spec.name, "bytes", spec.size, "access", spec.access, "fs", spec.fsType)
	return v, nil
}

// reserve records v (phase Creating) if there is room for it.
func (d *Driver) reserve(v *state.Volume) error {
	d.capMu.Lock()
	defer d.capMu.Unlock()
	avail, err := d.available()
	if err != nil {
		return internal(err, "free space")
	}
	if v.Capacity > avail {
		return status.Errorf(codes.ResourceExhausted, "volume of %d bytes does not fit: %d bytes available", v.Capacity, avail)
	}
	// Not durable: an image left by a power loss before the record
	// reached the disk has no record, and recover removes it.
	if err := d.store.PutVolumeVolatile(v); err != nil {
		return internal(err, "record volume")
	}
	return nil
}

// available is the space a new volume can still be promised: the root
// filesystem's free space less what existing sparse volumes may still
// fill, and within the configured capacity.
func (d *Driver) available() (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(d.cfg.Root, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", d.cfg.Root, err)
	}
	free := int64(st.Bavail) * st.Bsize
	vols, err := d.store.Volumes()
	if err != nil {
		return 0, err
	}
	snaps, err := d.store.Snapshots()
	if err != nil {
		return 0, err
	}
	var unwritten, provisioned int64
	for _, v := range vols {
		provisioned += v.Capacity
		var fst unix.Stat_t
		alloc := int64(0)
		if unix.Stat(d.volumeFile(v.ID), &fst) == nil {
			alloc = fst.Blocks * 512
		}
		unwritten += max(v.Capacity-alloc, 0)
	}
	for _, s := range snaps {
		provisioned += s.Size
	}
	avail := free - unwritten
	if d.cfg.Capacity > 0 {
		avail = min(avail, d.cfg.Capacity-provisioned)
	}
	return max(avail, 0), nil
}

// makeImage creates a sparse file of size bytes and formats it when fsType
// is set. mkfs works on the regular file directly: no loop device needed.
func makeImage(ctx context.Context, file string, size int64, fsType string) error {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return fmt.Errorf("size image: %w", err)
	}
	if fsType != "" {
		if err := mount.Format(ctx, file, fsType); err != nil {
			return err
		}
	}
	return nil
}

func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if !validID('v', id) {
		return &csi.DeleteVolumeResponse{}, nil // names nothing we made: already gone
	}
	v, unlock, err := lockRecord(ctx, d, id, "volume", d.store.Volume)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return &csi.DeleteVolumeResponse{}, nil
	}
	defer unlock()
	if v.Staging != "" || len(v.Targets) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still staged or published on this node", id)
	}
	if len(v.PublishedNodes) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still published to %v", id, v.PublishedNodes)
	}
	// Not durable: after a power loss the volume is simply still there,
	// and the CO's retried DeleteVolume removes it.
	v.Phase = state.Deleting
	if err := d.store.PutVolumeVolatile(v); err != nil {
		return nil, internal(err, "record volume")
	}
	if err := d.finishDelete(v, false); err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// finishDelete removes a volume marked Deleting: loop devices left over,
// the image, then the record. A volume that is neither staged nor
// published has no loop device (unstage detaches them, recover detaches
// leaked ones), so only its recorded device is checked unless scan asks
// for a look at every loop device (after a crash).
func (d *Driver) finishDelete(v *state.Volume, scan bool) error {
	file := d.volumeFile(v.ID)
	var devs []string
	if scan {
		found, err := loop.Find(file)
		if err != nil {
			return internal(err, "find loop devices")
		}
		for _, dev := range found {
			devs = append(devs, dev.Path)
		}
	} else if v.Loop != "" && loop.Backing(v.Loop, file) {
		devs = append(devs, v.Loop)
	}
	for _, dev := range devs {
		if err := loop.Detach(dev); err != nil {
			return internal(err, "detach")
		}
	}
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return internal(err, "remove image")
	}
	if err := d.store.DeleteVolume(v.ID); err != nil {
		return internal(err, "remove record")
	}
	d.log.Info("volume deleted", "id", v.ID, "name", v.Name)
	return nil
}

func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	v, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	unconfirmed := func(msg string) (*csi.ValidateVolumeCapabilitiesResponse, error) {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: msg}, nil
	}
	for _, c := range req.GetVolumeCapabilities() {
		access, fs, err := d.parseCap(c)
		if err != nil {
			return unconfirmed(status.Convert(err).Message())
		}
		if access != v.Access {
			return unconfirmed(fmt.Sprintf("volume is %s, not %s", v.Access, access))
		}
		if fs != "" && fs != v.FsType {
			return unconfirmed(fmt.Sprintf("volume holds %s, not %s", v.FsType, fs))
		}
	}
	if p := req.GetParameters(); p != nil {
		if params, err := checkParams(p); err != nil || !sameMap(params, v.Params) {
			return unconfirmed("parameters differ from the volume's")
		}
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
		MutableParameters:  req.GetMutableParameters(),
	}}, nil
}

// page cuts a sorted ID list at a starting token (the last ID of the
// previous page) and a maximum. Tokens are IDs, not offsets, so objects
// created or deleted between pages shift nothing.
func page[T any](items []T, id func(T) string, token string, maxEntries int32) ([]T, string, error) {
	if maxEntries < 0 {
		return nil, "", status.Error(codes.InvalidArgument, "max_entries must not be negative")
	}
	start := 0
	if token != "" {
		if !idRE.MatchString(token) {
			return nil, "", status.Errorf(codes.Aborted, "starting token %q is not one this driver issued", token)
		}
		start = len(items)
		for i, it := range items {
			if id(it) > token {
				start = i
				break
			}
		}
	}
	items = items[start:]
	next := ""
	if maxEntries > 0 && int(maxEntries) < len(items) {
		items = items[:maxEntries]
		next = id(items[len(items)-1])
	}
	return items, next, nil
}

// readyVolumes returns a page of the Ready volumes, by ID, from token.
func (d *Driver) readyVolumes(token string, maxEntries int32) ([]*state.Volume, string, error) {
	all, err := d.store.Volumes()
	if err != nil {
		return nil, "", internal(err, "list volumes")
	}
	all = slices.DeleteFunc(all, func(v *state.Volume) bool { return v.Phase != state.Ready })
	return page(all, func(v *state.Volume) string { return v.ID }, token, maxEntries)
}

func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	vols, next, err := d.readyVolumes(req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range vols {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{
			Volume: d.csiVolume(v),
			Status: &csi.ListVolumesResponse_VolumeStatus{PublishedNodeIds: v.PublishedNodes},
		})
	}
	return resp, nil
}

// health checks a volume's image is present and of its size. A healthy
// volume has no health entries.
func (d *Driver) health(v *state.Volume) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: v.ID}
	bad := func(t csi.VolumeHealthErrorType, reason, msg string) {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{Status: t, Reason: reason, Message: msg})
	}
	fi, err := os.Stat(d.volumeFile(v.ID))
	switch {
	case err != nil:
		bad(csi.VolumeHealthErrorType_INACCESSIBLE, "ImageMissing", fmt.Sprintf("image: %v", err))
	case fi.Size() < v.Capacity:
		bad(csi.VolumeHealthErrorType_DEGRADED, "ImageShort", fmt.Sprintf("image is %d bytes, volume %d", fi.Size(), v.Capacity))
	}
	return h
}

func (d *Driver) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	v, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: d.health(v)}, nil
}

func (d *Driver) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	vols, next, err := d.readyVolumes(req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ControllerListVolumeHealthResponse{NextToken: next}
	for _, v := range vols {
		resp.Entries = append(resp.Entries, d.health(v))
	}
	return resp, nil
}

func (d *Driver) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	v, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeResponse{
		Volume: d.csiVolume(v),
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{PublishedNodeIds: v.PublishedNodes},
	}, nil
}

func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if len(req.GetVolumeCapabilities()) > 0 {
		if _, _, err := d.parseCaps(req.GetVolumeCapabilities()); err != nil {
			return nil, err
		}
	}
	if _, err := checkParams(req.GetParameters()); err != nil {
		return nil, err
	}
	if t := req.GetAccessibleTopology(); t != nil && !d.matches(t) {
		return &csi.GetCapacityResponse{AvailableCapacity: 0}, nil
	}
	avail, err := d.available()
	if err != nil {
		return nil, internal(err, "free space")
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: avail,
		MaximumVolumeSize: wrapperspb.Int64(avail),
		MinimumVolumeSize: wrapperspb.Int64(block),
	}, nil
}

func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity range is required")
	}
	if req.GetVolumeCapability() != nil {
		if _, _, err := d.parseCap(req.GetVolumeCapability()); err != nil {
			return nil, err
		}
	}
	id := req.GetVolumeId()
	if !validID('v', id) {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", id)
	}
	v, unlock, err := d.lockedVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	size, err := sizeFor(req.GetCapacityRange(), minSize(v.Access, v.FsType))
	if err != nil {
		return nil, err
	}
	if lim := req.GetCapacityRange().GetLimitBytes(); lim > 0 && v.Capacity > lim {
		return nil, status.Errorf(codes.OutOfRange, "volume is %d bytes, above the limit %d: shrinking is not supported", v.Capacity, lim)
	}
	if size > v.Capacity {
		if err := d.grow(v, size); err != nil {
			return nil, err
		}
	} else if err := d.fillImage(v); err != nil {
		// A repeat of an expansion the driver died in.
		return nil, err
	}
	return &csi.ControllerExpandVolumeResponse{
		CapacityBytes:         v.Capacity,
		NodeExpansionRequired: v.Access == state.AccessMount,
	}, nil
}

// grow enlarges v's image (and any loop device on it) to size, recording
// the new size first: a crash part-way leaves an image smaller than its
// record, which a retried expansion grows again.
func (d *Driver) grow(v *state.Volume, size int64) error {
	d.capMu.Lock()
	avail, err := d.available()
	if err == nil && size-v.Capacity > avail {
		err = status.Errorf(codes.ResourceExhausted, "growing by %d bytes does not fit: %d available", size-v.Capacity, avail)
	}
	if err == nil {
		v.Capacity = size
		err = d.store.PutVolume(v)
	}
	d.capMu.Unlock()
	if err != nil {
		return internal(err, "reserve")
	}
	d.failpoint("expand-recorded")
	return d.fillImage(v)
}

// fillImage brings v's image (and any loop device on it) up to the recorded
// capacity. The capacity is recorded first, so after a crash mid-way the
// image is short of it; a retried expansion, or recover, completes it.
func (d *Driver) fillImage(v *state.Volume) error {
	file := d.volumeFile(v.ID)
	fi, err := os.Stat(file)
	if err != nil {
		return internal(err, "stat image")
	}
	if fi.Size() >= v.Capacity {
		return nil
	}
	if err := os.Truncate(file, v.Capacity); err != nil {
		return internal(err, "grow image")
	}
	devs, err := loop.Find(file)
	if err != nil {
		return internal(err, "find loop devices")
	}
	for _, dev := range devs {
		if err := loop.Resize(dev.Path); err != nil {
			return internal(err, "grow loop device")
		}
	}
	return nil
}

func (d *Driver) ControllerModifyVolume(ctx context.Context, req *csi.ControllerModifyVolumeRequest) (*csi.ControllerModifyVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if err := checkMutable(req.GetMutableParameters()); err != nil {
		return nil, err
	}
	if !validID('v', id) {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", id)
	}
	v, unlock, err := d.lockedVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if v.Mutable == nil {
		v.Mutable = map[string]string{}
	}
	for k, val := range req.GetMutableParameters() {
		v.Mutable[k] = val
	}
	if err := d.store.PutVolume(v); err != nil {
		return nil, internal(err, "record volume")
	}
	devs, err := loop.Find(d.volumeFile(v.ID))
	if err != nil {
		return nil, internal(err, "find loop devices")
	}
	for _, dev := range devs {
		if err := applyMutable(dev.Path, v.Mutable); err != nil {
			return nil, internal(err, "apply parameters")
		}
	}
	return &csi.ControllerModifyVolumeResponse{}, nil
}

// applyMutable sets a loop device's tunables from the volume's mutable
// parameters (validated by checkMutable).
func applyMutable(dev string, p map[string]string) error {
	if s, ok := p[ParamDirectIO]; ok {
		on, _ := strconv.ParseBool(s)
		if err := loop.SetDirectIO(dev, on); err != nil && !(on && errors.Is(err, unix.EINVAL)) {
			// EINVAL: the backing filesystem cannot do O_DIRECT
			// with this block size; the device stays buffered.
			return err
		}
	}
	if s, ok := p[ParamReadAheadKiB]; ok {
		if err := loop.SetReadAhead(dev, s); err != nil {
			return err
		}
	}
	return nil
}

func (d *Driver) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	id, node := req.GetVolumeId(), req.GetNodeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if node == "" {
		return nil, status.Error(codes.InvalidArgument, "node id is required")
	}
	access, fs, err := d.requireCap(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	if !validID('v', id) {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", id)
	}
	if node != d.cfg.NodeID {
		return nil, status.Errorf(codes.NotFound, "node %q not found: this driver serves node %q", node, d.cfg.NodeID)
	}
	v, unlock, err := d.lockedVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := capFits(v, access, fs); err != nil {
		return nil, err
	}
	pctx := map[string]string{"readOnly": strconv.FormatBool(req.GetReadonly())}
	if slices.Contains(v.PublishedNodes, node) {
		if v.PublishedReadOnly != req.GetReadonly() {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is published to %s with readonly=%v", id, node, v.PublishedReadOnly)
		}
		return &csi.ControllerPublishVolumeResponse{PublishContext: pctx}, nil
	}
	if d.cfg.MaxVolumes > 0 {
		d.capMu.Lock()
		n, err := d.attachedCount()
		d.capMu.Unlock()
		if err != nil {
			return nil, internal(err, "count attached volumes")
		}
		if n >= d.cfg.MaxVolumes {
			return nil, status.Errorf(codes.ResourceExhausted, "node %s has its maximum of %d volumes", node, d.cfg.MaxVolumes)
		}
	}
	v.PublishedNodes = append(v.PublishedNodes, node)
	v.PublishedReadOnly = req.GetReadonly()
	if err := d.store.PutVolume(v); err != nil {
		return nil, internal(err, "record volume")
	}
	return &csi.ControllerPublishVolumeResponse{PublishContext: pctx}, nil
}

func (d *Driver) attachedCount() (int64, error) {
	vols, err := d.store.Volumes()
	if err != nil {
		return 0, err
	}
	var n int64
	for _, v := range vols {
		if len(v.PublishedNodes) > 0 {
			n++
		}
	}
	return n, nil
}

func (d *Driver) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if !validID('v', id) {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	v, unlock, err := lockRecord(ctx, d, id, "volume", d.store.Volume)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	defer unlock()
	node := req.GetNodeId()
	n := len(v.PublishedNodes)
	v.PublishedNodes = slices.DeleteFunc(v.PublishedNodes, func(s string) bool { return node == "" || s == node })
	if len(v.PublishedNodes) != n {
		if err := d.store.PutVolume(v); err != nil {
			return nil, internal(err, "record volume")
		}
	}
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}
