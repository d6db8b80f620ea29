package daemon

import (
	"context"
	"errors"
	"log"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/dhcp/api"
	"github.com/tripod-dev/tripod/internal/cni/dhcp/dhcp4"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
)

// roundMax bounds one renewal or re-acquisition exchange: between rounds
// the socket is closed, so a lease whose namespace was deleted does not
// keep that namespace alive, and its loss is noticed.
const roundMax = 2 * time.Minute

// manager holds the leases and the goroutines that keep them.
type manager struct {
	ctx       context.Context // ends at shutdown: maintenance stops, nothing is released
	log       *log.Logger
	store     *store
	prefix    string // host prefix for netns paths
	timeout   time.Duration
	resendMax time.Duration
	broadcast bool

	mu     sync.Mutex
	leases map[api.Attachment]*lease
	locks  map[api.Attachment]*keyLock
	wg     sync.WaitGroup
}

// lease is one held lease and its maintenance goroutine.
type lease struct {
	mu   sync.Mutex
	rec  *record
	dead string // why maintenance stopped for good; "" while maintained

	cancel context.CancelFunc
	done   chan struct{}
}

func (l *lease) snapshot() (*record, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := *l.rec
	return &r, l.dead
}

// stop ends maintenance and waits for it.
func (l *lease) stop() {
	l.cancel()
	<-l.done
}

// keyLock serializes operations on one attachment.
type keyLock struct {
	mu   sync.Mutex
	refs int
}

func (m *manager) lock(a api.Attachment) func() {
	m.mu.Lock()
	k := m.locks[a]
	if k == nil {
		k = &keyLock{}
		m.locks[a] = k
	}
	k.refs++
	m.mu.Unlock()
	k.mu.Lock()
	return func() {
		k.mu.Unlock()
		m.mu.Lock()
		if k.refs--; k.refs == 0 {
			delete(m.locks, a)
		}
		m.mu.Unlock()
	}
}

func (m *manager) get(a api.Attachment) *lease {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leases[a]
}

// restore resumes the persisted leases.
func (m *manager) restore() int {
	recs, errs := m.store.load()
	for _, err := range errs {
		m.log.Printf("skipping a lease file: %v", err)
	}
	for _, r := range recs {
		m.start(r)
	}
	return len(recs)
}

// start registers a lease and begins maintaining it.
func (m *manager) start(r *record) {
	ctx, cancel := context.WithCancel(m.ctx)
	l := &lease{rec: r, cancel: cancel, done: make(chan struct{})}
	m.mu.Lock()
	m.leases[r.Attachment] = l
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(l.done)
		m.maintain(ctx, l)
	}()
}

// wait returns when every maintenance goroutine has stopped.
func (m *manager) wait() { m.wg.Wait() }

// session is a DHCP socket opened inside a container's namespace.
type session struct {
	conn      *dhcp4.Conn
	mac       net.HardwareAddr
	mtu       int
	netns     string
	ifName    string
	index     int
	broughtUp bool
	watch     *linkWatch // set while waiting for the link to come up
}

// errNoLink means the namespace exists but the interface does not.
var errNoLink = errors.New("interface not found")

