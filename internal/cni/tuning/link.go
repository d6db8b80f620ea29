package tuning

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// linkAttrs are the interface attributes tuning reads and changes. They
// are fetched and set with one raw netlink message each, rather than the
// library's one-request-per-attribute setters.
type linkAttrs struct {
	Index  int32
	MTU    int
	MinMTU int // 0 when the kernel does not say
	MaxMTU int
	TxQLen int
	Addr   net.HardwareAddr
	Flags  uint32 // ifi_flags: promisc and allmulti as the user set them
}

func (l *linkAttrs) promisc() bool  { return l.Flags&unix.IFF_PROMISC != 0 }
func (l *linkAttrs) allmulti() bool { return l.Flags&unix.IFF_ALLMULTI != 0 }

var errNoLink = errors.New("no such interface")

// getLink reads the attributes of the named interface in the current
// network namespace.
func getLink(name string) (*linkAttrs, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if errors.Is(err, unix.ENODEV) || (err == nil && len(msgs) == 0) {
		return nil, errNoLink
	}
	if err != nil {
		return nil, err
	}
	m := msgs[0]
	if len(m) < unix.SizeofIfInfomsg {
		return nil, fmt.Errorf("short RTM_NEWLINK message")
	}
	info := nl.DeserializeIfInfomsg(m)
	attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfInfomsg:])
	if err != nil {
		return nil, err
	}
	l := &linkAttrs{Index: info.Index, Flags: info.Flags}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFLA_MTU:
			l.MTU = int(nl.NativeEndian().Uint32(a.Value))
		case unix.IFLA_MIN_MTU:
			l.MinMTU = int(nl.NativeEndian().Uint32(a.Value))
		case unix.IFLA_MAX_MTU:
			l.MaxMTU = int(nl.NativeEndian().Uint32(a.Value))
		case unix.IFLA_TXQLEN:
			l.TxQLen = int(nl.NativeEndian().Uint32(a.Value))
		case unix.IFLA_ADDRESS:
			l.Addr = append(net.HardwareAddr(nil), a.Value...)
		}
	}
	return l, nil
}

// linkChange is a set of attribute changes; nil fields are left alone.
type linkChange struct {
	MTU      *int
	TxQLen   *int
	Addr     net.HardwareAddr
	Promisc  *bool
	Allmulti *bool
}

func (c *linkChange) empty() bool {
	return c.MTU == nil && c.TxQLen == nil && c.Addr == nil && c.Promisc == nil && c.Allmulti == nil
}

// setLink applies c to the interface with one RTM_SETLINK. Promiscuous and
// all-multicast modes go through ifi_flags/ifi_change, which the kernel
// treats as the user's setting (not the counted references that bridges
// or packet sockets hold).
func setLink(index int32, c *linkChange) error {
	if c.empty() {
		return nil
	}
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = index
	setFlag := func(on *bool, flag uint32) {
		if on == nil {
			return
		}
		msg.Change |= flag
		if *on {
			msg.Flags |= flag
		}
	}
	setFlag(c.Promisc, unix.IFF_PROMISC)
	setFlag(c.Allmulti, unix.IFF_ALLMULTI)
	req.AddData(msg)
	if c.Addr != nil {
		req.AddData(nl.NewRtAttr(unix.IFLA_ADDRESS, []byte(c.Addr)))
	}
	if c.MTU != nil {
		req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(*c.MTU))))
	}
	if c.TxQLen != nil {
		req.AddData(nl.NewRtAttr(unix.IFLA_TXQLEN, nl.Uint32Attr(uint32(*c.TxQLen))))
	}
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// setLinkUp sets or clears IFF_UP.
func setLinkUp(index int32, up bool) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = index
	msg.Change = unix.IFF_UP
	if up {
		msg.Flags = unix.IFF_UP
	}
	req.AddData(msg)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// applyLink sets c on l. A device that refuses a MAC change while up
// (EBUSY: no live address change) is taken down for it and brought back.
func applyLink(l *linkAttrs, c *linkChange) error {
	err := setLink(l.Index, c)
	if !errors.Is(err, unix.EBUSY) || c.Addr == nil || l.Flags&unix.IFF_UP == 0 {
		return err
	}
	if err := setLinkUp(l.Index, false); err != nil {
		return err
	}
	err = setLink(l.Index, c)
	if uerr := setLinkUp(l.Index, true); err == nil {
		err = uerr
	}
	return err
}
