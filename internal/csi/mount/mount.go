// Package mount mounts, unmounts, formats and resizes the filesystems of
// volumes. Targets are opened with O_NOFOLLOW and mounted through their
// /proc/self/fd link, so a symlink swapped in at the target (or at its last
// component beforehand) cannot redirect a mount elsewhere.
package mount

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrSymlink reports a path whose last component is a symbolic link.
var ErrSymlink = errors.New("path is a symbolic link")

// OpenTarget opens path (a directory when dir, else a file) without
// following a symlink in its last component, creating it when missing.
// The caller closes the returned file.
func OpenTarget(path string, dir bool) (*os.File, error) {
	for range 2 {
		fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == nil {
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				unix.Close(fd)
				return nil, fmt.Errorf("stat %s: %w", path, err)
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFLNK:
				unix.Close(fd)
				return nil, fmt.Errorf("%s: %w", path, ErrSymlink)
			case unix.S_IFDIR:
				if !dir {
					unix.Close(fd)
					return nil, fmt.Errorf("%s is a directory, want a file", path)
				}
			default:
				if dir {
					unix.Close(fd)
					return nil, fmt.Errorf("%s is not a directory", path)
				}
			}
			return os.NewFile(uintptr(fd), path), nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
		if dir {
			err = unix.Mkdir(path, 0o750)
		} else {
			var cfd int
			cfd, err = unix.Open(path, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o640)
			if err == nil {
				unix.Close(cfd)
			}
		}
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create %s: %w", path, err)
		}
	}
	return nil, fmt.Errorf("open %s: created but vanished", path)
}

func fdPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// Mount mounts device (a filesystem of type fstype) on target.
func Mount(device string, target *os.File, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(device, fdPath(target), fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", device, fstype, target.Name(), err)
	}
	return nil
}

// Bind bind-mounts source on target, read-only when ro. A read-only bind
// needs a second remount step: MS_RDONLY is ignored on the first call.
func Bind(source string, target *os.File, ro bool) error {
	if err := unix.Mount(source, fdPath(target), "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", source, target.Name(), err)
	}
	if ro {
		// The fd still names the directory under the new mount, so the
		// remount goes by path; a mount point cannot be renamed or
		// replaced by a symlink, so the path now means the new mount.
		if err := unix.Mount("", target.Name(), "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(target.Name(), unix.UMOUNT_NOFOLLOW|unix.MNT_DETACH)
			return fmt.Errorf("remount %s read-only: %w", target.Name(), err)
		}
	}
	return nil
}

// Unmount unmounts every mount stacked on path. A path that is not a mount
// point (or does not exist) is already unmounted.
func Unmount(path string) error {
	for range 16 {
		ok, err := IsMountPoint(path)
		if err != nil || !ok {
			return err
		}
		if err := unix.Unmount(path, unix.UMOUNT_NOFOLLOW); err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				return nil
			}
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 16 unmounts", path)
}

// IsMountPoint reports whether path (not following a final symlink) is the
// root of a mount, using statx's mount-root attribute instead of scanning
// mountinfo, which grows with every mount on the node.
func IsMountPoint(path string) (bool, error) {
	var st unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE, &st)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("statx %s: %w", path, err)
	}
	if st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, fmt.Errorf("statx %s: kernel does not report mount roots", path)
	}
	return st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
}

// DeviceOf returns the device number of the filesystem mounted at path.
func DeviceOf(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Dev, nil
}

// Rdev returns the device number a block device node stands for.
func Rdev(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, fmt.Errorf("%s is not a block device", path)
	}
	return st.Rdev, nil
}

// run executes a filesystem tool, returning its output in the error.
func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Supported reports whether fstype can be made and grown on this host.
func Supported(fstype string) bool {
	switch fstype {
	case "ext4", "ext3", "ext2":
		_, err := exec.LookPath("mkfs." + fstype)
		return err == nil
	case "xfs":
		_, err := exec.LookPath("mkfs.xfs")
		return err == nil
	}
	return false
}

// Format makes a filesystem of fstype on dev, a new sparse file. Its holes
// read as zeroes, so ext4 is told the storage is zeroed: mkfs writes no
// inode tables or journal blocks, and the kernel starts no background
// zeroing after mount (which would allocate the whole table area of the
// sparse file and compete with the first users for IO). e2fsprogs older
// than 1.47 lacks the option; it then gets lazy initialisation instead.
func Format(ctx context.Context, dev, fstype string) error {
	switch fstype {
	case "ext4", "ext3", "ext2":
		err := run(ctx, "mkfs."+fstype, "-q", "-F", "-E", "assume_storage_prezeroed=1,nodiscard", "-m", "0", dev)
		if err != nil && strings.Contains(err.Error(), "assume_storage_prezeroed") {
			err = run(ctx, "mkfs."+fstype, "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", "-m", "0", dev)
		}
		return err
	case "xfs":
		return run(ctx, "mkfs.xfs", "-q", "-f", "-K", dev)
	}
	return fmt.Errorf("unsupported filesystem %q", fstype)
}

// ErrOnlineResizeDenied reports that the kernel refused to grow a mounted
// ext filesystem: its resize ioctl needs CAP_SYS_RESOURCE, which some
// hosts withhold even from root.
var ErrOnlineResizeDenied = errors.New("online resize denied (needs CAP_SYS_RESOURCE)")

// Grow enlarges the filesystem mounted at mountPoint (on dev) to fill dev.
func Grow(ctx context.Context, dev, mountPoint, fstype string) error {
	switch fstype {
	case "ext4", "ext3", "ext2":
		err := run(ctx, "resize2fs", dev)
		if err != nil && strings.Contains(err.Error(), "Permission denied to resize") {
			return fmt.Errorf("grow %s: %w", dev, ErrOnlineResizeDenied)
		}
		return err
	case "xfs":
		return run(ctx, "xfs_growfs", mountPoint)
	}
	return fmt.Errorf("unsupported filesystem %q", fstype)
}

// GrowOffline enlarges the unmounted ext filesystem on dev to fill it. The
// filesystem was cleanly unmounted by the caller, so resize2fs's demand for
// a fresh fsck is waived (-f).
func GrowOffline(ctx context.Context, dev, fstype string) error {
	switch fstype {
	case "ext4", "ext3", "ext2":
		return run(ctx, "resize2fs", "-f", dev)
	}
	return fmt.Errorf("offline growth of %q not supported", fstype)
}

// Thaw unfreezes the filesystem mounted at dir. It fails with EINVAL when
// the filesystem is not frozen.
func Thaw(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), fiThaw, 0); err != nil {
		return fmt.Errorf("thaw %s: %w", dir, err)
	}
	return nil
}

// FIFREEZE and FITHAW (_IOWR('X', 119/120, int)); x/sys does not name them.
const (
	fiFreeze = 0xc0045877
	fiThaw   = 0xc0045878
)

// Freeze blocks writes to the filesystem mounted at dir and flushes it, so a
// copy of its device is consistent; the returned func thaws it.
func Freeze(dir string) (func() error, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	if err := unix.IoctlSetInt(int(f.Fd()), fiFreeze, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("freeze %s: %w", dir, err)
	}
	return func() error {
		defer f.Close()
		if err := unix.IoctlSetInt(int(f.Fd()), fiThaw, 0); err != nil {
			return fmt.Errorf("thaw %s: %w", dir, err)
		}
		return nil
	}, nil
}
