package bridge_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/bridge"
	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/cni/vethtest"
)

// hostVeths lists the host veths in the current namespace.
func hostVeths(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if l.Type() == "veth" && strings.HasPrefix(l.Attrs().Name, "veth") {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// reserved lists the addresses host-local holds for network.
func reserved(t *testing.T, e *vethtest.Env, network string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.DataDir, network))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, en := range entries {
		if net.ParseIP(en.Name()) != nil {
			out = append(out, en.Name())
		}
	}
	return out
}

// TestFailedAddUndo: ADD failing at each stage leaves no link, address,
// reservation or rule, and the next valid ADD works.
func TestFailedAddUndo(t *testing.T) {
	t.Run("range exhausted", func(t *testing.T) {
		e := vethtest.New(t)
		list := e.ConfList(conf("1.1.0", `,"ipMasq":true,"macspoofchk":true,"ipam":{"type":"host-local","dataDir":"DATADIR",
			"ranges":[[{"subnet":"10.93.0.0/24","rangeStart":"10.93.0.5","rangeEnd":"10.93.0.5"}]]}`))
		a, b := e.Pod("a"), e.Pod("b")
		e.In(func() {
			ra := e.Add(list, rt(e, a))
			_, err := e.Runner.CNI.AddNetworkList(context.Background(), list, rt(e, b))
			vethtest.WantCode(t, err, cnierr.RangeExhausted)
			vethtest.PodEmpty(t, b)
			if v := hostVeths(t); len(v) != 1 || v[0] != ra.Interfaces[1].Name {
				t.Errorf("host veths %v, want only pod a's %s", v, ra.Interfaces[1].Name)
			}
			e.Del(list, rt(e, a))
			rb := e.Add(list, rt(e, b))
			if got := vethtest.IP(t, rb, true); got != "10.93.0.5" {
				t.Errorf("pod b got %s, want the freed 10.93.0.5", got)
			}
			e.Del(list, rt(e, b))
			e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
		})
	})

	t.Run("gateway conflict", func(t *testing.T) {
		// The bridge already has another address: found only after IPAM,
		// the veth and the container's addresses are in place.
		e := vethtest.New(t)
		fields := `,"isGateway":true,"ipMasq":true,"macspoofchk":true,"ipam":` + v4Only
		list := e.ConfList(conf("1.1.0", fields))
		pod := e.Pod("p")
		e.In(func() {
			attrs := netlink.NewLinkAttrs()
			attrs.Name = e.Tag + "br"
			br := &netlink.Bridge{LinkAttrs: attrs}
			if err := netlink.LinkAdd(br); err != nil {
				t.Fatal(err)
			}
			ip, n, _ := net.ParseCIDR("10.96.0.254/24")
			n.IP = ip
			if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: n}); err != nil {
				t.Fatal(err)
			}
			_, err := e.Runner.CNI.AddNetworkList(context.Background(), list, rt(e, pod))
			vethtest.WantCode(t, err, cnierr.InvalidConfig)
			if !strings.Contains(err.Error(), "forceAddress") {
				t.Errorf("error does not point at forceAddress: %v", err)
			}
			vethtest.PodEmpty(t, pod)
			e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())

			force := e.ConfList(conf("1.1.0", fields+`,"forceAddress":true`))
			e.Add(force, rt(e, pod))
			pod.Ping(t, "10.96.0.1")
			e.Del(force, rt(e, pod))
			e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
		})
	})

	t.Run("bridge name taken", func(t *testing.T) {
		e := vethtest.New(t)
		list := e.ConfList(conf("1.1.0", `,"ipam":`+v4Only))
		pod := e.Pod("p")
		e.In(func() {
			attrs := netlink.NewLinkAttrs()
			attrs.Name = e.Tag + "br"
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: e.Tag + "bx"}); err != nil {
				t.Fatal(err)
			}
			_, err := e.Runner.CNI.AddNetworkList(context.Background(), list, rt(e, pod))
			vethtest.WantCode(t, err, cnierr.InvalidConfig)
			if !strings.Contains(err.Error(), "not a bridge") {
				t.Errorf("error: %v", err)
			}
			vethtest.PodEmpty(t, pod)
			e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
		})
	})

	t.Run("unreachable route", func(t *testing.T) {
		// The container's route cannot be added: the failure comes from
		// inside the namespace, after the rules were installed.
		e := vethtest.New(t)
		static := func(routes string) string {
			return `,"macspoofchk":true,"ipMasq":true,"ipam":{"type":"static","addresses":[{"address":"10.92.0.2/24"}],"routes":[` + routes + `]}`
		}
		bad := e.ConfList(conf("1.1.0", static(`{"dst":"192.0.2.0/24","gw":"203.0.113.1"}`)))
		good := e.ConfList(conf("1.1.0", static(`{"dst":"192.0.2.0/24","gw":"10.92.0.1"}`)))
		pod := e.Pod("p")
		e.In(func() {
			_, err := e.Runner.CNI.AddNetworkList(context.Background(), bad, rt(e, pod))
			vethtest.WantCode(t, err, cnierr.Netlink)
			vethtest.PodEmpty(t, pod)
			e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
			e.Add(good, rt(e, pod))
			e.Del(good, rt(e, pod))
			e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
		})
	})
}

