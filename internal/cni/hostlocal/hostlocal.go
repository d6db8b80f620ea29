// Package hostlocal is the host-local IPAM plugin: it hands out addresses
// from configured ranges, recording reservations as files under a data
// directory in the reference plugin's layout. Unlike the reference, it
// knows when a reservation's container is gone (another boot, or its
// network namespace vanished) and reclaims it.
package hostlocal

import (
	"context"
	"errors"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
)

// Plugin returns the host-local plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "host-local", Funcs: plugin.Funcs{Add: add, Del: del, Check: check, GC: gc, Status: status}}
}

func add(ctx context.Context, args *skel.CmdArgs) (types.Result, error) {
	c, err := load(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: c.routes}
	if c.resolvConf != "" {
		if res.DNS, err = parseResolvConf(c.resolvConf); err != nil {
			return nil, err
		}
	}
	st, err := openStore(ctx, c.dataDir, c.name)
	if err != nil {
		return nil, err
	}
	defer st.close()

	att := attachment{id: args.ContainerID, ifname: args.IfName}
	held, indexed, err := st.held(att, false)
	if err != nil {
		return nil, err
	}
	if len(held) > 0 {
		return nil, cnierr.New(cnierr.AlreadyAttached, "host-local: container %s interface %s already holds %s on network %s; DEL it first",
			args.ContainerID, args.IfName, joinAddrs(held), c.name)
	}
	if indexed {
		if err := st.unindex(att); err != nil {
			return nil, err
		}
	}

	m := &meta{Netns: args.Netns, NetnsInode: nsInode(args.Netns), BootID: st.bootID()}
	if m.NetnsInode == 0 {
		m.Netns = ""
	}
	var got []netip.Addr
	undo := func(err error) (types.Result, error) {
		for _, a := range got {
			_ = st.free(a)
		}
		_ = st.unindex(att)
		return nil, err
	}
	for i, set := range c.sets {
		a, err := st.allocate(i, set, c.requested[i], att, m, c.name)
		if err != nil {
			return undo(err)
		}
		got = append(got, a)
		m.IPs = append(m.IPs, a.String())
	}
	// Each reservation was labelled with the addresses taken so far; the
	// earlier ones learn the rest, so any of them tells the whole
	// attachment.
	for _, a := range got[:len(got)-1] {
		if err := setMeta(-1, st.ipPath(a), m); err != nil {
			return undo(ioErr(err, "labelling %s", a))
		}
	}
	if err := st.index(att, got[len(got)-1]); err != nil {
		return undo(err)
	}
	for i, a := range got {
		r := c.sets[i][c.sets[i].find(a)]
		res.IPs = append(res.IPs, &current.IPConfig{
			Address: net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(r.subnet.Bits(), a.BitLen())},
			Gateway: r.gateway.AsSlice(),
		})
	}
	return res, nil
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// allocate reserves one address of set i for att: the requested one, or
// the first free one after the last handed out (so the cost of an ADD does
// not grow with the number of reservations). When the set is full it
// reclaims reservations of containers that are gone and tries once more.
func (s *store) allocate(i int, set rangeSet, want netip.Addr, att attachment, m *meta, network string) (netip.Addr, error) {
	if want.IsValid() {
		return s.allocateRequested(i, set, want, att, m, network)
	}
	for pass := 0; pass < 2; pass++ {
		first := set.next(s.lastReserved(i))
		a := first
		for {
			if set.usable(a) {
				ok, err := s.reserve(a, att, label(m, a))
				if err != nil {
					return a, err
				}
				if ok {
					return a, s.setLastReserved(i, a)
				}
			}
			if a = set.next(a); a == first {
				break
			}
		}
		if pass == 0 {
			n, err := s.reclaim(set)
			if err != nil {
				return netip.Addr{}, err
			}
			if n == 0 {
				break
			}
		}
	}
	return netip.Addr{}, cnierr.New(cnierr.RangeExhausted, "host-local: no free address in range set %d (%s) of network %s: every address is reserved by a live container", i, set, network)
}

// label is m for the reservation of a: the addresses so far plus a.
func label(m *meta, a netip.Addr) *meta {
	l := *m
	l.IPs = append(append([]string(nil), m.IPs...), a.String())
	return &l
}

func (s *store) allocateRequested(i int, set rangeSet, want netip.Addr, att attachment, m *meta, network string) (netip.Addr, error) {
	ok, err := s.reserve(want, att, label(m, want))
	if err != nil {
		return want, err
	}
	if !ok {
		o, held, err := s.owner(want)
		if err != nil {
			return want, err
		}
		if held {
			old := readMeta(s.ipPath(want))
			if !s.gone(old) {
				return want, cnierr.New(cnierr.InvalidConfig, "host-local: requested address %s is already reserved by container %s interface %s on network %s", want, o.id, o.ifname, network)
			}
			if err := s.drop(o, append(old.addrs(), want)); err != nil {
				return want, err
			}
		}
		if ok, err = s.reserve(want, att, label(m, want)); err != nil {
			return want, err
		} else if !ok {
			return want, cnierr.New(cnierr.InvalidConfig, "host-local: requested address %s is already reserved on network %s", want, network)
		}
	}
	return want, s.setLastReserved(i, want)
}

