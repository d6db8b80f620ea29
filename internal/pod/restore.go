package pod

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/monitor"
	"github.com/tripod-dev/tripod/internal/netns"
	"github.com/tripod-dev/tripod/internal/oci"
)

const (
	// restoreDir, in a restored container's bundle, holds the CRIU
	// images until StartContainer has restored from them.
	restoreDir = "restore"
	// maxDumpFile bounds config.dump, spec.dump and deleted.files, read
	// into memory.
	maxDumpFile = 16 << 20
)

// criuCheck fails with FailedPrecondition, CRIU's own words and what was
// asked when CRIU cannot run on this node.
func criuCheck(ctx context.Context, what string) error {
	if _, err := exec.LookPath("criu"); err != nil {
		return fmt.Errorf("%s needs CRIU, which is not installed on this node (apt-get install criu): %w", what, errdefs.ErrFailedPrecondition)
	}
	out, err := exec.CommandContext(ctx, "criu", "check").CombinedOutput()
	if err != nil {
		why := strings.Join(strings.Fields(string(out)), " ")
		if why == "" {
			why = err.Error()
		}
		return fmt.Errorf("%s needs CRIU, which cannot run on this node: %s: %w", what, why, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// checkpointArchive is a checkpoint archive read and checked entry by
// entry, before anything is made from it.
type checkpointArchive struct {
	path    string
	config  checkpointConfig
	spec    specs.Spec
	deleted []string
}

// isArchiveRef reports whether a CreateContainer image names a checkpoint
// archive: an absolute path (no image reference is one) to a file, as
// kubelet passes it.
func isArchiveRef(ref string) bool {
	if !filepath.IsAbs(ref) {
		return false
	}
	fi, err := os.Stat(ref)
	return err == nil && fi.Mode().IsRegular()
}

func badArchive(p, format string, a ...any) error {
	return fmt.Errorf("config.image: checkpoint archive %s: %s: %w", p, fmt.Sprintf(format, a...), errdefs.ErrInvalidArgument)
}

// archiveName checks the name of an archive's (or rootfs-diff.tar's)
// entry: relative, without "..", nothing a tar could write outside the
// directory it is unpacked in.
func archiveName(name string) (string, bool) {
	clean := path.Clean(strings.TrimSuffix(name, "/"))
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") || !filepath.IsLocal(clean) {
		return "", false
	}
	for _, part := range strings.Split(strings.TrimSuffix(name, "/"), "/") {
		if part == ".." {
			return "", false
		}
	}
	return clean, true
}

// openCheckpoint reads and checks a whole checkpoint archive: every entry
// name (no path leaves the archive: in it or in rootfs-diff.tar), the
// types (CRIU's images are plain files), the metadata (config.dump and
// spec.dump must be there and parse; the CRIU images' inventory.img must
// be there). Any fault is InvalidArgument.
func openCheckpoint(p string) (*checkpointArchive, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("config.image: checkpoint archive: %w", err)
	}
	defer f.Close()
	a := &checkpointArchive{path: p}
	seen := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, badArchive(p, "not a readable tar: %v", err)
		}
		name, ok := archiveName(hdr.Name)
		if !ok {
			return nil, badArchive(p, "entry %q leaves the archive", hdr.Name)
		}
		if seen[name] {
			return nil, badArchive(p, "entry %q twice", name)
		}
		seen[name] = true
		switch hdr.Typeflag {
		case tar.TypeDir:
			continue
		case tar.TypeReg:
		default:
			return nil, badArchive(p, "entry %q is not a regular file or directory", hdr.Name)
		}
		switch name {
		case ckptConfig, ckptSpec, ckptDeleted:
			if hdr.Size > maxDumpFile {
				return nil, badArchive(p, "%s is %d bytes", name, hdr.Size)
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, badArchive(p, "%s: %v", name, err)
			}
			var v any = &a.config
			if name == ckptSpec {
				v = &a.spec
			} else if name == ckptDeleted {
				v = &a.deleted
			}
			if err := json.Unmarshal(b, v); err != nil {
				return nil, badArchive(p, "%s: %v", name, err)
			}
		case ckptRootfs:
			if err := checkDiff(tar.NewReader(tr)); err != nil {
				return nil, badArchive(p, "%s: %v", name, err)
			}
		}
	}
	for _, need := range []string{ckptConfig, ckptSpec, ckptImages + "/inventory.img"} {
		if !seen[need] {
			return nil, badArchive(p, "it has no %s", need)
		}
	}
	for _, d := range a.deleted {
		if _, ok := archiveName(strings.TrimPrefix(d, "/")); !ok || !strings.HasPrefix(d, "/") {
			return nil, badArchive(p, "%s: %q is not a path in the container", ckptDeleted, d)
		}
	}
	switch {
	case a.config.RootfsImageRef == "" && a.config.RootfsImageName == "":
		return nil, badArchive(p, "%s names no image (rootfsImageRef, rootfsImageName)", ckptConfig)
	case a.spec.Process == nil || len(a.spec.Process.Args) == 0:
		return nil, badArchive(p, "%s has no process", ckptSpec)
	case a.spec.Process.Terminal:
		return nil, fmt.Errorf("config.image: checkpoint archive %s: the container had a terminal; restoring one is not supported: %w", p, errdefs.ErrFailedPrecondition)
	}
	return a, nil
}

