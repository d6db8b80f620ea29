package critestimg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// debRoot returns a directory holding the extracted contents of Debian
// package pkg, downloading the .deb with `apt-get download` (not installed:
// Debian's busybox conflicts with the busybox-static the host keeps) into
// cache the first time, and extracting it with dpkg-deb once per .deb.
// A lock file serialises concurrent test processes sharing the cache.
func debRoot(ctx context.Context, cache, pkg string) (string, error) {
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("deb cache: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cache, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("deb cache lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("deb cache lock: %w", err)
	}
	deb, err := findDeb(cache, pkg)
	if err != nil {
		return "", err
	}
	if deb == "" {
		if deb, err = download(ctx, cache, pkg); err != nil {
			return "", err
		}
	}
	root := strings.TrimSuffix(deb, ".deb")
	if _, err := os.Stat(filepath.Join(root, ".extracted")); err == nil {
		return root, nil
	}
	os.RemoveAll(root)
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
		os.RemoveAll(root)
		return "", fmt.Errorf("dpkg-deb -x %s: %v: %s", deb, err, out)
	}
	if err := os.WriteFile(filepath.Join(root, ".extracted"), nil, 0o644); err != nil {
		return "", fmt.Errorf("deb cache: %w", err)
	}
	return root, nil
}

// findDeb is the cached .deb of pkg, or "".
func findDeb(cache, pkg string) (string, error) {
	m, err := filepath.Glob(filepath.Join(cache, pkg+"_*.deb"))
	if err != nil || len(m) == 0 {
		return "", err
	}
	return m[len(m)-1], nil
}

// download fetches pkg's .deb into cache. apt-get download needs package
// lists: on a machine where `apt-get update` never ran it cannot locate
// the package, so that is run once and the download retried.
func download(ctx context.Context, cache, pkg string) (string, error) {
	// Into a directory of its own first, so an interrupted download
	// never looks like a cached one.
	tmp, err := os.MkdirTemp(cache, ".download-")
	if err != nil {
		return "", fmt.Errorf("deb cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	get := func() ([]byte, error) {
		cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
		cmd.Dir = tmp
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	out, err := get()
	if err != nil {
		upd, uerr := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput()
		if uerr != nil {
			return "", fmt.Errorf("apt-get download %s: %v: %s (and apt-get update: %v: %s)", pkg, err, out, uerr, upd)
		}
		if out, err = get(); err != nil {
			return "", fmt.Errorf("apt-get download %s (after apt-get update): %v: %s", pkg, err, out)
		}
	}
	got, err := findDeb(tmp, pkg)
	if err != nil {
		return "", err
	}
	if got == "" {
		return "", errors.New("apt-get download " + pkg + " left no " + pkg + "_*.deb")
	}
	deb := filepath.Join(cache, filepath.Base(got))
	if err := os.Rename(got, deb); err != nil {
		return "", fmt.Errorf("deb cache: %w", err)
	}
	return deb, nil
}
