package portmap

import (
	"fmt"
	"net"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nftexpr"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
)

// dnat is one installed (or expected) DNAT rule.
type dnat struct {
	nfproto  byte
	protoNum byte
	hostPort uint16
	hostIP   string // "" for any local address
	podIP    string
	ctrPort  uint16
}

func (d dnat) String() string {
	host := "*"
	if d.hostIP != "" {
		host = d.hostIP
	}
	return fmt.Sprintf("proto %d %s:%d -> %s:%d", d.protoNum, host, d.hostPort, d.podIP, d.ctrPort)
}

func dnatRule(f fam, m mapping, pod net.IP, conds []expr.Any) []expr.Any {
	r := nftexpr.Concat(nftexpr.NFProto(f), conds)
	if f.Alen == 16 {
		// The kernel never routes ::1 off the host (IPv6 has no
		// route_localnet): leave [::1]:hostPort to the host rather than
		// black-holing it.
		r = append(r, nftexpr.Addr(f, true, nftexpr.HostNet(net.IPv6loopback), true)...)
	}
	r = append(r, nftexpr.Concat(l4proto(m.protoNum), dport(m.hostPort))...)
	// The host address comes after the port so that decode can tell it
	// from a destination match in the conditions.
	if d := m.daddr(); d != nil {
		r = append(r, nftexpr.Addr(f, true, nftexpr.HostNet(d), false)...)
	}
	return append(r,
		&expr.Immediate{Register: 1, Data: f.Bytes(pod)},
		&expr.Immediate{Register: 2, Data: be16(m.ctrPort)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.NFProto), RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	)
}

// plan is everything an attachment installs.
type plan struct {
	jumps map[string]nftown.Jump
	dnats []dnat
	masq  int  // postrouting rules
	v4    bool // some mapping targets the IPv4 address
	ip4   net.IP
}

func makePlan(p *parsed, ip4, ip6 net.IP) plan {
	pl := plan{jumps: map[string]nftown.Jump{}, ip4: ip4}
	var rules, post [][]expr.Any
	for _, pod := range []net.IP{ip4, ip6} {
		if pod == nil {
			continue
		}
		f := nftexpr.FamOf(pod)
		used := false
		for _, m := range p.maps {
			if !m.appliesTo(f) {
				continue
			}
			used = true
			rules = append(rules, dnatRule(f, m, pod, p.conds[f.NFProto]))
			d := dnat{nfproto: f.NFProto, protoNum: m.protoNum, hostPort: m.hostPort, podIP: pod.String(), ctrPort: m.ctrPort}
			if h := m.daddr(); h != nil {
				d.hostIP = h.String()
			}
			pl.dnats = append(pl.dnats, d)
			if p.snat && p.MasqAll {
				// The postrouting jump already requires a DNATed
				// connection. (ct original proto-dst would pin the host
				// port too, but google/nftables cannot read a ct
				// direction back, which CHECK and GC need.)
				post = append(post, nftexpr.Concat(nftexpr.NFProto(f), nftexpr.Addr(f, true, nftexpr.HostNet(pod), false), l4proto(m.protoNum),
					dport(m.ctrPort), []expr.Any{&expr.Masq{}}))
			}
		}
		if !used {
			continue
		}
		if f.Alen == 4 {
			pl.v4 = true
		}
		if p.snat && !p.MasqAll {
			// Hairpin: the container reached its own host port; without
			// masquerading it would answer itself directly.
			post = append(post, nftexpr.Concat(nftexpr.NFProto(f), nftexpr.Addr(f, false, nftexpr.HostNet(pod), false), nftexpr.Addr(f, true, nftexpr.HostNet(pod), false), []expr.Any{&expr.Masq{}}))
			if f.Alen == 4 {
				// 127.0.0.0/8 may not leave the host: rewrite it.
				lo := net.IPNet{IP: net.IPv4(127, 0, 0, 0), Mask: net.CIDRMask(8, 32)}
				post = append(post, nftexpr.Concat(nftexpr.NFProto(f), nftexpr.Addr(f, false, lo, false), nftexpr.Addr(f, true, nftexpr.HostNet(pod), false), []expr.Any{&expr.Masq{}}))
			}
		}
	}
	if len(rules) > 0 {
		pl.jumps["prerouting"] = nftown.Jump{Match: fibLocal(), Rules: rules}
		pl.jumps["output"] = nftown.Jump{Match: fibLocal(), Rules: rules}
	}
	if len(post) > 0 {
		pl.jumps["postrouting"] = nftown.Jump{Match: nftexpr.CtBits(expr.CtKeySTATUS, ipsDstNAT), Rules: post}
		pl.masq = len(post)
	}
	return pl
}

