package play

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Session is the pods one process holds (their locks) and supervises.
type Session struct {
	n       *Node
	workers []*worker
	// Held are pods of the manifest that another live process supervises:
	// key → its PID.
	Held map[string]int
	// Done are pods of the manifest that already completed (Succeeded or
	// Failed): a replay does not run them again.
	Done []string
}

// Keys are the pods the session holds.
func (s *Session) Keys() []string {
	var out []string
	for _, w := range s.workers {
		out = append(out, w.key)
	}
	return out
}

// Release lets go of the pods (another process may adopt them).
func (s *Session) Release() {
	for _, w := range s.workers {
		w.lock.release()
	}
	s.workers = nil
}

// deleteTimeout bounds the undoing of a failed start (on a context of its
// own: the caller's may be what ended it).
const deleteTimeout = 3 * time.Minute

// Play starts the pods, or adopts those already played with the same
// spec whose supervisor is gone. New pods are checked first (CSI drivers,
// host ports) and started in order; if one fails, every pod this call
// started is removed again (sandboxes, containers, volumes, and the claims
// it created), so nothing half-started is left, and the error names the pod
// and the field. On success the returned session holds the pods.
func (n *Node) Play(ctx context.Context, pods []*Pod, source string) (*Session, error) {
	s := &Session{n: n, Held: map[string]int{}}
	st, err := n.st.Load(ctx)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Session, error) {
		s.Release()
		return nil, err
	}
	var news []*Pod
	for _, p := range pods {
		r := st.Pods[p.Key()]
		if r == nil {
			news = append(news, p)
			continue
		}
		if r.deletingElsewhere() {
			return fail(fmt.Errorf("pod %s is being deleted by pid %d", p.Key(), r.DeletingPID))
		}
		lock, err := n.st.tryLockPod(r.UID, false)
		var held *HeldError
		switch {
		case errors.As(err, &held) && (r.Deleting || r.Starting):
			return fail(fmt.Errorf("pod %s is being %s by pid %d", p.Key(), map[bool]string{true: "deleted", false: "started"}[r.Deleting], held.PID))
		case errors.As(err, &held):
			if r.Hash != p.Hash {
				return fail(fmt.Errorf("pod %s: runs with another spec (supervised by pid %d): tripod delete it first", p.Key(), held.PID))
			}
			s.Held[p.Key()] = held.PID
			continue
		case err != nil:
			return fail(err)
		}
		if r.Deleting || r.Starting {
			// Its process died halfway: finish (or undo) its work first.
			what := map[bool]string{true: "deletion", false: "start"}[r.Deleting]
			n.event(p.Key(), "finishing the interrupted %s", what)
			if err := n.teardownPod(ctx, p.Key(), teardownOptions{createdClaims: r.Starting}); err != nil {
				lock.release()
				return fail(fmt.Errorf("pod %s: interrupted %s: %w", p.Key(), what, err))
			}
			lock.release()
			news = append(news, p)
			continue
		}
		if r.Hash != p.Hash {
			lock.release()
			return fail(fmt.Errorf("pod %s: exists with another spec (played %s from %s): tripod delete it first",
				p.Key(), r.Created.Local().Format(time.DateTime), r.Source))
		}
		if r.Phase == PhaseSucceeded || r.Phase == PhaseFailed {
			lock.release()
			s.Done = append(s.Done, p.Key())
			continue
		}
		p.UID = types.UID(r.UID)
		if err := n.setupVolumes(ctx, p, r.UID); err != nil {
			lock.release()
			return fail(fmt.Errorf("pod %s: %w", p.Key(), err))
		}
		n.event(p.Key(), "adopted (sandbox %.13s)", r.Sandbox)
		s.workers = append(s.workers, n.newWorker(p, r.UID, lock))
	}
	if len(news) == 0 {
		return s, nil
	}
	if err := n.checkPorts(ctx, news); err != nil {
		return fail(err)
	}
	for _, p := range news {
		if err := n.preflightVolumes(ctx, p); err != nil {
			return fail(fmt.Errorf("pod %s: %w", p.Key(), err))
		}
	}
	var started []*worker
	for _, p := range news {
		w, err := n.startPod(ctx, p, source)
		if err == nil {
			started = append(started, w)
			continue
		}
		err = fmt.Errorf("pod %s: %w", p.Key(), err)
		// Undo this call's pods, newest first, on a context of their own.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
		defer cancel()
		if w != nil {
			started = append(started, w)
		}
		for i := len(started) - 1; i >= 0; i-- {
			sw := started[i]
			if uerr := n.teardownPod(dctx, sw.key, teardownOptions{createdClaims: true}); uerr != nil {
				err = fmt.Errorf("%w\nundoing pod %s failed too (tripod delete retries it): %v", err, sw.key, uerr)
			} else {
				n.event(sw.key, "removed again: nothing of it is left")
			}
			sw.lock.release()
		}
		return fail(err)
	}
	s.workers = append(s.workers, started...)
	return s, nil
}

