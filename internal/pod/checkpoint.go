package pod

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tripod-dev/tripod/internal/errdefs"
)

// Names inside a checkpoint archive. They follow the layout CRI-O and
// containerd write (and checkpointctl reads): CRIU's images under
// checkpoint/, the OCI spec, a description of the container, and the
// container's changes to its image as a tar plus a list of deletions.
const (
	ckptImages  = "checkpoint"
	ckptSpec    = "spec.dump"
	ckptConfig  = "config.dump"
	ckptRootfs  = "rootfs-diff.tar"
	ckptDeleted = "deleted.files"
)

// checkpointConfig is config.dump.
type checkpointConfig struct {
	ID               string    `json:"id"`
	Name             string    `json:"name"`
	RootfsImage      string    `json:"rootfsImage"`
	RootfsImageRef   string    `json:"rootfsImageRef"`
	RootfsImageName  string    `json:"rootfsImageName"`
	OCIRuntime       string    `json:"runtime"`
	CreatedTime      time.Time `json:"createdTime"`
	CheckpointedTime time.Time `json:"checkpointedTime"`
}

// defaultCheckpointTimeout bounds a checkpoint when the caller gives none.
const defaultCheckpointTimeout = 4 * time.Minute

// Checkpoint dumps a running container with CRIU (through the OCI
// runtime's checkpoint, leaving it running) and writes the archive to
// location, an absolute path of a file to create. Nothing is left at
// location when it fails. When CRIU cannot dump on this node the error is
// FailedPrecondition and carries CRIU's own reason.
func (m *Manager) Checkpoint(ctx context.Context, id, location string, timeout time.Duration) error {
	c, err := m.findContainer(id)
	if err != nil {
		return err
	}
	if location == "" || !filepath.IsAbs(location) {
		return fmt.Errorf("location: %q is not an absolute path for the archive: %w", location, errdefs.ErrInvalidArgument)
	}
	st := m.currentState(c)
	if st != Running {
		return fmt.Errorf("container %s is %s, not running: %w", c.ID, st, errdefs.ErrFailedPrecondition)
	}
	if _, err := exec.LookPath("criu"); err != nil {
		return fmt.Errorf("checkpoint needs CRIU, which is not installed on this node (apt-get install criu): %w", errdefs.ErrFailedPrecondition)
	}
	if timeout <= 0 {
		timeout = defaultCheckpointTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dir, err := os.MkdirTemp(c.Bundle, "checkpoint-")
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	defer os.RemoveAll(dir)
	images, work := filepath.Join(dir, ckptImages), filepath.Join(dir, "work")
	// --manage-cgroups-mode ignore: the container keeps its cgroup and a
	// restore gets the new container's. --tcp-established and
	// --ext-unix-sk let containers with open connections be dumped.
	err = m.runtime(ctx, c, "checkpoint", "--leave-running", "--image-path", images, "--work-path", work,
		"--tcp-established", "--ext-unix-sk", "--file-locks", "--manage-cgroups-mode", "ignore", c.ID)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("checkpoint %s: %w", c.ID, ctx.Err())
		}
		m.logCRIUTail(c.ID, filepath.Join(work, "dump.log"))
		if why := criuErrors(filepath.Join(work, "dump.log")); why != "" {
			return fmt.Errorf("checkpoint %s: CRIU cannot dump on this node: %s: %w", c.ID, why, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("checkpoint %s: %w", c.ID, err)
	}
	spec, err := os.ReadFile(filepath.Join(c.Bundle, "config.json"))
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", c.ID, err)
	}
	cfg, err := json.Marshal(checkpointConfig{ID: c.ID, Name: c.Meta.Name, RootfsImage: c.Image, RootfsImageRef: c.ImageID,
		RootfsImageName: c.Image, OCIRuntime: c.Handler, CreatedTime: time.Unix(0, c.CreatedAt), CheckpointedTime: time.Now()})
	if err != nil {
		return err
	}
	return writeCheckpointArchive(ctx, location, images, filepath.Join(c.RWDir, "upper"), map[string][]byte{ckptSpec: spec, ckptConfig: cfg})
}

// logCRIUTail puts the end of a failed CRIU run's log into tripodd's log:
// the log goes with the failed operation's work directory, and CRIU's
// error lines alone seldom tell why.
func (m *Manager) logCRIUTail(id, log string) {
	b, err := os.ReadFile(log)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	m.log.Warn("CRIU failed", "container", id, "log", log, "tail", strings.Join(lines, "\n"))
}

// criuErrors picks CRIU's error lines out of its log, or "".
func criuErrors(log string) string {
	f, err := os.Open(log)
	if err != nil {
		return ""
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "Error ("); i >= 0 {
			out = append(out, strings.TrimSpace(line[i:]))
		}
	}
	return strings.Join(out, "; ")
}

// writeCheckpointArchive writes a checkpoint archive to location through a
// temporary file renamed into place, so a reader never sees half of one:
// the CRIU images directory, the metadata files, and the container's
// writable layer (upper) as rootfs-diff.tar, its overlay whiteouts as
// deleted.files.
func writeCheckpointArchive(ctx context.Context, location, images, upper string, meta map[string][]byte) (err error) {
	if err := os.MkdirAll(filepath.Dir(location), 0o700); err != nil {
		return fmt.Errorf("checkpoint archive: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(location), ".checkpoint-*.tar")
	if err != nil {
		return fmt.Errorf("checkpoint archive: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	var diff bytes.Buffer
	dw := tar.NewWriter(&diff)
	deleted, err := tarDir(ctx, dw, upper, "", true)
	if err == nil {
		err = dw.Close()
	}
	if err != nil {
		return fmt.Errorf("checkpoint archive: container changes: %w", err)
	}
	del, err := json.Marshal(deleted)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	files := map[string][]byte{ckptRootfs: diff.Bytes(), ckptDeleted: del}
	for k, v := range meta {
		files[k] = v
	}
	now := time.Now()
	for _, name := range []string{ckptConfig, ckptSpec, ckptRootfs, ckptDeleted} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(files[name])), ModTime: now, Typeflag: tar.TypeReg}); err != nil {
			return fmt.Errorf("checkpoint archive: %w", err)
		}
		if _, err := tw.Write(files[name]); err != nil {
			return fmt.Errorf("checkpoint archive: %w", err)
		}
	}
	if _, err := tarDir(ctx, tw, images, ckptImages, false); err != nil {
		return fmt.Errorf("checkpoint archive: CRIU images: %w", err)
	}
	if err := errors.Join(tw.Close(), f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("checkpoint archive: %w", err)
	}
	if err := os.Rename(f.Name(), location); err != nil {
		return fmt.Errorf("checkpoint archive: %w", err)
	}
	return nil
}

// tarDir writes dir's tree into tw under prefix. With whiteouts, overlay
// whiteouts (0/0 character devices) are not written but returned as the
// deleted paths.
func tarDir(ctx context.Context, tw *tar.Writer, dir, prefix string, whiteouts bool) (deleted []string, err error) {
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		if rel == "." {
			if prefix == "" {
				return nil
			}
			rel = ""
		}
		name := filepath.ToSlash(filepath.Join(prefix, rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		if whiteouts && info.Mode()&fs.ModeCharDevice != 0 {
			if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Rdev == 0 {
				deleted = append(deleted, "/"+filepath.ToSlash(rel))
				return nil
			}
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return nil // sockets and the like: nothing to restore
		}
		hdr.Name = name
		if info.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			src, err := os.Open(path)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, src)
			src.Close()
			return err
		}
		return nil
	})
	return deleted, err
}
