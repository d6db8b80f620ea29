package firewall_test

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/chaintest"
	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/firewall"
)

const dialTimeout = 3 * time.Second

// env is a private "host" netns where the plugins run (their nftables
// tables and the foreign tables a test creates live there), plus container
// netns joined to it by veth pairs, routed or bridged.
type env struct {
	tag  string
	host *cnitest.Netns
	n    int
}

func newEnv(t *testing.T) *env {
	t.Helper()
	cnitest.Root(t)
	e := &env{tag: cnitest.Tag(t)}
	e.host = cnitest.NewNetns(t, e.tag+"-host")
	e.host.Do(t, func() error {
		if err := chaintest.Sysctls("ipv6/conf/default/accept_dad=0", "ipv6/conf/all/accept_dad=0", "ipv4/ip_forward=1", "ipv6/conf/all/forwarding=1"); err != nil {
			return err
		}
		return chaintest.Up("lo")
	})
	return e
}

// peer is a container netns with eth0 addressed and routed via the host.
type peer struct {
	ns       *cnitest.Netns
	hostSide string // host end of the veth
	bridge   string // bridge the host end is enslaved to, if any
	ips      []string
}

// addPeer creates a netns whose eth0 has addrs (CIDRs); the host side gets
// gws when bridge is "", else it is enslaved to bridge (which holds them).
func (e *env) addPeer(t *testing.T, bridge string, addrs, gws []string) *peer {
	t.Helper()
	e.n++
	p := &peer{ns: cnitest.NewNetns(t, fmt.Sprintf("%s-c%d", e.tag, e.n)), hostSide: fmt.Sprintf("%sv%d", e.tag, e.n), bridge: bridge}
	p.ips = append(p.ips, addrs...)
	p.ns.Do(t, func() error {
		return chaintest.Sysctls("ipv6/conf/default/accept_dad=0", "ipv6/conf/all/accept_dad=0")
	})
	f, err := os.Open(p.ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e.host.Do(t, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.hostSide}, PeerName: "eth0", PeerNamespace: netlink.NsFd(f.Fd())}); err != nil {
			return err
		}
		if bridge != "" {
			br, err := netlink.LinkByName(bridge)
			if err != nil {
				return err
			}
			l, err := netlink.LinkByName(p.hostSide)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetMaster(l, br); err != nil {
				return err
			}
		} else {
			var hostAddrs []string
			for i, gw := range gws {
				_, n, _ := net.ParseCIDR(addrs[i])
				ones, _ := n.Mask.Size()
				hostAddrs = append(hostAddrs, fmt.Sprintf("%s/%d", gw, ones))
			}
			if err := chaintest.AddAddrs(p.hostSide, hostAddrs...); err != nil {
				return err
			}
		}
		return chaintest.Up(p.hostSide)
	})
	p.ns.Do(t, func() error {
		if err := chaintest.Up("lo"); err != nil {
			return err
		}
		if err := chaintest.AddAddrs("eth0", addrs...); err != nil {
			return err
		}
		if err := chaintest.Up("eth0"); err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		for _, gw := range gws {
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
				return fmt.Errorf("default route via %s: %w", gw, err)
			}
		}
		return nil
	})
	return p
}

// addBridge creates a bridge in the host netns holding addrs.
func (e *env) addBridge(t *testing.T, name string, addrs ...string) {
	t.Helper()
	e.host.Do(t, func() error {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			return err
		}
		if err := chaintest.AddAddrs(name, addrs...); err != nil {
			return err
		}
		return chaintest.Up(name)
	})
}

// prevResult describes p as its network plugin would: for a bridge, the
// bridge, the host-side veth and eth0; for a routed veth, the host side
// and eth0.
func (p *peer) prevResult() map[string]any {
	ifs := []map[string]any{}
	if p.bridge != "" {
		ifs = append(ifs, map[string]any{"name": p.bridge})
	}
	ifs = append(ifs, map[string]any{"name": p.hostSide}, map[string]any{"name": "eth0", "sandbox": p.ns.Path})
	var ips []map[string]any
	for _, a := range p.ips {
		ips = append(ips, map[string]any{"address": a, "interface": len(ifs) - 1})
	}
	return map[string]any{"cniVersion": "1.1.0", "interfaces": ifs, "ips": ips}
}

func (e *env) conf(t *testing.T, typ string, prev map[string]any, extra map[string]any) string {
	t.Helper()
	return chaintest.Conf(t, e.tag, typ, prev, extra)
}

// exec runs a plugin from inside the host netns.
func (e *env) exec(t *testing.T, plugin, cmd, containerID, netns, stdin string) *types.Error {
	t.Helper()
	return chaintest.Exec(t, e.host, plugin, cmd, containerID, netns, stdin).Err
}

func (e *env) must(t *testing.T, plugin, cmd, containerID, netns, stdin string) {
	t.Helper()
	if err := e.exec(t, plugin, cmd, containerID, netns, stdin); err != nil {
		t.Fatalf("%s %s %s: code %d: %s", plugin, cmd, containerID, err.Code, err.Msg)
	}
}

// noLeaks checks the host netns for anything left of the network: chains,
// isolation set elements, tagged rules in any chain.
func (e *env) noLeaks(t *testing.T) {
	t.Helper()
	if err := e.host.Try(func() error {
		if err := cnitest.NoNetworkChains(e.tag); err != nil {
			return err
		}
		if left := tagged(e.tag); len(left) > 0 {
			return fmt.Errorf("tagged rules or set elements left: %v", left)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// tagged lists, in the calling thread's netns, every rule and isolation
// set element commented by the firewall for an attachment of network.
func tagged(network string) []string {
	c, err := nftables.New()
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	prefix := "tripod-firewall " + netTag(network)
	chains, _ := c.ListChains()
	for _, ch := range chains {
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			continue
		}
		for _, r := range rules {
			if s := ruleComment(r); strings.HasPrefix(s, prefix) {
				out = append(out, ch.Table.Name+"/"+ch.Name+": "+s)
			}
		}
	}
	tbl := &nftables.Table{Name: firewall.TableName, Family: nftables.TableFamilyINet}
	for _, name := range []string{"iso4", "iso6"} {
		elems, _ := c.GetSetElements(&nftables.Set{Table: tbl, Name: name})
		for _, el := range elems {
			if strings.HasPrefix(el.Comment, prefix) {
				out = append(out, name+": "+el.Comment)
			}
		}
	}
	return out
}

// serve answers TCP connections inside ns on port with the peer address.
func serve(t *testing.T, ns *cnitest.Netns, port int) {
	t.Helper()
	chaintest.ServeTCP(t, ns, fmt.Sprintf(":%d", port), "from ")
}

func reach(t *testing.T, ns *cnitest.Netns, addr string) {
	t.Helper()
	if got, err := chaintest.Dial(ns, "tcp", addr, dialTimeout); err != nil || !strings.HasPrefix(got, "from ") {
		t.Fatalf("%s from %s: %q, %v", addr, ns.Name, got, err)
	}
}

func blocked(t *testing.T, ns *cnitest.Netns, addr string) {
	t.Helper()
	// A dropped SYN shows as a timeout; a second is ample on veths.
	if got, err := chaintest.Dial(ns, "tcp", addr, time.Second); err == nil {
		t.Fatalf("%s from %s answered %q, want it blocked", addr, ns.Name, got)
	}
}