// newUID is a random RFC 4122 version 4 UUID, as the API server assigns.
func newUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// startPod starts one new pod: its record (Starting), volumes, sandbox,
// images, then the first round of containers. The returned worker (also on
// error, when anything was made) holds the pod's lock.
func (n *Node) startPod(ctx context.Context, p *Pod, source string) (*worker, error) {
	uid := string(p.UID)
	if uid == "" {
		uid = newUID()
		p.UID = types.UID(uid)
	}
	lock, err := n.st.tryLockPod(uid, true)
	if err != nil {
		return nil, fmt.Errorf("metadata.uid %s: %w", uid, err)
	}
	manifest, err := json.Marshal(p.Pod)
	if err == nil {
		err = os.MkdirAll(n.podDir(uid), 0o750)
	}
	if err != nil {
		lock.release()
		return nil, err
	}
	err = n.st.Update(ctx, func(st *State) error {
		for k, r := range st.Pods {
			if r.UID == uid {
				return fmt.Errorf("metadata.uid %s is pod %s's", uid, k)
			}
		}
		st.Pods[p.Key()] = &PodRecord{Namespace: p.Namespace, Name: p.Name, UID: uid, Hash: p.Hash, Manifest: manifest,
			Source: source, Created: timeNow(), Starting: true, Phase: PhasePending}
		return nil
	})
	if err != nil {
		lock.release()
		return nil, err
	}
	w := n.newWorker(p, uid, lock)
	n.event(p.Key(), "starting (uid %s)", uid)
	if err := n.setupVolumes(ctx, p, uid); err != nil {
		return w, err
	}
	if _, err := w.runSandbox(ctx, 0); err != nil {
		return w, err
	}
	for _, ref := range allContainers(p) {
		if err := n.ensureImage(ctx, ref.c.Image, ref.c.ImagePullPolicy); err != nil {
			return w, fmt.Errorf("%s.image: %w", ref.field, err)
		}
	}
	if _, err := w.sync(ctx, true); err != nil {
		return w, err
	}
	if err := n.st.pod(ctx, p.Key(), func(r *PodRecord) { r.Starting = false }); err != nil {
		return w, err
	}
	return w, nil
}

// Supervise runs the session's pods until each has completed or was
// deleted, or ctx ends. It reports the pods that ended Failed.
func (s *Session) Supervise(ctx context.Context) (failed []string) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, w := range s.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := w.run(ctx)
			if err == nil && w.phase == PhaseFailed {
				mu.Lock()
				failed = append(failed, w.key)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed
}

// Delete removes the session's pods (Ctrl-C of a foreground play); claims
// are kept.
func (s *Session) Delete(ctx context.Context) error {
	var errs []error
	for _, w := range s.workers {
		if err := s.n.teardownPod(ctx, w.key, teardownOptions{}); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", w.key, err))
		} else {
			s.n.event(w.key, "removed")
		}
	}
	s.Release()
	return errors.Join(errs...)
}

// decodeRecord is the pod a record was played from.
func decodeRecord(r *PodRecord) (*Pod, error) {
	var pod corev1.Pod
	if err := json.Unmarshal(r.Manifest, &pod); err != nil {
		return nil, fmt.Errorf("pod %s: its recorded manifest: %w", r.Key(), err)
	}
	return &Pod{Pod: &pod, Hash: r.Hash}, nil
}

// ParseKey reads a pod argument: namespace/name, or name in default.
func ParseKey(s string) string {
	if strings.Contains(s, "/") {
		return s
	}
	return "default/" + s
}
