package l2test_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/vmtest"
)

// The TestGuest* tests run inside the VM that TestInVM boots, where the
// kernel has macvlan, ipvlan and 8021q. They create their masters (dummy
// and veth links) in the VM's root namespace.

// net3 is a /24 test subnet chosen from the tag so that tests never share
// one.
func net3(tag string) string {
	var b byte
	for _, c := range tag {
		b = b*31 + byte(c)
	}
	return fmt.Sprintf("10.%d.%d", 100+b%100, b)
}

func plugin(typ, tag, extra, ipam string) string {
	s := `{"type":"` + typ + `"`
	if extra != "" {
		s += "," + extra
	}
	if ipam != "" {
		s += `,"ipam":` + ipam
	}
	return s + "}"
}

func list(t *testing.T, version, tag, plugin string) *libcni.NetworkConfigList {
	t.Helper()
	return cnitest.ConfList(t, `{"cniVersion":"`+version+`","name":"`+tag+`","plugins":[`+plugin+`]}`)
}

func static(addr string) string {
	return `{"type":"static","addresses":[{"address":"` + addr + `"}]}`
}

// dummy creates an up dummy link in the current namespace, removed at the
// end of the test.
func dummy(t *testing.T, name string) netlink.Link {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatalf("creating dummy %s: %v", name, err)
	}
	t.Cleanup(func() { cnitest.DeleteLinks(name) })
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l
}

func add(t *testing.T, r *cnitest.Runner, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) *current.Result {
	t.Helper()
	res, err := r.CNI.AddNetworkList(context.Background(), l, rt)
	if err != nil {
		t.Fatalf("ADD %s in %s: %v", rt.IfName, rt.NetNS, err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	return cur
}

func del(t *testing.T, r *cnitest.Runner, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) {
	t.Helper()
	if err := r.CNI.DelNetworkList(context.Background(), l, rt); err != nil {
		t.Fatalf("DEL %s in %s: %v", rt.IfName, rt.NetNS, err)
	}
}

// onlyLinks asserts the namespace holds exactly the named links (lo is
// always allowed).
func onlyLinks(t *testing.T, ns *cnitest.Netns, names ...string) {
	t.Helper()
	want := map[string]bool{"lo": true}
	for _, n := range names {
		want[n] = true
	}
	ns.Do(t, func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			if !want[l.Attrs().Name] {
				t.Errorf("leaked link %s (%s) in %s", l.Attrs().Name, l.Type(), ns.Name)
			}
			delete(want, l.Attrs().Name)
		}
		delete(want, "lo")
		for n := range want {
			t.Errorf("link %s missing from %s", n, ns.Name)
		}
		return err
	})
}

// noPing asserts addr does not answer from ns.
func noPing(t *testing.T, ns *cnitest.Netns, addr string) {
	t.Helper()
	if out, err := ns.Exec(context.Background(), "ping", "-c", "1", "-W", "1", addr); err == nil {
		t.Errorf("%s answered from %s, want no connectivity:\n%s", addr, ns.Name, out)
	}
}

func hasAddr(t *testing.T, ns *cnitest.Netns, ifName, addr string) {
	t.Helper()
	l := ns.Link(t, ifName)
	ns.Do(t, func() error {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		for _, a := range addrs {
			if a.IPNet.String() == addr {
				return nil
			}
		}
		if err == nil {
			err = fmt.Errorf("%s lacks %s (has %v)", ifName, addr, addrs)
		}
		return err
	})
}

// lifecycle runs the common part of the two-pod tests: ADD both pods,
// CHECK, ping both ways, DEL, DEL again, and the leak checks.
type pod struct {
	ns   *cnitest.Netns
	rt   *libcni.RuntimeConf
	list *libcni.NetworkConfigList
	res  *current.Result
	addr string // without prefix length
}

