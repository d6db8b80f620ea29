// Package firewall is the firewall CNI plugin: it lets a container's
// forwarded traffic through a host whose firewall would drop it, and
// optionally isolates containers of different bridges, with the reference
// plugin's configuration.
//
// Whatever "backend" says (iptables, firewalld, nftables), tripod uses
// nftables over netlink:
//
//   - Table inet tripod_filter, base chain "forward" (filter hook, priority
//     0), holds one chain per attachment (see nftown): the container's
//     traffic first jumps to the admin chain (iptablesAdminChainName,
//     default CNI-ADMIN, a regular chain of tripod_filter that tripod
//     creates empty and never edits), then meets the ingressPolicy drops.
//   - Every other table's forward base chain with policy drop (ip, ip6 and
//     inet families) gets accept rules for the container appended, tagged
//     with the attachment (foreign.go); "foreignChains": "none" disables it.
//
// Drops made by iptables-legacy (x_tables) are invisible over nftables and
// cannot be overridden: use iptables-nft, or allow the traffic there.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nftexpr"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
)

// Plugin returns the firewall plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "firewall", Funcs: plugin.Funcs{Add: add, Del: del, Check: check, GC: gc, Status: status}}
}

// TableName is tripod's own filter table.
const TableName = "tripod_filter"

// Table returns the nftables table the firewall keeps its chains in.
func Table() nftown.Table {
	return nftown.Table{
		Name:   TableName,
		Family: nftables.TableFamilyINet,
		Chains: []nftown.BaseChain{
			{Name: "forward", Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter},
		},
	}
}

// Ingress policies of the reference plugin.
const (
	policyOpen       = "open"
	policySameBridge = "same-bridge"
	policyIsolated   = "isolated"
)

const defaultAdminChain = "CNI-ADMIN"

type conf struct {
	types.PluginConf
	// Backend is accepted for compatibility: tripod always uses nftables.
	Backend                string `json:"backend,omitempty"`
	IptablesAdminChainName string `json:"iptablesAdminChainName,omitempty"`
	// FirewalldZone is accepted and ignored: no firewalld zone is used.
	FirewalldZone string `json:"firewalldZone,omitempty"`
	IngressPolicy string `json:"ingressPolicy,omitempty"`
	// ForeignChains is "auto" (the default: accept the container's traffic
	// in other tables' forward chains with policy drop) or "none".
	ForeignChains string `json:"foreignChains,omitempty"`
}

type parsed struct {
	conf
	admin   string
	foreign bool
	prev    *current.Result
}

func parse(stdin []byte) (*parsed, error) {
	p := &parsed{}
	if err := cnierr.Decode(stdin, &p.conf); err != nil {
		return nil, err
	}
	prev, err := plugin.PrevResult(&p.PluginConf)
	if err != nil {
		return nil, err
	}
	p.prev = prev
	switch p.Backend {
	case "", "iptables", "firewalld", "nftables":
	default:
		return nil, cnierr.New(cnierr.InvalidConfig, "backend %q is not iptables, firewalld or nftables", p.Backend)
	}
	switch p.IngressPolicy {
	case "":
		p.IngressPolicy = policyOpen
	case policyOpen, policySameBridge, policyIsolated:
	default:
		return nil, cnierr.New(cnierr.InvalidConfig, "ingressPolicy %q is not open, same-bridge or isolated", p.IngressPolicy)
	}
	switch p.ForeignChains {
	case "", "auto":
		p.foreign = true
	case "none":
	default:
		return nil, cnierr.New(cnierr.InvalidConfig, "foreignChains %q is not auto or none", p.ForeignChains)
	}
	p.admin = p.IptablesAdminChainName
	if p.admin == "" {
		p.admin = defaultAdminChain
	}
	if p.admin == "forward" || strings.HasPrefix(p.admin, "forward-") || len(p.admin) > 255 || strings.ContainsAny(p.admin, "\x00") {
		return nil, cnierr.New(cnierr.InvalidConfig, "iptablesAdminChainName %q cannot name a chain of table %s", p.admin, TableName)
	}
	return p, nil
}

// containerIPs are the prevResult addresses of the container's interfaces
// (those with a sandbox), or of no interface in particular.
func containerIPs(r *current.Result) []net.IP {
	var out []net.IP
	for _, ip := range r.IPs {
		if ip.Interface != nil {
			i := *ip.Interface
			if i >= 0 && i < len(r.Interfaces) && r.Interfaces[i].Sandbox == "" {
				continue
			}
		}
		if v := ip.Address.IP.To4(); v != nil {
			out = append(out, v)
		} else if ip.Address.IP != nil {
			out = append(out, ip.Address.IP.To16())
		}
	}
	return out
}

