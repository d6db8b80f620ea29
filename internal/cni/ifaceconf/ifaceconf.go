// Package ifaceconf applies an IPAM result to an interface: addresses,
// routes, and the interface brought up. It runs inside the namespace that
// holds the interface.
package ifaceconf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nldump"
)

// Configure gives the link named ifName the addresses of res whose
// interface index is ifIndex (or that name no interface), adds res's
// routes through it, and brings it up. IPv6 addresses skip duplicate
// address detection: IPAM already guarantees uniqueness, and DAD would
// hold the address tentative for a second or more after ADD returns.
func Configure(ifName string, ifIndex int, res *current.Result) error {
	link, err := netlink.LinkByName(ifName)
	if err != nil {
		return cnierr.New(cnierr.Netlink, "finding %s: %v", ifName, err)
	}
	var v4, v6 bool
	for _, ip := range res.IPs {
		if ip.Interface != nil && *ip.Interface != ifIndex {
			continue
		}
		if ip.Address.IP.To4() != nil {
			v4 = true
		} else {
			v6 = true
		}
	}
	if v6 {
		// The namespace may start with IPv6 disabled on new links.
		_ = os.WriteFile(fmt.Sprintf("/proc/sys/net/ipv6/conf/%s/disable_ipv6", ifName), []byte("0"), 0o644)
		_ = os.WriteFile(fmt.Sprintf("/proc/sys/net/ipv6/conf/%s/accept_dad", ifName), []byte("0"), 0o644)
	}
	for _, ip := range res.IPs {
		if ip.Interface != nil && *ip.Interface != ifIndex {
			continue
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.Address.IP, Mask: ip.Address.Mask}}
		if ip.Address.IP.To4() == nil {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
			return cnierr.New(cnierr.Netlink, "adding address %s to %s: %v", ip.Address.String(), ifName, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return cnierr.New(cnierr.Netlink, "bringing %s up: %v", ifName, err)
	}
	for _, r := range res.Routes {
		isV4 := r.Dst.IP.To4() != nil
		if (isV4 && !v4) || (!isV4 && !v6) {
			continue // a route of a family this interface has no address in
		}
		gw := r.GW
		if gw == nil {
			gw = Gateway(res, ifIndex, isV4)
		}
		dst := r.Dst
		nr := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &dst, Gw: gw, MTU: r.MTU, AdvMSS: r.AdvMSS}
		if r.Priority != 0 {
			nr.Priority = r.Priority
		}
		if r.Table != nil {
			nr.Table = *r.Table
		}
		if r.Scope != nil {
			nr.Scope = netlink.Scope(*r.Scope)
		}
		if err := netlink.RouteAdd(nr); err != nil && !errors.Is(err, syscall.EEXIST) {
			return cnierr.New(cnierr.Netlink, "adding route %s via %v on %s: %v", dst.String(), gw, ifName, err)
		}
	}
	return nil
}

// Gateway returns the gateway res gives for the family (isV4) on the
// interface ifIndex, or nil.
func Gateway(res *current.Result, ifIndex int, isV4 bool) net.IP {
	for _, ip := range res.IPs {
		if ip.Interface != nil && *ip.Interface != ifIndex {
			continue
		}
		if ip.Gateway != nil && (ip.Gateway.To4() != nil) == isV4 {
			return ip.Gateway
		}
	}
	return nil
}

// Check verifies that the link named ifName holds every address res
// assigns it and every route res gives through it.
func Check(ifName string, ifIndex int, res *current.Result) error {
	link, err := netlink.LinkByName(ifName)
	if err != nil {
		return cnierr.New(cnierr.InvalidConfig, "interface %s is missing: %v", ifName, err)
	}
	addrs, err := nldump.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return cnierr.New(cnierr.Netlink, "listing addresses of %s: %v", ifName, err)
	}
	for _, ip := range res.IPs {
		if ip.Interface != nil && *ip.Interface != ifIndex {
			continue
		}
		found := false
		for _, a := range addrs {
			if a.IP.Equal(ip.Address.IP) && a.Mask.String() == ip.Address.Mask.String() {
				found = true
				break
			}
		}
		if !found {
			return cnierr.New(cnierr.InvalidConfig, "interface %s lacks address %s", ifName, ip.Address.String())
		}
	}
	routes, err := nldump.Retry(func() ([]netlink.Route, error) { return netlink.RouteList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return cnierr.New(cnierr.Netlink, "listing routes of %s: %v", ifName, err)
	}
	for _, r := range res.Routes {
		found := false
		for _, have := range routes {
			if have.Dst == nil && isDefault(r.Dst) || have.Dst != nil && have.Dst.String() == r.Dst.String() {
				found = true
				break
			}
		}
		if !found {
			isV4 := r.Dst.IP.To4() != nil
			if Gateway(res, ifIndex, isV4) == nil && r.GW == nil {
				continue // a route the interface could not have taken
			}
			return cnierr.New(cnierr.InvalidConfig, "interface %s lacks route to %s", ifName, r.Dst.String())
		}
	}
	return nil
}

func isDefault(n net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}