func newPod(t *testing.T, r *cnitest.Runner, name, typ, tag, extra, cidr string) *pod {
	t.Helper()
	p := &pod{ns: cnitest.NewNetns(t, name), addr: strings.Split(cidr, "/")[0]}
	p.rt = cnitest.RuntimeConf(name, p.ns.Path, "eth0")
	p.list = list(t, "1.1.0", tag, plugin(typ, tag, extra, static(cidr)))
	p.res = add(t, r, p.list, p.rt)
	if len(p.res.Interfaces) != 1 || p.res.Interfaces[0].Name != "eth0" || p.res.Interfaces[0].Sandbox != p.ns.Path {
		t.Fatalf("result interfaces %v, want eth0 in %s", p.res.Interfaces, p.ns.Path)
	}
	if len(p.res.IPs) != 1 || p.res.IPs[0].Address.String() != cidr || p.res.IPs[0].Interface == nil || *p.res.IPs[0].Interface != 0 {
		t.Fatalf("result IPs %v, want %s on interface 0", p.res.IPs, cidr)
	}
	link := p.ns.Link(t, "eth0")
	if link.Type() != typ {
		t.Fatalf("eth0 is a %s link, want %s", link.Type(), typ)
	}
	if got := link.Attrs().HardwareAddr.String(); got != p.res.Interfaces[0].Mac {
		t.Errorf("eth0 MAC %s, result says %s", got, p.res.Interfaces[0].Mac)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		t.Error("eth0 is down after ADD")
	}
	hasAddr(t, p.ns, "eth0", cidr)
	return p
}

func (p *pod) check(t *testing.T, r *cnitest.Runner) {
	t.Helper()
	if err := r.CNI.CheckNetworkList(context.Background(), p.list, p.rt); err != nil {
		t.Errorf("CHECK %s: %v", p.ns.Name, err)
	}
}

func (p *pod) del(t *testing.T, r *cnitest.Runner, keep ...string) {
	t.Helper()
	del(t, r, p.list, p.rt)
	onlyLinks(t, p.ns, keep...)
	del(t, r, p.list, p.rt) // idempotent
}

func TestGuestMacvlan(t *testing.T) {
	vmtest.Guest(t)
	tag := cnitest.Tag(t)
	n := net3(tag)
	master := dummy(t, tag+"d")
	r := cnitest.NewRunner(t)
	extra := `"master":"` + tag + `d","mode":"bridge"`
	p1 := newPod(t, r, tag+"a", "macvlan", tag, extra, n+".2/24")
	p2 := newPod(t, r, tag+"b", "macvlan", tag, extra, n+".3/24")
	for _, p := range []*pod{p1, p2} {
		mv, ok := p.ns.Link(t, "eth0").(*netlink.Macvlan)
		if !ok || mv.Mode != netlink.MACVLAN_MODE_BRIDGE {
			t.Errorf("eth0 in %s: %+v, want a bridge-mode macvlan", p.ns.Name, p.ns.Link(t, "eth0"))
		}
		if mv != nil && mv.ParentIndex != master.Attrs().Index {
			t.Errorf("eth0's parent index %d, want the master's %d", mv.ParentIndex, master.Attrs().Index)
		}
	}
	if p1.res.Interfaces[0].Mac == p2.res.Interfaces[0].Mac {
		t.Errorf("both pods got MAC %s", p1.res.Interfaces[0].Mac)
	}
	p1.ns.Ping(t, p2.addr)
	p2.ns.Ping(t, p1.addr)
	p1.check(t, r)
	p2.check(t, r)

	// CHECK notices an address that went away.
	p1.ns.Do(t, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(n + ".2/24")
		return netlink.AddrDel(l, a)
	})
	if err := r.CNI.CheckNetworkList(context.Background(), p1.list, p1.rt); err == nil || !strings.Contains(err.Error(), n+".2") {
		t.Errorf("CHECK after the address was removed: %v, want an error naming it", err)
	}
	p1.ns.Do(t, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(n + ".2/24")
		return netlink.AddrAdd(l, a)
	})

	// A second ADD for the same interface is refused and leaves the
	// first attachment alone.
	res := cnitest.Exec(t, "macvlan", map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "other", "CNI_NETNS": p2.ns.Path, "CNI_IFNAME": "eth0", "CNI_PATH": cnitest.BinDir(t)},
		`{"cniVersion":"1.1.0","name":"`+tag+`","type":"macvlan",`+extra+`}`)
	if res.Err == nil || res.Err.Code != 101 {
		t.Errorf("second ADD of eth0: %+v, want code 101", res.Err)
	}
	p2.ns.Ping(t, p1.addr)

	if err := r.CNI.GCNetworkList(context.Background(), p1.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: p1.rt.ContainerID, IfName: "eth0"}}}); err != nil {
		t.Errorf("GC: %v", err)
	}
	if err := r.CNI.GetStatusNetworkList(context.Background(), p1.list); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	p1.del(t, r)
	// DEL after the namespace is gone: the kernel took the link with it.
	p2.ns.Remove(t)
	del(t, r, p2.list, p2.rt)
	cnitest.DeleteLinks(tag)
	cnitest.NoLinks(t, tag)
}

