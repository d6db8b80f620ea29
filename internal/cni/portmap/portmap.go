// Package portmap is the portmap CNI plugin: it forwards host ports to a
// container, as the reference plugin does, with nftables rules kept per
// attachment in tripod's own table (see nftown), so DEL and GC remove them
// without knowing the container's address.
//
// For every IP family the container has, the attachment gets:
//
//   - prerouting and output chains (nat, dstnat priority), jumped to only for
//     packets addressed to this host (fib daddr type local): one DNAT rule
//     per mapping, restricted to hostIP when one is given;
//   - a postrouting chain (nat, srcnat priority), jumped to only for DNATed
//     connections, masquerading hairpin traffic (the container reaching its
//     own host port) and, for IPv4, connections from 127.0.0.0/8, or every
//     mapped connection with masqAll. No packet mark is used.
//
// A host port already mapped by another attachment is refused (code 7)
// rather than silently shadowed as the reference does.
package portmap

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
)

// Plugin returns the portmap plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "portmap", Funcs: plugin.Funcs{Add: add, Del: del, Check: check, GC: gc, Status: status}}
}

// TableName is the inet table holding every attachment's port mappings.
const TableName = "tripod_portmap"

// Table returns the nftables table portmap keeps its rules in.
func Table() nftown.Table {
	return nftown.Table{
		Name:   TableName,
		Family: nftables.TableFamilyINet,
		Chains: []nftown.BaseChain{
			{Name: "prerouting", Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest},
			{Name: "output", Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest},
			{Name: "postrouting", Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource},
		},
	}
}

type entry struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

