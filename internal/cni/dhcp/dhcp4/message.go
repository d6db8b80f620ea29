// Package dhcp4 is a DHCPv4 client (RFC 2131): message encoding, a
// link-layer socket bound to one interface, and the exchanges a lease needs
// (acquire, renew, rebind, release).
package dhcp4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// MessageType is the value of option 53.
type MessageType byte

// Message types (RFC 2132 section 9.6).
const (
	Discover MessageType = 1
	Offer    MessageType = 2
	Request  MessageType = 3
	Decline  MessageType = 4
	Ack      MessageType = 5
	Nak      MessageType = 6
	Release  MessageType = 7
	Inform   MessageType = 8
)

func (t MessageType) String() string {
	names := [...]string{"", "DHCPDISCOVER", "DHCPOFFER", "DHCPREQUEST", "DHCPDECLINE", "DHCPACK", "DHCPNAK", "DHCPRELEASE", "DHCPINFORM"}
	if int(t) < len(names) && t != 0 {
		return names[t]
	}
	return fmt.Sprintf("DHCP message type %d", byte(t))
}

// BOOTP operation codes.
const (
	opRequest = 1
	opReply   = 2
)

// flagBroadcast asks servers to broadcast their replies.
const flagBroadcast = 0x8000

// Fixed layout of a BOOTP message (RFC 951, RFC 2131 section 2).
const (
	headerLen  = 236
	cookieLen  = 4
	minMsgLen  = 300 // BOOTP minimum, which some relays still enforce
	snameStart = 44
	fileStart  = 108
	fileEnd    = 236
)

var magicCookie = [4]byte{99, 130, 83, 99}

// Message is a decoded DHCPv4 message.
type Message struct {
	Op        byte
	XID       uint32
	Secs      uint16
	Broadcast bool
	CIAddr    netip.Addr
	YIAddr    netip.Addr
	SIAddr    netip.Addr
	GIAddr    netip.Addr
	CHAddr    net.HardwareAddr
	Options   Options
}

// Type returns the message's option 53, or 0.
func (m *Message) Type() MessageType {
	if v := m.Options[OptMessageType]; len(v) == 1 {
		return MessageType(v[0])
	}
	return 0
}

// Option is one option to encode, in order.
type Option struct {
	Code byte   `json:"code"`
	Data []byte `json:"data"`
}

// Encode returns the wire form of a client message: options in the given
// order, values longer than 255 bytes split as RFC 3396 says, padded to the
// BOOTP minimum.
func Encode(m *Message, opts []Option) []byte {
	b := make([]byte, headerLen, minMsgLen+64)
	b[0] = m.Op
	b[1] = 1 // Ethernet
	b[2] = byte(len(m.CHAddr))
	binary.BigEndian.PutUint32(b[4:], m.XID)
	binary.BigEndian.PutUint16(b[8:], m.Secs)
	if m.Broadcast {
		binary.BigEndian.PutUint16(b[10:], flagBroadcast)
	}
	putAddr(b[12:], m.CIAddr)
	putAddr(b[16:], m.YIAddr)
	putAddr(b[20:], m.SIAddr)
	putAddr(b[24:], m.GIAddr)
	copy(b[28:44], m.CHAddr)
	b = append(b, magicCookie[:]...)
	for _, o := range opts {
		d := o.Data
		for {
			n := min(len(d), 255)
			b = append(b, o.Code, byte(n))
			b = append(b, d[:n]...)
			d = d[n:]
			if len(d) == 0 {
				break
			}
		}
	}
	b = append(b, OptEnd)
	for len(b) < minMsgLen {
		b = append(b, OptPad)
	}
	return b
}

func putAddr(b []byte, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		copy(b, v[:])
	}
}

func getAddr(b []byte) netip.Addr {
	return netip.AddrFrom4([4]byte(b[:4]))
}

// Decode parses a DHCP message. Options that occur more than once are
// concatenated (RFC 3396); option overload (52) is honoured.
func Decode(b []byte) (*Message, error) {
	if len(b) < headerLen+cookieLen {
		return nil, fmt.Errorf("DHCP message too short: %d bytes", len(b))
	}
	if [4]byte(b[headerLen:headerLen+cookieLen]) != magicCookie {
		return nil, errors.New("not a DHCP message: no magic cookie")
	}
	hlen := int(b[2])
	if hlen > 16 {
		return nil, fmt.Errorf("invalid hardware address length %d", hlen)
	}
	m := &Message{
		Op:        b[0],
		XID:       binary.BigEndian.Uint32(b[4:]),
		Secs:      binary.BigEndian.Uint16(b[8:]),
		Broadcast: binary.BigEndian.Uint16(b[10:])&flagBroadcast != 0,
		CIAddr:    getAddr(b[12:]),
		YIAddr:    getAddr(b[16:]),
		SIAddr:    getAddr(b[20:]),
		GIAddr:    getAddr(b[24:]),
		CHAddr:    net.HardwareAddr(append([]byte(nil), b[28:28+hlen]...)),
		Options:   Options{},
	}
	if err := m.Options.parse(b[headerLen+cookieLen:]); err != nil {
		return nil, err
	}
	if ov := m.Options[OptOverload]; len(ov) == 1 {
		if ov[0]&1 != 0 {
			if err := m.Options.parse(b[fileStart:fileEnd]); err != nil {
				return nil, fmt.Errorf("overloaded file field: %w", err)
			}
		}
		if ov[0]&2 != 0 {
			if err := m.Options.parse(b[snameStart:fileStart]); err != nil {
				return nil, fmt.Errorf("overloaded sname field: %w", err)
			}
		}
	}
	return m, nil
}

func (o Options) parse(b []byte) error {
	for i := 0; i < len(b); {
		code := b[i]
		switch code {
		case OptPad:
			i++
			continue
		case OptEnd:
			return nil
		}
		if i+1 >= len(b) {
			return fmt.Errorf("option %d truncated", code)
		}
		n := int(b[i+1])
		if i+2+n > len(b) {
			return fmt.Errorf("option %d: length %d runs past the message", code, n)
		}
		v := o[code]
		if v == nil {
			v = []byte{} // present, even when empty
		}
		o[code] = append(v, b[i+2:i+2+n]...)
		i += 2 + n
	}
	// A missing end option is tolerated: some servers omit it.
	return nil
}
