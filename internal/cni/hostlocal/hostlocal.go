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
	if rec := st.readRecord(att); rec != nil {
		held, err := st.held(att, rec)
		if err != nil {
			return nil, err
		}
		if len(held) > 0 {
			return nil, cnierr.New(cnierr.AlreadyAttached, "host-local: container %s interface %s already holds %s on network %s; DEL it first",
				args.ContainerID, args.IfName, joinAddrs(held), c.name)
		}
	}

	// The record goes first, so that a crash while reserving leaves
	// reservations whose container can still be told gone.
	rec := &record{ContainerID: att.id, IfName: att.ifname, Netns: args.Netns, NetnsInode: nsInode(args.Netns), BootID: st.bootID()}
	if rec.NetnsInode == 0 {
		rec.Netns = ""
	}
	if err := st.writeRecord(rec); err != nil {
		return nil, err
	}
	var got []netip.Addr
	undo := func(err error) (types.Result, error) {
		for _, a := range got {
			_ = st.free(a)
		}
		_ = st.removeRecord(att)
		return nil, err
	}
	for i, set := range c.sets {
		a, err := st.allocate(i, set, c.requested[i], att, c.name)
		if err != nil {
			return undo(err)
		}
		got = append(got, a)
		rec.IPs = append(rec.IPs, a.String())
	}
	rec.Complete = true
	if err := st.writeRecord(rec); err != nil {
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
func (s *store) allocate(i int, set rangeSet, want netip.Addr, att attachment, network string) (netip.Addr, error) {
	if want.IsValid() {
		return s.allocateRequested(i, set, want, att, network)
	}
	for pass := 0; pass < 2; pass++ {
		first := set.next(s.lastReserved(i))
		a := first
		for {
			if set.usable(a) {
				ok, err := s.reserve(a, att)
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

func (s *store) allocateRequested(i int, set rangeSet, want netip.Addr, att attachment, network string) (netip.Addr, error) {
	ok, err := s.reserve(want, att)
	if err != nil {
		return want, err
	}
	if !ok {
		o, held, err := s.owner(want)
		if err != nil {
			return want, err
		}
		if held {
			if rec := s.readRecord(o); rec != nil && s.gone(rec) {
				if err := s.drop(o, rec); err != nil {
					return want, err
				}
			} else {
				return want, cnierr.New(cnierr.InvalidConfig, "host-local: requested address %s is already reserved by container %s interface %s on network %s", want, o.id, o.ifname, network)
			}
		}
		if ok, err = s.reserve(want, att); err != nil {
			return want, err
		} else if !ok {
			return want, cnierr.New(cnierr.InvalidConfig, "host-local: requested address %s is already reserved on network %s", want, network)
		}
	}
	return want, s.setLastReserved(i, want)
}

// held returns the addresses att holds according to its record, each
// checked against the reservation file; an incomplete record (an ADD that
// crashed) is completed by a scan.
func (s *store) held(att attachment, rec *record) ([]netip.Addr, error) {
	if rec == nil || !rec.Complete {
		return s.scan(att)
	}
	var out []netip.Addr
	for _, t := range rec.IPs {
		a, err := netip.ParseAddr(t)
		if err != nil {
			continue
		}
		o, ok, err := s.owner(a)
		if err != nil {
			return nil, err
		}
		if ok && !o.legacy && att.holds(o) {
			out = append(out, a)
		}
	}
	return out, nil
}

// scan finds att's reservations by reading them all: for attachments
// without a record (made by the reference plugin). As the reference does,
// files holding only the container ID count when none names the interface.
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

// drop frees every reservation of a gone attachment and its record.
func (s *store) drop(o attachment, rec *record) error {
	for _, t := range rec.IPs {
		a, err := netip.ParseAddr(t)
		if err != nil {
			continue
		}
		if cur, ok, err := s.owner(a); err != nil {
			return err
		} else if ok && o.holds(cur) {
			if err := s.free(a); err != nil {
				return err
			}
		}
	}
	return s.removeRecord(o)
}

// reclaim frees the reservations in set whose container is gone, with the
// rest of those attachments' reservations. It returns how many addresses
// of set it freed.
func (s *store) reclaim(set rangeSet) (int, error) {
	all, err := s.reserved()
	if err != nil {
		return 0, err
	}
	gone := map[attachment]*record{}
	seen := map[attachment]bool{}
	n := 0
	for _, a := range all {
		if set.find(a) < 0 {
			continue
		}
		o, ok, err := s.owner(a)
		if err != nil || !ok {
			continue
		}
		if !seen[o] {
			seen[o] = true
			if rec := s.readRecord(o); rec != nil && s.gone(rec) {
				gone[o] = rec
			}
		}
		if gone[o] != nil {
			if err := s.free(a); err != nil {
				return n, err
			}
			n++
		}
	}
	for o, rec := range gone {
		if err := s.drop(o, rec); err != nil {
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

// del frees the attachment's reservations. It reads only what locating
// the store needs, so a config whose ranges changed still cleans up.
func del(ctx context.Context, args *skel.CmdArgs) error {
	_, c, err := loadBase(args.StdinData)
	if err != nil {
		return err
	}
	st, err := openExisting(ctx, c)
	if err != nil || st == nil {
		return err
	}
	defer st.close()
	att := attachment{id: args.ContainerID, ifname: args.IfName}
	held, err := st.held(att, st.readRecord(att))
	if err != nil {
		return err
	}
	for _, a := range held {
		if err := st.free(a); err != nil {
			return err
		}
	}
	return st.removeRecord(att)
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
	held, err := st.held(att, st.readRecord(att))
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
	_, c, err := loadBase(args.StdinData)
	if err != nil {
		return err
	}
	st, err := openExisting(ctx, c)
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
	verdict := map[attachment]bool{}
	keep := func(o attachment, rec *record) bool {
		if k, ok := verdict[o]; ok {
			return k
		}
		var k bool
		switch {
		case c.hasValid && o.legacy:
			k = validID[o.id]
		case c.hasValid:
			k = valid[o]
		default:
			if rec == nil {
				rec = st.readRecord(o)
			}
			k = rec == nil || !st.gone(rec)
		}
		verdict[o] = k
		return k
	}
	all, err := st.reserved()
	if err != nil {
		return err
	}
	owned := map[attachment]bool{}
	for _, a := range all {
		o, ok, err := st.owner(a)
		if err != nil || !ok {
			continue
		}
		if keep(o, nil) {
			owned[o] = true
		} else if err := st.free(a); err != nil {
			return err
		}
	}
	recs, err := st.records()
	if err != nil {
		return err
	}
	for _, p := range recs {
		rec := readRecordFile(p)
		if rec != nil {
			o := attachment{id: rec.ContainerID, ifname: rec.IfName}
			if keep(o, rec) && owned[o] {
				continue
			}
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
			if o, ok, _ := st.owner(a); ok {
				if rec := st.readRecord(o); rec != nil && st.gone(rec) {
					stale = true
					break
				}
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
