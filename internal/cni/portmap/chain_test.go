package portmap_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/tripod-dev/tripod/internal/cni/bridge"
	"github.com/tripod-dev/tripod/internal/cni/chaintest"
	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/firewall"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/cni/portmap"
	"github.com/tripod-dev/tripod/internal/cni/vethtest"
)

// TestChainThroughLibcni runs the usual container-runtime chain,
// bridge + host-local + portmap + firewall, through libcni on a host
// whose iptables-nft FORWARD policy is drop: published ports work from the
// host, from another pod and from the pod itself, and everything goes on
// DEL and GC.
func TestChainThroughLibcni(t *testing.T) {
	e := vethtest.New(t)
	list := e.ConfList(`{"cniVersion":"1.1.0","name":"TAG","plugins":[
		{"type":"bridge","bridge":"TAGbr","isGateway":true,"hairpinMode":true,
		 "ipam":{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.99.0.0/24"}],[{"subnet":"fd99::/64"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}},
		{"type":"portmap","capabilities":{"portMappings":true}},
		{"type":"firewall"}]}`)
	a, b := e.Pod("a"), e.Pod("b")
	serveTCP(t, a, 8080)
	rtA := cnitest.RuntimeConf(a.Name, a.Path, "eth0")
	rtA.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}}}
	rtB := cnitest.RuntimeConf(b.Name, b.Path, "eth0")
	tables := []nftown.Table{portmap.Table(), firewall.Table(), bridge.SpoofTable()}

	e.In(func() {
		if err := iptablesDrop(); err != nil {
			t.Fatalf("setting up the FORWARD drop policy: %v", err)
		}
		ra := e.Add(list, rtA)
		e.Add(list, rtB)
		podA := vethtest.IP(t, ra, true)
		for _, addr := range []string{"127.0.0.1", "10.99.0.1", "fd99::1"} {
			if got, err := chaintest.DialHere("tcp", chaintest.HostPort(addr, 18080), dialTimeout); err != nil || !strings.HasPrefix(got, "tcp from") {
				t.Errorf("host -> %s:18080: %q, %v", addr, got, err)
			}
		}
		// Another pod and the pod itself reach the published port through
		// the host: DNATed, then forwarded past the FORWARD drop policy.
		for _, p := range []*cnitest.Netns{b, a} {
			for _, addr := range []string{"10.99.0.1", "fd99::1"} {
				if got, err := chaintest.Dial(p, "tcp", chaintest.HostPort(addr, 18080), dialTimeout); err != nil || !strings.HasPrefix(got, "tcp from") {
					t.Errorf("%s -> %s:18080: %q, %v", p.Name, addr, got, err)
				}
			}
		}
		// Unpublished, unsolicited connections from another pod still meet
		// the drop policy only if nothing accepts them; b's own outbound
		// accept does, as with the reference plugin.
		if _, err := chaintest.Dial(b, "tcp", chaintest.HostPort(podA, 8080), dialTimeout); err != nil {
			t.Errorf("b -> a directly: %v", err)
		}
		if err := e.Runner.CNI.CheckNetworkList(context.Background(), list, rtA); err != nil {
			t.Errorf("CHECK: %v", err)
		}
		e.Del(list, rtA)
		e.Del(list, rtB)
		e.Del(list, rtA)
		if _, err := chaintest.DialHere("tcp", chaintest.HostPort("10.99.0.1", 18080), time.Second); err == nil {
			t.Error("the host port still answers after DEL")
		}
		if n := forwardRuleCount(t); n != 0 {
			t.Errorf("ip filter FORWARD keeps %d rules after DEL", n)
		}
		e.NoLeaks([]string{e.Tag}, tables...)
		if err := cnitest.NoNetworkChains(e.Tag); err != nil {
			t.Error(err)
		}

		// GC through libcni: the runtime lost track of a.
		e.Add(list, rtA)
		e.Add(list, rtB)
		e.GC(list, b.Name+"/eth0")
		if _, err := chaintest.DialHere("tcp", chaintest.HostPort("10.99.0.1", 18080), time.Second); err == nil {
			t.Error("the host port of a collected attachment still answers")
		}
		if err := e.Runner.CNI.CheckNetworkList(context.Background(), list, rtB); err != nil {
			t.Errorf("CHECK of the kept attachment after GC: %v", err)
		}
		e.GC(list)
		if n := forwardRuleCount(t); n != 0 {
			t.Errorf("ip filter FORWARD keeps %d rules after GC", n)
		}
		e.NoLeaks([]string{e.Tag}, tables...)
		if err := cnitest.NoNetworkChains(e.Tag); err != nil {
			t.Error(err)
		}
	})
}

// iptablesDrop makes what "iptables -P FORWARD DROP" makes with
// iptables-nft, in the calling thread's netns.
func iptablesDrop() error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	drop := nftables.ChainPolicyDrop
	for _, f := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		tbl := c.AddTable(&nftables.Table{Name: "filter", Family: f})
		c.AddChain(&nftables.Chain{Name: "FORWARD", Table: tbl, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	}
	return c.Flush()
}

// forwardRuleCount counts the rules of ip filter FORWARD in the calling
// thread's netns.
func forwardRuleCount(t *testing.T) int {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tbl := &nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4}
	rules, err := c.GetRules(tbl, &nftables.Chain{Name: "FORWARD", Table: tbl})
	if err != nil {
		t.Fatal(err)
	}
	return len(rules)
}
