package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tripod-dev/tripod/internal/csi/loop"
	"github.com/tripod-dev/tripod/internal/csi/mount"
	"github.com/tripod-dev/tripod/internal/csi/state"
)

func (d *Driver) lookupSnapshot(id string) (*state.Snapshot, error) {
	if !validID('s', id) {
		return nil, status.Errorf(codes.NotFound, "snapshot %q not found", id)
	}
	s, err := d.store.Snapshot(id)
	if errors.Is(err, state.ErrNotFound) || (err == nil && s.Phase != state.Ready) {
		return nil, status.Errorf(codes.NotFound, "snapshot %q not found", id)
	}
	if err != nil {
		return nil, internal(err, "read snapshot")
	}
	return s, nil
}

// csiSnapshot describes s. Its accessible_topology (optional) is left out:
// a snapshot lives on the node of its source volume, and csi-sanity v5.6.0
// compares a reported topology with reflect.DeepEqual, which protobuf
// messages fail on internal cache fields.
func (d *Driver) csiSnapshot(s *state.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:      s.ID,
		SourceVolumeId:  s.SourceVolume,
		SizeBytes:       s.Size,
		CreationTime:    timestamppb.New(s.Created),
		ReadyToUse:      true,
		GroupSnapshotId: s.Group,
	}
}

func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	src := req.GetSourceVolumeId()
	if src == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume id is required")
	}
	if len(req.GetParameters()) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "snapshots take no parameters")
	}
	if !d.reachable(req.GetAccessibilityRequirements()) {
		return nil, status.Errorf(codes.ResourceExhausted, "snapshot must be reachable from topology this node (%s=%s) is not in", TopologyKey, d.cfg.NodeID)
	}
	id := makeID("s", req.GetName())
	unlock, err := d.locks.lockAll(ctx, []string{id, src})
	if err != nil {
		return nil, err
	}
	defer unlock()
	s, err := d.store.Snapshot(id)
	if err == nil && s.Phase == state.Ready {
		if s.SourceVolume != src || s.Name != req.GetName() {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q exists for another volume", req.GetName())
		}
		return &csi.CreateSnapshotResponse{Snapshot: d.csiSnapshot(s)}, nil
	}
	if err != nil && !errors.Is(err, state.ErrNotFound) {
		return nil, internal(err, "read snapshot")
	}
	v, err := d.lookupVolume(src)
	if err != nil {
		return nil, err
	}
	s, err = d.snapshot(ctx, id, req.GetName(), v, "")
	if err != nil {
		return nil, err
	}
	return &csi.CreateSnapshotResponse{Snapshot: d.csiSnapshot(s)}, nil
}

// snapshot copies volume v (locked by the caller) into snapshot id.
func (d *Driver) snapshot(ctx context.Context, id, name string, v *state.Volume, group string) (*state.Snapshot, error) {
	s := &state.Snapshot{
		ID: id, Name: name, Phase: state.Creating, SourceVolume: v.ID,
		Access: v.Access, FsType: v.FsType, Size: v.Capacity, FsSize: v.FsSize, Group: group,
		Created: time.Now().UTC(),
	}
	d.capMu.Lock()
	avail, err := d.available()
	if err == nil && allocated(d.volumeFile(v.ID)) > avail {
		err = status.Errorf(codes.ResourceExhausted, "snapshot of %s does not fit: %d bytes available", v.ID, avail)
	}
	if err == nil {
		err = d.store.PutSnapshot(s)
	}
	d.capMu.Unlock()
	if err != nil {
		return nil, internal(err, "reserve snapshot")
	}
	file := d.snapshotFile(id)
	if err := d.copyVolume(ctx, v, file, v.Capacity, group == ""); err != nil {
		os.Remove(file)
		d.store.DeleteSnapshot(id)
		if errors.Is(err, unix.ENOSPC) {
			return nil, status.Errorf(codes.ResourceExhausted, "snapshot %s: %v", name, err)
		}
		return nil, internal(err, "snapshot %s", name)
	}
	d.failpoint("snapshot-written")
	s.Phase = state.Ready
	if err := d.store.PutSnapshot(s); err != nil {
		return nil, internal(err, "record snapshot")
	}
	d.log.Info("snapshot created", "id", id, "name", name, "volume", v.ID)
	return s, nil
}

