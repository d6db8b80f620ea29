package firewall

import (
	"net"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/nftexpr"
)

// addr compares the source (dst false) or destination address with ip,
// laid out exactly as iptables-nft writes -s/-d ADDR/32 (or /128).
func addr(ip net.IP, dst bool, negate bool) []expr.Any {
	return nftexpr.Addr(nftexpr.FamOf(ip), dst, nftexpr.HostNet(ip), negate)
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
