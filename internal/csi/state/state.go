// Package state persists the driver's volumes and snapshots, one JSON file
// per object, each replaced atomically (write, fsync, rename, fsync dir) so a
// kill -9 at any point leaves either the old or the new record, never a
// torn one. Records carry a phase: work is recorded as intended before it
// is done, so a restart can tell half-done work from finished work.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Phase of an object's lifecycle.
type Phase string

const (
	Creating Phase = "creating"
	Ready    Phase = "ready"
	Deleting Phase = "deleting"
)

// Access types of a volume.
const (
	AccessMount = "mount"
	AccessBlock = "block"
)

// Volume is a provisioned volume.
type Volume struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Phase    Phase  `json:"phase"`
	Access   string `json:"access"`           // AccessMount or AccessBlock
	FsType   string `json:"fsType,omitempty"` // for AccessMount
	Capacity int64  `json:"capacity"`
	// FsSize is the device size the filesystem was last made or grown
	// for; below Capacity, the next stage or NodeExpandVolume grows it.
	FsSize int64             `json:"fsSize,omitempty"`
	Params map[string]string `json:"params,omitempty"`
	// Mutable holds the parameters ControllerModifyVolume may change.
	Mutable        map[string]string `json:"mutable,omitempty"`
	SourceSnapshot string            `json:"sourceSnapshot,omitempty"`
	SourceVolume   string            `json:"sourceVolume,omitempty"`
	// Ephemeral volumes live and die with one NodePublishVolume target.
	Ephemeral bool `json:"ephemeral,omitempty"`
	// PublishedNodes are the nodes ControllerPublishVolume attached it to.
	PublishedNodes []string `json:"publishedNodes,omitempty"`
	// PublishedReadOnly is the readonly flag of that ControllerPublish.
	PublishedReadOnly bool `json:"publishedReadOnly,omitempty"`
	// Loop is the read-write loop device last attached for the volume; a
	// hint checked against the device's backing file before use.
	Loop string `json:"loop,omitempty"`
	// Staging is the NodeStageVolume path, set before the mount is made.
	Staging string `json:"staging,omitempty"`
	// Targets are the NodePublishVolume paths, set before each mount.
	Targets []Target  `json:"targets,omitempty"`
	Created time.Time `json:"created"`
}

// Target is one NodePublishVolume of a volume.
type Target struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// Loop is a read-only loop device made for this target alone (a
	// read-only publish of a block volume), detached at unpublish.
	Loop string `json:"loop,omitempty"`
}

// Target returns the record of path, if published there.
func (v *Volume) Target(path string) (Target, bool) {
	for _, t := range v.Targets {
		if t.Path == path {
			return t, true
		}
	}
	return Target{}, false
}

// SetTarget adds or replaces the record of t.Path.
func (v *Volume) SetTarget(t Target) {
	v.DropTarget(t.Path)
	v.Targets = append(v.Targets, t)
}

// DropTarget removes the record of path.
func (v *Volume) DropTarget(path string) {
	v.Targets = slices.DeleteFunc(v.Targets, func(t Target) bool { return t.Path == path })
}

// Snapshot is a point-in-time copy of a volume.
type Snapshot struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	Phase        Phase     `json:"phase"`
	SourceVolume string    `json:"sourceVolume"`
	Access       string    `json:"access"`
	FsType       string    `json:"fsType,omitempty"`
	Size         int64     `json:"size"`
	FsSize       int64     `json:"fsSize,omitempty"` // the source's FsSize
	Group        string    `json:"group,omitempty"`
	Created      time.Time `json:"created"`
}

// Group is a group snapshot: snapshots of several volumes taken together.
type Group struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Phase     Phase     `json:"phase"`
	Snapshots []string  `json:"snapshots"`
	Sources   []string  `json:"sources"`
	Created   time.Time `json:"created"`
}

// ErrNotFound is returned for a missing record.
var ErrNotFound = errors.New("not found")

// Store keeps records under one directory. The files are the truth; a
// copy of each record's bytes is kept in memory, read once at Open and
// updated by every write, so lookups and listings touch no file. Only this
// process writes the directory.
type Store struct {
	dir   string
	mu    sync.RWMutex
	cache map[string]map[string][]byte // kind → id → the record as on disk
}

