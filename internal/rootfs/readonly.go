package rootfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// MountReadOnly mounts layers (lowest first) read-only at target: an
// overlay of lower directories only, or a read-only bind mount when there
// is one layer (overlayfs needs two lower directories without an upper).
func MountReadOnly(layers []string, target string) error {
	if len(layers) == 0 {
		return errors.New("rootfs: the image has no layers")
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	if len(layers) == 1 {
		if err := unix.Mount(layers[0], target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("rootfs: bind %s on %s: %w", layers[0], target, err)
		}
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			unix.Unmount(target, unix.MNT_DETACH)
			return fmt.Errorf("rootfs: read-only %s: %w", target, err)
		}
		return nil
	}
	lower := make([]string, len(layers))
	for i, l := range layers {
		if strings.ContainsAny(l, ":,") {
			return fmt.Errorf("rootfs: layer path %q cannot be given to overlayfs", l)
		}
		lower[len(layers)-1-i] = l
	}
	opts := "lowerdir=" + strings.Join(lower, ":")
	if len(opts) >= os.Getpagesize() {
		return fmt.Errorf("rootfs: %d layers make overlay options longer than a page", len(layers))
	}
	if err := unix.Mount("overlay", target, "overlay", unix.MS_RDONLY, opts); err != nil {
		return fmt.Errorf("rootfs: mount read-only overlay on %s: %w", target, err)
	}
	return nil
}

// Resolve returns the host path of sub inside root, following symbolic
// links as if root were "/" (an image's absolute link cannot point out of
// it). sub must exist.
func Resolve(root, sub string) (string, error) {
	if sub == "" || sub == "." {
		return root, nil
	}
	if !filepath.IsLocal(sub) {
		return "", fmt.Errorf("%q is not a relative path inside the image", sub)
	}
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", root, err)
	}
	defer unix.Close(rfd)
	fd, err := unix.Openat2(rfd, sub, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV})
	if err != nil {
		return "", fmt.Errorf("%q: %w", sub, err)
	}
	defer unix.Close(fd)
	p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", err
	}
	if rel, err := filepath.Rel(root, p); err != nil || !filepath.IsLocal(rel) && rel != "." {
		return "", fmt.Errorf("%q resolves to %s, outside %s", sub, p, root)
	}
	return p, nil
}