// open creates the DHCP socket for ifName in the namespace at netns.
// With bringUp, a down interface is brought up first (main plugins call
// IPAM before they bring their link up).
func (m *manager) open(netns, ifName string, bringUp bool) (*session, error) {
	s := &session{netns: m.prefix + netns, ifName: ifName}
	err := nsutil.Do(s.netns, func() error {
		link, err := netlink.LinkByName(ifName)
		if err != nil {
			return &codedErr{cnierr.New(cnierr.Netlink, "interface %s not found in network namespace %s: %v", ifName, netns, err), errNoLink}
		}
		attrs := link.Attrs()
		if len(attrs.HardwareAddr) != 6 {
			return cnierr.New(cnierr.InvalidConfig, "interface %s in %s has no Ethernet address (%q): DHCP needs an Ethernet link", ifName, netns, attrs.HardwareAddr)
		}
		s.index = attrs.Index
		if bringUp && attrs.Flags&net.FlagUp == 0 {
			if err := s.bringUp(link); err != nil {
				return cnierr.New(cnierr.Netlink, "bringing %s up in %s: %v", ifName, netns, err)
			}
		}
		conn, err := dhcp4.Open(attrs.Index)
		if err != nil {
			s.undo(link)
			return cnierr.New(cnierr.IOFailure, "opening a DHCP socket on %s in %s: %v", ifName, netns, err)
		}
		s.conn, s.mac, s.mtu = conn, attrs.HardwareAddr, attrs.MTU
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// bringUp sets a link up. When the link reports its operational state
// (a veth, a macvlan), open waits until the kernel has processed the new
// carrier: a DISCOVER sent before then is dropped at the far end (a
// bridge port not yet enabled), and its retransmission costs time. Runs
// inside the namespace.
func (s *session) bringUp(link netlink.Link) error {
	if link.Attrs().OperState == netlink.OperDown {
		if w, err := watchLinks(); err == nil {
			s.watch = w // without it, the retransmissions cover the race
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		s.undo(link)
		return err
	}
	s.broughtUp = true
	return nil
}

// undo reverses bringUp. Runs inside the namespace.
func (s *session) undo(link netlink.Link) {
	if s.watch != nil {
		s.watch.Close()
		s.watch = nil
	}
	if s.broughtUp {
		_ = netlink.LinkSetDown(link)
		s.broughtUp = false
	}
}

// awaitOperUp waits, if bringUp asked for it, until the link is
// operationally up.
func (s *session) awaitOperUp(ctx context.Context) error {
	if s.watch == nil {
		return nil
	}
	defer func() {
		s.watch.Close()
		s.watch = nil
	}()
	return s.watch.awaitOperUp(ctx, s.index)
}

// close closes the sockets; after a failed ADD it also puts the link back
// down if open brought it up, leaving it as the main plugin made it.
func (s *session) close(failed bool) {
	s.conn.Close()
	if s.watch != nil {
		s.watch.Close()
		s.watch = nil
	}
	if failed && s.broughtUp {
		_ = nsutil.Do(s.netns, func() error {
			if link, err := netlink.LinkByIndex(s.index); err == nil {
				_ = netlink.LinkSetDown(link)
			}
			return nil
		})
	}
}

func (m *manager) client(s *session, p *api.Params) *dhcp4.Client {
	return &dhcp4.Client{
		Conn:      s.conn,
		MAC:       s.mac,
		ClientID:  p.ClientID,
		Params:    p.Request,
		Extra:     p.Provide,
		Broadcast: p.Broadcast || m.broadcast,
		MaxSize:   uint16(min(max(s.mtu, 576), 1500)),
		ResendMax: m.resendMax,
	}
}

// add acquires a lease for req and starts keeping it.
func (m *manager) add(ctx context.Context, req *api.Request) (*api.Lease, error) {
	a := req.Attachment
	unlock := m.lock(a)
	defer unlock()
	if l := m.get(a); l != nil {
		r, dead := l.snapshot()
		if r.Netns == req.Netns && dead == "" && !expired(&r.Lease) {
			return info(&r.Lease), nil // a repeated ADD gets the lease it holds
		}
		return nil, cnierr.New(cnierr.AlreadyAttached, "%v already holds DHCP lease %s (network namespace %s): DEL it first", a, r.Lease.IP, r.Netns)
	}
	p := req.Params
	if p == nil {
		p = &api.Params{}
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = m.timeout
	}
	s, err := m.open(req.Netns, a.IfName, true)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.awaitOperUp(actx); err != nil {
		s.close(true)
		if ctx.Err() == nil && m.ctx.Err() == nil {
			return nil, cnierr.New(cnierr.DHCPDaemon, "interface %s (network namespace %s) did not come up within %v: no carrier (is its peer or lower device up?)", a.IfName, req.Netns, timeout)
		}
		return nil, m.acquireErr(ctx, err, s, req.Netns, timeout)
	}
	dl, err := m.client(s, p).Acquire(actx, netip.Addr{})
	if err != nil {
		s.close(true)
		return nil, m.acquireErr(ctx, err, s, req.Netns, timeout)
	}
	r := &record{Attachment: a, Netns: req.Netns, Params: *p, Lease: *dl}
	if err := m.store.save(r); err != nil {
		_ = m.client(s, p).Release(dl)
		s.close(true)
		return nil, cnierr.New(cnierr.IOFailure, "%v", err)
	}
	s.close(false)
	m.start(r)
	m.log.Printf("%v: acquired %s from %s, expires %s", a, dl.Prefix(), dl.ServerID, expiryText(dl))
	return info(dl), nil
}

func (m *manager) acquireErr(ctx context.Context, err error, s *session, netns string, timeout time.Duration) error {
	switch {
	case m.ctx.Err() != nil:
		return cnierr.New(cnierr.TryAgainLater, "the dhcp daemon is shutting down; retry when it is back")
	case errors.Is(err, dhcp4.ErrNoOffer):
		return cnierr.New(cnierr.DHCPDaemon, "no DHCP offer on interface %s (MAC %s, network namespace %s) within %v: is a DHCP server reachable on that link?", s.ifName, s.mac, netns, timeout)
	case errors.Is(err, dhcp4.ErrNoAck):
		return cnierr.New(cnierr.DHCPDaemon, "interface %s (MAC %s, network namespace %s): %v within %v", s.ifName, s.mac, netns, err, timeout)
	case ctx.Err() != nil:
		return cnierr.New(cnierr.DHCPDaemon, "acquiring a lease on %s abandoned: the plugin went away", s.ifName)
	}
	return cnierr.New(cnierr.DHCPDaemon, "DHCP on interface %s (network namespace %s): %v", s.ifName, netns, err)
}

// del releases the lease of a, if any.
func (m *manager) del(a api.Attachment) error {
	unlock := m.lock(a)
	defer unlock()
	l := m.get(a)
	if l == nil {
		return nil
	}
	l.stop()
	r, dead := l.snapshot()
	if dead == "" && !expired(&r.Lease) {
		m.release(r)
	}
	if err := m.store.remove(a); err != nil {
		// Keep it known (unmaintained) so that a retried DEL finishes.
		l.mu.Lock()
		l.dead = "released"
		l.mu.Unlock()
		return cnierr.New(cnierr.IOFailure, "%v: %v", a, err)
	}
	m.mu.Lock()
	delete(m.leases, a)
	m.mu.Unlock()
	return nil
}

// release sends DHCPRELEASE when the interface still exists.
func (m *manager) release(r *record) {
	s, err := m.open(r.Netns, r.Attachment.IfName, false)
	if err != nil {
		m.log.Printf("%v: not releasing %s on the wire: %v", r.Attachment, r.Lease.IP, err)
		return
	}
	defer s.close(false)
	if err := m.client(s, &r.Params).Release(&r.Lease); err != nil {
		m.log.Printf("%v: sending DHCPRELEASE for %s: %v", r.Attachment, r.Lease.IP, err)
		return
	}
	m.log.Printf("%v: released %s", r.Attachment, r.Lease.IP)
}

// check returns the lease of a when it is held.
func (m *manager) check(a api.Attachment) (*api.Lease, error) {
	unlock := m.lock(a)
	defer unlock()
	l := m.get(a)
	if l == nil {
		return nil, cnierr.New(cnierr.DHCPDaemon, "the dhcp daemon holds no lease for %v", a)
	}
	r, dead := l.snapshot()
	switch {
	case dead != "":
		return nil, cnierr.New(cnierr.DHCPDaemon, "the lease %s of %v is no longer maintained: %s", r.Lease.IP, a, dead)
	case expired(&r.Lease):
		return nil, cnierr.New(cnierr.DHCPDaemon, "the lease %s of %v expired at %s and has not been re-acquired", r.Lease.IP, a, r.Lease.Expiry().Format(time.RFC3339))
	}
	return info(&r.Lease), nil
}

// gc releases the leases of network whose attachment is not in valid.
func (m *manager) gc(network string, valid []api.Attachment) error {
	keep := map[[2]string]bool{}
	for _, v := range valid {
		keep[[2]string{v.ContainerID, v.IfName}] = true
	}
	var stale []api.Attachment
	m.mu.Lock()
	for a := range m.leases {
		if a.Network == network && !keep[[2]string{a.ContainerID, a.IfName}] {
			stale = append(stale, a)
		}
	}
	m.mu.Unlock()
	var errs []error
	for _, a := range stale {
		if err := m.del(a); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return cnierr.New(cnierr.IOFailure, "garbage-collecting leases of network %s: %v", network, errors.Join(errs...))
	}
	return nil
}

func expired(l *dhcp4.Lease) bool { return !l.Infinite && !time.Now().Before(l.Expiry()) }

func expiryText(l *dhcp4.Lease) string {
	if l.Infinite {
		return "never"
	}
	return l.Expiry().Format(time.RFC3339)
}

// info is what a plugin learns about a lease.
func info(l *dhcp4.Lease) *api.Lease {
	o := l.Options
	out := &api.Lease{
		Address: l.Prefix(),
		Routers: o.Addrs(dhcp4.OptRouter),
		Static:  o.StaticRoutes(),
		DNS:     o.Addrs(dhcp4.OptDNS),
		Domain:  o.String(dhcp4.OptDomainName),
	}
	// Malformed route or search options are dropped rather than failing
	// a lease the server granted.
	out.Classless, _ = o.ClasslessRoutes()
	out.Search, _ = o.DomainSearch()
	if !l.Infinite {
		out.Expires = l.Expiry()
	}
	return out
}

// codedErr is a CNI error that also matches a sentinel.
type codedErr struct {
	cni  error
	kind error
}

func (e *codedErr) Error() string   { return e.cni.Error() }
func (e *codedErr) Unwrap() []error { return []error{e.cni, e.kind} }