// checkDiff checks rootfs-diff.tar's entry names and types.
func checkDiff(tr *tar.Reader) error {
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if _, ok := archiveName(hdr.Name); !ok {
			return fmt.Errorf("entry %q leaves the container's root", hdr.Name)
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo:
		default:
			return fmt.Errorf("entry %q: type %q is not restored", hdr.Name, hdr.Typeflag)
		}
		if hdr.Typeflag == tar.TypeLink {
			if _, ok := archiveName(hdr.Linkname); !ok {
				return fmt.Errorf("hard link %q to %q leaves the container's root", hdr.Name, hdr.Linkname)
			}
		}
	}
}

// imageRef is the image to look the checkpointed container's up by: its
// ID when recorded, else its name.
func (a *checkpointArchive) imageRef() string {
	if a.config.RootfsImageRef != "" {
		return a.config.RootfsImageRef
	}
	return a.config.RootfsImageName
}

// apply makes cfg the restored container's: the process (command,
// environment, working directory, user) is the checkpointed one, as CRIU
// brings it back; what the request gives (name, labels, annotations,
// mounts, log path, resources, security) wins; without mounts in the
// request the checkpointed container's own bind mounts are kept (the
// files tripod makes for every container are made anew).
func (a *checkpointArchive) apply(cfg *ContainerConfig) {
	pr := a.spec.Process
	if cfg.UserImage == "" {
		cfg.UserImage = cfg.Image
	}
	cfg.Image = a.config.RootfsImageName
	if cfg.Image == "" {
		cfg.Image = a.config.RootfsImageRef
	}
	cfg.Command, cfg.Args = pr.Args, nil
	cfg.Env = pr.Env
	cfg.WorkingDir = pr.Cwd
	uid, gid := int64(pr.User.UID), int64(pr.User.GID)
	cfg.RunAsUser, cfg.RunAsGroup, cfg.RunAsName = &uid, &gid, ""
	cfg.TTY, cfg.Stdin, cfg.StdinOnce = false, false, false
	if len(cfg.Mounts) == 0 {
		for _, mnt := range a.spec.Mounts {
			if mnt.Type != "bind" || managedMount(mnt.Destination) {
				continue
			}
			m := oci.Mount{ContainerPath: mnt.Destination, HostPath: mnt.Source, Propagation: "private"}
			for _, o := range mnt.Options {
				switch o {
				case "ro":
					m.Readonly = true
				case "rslave", "rshared":
					m.Propagation = o
				}
			}
			cfg.Mounts = append(cfg.Mounts, m)
		}
	}
}

