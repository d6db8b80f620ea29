package dhcp4

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults of RFC 2131 section 4.4.5 and of this client.
const (
	// DefaultLease is assumed when an ACK omits option 51.
	DefaultLease = time.Hour
	// firstWait is the first retransmission interval in INIT, far shorter
	// than RFC 2131's 4 s: the first DISCOVER after a link comes up is
	// often dropped while the far side (a bridge port, a switch) is still
	// coming up, and waiting seconds for it would dominate ADD latency.
	// Doubling keeps the cost at a few extra packets in the first second.
	firstWait = 100 * time.Millisecond
	// renewWaitMax caps a retransmission interval in RENEWING/REBINDING.
	renewWaitMax = 60 * time.Second
	renewWaitMin = 2 * time.Second
)

var (
	// ErrNoOffer means no server answered DHCPDISCOVER before the context
	// ended.
	ErrNoOffer = errors.New("no DHCPOFFER received")
	// ErrNoAck means a server offered an address but did not answer the
	// DHCPREQUEST before the context ended.
	ErrNoAck = errors.New("no DHCPACK received")
)

// NakError is a DHCPNAK from a server.
type NakError struct {
	Server netip.Addr
	Msg    string
}

func (e *NakError) Error() string {
	if e.Msg != "" {
		return fmt.Sprintf("server %s refused the request (DHCPNAK: %s)", e.Server, e.Msg)
	}
	return fmt.Sprintf("server %s refused the request (DHCPNAK)", e.Server)
}

// Client runs DHCP exchanges on one interface.
type Client struct {
	Conn      *Conn
	MAC       net.HardwareAddr
	ClientID  []byte   // option 61 value; none when empty
	Params    []byte   // option 55: the options asked for
	Extra     []Option // further options sent in DISCOVER and REQUEST
	Broadcast bool     // ask servers to broadcast replies while unconfigured
	MaxSize   uint16   // option 57; 0 omits it
	ResendMax time.Duration
}

// Lease is an address granted by a DHCPACK, with what is needed to keep
// it: times are relative to Start, when the acknowledged request was sent.
type Lease struct {
	IP        netip.Addr    `json:"ip"`
	PrefixLen int           `json:"prefixLen"`
	ServerID  netip.Addr    `json:"serverID"`
	ServerMAC string        `json:"serverMAC,omitempty"`
	Start     time.Time     `json:"start"`
	Infinite  bool          `json:"infinite,omitempty"`
	Duration  time.Duration `json:"duration"`
	T1        time.Duration `json:"t1"`
	T2        time.Duration `json:"t2"`
	Options   Options       `json:"options"`
}

// RenewAt is T1: when to start unicasting renewals.
func (l *Lease) RenewAt() time.Time { return l.Start.Add(l.T1) }

// RebindAt is T2: when to start broadcasting renewals.
func (l *Lease) RebindAt() time.Time { return l.Start.Add(l.T2) }

// Expiry is when the lease ends (meaningless when Infinite).
func (l *Lease) Expiry() time.Time { return l.Start.Add(l.Duration) }

// Prefix is the leased address with its subnet.
func (l *Lease) Prefix() netip.Prefix { return netip.PrefixFrom(l.IP, l.PrefixLen) }

// Acquire obtains a lease from scratch (INIT, SELECTING, REQUESTING),
// asking for want when it is valid. It retransmits with exponential
// back-off until ctx ends; a DHCPNAK restarts discovery.
func (c *Client) Acquire(ctx context.Context, want netip.Addr) (*Lease, error) {
	start := time.Now()
	naks := 0
	for {
		offer, err := c.discover(ctx, start, want)
		if err != nil {
			return nil, err
		}
		l, err := c.request(ctx, start, offer)
		var nak *NakError
		if !errors.As(err, &nak) {
			return l, err
		}
		// RFC 2131 3.1.5: back to INIT, without insisting on an address.
		want = netip.Addr{}
		naks++
		if err := sleep(ctx, c.backoff(min(naks, 6)-1)); err != nil {
			return nil, fmt.Errorf("%w after %v", err, nak)
		}
	}
}