func TestGuestMacvlanModes(t *testing.T) {
	vmtest.Guest(t)
	tag := cnitest.Tag(t)
	dummy(t, tag+"d")
	r := cnitest.NewRunner(t)
	ns := cnitest.NewNetns(t, tag)
	for mode, want := range map[string]netlink.MacvlanMode{
		"": netlink.MACVLAN_MODE_BRIDGE, "private": netlink.MACVLAN_MODE_PRIVATE, "vepa": netlink.MACVLAN_MODE_VEPA, "passthru": netlink.MACVLAN_MODE_PASSTHRU,
	} {
		l := list(t, "1.1.0", tag, plugin("macvlan", tag, `"master":"`+tag+`d","mode":"`+mode+`"`, ""))
		rt := cnitest.RuntimeConf(tag, ns.Path, "net1")
		res := add(t, r, l, rt)
		if len(res.IPs) != 0 {
			t.Errorf("mode %q: L2-only ADD returned addresses %v", mode, res.IPs)
		}
		mv, ok := ns.Link(t, "net1").(*netlink.Macvlan)
		if !ok || mv.Mode != want {
			t.Errorf("mode %q: link %+v, want macvlan mode %d", mode, ns.Link(t, "net1"), want)
		}
		if ns.Link(t, "net1").Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("mode %q: net1 is down after an L2-only ADD", mode)
		}
		if err := r.CNI.CheckNetworkList(context.Background(), l, rt); err != nil {
			t.Errorf("mode %q: CHECK: %v", mode, err)
		}
		del(t, r, l, rt)
		onlyLinks(t, ns)
	}
	cnitest.DeleteLinks(tag)
	cnitest.NoLinks(t, tag)
}

func TestGuestMacvlanMAC(t *testing.T) {
	vmtest.Guest(t)
	tag := cnitest.Tag(t)
	dummy(t, tag+"d")
	r := cnitest.NewRunner(t)
	ns := cnitest.NewNetns(t, tag)
	l := list(t, "1.1.0", tag, plugin("macvlan", tag, `"master":"`+tag+`d","mtu":1400,"capabilities":{"mac":true}`, ""))
	for _, tc := range []struct {
		name string
		rt   func(*libcni.RuntimeConf)
		want string
	}{
		{"runtimeConfig", func(rt *libcni.RuntimeConf) { rt.CapabilityArgs = map[string]any{"mac": "02:00:00:aa:bb:01"} }, "02:00:00:aa:bb:01"},
		{"CNI_ARGS", func(rt *libcni.RuntimeConf) {
			rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"MAC", "02:00:00:aa:bb:02"}}
		}, "02:00:00:aa:bb:02"},
	} {
		rt := cnitest.RuntimeConf(tag, ns.Path, "eth0")
		tc.rt(rt)
		res := add(t, r, l, rt)
		link := ns.Link(t, "eth0")
		if got := link.Attrs().HardwareAddr.String(); got != tc.want || res.Interfaces[0].Mac != tc.want {
			t.Errorf("%s: link MAC %s, result MAC %s, want %s", tc.name, got, res.Interfaces[0].Mac, tc.want)
		}
		if link.Attrs().MTU != 1400 || res.Interfaces[0].Mtu != 1400 {
			t.Errorf("%s: MTU %d (result %d), want 1400", tc.name, link.Attrs().MTU, res.Interfaces[0].Mtu)
		}
		if err := r.CNI.CheckNetworkList(context.Background(), l, rt); err != nil {
			t.Errorf("%s: CHECK: %v", tc.name, err)
		}
		del(t, r, l, rt)
		onlyLinks(t, ns)
	}
	cnitest.DeleteLinks(tag)
	cnitest.NoLinks(t, tag)
}