// TestDuplicateAdd: a second ADD of the same attachment is code 101 and
// disturbs nothing; so is an ADD whose interface name is taken in the
// namespace.
func TestDuplicateAdd(t *testing.T) {
	e := vethtest.New(t)
	list := e.ConfList(conf("1.1.0", `,"isGateway":true,"ipam":`+v4Only))
	l2 := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGl","plugins":[{"type":"bridge","bridge":"TAGbl"}]}`)
	pod := e.Pod("p")
	e.In(func() {
		e.Add(list, rt(e, pod))
		_, err := e.Runner.CNI.AddNetworkList(context.Background(), list, rt(e, pod))
		vethtest.WantCode(t, err, cnierr.AlreadyAttached)
		// Another network, L2 only, so no IPAM to notice: the namespace
		// has the interface.
		_, err = e.Runner.CNI.AddNetworkList(context.Background(), l2, rt(e, pod))
		vethtest.WantCode(t, err, cnierr.AlreadyAttached)
		if !strings.Contains(err.Error(), "already exists in network namespace") {
			t.Errorf("error: %v", err)
		}
		// An interface name the namespace already has.
		pod.Do(t, func() error {
			attrs := netlink.NewLinkAttrs()
			attrs.Name = "eth1"
			return netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth1p"})
		})
		_, err = e.Runner.CNI.AddNetworkList(context.Background(), list, cnitest.RuntimeConf(pod.Name, pod.Path, "eth1"))
		vethtest.WantCode(t, err, cnierr.AlreadyAttached)
		if !strings.Contains(err.Error(), "already exists in network namespace") {
			t.Errorf("error: %v", err)
		}
		if res := reserved(t, e, e.Tag); len(res) != 1 {
			t.Errorf("reservations after the refused ADDs: %v, want 1", res)
		}
		pod.Ping(t, "10.96.0.1")
		if err := e.Runner.CNI.CheckNetworkList(context.Background(), list, rt(e, pod)); err != nil {
			t.Errorf("CHECK after the refused ADDs: %v", err)
		}
		e.Del(list, rt(e, pod))
		e.NoLeaks([]string{e.Tag, e.Tag + "l"}, bridge.SpoofTable())
	})
}

