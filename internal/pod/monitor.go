package pod

import (
	"bufio"
	"context"
	"fmt"
	"github.com/tripod-dev/tripod/internal/daemonctl"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/monitor"
)

// monitorState is what the Manager keeps about the node's tripod-monitor.
type monitorState struct {
	// mu serialises starting one: two callers must never start two
	// monitors on one socket.
	mu        sync.Mutex
	lastStart time.Time
	closed    chan struct{} // closed by Manager.Close: no restarts after it
}

// Containers keep running when tripod-monitor dies: their inits are
// reparented to the node's init. tripodd watches the monitor; when it
// ends while containers live, a new one is started at once and adopts
// them (see internal/monitor: pidfds, the log FIFOs, the exit status as
// far as the kernel keeps it). The same happens lazily when a call finds
// no monitor, and at start-up when tripodd finds it gone.

// ensureMonitor makes sure a monitor answers on the socket.
func (m *Manager) ensureMonitor(ctx context.Context) error {
	_, err := m.monitorUp(ctx)
	return err
}

// monitorUp starts tripod-monitor unless one answers on the socket, in its
// own session so it outlives tripodd, and has a new one adopt the live
// containers. started reports whether it had to.
func (m *Manager) monitorUp(ctx context.Context) (started bool, err error) {
	m.mon.mu.Lock()
	defer m.mon.mu.Unlock()
	cl := m.monitor()
	if _, err := cl.Call(ctx, monitor.Request{Op: "ping"}); err == nil {
		return false, nil
	}
	// A monitor that keeps dying is not restarted in a tight loop.
	if wait := time.Second - time.Since(m.mon.lastStart); wait > 0 {
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	bin, err := m.monitorBin()
	if err != nil {
		return false, err
	}
	logf, err := os.OpenFile(filepath.Join(m.opt.State, "monitor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return false, fmt.Errorf("monitor log: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return false, err
	}
	defer r.Close()
	cmd := exec.Command(bin, cl.Path)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	m.mon.lastStart = time.Now()
	if err := cmd.Start(); err != nil {
		w.Close()
		return false, fmt.Errorf("start tripod-monitor (%s): %w", bin, err)
	}
	w.Close()
	pid := cmd.Process.Pid
	if err := daemonctl.WritePIDFile(filepath.Join(m.opt.State, monitor.PIDFile), pid); err != nil {
		m.log.Warn("monitor pid file", "err", err)
	}
	// Reaped when it ends while we live (it is not ours to stop), and
	// replaced if containers still need one.
	go m.supervise(pid, func() { cmd.Wait() })
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil || line != "ok\n" {
		return true, fmt.Errorf("tripod-monitor did not start (see %s)", filepath.Join(m.opt.State, "monitor.log"))
	}
	m.log.Info("monitor started", "pid", pid)
	m.adoptAll(ctx)
	return true, nil
}

// supervise waits for the monitor process pid to end (wait returns then)
// and, unless the manager is closed, starts another at once if containers
// are left to adopt; otherwise the next container starts one.
func (m *Manager) supervise(pid int, wait func()) {
	wait()
	select {
	case <-m.mon.closed:
		return
	default:
	}
	if len(m.liveContainers()) == 0 {
		m.log.Info("monitor ended", "pid", pid)
		return
	}
	m.log.Warn("monitor ended while containers run: starting another to adopt them", "pid", pid)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.ensureMonitor(ctx); err != nil {
		m.log.Error("restarting the monitor", "err", err)
	}
}

// liveContainers are the created and running containers.
func (m *Manager) liveContainers() []*Container {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Container
	for _, c := range m.containers {
		// A created container still to be restored has nothing running.
		if (c.State == Created || c.State == Running) && c.Restore == "" {
			out = append(out, c)
		}
	}
	return out
}

// adoptAll has the monitor adopt every live container, in parallel, and
// records the exits it reports.
func (m *Manager) adoptAll(ctx context.Context) {
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, c := range m.liveContainers() {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			m.adopt(ctx, c)
		}()
	}
	wg.Wait()
}

func (m *Manager) adopt(ctx context.Context, c *Container) {
	rep, err := m.monitor().Call(ctx, monitor.Request{Op: "adopt", ID: c.ID, Bundle: c.Bundle})
	if err == nil {
		if rep.Exit != nil {
			m.setExit(c, *rep.Exit)
		}
		return
	}
	m.log.Warn("monitor cannot adopt the container: its logs stop", "container", c.ID, "err", err)
	// The exit record, else the runtime's view: code 255 when ended.
	if e, ok := monitor.ReadExit(c.Bundle); ok {
		m.setExit(c, e)
	} else if !m.alive(ctx, c) {
		m.setExit(c, monitor.Exit{Code: 255, Unknown: true, FinishedAt: time.Now().UnixNano()})
	}
}

// recoverMonitor runs at start-up: with live containers a monitor is
// started if none answers (adopting them), or the running one is asked
// about each (adopting those it does not know: a predecessor may have
// died before it could). A running monitor is watched either way.
func (m *Manager) recoverMonitor(ctx context.Context, live bool) {
	if _, err := m.monitor().Call(ctx, monitor.Request{Op: "ping"}); err == nil {
		m.watchMonitor()
		if live {
			m.adoptAll(ctx)
		}
		return
	}
	if !live {
		return // the first container starts one
	}
	if _, err := m.monitorUp(ctx); err != nil {
		m.log.Error("starting the monitor", "err", err)
		for _, c := range m.liveContainers() {
			m.adopt(ctx, c) // falls back to exit records and the runtime
		}
	}
}

// watchMonitor supervises a monitor that an earlier tripodd started, by
// the PID it recorded, checked to be a tripod-monitor on our socket.
func (m *Manager) watchMonitor() {
	pid, err := daemonctl.ReadPIDFile(filepath.Join(m.opt.State, monitor.PIDFile))
	if err != nil {
		return
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return
	}
	// Checked once the pidfd pins the process, so never a reused PID.
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) != 2 || args[1] != m.monitor().Path {
		unix.Close(fd)
		return
	}
	go m.supervise(pid, func() {
		monitor.WaitPidfd(fd)
		unix.Close(fd)
	})
}
