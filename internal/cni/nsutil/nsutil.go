// Package nsutil runs code inside a network namespace given by path.
package nsutil

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
)

// ErrGone means the namespace file does not exist or is no longer a live
// network namespace.
var ErrGone = errors.New("network namespace does not exist")

// Open opens a network namespace file and checks that it is one. A missing
// or dead namespace yields an error wrapping ErrGone with CNI code 3.
func Open(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, &wrapped{cnierr.New(cnierr.UnknownContainer, "network namespace %s does not exist", path), ErrGone}
		}
		return nil, cnierr.New(cnierr.UnknownContainer, "opening network namespace %s: %v", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, cnierr.New(cnierr.IOFailure, "statfs %s: %v", path, err)
	}
	if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
		f.Close()
		return nil, &wrapped{cnierr.New(cnierr.UnknownContainer, "%s is not a network namespace (it may have been unmounted)", path), ErrGone}
	}
	return f, nil
}

// Do runs fn with the calling goroutine's thread switched into the network
// namespace at path. fn must not start goroutines that expect to be in the
// namespace: only this thread is.
func Do(path string, fn func() error) error {
	f, err := Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return DoFile(f, fn)
}

// DoFile is Do for an already opened namespace file.
func DoFile(target *os.File, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening current network namespace: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return cnierr.New(cnierr.UnknownContainer, "entering network namespace %s: %v", target.Name(), err)
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked so that it exits with its goroutine
		// instead of serving others from the wrong namespace.
		return fmt.Errorf("returning to the original network namespace: %w (after: %v)", err, fnErr)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// wrapped carries both a CNI error (for its code) and a sentinel.
type wrapped struct {
	cni  error
	kind error
}

func (w *wrapped) Error() string   { return w.cni.Error() }
func (w *wrapped) Unwrap() []error { return []error{w.cni, w.kind} }
