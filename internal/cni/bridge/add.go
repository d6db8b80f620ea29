package bridge

import (
	"context"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/ifaceconf"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
	"github.com/tripod-dev/tripod/internal/cni/steps"
	"github.com/tripod-dev/tripod/internal/cni/sysctl"
	"github.com/tripod-dev/tripod/internal/cni/veth"
)

// contIndex is the container interface's index in the result.
const contIndex = 2

func add(ctx context.Context, args *skel.CmdArgs) (_ types.Result, err error) {
	n, err := load(args)
	if err != nil {
		return nil, err
	}
	nsFile, err := nsutil.Open(args.Netns)
	if err != nil {
		return nil, err
	}
	defer nsFile.Close()

	var u steps.Undo
	defer func() {
		if err != nil {
			u.Run()
		}
	}()
	att := attachment(n, args.ContainerID, args.IfName)
	result := &current.Result{CNIVersion: current.ImplementedSpecVersion, DNS: n.DNS}

	// IPAM first: it refuses a duplicate attachment before anything else
	// is touched.
	if n.layer3() {
		ipamRes, err := veth.IPAM(ctx, "bridge", n.IPAM.Type, args, &u)
		if err != nil {
			return nil, err
		}
		result.IPs, result.Routes = ipamRes.IPs, ipamRes.Routes
		if !ipamRes.DNS.IsEmpty() {
			result.DNS = ipamRes.DNS
		}
		for _, ip := range result.IPs {
			ip.Interface = current.Int(contIndex)
		}
	}
	var gws []net.IPNet
	if n.IsGW && len(result.IPs) > 0 {
		if gws, err = gateways(n, result); err != nil {
			return nil, err
		}
	}

	br, err := ensureBridge(n)
	if err != nil {
		return nil, err
	}
	hostName := hostVethName(n, args)
	hostMAC, contMAC := veth.RandomMAC(), n.mac
	if contMAC == nil {
		contMAC = veth.RandomMAC()
	}
	index, err := veth.Create(veth.Pair{
		HostName: hostName, HostMAC: hostMAC, MasterIndex: br.index, MTU: n.MTU,
		PeerName: args.IfName, PeerMAC: contMAC, PeerNetns: int(nsFile.Fd()),
	})
	if err != nil {
		return nil, veth.CreateError("bridge", args, hostName, err)
	}
	u.Push(func() { _, _ = veth.Delete(hostName) })
	if err := veth.Finish(index, veth.Port{Alias: veth.Alias(n.Name), Hairpin: n.HairpinMode, Isolated: n.PortIsolation}); err != nil {
		return nil, cnierr.New(cnierr.Netlink, "bridge: %v", err)
	}
	if n.vlanFiltering() {
		if err := setPortVlans(n, index); err != nil {
			return nil, err
		}
	}
	// Before the container's end comes up, so it never sends a forged frame.
	if n.MacSpoofChk {
		if err := setSpoofCheck(att, hostName, contMAC); err != nil {
			return nil, masq.Coded("bridge", err)
		}
		u.Push(func() { _ = removeSpoofCheck(att) })
	}

	if !n.DisableContainerInterface {
		err := nsutil.DoFile(nsFile, func() error { return configureContainer(ctx, n, args.IfName, result) })
		if err != nil {
			return nil, cnierr.Wrap(cnierr.Netlink, err, "bridge: configuring %s in %s", args.IfName, args.Netns)
		}
	}

	if len(gws) > 0 {
		var link netlink.Link = &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Index: br.index, Name: br.name}}
		if n.Vlan != 0 {
			if link, err = vlanGateway(br, n.Vlan); err != nil {
				return nil, err
			}
		}
		if err := ensureGateways(link, gws, n.ForceAddress); err != nil {
			return nil, err
		}
		var v4, v6 bool
		for _, gw := range gws {
			v4, v6 = v4 || gw.IP.To4() != nil, v6 || gw.IP.To4() == nil
		}
		if err := sysctl.Forwarding(v4, v6); err != nil {
			return nil, cnierr.Wrap(cnierr.IOFailure, err, "bridge: enabling forwarding")
		}
	}

	if n.IPMasq && len(result.IPs) > 0 {
		if err := masq.Set(att, result.IPs); err != nil {
			return nil, masq.Coded("bridge", err)
		}
		u.Push(func() { _ = masq.Remove(att) })
	}

	mtu := veth.ResultMTU(n.MTU)
	result.Interfaces = []*current.Interface{
		{Name: br.name, Mac: br.mac.String()},
		{Name: hostName, Mac: hostMAC.String(), Mtu: mtu},
		{Name: args.IfName, Mac: contMAC.String(), Mtu: mtu, Sandbox: args.Netns},
	}
	return result, nil
}

// gateways completes the gateways of result's addresses (the first
// address of the subnet where IPAM gave none), adds the default routes
// isDefaultGateway asks for, and returns the addresses the bridge needs.
func gateways(n *netConf, result *current.Result) ([]net.IPNet, error) {
	var gws []net.IPNet
	routed := map[bool]bool{}
	for _, ip := range result.IPs {
		v4 := ip.Address.IP.To4() != nil
		subnet := net.IPNet{IP: ip.Address.IP.Mask(ip.Address.Mask), Mask: ip.Address.Mask}
		if ip.Gateway == nil {
			ip.Gateway = nextIP(subnet.IP)
		}
		if ip.Gateway.Equal(ip.Address.IP) {
			return nil, cnierr.New(cnierr.InvalidConfig, "bridge: IPAM gave the container the gateway address %s", ip.Gateway)
		}
		if !subnet.Contains(ip.Gateway) {
			return nil, cnierr.New(cnierr.InvalidConfig, "bridge: gateway %s is outside the container's subnet %s", ip.Gateway, subnet.String())
		}
		gw := net.IPNet{IP: ip.Gateway, Mask: ip.Address.Mask}
		dup := false
		for _, g := range gws {
			dup = dup || g.IP.Equal(gw.IP)
		}
		if !dup {
			gws = append(gws, gw)
		}
		if !n.IsDefaultGW || routed[v4] {
			continue
		}
		routed[v4] = true
		have := false
		for _, r := range result.Routes {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 || (r.Dst.IP.To4() != nil) != v4 {
				continue
			}
			if r.GW != nil && !r.GW.Equal(ip.Gateway) {
				return nil, cnierr.New(cnierr.InvalidConfig, "bridge: isDefaultGateway conflicts with the IPAM default route via %s (the bridge's gateway is %s)", r.GW, ip.Gateway)
			}
			have = true
		}
		if !have {
			dst := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
			if !v4 {
				dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			result.Routes = append(result.Routes, &types.Route{Dst: dst, GW: ip.Gateway})
		}
	}
	return gws, nil
}

func nextIP(ip net.IP) net.IP {
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	out := append(net.IP{}, ip...)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			break
		}
	}
	return out
}

// configureContainer runs in the container's namespace.
func configureContainer(ctx context.Context, n *netConf, ifName string, result *current.Result) error {
	if !n.layer3() {
		if err := veth.SetUp(ifName); err != nil {
			return cnierr.New(cnierr.Netlink, "%v", err)
		}
		return nil
	}
	if !n.EnableDad {
		return ifaceconf.Configure(ifName, contIndex, result)
	}
	if err := settleDAD(ctx, ifName, result); err != nil {
		return err
	}
	if err := ifaceconf.Configure(ifName, contIndex, result); err != nil {
		return err
	}
	// Configure turns DAD off for the interface; enabledad keeps it on
	// for addresses that come later.
	return sysctl.IPv6(ifName, true)
}