func allocated(file string) int64 {
	var st unix.Stat_t
	if unix.Stat(file, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

// copyVolume copies v's image to dst. A staged filesystem is frozen for the
// copy, so the copy is the filesystem as of one instant; a block volume's
// device is flushed first, so writes still in its page cache are included.
func (d *Driver) copyVolume(ctx context.Context, v *state.Volume, dst string, size int64, freeze bool) error {
	if freeze {
		thaw, err := d.freeze(v)
		if err != nil {
			return err
		}
		defer thaw()
		d.failpoint("snapshot-frozen")
	}
	if v.Access == state.AccessBlock {
		devs, err := loop.Find(d.volumeFile(v.ID))
		if err != nil {
			return err
		}
		for _, dev := range devs {
			if f, err := os.Open(dev.Path); err == nil {
				err = f.Sync()
				f.Close()
				if err != nil {
					return fmt.Errorf("flush %s: %w", dev.Path, err)
				}
			}
		}
	}
	return copySparse(ctx, d.volumeFile(v.ID), dst, size)
}

// freeze freezes v's staged filesystem, if any, returning the thaw.
func (d *Driver) freeze(v *state.Volume) (func() error, error) {
	if v.Staging != "" && v.Access == state.AccessMount {
		if ok, _ := mount.IsMountPoint(v.Staging); ok {
			return mount.Freeze(v.Staging)
		}
	}
	return func() error { return nil }, nil
}

// copySparse copies src to dst (then sized to size): by reflink where the
// filesystem shares extents (xfs, btrfs), else extent by extent, skipping
// holes, with copy_file_range so the data never passes through user space.
func copySparse(ctx context.Context, src, dst string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", dst, err)
	}
	defer out.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", src, err)
	}
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) != nil {
		if err := copyExtents(ctx, in, out, fi.Size()); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
	}
	if err := out.Truncate(max(size, fi.Size())); err != nil {
		return fmt.Errorf("size %s: %w", dst, err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dst, err)
	}
	return nil
}

func copyExtents(ctx context.Context, in, out *os.File, end int64) error {
	ifd, ofd := int(in.Fd()), int(out.Fd())
	var off int64
	for off < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(ifd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(ifd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		for pos := data; pos < hole; {
			roff, woff := pos, pos
			n, err := unix.CopyFileRange(ifd, &roff, ofd, &woff, int(min(hole-pos, 64*mib)), 0)
			if err != nil {
				return fmt.Errorf("copy range at %d: %w", pos, err)
			}
			if n == 0 {
				return io.ErrUnexpectedEOF
			}
			pos += int64(n)
		}
		off = hole
	}
	return nil
}

func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	if !validID('s', id) {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	s, unlock, err := lockRecord(ctx, d, id, "snapshot", d.store.Snapshot)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	defer unlock()
	if s.Group != "" {
		if _, err := d.store.Group(s.Group); err == nil {
			return nil, status.Errorf(codes.FailedPrecondition, "snapshot %s belongs to group snapshot %s: delete the group", id, s.Group)
		}
	}
	if err := d.removeSnapshot(s); err != nil {
		return nil, err
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// removeSnapshot deletes the image before the record: a crash between the
// two leaves a record whose retried delete finishes the job.
func (d *Driver) removeSnapshot(s *state.Snapshot) error {
	if err := os.Remove(d.snapshotFile(s.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return internal(err, "remove snapshot image")
	}
	if err := d.store.DeleteSnapshot(s.ID); err != nil {
		return internal(err, "remove snapshot record")
	}
	return nil
}

func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	all, err := d.store.Snapshots()
	if err != nil {
		return nil, internal(err, "list snapshots")
	}
	all = slices.DeleteFunc(all, func(s *state.Snapshot) bool {
		return s.Phase != state.Ready ||
			(req.GetSnapshotId() != "" && s.ID != req.GetSnapshotId()) ||
			(req.GetSourceVolumeId() != "" && s.SourceVolume != req.GetSourceVolumeId())
	})
	snaps, next, err := page(all, func(s *state.Snapshot) string { return s.ID }, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, s := range snaps {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: d.csiSnapshot(s)})
	}
	return resp, nil
}

func (d *Driver) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	s, err := d.lookupSnapshot(req.GetSnapshotId())
	if err != nil {
		return nil, err
	}
	return &csi.GetSnapshotResponse{Snapshot: d.csiSnapshot(s)}, nil
}
