// Package nftexpr builds the nftables expressions the firewall and
// portmap plugins both match with, in inet tables.
package nftexpr

import (
	"errors"
	"net"
	"strings"
	"syscall"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Fam is one IP family as rules need it: the nfproto value an inet table
// matches on and where the addresses sit in the network header.
type Fam struct {
	Name     string
	NFProto  byte
	SaddrOff uint32
	DaddrOff uint32
	Alen     uint32
}

// V4 is IPv4.
func V4() Fam {
	return Fam{Name: "IPv4", NFProto: unix.NFPROTO_IPV4, SaddrOff: 12, DaddrOff: 16, Alen: 4}
}

// V6 is IPv6.
func V6() Fam {
	return Fam{Name: "IPv6", NFProto: unix.NFPROTO_IPV6, SaddrOff: 8, DaddrOff: 24, Alen: 16}
}

// FamOf is ip's family.
func FamOf(ip net.IP) Fam {
	if ip.To4() != nil {
		return V4()
	}
	return V6()
}

// Bytes returns ip in the family's wire length.
func (f Fam) Bytes(ip net.IP) []byte {
	if f.Alen == 4 {
		return ip.To4()
	}
	return ip.To16()
}

// NFProto matches packets of family f, as an inet table must before it
// reads a network header.
func NFProto(f Fam) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.NFProto}},
	}
}

// Addr matches the source (dst false) or destination address against n;
// a mask shorter than the address adds a bitwise step, so a host address
// is laid out exactly as iptables-nft writes -s/-d ADDR/32 (or /128).
func Addr(f Fam, dst bool, n net.IPNet, negate bool) []expr.Any {
	off := f.SaddrOff
	if dst {
		off = f.DaddrOff
	}
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.Alen}}
	ones, bits := n.Mask.Size()
	if ones != bits {
		mask := net.IP(n.Mask)
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: f.Alen, Mask: f.Bytes(mask), Xor: make([]byte, f.Alen)})
	}
	op := expr.CmpOpEq
	if negate {
		op = expr.CmpOpNeq
	}
	return append(out, &expr.Cmp{Op: op, Register: 1, Data: f.Bytes(n.IP.Mask(n.Mask))})
}

// HostNet is ip as a host network (/32 or /128).
func HostNet(ip net.IP) net.IPNet {
	f := FamOf(ip)
	return net.IPNet{IP: ip, Mask: net.CIDRMask(int(f.Alen)*8, int(f.Alen)*8)}
}

// CtBits matches a conntrack key (state or status) having any bit of mask.
func CtBits(key expr.CtKey, mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: key},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// Concat joins expression lists into one rule.
func Concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// NotFound reports ENOENT from the kernel. google/nftables formats the
// netlink error into its own (%v), so errors.Is alone cannot see it.
func NotFound(err error) bool {
	return errors.Is(err, syscall.ENOENT) || strings.HasSuffix(err.Error(), syscall.ENOENT.Error())
}
