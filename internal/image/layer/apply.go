// Package layer unpacks image layers into overlayfs lower directories, one
// directory per layer keyed by chain ID, and treats every tar as hostile:
// nothing is ever written outside the layer's directory.
package layer

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/image/content"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	// overlayOpaque is the xattr overlayfs reads to hide a lower
	// directory's contents.
	overlayOpaque = "trusted.overlay.opaque"
)

// Options say what a layer may create.
type Options struct {
	// AllowDeviceNodes creates block and character devices; otherwise they
	// are skipped (and counted). Whiteouts are always created.
	AllowDeviceNodes bool
}

// Stats describe what an Apply wrote.
type Stats struct {
	Bytes   int64 // apparent size of regular files
	Inodes  int64 // entries created
	Skipped int64 // entries refused without failing the layer (device nodes, foreign xattrs)
}

// ErrUnsafe marks a layer refused because an entry would reach outside its
// directory.
var ErrUnsafe = errdefs.Wrap(errdefs.ErrInvalidArgument, errors.New("unsafe layer entry"))

// Apply unpacks the uncompressed tar stream r into dir, which must exist
// and be empty, converting OCI whiteouts into overlayfs ones.
//
// Rules for hostile input: absolute entry and hardlink names are taken as
// relative to the layer (a layer is a root filesystem); a name with ".."
// that would climb out is refused; every path is resolved through os.Root,
// so a symlink (to anywhere) can be created but never written through to
// outside; a regular file replaces whatever was at its name instead of
// following it; device nodes are skipped unless allowed.
func Apply(ctx context.Context, r io.Reader, dir string, opt Options) (Stats, error) {
	var st Stats
	root, err := os.OpenRoot(dir)
	if err != nil {
		return st, fmt.Errorf("open layer dir: %w", err)
	}
	defer root.Close()

	type dirTimes struct {
		name  string
		mtime time.Time
	}
	var dirs []dirTimes
	tr := tar.NewReader(r)
	buf := make([]byte, 64<<10)
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, fmt.Errorf("read tar: %w", errdefs.Wrap(errdefs.ErrDataLoss, err))
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return st, err
		}
		base := path.Base(name)
		parent := path.Dir(name)

		// Whiteouts: OCI marks deletions with files; overlayfs wants a
		// 0/0 character device, or an xattr for an opaque directory.
		if strings.HasPrefix(base, whiteoutPrefix) {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			if base == opaqueMarker {
				if err := withDir(root, parent, func(fd int) error {
					return unix.Fsetxattr(fd, overlayOpaque, []byte("y"), 0)
				}); err != nil {
					return st, entryErr(hdr.Name, fmt.Errorf("mark opaque: %w", err))
				}
				continue
			}
			target := strings.TrimPrefix(base, whiteoutPrefix)
			if target == "" || target == "." || target == ".." {
				return st, entryErr(hdr.Name, fmt.Errorf("bad whiteout: %w", ErrUnsafe))
			}
			tname := path.Join(parent, target)
			if err := clear(root, tname); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			if err := withDir(root, parent, func(fd int) error {
				return unix.Mknodat(fd, target, unix.S_IFCHR, 0)
			}); err != nil {
				return st, entryErr(hdr.Name, fmt.Errorf("whiteout: %w", err))
			}
			st.Inodes++
			continue
		}

		if name != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return st, entryErr(hdr.Name, err)
			}
		}
		mode := hdr.FileInfo().Mode()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if fi, err := root.Lstat(name); err == nil && !fi.IsDir() {
				if err := root.Remove(name); err != nil {
					return st, entryErr(hdr.Name, err)
				}
			}
			if name != "." {
				if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
					return st, entryErr(hdr.Name, err)
				}
				st.Inodes++
			}
			dirs = append(dirs, dirTimes{name, hdr.ModTime})
		case tar.TypeReg, tar.TypeGNUSparse:
			if err := clear(root, name); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			// O_EXCL: never open through whatever might sit at the name.
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return st, entryErr(hdr.Name, content.Classify(err))
			}
			n, err := io.CopyBuffer(f, io.LimitReader(tr, hdr.Size), buf)
			if (err == nil && n != hdr.Size) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = errdefs.Wrap(errdefs.ErrDataLoss, io.ErrUnexpectedEOF)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				// Not a disk problem: then the stream was bad.
				if err = content.Classify(err); errdefs.Kind(err) == nil && ctx.Err() == nil {
					err = errdefs.Wrap(errdefs.ErrDataLoss, err)
				}
				return st, entryErr(hdr.Name, err)
			}
			st.Bytes += hdr.Size
			st.Inodes++
		case tar.TypeSymlink:
			if err := clear(root, name); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			// The target is stored, never resolved here: it means
			// something only inside the container's root.
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			st.Inodes++
		case tar.TypeLink:
			target, err := cleanName(hdr.Linkname)
			if err != nil {
				return st, err
			}
			if err := clear(root, name); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			if err := root.Link(target, name); err != nil {
				return st, entryErr(hdr.Name, fmt.Errorf("hardlink to %q: %w", hdr.Linkname, errdefs.Wrap(errdefs.ErrInvalidArgument, err)))
			}
			// A hardlink shares the inode: its metadata is its target's.
			continue
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			if hdr.Typeflag != tar.TypeFifo && !opt.AllowDeviceNodes {
				st.Skipped++
				continue
			}
			if err := clear(root, name); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
			dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
			if err := withDir(root, parent, func(fd int) error {
				return unix.Mknodat(fd, base, kind|0o600, int(dev))
			}); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			st.Inodes++
		case tar.TypeXGlobalHeader:
			continue
		default:
			st.Skipped++
			continue
		}

		if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return st, entryErr(hdr.Name, err)
		}
		if hdr.Typeflag == tar.TypeSymlink {
			if err := withDir(root, parent, func(fd int) error {
				ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
				return unix.UtimesNanoAt(fd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
			}); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			continue
		}
		// After chown, which clears setuid bits.
		if err := root.Chmod(name, mode&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
			return st, entryErr(hdr.Name, err)
		}
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeDir {
			n, err := setXattrs(root, name, hdr)
			if err != nil {
				return st, entryErr(hdr.Name, err)
			}
			st.Skipped += n
		}
		if hdr.Typeflag != tar.TypeDir {
			if err := root.Chtimes(name, hdr.ModTime, hdr.ModTime); err != nil {
				return st, entryErr(hdr.Name, err)
			}
		}
	}
	// Directory times last: creating children changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := root.Chtimes(dirs[i].name, dirs[i].mtime, dirs[i].mtime); err != nil {
			return st, entryErr(dirs[i].name, err)
		}
	}
	return st, nil
}

