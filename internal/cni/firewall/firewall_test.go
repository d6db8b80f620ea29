package firewall_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/tripod-dev/tripod/internal/cni/chaintest"
	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

func netTag(network string) string { return nftown.NetworkTag(network) }

func ruleComment(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// dropForward creates, in the calling thread's netns, what iptables-nft
// makes of "iptables -P FORWARD DROP; iptables -A FORWARD -s 192.0.2.1 -j
// ACCEPT" (and ip6tables -P FORWARD DROP), plus a hand-written inet table
// with a dropping forward chain.
func dropForward(inetName string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	drop := nftables.ChainPolicyDrop
	ip4 := c.AddTable(&nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4})
	fwd4 := c.AddChain(&nftables.Chain{Name: "FORWARD", Table: ip4, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	c.AddRule(&nftables.Rule{Table: ip4, Chain: fwd4, Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{192, 0, 2, 1}},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}, UserData: userdata.AppendString(nil, userdata.TypeComment, "admin rule")})
	ip6 := c.AddTable(&nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv6})
	c.AddChain(&nftables.Chain{Name: "FORWARD", Table: ip6, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	inet := c.AddTable(&nftables.Table{Name: inetName, Family: nftables.TableFamilyINet})
	c.AddChain(&nftables.Chain{Name: "fwd", Table: inet, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityRef(10), Policy: &drop})
	return c.Flush()
}

// forwardRules returns the comments of the rules of ip filter FORWARD.
func forwardRules(t *testing.T, e *env) []string {
	t.Helper()
	var out []string
	e.host.Do(t, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tbl := &nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4}
		rules, err := c.GetRules(tbl, &nftables.Chain{Name: "FORWARD", Table: tbl})
		for _, r := range rules {
			out = append(out, ruleComment(r))
		}
		return err
	})
	return out
}

func routedPair(t *testing.T, e *env) (pod, out *peer) {
	out = e.addPeer(t, "", []string{"10.88.0.2/24", "fd00:88::2/64"}, []string{"10.88.0.1", "fd00:88::1"})
	pod = e.addPeer(t, "", []string{"10.99.0.2/24", "fd00:99::2/64"}, []string{"10.99.0.1", "fd00:99::1"})
	serve(t, out.ns, 9000)
	serve(t, pod.ns, 8080)
	return pod, out
}

func TestForeignDropChains(t *testing.T) {
	e := newEnv(t)
	pod, out := routedPair(t, e)
	reach(t, pod.ns, chaintest.HostPort("10.88.0.2", 9000))
	e.host.Do(t, func() error { return dropForward(e.tag) })
	blocked(t, pod.ns, chaintest.HostPort("10.88.0.2", 9000))
	blocked(t, pod.ns, chaintest.HostPort("fd00:88::2", 9000))

	conf := e.conf(t, "firewall", pod.prevResult(), nil)
	e.must(t, "firewall", "ADD", "a", pod.ns.Path, conf)
	reach(t, pod.ns, chaintest.HostPort("10.88.0.2", 9000))
	reach(t, pod.ns, chaintest.HostPort("fd00:88::2", 9000))
	// Only replies come back in: the outside cannot open connections to
	// the container...
	blocked(t, out.ns, chaintest.HostPort("10.99.0.2", 8080))
	blocked(t, out.ns, chaintest.HostPort("fd00:99::2", 8080))
	// ...except through a published port.
	pm := e.conf(t, "portmap", pod.prevResult(), map[string]any{"runtimeConfig": map[string]any{
		"portMappings": []map[string]any{{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}}}})
	e.must(t, "portmap", "ADD", "a", pod.ns.Path, pm)
	reach(t, out.ns, chaintest.HostPort("10.88.0.1", 18080))
	reach(t, out.ns, chaintest.HostPort("fd00:88::1", 18080))
	e.must(t, "portmap", "DEL", "a", pod.ns.Path, pm)

	// iptables-nft still understands the chains it manages.
	for _, bin := range []string{"iptables-nft", "ip6tables-nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Logf("skipping the %s listing check: %s is not installed", bin, bin)
			continue
		}
		outp, err := e.host.Exec(context.Background(), bin, "-S", "FORWARD")
		if err != nil {
			t.Fatalf("%s -S FORWARD after ADD: %v\n%s", bin, err, outp)
		}
		s := string(outp)
		if !strings.Contains(s, "--ctstate RELATED,ESTABLISHED,DNAT") || !strings.Contains(s, "tripod-firewall "+netTag(e.tag)) {
			t.Errorf("%s -S FORWARD does not show tripod's rules:\n%s", bin, s)
		}
	}
	if got := forwardRules(t, e); len(got) != 3 || got[0] != "admin rule" {
		t.Errorf("ip filter FORWARD after ADD: %q, want the admin rule first and tripod's two appended", got)
	}

	e.must(t, "firewall", "CHECK", "a", pod.ns.Path, conf)
	// A repeated ADD replaces instead of piling up.
	e.must(t, "firewall", "ADD", "a", pod.ns.Path, conf)
	if got := forwardRules(t, e); len(got) != 3 {
		t.Errorf("ip filter FORWARD after a second ADD: %q", got)
	}

	e.must(t, "firewall", "DEL", "a", pod.ns.Path, conf)
	blocked(t, pod.ns, chaintest.HostPort("10.88.0.2", 9000))
	blocked(t, pod.ns, chaintest.HostPort("fd00:88::2", 9000))
	if got := forwardRules(t, e); len(got) != 1 || got[0] != "admin rule" {
		t.Errorf("ip filter FORWARD after DEL: %q, want only the admin rule", got)
	}
	e.noLeaks(t)
	if err := e.exec(t, "firewall", "CHECK", "a", pod.ns.Path, conf); err == nil || err.Code != 7 {
		t.Errorf("CHECK after DEL: %+v, want code 7", err)
	}
	e.must(t, "firewall", "DEL", "a", pod.ns.Path, conf)

	// DEL needs neither the netns nor prevResult.
	e.must(t, "firewall", "ADD", "b", pod.ns.Path, conf)
	reach(t, pod.ns, chaintest.HostPort("10.88.0.2", 9000))
	pod.ns.Remove(t)
	e.must(t, "firewall", "DEL", "b", pod.ns.Path, e.conf(t, "firewall", nil, nil))
	e.noLeaks(t)
	if got := forwardRules(t, e); len(got) != 1 {
		t.Errorf("ip filter FORWARD after DEL without netns: %q", got)
	}
}

