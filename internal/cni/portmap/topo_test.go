package portmap_test

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/chaintest"
	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/portmap"
)

// Addresses live only inside the namespaces a test creates.
const (
	gw4, pod4   = "10.99.0.1", "10.99.0.2"
	gw6, pod6   = "fd00:99::1", "fd00:99::2"
	host4       = "10.77.0.1" // the host's "own" address, on its lo
	host6       = "fd00:77::1"
	outHost4    = "10.88.0.1" // host side of the link to the outside netns
	outPeer4    = "10.88.0.2"
	outHost6    = "fd00:88::1"
	outPeer6    = "fd00:88::2"
	dialTimeout = 3 * time.Second
)

// topo is a private "host" netns (where the plugin runs and its nftables
// tables live), a "pod" netns joined to it by a veth pair, and an "outside"
// netns joined by another, as a remote client.
type topo struct {
	tag       string
	host, pod *cnitest.Netns
	out       *cnitest.Netns
	hostVeth  string
	podIndex  int
}

func newTopo(t *testing.T) *topo {
	t.Helper()
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	tp := &topo{tag: tag, hostVeth: tag + "v"}
	tp.host = cnitest.NewNetns(t, tag+"-host")
	tp.pod = cnitest.NewNetns(t, tag+"-pod")
	tp.out = cnitest.NewNetns(t, tag+"-out")
	podFd, err := os.Open(tp.pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer podFd.Close()
	outFd, err := os.Open(tp.out.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer outFd.Close()

	// No duplicate address detection anywhere, link-local addresses
	// included: IPv6 is usable as soon as the links are up.
	for _, ns := range []*cnitest.Netns{tp.host, tp.pod, tp.out} {
		ns.Do(t, func() error {
			return chaintest.Sysctls("ipv6/conf/default/accept_dad=0", "ipv6/conf/all/accept_dad=0")
		})
	}
	tp.host.Do(t, func() error {
		if err := chaintest.Sysctls("ipv4/ip_forward=1", "ipv6/conf/all/forwarding=1"); err != nil {
			return err
		}
		if err := chaintest.Up("lo"); err != nil {
			return err
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tp.hostVeth}, PeerName: "eth0", PeerNamespace: netlink.NsFd(podFd.Fd())}); err != nil {
			return fmt.Errorf("veth to pod: %w", err)
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tag + "o"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(outFd.Fd())}); err != nil {
			return fmt.Errorf("veth to outside: %w", err)
		}
		for name, addrs := range map[string][]string{
			tp.hostVeth: {gw4 + "/24", gw6 + "/64"},
			tag + "o":   {outHost4 + "/24", outHost6 + "/64"},
			"lo":        {host4 + "/32", host6 + "/128"},
		} {
			if err := chaintest.AddAddrs(name, addrs...); err != nil {
				return err
			}
			if err := chaintest.Up(name); err != nil {
				return err
			}
		}
		return nil
	})
	for _, ns := range []struct {
		n      *cnitest.Netns
		addrs  []string
		gw4    string
		gw6    string
		record bool
	}{{tp.pod, []string{pod4 + "/24", pod6 + "/64"}, gw4, gw6, true}, {tp.out, []string{outPeer4 + "/24", outPeer6 + "/64"}, outHost4, outHost6, false}} {
		ns.n.Do(t, func() error {
			if err := chaintest.Up("lo"); err != nil {
				return err
			}
			if err := chaintest.AddAddrs("eth0", ns.addrs...); err != nil {
				return err
			}
			if err := chaintest.Up("eth0"); err != nil {
				return err
			}
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			if ns.record {
				tp.podIndex = l.Attrs().Index
			}
			for _, gw := range []string{ns.gw4, ns.gw6} {
				if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
					return fmt.Errorf("default route via %s: %w", gw, err)
				}
			}
			return nil
		})
	}
	return tp
}

// prevResult describes the topology as a bridge or ptp plugin would: the
// host-side veth, the container interface, and its addresses.
func (tp *topo) prevResult(ips ...string) map[string]any {
	var list []map[string]any
	for _, ip := range ips {
		list = append(list, map[string]any{"address": ip, "interface": 1})
	}
	return map[string]any{
		"cniVersion": "1.1.0",
		"interfaces": []map[string]any{
			{"name": tp.hostVeth},
			{"name": "eth0", "sandbox": tp.pod.Path},
		},
		"ips": list,
	}
}

