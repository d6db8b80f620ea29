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
// tripod adds one record per attachment under .tripod/ (see record). The
// reference plugin only ever matches file contents against
// "<id>\r\n<ifname>" or "<id>", which a JSON record never equals.
const (
	lineBreak    = "\r\n"
	lastIPPrefix = "last_reserved_ip."
	lockName     = "lock"
	metaDir      = ".tripod"
)

// attachment is who holds a reservation. legacy marks files written before
// the reference plugin recorded the interface: they hold the ID alone.
type attachment struct {
	id, ifname string
	legacy     bool
}

func (a attachment) content() string { return strings.TrimSpace(a.id) + lineBreak + a.ifname }

// record is what tripod knows about an attachment beyond the reference
// layout: its addresses (so DEL and duplicate ADD need no directory scan)
// and what tells whether its container still exists.
type record struct {
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifname"`
	IPs         []string `json:"ips"`
	// Netns and NetnsInode identify the container's namespace; BootID the
	// boot it was made in. Either changing means the container is gone.
	Netns      string `json:"netns,omitempty"`
	NetnsInode uint64 `json:"netnsInode,omitempty"`
	BootID     string `json:"bootID"`
	// Complete is false while ADD is reserving: a crash in between leaves
	// reservations the record does not list, so DEL then scans.
	Complete bool `json:"complete"`
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
	if err := os.MkdirAll(filepath.Join(dir, metaDir), 0o755); err != nil {
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

// reserve claims a for att with an exclusive create: false when another
// attachment holds it.
func (s *store) reserve(a netip.Addr, att attachment) (bool, error) {
	f, err := os.OpenFile(s.ipPath(a), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, ioErr(err, "reserving %s", a)
	}
	_, err = f.WriteString(att.content())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return false, ioErr(err, "writing reservation %s", f.Name())
	}
	return true, nil
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

func parseOwner(b []byte) attachment {
	s := strings.TrimSpace(string(b))
	if id, ifname, ok := strings.Cut(s, lineBreak); ok {
		return attachment{id: id, ifname: ifname}
	}
	return attachment{id: s, legacy: true}
}

// holds says whether att is who holds the reservation (a legacy one
// matches any interface of the container).
func (att attachment) holds(o attachment) bool {
	if o.legacy {
		return o.id == strings.TrimSpace(att.id)
	}
	return o.id == strings.TrimSpace(att.id) && o.ifname == att.ifname
}

// free removes a's reservation; a missing one is fine.
func (s *store) free(a netip.Addr) error {
	if err := os.Remove(s.ipPath(a)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return ioErr(err, "releasing %s", a)
	}
	return nil
}

// reserved lists every reserved address: a full directory read, for the
// slow paths only (reclaim, GC, DEL without a record, STATUS).
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
	if err := os.WriteFile(p, []byte(a.String()), 0o644); err != nil {
		return ioErr(err, "writing %s", p)
	}
	return nil
}

// recordPath names an attachment's record by a hash: container IDs and
// interface names are arbitrary strings.
func (s *store) recordPath(att attachment) string {
	h := sha256.Sum256([]byte(strings.TrimSpace(att.id) + "\x00" + att.ifname))
	return filepath.Join(s.dir, metaDir, hex.EncodeToString(h[:16])+".json")
}

// readRecord returns att's record, or nil when there is none (or only a
// torn one from a crash, which is as good as none).
func (s *store) readRecord(att attachment) *record {
	if att.legacy {
		return nil
	}
	return readRecordFile(s.recordPath(att))
}

func readRecordFile(p string) *record {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil
	}
	r := &record{}
	if json.Unmarshal(b, r) != nil {
		return nil
	}
	return r
}

func (s *store) writeRecord(r *record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return ioErr(err, "encoding record")
	}
	p := s.recordPath(attachment{id: r.ContainerID, ifname: r.IfName})
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return ioErr(err, "writing %s", p)
	}
	return nil
}

func (s *store) removeRecord(att attachment) error {
	if att.legacy {
		return nil
	}
	if err := os.Remove(s.recordPath(att)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return ioErr(err, "removing record of %s/%s", att.id, att.ifname)
	}
	return nil
}

// records lists the record files.
func (s *store) records() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, metaDir))
	if err != nil {
		return nil, ioErr(err, "listing %s", metaDir)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			out = append(out, filepath.Join(s.dir, metaDir, e.Name()))
		}
	}
	return out, nil
}

// bootID is this boot's ID; a record from another boot is of a container
// that cannot exist any more.
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

// gone says whether r's container certainly no longer exists: it was made
// in another boot, or its namespace path no longer holds its namespace.
func (s *store) gone(r *record) bool {
	if r.BootID != "" && s.bootID() != "" && r.BootID != s.bootID() {
		return true
	}
	if r.Netns == "" || r.NetnsInode == 0 {
		return false
	}
	var fs unix.Statfs_t
	err := unix.Statfs(r.Netns, &fs)
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
	if unix.Stat(r.Netns, &st) != nil {
		return false
	}
	return st.Ino != r.NetnsInode
}
