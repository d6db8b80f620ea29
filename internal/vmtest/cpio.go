package vmtest

import (
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// entry is one member of an initramfs: a directory, a regular file or a
// symbolic link.
type entry struct {
	name string // without a leading slash
	mode fs.FileMode
	data []byte // file contents, or the target of a link
}

// writeCpio writes entries as a "newc" cpio archive, the format the kernel
// unpacks into its initial root file system. Parent directories are added
// where missing so that every path can be created in order.
func writeCpio(w io.Writer, entries []entry) error {
	dirs := map[string]bool{}
	var all []entry
	for _, e := range entries {
		e.name = strings.TrimPrefix(path.Clean("/"+e.name), "/")
		if e.mode.IsDir() {
			dirs[e.name] = true
		}
		all = append(all, e)
	}
	for _, e := range all {
		for d := path.Dir(e.name); d != "." && d != "/"; d = path.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				all = append(all, entry{name: d, mode: fs.ModeDir | 0o755})
			}
		}
	}
	// Parents sort before their children; later duplicates win, as in
	// the kernel's own unpacking.
	sort.SliceStable(all, func(i, j int) bool { return all[i].name < all[j].name })
	ino := 1
	for _, e := range all {
		if err := writeHeader(w, ino, e); err != nil {
			return err
		}
		ino++
	}
	return writeHeader(w, ino, entry{name: "TRAILER!!!"})
}

func writeHeader(w io.Writer, ino int, e entry) error {
	var mode uint32
	switch {
	case e.mode.IsDir():
		mode = 0o040000
	case e.mode&fs.ModeSymlink != 0:
		mode = 0o120000
	case e.name == "TRAILER!!!":
		mode = 0
	default:
		mode = 0o100000
	}
	mode |= uint32(e.mode.Perm())
	nlink := 1
	if e.mode.IsDir() {
		nlink = 2
	}
	name := e.name + "\x00"
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(e.data), 0, 0, 0, 0, len(name), 0)
	if _, err := io.WriteString(w, hdr+name+pad(len(hdr)+len(name))); err != nil {
		return err
	}
	if _, err := w.Write(e.data); err != nil {
		return err
	}
	_, err := io.WriteString(w, pad(len(e.data)))
	return err
}

// pad returns the NULs that align n bytes to the format's 4-byte boundary.
func pad(n int) string {
	return strings.Repeat("\x00", (4-n%4)%4)
}
