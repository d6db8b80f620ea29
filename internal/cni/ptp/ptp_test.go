package ptp_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/cni/vethtest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

const dualStack = `{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.88.0.0/24"}],[{"subnet":"fd88::/64"}]],
	"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}`

const v4Only = `{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.87.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}`

func conf(version, fields string) string {
	return `{"cniVersion":"` + version + `","name":"TAG","plugins":[{"type":"ptp"` + fields + `}]}`
}

func rt(pod *cnitest.Netns) *libcni.RuntimeConf {
	return cnitest.RuntimeConf(pod.Name, pod.Path, "eth0")
}

// hostAddr puts an address on the host namespace's lo: "the host" for the
// pods to reach.
func hostAddr(t *testing.T, cidr string) {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	ip, n, _ := net.ParseCIDR(cidr)
	n.IP = ip
	if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: n}); err != nil {
		t.Fatal(err)
	}
}

// routes lists the routes on a link, as "dst via gw" strings.
func routes(t *testing.T, link string) string {
	t.Helper()
	l, err := netlink.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := netlink.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		dst := "?"
		if r.Dst != nil {
			dst = r.Dst.String()
		}
		if r.Gw != nil {
			dst += " via " + r.Gw.String()
		}
		out = append(out, dst)
	}
	return strings.Join(out, ", ")
}

// TestPing: host and pods reach each other over IPv4 and IPv6, pod to pod
// through the host; the routes are the routed design's; CHECK passes and
// notices a removed address; DEL leaves nothing and is idempotent.
func TestPing(t *testing.T) {
	e := vethtest.New(t)
	list := e.ConfList(conf("1.1.0", `,"ipam":`+dualStack))
	a, b := e.Pod("a"), e.Pod("b")
	ctx := context.Background()
	e.In(func() {
		hostAddr(t, "192.168.55.1/32")
		hostAddr(t, "fd55::1/128")
		ra := e.Add(list, rt(a))
		rb := e.Add(list, rt(b))
		for _, r := range []*current.Result{ra, rb} {
			if len(r.Interfaces) != 2 || r.Interfaces[0].Sandbox != "" || r.Interfaces[1].Name != "eth0" || r.Interfaces[1].Sandbox == "" {
				t.Fatalf("interfaces %+v: want host veth, then eth0 in the pod", r.Interfaces)
			}
			for _, ip := range r.IPs {
				if ip.Interface == nil || *ip.Interface != 1 || ip.Gateway == nil {
					t.Errorf("IP %+v: want interface 1 and a gateway", ip)
				}
			}
		}
		// The host end has a host route to each pod address.
		got := routes(t, ra.Interfaces[0].Name)
		for _, want := range []string{vethtest.IP(t, ra, true) + "/32", vethtest.IP(t, ra, false) + "/128"} {
			if !strings.Contains(got, want) {
				t.Errorf("host veth routes %q lack %s", got, want)
			}
		}
		// The pod's subnet is routed through the gateway, not on-link.
		var podRoutes string
		a.Do(t, func() error {
			podRoutes = routes(t, "eth0")
			return nil
		})
		for _, want := range []string{"10.88.0.1/32", "10.88.0.0/24 via 10.88.0.1", "0.0.0.0/0 via 10.88.0.1", "fd88::1/128", "fd88::/64 via fd88::1", "::/0 via fd88::1"} {
			if !strings.Contains(podRoutes, want) {
				t.Errorf("pod routes %q lack %q", podRoutes, want)
			}
		}
		if strings.Contains(podRoutes+", ", "10.88.0.0/24, ") {
			t.Errorf("pod has an on-link subnet route: %q", podRoutes)
		}

		for _, v4 := range []bool{true, false} {
			a.Ping(t, vethtest.IP(t, rb, v4))
			b.Ping(t, vethtest.IP(t, ra, v4))
		}
		a.Ping(t, "192.168.55.1")
		a.Ping(t, "fd55::1")
		// And from the host to the pods.
		for _, addr := range []string{vethtest.IP(t, ra, true), vethtest.IP(t, ra, false)} {
			if out, err := e.Host.Exec(ctx, "ping", "-c", "2", "-i", "0.2", "-W", "2", addr); err != nil {
				t.Errorf("host ping %s: %v\n%s", addr, err, out)
			}
		}

		if err := e.Runner.CNI.CheckNetworkList(ctx, list, rt(a)); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		a.Do(t, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.AddrDel(l, &netlink.Addr{IPNet: &ra.IPs[0].Address})
		})
		vethtest.WantCode(t, e.Runner.CNI.CheckNetworkList(ctx, list, rt(a)), cnierr.InvalidConfig)
		// CHECK also notices a missing host route.
		l, err := netlink.LinkByName(rb.Interfaces[0].Name)
		if err != nil {
			t.Fatal(err)
		}
		dst := &net.IPNet{IP: rb.IPs[0].Address.IP, Mask: net.CIDRMask(32, 32)}
		if err := netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
			t.Fatal(err)
		}
		err = e.Runner.CNI.CheckNetworkList(ctx, list, rt(b))
		vethtest.WantCode(t, err, cnierr.InvalidConfig)
		if !strings.Contains(err.Error(), dst.String()) {
			t.Errorf("CHECK error does not name the route: %v", err)
		}

		e.Del(list, rt(a))
		e.Del(list, rt(b))
		e.Del(list, rt(a))
		vethtest.PodEmpty(t, a)
		vethtest.PodEmpty(t, b)
		e.NoLeaks([]string{e.Tag})
	})
}

