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
	pc := &parentCache{root: root}
	defer pc.drop()

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
		if name == "." {
			if hdr.Typeflag == tar.TypeDir {
				if err := root.Lchown(".", hdr.Uid, hdr.Gid); err != nil {
					return st, entryErr(hdr.Name, err)
				}
				if err := root.Chmod(".", hdr.FileInfo().Mode()&modeBits); err != nil {
					return st, entryErr(hdr.Name, err)
				}
				dirs = append(dirs, dirTimes{".", hdr.ModTime})
			}
			continue
		}
		base, parent := path.Base(name), path.Dir(name)
		// This entry may replace a directory the cache holds open.
		pc.invalidate(name)

		// Whiteouts: OCI marks deletions with files; overlayfs wants a
		// 0/0 character device, or an xattr for an opaque directory.
		if strings.HasPrefix(base, whiteoutPrefix) {
			pdir, pfd, err := pc.get(parent)
			if err != nil {
				return st, entryErr(hdr.Name, err)
			}
			if base == opaqueMarker {
				if err := unix.Fsetxattr(int(pfd.Fd()), overlayOpaque, []byte("y"), 0); err != nil {
					return st, entryErr(hdr.Name, fmt.Errorf("mark opaque: %w", err))
				}
				continue
			}
			target := strings.TrimPrefix(base, whiteoutPrefix)
			if target == "" || target == "." || target == ".." || strings.Contains(target, "/") {
				return st, entryErr(hdr.Name, fmt.Errorf("bad whiteout: %w", ErrUnsafe))
			}
			if err := clear(pdir, target); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			if err := unix.Mknodat(int(pfd.Fd()), target, unix.S_IFCHR, 0); err != nil {
				return st, entryErr(hdr.Name, fmt.Errorf("whiteout: %w", err))
			}
			st.Inodes++
			continue
		}

		pdir, pfd, err := pc.get(parent)
		if err != nil {
			return st, entryErr(hdr.Name, err)
		}
		mode := hdr.FileInfo().Mode() & modeBits
		switch hdr.Typeflag {
		case tar.TypeDir:
			if fi, err := pdir.Lstat(base); err == nil && !fi.IsDir() {
				if err := pdir.Remove(base); err != nil {
					return st, entryErr(hdr.Name, err)
				}
			}
			if err := pdir.Mkdir(base, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return st, entryErr(hdr.Name, err)
			}
			st.Inodes++
			if err := pdir.Lchown(base, hdr.Uid, hdr.Gid); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			if err := pdir.Chmod(base, mode); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			if n, err := setXattrs(pdir, base, hdr); err != nil {
				return st, entryErr(hdr.Name, err)
			} else {
				st.Skipped += n
			}
			dirs = append(dirs, dirTimes{name, hdr.ModTime})
		case tar.TypeReg, tar.TypeGNUSparse:
			if err := clear(pdir, base); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			// O_EXCL: never open through whatever might sit at the name.
			f, err := pdir.OpenFile(base, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return st, entryErr(hdr.Name, content.Classify(err))
			}
			err = writeFile(ctx, f, tr, hdr, buf)
			if cerr := f.Close(); err == nil {
				err = content.Classify(cerr)
			}
			if err != nil {
				return st, entryErr(hdr.Name, err)
			}
			st.Bytes += hdr.Size
			st.Inodes++
			st.Skipped += xattrSkips(hdr)
		case tar.TypeSymlink:
			if err := clear(pdir, base); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			// The target is stored, never resolved here: it means
			// something only inside the container's root.
			if err := pdir.Symlink(hdr.Linkname, base); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			st.Inodes++
			if err := pdir.Lchown(base, hdr.Uid, hdr.Gid); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
			if err := unix.UtimesNanoAt(int(pfd.Fd()), base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return st, entryErr(hdr.Name, err)
			}
		case tar.TypeLink:
			target, err := cleanName(hdr.Linkname)
			if err != nil {
				return st, err
			}
			if err := clear(pdir, base); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			// A hardlink shares its target's inode and metadata. The
			// target is resolved from the layer root, inside it.
			if err := root.Link(target, name); err != nil {
				return st, entryErr(hdr.Name, fmt.Errorf("hardlink to %q: %w", hdr.Linkname, errdefs.Wrap(errdefs.ErrInvalidArgument, err)))
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			if hdr.Typeflag != tar.TypeFifo && !opt.AllowDeviceNodes {
				st.Skipped++
				continue
			}
			if err := clear(pdir, base); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
			dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
			if err := unix.Mknodat(int(pfd.Fd()), base, kind|0o600, int(dev)); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			st.Inodes++
			if err := pdir.Lchown(base, hdr.Uid, hdr.Gid); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			if err := pdir.Chmod(base, mode); err != nil {
				return st, entryErr(hdr.Name, err)
			}
			if err := pdir.Chtimes(base, hdr.ModTime, hdr.ModTime); err != nil {
				return st, entryErr(hdr.Name, err)
			}
		default:
			// Global headers and unknown types carry nothing to create.
			if hdr.Typeflag != tar.TypeXGlobalHeader {
				st.Skipped++
			}
		}
	}
	pc.drop()
	// Directory times last: creating children changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := root.Chtimes(dirs[i].name, dirs[i].mtime, dirs[i].mtime); err != nil {
			return st, entryErr(dirs[i].name, err)
		}
	}
	return st, nil
}