func (tp *topo) dualStack() map[string]any {
	return tp.prevResult(pod4+"/24", pod6+"/64")
}

// conf builds a portmap config; extra fields are merged at the top level.
func (tp *topo) conf(t *testing.T, prev map[string]any, maps []map[string]any, extra map[string]any) string {
	t.Helper()
	all := map[string]any{}
	if maps != nil {
		all["runtimeConfig"] = map[string]any{"portMappings": maps}
	}
	for k, v := range extra {
		all[k] = v
	}
	return chaintest.Conf(t, tp.tag, "portmap", prev, all)
}

func pm(proto string, hostPort, ctrPort int, hostIP string) map[string]any {
	m := map[string]any{"hostPort": hostPort, "containerPort": ctrPort, "protocol": proto}
	if hostIP != "" {
		m["hostIP"] = hostIP
	}
	return m
}

type execResult struct {
	stdout []byte
	err    *types.Error
}

// exec runs the plugin from inside the host netns.
func (tp *topo) exec(t *testing.T, plugin, cmd, containerID, stdin string) execResult {
	t.Helper()
	r := chaintest.Exec(t, tp.host, plugin, cmd, containerID, tp.pod.Path, stdin)
	return execResult{stdout: r.Stdout, err: r.Err}
}

// must runs a verb that has to succeed.
func (tp *topo) must(t *testing.T, cmd, containerID, stdin string) []byte {
	t.Helper()
	r := tp.exec(t, "portmap", cmd, containerID, stdin)
	if r.err != nil {
		t.Fatalf("%s %s: code %d: %s", cmd, containerID, r.err.Code, r.err.Msg)
	}
	return r.stdout
}

// serveTCP listens inside ns; each connection is told the address it came
// from, so tests can see masquerading.
func serveTCP(t *testing.T, ns *cnitest.Netns, port int) {
	t.Helper()
	serveTCPOn(t, ns, fmt.Sprintf(":%d", port))
}

func serveTCPOn(t *testing.T, ns *cnitest.Netns, addr string) {
	t.Helper()
	chaintest.ServeTCP(t, ns, addr, "tcp from ")
}

// serveUDP answers each datagram inside ns with the sender's address.
func serveUDP(t *testing.T, ns *cnitest.Netns, port int) {
	t.Helper()
	var pc net.PacketConn
	ns.Do(t, func() error {
		var err error
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(from.String())
			_, _ = pc.WriteTo([]byte("udp from "+host+"\n"), from)
		}
	}()
}

// reach fails the test unless addr answers from ns; it returns the source
// address the server saw.
func reach(t *testing.T, ns *cnitest.Netns, network, addr string) string {
	t.Helper()
	got, err := chaintest.Dial(ns, network, addr, dialTimeout)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", network, addr, ns.Name, err)
	}
	from, ok := strings.CutPrefix(got, network[:3]+" from ")
	if !ok {
		t.Fatalf("%s %s from %s: unexpected answer %q", network, addr, ns.Name, got)
	}
	return from
}

// unreachable fails the test if addr answers from ns.
func unreachable(t *testing.T, ns *cnitest.Netns, network, addr string) {
	t.Helper()
	// A dropped packet shows as a timeout; a second is ample on veths.
	if got, err := chaintest.Dial(ns, network, addr, time.Second); err == nil {
		t.Fatalf("%s %s from %s answered %q, want no answer", network, addr, ns.Name, got)
	}
}

// noLeaks checks, inside the host netns, that no chain of the network is
// left in any table.
func (tp *topo) noLeaks(t *testing.T) {
	t.Helper()
	if err := tp.host.Try(func() error {
		if err := cnitest.NoNetworkChains(tp.tag); err != nil {
			return err
		}
		tags, err := portmap.Table().Tags(tp.tag)
		if err != nil {
			return err
		}
		if len(tags) > 0 {
			return fmt.Errorf("attachments left in %s: %v", portmap.TableName, tags)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}