// TestDelUnknown: DEL succeeds for an attachment never added, with and
// without its namespace.
func TestDelUnknown(t *testing.T) {
	e := vethtest.New(t)
	list := e.ConfList(conf("1.1.0", `,"ipMasq":true,"macspoofchk":true,"ipam":`+v4Only))
	pod := e.Pod("p")
	e.In(func() {
		e.Del(list, rt(e, pod))
		e.Del(list, cnitest.RuntimeConf("never", "/run/netns/"+e.Tag+"none", "eth0"))
		e.Del(list, cnitest.RuntimeConf("never", "", "eth0"))
		e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
	})
}

// TestDelOtherVeths: DEL of an attachment whose host veth is not found
// deletes the namespace's veth of that name when another implementation
// made it (no tripod alias on its host end), but never one tripod made for
// another network.
func TestDelOtherVeths(t *testing.T) {
	e := vethtest.New(t)
	a := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGa","plugins":[{"type":"bridge","bridge":"TAGba"}]}`)
	b := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGb","plugins":[{"type":"bridge","bridge":"TAGbb"}]}`)
	pod := e.Pod("p")
	e.In(func() {
		e.Add(b, rt(e, pod))
		e.Del(a, rt(e, pod))
		if err := e.Runner.CNI.CheckNetworkList(context.Background(), b, rt(e, pod)); err != nil {
			t.Errorf("DEL on network a disturbed network b's attachment: %v", err)
		}
		f, err := os.Open(pod.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		attrs := netlink.NewLinkAttrs()
		attrs.Name = e.Tag + "f"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth1", PeerNamespace: netlink.NsFd(f.Fd())}); err != nil {
			t.Fatal(err)
		}
		e.Del(a, cnitest.RuntimeConf(pod.Name, pod.Path, "eth1"))
		if _, err := netlink.LinkByName(e.Tag + "f"); err == nil {
			t.Error("the other implementation's veth survived DEL")
		}
		e.Del(b, rt(e, pod))
		vethtest.PodEmpty(t, pod)
		e.NoLeaks([]string{e.Tag + "a", e.Tag + "b"}, bridge.SpoofTable())
	})
}

// TestGC: GC keeps the listed attachments and removes every trace of the
// others (veths, addresses, rules), and nothing of another network.
func TestGC(t *testing.T) {
	e := vethtest.New(t)
	fields := `,"isGateway":true,"ipMasq":true,"macspoofchk":true,"ipam":`
	list := e.ConfList(conf("1.1.0", fields+v4Only))
	other := e.ConfList(`{"cniVersion":"1.1.0","name":"TAGo","plugins":[{"type":"bridge","bridge":"TAGbo"` + fields +
		`{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.91.0.0/24"}]]}}]}`)
	p1, p2, p3, o := e.Pod("p1"), e.Pod("p2"), e.Pod("p3"), e.Pod("o")
	e.In(func() {
		r1 := e.Add(list, rt(e, p1))
		e.Add(list, rt(e, p2))
		e.Add(list, rt(e, p3))
		ro := e.Add(other, rt(e, o))
		e.GC(list, p1.Name+"/eth0")

		vethtest.PodEmpty(t, p2)
		vethtest.PodEmpty(t, p3)
		got := hostVeths(t)
		want := []string{r1.Interfaces[1].Name, ro.Interfaces[1].Name}
		if strings.Join(got, " ") != strings.Join(want, " ") && strings.Join(got, " ") != want[1]+" "+want[0] {
			t.Errorf("host veths after GC %v, want %v", got, want)
		}
		if res := reserved(t, e, e.Tag); len(res) != 1 || res[0] != vethtest.IP(t, r1, true) {
			t.Errorf("reservations after GC %v, want only %s", res, vethtest.IP(t, r1, true))
		}
		for _, tbl := range []nftown.Table{masq.Table(), bridge.SpoofTable()} {
			tags, err := tbl.Tags(e.Tag)
			keep := nftown.Attachment{Network: e.Tag, ContainerID: p1.Name, IfName: "eth0"}.Tag()
			if err != nil || len(tags) != 1 || tags[0] != keep {
				t.Errorf("%s chains after GC %v (%v), want only %s", tbl.Name, tags, err, keep)
			}
			if tags, _ := tbl.Tags(e.Tag + "o"); len(tags) != 1 {
				t.Errorf("GC of one network touched another's %s chains: %v", tbl.Name, tags)
			}
		}
		p1.Ping(t, "10.96.0.1")
		o.Ping(t, "10.91.0.1")
		if err := e.Runner.CNI.CheckNetworkList(context.Background(), list, rt(e, p1)); err != nil {
			t.Errorf("CHECK of the kept attachment: %v", err)
		}

		// GC with nothing valid empties the network.
		e.GC(list)
		vethtest.PodEmpty(t, p1)
		e.Del(other, rt(e, o))
		e.NoLeaks([]string{e.Tag, e.Tag + "o"}, bridge.SpoofTable())
	})
}

