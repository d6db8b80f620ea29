package hostlocal_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types020 "github.com/containernetworking/cni/pkg/types/020"
	current "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

const dualStack = `{"type":"host-local",
	"ranges":[[{"subnet":"10.44.0.0/24"}],[{"subnet":"fd00:44::/64"}]],
	"routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.44.0.254"},{"dst":"::/0"}]}`

// TestLifecycleThroughLibcni runs host-local as the only plugin of a list,
// dual-stack, for every result version a runtime may ask for.
func TestLifecycleThroughLibcni(t *testing.T) {
	cnitest.Root(t)
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			tag := cnitest.Tag(t)
			dir := t.TempDir()
			resolv := filepath.Join(dir, "resolv.conf")
			if err := os.WriteFile(resolv, []byte("# test\nnameserver 10.44.0.53\nnameserver fd00:44::53\ndomain cluster.test\nsearch a.test b.test\noptions ndots:5\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			ipam := strings.Replace(dualStack, `"type":"host-local",`, `"type":"host-local","dataDir":"`+dir+`","resolvConf":"`+resolv+`",`, 1)
			list := cnitest.ConfList(t, `{"cniVersion":"`+v+`","name":"`+tag+`","plugins":[{"type":"host-local","ipam":`+ipam+`}]}`)
			r := cnitest.NewRunner(t)
			ctx := context.Background()
			nsA, nsB := cnitest.NewNetns(t, tag+"a"), cnitest.NewNetns(t, tag+"b")
			rtA, rtB := cnitest.RuntimeConf(tag+"a", nsA.Path, "eth0"), cnitest.RuntimeConf(tag+"b", nsB.Path, "eth0")

			res, err := r.CNI.AddNetworkList(ctx, list, rtA)
			if err != nil {
				t.Fatalf("ADD a: %v", err)
			}
			if res.Version() != v {
				t.Errorf("result version %s, want %s", res.Version(), v)
			}
			cur, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(cur)
			equal(t, "a's addresses", addrs(t, b), "10.44.0.2/24 gw 10.44.0.1", "fd00:44::2/64 gw fd00:44::1")
			if len(cur.Interfaces) != 0 {
				t.Errorf("IPAM result lists interfaces: %+v", cur.Interfaces)
			}
			if len(cur.Routes) != 3 || cur.Routes[0].Dst.String() != "0.0.0.0/0" || cur.Routes[1].GW.String() != "10.44.0.254" || cur.Routes[2].Dst.String() != "::/0" {
				t.Errorf("routes %+v", cur.Routes)
			}
			if strings.Join(cur.DNS.Nameservers, " ") != "10.44.0.53 fd00:44::53" || cur.DNS.Domain != "cluster.test" ||
				strings.Join(cur.DNS.Search, " ") != "a.test b.test" || strings.Join(cur.DNS.Options, " ") != "ndots:5" {
				t.Errorf("DNS from resolvConf: %+v", cur.DNS)
			}

			res, err = r.CNI.AddNetworkList(ctx, list, rtB)
			if err != nil {
				t.Fatalf("ADD b: %v", err)
			}
			cur, _ = current.NewResultFromResult(res)
			b, _ = json.Marshal(cur)
			equal(t, "b's addresses", addrs(t, b), "10.44.0.3/24 gw 10.44.0.1", "fd00:44::3/64 gw fd00:44::1")

			if v != "0.3.1" {
				for _, rt := range []*libcni.RuntimeConf{rtA, rtB} {
					if err := r.CNI.CheckNetworkList(ctx, list, rt); err != nil {
						t.Fatalf("CHECK %s: %v", rt.ContainerID, err)
					}
				}
			}
			if err := r.CNI.GetStatusNetworkList(ctx, list); err != nil {
				t.Fatalf("STATUS: %v", err)
			}
			if err := r.CNI.DelNetworkList(ctx, list, rtA); err != nil {
				t.Fatalf("DEL a: %v", err)
			}
			// DEL is idempotent, and works with the namespace gone.
			nsB.Remove(t)
			for i := 0; i < 2; i++ {
				for _, rt := range []*libcni.RuntimeConf{rtA, rtB} {
					if err := r.CNI.DelNetworkList(ctx, list, rt); err != nil {
						t.Fatalf("DEL %s (round %d): %v", rt.ContainerID, i, err)
					}
				}
			}
			cnitest.EmptyDir(t, dir, "lock", "last_reserved_ip.0", "last_reserved_ip.1", "resolv.conf")
		})
	}
}