const modeBits = os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky

// writeFile fills a new regular file and sets its metadata through its
// descriptor: no path is resolved twice.
func writeFile(ctx context.Context, f *os.File, tr io.Reader, hdr *tar.Header, buf []byte) error {
	n, err := io.CopyBuffer(f, io.LimitReader(tr, hdr.Size), buf)
	if err == nil && n != hdr.Size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		// Neither a disk nor a network problem (those carry their
		// kind): then the stream itself was bad.
		if err = content.Classify(err); errdefs.Kind(err) == nil && ctx.Err() == nil {
			err = errdefs.Wrap(errdefs.ErrDataLoss, err)
		}
		return err
	}
	if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	// After chown, which clears setuid bits.
	if err := f.Chmod(hdr.FileInfo().Mode() & modeBits); err != nil {
		return err
	}
	for attr, v := range allowedXattrs(hdr) {
		if err := unix.Fsetxattr(int(f.Fd()), attr, []byte(v), 0); err != nil {
			return fmt.Errorf("xattr %s: %w", attr, err)
		}
	}
	tv := unix.NsecToTimeval(hdr.ModTime.UnixNano())
	return unix.Futimes(int(f.Fd()), []unix.Timeval{tv, tv})
}

// parentCache holds the directory the last entry went into, so runs of
// entries in one directory resolve its path once instead of per call.
type parentCache struct {
	root *os.Root
	name string
	dir  *os.Root
	fd   *os.File
}

func (c *parentCache) get(parent string) (*os.Root, *os.File, error) {
	if c.dir != nil && c.name == parent {
		return c.dir, c.fd, nil
	}
	c.drop()
	if parent != "." {
		if err := c.root.MkdirAll(parent, 0o755); err != nil {
			return nil, nil, err
		}
	}
	d, err := c.root.OpenRoot(parent)
	if err != nil {
		return nil, nil, err
	}
	fd, err := d.Open(".")
	if err != nil {
		d.Close()
		return nil, nil, err
	}
	c.dir, c.fd, c.name = d, fd, parent
	return d, fd, nil
}

// invalidate forgets the cached directory if name is it or one of its
// ancestors: the entry about to be applied may replace it.
func (c *parentCache) invalidate(name string) {
	if c.dir != nil && (c.name == name || strings.HasPrefix(c.name, name+"/")) {
		c.drop()
	}
}

func (c *parentCache) drop() {
	if c.dir != nil {
		c.fd.Close()
		c.dir.Close()
		c.dir, c.fd, c.name = nil, nil, ""
	}
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

// clear removes whatever is at name in dir unless it is a directory, so
// the entry that follows replaces it rather than going through it.
func clear(dir *os.Root, name string) error {
	fi, err := dir.Lstat(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return dir.RemoveAll(name)
	}
	return dir.Remove(name)
}

// allowedXattrs are the extended attributes a layer may carry: user.* and
// file capabilities. Others (trusted.overlay.* above all, which would let
// a layer forge overlay metadata) are skipped.
func allowedXattrs(hdr *tar.Header) map[string]string {
	const prefix = "SCHILY.xattr."
	var out map[string]string
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, prefix)
		if ok && (strings.HasPrefix(attr, "user.") || attr == "security.capability") {
			if out == nil {
				out = map[string]string{}
			}
			out[attr] = v
		}
	}
	return out
}

func xattrSkips(hdr *tar.Header) int64 {
	n := 0
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			n++
		}
	}
	return int64(n - len(allowedXattrs(hdr)))
}

// setXattrs applies a directory's allowed xattrs and counts the skipped.
func setXattrs(dir *os.Root, name string, hdr *tar.Header) (skipped int64, err error) {
	attrs := allowedXattrs(hdr)
	if len(attrs) > 0 {
		f, err := dir.Open(name)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		for attr, v := range attrs {
			if err := unix.Fsetxattr(int(f.Fd()), attr, []byte(v), 0); err != nil {
				return 0, fmt.Errorf("xattr %s: %w", attr, err)
			}
		}
	}
	return xattrSkips(hdr), nil
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