// bridgeOf finds the bridge the container hangs off: a host-side interface
// of prevResult that is a bridge, or the bridge a host-side veth is
// enslaved to.
func bridgeOf(r *current.Result) (string, error) {
	var tried []string
	for _, ifc := range r.Interfaces {
		if ifc.Sandbox != "" || ifc.Name == "" {
			continue
		}
		tried = append(tried, ifc.Name)
		l, err := netlink.LinkByName(ifc.Name)
		if err != nil {
			continue
		}
		if l.Type() == "bridge" {
			return l.Attrs().Name, nil
		}
		if m := l.Attrs().MasterIndex; m != 0 {
			if br, err := netlink.LinkByIndex(m); err == nil && br.Type() == "bridge" {
				return br.Attrs().Name, nil
			}
		}
	}
	return "", fmt.Errorf("no bridge among the host-side interfaces of prevResult %v: chain firewall after the bridge plugin", tried)
}

func attachment(network string, args *skel.CmdArgs) nftown.Attachment {
	return nftown.Attachment{Network: network, ContainerID: args.ContainerID, IfName: args.IfName}
}

// lenient decodes only what DEL and GC need: a config ADD would refuse
// cannot have installed anything, and must not keep DEL from succeeding.
func lenient(stdin []byte) (*types.PluginConf, error) {
	c := &types.PluginConf{}
	if err := cnierr.Decode(stdin, c); err != nil {
		return nil, err
	}
	return c, nil
}

// ownRules are the attachment's rules in tripod_filter's forward chain.
func ownRules(p *parsed, ips []net.IP, bridge string) [][]expr.Any {
	var out [][]expr.Any
	for _, ip := range ips {
		f := nftexpr.FamOf(ip)
		out = append(out,
			nftexpr.Concat(nftexpr.NFProto(f), addr(ip, false, false), jump(p.admin)),
			nftexpr.Concat(nftexpr.NFProto(f), addr(ip, true, false), jump(p.admin)))
	}
	if p.IngressPolicy == policyOpen {
		return out
	}
	for _, ip := range ips {
		f := nftexpr.FamOf(ip)
		// From an isolated container of another bridge.
		out = append(out, nftexpr.Concat(nftexpr.NFProto(f), iface(true, bridge, false), addr(ip, true, false), iface(false, bridge, true),
			isolatedSource(ip), counted(expr.VerdictDrop)))
		if p.IngressPolicy == policyIsolated {
			// From any other container of the same bridge. Bridged
			// traffic reaches this hook only with br_netfilter
			// (bridge-nf-call-iptables=1), as for the reference.
			out = append(out, nftexpr.Concat(nftexpr.NFProto(f), iface(true, bridge, false), iface(false, bridge, false), addr(ip, true, false),
				addr(ip, false, true), counted(expr.VerdictDrop)))
		}
	}
	return out
}

func add(_ context.Context, args *skel.CmdArgs) (types.Result, error) {
	p, err := parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	if p.prev == nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "firewall is a chained plugin: the config has no prevResult")
	}
	ips := containerIPs(p.prev)
	if len(ips) == 0 {
		return nil, cnierr.New(cnierr.InvalidConfig, "prevResult has no container IP address to let through")
	}
	var bridge string
	if p.IngressPolicy != policyOpen {
		if bridge, err = bridgeOf(p.prev); err != nil {
			return nil, cnierr.New(cnierr.InvalidConfig, "ingressPolicy %s: %v", p.IngressPolicy, err)
		}
	}
	att := attachment(p.Name, args)
	if err := install(p, att, ips, bridge); err != nil {
		if rerr := remove(att); rerr != nil {
			return nil, cnierr.Wrap(cnierr.Netlink, err, "undoing after the failure also failed (%v)", rerr)
		}
		return nil, err
	}
	return p.prev, nil
}

func install(p *parsed, att nftown.Attachment, ips []net.IP, bridge string) error {
	if err := ensure(p.admin, p.IngressPolicy != policyOpen); err != nil {
		return cnierr.Wrap(cnierr.Netlink, err, "preparing table %s", TableName)
	}
	if err := Table().Set(att, map[string]nftown.Jump{"forward": {Rules: ownRules(p, ips, bridge)}}); err != nil {
		return cnierr.Wrap(cnierr.Netlink, err, "installing the firewall rules")
	}
	if p.IngressPolicy != policyOpen {
		if err := addIsolated(att, bridge, ips); err != nil {
			return cnierr.Wrap(cnierr.Netlink, err, "registering the container as isolated")
		}
	}
	if p.foreign {
		if _, err := installForeign(att, ips); err != nil {
			return cnierr.Wrap(cnierr.Netlink, err, "accepting the container's traffic in foreign forward chains")
		}
	}
	return nil
}

