package firewall

import (
	"net"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// fam is one IP family as the rules need it.
type fam struct {
	nfproto  byte
	saddrOff uint32
	daddrOff uint32
	alen     uint32
}

func famOf(ip net.IP) fam {
	if ip.To4() != nil {
		return fam{nfproto: unix.NFPROTO_IPV4, saddrOff: 12, daddrOff: 16, alen: 4}
	}
	return fam{nfproto: unix.NFPROTO_IPV6, saddrOff: 8, daddrOff: 24, alen: 16}
}

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

// addr compares the source (dst false) or destination address with ip,
// laid out exactly as iptables-nft writes -s/-d ADDR/32 (or /128).
func addr(ip net.IP, dst bool, negate bool) []expr.Any {
	f := famOf(ip)
	off := f.saddrOff
	if dst {
		off = f.daddrOff
	}
	op := expr.CmpOpEq
	if negate {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.alen},
		&expr.Cmp{Op: op, Register: 1, Data: f.bytes(ip)},
	}
}

func ifnameData(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func iface(out bool, name string, negate bool) []expr.Any {
	key := expr.MetaKeyIIFNAME
	if out {
		key = expr.MetaKeyOIFNAME
	}
	op := expr.CmpOpEq
	if negate {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifnameData(name)},
	}
}

// ctMask matches a conntrack key (state or status) having any bit of mask.
func ctMask(key expr.CtKey, mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: key},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// ipsDstNAT is IPS_DST_NAT from linux/netfilter/nf_conntrack_common.h.
const ipsDstNAT = 1 << 5

// xt_conntrack state bits (linux/netfilter/xt_conntrack.h).
const (
	xtStateEstablished = 1 << 1
	xtStateRelated     = 1 << 2
	xtStateDNAT        = 1 << 7
)

// xtReplies is iptables' "-m conntrack --ctstate RELATED,ESTABLISHED,DNAT":
// in a table iptables-nft manages, a native ct expression would make
// iptables refuse to list the chain, so rules there use the xt match
// iptables-nft itself writes.
func xtReplies() []expr.Any {
	return []expr.Any{&expr.Match{Name: "conntrack", Rev: 3, Info: &xt.ConntrackMtinfo3{
		ConntrackMtinfo2: xt.ConntrackMtinfo2{
			ConntrackMtinfoBase: xt.ConntrackMtinfoBase{MatchFlags: uint16(xt.ConntrackState)},
			StateMask:           xtStateEstablished | xtStateRelated | xtStateDNAT,
		},
	}}}
}

func counted(k expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: k}}
}

func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