// managedMount reports whether a mount destination is one tripod makes
// for every container (and so makes anew for the restored one).
func managedMount(dst string) bool {
	switch dst {
	case "/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/dev/shm", "/dev/termination-log":
		return true
	}
	return false
}

// unpack writes the CRIU images into dir and the container's changes
// (rootfs-diff.tar, deleted.files) into its mounted root file system.
func (a *checkpointArchive) unpack(ctx context.Context, dir, rootfsDir string) error {
	f, err := os.Open(a.path)
	if err != nil {
		return fmt.Errorf("checkpoint archive: %w", err)
	}
	defer f.Close()
	root, err := os.OpenRoot(rootfsDir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("checkpoint archive: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		name, _ := archiveName(hdr.Name) // checked by openCheckpoint
		switch {
		case name == ckptRootfs:
			if err := applyDiff(ctx, root, tar.NewReader(tr)); err != nil {
				return badArchive(a.path, "%s: %v", ckptRootfs, err)
			}
		case name == ckptImages || strings.HasPrefix(name, ckptImages+"/"):
			dst := filepath.Join(dir, filepath.FromSlash(name))
			if hdr.Typeflag == tar.TypeDir {
				if err := os.MkdirAll(dst, 0o700); err != nil {
					return err
				}
				continue
			}
			if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
				return err
			}
			out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if err := errors.Join(err, out.Close()); err != nil {
				return fmt.Errorf("checkpoint archive: %s: %w", name, err)
			}
		}
	}
	for _, d := range a.deleted {
		rel := strings.TrimPrefix(path.Clean(d), "/")
		if err := root.RemoveAll(rel); err != nil {
			return badArchive(a.path, "%s: %s: %v", ckptDeleted, d, err)
		}
	}
	return nil
}

// applyDiff writes a rootfs-diff.tar into the container's root through
// root, which no entry or symbolic link can leave.
func applyDiff(ctx context.Context, root *os.Root, tr *tar.Reader) error {
	var dirs []*tar.Header // their modes and times once their contents are in
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		name, _ := archiveName(hdr.Name)
		if name == "." {
			continue
		}
		if dir := path.Dir(name); dir != "." {
			if err := root.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
		mode := fs.FileMode(hdr.Mode).Perm() | fs.FileMode(hdr.Mode)&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			dirs = append(dirs, hdr)
			continue
		case tar.TypeReg:
			if err := root.RemoveAll(name); err != nil {
				return err
			}
			out, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if err := errors.Join(err, out.Close()); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case tar.TypeSymlink:
			if err := root.RemoveAll(name); err != nil {
				return err
			}
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return err
			}
			if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
				return err
			}
			continue
		case tar.TypeLink:
			target, _ := archiveName(hdr.Linkname)
			if err := root.RemoveAll(name); err != nil {
				return err
			}
			if err := root.Link(target, name); err != nil {
				return err
			}
			continue
		case tar.TypeFifo:
			if err := root.RemoveAll(name); err != nil {
				return err
			}
			// os.Root has no mknod: the parent is opened through it and
			// the FIFO made beside that descriptor.
			if err := mkfifoIn(root, name); err != nil {
				return err
			}
		}
		if err := errors.Join(root.Lchown(name, hdr.Uid, hdr.Gid), root.Chmod(name, mode), root.Chtimes(name, hdr.AccessTime, hdr.ModTime)); err != nil {
			return err
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		hdr := dirs[i]
		name, _ := archiveName(hdr.Name)
		mode := fs.FileMode(hdr.Mode).Perm() | fs.FileMode(hdr.Mode)&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
		if err := errors.Join(root.Lchown(name, hdr.Uid, hdr.Gid), root.Chmod(name, mode), root.Chtimes(name, hdr.AccessTime, hdr.ModTime)); err != nil {
			return err
		}
	}
	return nil
}

