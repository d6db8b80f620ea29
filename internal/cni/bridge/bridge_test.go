package bridge_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/bridge"
	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/cni/vethtest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

// dualStack is host-local IPAM with an IPv4 and an IPv6 range.
const dualStack = `{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.99.0.0/24"}],[{"subnet":"fd99::/64"}]]}`

// conf is a single-plugin bridge list on bridge TAGbr; fields is spliced
// into the plugin's object.
func conf(version, fields string) string {
	return `{"cniVersion":"` + version + `","name":"TAG","plugins":[{"type":"bridge","bridge":"TAGbr"` + fields + `}]}`
}

func rt(e *vethtest.Env, pod *cnitest.Netns) *libcni.RuntimeConf {
	return cnitest.RuntimeConf(pod.Name, pod.Path, "eth0")
}

// checkShape verifies the result's interfaces and that every address
// names the container interface.
func checkShape(t *testing.T, res *current.Result, bridgeName string, pod *cnitest.Netns) {
	t.Helper()
	if len(res.Interfaces) != 3 {
		t.Fatalf("result has %d interfaces, want 3 (bridge, host veth, container): %v", len(res.Interfaces), res)
	}
	br, host, cont := res.Interfaces[0], res.Interfaces[1], res.Interfaces[2]
	if br.Name != bridgeName || br.Sandbox != "" {
		t.Errorf("interfaces[0] = %+v, want bridge %s", br, bridgeName)
	}
	if !strings.HasPrefix(host.Name, "veth") || host.Sandbox != "" || host.Mac == "" {
		t.Errorf("interfaces[1] = %+v, want the host veth", host)
	}
	if cont.Name != "eth0" || cont.Sandbox != pod.Path || cont.Mac == "" {
		t.Errorf("interfaces[2] = %+v, want eth0 in %s", cont, pod.Path)
	}
	for _, ip := range res.IPs {
		if ip.Interface == nil || *ip.Interface != 2 {
			t.Errorf("IP %s does not name interface 2", ip.Address.String())
		}
	}
	// The host side agrees with the result.
	l, err := netlink.LinkByName(host.Name)
	if err != nil {
		t.Fatalf("host veth %s: %v", host.Name, err)
	}
	b, err := netlink.LinkByName(bridgeName)
	if err != nil {
		t.Fatalf("bridge %s: %v", bridgeName, err)
	}
	if l.Attrs().MasterIndex != b.Attrs().Index || l.Attrs().HardwareAddr.String() != host.Mac {
		t.Errorf("host veth %s: master %d mac %s, want master %d (%s) mac %s", host.Name, l.Attrs().MasterIndex, l.Attrs().HardwareAddr, b.Attrs().Index, bridgeName, host.Mac)
	}
	if b.Attrs().HardwareAddr.String() != br.Mac {
		t.Errorf("bridge MAC %s, result says %s", b.Attrs().HardwareAddr, br.Mac)
	}
	if m := pod.Link(t, "eth0").Attrs().HardwareAddr.String(); m != cont.Mac {
		t.Errorf("eth0 MAC %s, result says %s", m, cont.Mac)
	}
}

func hasDefault(res *current.Result, gw string) bool {
	for _, r := range res.Routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 && r.GW.String() == gw {
			return true
		}
	}
	return false
}