func TestGuestIpvlan(t *testing.T) {
	vmtest.Guest(t)
	tag := cnitest.Tag(t)
	n := net3(tag)
	master := dummy(t, tag+"d")
	r := cnitest.NewRunner(t)
	extra := `"master":"` + tag + `d"`
	p1 := newPod(t, r, tag+"a", "ipvlan", tag, extra, n+".2/24")
	p2 := newPod(t, r, tag+"b", "ipvlan", tag, extra+`,"mode":"l2"`, n+".3/24")
	for _, p := range []*pod{p1, p2} {
		iv, ok := p.ns.Link(t, "eth0").(*netlink.IPVlan)
		if !ok || iv.Mode != netlink.IPVLAN_MODE_L2 {
			t.Errorf("eth0 in %s: %+v, want an l2 ipvlan", p.ns.Name, p.ns.Link(t, "eth0"))
		}
		// ipvlan links share the master's MAC address.
		if p.res.Interfaces[0].Mac != master.Attrs().HardwareAddr.String() {
			t.Errorf("result MAC %s, want the master's %s", p.res.Interfaces[0].Mac, master.Attrs().HardwareAddr)
		}
	}
	p1.ns.Ping(t, p2.addr)
	p2.ns.Ping(t, p1.addr)
	p1.check(t, r)
	p2.check(t, r)
	if err := r.CNI.GCNetworkList(context.Background(), p1.list, &libcni.GCArgs{}); err != nil {
		t.Errorf("GC: %v", err)
	}
	p1.del(t, r)
	p2.del(t, r)
	cnitest.DeleteLinks(tag)
	cnitest.NoLinks(t, tag)
}

func TestGuestIpvlanL3(t *testing.T) {
	vmtest.Guest(t)
	tag := cnitest.Tag(t)
	n := net3(tag)
	dummy(t, tag+"d")
	r := cnitest.NewRunner(t)
	p1 := newPod(t, r, tag+"a", "ipvlan", tag, `"master":"`+tag+`d","mode":"l3"`, n+".2/24")
	p2 := newPod(t, r, tag+"b", "ipvlan", tag, `"master":"`+tag+`d","mode":"l3"`, n+".3/24")
	if iv, ok := p1.ns.Link(t, "eth0").(*netlink.IPVlan); !ok || iv.Mode != netlink.IPVLAN_MODE_L3 {
		t.Errorf("eth0: %+v, want an l3 ipvlan", p1.ns.Link(t, "eth0"))
	}
	p1.ns.Ping(t, p2.addr)
	p1.check(t, r)
	p1.del(t, r)
	p2.del(t, r)

	ns := cnitest.NewNetns(t, tag+"s")
	l := list(t, "1.1.0", tag, plugin("ipvlan", tag, `"master":"`+tag+`d","mode":"l3s"`, ""))
	rt := cnitest.RuntimeConf(tag, ns.Path, "eth0")
	add(t, r, l, rt)
	if iv, ok := ns.Link(t, "eth0").(*netlink.IPVlan); !ok || iv.Mode != netlink.IPVLAN_MODE_L3S {
		t.Errorf("eth0: %+v, want an l3s ipvlan", ns.Link(t, "eth0"))
	}
	del(t, r, l, rt)
	onlyLinks(t, ns)
	cnitest.DeleteLinks(tag)
	cnitest.NoLinks(t, tag)
}

// TestGuestVlan puts two pods on VLAN 100 across a veth pair: pod a's VLAN
// link sits on the root namespace's end, pod b holds the other end and
// gets its VLAN link with linkInContainer. A third pod on VLAN 200 over
// the same master must not reach them.
func TestGuestVlan(t *testing.T) {
	vmtest.Guest(t)
	tag := cnitest.Tag(t)
	n := net3(tag)
	r := cnitest.NewRunner(t)
	t.Cleanup(func() { cnitest.DeleteLinks(tag) })
	pb := cnitest.NewNetns(t, tag+"b")
	nsb, err := os.Open(pb.Path)
	if err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tag + "v"}, PeerName: "trunk0", PeerNamespace: netlink.NsFd(nsb.Fd())}
	err = netlink.LinkAdd(veth)
	nsb.Close()
	if err != nil {
		t.Fatalf("creating veth: %v", err)
	}
	master, err := netlink.LinkByName(tag + "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(master); err != nil {
		t.Fatal(err)
	}
	pb.Do(t, func() error {
		l, err := netlink.LinkByName("trunk0")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})

	pa := newPod(t, r, tag+"a", "vlan", tag, `"master":"`+tag+`v","vlanId":100`, n+".2/24")
	b := &pod{ns: pb, addr: n + ".3", rt: cnitest.RuntimeConf(tag+"b", pb.Path, "eth0"),
		list: list(t, "1.1.0", tag, plugin("vlan", tag, `"master":"trunk0","vlanId":100,"linkInContainer":true`, static(n+".3/24")))}
	b.res = add(t, r, b.list, b.rt)
	for _, p := range []*pod{pa, b} {
		v, ok := p.ns.Link(t, "eth0").(*netlink.Vlan)
		if !ok || v.VlanId != 100 {
			t.Errorf("eth0 in %s: %+v, want VLAN 100", p.ns.Name, p.ns.Link(t, "eth0"))
		}
	}
	if v, _ := pb.Link(t, "eth0").(*netlink.Vlan); v != nil && v.ParentIndex != pb.Link(t, "trunk0").Attrs().Index {
		t.Errorf("pod b's VLAN sits on index %d, not on trunk0", v.ParentIndex)
	}
	pa.ns.Ping(t, b.addr)
	b.ns.Ping(t, pa.addr)
	pa.check(t, r)
	b.check(t, r)

	pc := newPod(t, r, tag+"c", "vlan", tag, `"master":"`+tag+`v","vlanId":200`, n+".4/24")
	noPing(t, pc.ns, b.addr)

	// The same VLAN twice on one master is a conflict, not a kernel error.
	pd := cnitest.NewNetns(t, tag+"d")
	res := cnitest.Exec(t, "vlan", map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "d", "CNI_NETNS": pd.Path, "CNI_IFNAME": "eth0", "CNI_PATH": cnitest.BinDir(t)},
		`{"cniVersion":"1.1.0","name":"`+tag+`","type":"vlan","master":"`+tag+`v","vlanId":100}`)
	if res.Err == nil || res.Err.Code != 7 || !strings.Contains(res.Err.Msg, tag+"v") {
		t.Errorf("duplicate VLAN: %+v, want code 7 naming the master", res.Err)
	}
	onlyLinks(t, pd)

	pa.del(t, r)
	b.del(t, r, "trunk0")
	pc.del(t, r)
	cnitest.DeleteLinks(tag)
	cnitest.NoLinks(t, tag)
}

