package ptp

import (
	"context"
	"errors"
	"net"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
	"github.com/tripod-dev/tripod/internal/cni/steps"
	"github.com/tripod-dev/tripod/internal/cni/sysctl"
	"github.com/tripod-dev/tripod/internal/cni/veth"
)

// contIndex is the container interface's index in the result.
const contIndex = 1

// Gateways for addresses whose subnet has no room for one (/32, /128):
// link-local, as they only ever exist on the host end of the pair.
var (
	linkLocalGW4 = net.IPv4(169, 254, 1, 1).To4()
	linkLocalGW6 = net.ParseIP("fe80::1")
)

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

	// IPAM first: it refuses a duplicate attachment before anything else
	// is touched.
	result, err := veth.IPAM(ctx, "ptp", n.IPAM.Type, args, &u)
	if err != nil {
		return nil, err
	}
	if result.DNS.IsEmpty() {
		result.DNS = n.DNS
	}
	var v4, v6 bool
	for _, ip := range result.IPs {
		ip.Interface = current.Int(contIndex)
		if ip.Gateway == nil {
			ip.Gateway = gatewayFor(ip.Address)
		}
		if ip.Gateway.Equal(ip.Address.IP) {
			return nil, cnierr.New(cnierr.InvalidConfig, "ptp: IPAM gave the container its gateway address %s", ip.Gateway)
		}
		isV4 := ip.Address.IP.To4() != nil
		if (ip.Gateway.To4() != nil) != isV4 {
			return nil, cnierr.New(cnierr.InvalidConfig, "ptp: gateway %s is not of the family of address %s", ip.Gateway, ip.Address.String())
		}
		v4, v6 = v4 || isV4, v6 || !isV4
	}
	if err := sysctl.Forwarding(v4, v6); err != nil {
		return nil, cnierr.Wrap(cnierr.IOFailure, err, "ptp: enabling forwarding")
	}

	hostName := hostVethName(n, args)
	hostMAC, contMAC := veth.RandomMAC(), veth.RandomMAC()
	index, err := veth.Create(veth.Pair{
		HostName: hostName, HostMAC: hostMAC, MTU: n.MTU,
		PeerName: args.IfName, PeerMAC: contMAC, PeerNetns: int(nsFile.Fd()),
	})
	if err != nil {
		return nil, veth.CreateError("ptp", args, hostName, err)
	}
	u.Push(func() { _, _ = veth.Delete(hostName) })
	if err := veth.Finish(index, veth.Port{Alias: veth.Alias(n.Name)}); err != nil {
		return nil, cnierr.New(cnierr.Netlink, "ptp: %v", err)
	}
	if err := configureHost(hostName, index, result); err != nil {
		return nil, err
	}
	err = nsutil.DoFile(nsFile, func() error { return configureContainer(args.IfName, result) })
	if err != nil {
		return nil, cnierr.Wrap(cnierr.Netlink, err, "ptp: configuring %s in %s", args.IfName, args.Netns)
	}
	if n.IPMasq {
		if err := masq.Set(att, result.IPs); err != nil {
			return nil, masq.Coded("ptp", err)
		}
		u.Push(func() { _ = masq.Remove(att) })
	}

	mtu := veth.ResultMTU(n.MTU)
	result.CNIVersion = current.ImplementedSpecVersion
	result.Interfaces = []*current.Interface{
		{Name: hostName, Mac: hostMAC.String(), Mtu: mtu},
		{Name: args.IfName, Mac: contMAC.String(), Mtu: mtu, Sandbox: args.Netns},
	}
	return result, nil
}

// gatewayFor picks the gateway of an address IPAM gave none: the first
// address of its subnet (the second if that is the container's), or a
// link-local one when the subnet has no room.
func gatewayFor(a net.IPNet) net.IP {
	ones, bits := a.Mask.Size()
	if bits-ones < 2 {
		if bits == 32 {
			return linkLocalGW4
		}
		return linkLocalGW6
	}
	ip := a.IP.Mask(a.Mask)
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	gw := nextIP(ip)
	if gw.Equal(a.IP) {
		gw = nextIP(gw)
	}
	return gw
}

func nextIP(ip net.IP) net.IP {
	out := append(net.IP{}, ip...)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			break
		}
	}
	return out
}

func hostBits(ip net.IP) net.IPMask {
	if ip.To4() != nil {
		return net.CIDRMask(32, 32)
	}
	return net.CIDRMask(128, 128)
}

// configureHost gives the host end each gateway as a host address and a
// host route to each container address.
func configureHost(name string, index int, result *current.Result) error {
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: index, Name: name}}
	for _, ip := range result.IPs {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.Gateway, Mask: hostBits(ip.Gateway)}}
		if ip.Gateway.To4() == nil {
			addr.Flags = unix.IFA_F_NODAD
		}
		// The same gateway sits on every host end of the network.
		if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
			return cnierr.New(cnierr.Netlink, "ptp: adding gateway %s to %s: %v", ip.Gateway, name, err)
		}
		dst := &net.IPNet{IP: ip.Address.IP, Mask: hostBits(ip.Address.IP)}
		route := &netlink.Route{LinkIndex: index, Dst: dst, Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteAdd(route); err != nil && !errors.Is(err, syscall.EEXIST) {
			return cnierr.New(cnierr.Netlink, "ptp: adding host route to %s via %s: %v", dst, name, err)
		}
	}
	return nil
}