func (c *Client) discover(ctx context.Context, start time.Time, want netip.Addr) (*Message, error) {
	xid := rand.Uint32()
	build := func(secs uint16) []byte {
		opts := []Option{{OptMessageType, []byte{byte(Discover)}}}
		if want.Is4() && !want.IsUnspecified() {
			a := want.As4()
			opts = append(opts, Option{OptRequestedIP, a[:]})
		}
		return c.encode(xid, secs, true, netip.Addr{}, append(opts, c.common()...))
	}
	accept := func(m *Message) (bool, error) {
		if m.Type() != Offer || !m.YIAddr.Is4() || m.YIAddr.IsUnspecified() {
			return false, nil
		}
		if _, ok := m.Options.Addr(OptServerID); !ok {
			return false, nil // RFC 2131 requires it; without it we cannot select
		}
		return true, nil
	}
	m, _, _, err := c.transact(ctx, start, xid, build, BroadcastMAC, netip.IPv4Unspecified(), broadcastIP, accept, c.backoff)
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return nil, ErrNoOffer
	}
	return m, err
}

// request sends the SELECTING DHCPREQUEST for an offer.
func (c *Client) request(ctx context.Context, start time.Time, offer *Message) (*Lease, error) {
	xid := rand.Uint32()
	server, _ := offer.Options.Addr(OptServerID)
	ip := offer.YIAddr.As4()
	sid := server.As4()
	build := func(secs uint16) []byte {
		opts := []Option{
			{OptMessageType, []byte{byte(Request)}},
			{OptRequestedIP, ip[:]},
			{OptServerID, sid[:]},
		}
		return c.encode(xid, secs, true, netip.Addr{}, append(opts, c.common()...))
	}
	m, mac, sent, err := c.transact(ctx, start, xid, build, BroadcastMAC, netip.IPv4Unspecified(), broadcastIP, ackOrNak, c.backoff)
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return nil, fmt.Errorf("%w: server %s offered %s", ErrNoAck, server, offer.YIAddr)
	}
	if err != nil {
		return nil, err
	}
	return leaseFrom(m, mac, sent, server)
}

// Renew extends l by unicast to the server that granted it (RENEWING).
// It retransmits until ctx ends, which the caller sets to T2.
func (c *Client) Renew(ctx context.Context, l *Lease) (*Lease, error) {
	mac, err := net.ParseMAC(l.ServerMAC)
	if err != nil {
		mac = BroadcastMAC
	}
	return c.extend(ctx, l, mac, l.ServerID)
}

// Rebind extends l by broadcast to any server (REBINDING). It retransmits
// until ctx ends, which the caller sets to the lease's expiry.
func (c *Client) Rebind(ctx context.Context, l *Lease) (*Lease, error) {
	return c.extend(ctx, l, BroadcastMAC, broadcastIP)
}

func (c *Client) extend(ctx context.Context, l *Lease, dstMAC net.HardwareAddr, dst netip.Addr) (*Lease, error) {
	xid := rand.Uint32()
	start := time.Now()
	build := func(secs uint16) []byte {
		opts := []Option{{OptMessageType, []byte{byte(Request)}}}
		return c.encode(xid, secs, false, l.IP, append(opts, c.common()...))
	}
	m, mac, sent, err := c.transact(ctx, start, xid, build, dstMAC, l.IP, dst, ackOrNak, c.untilDeadline(ctx))
	if err != nil {
		return nil, err
	}
	return leaseFrom(m, mac, sent, l.ServerID)
}

// Release gives l back to its server. Nothing answers a DHCPRELEASE.
func (c *Client) Release(l *Lease) error {
	mac, err := net.ParseMAC(l.ServerMAC)
	if err != nil {
		mac = BroadcastMAC
	}
	sid := l.ServerID.As4()
	opts := []Option{{OptMessageType, []byte{byte(Release)}}, {OptServerID, sid[:]}}
	if len(c.ClientID) > 0 {
		opts = append(opts, Option{OptClientID, c.ClientID})
	}
	return c.Conn.Send(mac, l.IP, l.ServerID, c.encode(rand.Uint32(), 0, false, l.IP, opts))
}

var broadcastIP = netip.AddrFrom4([4]byte{255, 255, 255, 255})

func ackOrNak(m *Message) (bool, error) {
	switch m.Type() {
	case Ack:
		return m.YIAddr.Is4() && !m.YIAddr.IsUnspecified(), nil
	case Nak:
		sid, _ := m.Options.Addr(OptServerID)
		return true, &NakError{Server: sid, Msg: m.Options.String(OptMessage)}
	}
	return false, nil
}

// common are the options every DISCOVER and REQUEST carries.
func (c *Client) common() []Option {
	var opts []Option
	if len(c.ClientID) > 0 {
		opts = append(opts, Option{OptClientID, c.ClientID})
	}
	if c.MaxSize >= 576 {
		opts = append(opts, Option{OptMaxSize, binary.BigEndian.AppendUint16(nil, c.MaxSize)})
	}
	if len(c.Params) > 0 {
		opts = append(opts, Option{OptParamRequest, c.Params})
	}
	return append(opts, c.Extra...)
}