// cleanName turns a tar name into a path relative to the layer root.
// Leading slashes are dropped (layers are root filesystems); ".." that
// climbs above the root is refused rather than silently clamped, since
// only a crafted archive has it.
func cleanName(name string) (string, error) {
	n := strings.TrimLeft(name, "/")
	if n == "" {
		return ".", nil
	}
	depth := 0
	for _, part := range strings.Split(n, "/") {
		switch part {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return "", fmt.Errorf("entry %q: climbs out of the layer: %w", name, ErrUnsafe)
			}
		default:
			depth++
		}
	}
	return path.Clean(n), nil
}

// clear removes whatever is at name unless it is a directory, so the entry
// that follows replaces it rather than going through it.
func clear(root *os.Root, name string) error {
	if name == "." {
		return nil
	}
	fi, err := root.Lstat(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return root.RemoveAll(name)
	}
	return root.Remove(name)
}

// withDir runs fn with a descriptor of the directory dir inside root, for
// the calls os.Root has no method for (mknod, xattrs, symlink times).
func withDir(root *os.Root, dir string, fn func(fd int) error) error {
	f, err := root.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", dir)
	}
	return fn(int(f.Fd()))
}

// setXattrs applies the extended attributes a layer may carry: user.* and
// file capabilities. Others (trusted.overlay.* above all, which would let a
// layer forge overlay metadata) are skipped and counted.
func setXattrs(root *os.Root, name string, hdr *tar.Header) (skipped int64, err error) {
	const prefix = "SCHILY.xattr."
	for k, v := range hdr.PAXRecords {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		attr := strings.TrimPrefix(k, prefix)
		if !strings.HasPrefix(attr, "user.") && attr != "security.capability" {
			skipped++
			continue
		}
		f, err := root.Open(name)
		if err != nil {
			return skipped, err
		}
		err = unix.Fsetxattr(int(f.Fd()), attr, []byte(v), 0)
		f.Close()
		if err != nil {
			return skipped, fmt.Errorf("xattr %s: %w", attr, err)
		}
	}
	return skipped, nil
}

func entryErr(name string, err error) error {
	if errdefs.Kind(err) == nil {
		// os.Root reports an escape through a symlink as a path error.
		if strings.Contains(err.Error(), "escapes") {
			err = fmt.Errorf("%w: %w", ErrUnsafe, err)
		}
	}
	return fmt.Errorf("layer entry %q: %w", name, err)
}
