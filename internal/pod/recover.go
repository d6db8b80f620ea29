package pod

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/tripod-dev/tripod/internal/monitor"
	"github.com/tripod-dev/tripod/internal/netns"
)

// ensureMonitor starts tripod-monitor unless one answers on the socket. It
// runs in its own session so it outlives tripodd.
func (m *Manager) ensureMonitor(ctx context.Context) error {
	cl := m.monitor()
	if _, err := cl.Call(ctx, monitor.Request{Op: "ping"}); err == nil {
		return nil
	}
	bin, err := m.monitorBin()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(m.opt.State, "monitor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("monitor log: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command(bin, cl.Path)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start tripod-monitor (%s): %w", bin, err)
	}
	w.Close()
	pid := cmd.Process.Pid
	os.WriteFile(filepath.Join(m.opt.State, monitor.PIDFile), fmt.Appendf(nil, "%d\n", pid), 0o600)
	// Reap it if it ever ends while we live; it is not ours to stop.
	go cmd.Wait()
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil || line != "ok\n" {
		return fmt.Errorf("tripod-monitor did not start (see %s)", filepath.Join(m.opt.State, "monitor.log"))
	}
	m.log.Info("monitor started", "pid", pid)
	return nil
}

func (m *Manager) monitorBin() (string, error) {
	if m.opt.MonitorPath != "" {
		return m.opt.MonitorPath, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(exe), "tripod-monitor"), nil
}

// startPodInit starts `tripod-monitor pause` as PID 1 of a new PID
// namespace, in its own session so it outlives tripodd, and pins that
// namespace at path.
func (m *Manager) startPodInit(path string) (int, error) {
	bin, err := m.monitorBin()
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(bin, "pause")
	cmd.Env = []string{"GOMAXPROCS=1"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: syscall.CLONE_NEWPID}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start the pod's PID namespace init (%s): %w", bin, err)
	}
	go cmd.Wait()
	pid := cmd.Process.Pid
	if err := netns.PinProcess(pid, netns.PID, path); err != nil {
		cmd.Process.Kill()
		return 0, err
	}
	return pid, nil
}

// stopPodInit kills a shared PID namespace's init, and with it anything
// left in the namespace, if pid is still that process (not a reused PID).
func stopPodInit(pid int, path string) {
	if pid > 0 && netns.Same(pid, netns.PID, path) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// Recover brings the manager in line with the node after a start: records
// of unfinished creations are rolled back, exits that happened while
// tripodd was down are recorded, pods whose namespaces are gone (a reboot)
// are marked not ready, and CNI GC frees attachments of pods that are no
// longer live. Containers are checked in parallel.
func (m *Manager) Recover(ctx context.Context, images Images) error {
	m.images = images
	m.mu.Lock()
	m.ev.recovering = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.ev.recovering = false
		m.mu.Unlock()
	}()
	// The monitor is not started here: it starts with the first
	// container, and recovery reads exits without it when it is gone.
	m.mu.Lock()
	var pods []*Pod
	for _, p := range m.pods {
		pods = append(pods, p)
	}
	var ctrs []*Container
	for _, c := range m.containers {
		ctrs = append(ctrs, c)
	}
	m.mu.Unlock()

	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, c := range ctrs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			m.recoverContainer(ctx, c)
		}()
	}
	wg.Wait()
	var live []string
	var recorded [][]byte
	for _, p := range pods {
		switch {
		case p.State == Creating:
			m.log.Info("rolling back an unfinished pod", "pod", p.ID)
			if err := m.teardownPod(ctx, p); err != nil {
				m.log.Warn("rollback", "pod", p.ID, "err", err)
				continue
			}
			os.RemoveAll(p.Dir)
			m.store.delete(podBucket, p.ID)
			m.mu.Lock()
			delete(m.pods, p.ID)
			m.mu.Unlock()
			m.release(podKey(p.Meta), p.ID)
		case p.State == Ready:
			if path, ok := p.Namespaces[netns.Net]; ok && !netns.Pinned(path) {
				m.log.Info("pod lost its namespaces (reboot?): not ready", "pod", p.ID)
				m.mu.Lock()
				p.State = NotReady
				m.publishLocked(ContainerStopped, p.ID, p.ID)
				m.mu.Unlock()
				m.store.put(podBucket, p.ID, p)
				continue
			}
			if p.Net != nil {
				live = append(live, p.ID)
				recorded = append(recorded, p.Net.ConfList)
			}
		}
	}
	// GC only a network this instance has attached pods to: another
	// runtime's attachments on a shared config are not ours to free.
	if m.opt.CNI != nil && m.opt.CNI.Used() {
		if err := m.opt.CNI.GC(ctx, live, recorded); err != nil {
			m.log.Warn("cni gc", "err", err)
		}
	}
	return nil
}

func (m *Manager) recoverContainer(ctx context.Context, c *Container) {
	if c.State == Creating {
		m.log.Info("rolling back an unfinished container", "container", c.ID)
		if err := m.destroy(ctx, c); err != nil {
			m.log.Warn("rollback", "container", c.ID, "err", err)
		}
		return
	}
	if c.State == Exited {
		return
	}
	rep, err := m.monitor().Call(ctx, monitor.Request{Op: "state", ID: c.ID})
	switch {
	case err == nil && rep.Known && rep.Exit != nil:
		m.setExit(c, *rep.Exit)
	case err == nil && rep.Known:
		// Still running under the monitor: watch for its exit.
		if c.State == Running {
			m.watchExit(c)
		}
	default:
		if e, ok := monitor.ReadExit(c.Bundle); ok {
			m.setExit(c, e)
		} else if !m.alive(ctx, c) {
			m.setExit(c, monitor.Exit{Code: 255, FinishedAt: time.Now().UnixNano()})
		} else if c.State == Running {
			m.watchExit(c) // the monitor lost it: the watcher polls the runtime
		}
	}
}
