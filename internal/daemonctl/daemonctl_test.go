package daemonctl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestStartFindStop(t *testing.T) {
	dir := t.TempDir()
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(sh)
	// A shell looping on short sleeps (none outlives it by long), with
	// dir as $0.
	spec := Spec{Name: name, Path: sh, Args: []string{"-c", "while :; do sleep 0.1; done", dir}, PIDFile: filepath.Join(dir, "run", "sh.pid"), LogFile: filepath.Join(dir, "log", "sh.log")}
	s, err := Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	// Its own session: the process leads it.
	if sid, err := getsid(s.PID); err != nil || sid != s.PID {
		t.Fatalf("session %d (%v), want %d", sid, err, s.PID)
	}
	// Found (it failed once under make test's parallel load without a
	// reproduction: the diagnosis shows what Find saw).
	var p *Proc
	deadline := time.Now().Add(5 * time.Second)
	for {
		if p, err = Find(spec.PIDFile, name, dir); err == nil {
			break
		}
		if time.Now().After(deadline) {
			pf, _ := os.ReadFile(spec.PIDFile)
			args, cerr := Cmdline(s.PID)
			ticks, terr := startTicks(s.PID)
			t.Fatalf("Find: %v (pid file %q; cmdline %q %v; start ticks %d %v)", err, pf, args, cerr, ticks, terr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer p.Close()
	if p.PID != s.PID || p.Args[1] != "-c" {
		t.Fatalf("found %d %q, started %d", p.PID, p.Args, s.PID)
	}
	// Another name, or an argument it lacks: not this daemon.
	for _, c := range []struct {
		name string
		want []string
	}{{"tripodd", nil}, {name, []string{"/elsewhere"}}} {
		if _, err := Find(spec.PIDFile, c.name, c.want...); !errors.Is(err, ErrNotRunning) {
			t.Errorf("Find(%s, %v): %v, want ErrNotRunning", c.name, c.want, err)
		}
	}
	// A PID file naming another start time names a process that reused
	// the PID.
	pidFile, err := os.ReadFile(spec.PIDFile)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	var ticks uint64
	if _, err := fmt.Sscanf(string(pidFile), "%d %d", &pid, &ticks); err != nil || pid != s.PID {
		t.Fatalf("PID file %q: %v", pidFile, err)
	}
	stale := filepath.Join(dir, "stale.pid")
	os.WriteFile(stale, fmt.Appendf(nil, "%d %d\n", pid, ticks-1), 0o644)
	if _, err := Find(stale, name); !errors.Is(err, ErrNotRunning) {
		t.Errorf("stale PID file: %v, want ErrNotRunning", err)
	}
	killed, err := p.Stop(context.Background(), 10*time.Second)
	if err != nil || killed {
		t.Fatalf("Stop: killed=%v %v", killed, err)
	}
	<-s.Exited()
	if _, err := Open(s.PID, name); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("after Stop: %v", err)
	}
	if b, _ := os.ReadFile(spec.LogFile); !strings.Contains(string(b), "starting: "+sh) {
		t.Errorf("log: %q", b)
	}
}

// TestStopKillsAfterGrace: a process ignoring SIGTERM is killed.
func TestStopKillsAfterGrace(t *testing.T) {
	dir := t.TempDir()
	sh, _ := filepath.EvalSymlinks("/bin/sh")
	s, err := Start(Spec{Name: filepath.Base(sh), Path: sh, Args: []string{"-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"},
		PIDFile: filepath.Join(dir, "sh.pid"), LogFile: filepath.Join(dir, "sh.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	for b, _ := os.ReadFile(s.LogFile); !strings.Contains(string(b), "\nready\n"); b, _ = os.ReadFile(s.LogFile) {
		time.Sleep(10 * time.Millisecond)
	}
	p, err := Find(s.PIDFile, filepath.Base(sh))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	killed, err := p.Stop(context.Background(), 200*time.Millisecond)
	if err != nil || !killed {
		t.Fatalf("Stop: killed=%v %v", killed, err)
	}
}

func TestSocketHolderAndFlag(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	if Answering(path) {
		t.Fatal("answering before listening")
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if !Answering(path) {
		t.Fatal("not answering")
	}
	if pid, comm := SocketHolder(path); pid != os.Getpid() || comm == "" {
		t.Fatalf("holder %d %q, want %d", pid, comm, os.Getpid())
	}
	args := []string{"x", "--listen", "unix:///a", "--endpoint=unix:///b", "--registration-dir", ""}
	for name, want := range map[string]string{"listen": "unix:///a", "endpoint": "unix:///b", "registration-dir": ""} {
		if v, ok := Flag(args, name); !ok || v != want {
			t.Errorf("Flag %s: %q %v", name, v, ok)
		}
	}
	if _, ok := Flag(args, "state"); ok {
		t.Error("Flag found an absent flag")
	}
}

func getsid(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return strconv.Atoi(f[3]) // state ppid pgrp session
}
