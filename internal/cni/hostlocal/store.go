package hostlocal

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
)

// On disk, a network's directory <dataDir>/<network> keeps the reference
// plugin's layout, so nodes move between the two freely:
//
//	<ip>                  "<containerID>\r\n<ifname>": the reservation
//	last_reserved_ip.<i>  the address range set i handed out last
//	lock                  flock'd by every writer
//
// tripod adds, without a file of its own per reservation (creating inodes
// is the dear part of an ADD):
//
//   - an extended attribute on each reservation (meta): what tells whether
//     its container is gone, and every address of its attachment;
//   - .tripod/<hash of containerID, ifname>: a hard link to one of the
//     attachment's reservations, so that DEL and duplicate ADD find it
//     without reading the directory. Its content is the reservation's, so
//     the reference plugin's release-by-content removes it as well.
const (
	lineBreak    = "\r\n"
	lastIPPrefix = "last_reserved_ip."
	lockName     = "lock"
	indexDir     = ".tripod"
	metaXattr    = "user.tripod.cni"
)

// attachment is who holds a reservation. legacy marks files written before
// the reference plugin recorded the interface: they hold the ID alone.
type attachment struct {
	id, ifname string
	legacy     bool
}

func (a attachment) content() string { return strings.TrimSpace(a.id) + lineBreak + a.ifname }

// holds says whether o, the holder of a reservation, is a (a legacy
// reservation matches any interface of the container).
func (a attachment) holds(o attachment) bool {
	if o.legacy {
		return o.id == strings.TrimSpace(a.id)
	}
	return o.id == strings.TrimSpace(a.id) && o.ifname == a.ifname
}

func parseOwner(b []byte) attachment {
	s := strings.TrimSpace(string(b))
	if id, ifname, ok := strings.Cut(s, lineBreak); ok {
		return attachment{id: id, ifname: ifname}
	}
	return attachment{id: s, legacy: true}
}

// meta is tripod's knowledge about a reservation beyond its holder.
type meta struct {
	// Netns and NetnsInode identify the container's namespace; BootID the
	// boot it was made in. Either changing means the container is gone.
	Netns      string `json:"netns,omitempty"`
	NetnsInode uint64 `json:"netnsInode,omitempty"`
	BootID     string `json:"bootID,omitempty"`
	// IPs are the attachment's addresses.
	IPs []string `json:"ips,omitempty"`
}

func (m *meta) addrs() []netip.Addr {
	var out []netip.Addr
	for _, t := range m.IPs {
		if a, err := netip.ParseAddr(t); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// store is one network's directory, locked for the life of the value.
type store struct {
	dir  string
	lock *os.File
	boot string
}

func ioErr(err error, format string, args ...any) error {
	return cnierr.Wrap(cnierr.IOFailure, err, "host-local: "+format, args...)
}

// openStore creates the network's directory if needed and takes its lock.
func openStore(ctx context.Context, dataDir, network string) (*store, error) {
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(filepath.Join(dir, indexDir), 0o755); err != nil {
		return nil, ioErr(err, "creating data dir %s", dir)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, ioErr(err, "opening lock file")
	}
	if err := lockFile(ctx, f); err != nil {
		return nil, err
	}
	return &store{dir: dir, lock: f}, nil
}

// lockFile takes f's flock, giving up when ctx ends. An abandoned waiter
// closes the file once it gets the lock, which releases it again.
func lockFile(ctx context.Context, f *os.File) error {
	fd := int(f.Fd())
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err == nil {
		return nil
	} else if !errors.Is(err, unix.EWOULDBLOCK) {
		f.Close()
		return ioErr(err, "locking %s", f.Name())
	}
	done := make(chan error, 1)
	go func() { done <- unix.Flock(fd, unix.LOCK_EX) }()
	select {
	case err := <-done:
		if err != nil {
			f.Close()
			return ioErr(err, "locking %s", f.Name())
		}
		return nil
	case <-ctx.Done():
		go func() {
			<-done
			f.Close()
		}()
		return cnierr.New(cnierr.TryAgainLater, "host-local: interrupted waiting for lock %s: %v", f.Name(), ctx.Err())
	}
}

// close releases the lock.
func (s *store) close() { s.lock.Close() }

func (s *store) ipPath(a netip.Addr) string { return filepath.Join(s.dir, a.String()) }

// noXattrs says the filesystem keeps no user extended attributes: tripod
// then knows no more than the reference plugin, and reclaims nothing.
func noXattrs(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)
}

// reserve claims a for att with an exclusive create, labelled with m:
// false when another attachment holds it.
func (s *store) reserve(a netip.Addr, att attachment, m *meta) (bool, error) {
	f, err := os.OpenFile(s.ipPath(a), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, ioErr(err, "reserving %s", a)
	}
	_, err = f.WriteString(att.content())
	if err == nil {
		err = setMeta(int(f.Fd()), "", m)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return false, ioErr(err, "writing reservation %s", f.Name())
	}
	return true, nil
}

// setMeta labels a reservation, by descriptor or else by path.
func setMeta(fd int, path string, m *meta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if path == "" {
		err = unix.Fsetxattr(fd, metaXattr, b, 0)
	} else {
		err = unix.Setxattr(path, metaXattr, b, 0)
	}
	if err != nil && !noXattrs(err) {
		return err
	}
	return nil
}

// readMeta returns the label of the file at path, nil when it has none
// (the reference plugin's reservations, or a filesystem without xattrs).
func readMeta(path string) *meta {
	buf := make([]byte, 1024)
	for {
		n, err := unix.Getxattr(path, metaXattr, buf)
		if errors.Is(err, unix.ERANGE) && len(buf) < 1<<16 {
			buf = make([]byte, 4*len(buf))
			continue
		}
		if err != nil {
			return nil
		}
		m := &meta{}
		if json.Unmarshal(buf[:n], m) != nil {
			return nil
		}
		return m
	}
}

// owner returns who holds a; ok is false when nobody does.
func (s *store) owner(a netip.Addr) (att attachment, ok bool, err error) {
	b, err := os.ReadFile(s.ipPath(a))
	if errors.Is(err, os.ErrNotExist) {
		return att, false, nil
	}
	if err != nil {
		return att, false, ioErr(err, "reading reservation %s", a)
	}
	return parseOwner(b), true, nil
}

// free removes a's reservation; a missing one is fine.
func (s *store) free(a netip.Addr) error {
	if err := os.Remove(s.ipPath(a)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return ioErr(err, "releasing %s", a)
	}
	return nil
}

// reserved lists every reserved address: a full directory read, for the
// slow paths only (reclaim, GC, DEL without an index, STATUS).
func (s *store) reserved() ([]netip.Addr, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, ioErr(err, "listing %s", s.dir)
	}
	var out []netip.Addr
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		if a, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, a)
		}
	}
	return out, nil
}