// TestReferenceLayout: what is on disk is what the reference plugin
// writes and reads, so nodes migrate both ways.
func TestReferenceLayout(t *testing.T) {
	h := newHarness(t, `{"type":"host-local","subnet":"10.45.0.0/24","rangeStart":"10.45.0.10","gateway":"10.45.0.1"}`)
	// A reservation the reference plugin made before the upgrade, and one
	// from its even older format holding only the container ID.
	if err := os.MkdirAll(h.netDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	for ip, content := range map[string]string{"10.45.0.10": "oldpod\r\neth0", "10.45.0.11": "ancient"} {
		if err := os.WriteFile(filepath.Join(h.netDir(), ip), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	equal(t, "ADD", h.add("new1", call{}), "10.45.0.12/24 gw 10.45.0.1")
	equal(t, "ADD on eth1", h.add("new1", call{ifname: "eth1"}), "10.45.0.13/24 gw 10.45.0.1")
	res := h.reservations()
	if res["10.45.0.12"] != "new1\r\neth0" || res["10.45.0.13"] != "new1\r\neth1" {
		t.Errorf("reservation files hold %q and %q, want the reference's <id>\\r\\n<ifname>", res["10.45.0.12"], res["10.45.0.13"])
	}
	if b, err := os.ReadFile(filepath.Join(h.netDir(), "last_reserved_ip.0")); err != nil || string(b) != "10.45.0.13" {
		t.Errorf("last_reserved_ip.0 = %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(h.netDir(), "lock")); err != nil {
		t.Errorf("lock file: %v", err)
	}
	// tripod's index of an attachment is a hard link to one of its
	// reservations, so the reference plugin's release by content (after a
	// rollback) takes it too and leaves nothing behind.
	if n := h.metaFiles(); n != 2 {
		t.Errorf("%d index links for 2 attachments", n)
	}
	h.referenceRelease("new1", "eth1")
	if n := h.metaFiles(); n != 1 {
		t.Errorf("%d index links left after the reference released new1/eth1, want 1", n)
	}
	h.ok("DEL", "new1", call{ifname: "eth1"})

	// DEL of the pre-upgrade attachments works without a record.
	h.ok("DEL", "oldpod", call{})
	h.ok("DEL", "ancient", call{ifname: "eth3"})
	equal(t, "after DELs", h.reservedIPs(), "10.45.0.12")
	h.ok("DEL", "new1", call{})
	h.clean()
}

// TestAllocationOrder: addresses go round-robin from the last one handed
// out, across the ranges of a set, never the gateway, the subnet's address
// or the IPv4 broadcast.
func TestAllocationOrder(t *testing.T) {
	t.Run("whole IPv4 subnet", func(t *testing.T) {
		h := newHarness(t, `{"type":"host-local","ranges":[[{"subnet":"10.46.0.0/29"}]]}`)
		var got []string
		for i := 0; i < 5; i++ {
			got = append(got, h.add(fmt.Sprint("c", i), call{})...)
		}
		equal(t, "order", got, "10.46.0.2/29 gw 10.46.0.1", "10.46.0.3/29 gw 10.46.0.1", "10.46.0.4/29 gw 10.46.0.1", "10.46.0.5/29 gw 10.46.0.1", "10.46.0.6/29 gw 10.46.0.1")
		h.fails("ADD", "c5", call{}, 100, "10.46.0.0/29")
		// Freed addresses come back only after the end of the range.
		h.ok("DEL", "c1", call{})
		h.ok("DEL", "c3", call{})
		equal(t, "after wrap", h.add("c6", call{}), "10.46.0.3/29 gw 10.46.0.1")
		equal(t, "next", h.add("c7", call{}), "10.46.0.5/29 gw 10.46.0.1")
		for _, id := range []string{"c0", "c2", "c4", "c6", "c7"} {
			h.ok("DEL", id, call{})
		}
		h.clean()
	})
	t.Run("range over the subnet and broadcast addresses", func(t *testing.T) {
		h := newHarness(t, `{"type":"host-local","ranges":[[{"subnet":"10.46.4.0/29","rangeStart":"10.46.4.0","rangeEnd":"10.46.4.7"}]]}`)
		for i := 0; i < 5; i++ {
			h.add(fmt.Sprint("c", i), call{})
		}
		equal(t, "reserved", h.reservedIPs(), "10.46.4.2", "10.46.4.3", "10.46.4.4", "10.46.4.5", "10.46.4.6")
		h.fails("ADD", "c5", call{}, 100, "10.46.4.0/29")
		for i := 0; i < 5; i++ {
			h.ok("DEL", fmt.Sprint("c", i), call{})
		}
		h.clean()
	})
	t.Run("round robin after DEL", func(t *testing.T) {
		h := newHarness(t, `{"type":"host-local","ranges":[[{"subnet":"10.46.1.0/24","rangeStart":"10.46.1.100","rangeEnd":"10.46.1.110","gateway":"10.46.1.101"}]]}`)
		equal(t, "a", h.add("a", call{}), "10.46.1.100/24 gw 10.46.1.101")
		equal(t, "b skips the gateway", h.add("b", call{}), "10.46.1.102/24 gw 10.46.1.101")
		h.ok("DEL", "a", call{})
		equal(t, "c does not reuse a's at once", h.add("c", call{}), "10.46.1.103/24 gw 10.46.1.101")
		h.ok("DEL", "b", call{})
		h.ok("DEL", "c", call{})
		h.clean()
	})
	t.Run("several ranges in a set", func(t *testing.T) {
		h := newHarness(t, `{"type":"host-local","ranges":[[{"subnet":"10.46.2.0/30"},{"subnet":"10.46.3.0/24","rangeStart":"10.46.3.7","rangeEnd":"10.46.3.8"}]]}`)
		var got []string
		for i := 0; i < 3; i++ {
			got = append(got, h.add(fmt.Sprint("c", i), call{})...)
		}
		equal(t, "order", got, "10.46.2.2/30 gw 10.46.2.1", "10.46.3.7/24 gw 10.46.3.1", "10.46.3.8/24 gw 10.46.3.1")
		msg := h.fails("ADD", "c3", call{}, 100, "10.46.2.0/30")
		if !strings.Contains(msg, "10.46.3.0/24") {
			t.Errorf("exhaustion message does not name every range: %s", msg)
		}
		for i := 0; i < 3; i++ {
			h.ok("DEL", fmt.Sprint("c", i), call{})
		}
		h.clean()
	})
	t.Run("IPv6 hands out the last address", func(t *testing.T) {
		h := newHarness(t, `{"type":"host-local","ranges":[[{"subnet":"fd00:46::/126"}]]}`)
		equal(t, "a", h.add("a", call{}), "fd00:46::2/126 gw fd00:46::1")
		equal(t, "b", h.add("b", call{}), "fd00:46::3/126 gw fd00:46::1")
		h.fails("ADD", "c", call{}, 100, "fd00:46::/126")
		h.ok("DEL", "a", call{})
		h.ok("DEL", "b", call{})
		h.clean()
	})
}

func TestDualStackAndRangeSets(t *testing.T) {
	h := newHarness(t, `{"type":"host-local","ranges":[[{"subnet":"10.47.0.0/24"}],[{"subnet":"fd00:47::/64","gateway":"fd00:47::fe"}],[{"subnet":"10.47.1.0/24","rangeStart":"10.47.1.50"}]]}`)
	equal(t, "one address per set", h.add("a", call{}), "10.47.0.2/24 gw 10.47.0.1", "fd00:47::1/64 gw fd00:47::fe", "10.47.1.50/24 gw 10.47.1.1")
	for i := 0; i < 3; i++ {
		if _, err := os.Stat(filepath.Join(h.netDir(), fmt.Sprint("last_reserved_ip.", i))); err != nil {
			t.Errorf("range set %d: %v", i, err)
		}
	}
	h.ok("CHECK", "a", call{})
	h.ok("DEL", "a", call{})
	h.clean()

	// Pre-0.3.0 results carry one address per family.
	h.version = "0.2.0"
	h.fails("ADD", "b", call{}, 7, "0.2.0")
	res := h.run("ADD", "b", call{ipam: `{"type":"host-local","ranges":[[{"subnet":"10.47.0.0/24"}],[{"subnet":"fd00:47::/64"}]]}`})
	if res.Err != nil {
		t.Fatalf("ADD at 0.2.0: %+v", res.Err)
	}
	old := &types020.Result{}
	if err := json.Unmarshal(res.Stdout, old); err != nil || old.IP4 == nil || old.IP6 == nil {
		t.Fatalf("0.2.0 result %s (%v)", res.Stdout, err)
	}
	h.ok("DEL", "b", call{})
	h.clean()
}

// TestRequestedIPs: CNI_ARGS IP, args.cni.ips and the ips capability.
func TestRequestedIPs(t *testing.T) {
	h := newHarness(t, dualStack)
	equal(t, "CNI_ARGS", h.add("a", call{cniArgs: "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.44.0.77"}), "10.44.0.77/24 gw 10.44.0.1", "fd00:44::2/64 gw fd00:44::1")
	equal(t, "args.cni.ips", h.add("b", call{top: map[string]any{"args": map[string]any{"cni": map[string]any{"ips": []string{"fd00:44::99", "10.44.0.99"}}}}}),
		"10.44.0.99/24 gw 10.44.0.1", "fd00:44::99/64 gw fd00:44::1")
	// Allocation goes on after the last requested address.
	equal(t, "next free", h.add("c", call{}), "10.44.0.100/24 gw 10.44.0.1", "fd00:44::9a/64 gw fd00:44::1")

	t.Run("ips capability through libcni", func(t *testing.T) {
		dir := t.TempDir()
		ipam := strings.Replace(dualStack, `"type":"host-local",`, `"type":"host-local","dataDir":"`+dir+`",`, 1)
		list := cnitest.ConfList(t, `{"cniVersion":"1.1.0","name":"`+h.tag+`","plugins":[{"type":"host-local","capabilities":{"ips":true},"ipam":`+ipam+`}]}`)
		r := cnitest.NewRunner(t)
		rt := cnitest.RuntimeConf(h.tag, h.ns.Path, "eth0")
		rt.CapabilityArgs = map[string]any{"ips": []string{"10.44.0.200/24", "fd00:44::200/64"}}
		res, err := r.CNI.AddNetworkList(context.Background(), list, rt)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		b, _ := json.Marshal(res)
		equal(t, "requested", addrs(t, b), "10.44.0.200/24 gw 10.44.0.1", "fd00:44::200/64 gw fd00:44::1")
		if err := r.CNI.DelNetworkList(context.Background(), list, rt); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		cnitest.EmptyDir(t, dir, "lock", "last_reserved_ip.0", "last_reserved_ip.1")
	})

	before := h.reservedIPs()
	msg := h.fails("ADD", "d", call{cniArgs: "IP=10.44.0.77"}, 7, "10.44.0.77")
	if !strings.Contains(msg, "already reserved") || !strings.Contains(msg, "container a") {
		t.Errorf("taken address message does not say who holds it: %s", msg)
	}
	h.fails("ADD", "d", call{cniArgs: "IP=10.99.0.1"}, 7, "10.99.0.1 is outside every range")
	h.fails("ADD", "d", call{cniArgs: "IP=10.44.0.1"}, 7, "gateway")
	h.fails("ADD", "d", call{cniArgs: "IP=10.44.0.255"}, 7, "outside every range")
	whole := `{"type":"host-local","ranges":[[{"subnet":"10.44.0.0/24","rangeStart":"10.44.0.0","rangeEnd":"10.44.0.255"}]]}`
	h.fails("ADD", "d", call{ipam: whole, cniArgs: "IP=10.44.0.255"}, 7, "broadcast")
	h.fails("ADD", "d", call{ipam: whole, cniArgs: "IP=10.44.0.0"}, 7, "subnet")
	h.fails("ADD", "d", call{cniArgs: "IP=banana"}, 7, "banana")
	h.fails("ADD", "d", call{top: map[string]any{"runtimeConfig": map[string]any{"ips": []string{"10.44.0.5", "10.44.0.6"}}}}, 7, "one address per range set")
	equal(t, "failed ADDs reserve nothing", h.reservedIPs(), before...)
	for _, id := range []string{"a", "b", "c"} {
		h.ok("DEL", id, call{})
	}
	h.clean()
}

// TestIPRangesCapability: the runtime's ipRanges replace the configured
// ranges.
func TestIPRangesCapability(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	dir := t.TempDir()
	ns := cnitest.NewNetns(t, tag)
	list := cnitest.ConfList(t, `{"cniVersion":"1.0.0","name":"`+tag+`","plugins":[{"type":"host-local","capabilities":{"ipRanges":true},
		"ipam":{"type":"host-local","dataDir":"`+dir+`","ranges":[[{"subnet":"10.48.0.0/24"}]]}}]}`)
	r := cnitest.NewRunner(t)
	rt := cnitest.RuntimeConf(tag, ns.Path, "eth0")
	rt.CapabilityArgs = map[string]any{"ipRanges": [][]map[string]string{{{"subnet": "10.48.9.0/24", "rangeStart": "10.48.9.40"}}, {{"subnet": "fd00:48::/64"}}}}
	res, err := r.CNI.AddNetworkList(context.Background(), list, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	b, _ := json.Marshal(res)
	equal(t, "from ipRanges", addrs(t, b), "10.48.9.40/24 gw 10.48.9.1", "fd00:48::2/64 gw fd00:48::1")
	if err := r.CNI.CheckNetworkList(context.Background(), list, rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := r.CNI.DelNetworkList(context.Background(), list, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	cnitest.EmptyDir(t, dir, "lock", "last_reserved_ip.0", "last_reserved_ip.1")
}

// TestConcurrentAdds: parallel ADDs through the real binary never hand
// out one address twice.
func TestConcurrentAdds(t *testing.T) {
	h := newHarness(t, `{"type":"host-local","ranges":[[{"subnet":"10.49.0.0/24"}],[{"subnet":"fd00:49::/64"}]]}`)
	const n = 32
	results := make([][]string, n)
	errs := make([]*types.Error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res := h.run("ADD", fmt.Sprint("c", i), call{})
			if res.Err != nil {
				errs[i] = res.Err
				return
			}
			results[i] = addrs(t, res.Stdout)
		}(i)
	}
	wg.Wait()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("ADD c%d: %+v", i, errs[i])
		}
		if len(results[i]) != 2 {
			t.Fatalf("ADD c%d: %v", i, results[i])
		}
		for _, a := range results[i] {
			if j, dup := seen[a]; dup {
				t.Errorf("%s handed out to c%d and c%d", a, j, i)
			}
			seen[a] = i
		}
	}
	if got := len(h.reservations()); got != 2*n {
		t.Errorf("%d reservation files, want %d", got, 2*n)
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if res := h.run("DEL", fmt.Sprint("c", i), call{}); res.Err != nil {
				errs[i] = res.Err
			}
		}(i)
	}
	wg.Wait()
	for i, e := range errs {
		if e != nil {
			t.Errorf("DEL c%d: %+v", i, e)
		}
	}
	h.clean()
}

// TestExhaustionAndReclaim: a full range is reclaimed from containers that
// are gone — of a previous boot, or whose netns vanished — and only then
// reported exhausted.
func TestExhaustionAndReclaim(t *testing.T) {
	h := newHarness(t, `{"type":"host-local","ranges":[[{"subnet":"10.50.0.0/29"}],[{"subnet":"fd00:50::/64"}]]}`)
	gone := cnitest.NewNetns(t, h.tag+"g")
	h.add("live1", call{})
	h.add("oldboot", call{})
	h.add("nsgone", call{netns: gone.Path})
	h.add("live2", call{})
	h.add("live3", call{})
	h.fails("ADD", "x", call{}, 100, "10.50.0.0/29")
	h.fails("STATUS", "", call{}, 50, "full")

	// Fake a previous boot for one, make the other's namespace vanish.
	h.editLabel("oldboot", "eth0", func(r map[string]any) { r["bootID"] = "00000000-0000-0000-0000-000000000000" })
	gone.Remove(t)
	h.ok("STATUS", "", call{})

	before := h.reservations()
	got := h.add("new1", call{})
	after := h.reservations()
	for ip, holder := range after {
		if strings.HasPrefix(holder, "oldboot") || strings.HasPrefix(holder, "nsgone") {
			t.Errorf("%s still reserved by gone %q after reclaim", ip, holder)
		}
	}
	// Both gone attachments lose every address, IPv6 included.
	if len(after) != len(before)-4+2 {
		t.Errorf("reservations %d -> %d, want the 4 of the gone attachments freed and 2 new", len(before), len(after))
	}
	if !strings.HasPrefix(got[0], "10.50.0.3/") && !strings.HasPrefix(got[0], "10.50.0.4/") {
		t.Errorf("new1 got %v, want a reclaimed address (.3 or .4)", got)
	}
	h.add("new2", call{})
	msg := h.fails("ADD", "x", call{}, 100, "10.50.0.0/29")
	if !strings.Contains(msg, h.tag) {
		t.Errorf("exhaustion message does not name the network: %s", msg)
	}
	if h.metaFiles() != 5 {
		t.Errorf("%d index links for 5 live attachments", h.metaFiles())
	}
	for _, id := range []string{"live1", "live2", "live3", "new1", "new2"} {
		h.ok("DEL", id, call{})
	}
	h.clean()
}

// TestRequestedStaleAddress: a requested address held by a gone
// container is taken over.
func TestRequestedStaleAddress(t *testing.T) {
	h := newHarness(t, `{"type":"host-local","ranges":[[{"subnet":"10.51.0.0/24"}]]}`)
	gone := cnitest.NewNetns(t, h.tag+"g")
	equal(t, "old", h.add("old", call{netns: gone.Path}), "10.51.0.2/24 gw 10.51.0.1")
	h.fails("ADD", "new", call{cniArgs: "IP=10.51.0.2"}, 7, "already reserved")
	gone.Remove(t)
	equal(t, "new", h.add("new", call{cniArgs: "IP=10.51.0.2"}), "10.51.0.2/24 gw 10.51.0.1")
	h.ok("DEL", "new", call{})
	h.ok("DEL", "old", call{})
	h.clean()
}

// TestGC: with a valid-attachments list, exactly the attachments not in it
// lose their reservations; without one, only those whose container is
// gone.
func TestGC(t *testing.T) {
	h := newHarness(t, `{"type":"host-local","ranges":[[{"subnet":"10.52.0.0/24"}],[{"subnet":"fd00:52::/64"}]]}`)
	gone := cnitest.NewNetns(t, h.tag+"g")
	h.add("a", call{})
	h.add("a", call{ifname: "eth1"})
	h.add("b", call{})
	h.add("c", call{netns: gone.Path})
	// A reference-plugin reservation holding only its container's ID.
	if err := os.WriteFile(filepath.Join(h.netDir(), "10.52.0.200"), []byte("legacy"), 0o644); err != nil {
		t.Fatal(err)
	}
	gone.Remove(t)

	// No list: only c, whose netns is gone, is collected.
	h.ok("GC", "", call{})
	holders := func() []string {
		set := map[string]bool{}
		for _, v := range h.reservations() {
			set[strings.ReplaceAll(v, "\r\n", "/")] = true
		}
		var s []string
		for k := range set {
			s = append(s, k)
		}
		return sortStrings(s)
	}
	equal(t, "after GC without list", holders(), "a/eth0", "a/eth1", "b/eth0", "legacy")

	valid := []types.GCAttachment{{ContainerID: "a", IfName: "eth0"}, {ContainerID: "legacy", IfName: "eth0"}}
	h.ok("GC", "", call{top: map[string]any{"cni.dev/valid-attachments": valid}})
	equal(t, "after GC with list", holders(), "a/eth0", "legacy")
	if h.metaFiles() != 1 {
		t.Errorf("%d index links left, want a/eth0's only", h.metaFiles())
	}
	h.ok("CHECK", "a", call{})

	// Through libcni: the attachments were not made by it, so only the
	// plugin's GC can free them.
	list := cnitest.ConfList(t, `{"cniVersion":"1.1.0","name":"`+h.tag+`","plugins":[{"type":"host-local","ipam":{"type":"host-local","dataDir":"`+h.dataDir+`","ranges":[[{"subnet":"10.52.0.0/24"}],[{"subnet":"fd00:52::/64"}]]}}]}`)
	r := cnitest.NewRunner(t)
	if err := r.CNI.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "a", IfName: "eth0"}}}); err != nil {
		t.Fatalf("GC through libcni: %v", err)
	}
	equal(t, "after libcni GC", holders(), "a/eth0")
	if err := r.CNI.GCNetworkList(context.Background(), list, &libcni.GCArgs{}); err != nil {
		t.Fatalf("GC through libcni: %v", err)
	}
	equal(t, "after GC with nothing valid", holders())
	h.clean()
}

