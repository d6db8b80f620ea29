package dhcp4

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	clientPort = 68
	serverPort = 67
	ipHdrLen   = 20
	udpHdrLen  = 8
)

// BroadcastMAC is the Ethernet broadcast address.
var BroadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// Conn is a link-layer (AF_PACKET) socket on one interface that sends and
// receives DHCP client traffic with hand-built IPv4/UDP headers. A packet
// socket needs no address on the interface, never competes for UDP port 68
// with software in the container, and sees unicast replies sent to an
// address the kernel has not been given yet. It stays attached to the
// network namespace it was created in, so only Open must run there.
type Conn struct {
	f       *os.File
	rc      syscall.RawConn
	ifindex int
}

// Open creates a socket bound to the interface with index ifindex in the
// calling thread's network namespace. A socket filter admits only UDP to
// port 68, so other traffic on the interface never wakes the daemon.
func Open(ifindex int) (*Conn, error) {
	// Protocol 0 receives nothing until bind, so the filter is in place
	// before the first packet can be queued.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("creating packet socket: %w", err)
	}
	if err := attachFilter(fd); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attaching DHCP socket filter: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding packet socket to interface %d: %w", ifindex, err)
	}
	f := os.NewFile(uintptr(fd), "dhcp-packet-socket")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Conn{f: f, rc: rc, ifindex: ifindex}, nil
}

// attachFilter installs a classic BPF program accepting unfragmented
// IPv4 UDP datagrams to port 68. Offsets start at the IP header: the
// socket is SOCK_DGRAM, so the link-layer header is already stripped.
func attachFilter(fd int) error {
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 9},                               // A = protocol
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 6, K: unix.IPPROTO_UDP}, // not UDP: drop
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 6},                               // A = flags, fragment offset
		{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, Jt: 4, Jf: 0, K: 0x1fff},          // a fragment: drop
		{Code: unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH, K: 0},                              // X = IP header length
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_IND, K: 2},                               // A = UDP destination port
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: clientPort},       // not 68: drop
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffff},                                        // accept
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},                                             // drop
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog)
}

// Close releases the socket.
func (c *Conn) Close() error { return c.f.Close() }

// Send sends payload as a UDP datagram from src:68 to dst:67, framed for
// the link-layer destination dstMAC.
func (c *Conn) Send(dstMAC net.HardwareAddr, src, dst netip.Addr, payload []byte) error {
	pkt := make([]byte, ipHdrLen+udpHdrLen+len(payload))
	ip := pkt[:ipHdrLen]
	ip[0] = 0x45 // version 4, 20-byte header
	ip[1] = 0x10 // TOS: low delay, as common DHCP clients send
	binary.BigEndian.PutUint16(ip[2:], uint16(len(pkt)))
	ip[8] = 64 // TTL
	ip[9] = unix.IPPROTO_UDP
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))

	udp := pkt[ipHdrLen:]
	binary.BigEndian.PutUint16(udp[0:], clientPort)
	binary.BigEndian.PutUint16(udp[2:], serverPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(udpHdrLen+len(payload)))
	copy(udp[udpHdrLen:], payload)
	// Pseudo-header sum: addresses, protocol, UDP length.
	pseudo := sum(s4[:], 0)
	pseudo = sum(d4[:], pseudo)
	pseudo += unix.IPPROTO_UDP + uint32(udpHdrLen+len(payload))
	cs := checksum(udp, pseudo)
	if cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], cs)

	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: c.ifindex, Halen: uint8(len(dstMAC))}
	copy(to.Addr[:], dstMAC)
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), pkt, 0, to)
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err != nil {
		return err
	}
	return serr
}

// Recv waits until deadline for a DHCP reply and returns its payload and
// the link-layer source address it came from. It returns
// os.ErrDeadlineExceeded when the deadline passes, and ctx's error when
// ctx ends first.
func (c *Conn) Recv(ctx context.Context, deadline time.Time) ([]byte, net.HardwareAddr, error) {
	if err := c.f.SetReadDeadline(deadline); err != nil {
		return nil, nil, err
	}
	// Registered after the deadline is set, so a cancellation always wins.
	stop := context.AfterFunc(ctx, func() { _ = c.f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	payload, mac, err := c.recv()
	if err != nil && ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	return payload, mac, err
}

func (c *Conn) recv() ([]byte, net.HardwareAddr, error) {
	buf := make([]byte, 65536)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := c.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err != nil {
			return nil, nil, err
		}
		if rerr != nil {
			return nil, nil, rerr
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		payload, ok := udpPayload(buf[:n])
		if !ok {
			continue
		}
		mac := net.HardwareAddr(append([]byte(nil), ll.Addr[:ll.Halen]...))
		return append([]byte(nil), payload...), mac, nil
	}
}

// udpPayload returns the UDP payload of an IPv4 packet to port 68 from
// port 67. Checksums are not verified: on veth and other virtual links a
// packet captured here may legitimately carry a partial checksum.
func udpPayload(p []byte) ([]byte, bool) {
	if len(p) < ipHdrLen || p[0]>>4 != 4 {
		return nil, false
	}
	ihl := int(p[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(p[2:]))
	if ihl < ipHdrLen || total > len(p) || total < ihl+udpHdrLen || p[9] != unix.IPPROTO_UDP {
		return nil, false
	}
	udp := p[ihl:total]
	if binary.BigEndian.Uint16(udp[0:]) != serverPort || binary.BigEndian.Uint16(udp[2:]) != clientPort {
		return nil, false
	}
	ulen := int(binary.BigEndian.Uint16(udp[4:]))
	if ulen < udpHdrLen || ulen > len(udp) {
		return nil, false
	}
	return udp[udpHdrLen:ulen], true
}

func sum(b []byte, acc uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		acc += uint32(b[len(b)-1]) << 8
	}
	return acc
}

func checksum(b []byte, acc uint32) uint16 {
	acc = sum(b, acc)
	for acc > 0xffff {
		acc = acc>>16 + acc&0xffff
	}
	return ^uint16(acc)
}

// htons gives v in network byte order, as sockaddr_ll wants it.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
