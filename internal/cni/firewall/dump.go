package firewall

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// ruleRef is what tripod needs of a rule in a chain it does not own: the
// handle to delete it by and the comment that says whose it is.
type ruleRef struct {
	handle  uint64
	comment string
}

// dumpRules lists the rules of one chain reading only their handles and
// comments. google/nftables decodes every expression and fails on some it
// cannot read back (a ct expression with a direction, for one), and a
// foreign table may hold anything: DEL must not depend on that.
func dumpRules(family nftables.TableFamily, table, chain string) ([]ruleRef, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	body := []byte{byte(family), unix.NFNETLINK_V0, 0, 0}
	body = appendAttr(body, unix.NFTA_RULE_TABLE, append([]byte(table), 0))
	body = appendAttr(body, unix.NFTA_RULE_CHAIN, append([]byte(chain), 0))
	msg := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETRULE)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(msg[8:], 1)
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("netlink send: %w", err)
	}
	var out []ruleRef
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("netlink parse: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
						return nil, syscall.Errno(-code)
					}
				}
				continue
			}
			if len(m.Data) < 4 {
				continue
			}
			var r ruleRef
			walkAttrs(m.Data[4:], func(typ uint16, data []byte) {
				switch typ {
				case unix.NFTA_RULE_HANDLE:
					if len(data) == 8 {
						r.handle = binary.BigEndian.Uint64(data)
					}
				case unix.NFTA_RULE_USERDATA:
					r.comment, _ = userdata.GetString(data, userdata.TypeComment)
				}
			})
			out = append(out, r)
		}
	}
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	l := unix.SizeofNlAttr + len(data)
	hdr := make([]byte, unix.SizeofNlAttr)
	binary.NativeEndian.PutUint16(hdr[0:], uint16(l))
	binary.NativeEndian.PutUint16(hdr[2:], typ)
	b = append(append(b, hdr...), data...)
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func walkAttrs(b []byte, fn func(typ uint16, data []byte)) {
	for len(b) >= unix.SizeofNlAttr {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < unix.SizeofNlAttr || l > len(b) {
			return
		}
		fn(typ, b[unix.SizeofNlAttr:l])
		adv := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if adv > len(b) {
			return
		}
		b = b[adv:]
	}
}
