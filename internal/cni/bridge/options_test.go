package bridge_test

import (
	"context"
	"errors"
	"net"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"

	"github.com/tripod-dev/tripod/internal/cni/bridge"
	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/cni/vethtest"
)

const v4Only = `{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.96.0.0/24"}]]}`

func setMAC(t *testing.T, pod *cnitest.Netns, mac string) {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	pod.Do(t, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.LinkSetHardwareAddr(l, hw)
	})
}

func flushNeigh(t *testing.T, pod *cnitest.Netns) {
	t.Helper()
	if out, err := pod.Exec(context.Background(), "ip", "neigh", "flush", "dev", "eth0"); err != nil {
		t.Fatalf("ip neigh flush: %v\n%s", err, out)
	}
}

// TestMacSpoofChk: a pod that changes its MAC cannot reach its neighbour
// with macspoofchk, and can without it; with its own MAC back it can.
func TestMacSpoofChk(t *testing.T) {
	for _, spoof := range []bool{false, true} {
		name := map[bool]string{false: "off", true: "on"}[spoof]
		t.Run(name, func(t *testing.T) {
			e := vethtest.New(t)
			list := e.ConfList(conf("1.1.0", `,"macspoofchk":`+map[bool]string{false: "false", true: "true"}[spoof]+`,"ipam":`+v4Only))
			a, b := e.Pod("a"), e.Pod("b")
			e.In(func() {
				ra := e.Add(list, rt(e, a))
				rb := e.Add(list, rt(e, b))
				ipb := vethtest.IP(t, rb, true)
				a.Ping(t, ipb)
				att := nftown.Attachment{Network: e.Tag, ContainerID: a.Name, IfName: "eth0"}
				tags, err := bridge.SpoofTable().Tags(e.Tag)
				if err != nil {
					t.Fatal(err)
				}
				if has := strings.Contains(strings.Join(tags, " "), att.Tag()); has != spoof {
					t.Errorf("macspoofchk chain of pod a present = %v, want %v", has, spoof)
				}

				setMAC(t, a, "02:00:00:0b:ad:01")
				flushNeigh(t, b) // b must learn a's MAC afresh
				if spoof {
					vethtest.NoPing(t, a, ipb)
				} else {
					a.Ping(t, ipb)
				}
				setMAC(t, a, ra.Interfaces[2].Mac)
				flushNeigh(t, b)
				a.Ping(t, ipb)

				e.Del(list, rt(e, a))
				e.Del(list, rt(e, b))
				e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
			})
		})
	}
}

// TestMAC: the container MAC comes from CNI_ARGS MAC, args.cni.mac and
// the mac capability, the latter winning.
func TestMAC(t *testing.T) {
	e := vethtest.New(t)
	pod := e.Pod("p")
	cases := []struct {
		name, fields string
		args         [][2]string
		capArgs      map[string]any
		want         string
	}{
		{"CNI_ARGS", "", [][2]string{{"IgnoreUnknown", "true"}, {"MAC", "02:00:00:00:00:01"}}, nil, "02:00:00:00:00:01"},
		{"args", `,"args":{"cni":{"mac":"02:00:00:00:00:02"}}`, [][2]string{{"IgnoreUnknown", "true"}, {"MAC", "02:00:00:00:00:01"}}, nil, "02:00:00:00:00:02"},
		{"capability", `,"capabilities":{"mac":true},"args":{"cni":{"mac":"02:00:00:00:00:02"}}`, nil, map[string]any{"mac": "02:00:00:00:00:03"}, "02:00:00:00:00:03"},
	}
	e.In(func() {
		for _, c := range cases {
			list := e.ConfList(conf("1.1.0", c.fields+`,"macspoofchk":true,"isGateway":true,"ipam":`+v4Only))
			r := rt(e, pod)
			r.Args, r.CapabilityArgs = c.args, c.capArgs
			res := e.Add(list, r)
			if got := pod.Link(t, "eth0").Attrs().HardwareAddr.String(); got != c.want || res.Interfaces[2].Mac != c.want {
				t.Errorf("%s: eth0 MAC %s, result %s, want %s", c.name, got, res.Interfaces[2].Mac, c.want)
			}
			pod.Ping(t, "10.96.0.1")
			e.Del(list, r)
		}
		e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
	})
}

