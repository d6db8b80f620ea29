// Package cniinstall puts tripod's CNI plugins and a default network on a
// node: the tripod-cni binary with one link per plugin type in the plugin
// directory, and a bridge network config when the config directory has
// none. `tripod up`, `tripod cni install`, `make install` and the
// Kubernetes DaemonSet in deploy/cni all go through it.
package cniinstall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Binary is the multi-call plugin binary's name; every plugin type is a
// link to it.
const Binary = "tripod-cni"

// Record is told of each directory ('d') made, file ('f') and link ('l')
// installed, by its path without the staging prefix: make install's
// manifest is built from it.
type Record func(kind byte, path string)

// Plugins describes one installation of the plugins.
type Plugins struct {
	// From is the tripod-cni binary to install.
	From string
	// BinDir is the plugin directory as the node sees it (/opt/cni/bin).
	BinDir string
	// DestDir is prepended to BinDir when writing (DESTDIR staging).
	DestDir string
	// Force replaces plugin files that are not tripod's; by default they
	// are kept and reported.
	Force  bool
	Record Record
}

// Installed says what an installation did.
type Installed struct {
	Types   []string // plugin types now served by tripod-cni
	Changed bool     // the binary or a link was written
	// Kept are plugin files of the same type names that belong to someone
	// else (another plugin suite), left in place.
	Kept []string
	// New are the paths written that did not exist before, for undoing.
	New []string
}

// Types asks a tripod-cni binary which plugin types it serves.
func Types(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, bin, "list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s list: %w", bin, err)
	}
	types := strings.Fields(string(out))
	if len(types) == 0 {
		return nil, fmt.Errorf("%s list: no plugin types", bin)
	}
	return types, nil
}

// Install copies the binary into place (atomically: a plugin being
// executed meanwhile keeps its old file) and links every plugin type to
// it. A type name already taken by a file that is not tripod's is kept
// unless Force is set.
func (p Plugins) Install(ctx context.Context) (Installed, error) {
	var res Installed
	types, err := Types(ctx, p.From)
	if err != nil {
		return res, err
	}
	record := p.Record
	if record == nil {
		record = func(byte, string) {}
	}
	created, err := mkdirAll(p.DestDir, p.BinDir, record)
	if err != nil {
		return res, err
	}
	res.New = append(res.New, created...)
	dir := filepath.Join(p.DestDir, p.BinDir)
	bin := filepath.Join(dir, Binary)
	_, statErr := os.Lstat(bin)
	changed, err := copyIfDifferent(p.From, bin)
	if err != nil {
		return res, err
	}
	if changed && errors.Is(statErr, os.ErrNotExist) {
		res.New = append(res.New, bin)
	}
	res.Changed = changed
	record('f', filepath.Join(p.BinDir, Binary))
	for _, t := range types {
		path := filepath.Join(dir, t)
		fi, err := os.Lstat(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := os.Symlink(Binary, path); err != nil {
				return res, err
			}
			res.New = append(res.New, path)
			res.Changed = true
		case err != nil:
			return res, err
		case ours(path, fi, bin):
		case !p.Force:
			res.Kept = append(res.Kept, path)
			continue
		default:
			if err := replaceWithLink(path); err != nil {
				return res, err
			}
			res.Changed = true
		}
		res.Types = append(res.Types, t)
		record('l', filepath.Join(p.BinDir, t))
	}
	return res, nil
}

// ours reports whether a plugin file is tripod's: a link to tripod-cni
// (the name, or a path resolving to it) or the binary itself.
func ours(path string, fi os.FileInfo, bin string) bool {
	if fi.Mode()&os.ModeSymlink != 0 {
		if target, err := os.Readlink(path); err == nil && filepath.Base(target) == Binary {
			return true
		}
	}
	a, err1 := os.Stat(path)
	b, err2 := os.Stat(bin)
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

func replaceWithLink(path string) error {
	tmp := path + ".tripod-new"
	os.Remove(tmp)
	if err := os.Symlink(Binary, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// copyIfDifferent installs src at dst (mode 0755) unless dst already holds
// the same bytes. The new file is written beside dst and renamed over it.
func copyIfDifferent(src, dst string) (bool, error) {
	want, err := os.ReadFile(src)
	if err != nil {
		return false, err
	}
	if have, err := os.ReadFile(dst); err == nil && bytes.Equal(have, want) {
		return false, nil
	}
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(f.Name())
	if _, err := io.Copy(f, bytes.NewReader(want)); err != nil {
		f.Close()
		return false, err
	}
	if err := f.Chmod(0o755); err != nil {
		f.Close()
		return false, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return false, err
	}
	if err := f.Close(); err != nil {
		return false, err
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return false, fmt.Errorf("install %s: %w", dst, err)
	}
	return true, nil
}

// mkdirAll makes destDir+dir and its missing parents (mode 0755),
// recording each one it made, outermost first, and returns them.
func mkdirAll(destDir, dir string, record Record) ([]string, error) {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(destDir, d)); err == nil {
			break
		}
		missing = append(missing, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	var made []string
	for i := len(missing) - 1; i >= 0; i-- {
		p := filepath.Join(destDir, missing[i])
		if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return made, err
		}
		made = append(made, p)
		record('d', missing[i])
	}
	return made, nil
}
