// Package netns pins a pod's Linux namespaces (network, IPC, UTS) to files
// by bind-mounting their nsfs inodes, so they live without any process in
// them: tripod needs no pause container.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Kind is a namespace type that can be pinned.
type Kind string

// The kinds a pod may own.
const (
	Net Kind = "net"
	IPC Kind = "ipc"
	UTS Kind = "uts"
	// PID namespaces cannot be unshared by a thread: Pin refuses them;
	// PinProcess pins one a process runs in.
	PID Kind = "pid"
)

var flags = map[Kind]int{Net: unix.CLONE_NEWNET, IPC: unix.CLONE_NEWIPC, UTS: unix.CLONE_NEWUTS}

// Pin creates new namespaces of the given kinds and bind-mounts each at
// dir/<kind>. hostname is set in a new UTS namespace; a new network
// namespace has its loopback up, as pods expect (127.0.0.1 and ::1 reach
// the pod itself). On error nothing is left mounted. The returned map is
// kind → path.
func Pin(dir string, kinds []Kind, hostname string) (map[Kind]string, error) {
	if len(kinds) == 0 {
		return map[Kind]string{}, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("namespace dir: %w", err)
	}
	paths := map[Kind]string{}
	for _, k := range kinds {
		if _, ok := flags[k]; !ok {
			return nil, fmt.Errorf("namespace kind %q cannot be pinned", k)
		}
		paths[k] = filepath.Join(dir, string(k))
	}
	if err := pin(paths, hostname, os.O_CREATE, true); err != nil {
		return nil, err
	}
	return paths, nil
}

// PinNet creates a network namespace pinned at path, a name that must not
// exist yet, in a directory that Prepare makes a shared mount point first
// (as /run/netns must be for `ip netns` to coexist with it). Unpin removes
// it.
func PinNet(path string) error {
	if err := Prepare(filepath.Dir(path)); err != nil {
		return err
	}
	return pin(map[Kind]string{Net: path}, "", os.O_CREATE|os.O_EXCL, false)
}

// pin creates the files of paths (opened with openFlags), unshares their
// kinds on a thread of its own and bind-mounts each namespace on its file.
// With loopback, a new network namespace gets its lo up. On error nothing
// is left mounted or created.
func pin(paths map[Kind]string, hostname string, openFlags int, loopback bool) error {
	var mask int
	created := map[Kind]string{}
	for k, p := range paths {
		mask |= flags[k]
		fd, err := os.OpenFile(p, openFlags|os.O_RDONLY, 0o444)
		if err != nil {
			Unpin(created)
			return fmt.Errorf("namespace file: %w", err)
		}
		fd.Close()
		created[k] = p
	}
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it dies with this goroutine
		// instead of returning to the scheduler inside the new namespaces.
		runtime.LockOSThread()
		if err := unix.Unshare(mask); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		if hostname != "" && paths[UTS] != "" {
			if err := unix.Sethostname([]byte(hostname)); err != nil {
				errc <- fmt.Errorf("sethostname %q: %w", hostname, err)
				return
			}
		}
		if loopback && paths[Net] != "" {
			if err := loopbackUp(); err != nil {
				errc <- err
				return
			}
		}
		tid := unix.Gettid()
		for k, p := range paths {
			src := fmt.Sprintf("/proc/self/task/%d/ns/%s", tid, k)
			if err := unix.Mount(src, p, "", unix.MS_BIND, ""); err != nil {
				errc <- fmt.Errorf("bind-mount %s namespace: %w", k, err)
				return
			}
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		Unpin(paths)
		return err
	}
	return nil
}

// Prepare makes dir a shared mount point, as iproute2 does for /run/netns.
// Were it a plain directory, the first `ip netns add` anyone runs later
// would bind-mount the directory over itself and hide every namespace
// pinned in it before, leaving mounts that can no longer be unmounted by
// path.
func Prepare(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("making %s shared: %w", dir, err)
	}
	if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s onto itself: %w", dir, err)
	}
	if err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s shared: %w", dir, err)
	}
	return nil
}

// Unpin unmounts and removes pinned namespace files. Missing files and
// files no longer mounted are fine: teardown is idempotent.
func Unpin(paths map[Kind]string) error {
	var errs []error
	for _, p := range paths {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Pinned reports whether path is a live pinned namespace (an nsfs mount).
func Pinned(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// PinProcess bind-mounts the namespace of the given kind that process pid
// is in at path.
func PinProcess(pid int, kind Kind, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("namespace file: %w", err)
	}
	f.Close()
	src := fmt.Sprintf("/proc/%d/ns/%s", pid, kind)
	if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return fmt.Errorf("bind-mount %s: %w", src, err)
	}
	return nil
}

// Same reports whether process pid is in the namespace pinned at path.
func Same(pid int, kind Kind, path string) bool {
	var a, b unix.Stat_t
	if unix.Stat(fmt.Sprintf("/proc/%d/ns/%s", pid, kind), &a) != nil || unix.Stat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// loopbackUp sets lo up in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}
