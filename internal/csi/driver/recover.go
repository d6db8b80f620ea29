package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tripod-dev/tripod/internal/csi/loop"
	"github.com/tripod-dev/tripod/internal/csi/mount"
	"github.com/tripod-dev/tripod/internal/csi/state"
)

// recover brings the root back to a consistent state after the driver was
// killed at an arbitrary point:
//   - a volume or snapshot still Creating was never handed out: its partial
//     image and record go (a retried create makes it afresh);
//   - a volume Deleting is deleted;
//   - an inline volume with no target left is deleted;
//   - loop devices on this root's images that nothing stages or publishes
//     any more (a crash between attach and record) are detached;
//   - image files without a record are removed;
//   - staging and target records whose mount (or block device) no longer
//     exists, as after a reboot, are dropped (see reconcileNode).
func (d *Driver) recover(ctx context.Context) error {
	vols, err := d.store.Volumes()
	if err != nil {
		return err
	}
	live := map[string]*state.Volume{}
	for _, v := range vols {
		if err := ctx.Err(); err != nil {
			return err
		}
		if v.Phase == state.Ready {
			if err := d.reconcileNode(v); err != nil {
				return err
			}
		}
		switch {
		case v.Phase == state.Creating:
			os.Remove(d.volumeFile(v.ID))
			if err := d.store.DeleteVolume(v.ID); err != nil {
				return err
			}
			d.log.Info("recover: dropped unfinished volume", "id", v.ID, "name", v.Name)
		case v.Phase == state.Deleting, v.Ephemeral && len(v.Targets) == 0 && v.Staging == "":
			v.Phase = state.Deleting
			if err := d.finishDelete(v, true); err != nil {
				return fmt.Errorf("finish delete of %s: %w", v.ID, err)
			}
		default:
			live[v.ID] = v
			d.thaw(v)
			if err := d.fillImage(v); err != nil {
				return fmt.Errorf("complete expansion of %s: %w", v.ID, err)
			}
		}
	}
	groups, err := d.store.Groups()
	if err != nil {
		return err
	}
	for _, g := range groups {
		if g.Phase != state.Ready {
			if err := d.dropGroup(g); err != nil {
				return err
			}
		}
	}
	snaps, err := d.store.Snapshots()
	if err != nil {
		return err
	}
	liveSnaps := map[string]bool{}
	for _, s := range snaps {
		if s.Phase != state.Ready {
			if err := d.removeSnapshot(s); err != nil {
				return err
			}
			d.log.Info("recover: dropped unfinished snapshot", "id", s.ID, "name", s.Name)
			continue
		}
		liveSnaps[s.ID] = true
	}
	if err := d.recoverLoops(live); err != nil {
		return err
	}
	removeOrphans(filepath.Join(d.cfg.Root, "volumes"), func(id string) bool { return live[id] != nil })
	removeOrphans(filepath.Join(d.cfg.Root, "snapshots"), func(id string) bool { return liveSnaps[id] })
	return nil
}

// reconcileNode drops v's records of staging and targets that reality no
// longer backs: after a reboot nothing is mounted or attached, and a
// volume recorded as staged could otherwise never be deleted if its pod is
// gone. A record whose mount exists, or a staged block volume whose device
// is attached, stays: a crash mid-NodeStage keeps what the retry needs.
func (d *Driver) reconcileNode(v *state.Volume) error {
	changed := false
	for _, t := range slices.Clone(v.Targets) {
		if ok, err := mount.IsMountPoint(t.Path); err == nil && !ok {
			v.DropTarget(t.Path)
			changed = true
		}
	}
	if v.Staging != "" {
		file := d.volumeFile(v.ID)
		held := false
		if v.Access == state.AccessMount {
			ok, err := mount.IsMountPoint(v.Staging)
			held = err != nil || ok
		} else if devs, err := loop.Find(file); err != nil || len(devs) > 0 {
			held = true
		}
		if !held && len(v.Targets) == 0 {
			v.Staging, v.Loop = "", ""
			changed = true
		}
	}
	if !changed {
		return nil
	}
	d.log.Info("recover: dropped stale node records", "id", v.ID, "staging", v.Staging, "targets", len(v.Targets))
	return d.store.PutVolumeVolatile(v)
}

// thaw unfreezes v's staged filesystem in case the driver died while it
// was frozen for a snapshot: left frozen, every write in the pod would
// block for good. Thawing a filesystem that is not frozen is refused
// (EINVAL) and harmless.
func (d *Driver) thaw(v *state.Volume) {
	if v.Access != state.AccessMount || v.Staging == "" {
		return
	}
	if ok, err := mount.IsMountPoint(v.Staging); err != nil || !ok {
		return
	}
	if err := mount.Thaw(v.Staging); err == nil {
		d.log.Info("recover: thawed a filesystem left frozen by a snapshot", "id", v.ID, "staging", v.Staging)
	}
}

func (d *Driver) recoverLoops(live map[string]*state.Volume) error {
	devs, err := loop.List()
	if err != nil {
		return err
	}
	dir := filepath.Join(d.cfg.Root, "volumes") + "/"
	for _, dev := range devs {
		rest, ok := strings.CutPrefix(dev.Backing, dir)
		if !ok {
			continue
		}
		id := strings.TrimSuffix(rest, ".img")
		v := live[id]
		keep := v != nil && !dev.Deleted
		if keep && dev.ReadOnly {
			keep = false
			for _, t := range v.Targets {
				keep = keep || t.Loop == dev.Path
			}
		} else if keep {
			keep = v.Staging != "" || len(v.Targets) > 0
		}
		if keep {
			continue
		}
		// A device still mounted is only marked autoclear by this.
		if err := loop.Detach(dev.Path); err != nil {
			return err
		}
		d.log.Info("recover: detached leaked loop device", "device", dev.Path, "backing", dev.Backing)
	}
	return nil
}

func removeOrphans(dir string, known func(id string) bool) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".img")
		if ok && known(id) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			continue
		}
	}
}