// TestCheckDetects: CHECK notices a host veth taken off the bridge and
// missing masquerade rules.
func TestCheckDetects(t *testing.T) {
	e := vethtest.New(t)
	list := e.ConfList(conf("1.0.0", `,"isGateway":true,"ipMasq":true,"ipam":`+v4Only))
	pod := e.Pod("p")
	ctx := context.Background()
	e.In(func() {
		res := e.Add(list, rt(e, pod))
		if err := e.Runner.CNI.CheckNetworkList(ctx, list, rt(e, pod)); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		if err := masq.Remove(nftown.Attachment{Network: e.Tag, ContainerID: pod.Name, IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
		err := e.Runner.CNI.CheckNetworkList(ctx, list, rt(e, pod))
		vethtest.WantCode(t, err, cnierr.InvalidConfig)
		if !strings.Contains(err.Error(), "masquerade") {
			t.Errorf("error: %v", err)
		}
		host, err := netlink.LinkByName(res.Interfaces[1].Name)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetNoMaster(host); err != nil {
			t.Fatal(err)
		}
		err = e.Runner.CNI.CheckNetworkList(ctx, list, rt(e, pod))
		vethtest.WantCode(t, err, cnierr.InvalidConfig)
		if !strings.Contains(err.Error(), res.Interfaces[1].Name) {
			t.Errorf("error does not name the host veth: %v", err)
		}
		e.Del(list, rt(e, pod))
		e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
	})
}

// TestLayer2: without IPAM the interface is up and addressless; with
// disableContainerInterface it stays down.
func TestLayer2(t *testing.T) {
	e := vethtest.New(t)
	l2 := e.ConfList(conf("1.1.0", ``))
	down := e.ConfList(conf("1.1.0", `,"disableContainerInterface":true`))
	a, b := e.Pod("a"), e.Pod("b")
	e.In(func() {
		ra := e.Add(l2, rt(e, a))
		e.Add(down, rt(e, b))
		if len(ra.IPs) != 0 || len(ra.Interfaces) != 3 {
			t.Errorf("L2 result %v: want 3 interfaces, no IPs", ra)
		}
		if a.Link(t, "eth0").Attrs().Flags&net.FlagUp == 0 {
			t.Error("L2 eth0 is down")
		}
		if got := vethtest.Addrs(t, a, "eth0"); len(got) != 0 {
			t.Errorf("L2 eth0 has addresses %v", got)
		}
		if b.Link(t, "eth0").Attrs().Flags&net.FlagUp != 0 {
			t.Error("disableContainerInterface: eth0 is up")
		}
		if err := e.Runner.CNI.CheckNetworkList(context.Background(), l2, rt(e, a)); err != nil {
			t.Errorf("CHECK: %v", err)
		}
		// Frames cross the bridge with no IPAM at all: address the pods
		// by hand.
		c := e.Pod("c")
		e.Add(l2, rt(e, c))
		for pod, cidr := range map[*cnitest.Netns]string{a: "10.89.0.1/24", c: "10.89.0.2/24"} {
			pod.Do(t, func() error {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				ip, n, _ := net.ParseCIDR(cidr)
				n.IP = ip
				return netlink.AddrAdd(l, &netlink.Addr{IPNet: n})
			})
		}
		c.Ping(t, "10.89.0.1")
		e.Del(l2, rt(e, c))
		e.Del(l2, rt(e, a))
		e.Del(down, rt(e, b))
		e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
	})
}

// TestEnableDad: with enabledad, ADD returns once duplicate address
// detection has validated the IPv6 address; without, the address skips
// detection (nodad) and is usable at once either way.
func TestEnableDad(t *testing.T) {
	for _, dad := range []bool{false, true} {
		t.Run(fmt.Sprint("enabledad=", dad), func(t *testing.T) {
			e := vethtest.New(t)
			list := e.ConfList(conf("1.1.0", fmt.Sprintf(`,"enabledad":%v,"isGateway":true,"ipam":{"type":"static","addresses":[{"address":"fd98::2/64"},{"address":"10.90.0.2/24"}]}`, dad)))
			pod := e.Pod("p")
			e.In(func() {
				e.Add(list, rt(e, pod))
				pod.Do(t, func() error {
					l, err := netlink.LinkByName("eth0")
					if err != nil {
						return err
					}
					addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
					found := false
					for _, a := range addrs {
						if a.IP.String() != "fd98::2" {
							continue
						}
						found = true
						if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
							t.Errorf("fd98::2 flags %#x: still tentative after ADD", a.Flags)
						}
						if nodad := a.Flags&unix.IFA_F_NODAD != 0; nodad == dad {
							t.Errorf("fd98::2 nodad = %v with enabledad %v", nodad, dad)
						}
					}
					if !found {
						t.Errorf("fd98::2 missing: %v", addrs)
					}
					return err
				})
				pod.Ping(t, "fd98::1")
				e.Del(list, rt(e, pod))
				e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
			})
		})
	}
}

// TestStatus: STATUS asks IPAM.
func TestStatus(t *testing.T) {
	e := vethtest.New(t)
	e.In(func() {
		if err := e.Runner.CNI.GetStatusNetworkList(context.Background(), e.ConfList(conf("1.1.0", `,"ipam":`+v4Only))); err != nil {
			t.Errorf("STATUS: %v", err)
		}
		if err := e.Runner.CNI.GetStatusNetworkList(context.Background(), e.ConfList(conf("1.1.0", ``))); err != nil {
			t.Errorf("STATUS without IPAM: %v", err)
		}
	})
}

// TestConcurrentAdds: pods racing to create the bridge all get attached.
func TestConcurrentAdds(t *testing.T) {
	e := vethtest.New(t)
	list := e.ConfList(conf("1.1.0", `,"isGateway":true,"ipMasq":true,"ipam":`+v4Only))
	pods := []*cnitest.Netns{e.Pod("a"), e.Pod("b"), e.Pod("c"), e.Pod("d")}
	e.In(func() {
		var wg sync.WaitGroup
		errs := make([]error, len(pods))
		f, err := os.Open(e.Host.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for i, p := range pods {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A goroutine's thread must enter the host namespace itself.
				errs[i] = cnitest.InFile(f, func() error {
					_, err := e.Runner.CNI.AddNetworkList(context.Background(), list, rt(e, p))
					return err
				})
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("ADD %s: %v", pods[i].Name, err)
			}
		}
		for _, p := range pods {
			p.Ping(t, "10.96.0.1")
		}
		for _, p := range pods {
			e.Del(list, rt(e, p))
		}
		e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
	})
}

// TestBadInput: malformed configuration and arguments get the right code,
// a message naming the problem, and no side effect.
func TestBadInput(t *testing.T) {
	e := vethtest.New(t)
	pod := e.Pod("p")
	env := func(cmd string) map[string]string {
		return map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c1", "CNI_NETNS": pod.Path, "CNI_IFNAME": "eth0", "CNI_PATH": cnitest.BinDir(t)}
	}
	base := func(fields string) string {
		return strings.NewReplacer("TAG", e.Tag, "DATADIR", e.DataDir).Replace(`{"cniVersion":"1.1.0","name":"TAG","type":"bridge","bridge":"TAGbr"` + fields + `}`)
	}
	cases := []struct {
		name   string
		stdin  string
		env    map[string]string
		code   uint
		naming string
	}{
		{"not JSON", `{"cniVersion":`, nil, cnierr.DecodingFailure, "JSON"},
		{"mtu type", base(`,"mtu":"big"`), nil, cnierr.DecodingFailure, "mtu"},
		{"negative mtu", base(`,"mtu":-5`), nil, cnierr.InvalidConfig, "mtu"},
		{"bridge name", base(`,"bridge":"much-too-long-bridge"`), nil, cnierr.InvalidConfig, "bridge"},
		{"masq backend", base(`,"ipMasqBackend":"pf"`), nil, cnierr.InvalidConfig, "ipMasqBackend"},
		{"hairpin+promisc", base(`,"hairpinMode":true,"promiscMode":true`), nil, cnierr.InvalidConfig, "hairpinMode"},
		{"disabled+ipam", base(`,"disableContainerInterface":true,"ipam":` + v4Only), nil, cnierr.InvalidConfig, "disableContainerInterface"},
		{"vlan range", base(`,"vlan":4095`), nil, cnierr.InvalidConfig, "vlan"},
		{"bad args mac", base(`,"args":{"cni":{"mac":"zz"}}`), nil, cnierr.InvalidConfig, "args.cni.mac"},
		{"multicast mac", base(`,"runtimeConfig":{"mac":"01:00:5e:00:00:01"}`), nil, cnierr.InvalidConfig, "multicast"},
		{"CNI_ARGS mac", base(``), map[string]string{"CNI_ARGS": "IgnoreUnknown=1;MAC=nonsense"}, cnierr.InvalidConfig, "MAC"},
		{"netns missing", base(`,"ipam":` + v4Only), map[string]string{"CNI_NETNS": "/run/netns/" + e.Tag + "none"}, cnierr.UnknownContainer, "none"},
		{"no such IPAM", base(`,"ipam":{"type":"no-such-ipam"}`), nil, cnierr.InvalidConfig, "no-such-ipam"},
		{"version", `{"cniVersion":"9.9.9","name":"x","type":"bridge"}`, nil, cnierr.IncompatibleVersion, "9.9.9"},
		{"no ifname", base(``), map[string]string{"CNI_IFNAME": ""}, cnierr.InvalidEnv, "CNI_IFNAME"},
	}
	e.In(func() {
		for _, c := range cases {
			en := env("ADD")
			for k, v := range c.env {
				if v == "" {
					delete(en, k)
				} else {
					en[k] = v
				}
			}
			r := cnitest.Exec(t, "bridge", en, c.stdin)
			if r.Err == nil {
				t.Errorf("%s: ADD succeeded: %s", c.name, r.Stdout)
				continue
			}
			if r.Err.Code != c.code || !strings.Contains(r.Err.Msg+r.Err.Details, c.naming) {
				t.Errorf("%s: code %d %q, want code %d naming %q", c.name, r.Err.Code, r.Err.Msg, c.code, c.naming)
			}
		}
		// CHECK without prevResult.
		if r := cnitest.Exec(t, "bridge", env("CHECK"), base(``)); r.Err == nil || r.Err.Code != cnierr.InvalidConfig {
			t.Errorf("CHECK without prevResult: %+v", r.Err)
		}
		vethtest.PodEmpty(t, pod)
		e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
		if _, err := netlink.LinkByName(e.Tag + "br"); err == nil {
			t.Error("a refused ADD created the bridge")
		}
	})
}
