// Package driver serves the CSI Identity, Controller, GroupController and
// Node services for local volumes: sparse files under the driver's root,
// attached to loop devices and formatted ext4 or xfs (or used raw as block
// devices). One instance runs per node and serves all services, since a
// local volume's controller and node are the same machine.
package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tripod-dev/tripod/internal/csi/state"
)

// DefaultName is the driver name registered with Kubernetes.
const DefaultName = "csi.tripod.dev"

// TopologyKey is the topology segment key naming the node a volume lives on.
const TopologyKey = "topology.csi.tripod.dev/node"

// Config of one driver instance.
type Config struct {
	Name    string // driver name, validated by ValidName
	Version string
	NodeID  string
	// Root holds every file the driver makes: state, volume and snapshot
	// images. It is resolved to a symlink-free absolute path by New.
	Root string
	// Capacity caps the bytes provisioned (volumes plus snapshots); 0
	// leaves only the free space of Root's filesystem as the limit.
	Capacity int64
	// MaxVolumes is the node's attach limit reported by NodeGetInfo and
	// enforced by ControllerPublishVolume; 0 means none.
	MaxVolumes int64
	// DefaultFsType is used when a mount capability names none.
	DefaultFsType string
	Log           *slog.Logger
	// OnIdle, if set, runs once the driver has had no call for IdleAfter
	// (2s if zero) after a busy spell: the command uses it to hand memory
	// back to the system.
	OnIdle    func()
	IdleAfter time.Duration
	// FailPoint names a point in the code where the driver kills itself
	// with SIGKILL, for crash-recovery tests (see failpoint).
	FailPoint string
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

// ValidName checks a driver name against the CSI rule: at most 63
// characters, alphanumeric at both ends, '.', '-' and '_' allowed inside.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid driver name %q: want at most 63 characters of [A-Za-z0-9._-], beginning and ending alphanumeric", name)
	}
	return nil
}

// Driver implements the CSI services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	csi.UnimplementedGroupControllerServer

	cfg   Config
	store *state.Store
	locks keyLocks
	// capMu makes the free-space check and the reservation (the volume
	// record) of a CreateVolume one step, so concurrent creates cannot
	// together overcommit.
	capMu sync.Mutex
	log   *slog.Logger
	// activity is signalled (without blocking) by every call, for OnIdle.
	activity chan struct{}
}

// New validates cfg, prepares the root and recovers from any interrupted
// work (see recover).
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if err := ValidName(cfg.Name); err != nil {
		return nil, err
	}
	if cfg.NodeID == "" {
		return nil, errors.New("node id is required")
	}
	if len(cfg.NodeID) > 128 {
		return nil, fmt.Errorf("node id %q longer than 128 bytes", cfg.NodeID)
	}
	if cfg.DefaultFsType == "" {
		cfg.DefaultFsType = "ext4"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Root == "" || !filepath.IsAbs(cfg.Root) {
		return nil, fmt.Errorf("root %q must be an absolute path", cfg.Root)
	}
	if err := os.MkdirAll(cfg.Root, 0o700); err != nil {
		return nil, fmt.Errorf("create root: %w", err)
	}
	// The kernel reports loop backing files by their real path; compare
	// like with like.
	root, err := filepath.EvalSymlinks(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("resolve root: %w", err)
	}
	cfg.Root = root
	for _, d := range []string{"volumes", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, fmt.Errorf("create %s dir: %w", d, err)
		}
	}
	st, err := state.Open(filepath.Join(root, "state"))
	if err != nil {
		return nil, err
	}
	if cfg.IdleAfter == 0 {
		cfg.IdleAfter = 2 * time.Second
	}
	d := &Driver{cfg: cfg, store: st, log: cfg.Log, activity: make(chan struct{}, 1)}
	if err := d.recover(ctx); err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	return d, nil
}

// Paths of images under the root. IDs are checked by validID before they
// get here, so they can never climb out of the root.
func (d *Driver) volumeFile(id string) string {
	return filepath.Join(d.cfg.Root, "volumes", id+".img")
}
func (d *Driver) snapshotFile(id string) string {
	return filepath.Join(d.cfg.Root, "snapshots", id+".img")
}

// Object IDs are derived from the CO-chosen names: a retried create (after a
// timeout or a driver crash) lands on the same ID, so idempotency and
// crash recovery need no name index.
func makeID(prefix, name string) string {
	h := sha256.Sum256([]byte(name))
	return prefix + hex.EncodeToString(h[:16])
}

var idRE = regexp.MustCompile(`^[vsg][0-9a-f]{32}$`)

