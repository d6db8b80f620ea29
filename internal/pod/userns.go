package pod

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/netns"
)

// userKind names a pinned user namespace among a pod's namespaces.
const userKind netns.Kind = "user"

var cloneFlags = map[netns.Kind]uintptr{netns.Net: syscall.CLONE_NEWNET, netns.IPC: syscall.CLONE_NEWIPC,
	netns.UTS: syscall.CLONE_NEWUTS, netns.PID: syscall.CLONE_NEWPID}

// pinUserPod makes a pod's user namespace and the namespaces it owns. A
// multithreaded process such as tripodd can neither unshare nor enter a
// user namespace, so a helper (`tripod-monitor pause`) is cloned into new
// user, network, IPC and UTS namespaces at once: the kernel creates the
// user namespace first and makes it the owner of the others, which is
// what lets the containers, once inside the user namespace, join them.
// Every namespace is pinned from the helper. With a shared PID namespace
// the helper is also cloned into a new one and stays as its init (the
// pod's InitPID); otherwise it is killed once the namespaces are pinned.
func (m *Manager) pinUserPod(p *Pod, kinds []netns.Kind) error {
	bin, err := m.monitorBin()
	if err != nil {
		return err
	}
	flags := uintptr(syscall.CLONE_NEWUSER)
	pin := []netns.Kind{userKind}
	for _, k := range kinds {
		flags |= cloneFlags[k]
		pin = append(pin, k)
	}
	_, sharePID := p.Namespaces[netns.PID]
	if sharePID {
		flags |= syscall.CLONE_NEWPID
		pin = append(pin, netns.PID)
	}
	ids := func(l []specs.LinuxIDMapping) []syscall.SysProcIDMap {
		var out []syscall.SysProcIDMap
		for _, x := range l {
			out = append(out, syscall.SysProcIDMap{ContainerID: int(x.ContainerID), HostID: int(x.HostID), Size: int(x.Size)})
		}
		return out
	}
	cmd := exec.Command(bin, "pause")
	cmd.Env = []string{"GOMAXPROCS=1"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: flags,
		UidMappings: ids(p.UserNS.UIDs), GidMappings: ids(p.UserNS.GIDs),
		// Containers call setgroups(2) for their supplementary groups.
		GidMappingsEnableSetgroups: true}
	if !sharePID {
		// Should tripodd die before it is done, so does the helper.
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
		// The death signal follows the thread that forked: keep it.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("user namespace: start %s: %w", bin, err)
	}
	pid := cmd.Process.Pid
	stop := func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
	for _, k := range pin {
		if err := netns.PinProcess(pid, k, p.Namespaces[k]); err != nil {
			stop()
			netns.Unpin(p.Namespaces)
			return fmt.Errorf("user namespace: pin %s: %w", k, err)
		}
	}
	if path, ok := p.Namespaces[netns.UTS]; ok {
		if err := setHostname(path, p.hostname()); err != nil {
			stop()
			netns.Unpin(p.Namespaces)
			return err
		}
	}
	m.crashpoint("pod-userns") // the helper must die with tripodd
	if sharePID {
		p.InitPID = pid
		go cmd.Wait()
		return nil
	}
	stop()
	return nil
}

// chownPodFiles gives the hosts, hostname and resolv.conf files a pod's
// containers share to its user namespace's root, who may then edit them as
// root can in any other pod.
func chownPodFiles(p *Pod) error {
	if p.UserNS == nil {
		return nil
	}
	for _, f := range []string{"hosts", "hostname", "resolv.conf"} {
		if err := os.Chown(filepath.Join(p.Dir, f), int(p.UserNS.UIDs[0].HostID), int(p.UserNS.GIDs[0].HostID)); err != nil {
			return fmt.Errorf("pod %s: %w", f, err)
		}
	}
	return nil
}

// setHostname sets the host name of the UTS namespace pinned at path from
// a thread of its own, which then dies rather than go back to the
// scheduler in that namespace.
func setHostname(path, name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(path)
		if err != nil {
			errc <- fmt.Errorf("uts namespace: %w", err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWUTS); err != nil {
			errc <- fmt.Errorf("enter uts namespace: %w", err)
			return
		}
		if err := unix.Sethostname([]byte(name)); err != nil {
			errc <- fmt.Errorf("sethostname %q: %w", name, err)
			return
		}
		errc <- nil
	}()
	return <-errc
}

// killInit kills the init of the PID namespace pinned at path, found among
// the host's processes by namespace (so never a reused PID); with it go all
// the namespace's processes.
func killInit(path string) {
	var want unix.Stat_t
	if unix.Stat(path, &want) != nil || !netns.Pinned(path) {
		return
	}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/pid", pid), &st) != nil || st.Dev != want.Dev || st.Ino != want.Ino {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err == nil && nspidIsInit(string(b)) {
			unix.Kill(pid, unix.SIGKILL)
			return
		}
	}
}

// nspidIsInit reports whether a /proc/<pid>/status says the process is
// PID 1 of its innermost PID namespace.
func nspidIsInit(status string) bool {
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
			f := strings.Fields(v)
			return len(f) > 1 && f[len(f)-1] == "1"
		}
	}
	return false
}
