package oci

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// resolveUser works out uid, gid and supplementary groups from the image's
// user string or the CRI's overrides, looking names up in the rootfs.
// Supplementary groups are the primary group, the CRI's groups and (unless
// strict) the groups of the image's /etc/group that list the user by name.
func resolveUser(rootfs, imageUser string, uid *int64, username string, gid *int64, extra []int64, strict bool) (specs.User, error) {
	spec := imageUser
	switch {
	case uid != nil:
		spec = strconv.FormatInt(*uid, 10)
	case username != "":
		spec = username
	}
	name, group, _ := strings.Cut(spec, ":")
	u := specs.User{}
	userName := ""
	if name != "" {
		if n, err := strconv.ParseUint(name, 10, 32); err == nil {
			u.UID = uint32(n)
			if e, ok := lookup(rootfs, "etc/passwd", "", u.UID); ok {
				u.GID, userName = e.gid, e.name
			}
		} else {
			e, ok := lookup(rootfs, "etc/passwd", name, 0)
			if !ok {
				return u, fmt.Errorf("user %q: not found in the image's /etc/passwd", name)
			}
			u.UID, u.GID, userName = e.uid, e.gid, e.name
		}
	} else if e, ok := lookup(rootfs, "etc/passwd", "", 0); ok {
		userName = e.name
	}
	if group != "" {
		if n, err := strconv.ParseUint(group, 10, 32); err == nil {
			u.GID = uint32(n)
		} else {
			e, ok := lookup(rootfs, "etc/group", group, 0)
			if !ok {
				return u, fmt.Errorf("group %q: not found in the image's /etc/group", group)
			}
			u.GID = e.uid
		}
	}
	if gid != nil {
		u.GID = uint32(*gid)
	}
	groups := []uint32{u.GID}
	if !strict && userName != "" {
		groups = append(groups, memberOf(rootfs, userName)...)
	}
	for _, g := range extra {
		if g < 0 || g > 1<<32-1 {
			return u, fmt.Errorf("supplemental group %d is out of range", g)
		}
		groups = append(groups, uint32(g))
	}
	seen := map[uint32]bool{}
	u.AdditionalGids = slices.DeleteFunc(groups, func(g uint32) bool {
		dup := seen[g]
		seen[g] = true
		return dup
	})
	return u, nil
}

type entry struct {
	name     string
	uid, gid uint32
	members  []string
}

// lookup finds a passwd or group entry by name, or by id when name is "".
func lookup(rootfs, file, name string, id uint32) (entry, bool) {
	var found entry
	ok := false
	scanDB(rootfs, file, func(e entry) bool {
		if (name != "" && e.name == name) || (name == "" && e.uid == id) {
			found, ok = e, true
			return false
		}
		return true
	})
	return found, ok
}

// memberOf lists the groups of the image's /etc/group naming user as a member.
func memberOf(rootfs, user string) []uint32 {
	var out []uint32
	scanDB(rootfs, "etc/group", func(e entry) bool {
		if slices.Contains(e.members, user) {
			out = append(out, e.uid)
		}
		return true
	})
	return out
}

// scanDB calls f for each entry of a passwd-format file of the rootfs until
// f returns false. The file is opened inside the rootfs: an image's
// symlink cannot make tripodd read a host file.
func scanDB(rootfs, file string, f func(entry) bool) {
	fh, err := openInRoot(rootfs, file)
	if err != nil {
		return
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 3 {
			continue
		}
		n, err := strconv.ParseUint(fields[2], 10, 32)
		if err != nil {
			continue
		}
		e := entry{name: fields[0], uid: uint32(n)}
		if len(fields) > 3 {
			if g, err := strconv.ParseUint(fields[3], 10, 32); err == nil {
				e.gid = uint32(g)
			}
			if fields[3] != "" {
				e.members = strings.Split(fields[3], ",")
			}
		}
		if !f(e) {
			return
		}
	}
}

// openInRoot opens rel resolving every path component, symlinks included,
// as if rootfs were /.
func openInRoot(rootfs, rel string) (*os.File, error) {
	dir, err := os.Open(rootfs)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	fd, err := unix.Openat2(int(dir.Fd()), rel, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT})
	if errors.Is(err, unix.ENOSYS) {
		return nil, fmt.Errorf("open %s in the rootfs: openat2 is not available (Linux 5.6 or later is needed)", rel)
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), rel), nil
}