// TestTwoPodsDualStack: two pods on one bridge reach each other and the
// gateway over IPv4 and IPv6; CHECK passes, then notices a removed
// address; DEL leaves nothing and is idempotent.
func TestTwoPodsDualStack(t *testing.T) {
	e := vethtest.New(t)
	list := e.ConfList(conf("1.1.0", `,"isDefaultGateway":true,"ipam":`+dualStack))
	a, b := e.Pod("a"), e.Pod("b")
	ctx := context.Background()
	e.In(func() {
		ra := e.Add(list, rt(e, a))
		rb := e.Add(list, rt(e, b))
		checkShape(t, ra, e.Tag+"br", a)
		checkShape(t, rb, e.Tag+"br", b)
		for _, gw := range []string{"10.99.0.1", "fd99::1"} {
			if !hasDefault(ra, gw) {
				t.Errorf("result lacks the default route via %s: %v", gw, ra.Routes)
			}
		}
		br, err := netlink.LinkByName(e.Tag + "br")
		if err != nil {
			t.Fatal(err)
		}
		addrs, _ := netlink.AddrList(br, netlink.FAMILY_ALL)
		var got []string
		for _, ad := range addrs {
			got = append(got, ad.IPNet.String())
		}
		for _, want := range []string{"10.99.0.1/24", "fd99::1/64"} {
			if !strings.Contains(strings.Join(got, " "), want) {
				t.Errorf("bridge addresses %v lack gateway %s", got, want)
			}
		}
		for _, v4 := range []bool{true, false} {
			a.Ping(t, vethtest.IP(t, rb, v4))
			b.Ping(t, vethtest.IP(t, ra, v4))
		}
		a.Ping(t, "10.99.0.1")
		a.Ping(t, "fd99::1")
		// The default routes are in the pod.
		a.Do(t, func() error {
			routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
			n := 0
			for _, r := range routes {
				if r.Dst == nil || r.Dst.IP.IsUnspecified() {
					n++
				}
			}
			if n != 2 {
				t.Errorf("pod has %d default routes, want 2: %v", n, routes)
			}
			return err
		})

		if err := e.Runner.CNI.CheckNetworkList(ctx, list, rt(e, a)); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		// Take the IPv4 address away: CHECK must notice.
		a.Do(t, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			ip := ra.IPs[0].Address
			return netlink.AddrDel(l, &netlink.Addr{IPNet: &ip})
		})
		err = e.Runner.CNI.CheckNetworkList(ctx, list, rt(e, a))
		vethtest.WantCode(t, err, cnierr.InvalidConfig)
		if !strings.Contains(err.Error(), ra.IPs[0].Address.IP.String()) {
			t.Errorf("CHECK error does not name the missing address: %v", err)
		}

		e.Del(list, rt(e, a))
		e.Del(list, rt(e, b))
		e.Del(list, rt(e, a)) // idempotent
		vethtest.PodEmpty(t, a)
		vethtest.PodEmpty(t, b)
		e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
		// The bridge stays, as with the reference plugin.
		if _, err := netlink.LinkByName(e.Tag + "br"); err != nil {
			t.Errorf("bridge gone after DEL: %v", err)
		}
	})
}

// TestVersions: every result version from 0.3.1 on, with CHECK where the
// version has it.
func TestVersions(t *testing.T) {
	for _, v := range vethtest.Versions {
		t.Run(v, func(t *testing.T) {
			e := vethtest.New(t)
			list := e.ConfList(conf(v, `,"isGateway":true,"ipMasq":true,"ipam":`+dualStack))
			pod := e.Pod("p")
			e.In(func() {
				cur := e.Runner.AddVersion(t, list, rt(e, pod), v)
				checkShape(t, cur, e.Tag+"br", pod)
				if len(cur.IPs) != 2 {
					t.Errorf("result has %d IPs, want 2", len(cur.IPs))
				}
				pod.Ping(t, "10.99.0.1")
				if v != "0.3.1" {
					if err := e.Runner.CNI.CheckNetworkList(context.Background(), list, rt(e, pod)); err != nil {
						t.Errorf("CHECK: %v", err)
					}
				}
				e.Del(list, rt(e, pod))
				vethtest.PodEmpty(t, pod)
				e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
			})
		})
	}
}

// TestIPMasq: traffic from a pod on an ipMasq network reaches a host that
// has no route back to it; without ipMasq it does not. The rules go with
// DEL, also when the namespace is already gone or the address was removed
// from the interface first.
func TestIPMasq(t *testing.T) {
	e := vethtest.New(t)
	masqList := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGm","plugins":[{"type":"bridge","bridge":"TAGbm","isGateway":true,"ipMasq":true,
		"ipam":{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.98.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}}]}`)
	plainList := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGp","plugins":[{"type":"bridge","bridge":"TAGbp","isGateway":true,
		"ipam":{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.97.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}}]}`)
	m, p := e.Pod("m"), e.Pod("p")
	nets := []string{e.Tag + "m", e.Tag + "p"}
	e.In(func() {
		e.Outside()
		e.Add(masqList, rt(e, m))
		e.Add(plainList, rt(e, p))
		att := nftown.Attachment{Network: e.Tag + "m", ContainerID: m.Name, IfName: "eth0"}
		if ok, err := masq.Present(att); !ok || err != nil {
			t.Fatalf("masquerade rules after ADD: present %v, %v", ok, err)
		}
		m.Ping(t, vethtest.OutsideAddr)
		vethtest.NoPing(t, p, vethtest.OutsideAddr)
		e.Del(masqList, rt(e, m))
		e.Del(plainList, rt(e, p))
		e.NoLeaks(nets)

		// The namespace is gone before DEL.
		g := e.Pod("g")
		e.Add(masqList, rt(e, g))
		g.Ping(t, vethtest.OutsideAddr)
		g.Remove(t)
		e.Del(masqList, rt(e, g))
		e.NoLeaks(nets)

		// The address was removed from the interface before DEL.
		r := e.Pod("r")
		res := e.Add(masqList, rt(e, r))
		r.Do(t, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.AddrDel(l, &netlink.Addr{IPNet: &res.IPs[0].Address})
		})
		e.Del(masqList, rt(e, r))
		vethtest.PodEmpty(t, r)
		e.NoLeaks(nets)
	})
}
