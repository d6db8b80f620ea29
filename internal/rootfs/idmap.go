package rootfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// IDMapped describes the user namespace a container's rootfs is mapped
// into: its files, owned by root in the image, appear owned by the
// namespace's root.
type IDMapped struct {
	// UserNS is a path to the namespace (an nsfs file).
	UserNS string
	// UID and GID are the host IDs of the namespace's root: the writable
	// layer's top directory is given to them.
	UID, GID uint32
	// attachLayers is the fallback for kernels whose overlayfs refuses
	// detached mounts as layers (forced in tests).
	attachLayers bool
}

// MountIDMapped is Mount for a container in a user namespace. Each image
// layer is cloned as an idmapped mount through the namespace (the layers
// on disk stay shared with every other container and untouched), overlayfs
// stacks those clones, and the writable layer below stores what the
// container writes with the host IDs of its range. Nothing is chowned
// but the writable layer's top directory, so it costs no copy.
func MountIDMapped(layers []string, dir, target string, m IDMapped) (err error) {
	if len(layers) == 0 {
		return errors.New("rootfs: the image has no layers")
	}
	upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	for _, d := range []string{upper, work, target} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	// The merged root directory is the writable layer's: the container's
	// root must own it to create files in /.
	if err := os.Chown(upper, int(m.UID), int(m.GID)); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	ns, err := os.Open(m.UserNS)
	if err != nil {
		return fmt.Errorf("rootfs: user namespace: %w", err)
	}
	defer ns.Close()
	fds := make([]int, 0, len(layers))
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, l := range layers {
		fd, err := unix.OpenTree(unix.AT_FDCWD, l, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			return fmt.Errorf("rootfs: clone layer %s: %w", l, err)
		}
		fds = append(fds, fd)
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(ns.Fd())}
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
			return fmt.Errorf("rootfs: idmap layer %s (needs Linux 5.12 and a filesystem that supports idmapped mounts): %w", l, err)
		}
	}
	lower := make([]string, len(fds))
	if !m.attachLayers {
		// Layers named by their descriptors: no mount point exists even
		// for a moment, so a crash leaves nothing mounted (Linux 6.15+).
		for i, fd := range fds {
			lower[len(fds)-1-i] = "/proc/self/fd/" + strconv.Itoa(fd)
		}
		if err := mountOverlay(lower, upper, work, target); err == nil {
			return nil
		}
	}
	// Older kernels take only attached layers: mount each clone under the
	// container's own directory just long enough for overlayfs to take
	// its private copies of them.
	stage := filepath.Join(dir, "idmap")
	defer detachStage(stage)
	for i, fd := range fds {
		p := filepath.Join(stage, strconv.Itoa(i))
		if err := os.MkdirAll(p, 0o700); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		if err := unix.MoveMount(fd, "", unix.AT_FDCWD, p, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("rootfs: attach idmapped layer: %w", err)
		}
		lower[len(fds)-1-i] = p
	}
	return mountOverlay(lower, upper, work, target)
}

func mountOverlay(lower []string, upper, work, target string) error {
	for _, l := range lower {
		if strings.ContainsAny(l, ":,") {
			return fmt.Errorf("rootfs: layer path %q cannot be given to overlayfs", l)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lower, ":"), upper, work)
	if len(opts) >= os.Getpagesize() {
		return fmt.Errorf("rootfs: %d layers make overlay options longer than a page", len(lower))
	}
	if err := unix.Mount("overlay", target, "overlay", 0, opts); err != nil {
		return fmt.Errorf("rootfs: mount overlay on %s: %w", target, err)
	}
	return nil
}

// detachStage unmounts and removes the staging mounts of MountIDMapped;
// Cleanup calls it too, for a crash in between. Directories are removed
// one by one, never recursively: a recursive removal through a mount that
// failed to go would delete the image's files.
func detachStage(stage string) error {
	entries, err := os.ReadDir(stage)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(stage, e.Name())
		if err := Unmount(p); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, fmt.Errorf("rootfs: %w", err))
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(stage); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("rootfs: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Cleanup releases what a crash may have left mounted in a container's
// writable directory (MountIDMapped's staging mounts); only then may the
// directory be removed recursively.
func Cleanup(dir string) error {
	return detachStage(filepath.Join(dir, "idmap"))
}
