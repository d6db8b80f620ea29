package play

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// State is what tripod play knows across processes: the pods it played
// and the claims it created. It lives in <dir>/state.json, replaced
// atomically under <dir>/state.lock. The CRI and CSI stay the truth for
// what runs and what is mounted; the state says what was asked for and
// what to undo.
type State struct {
	Pods   map[string]*PodRecord   `json:"pods"`   // by namespace/name
	Claims map[string]*ClaimRecord `json:"claims"` // by namespace/claim
}

// Pod phases as play records them.
const (
	PhasePending   = "Pending"
	PhaseRunning   = "Running"
	PhaseSucceeded = "Succeeded"
	PhaseFailed    = "Failed"
)

// PodRecord is one played pod.
type PodRecord struct {
	Namespace string          `json:"namespace"`
	Name      string          `json:"name"`
	UID       string          `json:"uid"`
	Hash      string          `json:"hash"`
	Manifest  json.RawMessage `json:"manifest"` // the pod as decoded, defaults applied
	Source    string          `json:"source,omitempty"`
	Created   time.Time       `json:"created"`

	Sandbox        string `json:"sandbox,omitempty"`
	SandboxAttempt uint32 `json:"sandboxAttempt,omitempty"`
	// Starting is set until the first containers started: a pod left
	// starting by a process that died is rolled back, not adopted.
	Starting bool `json:"starting,omitempty"`
	Deleting bool `json:"deleting,omitempty"`
	// DeletingPID is the process deleting the pod: a deletion is finished
	// by another process only once that one is gone.
	DeletingPID int    `json:"deletingPID,omitempty"`
	Phase       string `json:"phase"`
	Message     string `json:"message,omitempty"`
	// Volumes set up for the pod, in order; undone in reverse.
	Volumes []VolumeRecord `json:"volumes,omitempty"`
	// Containers are the supervisor's notes, for tripod ps.
	Containers map[string]*ContainerNote `json:"containers,omitempty"`
	// ClaimsCreated are claims this pod's first start created: removed
	// again if that start fails.
	ClaimsCreated []string `json:"claimsCreated,omitempty"`
}

// Key is namespace/name.
func (r *PodRecord) Key() string { return r.Namespace + "/" + r.Name }

// ContainerNote is what the supervisor knows of a container that the CRI
// does not say: readiness and why it waits.
type ContainerNote struct {
	Ready   bool   `json:"ready,omitempty"`
	Waiting string `json:"waiting,omitempty"` // e.g. CrashLoopBackOff
	Message string `json:"message,omitempty"`
}

// Volume kinds.
const (
	volEmptyDir = "emptyDir"
	volMemory   = "memory"
	volHostPath = "hostPath"
	volInline   = "csi"
	volClaim    = "claim"
	volImage    = "image"
	volSubPath  = "subPath" // a bind mount for a volumeMount's subPath
	volHosts    = "hosts"   // the pod's /etc/hosts with its hostAliases
)

