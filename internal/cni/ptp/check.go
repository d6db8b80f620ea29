package ptp

import (
	"context"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/ifaceconf"
	"github.com/tripod-dev/tripod/internal/cni/ipamcall"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/nldump"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
	"github.com/tripod-dev/tripod/internal/cni/veth"
)

// check verifies that what ADD built (its result is prevResult) is still
// in place: the host end with its gateways and host routes, the container
// end paired with it and holding the addresses and routes, the rules.
func check(ctx context.Context, args *skel.CmdArgs) error {
	n, err := load(args)
	if err != nil {
		return err
	}
	prev, err := veth.PrevResult("ptp", &n.PluginConf)
	if err != nil {
		return err
	}
	if err := ipamcall.Check(ctx, n.IPAM.Type, args); err != nil {
		return err
	}
	contIdx, hostIdx, err := veth.Ends("ptp", prev, args.IfName, "")
	if err != nil {
		return err
	}
	cont, host := prev.Interfaces[contIdx], prev.Interfaces[hostIdx]

	hl, err := netlink.LinkByName(host.Name)
	if err != nil {
		return cnierr.New(cnierr.InvalidConfig, "ptp: host veth %s is missing: %v", host.Name, err)
	}
	if hl.Type() != "veth" {
		return cnierr.New(cnierr.InvalidConfig, "ptp: host end %s is a %s link, not a veth", host.Name, hl.Type())
	}
	if err := veth.SameMAC("ptp", host.Name, host.Mac, hl.Attrs().HardwareAddr); err != nil {
		return err
	}
	if err := checkHost(hl, prev); err != nil {
		return err
	}
	hostIndex := hl.Attrs().Index

	err = nsutil.Do(args.Netns, func() error {
		cl, err := veth.CheckPeer("ptp", args.IfName, cont, host, hostIndex)
		if err != nil {
			return err
		}
		if err := ifaceconf.Check(args.IfName, contIdx, prev); err != nil {
			return err
		}
		return hasRoutes(cl, gatewayRoutes(prev))
	})
	if err != nil {
		return err
	}
	if n.IPMasq {
		ok, err := masq.Present(attachment(n, args.ContainerID, args.IfName))
		if err != nil {
			return masq.Coded("ptp", err)
		}
		if !ok {
			return cnierr.New(cnierr.InvalidConfig, "ptp: masquerade rules of %s/%s are missing from table %s", args.ContainerID, args.IfName, masq.TableName)
		}
	}
	return nil
}

// checkHost verifies the host end's gateway addresses and host routes.
func checkHost(l netlink.Link, prev *current.Result) error {
	name := l.Attrs().Name
	addrs, err := nldump.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return cnierr.New(cnierr.Netlink, "ptp: listing addresses of %s: %v", name, err)
	}
	var dsts []net.IPNet
	for _, ip := range prev.IPs {
		if ip.Gateway == nil {
			continue
		}
		found := false
		for _, a := range addrs {
			found = found || a.IP.Equal(ip.Gateway)
		}
		if !found {
			return cnierr.New(cnierr.InvalidConfig, "ptp: host veth %s lacks gateway address %s", name, ip.Gateway)
		}
		dsts = append(dsts, net.IPNet{IP: ip.Address.IP, Mask: hostBits(ip.Address.IP)})
	}
	return hasRoutes(l, dsts)
}

// gatewayRoutes are the container's host routes to its gateways.
func gatewayRoutes(prev *current.Result) []net.IPNet {
	var out []net.IPNet
	for _, ip := range prev.IPs {
		if ip.Gateway != nil {
			out = append(out, net.IPNet{IP: ip.Gateway, Mask: hostBits(ip.Gateway)})
		}
	}
	return out
}

// hasRoutes verifies that l has a route to each of dsts.
func hasRoutes(l netlink.Link, dsts []net.IPNet) error {
	routes, err := nldump.Retry(func() ([]netlink.Route, error) { return netlink.RouteList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return cnierr.New(cnierr.Netlink, "ptp: listing routes of %s: %v", l.Attrs().Name, err)
	}
	for _, d := range dsts {
		found := false
		for _, r := range routes {
			found = found || r.Dst != nil && r.Dst.String() == d.String()
		}
		if !found {
			return cnierr.New(cnierr.InvalidConfig, "ptp: %s lacks the route to %s", l.Attrs().Name, d.String())
		}
	}
	return nil
}
