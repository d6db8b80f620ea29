package pod

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/tripod-dev/tripod/internal/netns"
)

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
		return
	}
	// A crash between starting the init and recording its PID: find it
	// by its namespace, still pinned at path.
	killInit(path)
}

// Recover brings the manager in line with the node after a start: records
// of unfinished creations are rolled back, the monitor (started if it died
// meanwhile) adopts the live containers and reports exits that happened
// while tripodd was down, pods whose namespaces are gone (a reboot) are
// marked not ready, and CNI GC frees attachments of pods that are no
// longer live. Containers are handled in parallel.
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
	running := 0
	for _, c := range ctrs {
		if c.State != Creating {
			if c.State != Exited {
				running++
			}
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			m.log.Info("rolling back an unfinished container", "container", c.ID)
			if err := m.destroy(ctx, c); err != nil {
				m.log.Warn("rollback", "container", c.ID, "err", err)
			}
		}()
	}
	wg.Wait()
	m.recoverMonitor(ctx, running > 0)
	// Exits from now on are reported as they happen.
	for _, c := range m.liveContainers() {
		m.mu.Lock()
		run := c.State == Running
		m.mu.Unlock()
		if run {
			m.watchExit(c)
		}
	}
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
