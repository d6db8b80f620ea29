package vlan_test

import (
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/vmtest"
)

// The link behaviour itself is tested in a VM, by internal/cni/l2test:
// this host's kernel may lack 8021q. These tests cover what runs before
// the kernel is asked: config validation, and the error for a kernel
// without the link type.

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

func setup(t *testing.T) (tag string, ns *cnitest.Netns, master string) {
	t.Helper()
	cnitest.Root(t)
	vmtest.Host(t)
	tag = cnitest.Tag(t)
	ns = cnitest.NewNetns(t, tag)
	master = tag + "m"
	t.Cleanup(func() { cnitest.DeleteLinks(tag) })
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: master, MTU: 1400}, PeerName: tag + "p"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("creating master veth: %v", err)
	}
	return tag, ns, master
}

func env(ns *cnitest.Netns, cmd, args string) map[string]string {
	return map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c1", "CNI_NETNS": ns.Path, "CNI_IFNAME": "eth0", "CNI_PATH": os.Getenv(cnitest.BinEnv), "CNI_ARGS": args}
}

// noLinks asserts the pod namespace holds nothing but lo.
func noLinks(t *testing.T, ns *cnitest.Netns) {
	t.Helper()
	ns.Do(t, func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().Name != "lo" {
				t.Errorf("leaked link %s in %s", l.Attrs().Name, ns.Name)
			}
		}
		return err
	})
}

func TestKernelWithoutVlan(t *testing.T) {
	tag, ns, master := setup(t)
	if kernelHas(t, ns) {
		t.Skip("skipped: this kernel has 8021q, so the KernelUnsupported path cannot be reached (the VM tests cover the link)")
	}
	conf := `{"cniVersion":"1.1.0","name":"` + tag + `","type":"vlan","master":"` + master + `","vlanId":10,"ipam":{"type":"static","addresses":[{"address":"10.9.0.2/24"}]}}`
	r := cnitest.Exec(t, "vlan", env(ns, "ADD", ""), conf)
	if r.Err == nil {
		t.Fatalf("ADD succeeded on a kernel without 8021q: %s", r.Stdout)
	}
	if r.Err.Code != 102 || !strings.Contains(r.Err.Msg, "vlan") || !strings.Contains(r.Err.Msg, "CONFIG_VLAN_8021Q") {
		t.Errorf("error %d %q, want code 102 naming vlan and CONFIG_VLAN_8021Q", r.Err.Code, r.Err.Msg)
	}
	noLinks(t, ns)
	// DEL of the attachment that never came to be succeeds.
	if r := cnitest.Exec(t, "vlan", env(ns, "DEL", ""), conf); r.Err != nil {
		t.Errorf("DEL: %v", r.Err)
	}
	cnitest.DeleteLinks(tag)
	cnitest.NoLinks(t, tag)
}

func TestBadConfig(t *testing.T) {
	tag, ns, master := setup(t)
	base := `"cniVersion":"1.1.0","name":"` + tag + `","type":"vlan"`
	for _, tc := range []struct {
		name, conf, args string
		code             uint
		msg              string
	}{
		{"no vlanId", `"master":"` + master + `"`, "", 7, "vlanId"},
		{"vlanId range", `"master":"` + master + `","vlanId":4095`, "", 7, "4095"},
		{"no master", `"vlanId":5`, "", 7, "master"},
		{"negative mtu", `"master":"` + master + `","vlanId":5,"mtu":-1`, "", 7, "mtu -1"},
		{"mtu above master", `"master":"` + master + `","vlanId":5,"mtu":1500`, "", 7, "1400"},
		{"missing master", `"master":"` + tag + `none","vlanId":5`, "", 7, tag + "none"},
		{"wrong type", `"master":"` + master + `","vlanId":"5"`, "", 6, `vlanId`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := cnitest.Exec(t, "vlan", env(ns, "ADD", tc.args), `{`+base+`,`+tc.conf+`}`)
			if r.Err == nil {
				t.Fatalf("ADD succeeded: %s", r.Stdout)
			}
			if r.Err.Code != tc.code || !strings.Contains(r.Err.Msg, tc.msg) {
				t.Errorf("error %d %q, want code %d mentioning %q", r.Err.Code, r.Err.Msg, tc.code, tc.msg)
			}
			noLinks(t, ns)
		})
	}
}

// kernelHas reports whether the kernel creates 8021q links, trying one on
// a veth in the test's namespace.
func kernelHas(t *testing.T, ns *cnitest.Netns) bool {
	t.Helper()
	ok := false
	ns.Do(t, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "probe0"}, PeerName: "probe1"}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		defer netlink.LinkDel(v)
		p, err := netlink.LinkByName("probe0")
		if err != nil {
			return err
		}
		a := netlink.LinkAttrs{Name: "probe2", ParentIndex: p.Attrs().Index}
		l := &netlink.Vlan{LinkAttrs: a, VlanId: 7}
		if netlink.LinkAdd(l) == nil {
			ok = true
			return netlink.LinkDel(l)
		}
		return nil
	})
	return ok
}
