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

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/nftables"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nftexpr"
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
	tbl, att := Table(), attachment(p.Name, args)
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
	flushUDP(pl.dnats)
	return nil
}

func del(_ context.Context, args *skel.CmdArgs) error {
	p, err := lenient(args.StdinData)
	if err != nil {
		return err
	}
	// Always remove: the runtime may omit runtimeConfig or prevResult on
	// DEL, and the chains are found from the attachment alone.
	if err := Table().Remove(attachment(p.Name, args)); err != nil {
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
	att := attachment(p.Name, args)
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
		if nftexpr.NotFound(err) {
			return nil, cnierr.New(cnierr.InvalidConfig, "chain %s/%s is missing: the port mappings of this attachment are not installed", tbl.Name, name)
		}
		return nil, cnierr.New(cnierr.Netlink, "listing rules of %s/%s: %v", tbl.Name, name, err)
	}
	return rules, nil
}

func gc(_ context.Context, args *skel.CmdArgs) error {
	p, err := lenient(args.StdinData)
	if err != nil {
		return err
	}
	if err := Table().GC(p.Name, nftown.Keep(p.Name, p.ValidAttachments)); err != nil {
		return cnierr.Wrap(cnierr.Netlink, err, "garbage-collecting port mappings")
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
