package vlan_test

import (
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/sublink/sublinktest"
)

// The link behaviour itself is tested in a VM, by internal/cni/l2test:
// this host's kernel may lack 8021q. These tests cover what runs before
// the kernel is asked: config validation, and the error for a kernel
// without the link type.

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

func TestKernelWithoutVlan(t *testing.T) {
	sublinktest.KernelWithout(t, sublinktest.Plugin{
		Type: "vlan", Module: "8021q", Config: "CONFIG_VLAN_8021Q", Extra: `,"vlanId":10`,
		Probe: func(a netlink.LinkAttrs) netlink.Link { return &netlink.Vlan{LinkAttrs: a, VlanId: 7} },
	})
}

func TestBadConfig(t *testing.T) {
	sublinktest.BadConfig(t, "vlan", func(e *sublinktest.Env) []sublinktest.BadCase {
		master := `"master":"` + e.Master + `"`
		return []sublinktest.BadCase{
			sublinktest.Bad("no vlanId", master, "", 7, "vlanId"),
			sublinktest.Bad("vlanId range", master+`,"vlanId":4095`, "", 7, "4095"),
			sublinktest.Bad("no master", `"vlanId":5`, "", 7, "master"),
			sublinktest.Bad("negative mtu", master+`,"vlanId":5,"mtu":-1`, "", 7, "mtu -1"),
			sublinktest.Bad("mtu above master", master+`,"vlanId":5,"mtu":1500`, "", 7, "1400"),
			sublinktest.Bad("missing master", `"master":"`+e.Tag+`none","vlanId":5`, "", 7, e.Tag+"none"),
			sublinktest.Bad("wrong type", master+`,"vlanId":"5"`, "", 6, `vlanId`),
		}
	})
}
