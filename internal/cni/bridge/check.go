package bridge

import (
	"context"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/ifaceconf"
	"github.com/tripod-dev/tripod/internal/cni/ipamcall"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
	"github.com/tripod-dev/tripod/internal/cni/veth"
)

// check verifies that what ADD built (its result is prevResult) is still
// in place: the bridge, the host end enslaved to it, the container end
// paired with it, holding the addresses and routes, and the rules.
func check(ctx context.Context, args *skel.CmdArgs) error {
	n, err := load(args)
	if err != nil {
		return err
	}
	prev, err := veth.PrevResult("bridge", &n.PluginConf)
	if err != nil {
		return err
	}
	if n.layer3() {
		if err := ipamcall.Check(ctx, n.IPAM.Type, args); err != nil {
			return err
		}
	}
	contIdx, hostIdx, err := veth.Ends("bridge", prev, args.IfName, n.BrName)
	if err != nil {
		return err
	}
	cont, host := prev.Interfaces[contIdx], prev.Interfaces[hostIdx]

	l, err := netlink.LinkByName(n.BrName)
	if err != nil {
		return cnierr.New(cnierr.InvalidConfig, "bridge: bridge %s is missing: %v", n.BrName, err)
	}
	if _, ok := l.(*netlink.Bridge); !ok {
		return cnierr.New(cnierr.InvalidConfig, "bridge: %s is a %s link, not a bridge", n.BrName, l.Type())
	}
	brIndex := l.Attrs().Index
	hl, err := netlink.LinkByName(host.Name)
	if err != nil {
		return cnierr.New(cnierr.InvalidConfig, "bridge: host veth %s is missing: %v", host.Name, err)
	}
	if hl.Type() != "veth" || hl.Attrs().MasterIndex != brIndex {
		return cnierr.New(cnierr.InvalidConfig, "bridge: host end %s is not a veth port of %s", host.Name, n.BrName)
	}
	if err := veth.SameMAC("bridge", host.Name, host.Mac, hl.Attrs().HardwareAddr); err != nil {
		return err
	}
	if n.HairpinMode {
		pi, err := netlink.LinkGetProtinfo(hl)
		if err != nil {
			return cnierr.New(cnierr.Netlink, "bridge: reading port flags of %s: %v", host.Name, err)
		}
		if !pi.Hairpin {
			return cnierr.New(cnierr.InvalidConfig, "bridge: port %s has hairpin mode off", host.Name)
		}
	}
	hostIndex := hl.Attrs().Index

	err = nsutil.Do(args.Netns, func() error {
		if _, err := veth.CheckPeer("bridge", args.IfName, cont, host, hostIndex); err != nil {
			return err
		}
		return ifaceconf.Check(args.IfName, contIdx, prev)
	})
	if err != nil {
		return err
	}

	att := attachment(n, args.ContainerID, args.IfName)
	if n.IPMasq && len(prev.IPs) > 0 {
		ok, err := masq.Present(att)
		if err != nil {
			return cnierr.New(cnierr.Netlink, "bridge: %v", err)
		}
		if !ok {
			return cnierr.New(cnierr.InvalidConfig, "bridge: masquerade rules of %s/%s are missing from table %s", args.ContainerID, args.IfName, masq.TableName)
		}
	}
	if n.MacSpoofChk {
		ok, err := spoofCheckPresent(att)
		if err != nil {
			return cnierr.New(cnierr.Netlink, "bridge: %v", err)
		}
		if !ok {
			return cnierr.New(cnierr.InvalidConfig, "bridge: macspoofchk rules of %s/%s are missing from table %s", args.ContainerID, args.IfName, spoofTableName)
		}
	}
	return nil
}
