package ptp

import (
	"errors"
	"net"
	"syscall"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/sysctl"
)

// configureContainer runs in the container's namespace. Each address keeps
// its IPAM prefix length but gets no on-link subnet route: nothing but the
// gateway is on the link. The gateway is reached by a host route, and the
// subnet and the IPAM routes through it.
func configureContainer(ifName string, res *current.Result) error {
	link, err := netlink.LinkByName(ifName)
	if err != nil {
		return cnierr.New(cnierr.Netlink, "finding %s: %v", ifName, err)
	}
	index := link.Attrs().Index
	gw := map[bool]net.IP{}
	for _, ip := range res.IPs {
		v4 := ip.Address.IP.To4() != nil
		if !v4 && gw[false] == nil {
			// The namespace may start with IPv6 off on new links.
			if err := sysctl.IPv6(ifName, false); err != nil {
				return err
			}
		}
		if gw[v4] == nil {
			gw[v4] = ip.Gateway
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.Address.IP, Mask: ip.Address.Mask}, Flags: unix.IFA_F_NOPREFIXROUTE}
		if !v4 {
			addr.Flags |= unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
			return cnierr.New(cnierr.Netlink, "adding address %s to %s: %v", ip.Address.String(), ifName, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return cnierr.New(cnierr.Netlink, "bringing %s up: %v", ifName, err)
	}
	add := func(r *netlink.Route) error {
		if err := netlink.RouteAdd(r); err != nil && !errors.Is(err, syscall.EEXIST) {
			return cnierr.New(cnierr.Netlink, "adding route to %s via %v on %s: %v", r.Dst, r.Gw, ifName, err)
		}
		return nil
	}
	for _, ip := range res.IPs {
		src := ip.Address.IP
		if err := add(&netlink.Route{LinkIndex: index, Dst: &net.IPNet{IP: ip.Gateway, Mask: hostBits(ip.Gateway)}, Scope: netlink.SCOPE_LINK, Src: src}); err != nil {
			return err
		}
		if ones, bits := ip.Address.Mask.Size(); ones < bits {
			subnet := &net.IPNet{IP: ip.Address.IP.Mask(ip.Address.Mask), Mask: ip.Address.Mask}
			if err := add(&netlink.Route{LinkIndex: index, Dst: subnet, Gw: ip.Gateway, Src: src}); err != nil {
				return err
			}
		}
	}
	for _, r := range res.Routes {
		v4 := r.Dst.IP.To4() != nil
		via := r.GW
		if via == nil {
			via = gw[v4]
		}
		if via == nil {
			continue // a route of a family the container has no address in
		}
		dst := r.Dst
		nr := &netlink.Route{LinkIndex: index, Dst: &dst, Gw: via, MTU: r.MTU, AdvMSS: r.AdvMSS, Priority: r.Priority}
		if r.Table != nil {
			nr.Table = *r.Table
		}
		if r.Scope != nil {
			nr.Scope = netlink.Scope(*r.Scope)
		}
		if err := add(nr); err != nil {
			return err
		}
	}
	return nil
}
