// Package podlink holds the ADD and CHECK steps of the plugins that give
// a pod one link of its own, already in its namespace before these steps
// run: macvlan, ipvlan and vlan (through sublink) and host-device.
package podlink

import (
	"context"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/ifaceconf"
	"github.com/tripod-dev/tripod/internal/cni/ipamcall"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
)

// Configure finishes an ADD once link args.IfName is in the pod's
// namespace nsf: it runs IPAM when c names a plugin, puts the link (with
// PCI address pciID, if any) and its addresses in the result, configures
// them and brings the link up. On failure it calls undo (which takes the
// link back out) and releases the IPAM reservation, so a retry starts
// clean.
func Configure(ctx context.Context, args *skel.CmdArgs, c *types.PluginConf, nsf *os.File, pciID string, undo func()) (*current.Result, error) {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	if c.IPAM.Type != "" {
		r, err := ipamcall.Add(ctx, c.IPAM.Type, args)
		if err != nil {
			undo()
			return nil, err
		}
		res, err = current.NewResultFromResult(r)
		if err != nil {
			undo()
			_ = ipamcall.Del(ctx, c.IPAM.Type, args)
			return nil, cnierr.New(cnierr.Delegate, "IPAM plugin %q result: %v", c.IPAM.Type, err)
		}
		if len(res.IPs) == 0 {
			undo()
			_ = ipamcall.Del(ctx, c.IPAM.Type, args)
			return nil, cnierr.New(cnierr.Delegate, "IPAM plugin %q returned no addresses", c.IPAM.Type)
		}
	}
	err := nsutil.DoFile(nsf, func() error {
		l, err := netlink.LinkByName(args.IfName)
		if err != nil {
			return cnierr.New(cnierr.Netlink, "finding %s in %s: %v", args.IfName, args.Netns, err)
		}
		res.Interfaces = []*current.Interface{{
			Name:    args.IfName,
			Mac:     l.Attrs().HardwareAddr.String(),
			Mtu:     l.Attrs().MTU,
			Sandbox: args.Netns,
			PciID:   pciID,
		}}
		for _, ip := range res.IPs {
			ip.Interface = current.Int(0)
		}
		if c.IPAM.Type == "" {
			if err := netlink.LinkSetUp(l); err != nil {
				return cnierr.New(cnierr.Netlink, "bringing %s up: %v", args.IfName, err)
			}
			return nil
		}
		return ifaceconf.Configure(args.IfName, 0, res)
	})
	if err != nil {
		undo()
		if c.IPAM.Type != "" {
			_ = ipamcall.Del(ctx, c.IPAM.Type, args)
		}
		return nil, err
	}
	if !c.DNS.IsEmpty() {
		res.DNS = c.DNS
	}
	return res, nil
}

// Prev starts a CHECK: it parses c's previous result (required), has
// IPAM check its part, and finds the pod's interface in the result.
func Prev(ctx context.Context, args *skel.CmdArgs, c *types.PluginConf) (prev *current.Result, idx int, err error) {
	if c.PrevResult == nil {
		return nil, 0, cnierr.New(cnierr.InvalidConfig, "CHECK needs prevResult in the network config")
	}
	prev, err = current.NewResultFromResult(c.PrevResult)
	if err != nil {
		return nil, 0, cnierr.New(cnierr.DecodingFailure, "prevResult: %v", err)
	}
	if c.IPAM.Type != "" {
		if err := ipamcall.Check(ctx, c.IPAM.Type, args); err != nil {
			return nil, 0, err
		}
	}
	for i, in := range prev.Interfaces {
		if in.Name == args.IfName && (in.Sandbox == "" || in.Sandbox == args.Netns) {
			return prev, i, nil
		}
	}
	return nil, 0, cnierr.New(cnierr.InvalidConfig, "prevResult has no interface %s in %s", args.IfName, args.Netns)
}

// Link returns the pod's link args.IfName; run it in the pod's namespace.
func Link(args *skel.CmdArgs) (netlink.Link, error) {
	l, err := netlink.LinkByName(args.IfName)
	if err != nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "interface %s is missing from %s: %v", args.IfName, args.Netns, err)
	}
	return l, nil
}

// SameMAC checks l's address against the result's interface want.
func SameMAC(args *skel.CmdArgs, want *current.Interface, l netlink.Link) error {
	if want.Mac != "" && !strings.EqualFold(want.Mac, l.Attrs().HardwareAddr.String()) {
		return cnierr.New(cnierr.InvalidConfig, "interface %s has MAC %s, prevResult says %s", args.IfName, l.Attrs().HardwareAddr, want.Mac)
	}
	return nil
}
