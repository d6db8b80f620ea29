package portmap

import (
	"net"
	"os"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
)

// routeLocalnet lets 127.0.0.0/8 sources be routed out of the interface
// towards the container, which DNAT of connections to 127.0.0.1:hostPort
// needs (the masquerade rule then rewrites them). Only that interface is
// touched, as the reference does; nothing is recorded or restored, since
// the interface (a bridge or a host-side veth) belongs to the network.
func routeLocalnet(pod net.IP, set bool) error {
	routes, err := netlink.RouteGet(pod)
	if err != nil || len(routes) == 0 {
		return nil // no route: nothing can reach the container anyway
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return cnierr.New(cnierr.Netlink, "finding the interface towards %s: %v", pod, err)
	}
	name := link.Attrs().Name
	path := "/proc/sys/net/ipv4/conf/" + name + "/route_localnet"
	cur, err := readSysctl(path)
	if err != nil {
		return cnierr.New(cnierr.IOFailure, "reading %s: %v", path, err)
	}
	if cur == "1" {
		return nil
	}
	if !set {
		return cnierr.New(cnierr.InvalidConfig, "route_localnet is %s on %s, the interface towards %s: connections to 127.0.0.1:hostPort cannot reach the container", cur, name, pod)
	}
	if err := writeSysctl(path, "1"); err != nil {
		return cnierr.New(cnierr.IOFailure, "enabling route_localnet on %s: %v", name, err)
	}
	return nil
}

// flushUDP drops conntrack entries for the mapped UDP host ports: a client
// that sent before the mapping existed would otherwise keep talking to the
// old destination for as long as it keeps sending. Best effort, as in the
// reference. Each family costs a walk of the whole conntrack hash table
// (milliseconds), so only families that have a UDP mapping are walked.
func flushUDP(dnats []dnat) {
	filters := map[netlink.InetFamily][]netlink.CustomConntrackFilter{}
	for _, d := range dnats {
		if d.protoNum != unix.IPPROTO_UDP {
			continue
		}
		f := &netlink.ConntrackFilter{}
		if f.AddProtocol(unix.IPPROTO_UDP) != nil || f.AddPort(netlink.ConntrackOrigDstPort, d.hostPort) != nil {
			continue
		}
		family := netlink.InetFamily(unix.AF_INET)
		if d.nfproto == unix.NFPROTO_IPV6 {
			family = unix.AF_INET6
		}
		filters[family] = append(filters[family], f)
	}
	// The walks run side by side. (portmap never enters another netns, so
	// every thread is in the host's.)
	var wg sync.WaitGroup
	for family, fs := range filters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, fs...)
		}()
	}
	wg.Wait()
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

func writeSysctl(path, v string) error {
	return os.WriteFile(path, []byte(v), 0o644)
}
