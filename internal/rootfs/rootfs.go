// Package rootfs mounts containers' root filesystems: an overlay of the
// image's unpacked layers under a writable directory of the container's own.
package rootfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount stacks layers (lowest first) under upper/work in dir and mounts
// the overlay at target. dir holds the container's writable layer.
func Mount(layers []string, dir, target string) error {
	if len(layers) == 0 {
		return errors.New("rootfs: the image has no layers")
	}
	upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	for _, d := range []string{upper, work, target} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	lower := make([]string, len(layers))
	for i, l := range layers {
		if strings.ContainsAny(l, ":,") {
			return fmt.Errorf("rootfs: layer path %q cannot be given to overlayfs", l)
		}
		lower[len(layers)-1-i] = l
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lower, ":"), upper, work)
	if len(opts) >= os.Getpagesize() {
		return fmt.Errorf("rootfs: %d layers make overlay options longer than a page", len(layers))
	}
	if err := unix.Mount("overlay", target, "overlay", 0, opts); err != nil {
		return fmt.Errorf("rootfs: mount overlay on %s: %w", target, err)
	}
	return nil
}

// Unmount unmounts target if mounted; a target already gone is fine.
func Unmount(target string) error {
	for {
		err := unix.Unmount(target, unix.MNT_DETACH)
		if err == nil {
			continue // stacked mounts: unmount until none is left
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("rootfs: unmount %s: %w", target, err)
	}
}