func mkfifoIn(root *os.Root, name string) error {
	dir, err := root.Open(path.Dir(name))
	if err != nil {
		return err
	}
	defer dir.Close()
	if err := unix.Mkfifoat(int(dir.Fd()), path.Base(name), 0o600); err != nil {
		return fmt.Errorf("mkfifo %s: %w", name, err)
	}
	return nil
}

// restoreArgs are the OCI runtime's restore flags for a container whose
// CRIU images are in its bundle (the monitor adds --detach, --bundle and
// --pid-file). The stdio pipes the checkpointed init had, runc hands over
// itself: the new container's, which the monitor gives the restore.
func restoreArgs(bundle string) []string {
	return []string{"--image-path", filepath.Join(bundle, restoreDir, ckptImages), "--work-path", filepath.Join(bundle, restoreDir, "work"),
		"--tcp-established", "--ext-unix-sk", "--file-locks", "--manage-cgroups-mode", "ignore"}
}

// restoreFailure turns a failed restore's error into one carrying CRIU's
// reasons from its log.
func restoreFailure(bundle string, err error) error {
	if why := criuErrors(filepath.Join(bundle, restoreDir, "work", "restore.log")); why != "" {
		return fmt.Errorf("%w; CRIU: %s", err, why)
	}
	return err
}

// restore is StartContainer's for a container created from a checkpoint:
// tripod-monitor runs the runtime's restore in place of create and start,
// with the container's stdio, and adopts the restored init as it adopts
// a created one (logs, exit, re-adoption after its own death). The CRIU
// images go once restored; a failed restore leaves the container created,
// its images in place, and no runtime state.
func (m *Manager) restore(ctx context.Context, c *Container) error {
	b, err := os.ReadFile(filepath.Join(c.Bundle, "config.json"))
	if err != nil {
		return fmt.Errorf("restore %s: %w", c.ID, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil || spec.Linux == nil {
		return fmt.Errorf("restore %s: config.json: %v", c.ID, err)
	}
	if err := m.ensureMonitor(ctx); err != nil {
		return err
	}
	args := restoreArgs(c.Bundle)
	// A failed restore's work directory would fail the next one.
	os.RemoveAll(filepath.Join(c.Bundle, restoreDir, "work"))
	bin, rargs := m.runtimeArgs(c.Handler)
	rep, err := m.monitor().Call(ctx, monitor.Request{Op: "create", ID: c.ID, Bundle: c.Bundle, Runtime: bin, RuntimeArgs: rargs,
		LogPath: c.FullLog, OOMFile: m.oomFile(spec.Linux.CgroupsPath), Restore: args})
	if err != nil {
		m.logCRIUTail(c.ID, filepath.Join(c.Bundle, restoreDir, "work", "restore.log"))
		err = restoreFailure(c.Bundle, fmt.Errorf("restore container %s: %w", c.ID, err))
		m.runtime(ctx, c, "delete", "--force", c.ID) // whatever the failed restore left
		return err
	}
	m.mu.Lock()
	c.Pid = rep.Pid
	c.Restore = ""
	p := m.pods[c.PodID]
	m.mu.Unlock()
	// CRIU joins the pod's UTS namespace, as runc asks, but then sets the
	// host name it dumped there: the old pod's. The pod's own goes back.
	if p != nil {
		if path, ok := p.Namespaces[netns.UTS]; ok {
			if err := setHostname(path, p.hostname()); err != nil {
				m.log.Warn("resetting the pod's host name after a restore", "pod", p.ID, "container", c.ID, "err", err)
			}
		}
	}
	if err := os.RemoveAll(filepath.Join(c.Bundle, restoreDir)); err != nil {
		m.log.Warn("removing restored CRIU images", "container", c.ID, "err", err)
	}
	return nil
}
