package hostdevice_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/vmtest"
)

// The tests move one end of a veth pair (this host's kernel has no dummy
// links) whose other end sits in a peer namespace, so traffic can prove
// the device works in the pod.

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

type env struct {
	tag, dev, subnet string
	pod, peer        *cnitest.Netns
	mac              string
	r                *cnitest.Runner
}

func setup(t *testing.T) *env {
	t.Helper()
	cnitest.Root(t)
	vmtest.Host(t)
	tag := cnitest.Tag(t)
	e := &env{tag: tag, dev: tag + "h", pod: cnitest.NewNetns(t, tag+"a"), peer: cnitest.NewNetns(t, tag+"p"), r: cnitest.NewRunner(t)}
	var b byte
	for _, c := range tag {
		b = b*31 + byte(c)
	}
	e.subnet = fmt.Sprintf("10.%d.%d", 100+b%100, b)
	t.Cleanup(func() { cnitest.DeleteLinks(tag) })
	pf, err := os.Open(e.peer.Path)
	if err != nil {
		t.Fatal(err)
	}
	err = netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: e.dev}, PeerName: "peer0", PeerNamespace: netlink.NsFd(pf.Fd())})
	pf.Close()
	if err != nil {
		t.Fatalf("creating veth: %v", err)
	}
	l, err := netlink.LinkByName(e.dev)
	if err != nil {
		t.Fatal(err)
	}
	e.mac = l.Attrs().HardwareAddr.String()
	e.peer.Do(t, func() error {
		l, err := netlink.LinkByName("peer0")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(e.subnet + ".1/24")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	return e
}

func (e *env) list(t *testing.T, version, selector, ipam string) *libcni.NetworkConfigList {
	t.Helper()
	p := `{"type":"host-device",` + selector
	if ipam != "" {
		p += `,"ipam":` + ipam
	}
	return cnitest.ConfList(t, `{"cniVersion":"`+version+`","name":"`+e.tag+`","plugins":[`+p+`}]}`)
}

func (e *env) static() string {
	return `{"type":"static","addresses":[{"address":"` + e.subnet + `.2/24"}]}`
}

// hostDev asserts the device is back in the host under its own name,
// without the alias ADD gave it.
func (e *env) hostDev(t *testing.T) {
	t.Helper()
	l, err := netlink.LinkByName(e.dev)
	if err != nil {
		t.Fatalf("%s is not in the host namespace: %v", e.dev, err)
	}
	if l.Attrs().Alias != "" {
		t.Errorf("%s kept alias %q", e.dev, l.Attrs().Alias)
	}
	if l.Attrs().HardwareAddr.String() != e.mac {
		t.Errorf("%s is a different device (MAC %s, want %s)", e.dev, l.Attrs().HardwareAddr, e.mac)
	}
}

func TestLifecycle(t *testing.T) {
	for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		for _, sel := range []string{"device", "hwaddr"} {
			t.Run(v+"/"+sel, func(t *testing.T) {
				e := setup(t)
				selector := `"device":"` + e.dev + `"`
				if sel == "hwaddr" {
					selector = `"hwaddr":"` + strings.ToUpper(e.mac) + `"`
				}
				l := e.list(t, v, selector, e.static())
				rt := cnitest.RuntimeConf(e.tag, e.pod.Path, "eth0")
				ctx := context.Background()
				cur := e.r.AddVersion(t, l, rt, v)
				if len(cur.Interfaces) != 1 || cur.Interfaces[0].Name != "eth0" || cur.Interfaces[0].Mac != e.mac || cur.Interfaces[0].Sandbox != e.pod.Path {
					t.Errorf("result interfaces %v, want eth0 with MAC %s in the pod", cur.Interfaces, e.mac)
				}
				if _, err := netlink.LinkByName(e.dev); err == nil {
					t.Errorf("%s is still in the host namespace after ADD", e.dev)
				}
				in := e.pod.Link(t, "eth0")
				if in.Attrs().HardwareAddr.String() != e.mac || in.Attrs().Alias != e.dev || in.Attrs().Flags&net.FlagUp == 0 {
					t.Errorf("pod eth0: MAC %s alias %q up=%v, want the moved %s, up, alias naming it", in.Attrs().HardwareAddr, in.Attrs().Alias, in.Attrs().Flags&net.FlagUp != 0, e.dev)
				}
				e.pod.Ping(t, e.subnet+".1")
				if v != "0.3.1" {
					if err := e.r.CNI.CheckNetworkList(ctx, l, rt); err != nil {
						t.Errorf("CHECK: %v", err)
					}
				}
				if err := e.r.CNI.GetStatusNetworkList(ctx, l); err != nil {
					t.Errorf("STATUS: %v", err)
				}
				if err := e.r.CNI.DelNetworkList(ctx, l, rt); err != nil {
					t.Fatalf("DEL: %v", err)
				}
				e.hostDev(t)
				e.pod.OnlyLo(t)
				if err := e.r.CNI.DelNetworkList(ctx, l, rt); err != nil {
					t.Errorf("second DEL: %v", err)
				}
				e.hostDev(t)
				// The device is usable again: a second ADD works.
				add := cnitest.RuntimeConf(e.tag+"2", e.pod.Path, "net1")
				if _, err := e.r.CNI.AddNetworkList(ctx, l, add); err != nil {
					t.Fatalf("ADD after DEL: %v", err)
				}
				if err := e.r.CNI.DelNetworkList(ctx, l, add); err != nil {
					t.Fatalf("DEL: %v", err)
				}
				e.hostDev(t)
				e.pod.OnlyLo(t)
			})
		}
	}
}

