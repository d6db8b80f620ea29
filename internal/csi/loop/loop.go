// Package loop attaches regular files to Linux loop devices and finds the
// devices already attached to a file, so a restarted driver re-adopts the
// devices of its volumes instead of attaching duplicates.
package loop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Device is an attached loop device.
type Device struct {
	Path     string // /dev/loopN
	Backing  string // backing file as the kernel reports it
	ReadOnly bool
	// Deleted reports that the backing file was unlinked while attached.
	Deleted bool
}

// Options for Attach.
type Options struct {
	ReadOnly bool
	// Autoclear detaches the device when its last user (a mount, an open
	// file) goes away, so a crash between attach and mount leaks nothing.
	Autoclear bool
	DirectIO  bool
}

// Attach binds file to a free loop device and returns the device, open. With
// Autoclear the device goes away when that file is closed unless something
// else (a mount) uses it by then, so close it only after mounting. The
// loop-control "get free" answer can race with another process taking the
// same device, which shows as EBUSY from LOOP_CONFIGURE: try the next one.
func Attach(file string, opts Options) (*os.File, error) {
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	bf, err := os.OpenFile(file, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open backing file: %w", err)
	}
	defer bf.Close()

	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open loop-control: %w", err)
	}
	defer ctl.Close()

	var cfg unix.LoopConfig
	cfg.Fd = uint32(bf.Fd())
	cfg.Info.Flags = 0
	if opts.ReadOnly {
		cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
	}
	if opts.Autoclear {
		cfg.Info.Flags |= unix.LO_FLAGS_AUTOCLEAR
	}
	if opts.DirectIO {
		cfg.Info.Flags |= unix.LO_FLAGS_DIRECT_IO
	}
	copy(cfg.Info.File_name[:], file)

	for range 64 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("loop-control get free: %w", err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		lf, err := openDev(dev, n)
		if err != nil {
			return nil, err
		}
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if err == nil {
			return lf, nil
		}
		lf.Close()
		if errors.Is(err, unix.EBUSY) {
			continue
		}
		if opts.DirectIO && errors.Is(err, unix.EINVAL) {
			// The backing filesystem may refuse O_DIRECT: fall back to
			// buffered IO rather than fail the attach.
			opts.DirectIO = false
			cfg.Info.Flags &^= unix.LO_FLAGS_DIRECT_IO
			continue
		}
		return nil, fmt.Errorf("configure %s: %w", dev, err)
	}
	return nil, fmt.Errorf("no free loop device after 64 tries")
}

// openDev opens /dev/loopN, creating the node when udev is absent (as in
// containers and minimal VMs, where loop-control adds devices but nobody
// makes their nodes).
func openDev(dev string, n int) (*os.File, error) {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		if err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("mknod %s: %w", dev, err)
		}
		f, err = os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dev, err)
	}
	return f, nil
}

// Detach releases dev. A device that is already free counts as detached.
// While the device is still in use (mounted), the kernel only marks it for
// autoclear; it goes away with its last user.
func Detach(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	return nil
}

// Resize makes dev pick up its backing file's current size.
func Resize(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("set capacity of %s: %w", dev, err)
	}
	return nil
}

// SetDirectIO switches direct IO of an attached device on or off.
func SetDirectIO(dev string, on bool) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	v := 0
	if on {
		v = 1
	}
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_DIRECT_IO, v); err != nil {
		return fmt.Errorf("set direct io of %s: %w", dev, err)
	}
	return nil
}

// List reports every attached loop device, read from sysfs (no device is
// opened, so listing never holds one busy).
func List() ([]Device, error) {
	entries, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, fmt.Errorf("read /sys/block: %w", err)
	}
	var out []Device
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "loop") {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/sys/block", name, "loop", "backing_file"))
		if err != nil {
			continue // not attached (no loop/ directory) or detached meanwhile
		}
		backing := strings.TrimSuffix(string(b), "\n")
		d := Device{Path: "/dev/" + name, Backing: backing}
		if s, ok := strings.CutSuffix(backing, " (deleted)"); ok {
			d.Backing, d.Deleted = s, true
		}
		if ro, err := os.ReadFile(filepath.Join("/sys/block", name, "ro")); err == nil {
			d.ReadOnly = strings.TrimSpace(string(ro)) == "1"
		}
		out = append(out, d)
	}
	return out, nil
}

// Backing reports whether dev is attached to file (which still exists).
// One sysfs read: the cheap check of a device recorded earlier.
func Backing(dev, file string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	return err == nil && strings.TrimSuffix(string(b), "\n") == file
}

// ReadOnly reports whether dev is a read-only device.
func ReadOnly(dev string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "ro"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// Find returns the devices attached to file (by its absolute path).
func Find(file string) ([]Device, error) {
	all, err := List()
	if err != nil {
		return nil, err
	}
	var out []Device
	for _, d := range all {
		if d.Backing == file && !d.Deleted {
			out = append(out, d)
		}
	}
	return out, nil
}

// Size returns the size in bytes the kernel currently sees for dev.
func Size(dev string) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "size"))
	if err != nil {
		return 0, fmt.Errorf("read size of %s: %w", dev, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse size of %s: %w", dev, err)
	}
	return n * 512, nil
}

// SetReadAhead sets dev's read-ahead window in KiB.
func SetReadAhead(dev, kib string) error {
	p := filepath.Join("/sys/block", filepath.Base(dev), "queue", "read_ahead_kb")
	if err := os.WriteFile(p, []byte(kib), 0); err != nil {
		return fmt.Errorf("set read-ahead of %s: %w", dev, err)
	}
	return nil
}
