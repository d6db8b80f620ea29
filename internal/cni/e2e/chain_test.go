package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

// chain is the full pod network a node typically runs: bridge with
// host-local IPAM and masquerade, then portmap, tuning, bandwidth and
// firewall.
func chain(name, bridge, dataDir string) string {
	return `{"cniVersion":"1.1.0","name":"` + name + `","plugins":[
	{"type":"bridge","bridge":"` + bridge + `","isGateway":true,"ipMasq":true,"hairpinMode":true,
	 "ipam":{"type":"host-local","dataDir":"` + dataDir + `","ranges":[[{"subnet":"10.77.0.0/24"}],[{"subnet":"fd77::/64"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}},
	{"type":"portmap","capabilities":{"portMappings":true},"snat":true},
	{"type":"tuning","sysctl":{"net.core.somaxconn":"1234"}},
	{"type":"bandwidth","capabilities":{"bandwidth":true}},
	{"type":"firewall"}]}`
}

type pod struct {
	ns  *cnitest.Netns
	rt  *libcni.RuntimeConf
	res *types100.Result
}

func (p *pod) ip(v4 bool) net.IP {
	for _, c := range p.res.IPs {
		if (c.Address.IP.To4() != nil) == v4 {
			return c.Address.IP
		}
	}
	return nil
}

// hostDo runs fn in the test's host namespace, where the plugins run.
func hostDo(t *testing.T, host *cnitest.Netns, fn func() error) {
	t.Helper()
	if err := host.Try(fn); err != nil {
		t.Fatal(err)
	}
}

func TestFullChain(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	host := cnitest.NewNetns(t, tag+"-host")
	dataDir := t.TempDir()
	list := cnitest.ConfList(t, chain(tag, tag+"br", dataDir))
	r := cnitest.NewRunner(t)
	ctx := context.Background()

	// The host namespace gets lo and an address of its own, standing in
	// for the node's address.
	const hostAddr = "192.0.2.10"
	hostDo(t, host, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// This kernel has no dummy links: one end of a veth pair serves.
		d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tag + "nic"}, PeerName: tag + "nicp"}
		if err := netlink.LinkAdd(d); err != nil {
			return err
		}
		if err := netlink.AddrAdd(d, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(hostAddr), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return netlink.LinkSetUp(d)
	})

	var pods []*pod
	for i := 0; i < 2; i++ {
		p := &pod{ns: cnitest.NewNetns(t, fmt.Sprintf("%s-p%d", tag, i))}
		p.rt = cnitest.RuntimeConf(fmt.Sprintf("%s-c%d", tag, i), p.ns.Path, "eth0")
		p.rt.CapabilityArgs = map[string]any{
			"portMappings": []map[string]any{{"hostPort": 18080 + i, "containerPort": 80, "protocol": "tcp"}},
			"bandwidth":    map[string]any{"ingressRate": 1_000_000_000, "ingressBurst": 10_000_000, "egressRate": 1_000_000_000, "egressBurst": 10_000_000},
		}
		hostDo(t, host, func() error {
			res, err := r.CNI.AddNetworkList(ctx, list, p.rt)
			if err != nil {
				return fmt.Errorf("ADD pod %d: %w", i, err)
			}
			p.res, err = types100.NewResultFromResult(res)
			return err
		})
		pods = append(pods, p)
	}
	t.Cleanup(func() {
		for _, p := range pods {
			_ = host.Try(func() error { return r.CNI.DelNetworkList(ctx, list, p.rt) })
		}
		_ = host.Try(func() error { cnitest.DeleteLinks(tag); return nil })
	})

	// Pods reach each other and the gateway, over IPv4 and IPv6.
	pods[0].ns.Ping(t, pods[1].ip(true).String())
	pods[0].ns.Ping(t, pods[1].ip(false).String())
	pods[1].ns.Ping(t, pods[0].res.IPs[0].Gateway.String())

	// tuning's sysctl is in effect in the pod.
	var somaxconn []byte
	pods[0].ns.Do(t, func() error {
		var err error
		somaxconn, err = os.ReadFile("/proc/sys/net/core/somaxconn")
		return err
	})
	if strings.TrimSpace(string(somaxconn)) != "1234" {
		t.Errorf("net.core.somaxconn in the pod = %q, want 1234", somaxconn)
	}

	// A server in pod 0 is reached through its hostPort on the host's
	// loopback and on the host's own address.
	var ln net.Listener
	pods[0].ns.Do(t, func() error {
		var err error
		ln, err = net.Listen("tcp", ":80")
		return err
	})
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello from pod\n")
			c.Close()
		}
	}()
	for _, addr := range []string{"127.0.0.1:18080", hostAddr + ":18080"} {
		hostDo(t, host, func() error {
			c, err := net.DialTimeout("tcp", addr, 3*time.Second)
			if err != nil {
				return fmt.Errorf("dial %s: %w", addr, err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			b, err := io.ReadAll(c)
			if err != nil || !strings.Contains(string(b), "hello from pod") {
				return fmt.Errorf("via %s read %q, %v", addr, b, err)
			}
			return nil
		})
	}

	hostDo(t, host, func() error { return r.CNI.CheckNetworkList(ctx, list, pods[0].rt) })
	hostDo(t, host, func() error { return r.CNI.GetStatusNetworkList(ctx, list) })

	// GC keeping only pod 0 removes everything of pod 1.
	hostDo(t, host, func() error {
		return r.CNI.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: pods[0].rt.ContainerID, IfName: "eth0"}}})
	})
	entries, _ := os.ReadDir(filepath.Join(dataDir, tag))
	for _, e := range entries {
		if ip := net.ParseIP(e.Name()); ip != nil && (ip.Equal(pods[1].ip(true)) || ip.Equal(pods[1].ip(false))) {
			t.Errorf("GC left pod 1's reservation %s", e.Name())
		}
	}

	// DEL everything: no link, rule or reservation is left.
	for _, p := range pods {
		hostDo(t, host, func() error { return r.CNI.DelNetworkList(ctx, list, p.rt) })
	}
	hostDo(t, host, func() error {
		if err := cnitest.NoNetworkChains(tag); err != nil {
			return err
		}
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, tag+"nic") {
				continue // the test's own stand-in for the node's NIC
			}
			if l.Type() == "veth" || l.Type() == "ifb" {
				return fmt.Errorf("leaked %s link %s", l.Type(), l.Attrs().Name)
			}
		}
		return nil
	})
	cnitest.EmptyDir(t, filepath.Join(dataDir, tag), "lock", "last_reserved_ip.0", "last_reserved_ip.1")
}