// validID reports whether id has the shape of an ID this driver made.
// Anything else (including any attempt at a path) names no object.
func validID(prefix byte, id string) bool {
	return idRE.MatchString(id) && id[0] == prefix
}

// ephemeralID maps a kubelet-chosen inline volume handle to our ID.
func ephemeralID(handle string) string { return makeID("v", "ephemeral\x00"+handle) }

// lookupVolume finds a volume by ID (or inline ephemeral handle),
// returning a gRPC NotFound error when there is none.
// lockRecord takes id's lock and reads its record with get, in whatever
// phase it is: the first step of the removals, to which a missing record is
// success. There rec is nil, with no error and the lock already released;
// otherwise, with no error, the caller must call unlock.
func lockRecord[T any](ctx context.Context, d *Driver, id, what string, get func(string) (*T, error)) (rec *T, unlock func(), err error) {
	unlock, err = d.locks.lock(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	rec, err = get(id)
	if errors.Is(err, state.ErrNotFound) {
		unlock()
		return nil, nil, nil
	}
	if err != nil {
		unlock()
		return nil, nil, internal(err, "read %s", what)
	}
	return rec, unlock, nil
}

func (d *Driver) lookupVolume(id string) (*state.Volume, error) {
	if !validID('v', id) {
		id = ephemeralID(id)
	}
	v, err := d.store.Volume(id)
	if errors.Is(err, state.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", id)
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if v.Phase != state.Ready {
		return nil, status.Errorf(codes.NotFound, "volume %q not found (%s)", id, v.Phase)
	}
	return v, nil
}

// checkPath refuses staging and target paths that are relative, unclean,
// or inside the driver's own root, where a mount could hide or replace the
// driver's state. Symlinks in the last component are refused when the path
// is opened (mount.OpenTarget).
func (d *Driver) checkPath(what, p string) error {
	if p == "" {
		return status.Errorf(codes.InvalidArgument, "%s is required", what)
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsRune(p, 0) {
		return status.Errorf(codes.InvalidArgument, "%s %q must be a clean absolute path", what, p)
	}
	if p == "/" || within(d.cfg.Root, p) {
		return status.Errorf(codes.InvalidArgument, "%s %q is inside the driver's root", what, p)
	}
	if real, err := filepath.EvalSymlinks(filepath.Dir(p)); err == nil && within(d.cfg.Root, real) {
		return status.Errorf(codes.InvalidArgument, "%s %q resolves into the driver's root", what, p)
	}
	return nil
}

func within(root, p string) bool {
	return p == root || strings.HasPrefix(p, root+"/")
}

// keyLocks serializes calls on one object while letting calls on different
// objects run in parallel.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{}
	refs int
}

// lock waits for key, giving up with Aborted (the CSI code for "an
// operation is pending for this volume") when ctx ends first.
func (k *keyLocks) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*keyLock)
	}
	l := k.m[key]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()

	release := func() {
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, status.Errorf(codes.Aborted, "operation pending on %s: %v", key, ctx.Err())
	}
}

// lockAll takes several keys in sorted order (no deadlock between two
// callers locking overlapping sets).
func (k *keyLocks) lockAll(ctx context.Context, keys []string) (func(), error) {
	keys = sortedUnique(keys)
	var unlocks []func()
	all := func() {
		for i := len(unlocks) - 1; i >= 0; i-- {
			unlocks[i]()
		}
	}
	for _, key := range keys {
		u, err := k.lock(ctx, key)
		if err != nil {
			all()
			return nil, err
		}
		unlocks = append(unlocks, u)
	}
	return all, nil
}

func sortedUnique(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}

// internal wraps an unexpected failure as a gRPC Internal error, keeping
// codes already chosen by a callee.
func internal(err error, format string, args ...any) error {
	if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
		return err
	}
	return status.Errorf(codes.Internal, "%s: %v", fmt.Sprintf(format, args...), err)
}

// failpoint kills the process with SIGKILL when name is the configured
// fail point, so tests can crash the driver between two exact steps.
// Points: create-recorded, create-written, stage-attach-unrecorded,
// stage-attached, stage-mounted, snapshot-frozen, snapshot-written,
// expand-recorded.
func (d *Driver) failpoint(name string) {
	if d.cfg.FailPoint == name {
		d.log.Warn("fail point reached: killing myself", "point", name)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

func (d *Driver) topology() *csi.Topology {
	return &csi.Topology{Segments: map[string]string{TopologyKey: d.cfg.NodeID}}
}
