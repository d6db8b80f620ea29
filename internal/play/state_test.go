package play

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

// TestStore: updates are atomic and skipped when nothing changes; a pod's
// lock is exclusive between holders (two opens, as two processes), names
// its holder, and is free again once released; without create, a removed
// pod's lock cannot be taken.
func TestStore(t *testing.T) {
	ctx := context.Background()
	s := &store{dir: t.TempDir()}
	if err := s.Update(ctx, func(st *State) error {
		st.Pods["default/a"] = &PodRecord{Namespace: "default", Name: "a", UID: "u1", Phase: PhasePending}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.file())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if err := s.pod(ctx, "default/a", func(r *PodRecord) { r.Phase = PhasePending }); err != nil {
		t.Fatal(err)
	}
	if fi2, _ := os.Stat(s.file()); !fi2.ModTime().Equal(fi.ModTime()) {
		t.Error("an update that changed nothing rewrote the file")
	}
	if err := s.Update(ctx, func(st *State) error { return errors.New("no") }); err == nil {
		t.Error("fn's error lost")
	}
	st, err := s.Load(ctx)
	if err != nil || st.Pods["default/a"].UID != "u1" {
		t.Fatalf("%+v %v", st, err)
	}

	if _, err := s.tryLockPod("u1", false); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lock of a pod never started: %v", err)
	}
	l, err := s.tryLockPod("u1", true)
	if err != nil {
		t.Fatal(err)
	}
	var held *HeldError
	if _, err := s.tryLockPod("u1", false); !errors.As(err, &held) || held.PID != os.Getpid() {
		t.Fatalf("second lock: %v", err)
	}
	if pid := s.holder("u1"); pid != os.Getpid() {
		t.Errorf("holder %d", pid)
	}
	l.release()
	if pid := s.holder("u1"); pid != 0 {
		t.Errorf("holder after release: %d", pid)
	}
	l, err = s.lockPod(ctx, "u1", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l.release()
}