type conf struct {
	types.PluginConf
	SNAT *bool `json:"snat,omitempty"`
	// MarkMasqBit and ExternalSetMarkChain are accepted for compatibility
	// and validated as the reference does, but unused: masquerading is
	// decided from conntrack in tripod's own postrouting chain, so no mark
	// bit is claimed and no external (iptables) chain is called.
	MarkMasqBit          *int      `json:"markMasqBit,omitempty"`
	ExternalSetMarkChain *string   `json:"externalSetMarkChain,omitempty"`
	MasqAll              bool      `json:"masqAll,omitempty"`
	ConditionsV4         *[]string `json:"conditionsV4,omitempty"`
	ConditionsV6         *[]string `json:"conditionsV6,omitempty"`
	RuntimeConfig        struct {
		PortMaps []entry `json:"portMappings,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// mapping is a validated portMappings entry.
type mapping struct {
	index    int
	proto    string
	protoNum byte
	hostPort uint16
	ctrPort  uint16
	// hostIP is nil for "every local address"; an unspecified address
	// (0.0.0.0, ::) limits the mapping to its family only.
	hostIP net.IP
}

func (m mapping) appliesTo(f fam) bool { return m.hostIP == nil || famOf(m.hostIP) == f }

// daddr is the destination the mapping is restricted to, if any.
func (m mapping) daddr() net.IP {
	if m.hostIP == nil || m.hostIP.IsUnspecified() {
		return nil
	}
	return m.hostIP
}

func (m mapping) String() string {
	host := "*"
	if d := m.daddr(); d != nil {
		host = d.String()
	} else if m.hostIP != nil {
		host = m.hostIP.String()
	}
	return fmt.Sprintf("runtimeConfig.portMappings[%d] (%s %s:%d -> %d)", m.index, m.proto, host, m.hostPort, m.ctrPort)
}

// overlaps reports whether two mappings would capture the same packets.
func (m mapping) overlaps(o mapping) bool {
	if m.protoNum != o.protoNum || m.hostPort != o.hostPort {
		return false
	}
	if m.hostIP == nil || o.hostIP == nil {
		return true
	}
	if famOf(m.hostIP) != famOf(o.hostIP) {
		return false
	}
	return m.hostIP.IsUnspecified() || o.hostIP.IsUnspecified() || m.hostIP.Equal(o.hostIP)
}

type parsed struct {
	conf
	snat  bool
	maps  []mapping
	conds map[byte][]expr.Any // by nfproto
	prev  *current.Result
}

func protocol(name string) (byte, bool) {
	switch name {
	case "tcp":
		return unix.IPPROTO_TCP, true
	case "udp":
		return unix.IPPROTO_UDP, true
	case "sctp":
		return unix.IPPROTO_SCTP, true
	}
	return 0, false
}

func parse(stdin []byte) (*parsed, error) {
	p := &parsed{}
	if err := cnierr.Decode(stdin, &p.conf); err != nil {
		return nil, err
	}
	if p.RawPrevResult != nil {
		if err := version.ParsePrevResult(&p.PluginConf); err != nil {
			return nil, cnierr.New(cnierr.DecodingFailure, "prevResult: %v", err)
		}
		prev, err := current.NewResultFromResult(p.PrevResult)
		if err != nil {
			return nil, cnierr.New(cnierr.DecodingFailure, "prevResult: %v", err)
		}
		p.prev = prev
	}
	p.snat = p.SNAT == nil || *p.SNAT
	if p.MarkMasqBit != nil && p.ExternalSetMarkChain != nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "markMasqBit and externalSetMarkChain are mutually exclusive")
	}
	if p.MarkMasqBit != nil && (*p.MarkMasqBit < 0 || *p.MarkMasqBit > 31) {
		return nil, cnierr.New(cnierr.InvalidConfig, "markMasqBit %d is out of range 0-31", *p.MarkMasqBit)
	}
	p.conds = map[byte][]expr.Any{}
	for _, c := range []struct {
		field string
		f     fam
		list  *[]string
	}{{"conditionsV4", v4(), p.ConditionsV4}, {"conditionsV6", v6(), p.ConditionsV6}} {
		if c.list == nil {
			continue
		}
		e, err := parseConditions(c.field, c.f, *c.list)
		if err != nil {
			return nil, err
		}
		p.conds[c.f.nfproto] = e
	}
	for i, e := range p.RuntimeConfig.PortMaps {
		m, err := validate(i, e)
		if err != nil {
			return nil, err
		}
		for _, o := range p.maps {
			if m.overlaps(o) {
				return nil, cnierr.New(cnierr.InvalidConfig, "%s overlaps %s", m, o)
			}
		}
		p.maps = append(p.maps, m)
	}
	return p, nil
}

func validate(i int, e entry) (mapping, error) {
	name := fmt.Sprintf("runtimeConfig.portMappings[%d]", i)
	if e.HostPort < 1 || e.HostPort > 65535 {
		return mapping{}, cnierr.New(cnierr.InvalidConfig, "%s: hostPort %d is out of range 1-65535", name, e.HostPort)
	}
	if e.ContainerPort < 1 || e.ContainerPort > 65535 {
		return mapping{}, cnierr.New(cnierr.InvalidConfig, "%s: containerPort %d is out of range 1-65535", name, e.ContainerPort)
	}
	proto := strings.ToLower(e.Protocol)
	if proto == "" {
		proto = "tcp"
	}
	num, ok := protocol(proto)
	if !ok {
		return mapping{}, cnierr.New(cnierr.InvalidConfig, "%s: protocol %q is not tcp, udp or sctp", name, e.Protocol)
	}
	m := mapping{index: i, proto: proto, protoNum: num, hostPort: uint16(e.HostPort), ctrPort: uint16(e.ContainerPort)}
	if e.HostIP != "" {
		m.hostIP = net.ParseIP(e.HostIP)
		if m.hostIP == nil {
			return mapping{}, cnierr.New(cnierr.InvalidConfig, "%s: hostIP %q is not an IP address", name, e.HostIP)
		}
		if v := m.hostIP.To4(); v != nil {
			m.hostIP = v
		}
	}
	return m, nil
}

// podIPs picks the container's first IPv4 and IPv6 address on ifName, as
// the reference does: addresses of host-side interfaces are skipped.
func podIPs(r *current.Result, ifName string) (ip4, ip6 net.IP) {
	for _, ip := range r.IPs {
		if ip.Interface != nil {
			i := *ip.Interface
			if i >= 0 && i < len(r.Interfaces) && (r.Interfaces[i].Sandbox == "" || r.Interfaces[i].Name != ifName) {
				continue
			}
		}
		if v := ip.Address.IP.To4(); v != nil {
			if ip4 == nil {
				ip4 = v
			}
		} else if ip6 == nil {
			ip6 = ip.Address.IP.To16()
		}
	}
	return ip4, ip6
}

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
	r := concat(nfproto(f), conds)
	if f.alen == 16 {
		// The kernel never routes ::1 off the host (IPv6 has no
		// route_localnet): leave [::1]:hostPort to the host rather than
		// black-holing it.
		r = append(r, addr(f, true, hostNet(net.IPv6loopback), true)...)
	}
	r = append(r, concat(l4proto(m.protoNum), dport(m.hostPort))...)
	// The host address comes after the port so that decode can tell it
	// from a destination match in the conditions.
	if d := m.daddr(); d != nil {
		r = append(r, addr(f, true, hostNet(d), false)...)
	}
	return append(r,
		&expr.Immediate{Register: 1, Data: f.bytes(pod)},
		&expr.Immediate{Register: 2, Data: be16(m.ctrPort)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: 1, RegProtoMin: 2, Specified: true},
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
		f := famOf(pod)
		used := false
		for _, m := range p.maps {
			if !m.appliesTo(f) {
				continue
			}
			used = true
			rules = append(rules, dnatRule(f, m, pod, p.conds[f.nfproto]))
			d := dnat{nfproto: f.nfproto, protoNum: m.protoNum, hostPort: m.hostPort, podIP: pod.String(), ctrPort: m.ctrPort}
			if h := m.daddr(); h != nil {
				d.hostIP = h.String()
			}
			pl.dnats = append(pl.dnats, d)
			if p.snat && p.MasqAll {
				// The postrouting jump already requires a DNATed
				// connection. (ct original proto-dst would pin the host
				// port too, but google/nftables cannot read a ct
				// direction back, which CHECK and GC need.)
				post = append(post, concat(nfproto(f), addr(f, true, hostNet(pod), false), l4proto(m.protoNum),
					dport(m.ctrPort), []expr.Any{&expr.Masq{}}))
			}
		}
		if !used {
			continue
		}
		if f.alen == 4 {
			pl.v4 = true
		}
		if p.snat && !p.MasqAll {
			// Hairpin: the container reached its own host port; without
			// masquerading it would answer itself directly.
			post = append(post, concat(nfproto(f), addr(f, false, hostNet(pod), false), addr(f, true, hostNet(pod), false), []expr.Any{&expr.Masq{}}))
			if f.alen == 4 {
				// 127.0.0.0/8 may not leave the host: rewrite it.
				lo := net.IPNet{IP: net.IPv4(127, 0, 0, 0), Mask: net.CIDRMask(8, 32)}
				post = append(post, concat(nfproto(f), addr(f, false, lo, false), addr(f, true, hostNet(pod), false), []expr.Any{&expr.Masq{}}))
			}
		}
	}
	if len(rules) > 0 {
		pl.jumps["prerouting"] = nftown.Jump{Match: fibLocal(), Rules: rules}
		pl.jumps["output"] = nftown.Jump{Match: fibLocal(), Rules: rules}
	}
	if len(post) > 0 {
		pl.jumps["postrouting"] = nftown.Jump{Match: ctDNAT(), Rules: post}
		pl.masq = len(post)
	}
	return pl
}

func attachment(p *parsed, args *skel.CmdArgs) nftown.Attachment {
	return nftown.Attachment{Network: p.Name, ContainerID: args.ContainerID, IfName: args.IfName}
}

func add(_ context.Context, args *skel.CmdArgs) (types.Result, error) {
	p, err := parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	if p.prev == nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "portmap is a chained plugin: the config has no prevResult")
	}
	if len(p.maps) == 0 {
		return p.prev, nil
	}
	ip4, ip6 := podIPs(p.prev, args.IfName)
	if ip4 == nil && ip6 == nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "prevResult has no IP address on container interface %s to map ports to", args.IfName)
	}
	pl := makePlan(p, ip4, ip6)
	if len(pl.dnats) == 0 {
		// Only mappings restricted to the other family: nothing applies,
		// as with the reference.
		return p.prev, nil
	}
	tbl, att := Table(), attachment(p, args)
	if err := tbl.Set(att, pl.jumps); err != nil {
		return nil, cnierr.Wrap(cnierr.Netlink, err, "installing port mappings")
	}
	if err := afterSet(p, att, pl); err != nil {
		if rerr := tbl.Remove(att); rerr != nil {
			return nil, cnierr.Wrap(cnierr.Netlink, err, "undoing the rules after the failure also failed (%v)", rerr)
		}
		return nil, err
	}
	return p.prev, nil
}

// afterSet finishes an ADD once the rules are in: a conflicting mapping of
// another attachment, found after the commit so that two racing ADDs cannot
// both pass, undoes ours.
func afterSet(p *parsed, att nftown.Attachment, pl plan) error {
	if err := conflicts(att, pl.dnats); err != nil {
		return err
	}
	if p.snat && pl.v4 {
		if err := routeLocalnet(pl.ip4, true); err != nil {
			return err
		}
	}
	flushUDP(p.maps)
	return nil
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
			if notFound(err) {
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

// routeLocalnet lets 127.0.0.0/8 sources be routed out of the interface
// towards the container, which DNAT of connections to 127.0.0.1:hostPort
// needs (the masquerade rule then rewrites them). Only that interface is
// touched, as the reference does; nothing is recorded or restored, since
// the interface (a bridge or a host-side veth) belongs to the network.
func routeLocalnet(pod net.IP, set bool) error {
	routes, err := netlink.RouteGet(pod)
	if err != nil || len(routes) == 0 {
		return nil // no route: nothing can reach the container anyway
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return cnierr.New(cnierr.Netlink, "finding the interface towards %s: %v", pod, err)
	}
	name := link.Attrs().Name
	path := "/proc/sys/net/ipv4/conf/" + name + "/route_localnet"
	cur, err := readSysctl(path)
	if err != nil {
		return cnierr.New(cnierr.IOFailure, "reading %s: %v", path, err)
	}
	if cur == "1" {
		return nil
	}
	if !set {
		return cnierr.New(cnierr.InvalidConfig, "route_localnet is %s on %s, the interface towards %s: connections to 127.0.0.1:hostPort cannot reach the container", cur, name, pod)
	}
	if err := writeSysctl(path, "1"); err != nil {
		return cnierr.New(cnierr.IOFailure, "enabling route_localnet on %s: %v", name, err)
	}
	return nil
}

// flushUDP drops conntrack entries for the mapped UDP host ports: a client
// that sent before the mapping existed would otherwise keep talking to the
// old destination for as long as it keeps sending. Best effort, as in the
// reference.
func flushUDP(maps []mapping) {
	var filters []netlink.CustomConntrackFilter
	for _, m := range maps {
		if m.protoNum != unix.IPPROTO_UDP {
			continue
		}
		f := &netlink.ConntrackFilter{}
		if f.AddProtocol(unix.IPPROTO_UDP) != nil || f.AddPort(netlink.ConntrackOrigDstPort, m.hostPort) != nil {
			continue
		}
		filters = append(filters, f)
	}
	if len(filters) == 0 {
		return
	}
	for _, family := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		_, _ = netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, filters...)
	}
}

func del(_ context.Context, args *skel.CmdArgs) error {
	p, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	// Always remove: the runtime may omit runtimeConfig or prevResult on
	// DEL, and the chains are found from the attachment alone.
	if err := Table().Remove(attachment(p, args)); err != nil {
		return cnierr.Wrap(cnierr.Netlink, err, "removing port mappings")
	}
	return nil
}

func check(_ context.Context, args *skel.CmdArgs) error {
	p, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	if p.prev == nil {
		return cnierr.New(cnierr.InvalidConfig, "portmap is a chained plugin: the config has no prevResult")
	}
	if len(p.maps) == 0 {
		return nil
	}
	ip4, ip6 := podIPs(p.prev, args.IfName)
	pl := makePlan(p, ip4, ip6)
	if len(pl.dnats) == 0 {
		return nil
	}
	att := attachment(p, args)
	c, err := nftables.New()
	if err != nil {
		return cnierr.New(cnierr.Netlink, "nftables: %v", err)
	}
	tbl := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	for _, base := range []string{"prerouting", "output"} {
		rules, err := chainRules(c, tbl, att.ChainName(base))
		if err != nil {
			return err
		}
		have := map[dnat]bool{}
		for _, r := range rules {
			if d, ok := decode(r); ok {
				have[d] = true
			}
		}
		for _, d := range pl.dnats {
			if !have[d] {
				return cnierr.New(cnierr.InvalidConfig, "port mapping %s is missing from chain %s/%s", d, TableName, att.ChainName(base))
			}
		}
	}
	if pl.masq > 0 {
		rules, err := chainRules(c, tbl, att.ChainName("postrouting"))
		if err != nil {
			return err
		}
		if len(rules) != pl.masq {
			return cnierr.New(cnierr.InvalidConfig, "chain %s/%s has %d masquerade rules, want %d", TableName, att.ChainName("postrouting"), len(rules), pl.masq)
		}
		if pl.v4 {
			return routeLocalnet(pl.ip4, false)
		}
	}
	return nil
}

func chainRules(c *nftables.Conn, tbl *nftables.Table, name string) ([]*nftables.Rule, error) {
	rules, err := c.GetRules(tbl, &nftables.Chain{Name: name, Table: tbl})
	if err != nil {
		if notFound(err) {
			return nil, cnierr.New(cnierr.InvalidConfig, "chain %s/%s is missing: the port mappings of this attachment are not installed", tbl.Name, name)
		}
		return nil, cnierr.New(cnierr.Netlink, "listing rules of %s/%s: %v", tbl.Name, name, err)
	}
	return rules, nil
}

// notFound reports ENOENT from the kernel. google/nftables formats the
// netlink error into its own (%v), so errors.Is alone cannot see it.
func notFound(err error) bool {
	return errors.Is(err, syscall.ENOENT) || strings.HasSuffix(err.Error(), syscall.ENOENT.Error())
}

func gc(_ context.Context, args *skel.CmdArgs) error {
	p, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	keep := make([]nftown.Attachment, 0, len(p.ValidAttachments))
	for _, a := range p.ValidAttachments {
		keep = append(keep, nftown.Attachment{Network: p.Name, ContainerID: a.ContainerID, IfName: a.IfName})
	}
	if err := Table().GC(p.Name, keep); err != nil {
		return cnierr.Wrap(cnierr.Netlink, err, "garbage-collecting port mappings")
	}
	return nil
}

// status reports whether nftables can be used at all.
func status(_ context.Context, args *skel.CmdArgs) error {
	if _, err := parse(args.StdinData); err != nil {
		return err
	}
	c, err := nftables.New()
	if err == nil {
		_, err = c.ListTablesOfFamily(nftables.TableFamilyINet)
	}
	if err != nil {
		return cnierr.New(cnierr.NotAvailable, "nftables is not usable: %v", err)
	}
	return nil
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

func writeSysctl(path, v string) error {
	return os.WriteFile(path, []byte(v), 0o644)
}