// Open creates (if needed) and opens the store at dir.
func Open(dir string) (*Store, error) {
	s := &Store{dir: dir, cache: map[string]map[string][]byte{}}
	for _, kind := range []string{"volumes", "snapshots", "groups"} {
		sub := filepath.Join(dir, kind)
		if err := os.MkdirAll(sub, 0o700); err != nil {
			return nil, fmt.Errorf("create state dir: %w", err)
		}
		entries, err := os.ReadDir(sub)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", kind, err)
		}
		s.cache[kind] = map[string][]byte{}
		for _, e := range entries {
			n := e.Name()
			if strings.HasPrefix(n, ".tmp-") {
				// A write a crash interrupted; only at open, when no
				// write of this process can be in flight.
				os.Remove(filepath.Join(sub, n))
				continue
			}
			id, ok := strings.CutSuffix(n, ".json")
			if !ok {
				continue
			}
			b, err := os.ReadFile(filepath.Join(sub, n))
			if err != nil {
				return nil, fmt.Errorf("read %s %s: %w", kind, id, err)
			}
			s.cache[kind][id] = b
		}
	}
	return s, nil
}

// Check verifies the store's directory is usable (for Probe).
func (s *Store) Check() error {
	f, err := os.CreateTemp(filepath.Join(s.dir, "volumes"), ".probe-*")
	if err != nil {
		return fmt.Errorf("state store not writable: %w", err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func (s *Store) path(kind, id string) string { return filepath.Join(s.dir, kind, id+".json") }

// put replaces a record. durable adds the fsyncs that make the write
// survive a power loss; without them it still survives a kill -9 (the page
// cache outlives the process), which is all that state meaningful only
// until the next reboot (mounts, loop devices) or that recovery can redo
// (an unfinished create) needs.
func (s *Store) put(kind, id string, v any, durable bool) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s %s: %w", kind, id, err)
	}
	dir := filepath.Join(s.dir, kind)
	f, err := os.CreateTemp(dir, ".tmp-"+id+"-*")
	if err != nil {
		return fmt.Errorf("write %s %s: %w", kind, id, err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path(kind, id))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s %s: %w", kind, id, err)
	}
	s.mu.Lock()
	s.cache[kind][id] = b
	s.mu.Unlock()
	if !durable {
		return nil
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

func (s *Store) get(kind, id string, v any) error {
	s.mu.RLock()
	b, ok := s.cache[kind][id]
	s.mu.RUnlock()
	if !ok {
		return fmt.Errorf("%s %s: %w", kind, id, ErrNotFound)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s %s: %w", kind, id, err)
	}
	return nil
}

func (s *Store) del(kind, id string) error {
	if err := os.Remove(s.path(kind, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s %s: %w", kind, id, err)
	}
	s.mu.Lock()
	delete(s.cache[kind], id)
	s.mu.Unlock()
	return syncDir(filepath.Join(s.dir, kind))
}

// ids lists record IDs of kind in sorted order.
func (s *Store) ids(kind string) ([]string, error) {
	s.mu.RLock()
	out := slices.Collect(maps.Keys(s.cache[kind]))
	s.mu.RUnlock()
	slices.Sort(out)
	return out, nil
}

func list[T any](s *Store, kind string) ([]*T, error) {
	ids, err := s.ids(kind)
	if err != nil {
		return nil, err
	}
	out := make([]*T, 0, len(ids))
	for _, id := range ids {
		v := new(T)
		if err := s.get(kind, id, v); err != nil {
			if errors.Is(err, ErrNotFound) {
				continue // deleted meanwhile
			}
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// PutVolume records v durably.
func (s *Store) PutVolume(v *Volume) error { return s.put("volumes", v.ID, v, true) }

// PutVolumeVolatile records v without fsync: for node attachment state and
// unfinished work, see put.
func (s *Store) PutVolumeVolatile(v *Volume) error { return s.put("volumes", v.ID, v, false) }
func (s *Store) DeleteVolume(id string) error      { return s.del("volumes", id) }
func (s *Store) Volume(id string) (*Volume, error) {
	v := new(Volume)
	return v, s.get("volumes", id, v)
}
func (s *Store) Volumes() ([]*Volume, error) { return list[Volume](s, "volumes") }

func (s *Store) PutSnapshot(v *Snapshot) error  { return s.put("snapshots", v.ID, v, true) }
func (s *Store) DeleteSnapshot(id string) error { return s.del("snapshots", id) }
func (s *Store) Snapshot(id string) (*Snapshot, error) {
	v := new(Snapshot)
	return v, s.get("snapshots", id, v)
}
func (s *Store) Snapshots() ([]*Snapshot, error) { return list[Snapshot](s, "snapshots") }

func (s *Store) PutGroup(v *Group) error     { return s.put("groups", v.ID, v, true) }
func (s *Store) DeleteGroup(id string) error { return s.del("groups", id) }
func (s *Store) Group(id string) (*Group, error) {
	v := new(Group)
	return v, s.get("groups", id, v)
}
func (s *Store) Groups() ([]*Group, error) { return list[Group](s, "groups") }