// VolumeRecord is one volume (or subPath mount) set up on the node.
type VolumeRecord struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Path is what containers mount.
	Path     string `json:"path"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// Handle is the CSI volume ID (claims) or inline volume handle.
	Handle string `json:"handle,omitempty"`
	Claim  string `json:"claim,omitempty"` // namespace/claim
	Image  string `json:"image,omitempty"`
}

// ClaimRecord is a persistentVolumeClaim resolved to a local CSI volume.
type ClaimRecord struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	CSIName   string            `json:"csiName"` // CreateVolume's name, derived from the claim
	VolumeID  string            `json:"volumeID,omitempty"`
	Size      int64             `json:"size"`
	Context   map[string]string `json:"context,omitempty"` // CreateVolume's volume_context
	Staging   string            `json:"staging,omitempty"` // set while staged
	Created   time.Time         `json:"created"`
}

// store is the state file.
type store struct{ dir string }

func (s *store) file() string { return filepath.Join(s.dir, "state.json") }

// flock takes the state lock, shared or exclusive.
func (s *store) flock(ctx context.Context, how int) (func(), error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.dir, "state.lock"), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (s *store) read() (*State, error) {
	st, _, err := s.readRaw()
	return st, err
}

// readRaw also returns the file's bytes.
func (s *store) readRaw() (*State, []byte, error) {
	st := &State{}
	b, err := os.ReadFile(s.file())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	}
	if len(b) > 0 {
		if err := json.Unmarshal(b, st); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", s.file(), err)
		}
	}
	if st.Pods == nil {
		st.Pods = map[string]*PodRecord{}
	}
	if st.Claims == nil {
		st.Claims = map[string]*ClaimRecord{}
	}
	return st, b, nil
}

// Load reads the state.
func (s *store) Load(ctx context.Context) (*State, error) {
	unlock, err := s.flock(ctx, unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.read()
}

// Update applies fn to the state and writes it back, all under the
// exclusive lock; an error from fn, or no change, writes nothing.
func (s *store) Update(ctx context.Context, fn func(*State) error) error {
	unlock, err := s.flock(ctx, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	st, old, err := s.readRaw()
	if err != nil {
		return err
	}
	if err := fn(st); err != nil {
		return err
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil || bytes.Equal(b, old) {
		return err
	}
	tmp := s.file() + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	// Claims outlive reboots: the record of a created volume must too.
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, s.file())
}

// pod updates one pod's record, if it is still there.
func (s *store) pod(ctx context.Context, key string, fn func(*PodRecord)) error {
	return s.Update(ctx, func(st *State) error {
		if r := st.Pods[key]; r != nil {
			fn(r)
		}
		return nil
	})
}

// podLock is held by whoever supervises (or starts, or deletes) a pod: a
// flock on <dir>/locks/<uid>, released when its holder exits however it
// exits. The file holds the holder's PID, for messages.
type podLock struct{ f *os.File }

// HeldError says another live process holds a pod.
type HeldError struct{ PID int }

func (e *HeldError) Error() string { return fmt.Sprintf("held by pid %d", e.PID) }

func (s *store) podDir(uid string) string { return filepath.Join(s.dir, "pods", uid) }

// lockFile is the pod's lock. It lives outside the pod's directory, and
// only startPod creates it: a pod being removed (directory gone, lock file
// unlinked last) can never be locked again by a process adopting it from a
// state read a moment before.
func (s *store) lockFile(uid string) string { return filepath.Join(s.dir, "locks", uid) }

// tryLockPod takes the pod's lock without waiting: a *HeldError if another
// process has it. Without create, a pod whose lock file is gone is
// os.ErrNotExist.
func (s *store) tryLockPod(uid string, create bool) (*podLock, error) {
	flags := os.O_RDWR | unix.O_CLOEXEC
	if create {
		if err := os.MkdirAll(filepath.Dir(s.lockFile(uid)), 0o700); err != nil {
			return nil, err
		}
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(s.lockFile(uid), flags, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b := make([]byte, 16)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:n])))
			return nil, &HeldError{PID: pid}
		}
		return nil, err
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &podLock{f: f}, nil
}

// lockPod waits up to wait for the pod's lock (os.ErrNotExist: the pod
// was removed meanwhile).
func (s *store) lockPod(ctx context.Context, uid string, wait time.Duration) (*podLock, error) {
	deadline := time.Now().Add(wait)
	for {
		l, err := s.tryLockPod(uid, false)
		var held *HeldError
		if err == nil || !errors.As(err, &held) || time.Now().After(deadline) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// holder is the PID supervising a pod, 0 when none does. It never
// creates the lock file.
func (s *store) holder(uid string) int {
	f, err := os.OpenFile(s.lockFile(uid), os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
		return 0
	}
	b := make([]byte, 16)
	n, _ := f.ReadAt(b, 0)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	return pid
}

func (l *podLock) release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// deletingElsewhere reports whether a live process other than this one is
// deleting the pod.
func (r *PodRecord) deletingElsewhere() bool {
	if !r.Deleting || r.DeletingPID == 0 || r.DeletingPID == os.Getpid() {
		return false
	}
	err := unix.Kill(r.DeletingPID, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}
