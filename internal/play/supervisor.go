package play

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrSupervisorRunning says another background supervisor has the lock.
var ErrSupervisorRunning = errors.New("a supervisor is already running")

func (n *Node) supervisorLock() string { return filepath.Join(n.opts.Dir, "supervisor.lock") }

// SupervisorPID is the PID of the running background supervisor, 0 when
// there is none.
func SupervisorPID(dir string) int {
	f, err := os.Open(filepath.Join(dir, "supervisor.lock"))
	if err != nil {
		return 0
	}
	defer f.Close()
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
		return 0
	}
	b := make([]byte, 16)
	k, _ := f.ReadAt(b, 0)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:k])))
	return pid
}

// Supervisor is the background supervisor (tripod play -d starts it): once
// a second it takes every played pod that no process holds, finishing
// interrupted starts and deletions, and supervises the others as a
// foreground play would. It returns when no pod is left to supervise, or
// when ctx ends (the pods keep running; the next supervisor adopts them).
func (n *Node) Supervisor(ctx context.Context) error {
	if err := os.MkdirAll(n.opts.Dir, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(n.supervisorLock(), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return ErrSupervisorRunning
		}
		return err
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)

	var wg sync.WaitGroup
	defer wg.Wait()
	workers := map[string]bool{}
	done := make(chan string)
	idle := 0
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		live, err := n.adopt(ctx, workers, done, &wg)
		if err != nil {
			fmt.Fprintf(n.opts.Out, "%s supervisor: %v\n", time.Now().Format("15:04:05"), err)
		}
		if live == 0 && len(workers) == 0 {
			if idle++; idle >= 2 {
				fmt.Fprintf(n.opts.Out, "%s supervisor: no pod left to supervise; exiting\n", time.Now().Format("15:04:05"))
				return nil
			}
		} else {
			idle = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case k := <-done:
			delete(workers, k)
		case <-t.C:
		}
	}
}

// adopt takes the pods nobody holds. It returns how many pods are live
// (neither completed nor gone).
func (n *Node) adopt(ctx context.Context, workers map[string]bool, done chan<- string, wg *sync.WaitGroup) (int, error) {
	st, err := n.st.Load(ctx)
	if err != nil {
		return 1, err
	}
	live := 0
	var errs []error
	for key, r := range st.Pods {
		if r.Phase == PhaseSucceeded || r.Phase == PhaseFailed {
			continue
		}
		live++
		if workers[key] || r.deletingElsewhere() {
			continue
		}
		lock, err := n.st.tryLockPod(r.UID, false)
		if err != nil {
			continue // held by another process (or gone meanwhile)
		}
		if r.Deleting || r.Starting {
			what := map[bool]string{true: "deletion", false: "start"}[r.Deleting]
			n.event(key, "finishing the interrupted %s", what)
			if err := n.teardownPod(ctx, key, teardownOptions{createdClaims: r.Starting}); err != nil {
				errs = append(errs, fmt.Errorf("pod %s: interrupted %s: %w", key, what, err))
			}
			lock.release()
			continue
		}
		p, err := decodeRecord(r)
		if err != nil {
			lock.release()
			errs = append(errs, err)
			continue
		}
		if err := n.setupVolumes(ctx, p, r.UID); err != nil {
			lock.release()
			errs = append(errs, fmt.Errorf("pod %s: %w", key, err))
			continue
		}
		w := n.newWorker(p, r.UID, lock)
		workers[key] = true
		n.event(key, "supervising (sandbox %.13s)", r.Sandbox)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx)
			w.lock.release()
			select {
			case done <- key:
			case <-ctx.Done():
			}
		}()
	}
	return live, errors.Join(errs...)
}

// Live counts the played pods under dir that are neither completed nor
// being deleted: what a supervisor has to look after.
func Live(ctx context.Context, dir string) (int, error) {
	st, err := (&store{dir: dir}).Load(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range st.Pods {
		if r.Phase != PhaseSucceeded && r.Phase != PhaseFailed && !r.Deleting {
			n++
		}
	}
	return n, nil
}