// TestGuestLinkInContainer creates macvlan and ipvlan links on a master
// that lives in the pod's own namespace.
func TestGuestLinkInContainer(t *testing.T) {
	vmtest.Guest(t)
	tag := cnitest.Tag(t)
	r := cnitest.NewRunner(t)
	for _, typ := range []string{"macvlan", "ipvlan"} {
		ns := cnitest.NewNetns(t, tag+typ[:2])
		var masterIndex int
		ns.Do(t, func() error {
			if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "inner0"}}); err != nil {
				return err
			}
			l, err := netlink.LinkByName("inner0")
			if err != nil {
				return err
			}
			masterIndex = l.Attrs().Index
			return netlink.LinkSetUp(l)
		})
		l := list(t, "1.1.0", tag, plugin(typ, tag, `"master":"inner0","linkInContainer":true`, static(net3(tag)+".9/24")))
		rt := cnitest.RuntimeConf(tag, ns.Path, "eth0")
		add(t, r, l, rt)
		link := ns.Link(t, "eth0")
		if link.Type() != typ || link.Attrs().ParentIndex != masterIndex {
			t.Errorf("%s: eth0 is %s on index %d, want %s on inner0 (%d)", typ, link.Type(), link.Attrs().ParentIndex, typ, masterIndex)
		}
		hasAddr(t, ns, "eth0", net3(tag)+".9/24")
		if err := r.CNI.CheckNetworkList(context.Background(), l, rt); err != nil {
			t.Errorf("%s: CHECK: %v", typ, err)
		}
		del(t, r, l, rt)
		onlyLinks(t, ns, "inner0")
	}
	cnitest.NoLinks(t, tag)
}

func TestGuestResultVersions(t *testing.T) {
	vmtest.Guest(t)
	tag := cnitest.Tag(t)
	n := net3(tag)
	dummy(t, tag+"d")
	r := cnitest.NewRunner(t)
	ns := cnitest.NewNetns(t, tag)
	for _, typ := range []string{"macvlan", "ipvlan"} {
		for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
			l := list(t, v, tag, plugin(typ, tag, `"master":"`+tag+`d"`, static(n+".5/24")))
			rt := cnitest.RuntimeConf(tag, ns.Path, "eth0")
			res, err := r.CNI.AddNetworkList(context.Background(), l, rt)
			if err != nil {
				t.Fatalf("%s %s: ADD: %v", typ, v, err)
			}
			if res.Version() != v {
				t.Errorf("%s: result version %s, want %s", typ, res.Version(), v)
			}
			if v != "0.3.1" {
				if err := r.CNI.CheckNetworkList(context.Background(), l, rt); err != nil {
					t.Errorf("%s %s: CHECK: %v", typ, v, err)
				}
			}
			del(t, r, l, rt)
			onlyLinks(t, ns)
		}
	}
	cnitest.DeleteLinks(tag)
	cnitest.NoLinks(t, tag)
}