// TestPortFlagsAndMTU reads back hairpin mode, port isolation, promiscuous
// mode and the MTU, and shows isolation at work.
func TestPortFlagsAndMTU(t *testing.T) {
	e := vethtest.New(t)
	hList := e.ConfList(conf("1.1.0", `,"hairpinMode":true,"mtu":1400,"isGateway":true,"ipam":`+v4Only))
	iList := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGi","plugins":[{"type":"bridge","bridge":"TAGbi","portIsolation":true,"promiscMode":true,"isGateway":true,
		"ipam":{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.95.0.0/24"}]]}}]}`)
	h, i1, i2 := e.Pod("h"), e.Pod("i1"), e.Pod("i2")
	e.In(func() {
		res := e.Add(hList, rt(e, h))
		host, err := netlink.LinkByName(res.Interfaces[1].Name)
		if err != nil {
			t.Fatal(err)
		}
		pi, err := netlink.LinkGetProtinfo(host)
		if err != nil || !pi.Hairpin || pi.Isolated {
			t.Errorf("hairpin port flags %+v (%v): want hairpin, not isolated", pi, err)
		}
		if m := host.Attrs().MTU; m != 1400 {
			t.Errorf("host veth MTU %d, want 1400", m)
		}
		if m := h.Link(t, "eth0").Attrs().MTU; m != 1400 {
			t.Errorf("container MTU %d, want 1400", m)
		}
		if br, _ := netlink.LinkByName(e.Tag + "br"); br == nil || br.Attrs().MTU != 1400 || br.Attrs().Promisc != 0 {
			t.Errorf("bridge %+v: want MTU 1400, not promiscuous", br)
		}
		if res.Interfaces[2].Mtu != 1400 {
			t.Errorf("result MTU %d, want 1400", res.Interfaces[2].Mtu)
		}
		// A full-size 1400-byte packet passes, one byte more does not.
		if out, err := h.Exec(context.Background(), "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1372", "10.96.0.1"); err != nil {
			t.Errorf("1400-byte ping: %v\n%s", err, out)
		}
		if _, err := h.Exec(context.Background(), "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1373", "10.96.0.1"); err == nil {
			t.Error("a 1401-byte packet left a 1400-MTU interface")
		}

		r1 := e.Add(iList, rt(e, i1))
		r2 := e.Add(iList, rt(e, i2))
		for _, r := range []string{r1.Interfaces[1].Name, r2.Interfaces[1].Name} {
			l, _ := netlink.LinkByName(r)
			if pi, err := netlink.LinkGetProtinfo(l); err != nil || !pi.Isolated || pi.Hairpin {
				t.Errorf("isolated port %s flags %+v (%v): want isolated, not hairpin", r, pi, err)
			}
		}
		if br, _ := netlink.LinkByName(e.Tag + "bi"); br == nil || br.Attrs().Promisc == 0 {
			t.Errorf("bridge %s is not promiscuous", e.Tag+"bi")
		}
		// Isolated ports reach the bridge (the gateway) but not each other.
		i1.Ping(t, "10.95.0.1")
		vethtest.NoPing(t, i1, vethtest.IP(t, r2, true))

		e.Del(hList, rt(e, h))
		e.Del(iList, rt(e, i1))
		e.Del(iList, rt(e, i2))
		e.NoLeaks([]string{e.Tag, e.Tag + "i"}, bridge.SpoofTable())

		// Hairpin and promiscuous mode exclude each other.
		bad := e.ConfList(conf("1.1.0", `,"hairpinMode":true,"promiscMode":true,"ipam":`+v4Only))
		_, err = e.Runner.CNI.AddNetworkList(context.Background(), bad, rt(e, h))
		vethtest.WantCode(t, err, 7)
		e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
	})
}

// portVlans returns the VLANs of the port with index, as "vid" with
// "p" (PVID) and "u" (untagged) suffixes.
func portVlans(t *testing.T, index int) []string {
	t.Helper()
	all, err := netlink.BridgeVlanList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range all[int32(index)] {
		s := strconv.Itoa(int(v.Vid))
		if v.Flags&nl.BRIDGE_VLAN_INFO_PVID != 0 {
			s += "p"
		}
		if v.Flags&nl.BRIDGE_VLAN_INFO_UNTAGGED != 0 {
			s += "u"
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

func linkIndex(t *testing.T, name string) int {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// TestVlan: access ports of one VLAN reach each other and their VLAN's
// gateway but not a pod of another VLAN on the same bridge and subnet;
// trunk ports carry their VLANs tagged; the default VLAN stays or goes
// with preserveDefaultVlan.
func TestVlan(t *testing.T) {
	e := vethtest.New(t)
	ipam := func(lo, hi string) string {
		return `{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.94.0.0/24","rangeStart":"10.94.0.` + lo + `","rangeEnd":"10.94.0.` + hi + `","gateway":"10.94.0.1"}]]}`
	}
	l10 := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGa","plugins":[{"type":"bridge","bridge":"TAGbr","vlan":10,"isGateway":true,"ipam":` + ipam("10", "19") + `}]}`)
	l20 := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGb","plugins":[{"type":"bridge","bridge":"TAGbr","vlan":20,"preserveDefaultVlan":false,"ipam":` + ipam("20", "29") + `}]}`)
	trunk := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGt","plugins":[{"type":"bridge","bridge":"TAGbr","vlanTrunk":[{"id":5},{"minID":100,"maxID":102}]}]}`)
	trunkNoDefault := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGu","plugins":[{"type":"bridge","bridge":"TAGbr","vlanTrunk":[{"id":7}],"preserveDefaultVlan":false}]}`)
	a1, a2, b1, t1, t2 := e.Pod("a1"), e.Pod("a2"), e.Pod("b1"), e.Pod("t1"), e.Pod("t2")
	supported := true
	e.In(func() {
		on := true
		probe := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: e.Tag + "probe"}, VlanFiltering: &on}
		if err := netlink.LinkAdd(probe); errors.Is(err, syscall.EOPNOTSUPP) {
			supported = false
		} else if err != nil {
			t.Fatal(err)
		} else {
			_ = netlink.LinkDel(probe)
		}
	})
	if !supported {
		// What can be tested here: the kernel's refusal is code 102 and
		// the failed ADD leaves nothing behind.
		e.In(func() {
			_, err := e.Runner.CNI.AddNetworkList(context.Background(), l10, rt(e, a1))
			vethtest.WantCode(t, err, cnierr.KernelUnsupported)
			vethtest.PodEmpty(t, a1)
			e.NoLeaks([]string{e.Tag + "a"}, bridge.SpoofTable())
		})
		t.Skip("skipped: this kernel lacks bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING); checked only that ADD fails with code 102 and undoes its work")
	}
	e.In(func() {
		ra1 := e.Add(l10, rt(e, a1))
		ra2 := e.Add(l10, rt(e, a2))
		rb1 := e.Add(l20, rt(e, b1))
		rt1 := e.Add(trunk, rt(e, t1))
		rt2 := e.Add(trunkNoDefault, rt(e, t2))
		br, err := netlink.LinkByName(e.Tag + "br")
		if err != nil {
			t.Fatal(err)
		}
		if f := br.(*netlink.Bridge).VlanFiltering; f == nil || !*f {
			t.Error("bridge VLAN filtering is off")
		}
		for _, c := range []struct {
			name string
			want string
		}{
			{ra1.Interfaces[1].Name, "10pu 1u"}, // the default VLAN stays, no longer PVID
			{rb1.Interfaces[1].Name, "20pu"},
			{rt1.Interfaces[1].Name, "100 101 102 1pu 5"},
			{rt2.Interfaces[1].Name, "7"},
		} {
			if got := strings.Join(portVlans(t, linkIndex(t, c.name)), " "); got != c.want {
				t.Errorf("port %s VLANs %q, want %q", c.name, got, c.want)
			}
		}
		a1.Ping(t, vethtest.IP(t, ra2, true))
		a1.Ping(t, "10.94.0.1") // the gateway of VLAN 10, on TAGbr.10
		vethtest.NoPing(t, a1, vethtest.IP(t, rb1, true))
		vethtest.NoPing(t, b1, "10.94.0.1")
		if _, err := netlink.LinkByName(e.Tag + "br.10"); err != nil {
			t.Errorf("VLAN gateway interface: %v", err)
		}

		for _, x := range []struct {
			list *libcni.NetworkConfigList
			pod  *cnitest.Netns
		}{{l10, a1}, {l10, a2}, {l20, b1}, {trunk, t1}, {trunkNoDefault, t2}} {
			e.Del(x.list, rt(e, x.pod))
			vethtest.PodEmpty(t, x.pod)
		}
		e.NoLeaks([]string{e.Tag + "a", e.Tag + "b", e.Tag + "t", e.Tag + "u"}, bridge.SpoofTable())

		for _, bad := range []string{
			`"vlan":4095`, `"vlan":-1`, `"vlan":3,"vlanTrunk":[{"id":4}]`, `"vlanTrunk":[{"minID":9}]`,
			`"vlanTrunk":[{"minID":9,"maxID":8}]`, `"vlanTrunk":[{"id":0}]`, `"vlanTrunk":[{}]`,
		} {
			_, err := e.Runner.CNI.AddNetworkList(context.Background(), e.ConfList(conf("1.1.0", ","+bad)), rt(e, a1))
			vethtest.WantCode(t, err, 7)
			if !strings.Contains(err.Error(), "vlan") {
				t.Errorf("%s: error does not name the field: %v", bad, err)
			}
		}
	})
}