func (c *Client) encode(xid uint32, secs uint16, unconfigured bool, ciaddr netip.Addr, opts []Option) []byte {
	m := &Message{Op: opRequest, XID: xid, Secs: secs, CHAddr: c.MAC, CIAddr: ciaddr, Broadcast: unconfigured && c.Broadcast}
	return Encode(m, opts)
}

// transact sends a message and re-sends it on schedule until accept takes
// a reply with the same transaction ID or ctx ends. It returns the reply,
// its link-layer source, and when the message it answers was last sent.
func (c *Client) transact(ctx context.Context, start time.Time, xid uint32, build func(secs uint16) []byte,
	dstMAC net.HardwareAddr, src, dst netip.Addr, accept func(*Message) (bool, error), wait func(attempt int) time.Duration,
) (*Message, net.HardwareAddr, time.Time, error) {
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, nil, time.Time{}, err
		}
		secs := min(time.Since(start)/time.Second, 0xffff)
		sent := time.Now()
		if err := c.Conn.Send(dstMAC, src, dst, build(uint16(secs))); err != nil {
			// A link still coming up refuses to send; that is a lost
			// packet, retried on schedule.
			if !transient(err) {
				return nil, nil, time.Time{}, fmt.Errorf("sending DHCP message: %w", err)
			}
		}
		deadline := sent.Add(wait(attempt))
		for {
			b, mac, err := c.Conn.Recv(ctx, deadline)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return nil, nil, time.Time{}, err
			}
			m, err := Decode(b)
			if err != nil || m.Op != opReply || m.XID != xid || len(m.CHAddr) < len(c.MAC) || !equalMAC(m.CHAddr[:len(c.MAC)], c.MAC) {
				continue
			}
			ok, err := accept(m)
			if err != nil {
				return nil, nil, time.Time{}, err
			}
			if ok {
				return m, mac, sent, nil
			}
		}
	}
}

// backoff is the INIT schedule: doubling from firstWait up to ResendMax,
// randomized by ±10% so that many clients started together spread out.
func (c *Client) backoff(attempt int) time.Duration {
	d := firstWait << min(attempt, 10)
	if c.ResendMax > 0 && d > c.ResendMax {
		d = c.ResendMax
	}
	return jitter(d)
}

// untilDeadline is the RENEWING/REBINDING schedule of RFC 2131 4.4.5: half
// the time left before ctx's deadline, at least renewWaitMin (or what is
// left), at most renewWaitMax.
func (c *Client) untilDeadline(ctx context.Context) func(int) time.Duration {
	return func(attempt int) time.Duration {
		dl, ok := ctx.Deadline()
		if !ok {
			return c.backoff(attempt)
		}
		left := time.Until(dl)
		d := min(max(left/2, min(renewWaitMin, left)), renewWaitMax)
		return max(d, 10*time.Millisecond)
	}
}

func jitter(d time.Duration) time.Duration {
	return d + time.Duration((rand.Float64()*0.2-0.1)*float64(d))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// transient send errors come from a link that is not ready yet.
func transient(err error) bool {
	return errors.Is(err, unix.ENETDOWN) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN)
}

func equalMAC(a, b net.HardwareAddr) bool { return string(a) == string(b) }

// leaseFrom builds a lease from a DHCPACK. server is the server the
// request was for, used when the ACK lacks option 54.
func leaseFrom(m *Message, mac net.HardwareAddr, sent time.Time, server netip.Addr) (*Lease, error) {
	bits, ok := m.Options.PrefixLen()
	if !ok {
		return nil, fmt.Errorf("DHCPACK for %s carries no valid subnet mask (option 1)", m.YIAddr)
	}
	if sid, ok := m.Options.Addr(OptServerID); ok {
		server = sid
	}
	l := &Lease{IP: m.YIAddr, PrefixLen: bits, ServerID: server, ServerMAC: mac.String(), Start: sent, Options: m.Options}
	d, inf, ok := m.Options.Duration(OptLeaseTime)
	switch {
	case inf:
		l.Infinite = true
		return l, nil
	case !ok || d == 0:
		d = DefaultLease
	}
	l.Duration = d
	l.T1, l.T2 = d/2, d*7/8
	t1, _, ok1 := m.Options.Duration(OptRenewalTime)
	t2, _, ok2 := m.Options.Duration(OptRebindingTime)
	if ok2 && t2 > 0 && t2 < d {
		l.T2 = t2
	}
	if ok1 && t1 > 0 && t1 < l.T2 {
		l.T1 = t1
	}
	if l.T1 >= l.T2 {
		l.T1 = l.T2 / 2
	}
	return l, nil
}