// TestVersions: every result version from 0.3.1 on.
func TestVersions(t *testing.T) {
	for _, v := range vethtest.Versions {
		t.Run(v, func(t *testing.T) {
			e := vethtest.New(t)
			list := e.ConfList(conf(v, `,"ipMasq":true,"ipam":`+dualStack))
			pod := e.Pod("p")
			e.In(func() {
				cur := e.Runner.AddVersion(t, list, rt(pod), v)
				if len(cur.IPs) != 2 || len(cur.Interfaces) != 2 {
					t.Errorf("result %v: want 2 IPs, 2 interfaces", cur)
				}
				pod.Ping(t, "10.88.0.1")
				if v != "0.3.1" {
					if err := e.Runner.CNI.CheckNetworkList(context.Background(), list, rt(pod)); err != nil {
						t.Errorf("CHECK: %v", err)
					}
				}
				e.Del(list, rt(pod))
				vethtest.PodEmpty(t, pod)
				e.NoLeaks([]string{e.Tag})
			})
		})
	}
}

// TestIPMasq: a pod's traffic reaches a host with no route back only with
// ipMasq; the rules go with DEL, also with the namespace gone or the
// address removed first.
func TestIPMasq(t *testing.T) {
	e := vethtest.New(t)
	masqList := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGm","plugins":[{"type":"ptp","ipMasq":true,"ipam":` + v4Only + `}]}`)
	plainList := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGp","plugins":[{"type":"ptp","ipam":
		{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.86.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}}]}`)
	m, p := e.Pod("m"), e.Pod("p")
	nets := []string{e.Tag + "m", e.Tag + "p"}
	e.In(func() {
		e.Outside()
		e.Add(masqList, rt(m))
		e.Add(plainList, rt(p))
		if ok, err := masq.Present(nftown.Attachment{Network: e.Tag + "m", ContainerID: m.Name, IfName: "eth0"}); !ok || err != nil {
			t.Fatalf("masquerade rules after ADD: present %v, %v", ok, err)
		}
		m.Ping(t, vethtest.OutsideAddr)
		vethtest.NoPing(t, p, vethtest.OutsideAddr)
		e.Del(masqList, rt(m))
		e.Del(plainList, rt(p))
		e.NoLeaks(nets)

		g := e.Pod("g")
		e.Add(masqList, rt(g))
		g.Remove(t)
		e.Del(masqList, rt(g))
		e.NoLeaks(nets)

		r := e.Pod("r")
		res := e.Add(masqList, rt(r))
		r.Do(t, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.AddrDel(l, &netlink.Addr{IPNet: &res.IPs[0].Address})
		})
		e.Del(masqList, rt(r))
		vethtest.PodEmpty(t, r)
		e.NoLeaks(nets)
	})
}

// TestHostRoutePrefix: a /32 address (no room for a gateway in its subnet)
// gets a link-local gateway and still reaches the host; the MTU applies
// to both ends.
func TestHostRoutePrefix(t *testing.T) {
	e := vethtest.New(t)
	list := e.ConfList(conf("1.1.0", `,"mtu":1300,"ipam":{"type":"static","addresses":[{"address":"10.85.0.5/32"}],"routes":[{"dst":"0.0.0.0/0"}]}`))
	pod := e.Pod("p")
	e.In(func() {
		hostAddr(t, "192.168.55.1/32")
		res := e.Add(list, rt(pod))
		if gw := res.IPs[0].Gateway.String(); gw != "169.254.1.1" {
			t.Errorf("gateway %s, want the link-local 169.254.1.1", gw)
		}
		pod.Ping(t, "192.168.55.1")
		host, err := netlink.LinkByName(res.Interfaces[0].Name)
		if err != nil {
			t.Fatal(err)
		}
		if host.Attrs().MTU != 1300 || pod.Link(t, "eth0").Attrs().MTU != 1300 || res.Interfaces[1].Mtu != 1300 {
			t.Errorf("MTU: host %d, container %d, result %d; want 1300", host.Attrs().MTU, pod.Link(t, "eth0").Attrs().MTU, res.Interfaces[1].Mtu)
		}
		e.Del(list, rt(pod))
		e.NoLeaks([]string{e.Tag})
	})
}

// TestFailedAddUndo: a failing ADD leaves nothing, and the next works.
func TestFailedAddUndo(t *testing.T) {
	e := vethtest.New(t)
	one := e.ConfList(conf("1.1.0", `,"ipMasq":true,"ipam":{"type":"host-local","dataDir":"DATADIR",
		"ranges":[[{"subnet":"10.84.0.0/24","rangeStart":"10.84.0.9","rangeEnd":"10.84.0.9"}]]}`))
	static := func(gw string) string {
		return conf("1.1.0", `,"ipMasq":true,"ipam":{"type":"static","addresses":[{"address":"10.83.0.2/24"}],"routes":[{"dst":"192.0.2.0/24","gw":"`+gw+`"}]}`)
	}
	a, b := e.Pod("a"), e.Pod("b")
	e.In(func() {
		e.Add(one, rt(a))
		_, err := e.Runner.CNI.AddNetworkList(context.Background(), one, rt(b))
		vethtest.WantCode(t, err, cnierr.RangeExhausted)
		vethtest.PodEmpty(t, b)
		e.Del(one, rt(a))
		e.Add(one, rt(b))
		e.Del(one, rt(b))
		e.NoLeaks([]string{e.Tag})

		// A route the container cannot take fails after the host side,
		// the addresses and (for ipMasq) nothing else were set up.
		_, err = e.Runner.CNI.AddNetworkList(context.Background(), e.ConfList(static("203.0.113.1")), rt(a))
		vethtest.WantCode(t, err, cnierr.Netlink)
		vethtest.PodEmpty(t, a)
		e.NoLeaks([]string{e.Tag})
		good := e.ConfList(static("10.83.0.1"))
		e.Add(good, rt(a))
		e.Del(good, rt(a))
		e.NoLeaks([]string{e.Tag})
	})
}

// TestDuplicateAndUnknown: a second ADD is code 101; DEL of an attachment
// never added succeeds, with or without its namespace.
func TestDuplicateAndUnknown(t *testing.T) {
	e := vethtest.New(t)
	list := e.ConfList(conf("1.1.0", `,"ipMasq":true,"ipam":`+v4Only))
	pod := e.Pod("p")
	e.In(func() {
		e.Add(list, rt(pod))
		_, err := e.Runner.CNI.AddNetworkList(context.Background(), list, rt(pod))
		vethtest.WantCode(t, err, cnierr.AlreadyAttached)
		pod.Ping(t, "10.87.0.1")
		e.Del(list, rt(pod))
		e.Del(list, rt(pod))
		e.Del(list, cnitest.RuntimeConf("never", "/run/netns/"+e.Tag+"none", "eth0"))
		e.NoLeaks([]string{e.Tag})
	})
}

// TestGC: GC keeps the listed attachments and removes the rest.
func TestGC(t *testing.T) {
	e := vethtest.New(t)
	list := e.ConfList(conf("1.1.0", `,"ipMasq":true,"ipam":`+v4Only))
	p1, p2 := e.Pod("p1"), e.Pod("p2")
	e.In(func() {
		r1 := e.Add(list, rt(p1))
		e.Add(list, rt(p2))
		e.GC(list, p1.Name+"/eth0")
		vethtest.PodEmpty(t, p2)
		tags, err := masq.Table().Tags(e.Tag)
		if err != nil || len(tags) != 1 || tags[0] != (nftown.Attachment{Network: e.Tag, ContainerID: p1.Name, IfName: "eth0"}).Tag() {
			t.Errorf("masquerade chains after GC: %v (%v), want only p1's", tags, err)
		}
		entries, _ := os.ReadDir(filepath.Join(e.DataDir, e.Tag))
		var held []string
		for _, en := range entries {
			if net.ParseIP(en.Name()) != nil {
				held = append(held, en.Name())
			}
		}
		if len(held) != 1 || held[0] != vethtest.IP(t, r1, true) {
			t.Errorf("reservations after GC %v, want only %s", held, vethtest.IP(t, r1, true))
		}
		p1.Ping(t, "10.87.0.1")
		e.GC(list)
		vethtest.PodEmpty(t, p1)
		e.NoLeaks([]string{e.Tag})
	})
}

// TestBadInput: wrong configs get their code and name the problem.
func TestBadInput(t *testing.T) {
	e := vethtest.New(t)
	pod := e.Pod("p")
	env := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": pod.Path, "CNI_IFNAME": "eth0", "CNI_PATH": cnitest.BinDir(t)}
	base := func(fields string) string {
		return strings.NewReplacer("TAG", e.Tag, "DATADIR", e.DataDir).Replace(`{"cniVersion":"1.1.0","name":"TAG","type":"ptp"` + fields + `}`)
	}
	cases := []struct {
		name, stdin string
		code        uint
		naming      string
	}{
		{"no ipam", base(``), cnierr.InvalidConfig, "ipam"},
		{"mtu type", base(`,"mtu":true,"ipam":` + v4Only), cnierr.DecodingFailure, "mtu"},
		{"negative mtu", base(`,"mtu":-1,"ipam":` + v4Only), cnierr.InvalidConfig, "mtu"},
		{"masq backend", base(`,"ipMasqBackend":"x","ipam":` + v4Only), cnierr.InvalidConfig, "ipMasqBackend"},
		{"gateway family", base(`,"ipam":{"type":"static","addresses":[{"address":"10.82.0.2/24","gateway":"fd00::1"}]}`), cnierr.InvalidConfig, "fd00::1"},
	}
	e.In(func() {
		for _, c := range cases {
			r := cnitest.Exec(t, "ptp", env, c.stdin)
			if r.Err == nil {
				t.Errorf("%s: ADD succeeded", c.name)
				continue
			}
			if r.Err.Code != c.code || !strings.Contains(r.Err.Msg, c.naming) {
				t.Errorf("%s: code %d %q, want %d naming %q", c.name, r.Err.Code, r.Err.Msg, c.code, c.naming)
			}
		}
		if err := e.Runner.CNI.GetStatusNetworkList(context.Background(), e.ConfList(conf("1.1.0", `,"ipam":`+v4Only))); err != nil {
			t.Errorf("STATUS: %v", err)
		}
		vethtest.PodEmpty(t, pod)
		e.NoLeaks([]string{e.Tag})
	})
}