// held returns the addresses att holds, found through its index and each
// checked against its reservation file. Without an index (reservations
// of the reference plugin) it scans when scanMissing is set. indexed says
// an index exists.
func (s *store) held(att attachment, scanMissing bool) (addrs []netip.Addr, indexed bool, err error) {
	listed, found, known := s.indexed(att)
	if !found && !scanMissing {
		return nil, false, nil
	}
	if !known {
		addrs, err := s.scan(att)
		return addrs, found, err
	}
	for _, a := range listed {
		o, ok, err := s.owner(a)
		if err != nil {
			return nil, true, err
		}
		if ok && !o.legacy && att.holds(o) {
			addrs = append(addrs, a)
		}
	}
	return addrs, true, nil
}

// scan finds att's reservations by reading them all. As the reference
// plugin does, files holding only the container ID count when none names
// the interface.
func (s *store) scan(att attachment) ([]netip.Addr, error) {
	all, err := s.reserved()
	if err != nil {
		return nil, err
	}
	var exact, legacy []netip.Addr
	for _, a := range all {
		o, ok, err := s.owner(a)
		if err != nil {
			return nil, err
		}
		switch {
		case !ok || !att.holds(o):
		case o.legacy:
			legacy = append(legacy, a)
		default:
			exact = append(exact, a)
		}
	}
	if len(exact) > 0 {
		return exact, nil
	}
	return legacy, nil
}

// drop frees those of addrs that o holds, and o's index.
func (s *store) drop(o attachment, addrs []netip.Addr) error {
	for _, a := range addrs {
		if cur, ok, err := s.owner(a); err != nil {
			return err
		} else if ok && o.holds(cur) {
			if err := s.free(a); err != nil {
				return err
			}
		}
	}
	return s.unindex(o)
}

// reclaim frees the reservations in set whose container is gone, with the
// rest of those attachments' reservations. It returns how many addresses
// of set it freed.
func (s *store) reclaim(set rangeSet) (int, error) {
	all, err := s.reserved()
	if err != nil {
		return 0, err
	}
	gone := map[attachment][]netip.Addr{}
	n := 0
	for _, a := range all {
		if set.find(a) < 0 {
			continue
		}
		m := readMeta(s.ipPath(a))
		if !s.gone(m) {
			continue
		}
		o, ok, err := s.owner(a)
		if err != nil || !ok {
			continue
		}
		if err := s.free(a); err != nil {
			return n, err
		}
		n++
		gone[o] = append(gone[o], m.addrs()...)
	}
	for o, addrs := range gone {
		if err := s.drop(o, addrs); err != nil {
			return n, err
		}
	}
	return n, nil
}

// openExisting opens the store for verbs that never create it: nil when
// the network has no directory, hence no reservation.
func openExisting(ctx context.Context, c *config) (*store, error) {
	if _, err := os.Stat(filepath.Join(c.dataDir, c.name)); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return openStore(ctx, c.dataDir, c.name)
}

// openForCleanup loads only what DEL and GC need (see loadBase) and opens
// the existing store: nil when there is none, hence nothing to free.
func openForCleanup(ctx context.Context, stdin []byte) (*store, *config, error) {
	_, c, err := loadBase(stdin)
	if err != nil {
		return nil, nil, err
	}
	st, err := openExisting(ctx, c)
	return st, c, err
}

// del frees the attachment's reservations. It reads only what locating
// the store needs, so a config whose ranges changed still cleans up.
func del(ctx context.Context, args *skel.CmdArgs) error {
	st, _, err := openForCleanup(ctx, args.StdinData)
	if err != nil || st == nil {
		return err
	}
	defer st.close()
	att := attachment{id: args.ContainerID, ifname: args.IfName}
	held, _, err := st.held(att, true)
	if err != nil {
		return err
	}
	for _, a := range held {
		if err := st.free(a); err != nil {
			return err
		}
	}
	return st.unindex(att)
}