// TestGuestFailedAddUndoes makes IPAM fail after the link exists: the
// link must go, and the next valid ADD must work.
func TestGuestFailedAddUndoes(t *testing.T) {
	vmtest.Guest(t)
	tag := cnitest.Tag(t)
	dummy(t, tag+"d")
	ns := cnitest.NewNetns(t, tag)
	env := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": tag, "CNI_NETNS": ns.Path, "CNI_IFNAME": "eth0", "CNI_PATH": cnitest.BinDir(t)}
	for _, typ := range []string{"macvlan", "ipvlan", "vlan"} {
		base := `{"cniVersion":"1.1.0","name":"` + tag + `","type":"` + typ + `","master":"` + tag + `d","vlanId":7,"ipam":`
		res := cnitest.Exec(t, typ, env, base+`{"type":"static","addresses":[{"address":"not-an-ip"}]}}`)
		if res.Err == nil || res.Err.Code != 7 {
			t.Errorf("%s: ADD with a bad static address: %+v, want code 7 from IPAM", typ, res.Err)
		}
		onlyLinks(t, ns)
		res = cnitest.Exec(t, typ, env, base+`{"type":"tripod-no-such-ipam"}}`)
		if res.Err == nil || res.Err.Code == 0 || res.Err.Code == 999 {
			t.Errorf("%s: ADD with a missing IPAM plugin: %+v, want a coded error", typ, res.Err)
		}
		onlyLinks(t, ns)
		ok := cnitest.Exec(t, typ, env, base+static(net3(tag)+".7/24")+`}`)
		if ok.Err != nil {
			t.Fatalf("%s: valid ADD after the failures: %v", typ, ok.Err)
		}
		env["CNI_COMMAND"] = "DEL"
		if d := cnitest.Exec(t, typ, env, base+static(net3(tag)+".7/24")+`}`); d.Err != nil {
			t.Errorf("%s: DEL: %v", typ, d.Err)
		}
		env["CNI_COMMAND"] = "ADD"
		onlyLinks(t, ns)
	}
	cnitest.DeleteLinks(tag)
	cnitest.NoLinks(t, tag)
}

// TestGuestGC reserves addresses with host-local for two pods, then GCs
// with only the first listed as valid: the second's reservation goes, the
// first's stays, and DEL of both leaves nothing behind.
func TestGuestGC(t *testing.T) {
	vmtest.Guest(t)
	tag := cnitest.Tag(t)
	n := net3(tag)
	dummy(t, tag+"d")
	r := cnitest.NewRunner(t)
	ctx := context.Background()
	for _, typ := range []string{"macvlan", "ipvlan"} {
		dataDir := t.TempDir()
		ipam := `{"type":"host-local","dataDir":"` + dataDir + `","ranges":[[{"subnet":"` + n + `.0/24"}]]}`
		l := list(t, "1.1.0", tag, plugin(typ, tag, `"master":"`+tag+`d"`, ipam))
		var pods []*libcni.RuntimeConf
		var addrs []string
		for _, name := range []string{"a", "b"} {
			ns := cnitest.NewNetns(t, tag+typ[:1]+name)
			rt := cnitest.RuntimeConf(tag+name, ns.Path, "eth0")
			res := add(t, r, l, rt)
			if len(res.IPs) != 1 {
				t.Fatalf("%s: result IPs %v, want one from host-local", typ, res.IPs)
			}
			pods = append(pods, rt)
			addrs = append(addrs, res.IPs[0].Address.IP.String())
		}
		reserved := func(ip string) bool {
			_, err := os.Stat(dataDir + "/" + tag + "/" + ip)
			return err == nil
		}
		if !reserved(addrs[0]) || !reserved(addrs[1]) {
			t.Fatalf("%s: host-local did not record %v in %s", typ, addrs, dataDir)
		}
		valid := []types.GCAttachment{{ContainerID: pods[0].ContainerID, IfName: "eth0"}}
		if err := r.CNI.GCNetworkList(ctx, l, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
			t.Fatalf("%s: GC: %v", typ, err)
		}
		if !reserved(addrs[0]) || reserved(addrs[1]) {
			t.Errorf("%s: after GC reserved(%s)=%v reserved(%s)=%v, want only the valid attachment's", typ, addrs[0], reserved(addrs[0]), addrs[1], reserved(addrs[1]))
		}
		for _, rt := range pods {
			del(t, r, l, rt)
		}
		cnitest.EmptyDir(t, dataDir, "lock", "last_reserved_ip.0")
	}
	cnitest.DeleteLinks(tag)
	cnitest.NoLinks(t, tag)
}
