package portmap

import (
	"encoding/binary"
	"net"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// fam is one IP family as the rules need it: the nfproto value an inet
// table matches on and where the addresses sit in the network header.
type fam struct {
	name     string
	nfproto  byte
	saddrOff uint32
	daddrOff uint32
	alen     uint32
}

func v4() fam {
	return fam{name: "IPv4", nfproto: unix.NFPROTO_IPV4, saddrOff: 12, daddrOff: 16, alen: 4}
}

func v6() fam {
	return fam{name: "IPv6", nfproto: unix.NFPROTO_IPV6, saddrOff: 8, daddrOff: 24, alen: 16}
}

func famOf(ip net.IP) fam {
	if ip.To4() != nil {
		return v4()
	}
	return v6()
}

// bytes returns ip in the family's wire length.
func (f fam) bytes(ip net.IP) []byte {
	if f.alen == 4 {
		return ip.To4()
	}
	return ip.To16()
}

func nfproto(f fam) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
	}
}

// addr matches the source (dst false) or destination address against n;
// a mask shorter than the address adds a bitwise step.
func addr(f fam, dst bool, n net.IPNet, negate bool) []expr.Any {
	off := f.saddrOff
	if dst {
		off = f.daddrOff
	}
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.alen}}
	ones, bits := n.Mask.Size()
	if ones != bits {
		mask := net.IP(n.Mask)
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: f.alen, Mask: f.bytes(mask), Xor: make([]byte, f.alen)})
	}
	op := expr.CmpOpEq
	if negate {
		op = expr.CmpOpNeq
	}
	return append(out, &expr.Cmp{Op: op, Register: 1, Data: f.bytes(n.IP.Mask(n.Mask))})
}

func hostNet(ip net.IP) net.IPNet {
	f := famOf(ip)
	return net.IPNet{IP: ip, Mask: net.CIDRMask(int(f.alen)*8, int(f.alen)*8)}
}

// ifname matches the input interface name; a trailing "+" matches a prefix
// as in iptables.
func ifname(name string, negate bool) []expr.Any {
	var data []byte
	if prefix, ok := strings.CutSuffix(name, "+"); ok && prefix != "" {
		data = []byte(prefix)
	} else {
		data = make([]byte, unix.IFNAMSIZ)
		copy(data, name)
	}
	op := expr.CmpOpEq
	if negate {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// dport matches the transport destination port (the same offset for tcp,
// udp and sctp).
func dport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(port)},
	}
}

// fibLocal matches packets whose destination is an address of this host.
func fibLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

// ipsDstNAT is IPS_DST_NAT from linux/netfilter/nf_conntrack_common.h.
const ipsDstNAT = 1 << 5

// ctDNAT matches connections whose destination was rewritten.
func ctDNAT() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

func be16(v uint16) []byte {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, v)
	return b
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
