package bridge

import (
	"context"
	"net"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/sysctl"
)

// dadTimeout bounds the wait for duplicate address detection; the kernel
// normally finishes in one retransmission interval (1 s).
const dadTimeout = 10 * time.Second

// settleDAD is enabledad: it gives ifName the IPv6 addresses of result
// with duplicate address detection and waits, on address notifications
// rather than by polling, until the kernel has validated them all. It runs
// in the container's namespace; ifaceconf.Configure then finds the
// addresses in place.
func settleDAD(ctx context.Context, ifName string, result *current.Result) error {
	var v6 []net.IPNet
	for _, ip := range result.IPs {
		if ip.Address.IP.To4() == nil && (ip.Interface == nil || *ip.Interface == contIndex) {
			v6 = append(v6, ip.Address)
		}
	}
	if len(v6) == 0 {
		return nil
	}
	link, err := netlink.LinkByName(ifName)
	if err != nil {
		return cnierr.New(cnierr.Netlink, "finding %s: %v", ifName, err)
	}
	if err := sysctl.IPv6(ifName, true); err != nil {
		return cnierr.Wrap(cnierr.IOFailure, err, "enabledad")
	}
	updates := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	// Subscribed before the addresses exist, so no transition is missed.
	if err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{}); err != nil {
		return cnierr.New(cnierr.Netlink, "enabledad: subscribing to address events: %v", err)
	}
	pending := map[string]bool{}
	for _, a := range v6 {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: a.IP, Mask: a.Mask}}); err != nil {
			return cnierr.New(cnierr.Netlink, "adding address %s to %s: %v", a.String(), ifName, err)
		}
		pending[a.IP.String()] = true
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return cnierr.New(cnierr.Netlink, "bringing %s up: %v", ifName, err)
	}
	timer := time.NewTimer(dadTimeout)
	defer timer.Stop()
	for len(pending) > 0 {
		select {
		case u, ok := <-updates:
			if !ok {
				return cnierr.New(cnierr.Netlink, "enabledad: address event subscription closed")
			}
			ip := u.LinkAddress.IP.String()
			if u.LinkIndex != link.Attrs().Index || !pending[ip] {
				continue
			}
			if u.Flags&unix.IFA_F_DADFAILED != 0 {
				return cnierr.New(cnierr.InvalidConfig, "enabledad: duplicate address detection failed for %s on %s: the address is in use on the network", ip, ifName)
			}
			if u.NewAddr && u.Flags&unix.IFA_F_TENTATIVE == 0 {
				delete(pending, ip)
			}
		case <-timer.C:
			return cnierr.New(cnierr.TryAgainLater, "enabledad: duplicate address detection on %s did not finish within %s", ifName, dadTimeout)
		case <-ctx.Done():
			return cnierr.New(cnierr.TryAgainLater, "enabledad: waiting for duplicate address detection on %s: %v", ifName, ctx.Err())
		}
	}
	return nil
}