func sortStrings(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

// TestDuplicateAdd: a second ADD for the same attachment is refused with
// 101 and reserves nothing; another interface is another attachment.
func TestDuplicateAdd(t *testing.T) {
	h := newHarness(t, dualStack)
	h.add("a", call{})
	before := h.reservedIPs()
	msg := h.fails("ADD", "a", call{}, 101, "10.44.0.2")
	if !strings.Contains(msg, "DEL") {
		t.Errorf("duplicate message does not say what to do: %s", msg)
	}
	equal(t, "nothing new reserved", h.reservedIPs(), before...)
	h.add("a", call{ifname: "eth1"})
	h.ok("DEL", "a", call{})
	equal(t, "DEL frees only eth0", h.reservedIPs(), "10.44.0.3", "fd00:44::3")
	h.add("a", call{})
	h.ok("DEL", "a", call{})
	h.ok("DEL", "a", call{ifname: "eth1"})
	h.clean()
}

// TestDel: idempotent, and fine for attachments and networks that never
// existed.
func TestDel(t *testing.T) {
	h := newHarness(t, dualStack)
	h.ok("DEL", "never", call{})
	if _, err := os.Stat(h.netDir()); !os.IsNotExist(err) {
		t.Errorf("DEL of a network never used created %s", h.netDir())
	}
	h.add("a", call{})
	h.ok("DEL", "never", call{})
	equal(t, "DEL of another container frees nothing", h.reservedIPs(), "10.44.0.2", "fd00:44::2")
	// DEL reads only what finds the store: a config whose ranges became
	// invalid still cleans up.
	h.ok("DEL", "a", call{ipam: `{"type":"host-local","ranges":[[{"subnet":"nonsense"}]]}`})
	h.ok("DEL", "a", call{})
	h.clean()
}

func TestCheck(t *testing.T) {
	h := newHarness(t, dualStack)
	h.fails("CHECK", "a", call{}, 7, "no address is reserved")
	h.add("a", call{})
	h.ok("CHECK", "a", call{})
	h.fails("CHECK", "a", call{ifname: "eth1"}, 7, "interface eth1")
	prev := func(ips ...string) map[string]any {
		var l []map[string]string
		for _, ip := range ips {
			l = append(l, map[string]string{"address": ip})
		}
		return map[string]any{"prevResult": map[string]any{"cniVersion": "1.1.0", "ips": l}}
	}
	h.ok("CHECK", "a", call{top: prev("10.44.0.2/24", "fd00:44::2/64")})
	h.fails("CHECK", "a", call{top: prev("10.44.0.9/24", "fd00:44::2/64")}, 7, "10.44.0.2 is missing from prevResult")
	// A configuration that moved away from the reservation fails CHECK.
	h.fails("CHECK", "a", call{ipam: `{"type":"host-local","ranges":[[{"subnet":"10.44.0.0/24"}],[{"subnet":"fd00:45::/64"}]]}`}, 7, "range set 1")
	// A reservation file removed behind the plugin's back.
	for ip := range h.reservations() {
		os.Remove(filepath.Join(h.netDir(), ip))
	}
	h.fails("CHECK", "a", call{}, 7, "no address is reserved")
	h.ok("DEL", "a", call{})
	h.clean()
}

// TestFailedAddReleasesEarlierSets: when a later range set cannot give an
// address, what earlier sets gave is released.
func TestFailedAddReleasesEarlierSets(t *testing.T) {
	h := newHarness(t, `{"type":"host-local","ranges":[[{"subnet":"10.53.0.0/24"}],[{"subnet":"10.53.1.0/30"}]]}`)
	h.add("a", call{})
	before := h.reservedIPs()
	meta := h.metaFiles()
	h.fails("ADD", "b", call{}, 100, "range set 1 (10.53.1.0/30")
	equal(t, "after failed ADD", h.reservedIPs(), before...)
	if h.metaFiles() != meta {
		t.Errorf("failed ADD left an index link")
	}
	h.fails("ADD", "b", call{cniArgs: "IP=10.53.1.2"}, 7, "already reserved")
	equal(t, "after failed requested ADD", h.reservedIPs(), before...)
	h.ok("DEL", "a", call{})
	h.add("b", call{})
	h.ok("DEL", "b", call{})
	h.clean()
}

func TestStatus(t *testing.T) {
	h := newHarness(t, dualStack)
	h.ok("STATUS", "", call{})

	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	h.fails("STATUS", "", call{ipam: `{"type":"host-local","dataDir":"` + file + `","subnet":"10.54.0.0/24"}`}, 50, file)

	// A read-only data dir.
	ro := t.TempDir()
	if err := unix.Mount(ro, ro, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mounting %s: %v", ro, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(ro, unix.MNT_DETACH) })
	if err := os.MkdirAll(filepath.Join(ro, h.tag), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("", ro, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remounting %s read-only: %v", ro, err)
	}
	h.fails("STATUS", "", call{ipam: `{"type":"host-local","dataDir":"` + ro + `","subnet":"10.54.0.0/24"}`}, 50, ro)
	h.fails("ADD", "a", call{ipam: `{"type":"host-local","dataDir":"` + ro + `","subnet":"10.54.0.0/24"}`}, 5, ro)
}

func TestBadInput(t *testing.T) {
	h := newHarness(t, dualStack)
	cases := []struct {
		name, ipam string
		top        map[string]any
		code       uint
		mention    string
	}{
		{"bad subnet", `{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/33"}]]}`, nil, 7, "10.1.0.0/33"},
		{"subnet not CIDR", `{"type":"host-local","subnet":"10.1.0.0"}`, nil, 7, `ipam.subnet "10.1.0.0"`},
		{"subnet too small", `{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/31"}]]}`, nil, 7, "too small"},
		{"rangeStart outside subnet", `{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.2.0.5"}]]}`, nil, 7, "rangeStart 10.2.0.5 is outside subnet 10.1.0.0/24"},
		{"rangeEnd not an IP", `{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24","rangeEnd":"x"}]]}`, nil, 7, `rangeEnd "x"`},
		{"rangeStart after rangeEnd", `{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.9","rangeEnd":"10.1.0.5"}]]}`, nil, 7, "10.1.0.9"},
		{"gateway outside subnet", `{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24","gateway":"10.9.0.1"}]]}`, nil, 7, "gateway 10.9.0.1"},
		{"range of the gateway only", `{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.1","rangeEnd":"10.1.0.1"}]]}`, nil, 7, "no address"},
		{"overlapping range sets", `{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/16"}],[{"subnet":"10.1.5.0/24"}]]}`, nil, 7, "overlaps range set 0 (10.1.0.0/16"},
		{"overlapping ranges in a set", `{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.1.0.0/25"}]]}`, nil, 7, "overlaps"},
		{"mixed families in a set", `{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"fd00::/64"}]]}`, nil, 7, "mixes IPv4 and IPv6"},
		{"empty range set", `{"type":"host-local","ranges":[[]]}`, nil, 7, "range set 0 is empty"},
		{"no ranges", `{"type":"host-local"}`, nil, 7, "no IP ranges"},
		{"bad route", `{"type":"host-local","subnet":"10.1.0.0/24","routes":[{"dst":"everywhere"}]}`, nil, 7, "everywhere"},
		{"bad ipRanges", `{"type":"host-local","subnet":"10.1.0.0/24"}`, map[string]any{"runtimeConfig": map[string]any{"ipRanges": [][]map[string]string{{{"subnet": "300.1.0.0/24"}}}}}, 7, "runtimeConfig.ipRanges[0][0].subnet"},
		{"no ipam", "", map[string]any{"ipam": nil}, 7, `"ipam"`},
		{"network name escaping the data dir", `{"type":"host-local","subnet":"10.1.0.0/24"}`, map[string]any{"name": "../etc"}, 7, "network name"},
		{"ranges of the wrong type", `{"type":"host-local","ranges":"10.1.0.0/24"}`, nil, 6, "ranges"},
		{"subnet of the wrong type", `{"type":"host-local","subnet":24}`, nil, 6, "subnet"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, cmd := range []string{"ADD", "CHECK", "STATUS"} {
				hc := *h
				hc.t = t
				hc.fails(cmd, "a", call{ipam: c.ipam, top: c.top}, c.code, c.mention)
			}
		})
	}
	// resolvConf is read by ADD only.
	h.fails("ADD", "a", call{ipam: `{"type":"host-local","subnet":"10.1.0.0/24","resolvConf":"/nonexistent/resolv.conf"}`}, 7, "/nonexistent/resolv.conf")
	// Malformed JSON.
	res := cnitest.Exec(t, "host-local", map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "a", "CNI_NETNS": h.ns.Path, "CNI_IFNAME": "eth0", "CNI_PATH": cnitest.BinDir(t)}, `{"cniVersion":"1.0.0",`)
	if res.Err == nil || res.Err.Code != 6 {
		t.Errorf("malformed JSON: %+v", res.Err)
	}
	if n := len(h.reservations()); n != 0 {
		t.Errorf("failed ADDs left %d reservations", n)
	}
	h.clean()
}