func check(ctx context.Context, args *skel.CmdArgs) error {
	c, err := load(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	att := attachment{id: args.ContainerID, ifname: args.IfName}
	none := cnierr.New(cnierr.InvalidConfig, "host-local: no address is reserved for container %s interface %s on network %s", att.id, att.ifname, c.name)
	st, err := openExisting(ctx, c)
	if err != nil {
		return err
	}
	if st == nil {
		return none
	}
	defer st.close()
	held, _, err := st.held(att, true)
	if err != nil {
		return err
	}
	if len(held) == 0 {
		return none
	}
	for i, set := range c.sets {
		found := false
		for _, a := range held {
			found = found || set.find(a) >= 0
		}
		if !found {
			return cnierr.New(cnierr.InvalidConfig, "host-local: container %s interface %s holds %s, none in range set %d (%s)", att.id, att.ifname, joinAddrs(held), i, set)
		}
	}
	return checkPrev(c, held)
}

// checkPrev verifies that the runtime's prevResult still lists every
// reserved address.
func checkPrev(c *config, held []netip.Addr) error {
	if len(c.prev) == 0 || string(c.prev) == "null" {
		return nil
	}
	r, err := version.NewResult(c.version, c.prev)
	if err != nil {
		return cnierr.New(cnierr.DecodingFailure, "host-local: prevResult: %v", err)
	}
	prev, err := current.NewResultFromResult(r)
	if err != nil {
		return cnierr.New(cnierr.DecodingFailure, "host-local: prevResult: %v", err)
	}
	if len(prev.IPs) == 0 {
		return nil
	}
	for _, a := range held {
		found := false
		for _, ip := range prev.IPs {
			if pa, ok := netip.AddrFromSlice(ip.Address.IP); ok && pa.Unmap() == a {
				found = true
			}
		}
		if !found {
			return cnierr.New(cnierr.InvalidConfig, "host-local: reserved address %s is missing from prevResult", a)
		}
	}
	return nil
}

// gc frees, when the runtime lists the valid attachments, every
// reservation of any other attachment; without a list, those whose
// container is gone. Records of freed or vanished reservations go too.
func gc(ctx context.Context, args *skel.CmdArgs) error {
	st, c, err := openForCleanup(ctx, args.StdinData)
	if err != nil || st == nil {
		return err
	}
	defer st.close()
	valid := map[attachment]bool{}
	validID := map[string]bool{}
	for _, v := range c.valid {
		valid[attachment{id: strings.TrimSpace(v.ContainerID), ifname: v.IfName}] = true
		validID[strings.TrimSpace(v.ContainerID)] = true
	}
	all, err := st.reserved()
	if err != nil {
		return err
	}
	kept := map[attachment]bool{}
	for _, a := range all {
		o, ok, err := st.owner(a)
		if err != nil || !ok {
			continue
		}
		var keep bool
		switch {
		case c.hasValid && o.legacy:
			keep = validID[o.id]
		case c.hasValid:
			keep = valid[o]
		default:
			keep = !st.gone(readMeta(st.ipPath(a)))
		}
		if keep {
			kept[o] = true
		} else if err := st.free(a); err != nil {
			return err
		}
	}
	// An index goes with the last reservation it stood for.
	idx, err := st.indexes()
	if err != nil {
		return err
	}
	for _, p := range idx {
		if b, err := os.ReadFile(p); err == nil && kept[parseOwner(b)] {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return ioErr(err, "removing %s", p)
		}
	}
	return nil
}

// status reports 50 when ADD cannot succeed: the data directory cannot be
// written, or a range set is full of live reservations.
func status(ctx context.Context, args *skel.CmdArgs) error {
	c, err := load(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	dir := filepath.Join(c.dataDir, c.name)
	if err := writable(dir); err != nil {
		return cnierr.New(cnierr.NotAvailable, "host-local: data dir %s cannot be written: %v", dir, err)
	}
	st, err := openStore(ctx, c.dataDir, c.name)
	if err != nil {
		return cnierr.New(cnierr.NotAvailable, "host-local: %v", err)
	}
	defer st.close()
	all, err := st.reserved()
	if err != nil {
		return cnierr.New(cnierr.NotAvailable, "host-local: %v", err)
	}
	for i, set := range c.sets {
		total := new(big.Int)
		for _, r := range set {
			total.Add(total, r.size())
		}
		var in []netip.Addr
		for _, a := range all {
			if set.usable(a) {
				in = append(in, a)
			}
		}
		if big.NewInt(int64(len(in))).Cmp(total) < 0 {
			continue
		}
		stale := false
		for _, a := range in {
			if st.gone(readMeta(st.ipPath(a))) {
				stale = true
				break
			}
		}
		if !stale {
			return cnierr.New(cnierr.NotAvailable, "host-local: range set %d (%s) of network %s is full: %d addresses reserved by live containers", i, set, c.name, len(in))
		}
	}
	return nil
}

// writable creates the directory if needed and an unnamed file in it.
func writable(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return unix.Close(fd)
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) {
		return err
	}
	f, err := os.CreateTemp(dir, ".status-")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}