func TestForeignChainsNone(t *testing.T) {
	e := newEnv(t)
	pod, _ := routedPair(t, e)
	e.host.Do(t, func() error { return dropForward(e.tag) })
	conf := e.conf(t, "firewall", pod.prevResult(), map[string]any{"foreignChains": "none", "backend": "iptables"})
	e.must(t, "firewall", "ADD", "a", pod.ns.Path, conf)
	blocked(t, pod.ns, chaintest.HostPort("10.88.0.2", 9000))
	if got := forwardRules(t, e); len(got) != 1 {
		t.Errorf("foreignChains none wrote to ip filter FORWARD: %q", got)
	}
	e.must(t, "firewall", "CHECK", "a", pod.ns.Path, conf)
	e.must(t, "firewall", "DEL", "a", pod.ns.Path, conf)
	e.noLeaks(t)
}

// The admin chain runs first for the container's traffic: a drop there
// wins even where tripod accepts.
func TestAdminChain(t *testing.T) {
	e := newEnv(t)
	pod, _ := routedPair(t, e)
	conf := e.conf(t, "firewall", pod.prevResult(), map[string]any{"iptablesAdminChainName": "MY-ADMIN"})
	e.must(t, "firewall", "ADD", "a", pod.ns.Path, conf)
	reach(t, pod.ns, chaintest.HostPort("10.88.0.2", 9000))
	e.host.Do(t, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tbl := &nftables.Table{Name: "tripod_filter", Family: nftables.TableFamilyINet}
		c.AddRule(&nftables.Rule{Table: tbl, Chain: &nftables.Chain{Name: "MY-ADMIN", Table: tbl}, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
		return c.Flush()
	})
	blocked(t, pod.ns, chaintest.HostPort("10.88.0.2", 9000))
	e.must(t, "firewall", "DEL", "a", pod.ns.Path, conf)
	reach(t, pod.ns, chaintest.HostPort("10.88.0.2", 9000))
	e.noLeaks(t)
}

func TestSameBridge(t *testing.T) {
	e := newEnv(t)
	e.addBridge(t, e.tag+"b1", "10.91.0.1/24")
	e.addBridge(t, e.tag+"b2", "10.92.0.1/24")
	out := e.addPeer(t, "", []string{"10.88.0.2/24"}, []string{"10.88.0.1"})
	p1 := e.addPeer(t, e.tag+"b1", []string{"10.91.0.2/24"}, []string{"10.91.0.1"})
	p2 := e.addPeer(t, e.tag+"b2", []string{"10.92.0.2/24"}, []string{"10.92.0.1"})
	p3 := e.addPeer(t, e.tag+"b2", []string{"10.92.0.3/24"}, []string{"10.92.0.1"})
	for _, p := range []*peer{out, p1, p2, p3} {
		serve(t, p.ns, 8080)
	}
	reach(t, p1.ns, chaintest.HostPort("10.92.0.2", 8080))

	confs := map[*peer]string{}
	for i, p := range []*peer{p1, p2, p3} {
		confs[p] = e.conf(t, "firewall", p.prevResult(), map[string]any{"ingressPolicy": "same-bridge"})
		e.must(t, "firewall", "ADD", string(rune('1'+i)), p.ns.Path, confs[p])
	}
	blocked(t, p1.ns, chaintest.HostPort("10.92.0.2", 8080))
	blocked(t, p2.ns, chaintest.HostPort("10.91.0.2", 8080))
	blocked(t, p3.ns, chaintest.HostPort("10.91.0.2", 8080))
	reach(t, p3.ns, chaintest.HostPort("10.92.0.2", 8080)) // same bridge
	reach(t, p1.ns, chaintest.HostPort("10.88.0.2", 8080)) // the outside, routed
	reach(t, out.ns, chaintest.HostPort("10.91.0.2", 8080))
	e.must(t, "firewall", "CHECK", "1", p1.ns.Path, confs[p1])

	// Once p2 leaves, it is neither protected nor treated as isolated.
	e.must(t, "firewall", "DEL", "2", p2.ns.Path, confs[p2])
	reach(t, p1.ns, chaintest.HostPort("10.92.0.2", 8080))
	reach(t, p2.ns, chaintest.HostPort("10.91.0.2", 8080))
	blocked(t, p3.ns, chaintest.HostPort("10.91.0.2", 8080))

	e.must(t, "firewall", "DEL", "1", p1.ns.Path, confs[p1])
	e.must(t, "firewall", "DEL", "3", p3.ns.Path, confs[p3])
	reach(t, p3.ns, chaintest.HostPort("10.91.0.2", 8080))
	e.noLeaks(t)
}

// isolated also drops connections from the same bridge (with br_netfilter,
// as in the reference: bridge-nf-call-iptables is 1 in a new netns here).
func TestIsolated(t *testing.T) {
	e := newEnv(t)
	var brnf []byte
	var brnfErr error
	e.host.Do(t, func() error {
		brnf, brnfErr = os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables")
		return nil
	})
	if brnfErr != nil || strings.TrimSpace(string(brnf)) != "1" {
		t.Skipf("skipped: bridged traffic does not reach the inet forward hook (bridge-nf-call-iptables: %q, %v)", brnf, brnfErr)
	}
	e.addBridge(t, e.tag+"b1", "10.91.0.1/24", "fd00:91::1/64")
	out := e.addPeer(t, "", []string{"10.88.0.2/24"}, []string{"10.88.0.1"})
	p1 := e.addPeer(t, e.tag+"b1", []string{"10.91.0.2/24", "fd00:91::2/64"}, []string{"10.91.0.1", "fd00:91::1"})
	p2 := e.addPeer(t, e.tag+"b1", []string{"10.91.0.3/24", "fd00:91::3/64"}, []string{"10.91.0.1", "fd00:91::1"})
	for _, p := range []*peer{out, p1, p2} {
		serve(t, p.ns, 8080)
	}
	reach(t, p2.ns, chaintest.HostPort("10.91.0.2", 8080))
	conf := e.conf(t, "firewall", p1.prevResult(), map[string]any{"ingressPolicy": "isolated"})
	e.must(t, "firewall", "ADD", "1", p1.ns.Path, conf)
	blocked(t, p2.ns, chaintest.HostPort("10.91.0.2", 8080))
	blocked(t, p2.ns, chaintest.HostPort("fd00:91::2", 8080))
	reach(t, out.ns, chaintest.HostPort("10.91.0.2", 8080))
	reach(t, p1.ns, chaintest.HostPort("10.88.0.2", 8080))
	e.must(t, "firewall", "CHECK", "1", p1.ns.Path, conf)
	e.must(t, "firewall", "DEL", "1", p1.ns.Path, conf)
	reach(t, p2.ns, chaintest.HostPort("10.91.0.2", 8080))
	e.noLeaks(t)
}

func TestGC(t *testing.T) {
	e := newEnv(t)
	e.addBridge(t, e.tag+"b1", "10.91.0.1/24")
	out := e.addPeer(t, "", []string{"10.88.0.2/24"}, []string{"10.88.0.1"})
	p1 := e.addPeer(t, e.tag+"b1", []string{"10.91.0.2/24"}, []string{"10.91.0.1"})
	p2 := e.addPeer(t, e.tag+"b1", []string{"10.91.0.3/24"}, []string{"10.91.0.1"})
	serve(t, out.ns, 9000)
	e.host.Do(t, func() error { return dropForward(e.tag) })
	extra := map[string]any{"ingressPolicy": "same-bridge"}
	c1 := e.conf(t, "firewall", p1.prevResult(), extra)
	c2 := e.conf(t, "firewall", p2.prevResult(), extra)
	e.must(t, "firewall", "ADD", "1", p1.ns.Path, c1)
	e.must(t, "firewall", "ADD", "2", p2.ns.Path, c2)
	reach(t, p1.ns, chaintest.HostPort("10.88.0.2", 9000))
	reach(t, p2.ns, chaintest.HostPort("10.88.0.2", 9000))

	gc := e.conf(t, "firewall", nil, map[string]any{"cni.dev/valid-attachments": []map[string]string{{"containerID": "1", "ifname": "eth0"}}})
	e.must(t, "firewall", "GC", "", "", gc)
	reach(t, p1.ns, chaintest.HostPort("10.88.0.2", 9000))
	blocked(t, p2.ns, chaintest.HostPort("10.88.0.2", 9000))
	e.must(t, "firewall", "CHECK", "1", p1.ns.Path, c1)
	if err := e.exec(t, "firewall", "CHECK", "2", p2.ns.Path, c2); err == nil {
		t.Error("CHECK of the collected attachment succeeded")
	}
	// Another network's GC leaves this one alone.
	e.must(t, "firewall", "GC", "", "", strings.Replace(gc, e.tag, e.tag+"x", 1))
	reach(t, p1.ns, chaintest.HostPort("10.88.0.2", 9000))

	e.must(t, "firewall", "GC", "", "", e.conf(t, "firewall", nil, map[string]any{"cni.dev/valid-attachments": []any{}}))
	blocked(t, p1.ns, chaintest.HostPort("10.88.0.2", 9000))
	if got := forwardRules(t, e); len(got) != 1 {
		t.Errorf("ip filter FORWARD after GC: %q, want only the admin rule", got)
	}
	e.noLeaks(t)
}

func TestBadInput(t *testing.T) {
	e := newEnv(t)
	pod, _ := routedPair(t, e)
	prev := pod.prevResult()
	cases := []struct {
		name  string
		conf  string
		code  uint
		words []string
	}{
		{"backend", e.conf(t, "firewall", prev, map[string]any{"backend": "pf"}), 7, []string{"backend", "pf"}},
		{"ingressPolicy", e.conf(t, "firewall", prev, map[string]any{"ingressPolicy": "closed"}), 7, []string{"ingressPolicy", "closed"}},
		{"foreignChains", e.conf(t, "firewall", prev, map[string]any{"foreignChains": "all"}), 7, []string{"foreignChains", "all"}},
		{"admin chain", e.conf(t, "firewall", prev, map[string]any{"iptablesAdminChainName": "forward"}), 7, []string{"iptablesAdminChainName"}},
		{"type", `{"cniVersion":"1.1.0","name":"n","type":"firewall","ingressPolicy":3}`, 6, []string{"ingressPolicy"}},
		{"no prevResult", e.conf(t, "firewall", nil, nil), 7, []string{"prevResult"}},
		{"no bridge", e.conf(t, "firewall", prev, map[string]any{"ingressPolicy": "same-bridge"}), 7, []string{"same-bridge", "bridge"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := e.exec(t, "firewall", "ADD", "a", pod.ns.Path, c.conf)
			if err == nil {
				t.Fatal("ADD succeeded")
			}
			if err.Code != c.code {
				t.Errorf("code %d (%s), want %d", err.Code, err.Msg, c.code)
			}
			for _, w := range c.words {
				if !strings.Contains(err.Msg, w) {
					t.Errorf("message %q does not name %q", err.Msg, w)
				}
			}
		})
	}
	e.noLeaks(t)
	// DEL does not judge what ADD would refuse: it removes by attachment.
	e.must(t, "firewall", "ADD", "a", pod.ns.Path, e.conf(t, "firewall", prev, nil))
	e.must(t, "firewall", "DEL", "a", pod.ns.Path, cases[1].conf)
	e.noLeaks(t)
}
