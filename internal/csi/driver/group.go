package driver

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tripod-dev/tripod/internal/csi/state"
)

func (d *Driver) GroupControllerGetCapabilities(context.Context, *csi.GroupControllerGetCapabilitiesRequest) (*csi.GroupControllerGetCapabilitiesResponse, error) {
	return &csi.GroupControllerGetCapabilitiesResponse{Capabilities: []*csi.GroupControllerServiceCapability{{
		Type: &csi.GroupControllerServiceCapability_Rpc{Rpc: &csi.GroupControllerServiceCapability_RPC{
			Type: csi.GroupControllerServiceCapability_RPC_CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT}},
	}}}, nil
}

func (d *Driver) csiGroup(g *state.Group) (*csi.VolumeGroupSnapshot, error) {
	out := &csi.VolumeGroupSnapshot{GroupSnapshotId: g.ID, CreationTime: timestamppb.New(g.Created), ReadyToUse: true}
	for _, id := range g.Snapshots {
		s, err := d.store.Snapshot(id)
		if err != nil {
			return nil, internal(err, "read member snapshot")
		}
		out.Snapshots = append(out.Snapshots, d.csiSnapshot(s))
	}
	return out, nil
}

// CreateVolumeGroupSnapshot snapshots several volumes at one instant: every
// staged filesystem among them is frozen before the first copy starts and
// thawed after the last one ends.
func (d *Driver) CreateVolumeGroupSnapshot(ctx context.Context, req *csi.CreateVolumeGroupSnapshotRequest) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	srcs := sortedUnique(req.GetSourceVolumeIds())
	if len(srcs) == 0 {
		return nil, status.Error(codes.InvalidArgument, "source volume ids are required")
	}
	if len(req.GetParameters()) > 0 {
		return nil, status.Error(codes.InvalidArgument, "group snapshots take no parameters")
	}
	id := makeID("g", req.GetName())
	unlock, err := d.locks.lockAll(ctx, append([]string{id}, srcs...))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if g, err := d.store.Group(id); err == nil && g.Phase == state.Ready {
		if !slices.Equal(g.Sources, srcs) {
			return nil, status.Errorf(codes.AlreadyExists, "group snapshot %q exists for other volumes", req.GetName())
		}
		out, err := d.csiGroup(g)
		if err != nil {
			return nil, err
		}
		return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: out}, nil
	} else if err != nil && !errors.Is(err, state.ErrNotFound) {
		return nil, internal(err, "read group snapshot")
	}
	var vols []*state.Volume
	for _, src := range srcs {
		v, err := d.lookupVolume(src)
		if err != nil {
			return nil, err
		}
		vols = append(vols, v)
	}
	g := &state.Group{ID: id, Name: req.GetName(), Phase: state.Creating, Sources: srcs, Created: time.Now().UTC()}
	for _, v := range vols {
		g.Snapshots = append(g.Snapshots, makeID("s", req.GetName()+"\x00"+v.ID))
	}
	if err := d.store.PutGroup(g); err != nil {
		return nil, internal(err, "record group snapshot")
	}
	var thaws []func() error
	defer func() {
		for _, t := range thaws {
			t()
		}
	}()
	for _, v := range vols {
		thaw, err := d.freeze(v)
		if err != nil {
			return nil, internal(err, "freeze %s", v.ID)
		}
		thaws = append(thaws, thaw)
	}
	for i, v := range vols {
		if _, err := d.snapshot(ctx, g.Snapshots[i], req.GetName()+"/"+v.ID, v, id); err != nil {
			d.dropGroup(g)
			return nil, err
		}
	}
	g.Phase = state.Ready
	if err := d.store.PutGroup(g); err != nil {
		return nil, internal(err, "record group snapshot")
	}
	out, err := d.csiGroup(g)
	if err != nil {
		return nil, err
	}
	return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: out}, nil
}

// dropGroup removes a group's member snapshots, then its record.
func (d *Driver) dropGroup(g *state.Group) error {
	for _, sid := range g.Snapshots {
		if err := d.removeSnapshot(&state.Snapshot{ID: sid}); err != nil {
			return err
		}
	}
	if err := d.store.DeleteGroup(g.ID); err != nil {
		return internal(err, "remove group record")
	}
	return nil
}

func (d *Driver) DeleteVolumeGroupSnapshot(ctx context.Context, req *csi.DeleteVolumeGroupSnapshotRequest) (*csi.DeleteVolumeGroupSnapshotResponse, error) {
	id := req.GetGroupSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "group snapshot id is required")
	}
	if !validID('g', id) {
		return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
	}
	g, unlock, err := lockRecord(ctx, d, id, "group snapshot", d.store.Group)
	if err != nil {
		return nil, err
	}
	if g == nil {
		return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
	}
	defer unlock()
	if ids := req.GetSnapshotIds(); len(ids) > 0 && !slices.Equal(sortedUnique(ids), sortedUnique(g.Snapshots)) {
		return nil, status.Errorf(codes.InvalidArgument, "snapshot ids do not match group snapshot %s", id)
	}
	if err := d.dropGroup(g); err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
}

func (d *Driver) GetVolumeGroupSnapshot(ctx context.Context, req *csi.GetVolumeGroupSnapshotRequest) (*csi.GetVolumeGroupSnapshotResponse, error) {
	id := req.GetGroupSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "group snapshot id is required")
	}
	if !validID('g', id) {
		return nil, status.Errorf(codes.NotFound, "group snapshot %q not found", id)
	}
	g, err := d.store.Group(id)
	if errors.Is(err, state.ErrNotFound) || (err == nil && g.Phase != state.Ready) {
		return nil, status.Errorf(codes.NotFound, "group snapshot %q not found", id)
	}
	if err != nil {
		return nil, internal(err, "read group snapshot")
	}
	if ids := req.GetSnapshotIds(); len(ids) > 0 && !slices.Equal(sortedUnique(ids), sortedUnique(g.Snapshots)) {
		return nil, status.Errorf(codes.InvalidArgument, "snapshot ids do not match group snapshot %s", id)
	}
	out, err := d.csiGroup(g)
	if err != nil {
		return nil, err
	}
	return &csi.GetVolumeGroupSnapshotResponse{GroupSnapshot: out}, nil
}