// ensure creates the table, the admin chain and, when needed, the
// isolation sets, skipping those that exist: the kernel commits an update
// of an existing chain only after an RCU grace period.
func ensure(admin string, sets bool) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tbl := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("nftables: listing chains: %w", err)
	}
	haveTable, haveAdmin := false, false
	for _, ch := range chains {
		if ch.Table.Name == TableName {
			haveTable = true
			haveAdmin = haveAdmin || ch.Name == admin
		}
	}
	queued := false
	if !haveTable {
		c.AddTable(tbl)
		queued = true
	}
	if !haveAdmin {
		c.AddChain(&nftables.Chain{Name: admin, Table: tbl})
		queued = true
	}
	if sets {
		have := map[string]bool{}
		if haveTable {
			existing, err := c.GetSets(tbl)
			if err != nil && !nftexpr.NotFound(err) {
				return fmt.Errorf("nftables: listing sets of %s: %w", TableName, err)
			}
			for _, s := range existing {
				have[s.Name] = true
			}
		}
		for _, s := range isoSets() {
			if have[s.Name] {
				continue
			}
			if err := c.AddSet(s, nil); err != nil {
				return fmt.Errorf("nftables: set %s: %w", s.Name, err)
			}
			queued = true
		}
	}
	if !queued {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: creating table %s, chain %s: %w", TableName, admin, err)
	}
	return nil
}

// remove deletes everything the attachment has: its chain, its isolation
// set elements and its rules in foreign chains. Each part is attempted.
func remove(att nftown.Attachment) error {
	tag := att.Tag()
	match := func(t string) bool { return t == tag }
	return errors.Join(
		Table().Remove(att),
		removeIsolated(match),
		removeForeign(match),
	)
}

func del(_ context.Context, args *skel.CmdArgs) error {
	p, err := lenient(args.StdinData)
	if err != nil {
		return err
	}
	// Everything is found from the attachment: no prevResult, netns or
	// address is needed.
	if err := remove(attachment(p.Name, args)); err != nil {
		return cnierr.Wrap(cnierr.Netlink, err, "removing the firewall rules")
	}
	return nil
}

func check(_ context.Context, args *skel.CmdArgs) error {
	p, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	if p.prev == nil {
		return cnierr.New(cnierr.InvalidConfig, "firewall is a chained plugin: the config has no prevResult")
	}
	ips := containerIPs(p.prev)
	var bridge string
	if p.IngressPolicy != policyOpen {
		if bridge, err = bridgeOf(p.prev); err != nil {
			return cnierr.New(cnierr.InvalidConfig, "ingressPolicy %s: %v", p.IngressPolicy, err)
		}
	}
	att := attachment(p.Name, args)
	c, err := nftables.New()
	if err != nil {
		return cnierr.New(cnierr.Netlink, "nftables: %v", err)
	}
	tbl := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	rules, err := c.GetRules(tbl, &nftables.Chain{Name: att.ChainName("forward"), Table: tbl})
	if err != nil {
		if nftexpr.NotFound(err) {
			return cnierr.New(cnierr.InvalidConfig, "chain %s/%s is missing: the firewall rules of this attachment are not installed", TableName, att.ChainName("forward"))
		}
		return cnierr.New(cnierr.Netlink, "listing %s/%s: %v", TableName, att.ChainName("forward"), err)
	}
	if want := len(ownRules(p, ips, bridge)); len(rules) != want {
		return cnierr.New(cnierr.InvalidConfig, "chain %s/%s has %d rules, want %d", TableName, att.ChainName("forward"), len(rules), want)
	}
	if p.IngressPolicy != policyOpen {
		if err := checkIsolated(att, bridge, ips); err != nil {
			return cnierr.Wrap(cnierr.InvalidConfig, err, "ingressPolicy %s", p.IngressPolicy)
		}
	}
	if p.foreign {
		if err := checkForeign(att, ips); err != nil {
			var me *missingErr
			if errors.As(err, &me) {
				return cnierr.New(cnierr.InvalidConfig, "%v", err)
			}
			return cnierr.Wrap(cnierr.Netlink, err, "checking foreign forward chains")
		}
	}
	return nil
}

func gc(_ context.Context, args *skel.CmdArgs) error {
	p, err := lenient(args.StdinData)
	if err != nil {
		return err
	}
	keep := nftown.Keep(p.Name, p.ValidAttachments)
	valid := map[string]bool{}
	for _, att := range keep {
		valid[att.Tag()] = true
	}
	netTag := nftown.NetworkTag(p.Name) + "-"
	stale := func(t string) bool { return strings.HasPrefix(t, netTag) && !valid[t] }
	if err := errors.Join(Table().GC(p.Name, keep), removeIsolated(stale), removeForeign(stale)); err != nil {
		return cnierr.Wrap(cnierr.Netlink, err, "garbage-collecting firewall rules")
	}
	return nil
}

// status reports whether nftables can be used at all.
func status(_ context.Context, args *skel.CmdArgs) error {
	if _, err := parse(args.StdinData); err != nil {
		return err
	}
	if err := nftown.Usable(); err != nil {
		return cnierr.New(cnierr.NotAvailable, "nftables is not usable: %v", err)
	}
	return nil
}