func (s *store) lastReserved(set int) netip.Addr {
	b, err := os.ReadFile(filepath.Join(s.dir, lastIPPrefix+strconv.Itoa(set)))
	if err != nil {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(b)))
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

func (s *store) setLastReserved(set int, a netip.Addr) error {
	p := filepath.Join(s.dir, lastIPPrefix+strconv.Itoa(set))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return ioErr(err, "writing %s", p)
	}
	// Overwrite, then cut: truncating to zero first would free and
	// reallocate the file's block on every ADD.
	b := []byte(a.String())
	_, err = f.WriteAt(b, 0)
	if err == nil {
		err = f.Truncate(int64(len(b)))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return ioErr(err, "writing %s", p)
	}
	return nil
}

// indexPath names an attachment's index link by a hash: container IDs and
// interface names are arbitrary strings.
func (s *store) indexPath(att attachment) string {
	h := sha256.Sum256([]byte(strings.TrimSpace(att.id) + "\x00" + att.ifname))
	return filepath.Join(s.dir, indexDir, hex.EncodeToString(h[:16]))
}

// index links att's index to its reservation a, replacing a stale one.
func (s *store) index(att attachment, a netip.Addr) error {
	p := s.indexPath(att)
	err := os.Link(s.ipPath(a), p)
	if errors.Is(err, os.ErrExist) {
		if err = os.Remove(p); err == nil {
			err = os.Link(s.ipPath(a), p)
		}
	}
	if err != nil {
		return ioErr(err, "indexing %s", a)
	}
	return nil
}

func (s *store) unindex(att attachment) error {
	if att.legacy {
		return nil
	}
	if err := os.Remove(s.indexPath(att)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return ioErr(err, "removing index of %s/%s", att.id, att.ifname)
	}
	return nil
}

// indexed returns the addresses att's index lists. found says an index
// exists; known that it could be read (it is att's and labelled).
func (s *store) indexed(att attachment) (addrs []netip.Addr, found, known bool) {
	if att.legacy {
		return nil, false, false
	}
	p := s.indexPath(att)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, false, false
	}
	if o := parseOwner(b); o.legacy || o.id != strings.TrimSpace(att.id) || o.ifname != att.ifname {
		return nil, true, false
	}
	m := readMeta(p)
	if m == nil {
		return nil, true, false
	}
	return m.addrs(), true, true
}

// indexes lists the index links.
func (s *store) indexes() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, indexDir))
	if err != nil {
		return nil, ioErr(err, "listing %s", indexDir)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			out = append(out, filepath.Join(s.dir, indexDir, e.Name()))
		}
	}
	return out, nil
}

// bootID is this boot's ID; a reservation from another boot is of a
// container that cannot exist any more.
func (s *store) bootID() string {
	if s.boot == "" {
		b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
		s.boot = strings.TrimSpace(string(b))
	}
	return s.boot
}

// nsInode returns the inode of the network namespace at path, or 0 when
// path is not one (then only the boot ID tells liveness).
func nsInode(path string) uint64 {
	if path == "" {
		return 0
	}
	var fs unix.Statfs_t
	if unix.Statfs(path, &fs) != nil || fs.Type != unix.NSFS_MAGIC {
		return 0
	}
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0
	}
	return st.Ino
}

// gone says whether m's container certainly no longer exists: it was made
// in another boot, or its namespace path no longer holds its namespace.
func (s *store) gone(m *meta) bool {
	if m == nil {
		return false
	}
	if m.BootID != "" && s.bootID() != "" && m.BootID != s.bootID() {
		return true
	}
	if m.Netns == "" || m.NetnsInode == 0 {
		return false
	}
	var fs unix.Statfs_t
	err := unix.Statfs(m.Netns, &fs)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return true
	}
	if err != nil {
		return false // cannot tell: keep it
	}
	if fs.Type != unix.NSFS_MAGIC {
		return true // the mount is gone, the file left behind
	}
	var st unix.Stat_t
	if unix.Stat(m.Netns, &st) != nil {
		return false
	}
	return st.Ino != m.NetnsInode
}