// conflicts reports another attachment mapping one of our host ports.
func conflicts(own nftown.Attachment, mine []dnat) error {
	c, err := nftables.New()
	if err != nil {
		return cnierr.New(cnierr.Netlink, "nftables: %v", err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return cnierr.New(cnierr.Netlink, "listing nftables chains: %v", err)
	}
	tbl := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	ownChain := own.ChainName("prerouting")
	for _, ch := range chains {
		if ch.Table.Name != TableName || !strings.HasPrefix(ch.Name, "prerouting-") || ch.Name == ownChain {
			continue
		}
		rules, err := c.GetRules(tbl, ch)
		if err != nil {
			if nftexpr.NotFound(err) {
				continue // deleted meanwhile
			}
			return cnierr.New(cnierr.Netlink, "listing rules of %s/%s: %v", TableName, ch.Name, err)
		}
		for _, r := range rules {
			theirs, ok := decode(r)
			if !ok {
				continue
			}
			for _, d := range mine {
				if d.nfproto == theirs.nfproto && d.protoNum == theirs.protoNum && d.hostPort == theirs.hostPort &&
					(d.hostIP == "" || theirs.hostIP == "" || d.hostIP == theirs.hostIP) {
					return cnierr.New(cnierr.InvalidConfig, "host port %d (protocol %d) is already mapped to %s:%d by %s; tripod does not let a later mapping shadow an earlier one",
						d.hostPort, d.protoNum, theirs.podIP, theirs.ctrPort, owner(c, tbl, ch.Name))
				}
			}
		}
	}
	return nil
}

// owner names the attachment whose chain is name, from the comment on its
// jump rule.
func owner(c *nftables.Conn, tbl *nftables.Table, name string) string {
	rules, err := c.GetRules(tbl, &nftables.Chain{Name: "prerouting", Table: tbl})
	if err == nil {
		for _, r := range rules {
			for _, e := range r.Exprs {
				if v, ok := e.(*expr.Verdict); ok && v.Chain == name {
					if s, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
						if f := strings.Fields(s); len(f) == 3 {
							return fmt.Sprintf("container %s interface %s", f[1], f[2])
						}
					}
				}
			}
		}
	}
	return "chain " + name
}

// decode reads a DNAT rule made by dnatRule back.
func decode(r *nftables.Rule) (dnat, bool) {
	var d dnat
	var last string
	seenPort, isNAT := false, false
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Meta:
			switch e.Key {
			case expr.MetaKeyNFPROTO:
				last = "nfproto"
			case expr.MetaKeyL4PROTO:
				last = "l4proto"
			default:
				last = ""
			}
		case *expr.Payload:
			switch {
			case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 2 && e.Len == 2:
				last = "dport"
			case e.Base == expr.PayloadBaseNetworkHeader && seenPort && ((e.Offset == 16 && e.Len == 4) || (e.Offset == 24 && e.Len == 16)):
				last = "daddr"
			default:
				last = ""
			}
		case *expr.Cmp:
			if e.Op == expr.CmpOpEq {
				switch last {
				case "nfproto":
					if len(e.Data) == 1 {
						d.nfproto = e.Data[0]
					}
				case "l4proto":
					if len(e.Data) == 1 {
						d.protoNum = e.Data[0]
					}
				case "dport":
					if len(e.Data) == 2 {
						d.hostPort = uint16(e.Data[0])<<8 | uint16(e.Data[1])
						seenPort = true
					}
				case "daddr":
					d.hostIP = net.IP(e.Data).String()
				}
			}
			last = ""
		case *expr.Immediate:
			switch e.Register {
			case 1:
				d.podIP = net.IP(e.Data).String()
			case 2:
				if len(e.Data) == 2 {
					d.ctrPort = uint16(e.Data[0])<<8 | uint16(e.Data[1])
				}
			}
		case *expr.NAT:
			isNAT = e.Type == expr.NATTypeDestNAT
		default:
			last = ""
		}
	}
	return d, isNAT && seenPort && d.podIP != ""
}