// TestDelAfterNetnsGone: a veth dies with the namespace (a physical device
// would return to the host); DEL must succeed either way.
func TestDelAfterNetnsGone(t *testing.T) {
	e := setup(t)
	l := e.list(t, "1.1.0", `"device":"`+e.dev+`"`, e.static())
	rt := cnitest.RuntimeConf(e.tag, e.pod.Path, "eth0")
	ctx := context.Background()
	if _, err := e.r.CNI.AddNetworkList(ctx, l, rt); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	e.pod.Remove(t)
	if err := e.r.CNI.DelNetworkList(ctx, l, rt); err != nil {
		t.Fatalf("DEL after the netns is gone: %v", err)
	}
	cnitest.NoLinks(t, e.tag)
}

// TestReturnedDeviceRenamed simulates what the kernel leaves when a
// namespace holding a physical device dies: the device back in the host
// under the container-side name, with the alias ADD gave it. DEL (and
// GC) give it its name back.
func TestReturnedDeviceRenamed(t *testing.T) {
	for _, verb := range []string{"DEL", "GC"} {
		t.Run(verb, func(t *testing.T) {
			e := setup(t)
			l, err := netlink.LinkByName(e.dev)
			if err != nil {
				t.Fatal(err)
			}
			returned := e.tag + "r"
			if err := netlink.LinkSetName(l, returned); err != nil {
				t.Fatal(err)
			}
			if err := netlink.LinkSetAlias(l, e.dev); err != nil {
				t.Fatal(err)
			}
			gone := cnitest.NewNetns(t, e.tag+"g")
			gone.Remove(t)
			conf := `{"cniVersion":"1.1.0","name":"` + e.tag + `","type":"host-device","device":"` + e.dev + `"}`
			envs := map[string]string{"CNI_COMMAND": verb, "CNI_CONTAINERID": e.tag, "CNI_NETNS": gone.Path, "CNI_IFNAME": returned, "CNI_PATH": cnitest.BinDir(t)}
			if verb == "GC" {
				conf = `{"cniVersion":"1.1.0","name":"` + e.tag + `","type":"host-device","device":"` + e.dev + `","cni.dev/valid-attachments":[]}`
				delete(envs, "CNI_NETNS")
				delete(envs, "CNI_IFNAME")
				delete(envs, "CNI_CONTAINERID")
			}
			if r := cnitest.Exec(t, "host-device", envs, conf); r.Err != nil {
				t.Fatalf("%s: %v", verb, r.Err)
			}
			e.hostDev(t)
		})
	}
}

func TestFailedAddGivesDeviceBack(t *testing.T) {
	e := setup(t)
	envs := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": e.tag, "CNI_NETNS": e.pod.Path, "CNI_IFNAME": "eth0", "CNI_PATH": cnitest.BinDir(t)}
	base := `{"cniVersion":"1.1.0","name":"` + e.tag + `","type":"host-device","device":"` + e.dev + `","ipam":`
	r := cnitest.Exec(t, "host-device", envs, base+`{"type":"static","addresses":[{"address":"bogus"}]}}`)
	if r.Err == nil || r.Err.Code != 7 {
		t.Fatalf("ADD with a bad IPAM config: %+v, want code 7", r.Err)
	}
	e.hostDev(t)
	e.pod.OnlyLo(t)

	// A pod that already has eth0 is refused before anything moves.
	e.pod.Do(t, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"})
	})
	r = cnitest.Exec(t, "host-device", envs, base+e.static()+`}`)
	if r.Err == nil || r.Err.Code != 101 {
		t.Fatalf("ADD onto an existing eth0: %+v, want code 101", r.Err)
	}
	e.hostDev(t)
	// DEL of that pod's eth0 leaves a link this plugin did not move alone.
	envs["CNI_COMMAND"] = "DEL"
	if r := cnitest.Exec(t, "host-device", envs, base+e.static()+`}`); r.Err != nil {
		t.Fatalf("DEL: %v", r.Err)
	}
	if e.pod.Link(t, "eth0").Type() != "veth" {
		t.Error("DEL took the pod's own eth0")
	}
	e.hostDev(t)
}

func TestBadConfig(t *testing.T) {
	e := setup(t)
	envs := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": e.tag, "CNI_NETNS": e.pod.Path, "CNI_IFNAME": "eth0", "CNI_PATH": cnitest.BinDir(t)}
	for _, tc := range []struct{ name, sel, msg string }{
		{"none", ``, "exactly one"},
		{"two", `,"device":"` + e.dev + `","hwaddr":"` + e.mac + `"`, "got 2"},
		{"bad hwaddr", `,"hwaddr":"nope"`, "nope"},
		{"missing device", `,"device":"` + e.tag + `x"`, e.tag + "x"},
		{"missing hwaddr", `,"hwaddr":"02:00:00:00:00:99"`, "02:00:00:00:00:99"},
		{"bad pciBusID", `,"pciBusID":"pci-1"`, "pci-1"},
		{"absent pciBusID", `,"pciBusID":"0000:ff:1f.7"`, "0000:ff:1f.7"},
		{"kernelpath outside sys", `,"kernelpath":"/etc"`, "/etc"},
		{"deviceID and device", `,"device":"` + e.dev + `","runtimeConfig":{"deviceID":"0000:00:01.0"}`, "got 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := cnitest.Exec(t, "host-device", envs, `{"cniVersion":"1.1.0","name":"`+e.tag+`","type":"host-device"`+tc.sel+`}`)
			if r.Err == nil || r.Err.Code != 7 || !strings.Contains(r.Err.Msg, tc.msg) {
				t.Errorf("ADD: %+v, want code 7 mentioning %q", r.Err, tc.msg)
			}
			e.hostDev(t)
			e.pod.OnlyLo(t)
		})
	}
}
