package macvlan_test

import (
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/sublink/sublinktest"
)

// The link behaviour itself is tested in a VM, by internal/cni/l2test:
// this host's kernel may lack macvlan. These tests cover what runs before
// the kernel is asked: config validation, and the error for a kernel
// without the link type.

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

func TestKernelWithoutMacvlan(t *testing.T) {
	sublinktest.KernelWithout(t, sublinktest.Plugin{
		Type: "macvlan", Module: "macvlan", Config: "CONFIG_MACVLAN",
		Probe: func(a netlink.LinkAttrs) netlink.Link {
			return &netlink.Macvlan{LinkAttrs: a, Mode: netlink.MACVLAN_MODE_BRIDGE}
		},
	})
}

func TestBadConfig(t *testing.T) {
	sublinktest.BadConfig(t, "macvlan", func(e *sublinktest.Env) []sublinktest.BadCase {
		master := `"master":"` + e.Master + `"`
		return []sublinktest.BadCase{
			sublinktest.Bad("mode", master+`,"mode":"bogus"`, "", 7, `"bogus"`),
			sublinktest.Bad("mac", master+`,"runtimeConfig":{"mac":"zz:00"}`, "", 7, `zz:00`),
			sublinktest.Bad("cni-args mac", master, "IgnoreUnknown=1;MAC=01:00:5e:00:00:01", 7, "multicast"),
			sublinktest.Bad("negative mtu", master+`,"mtu":-1`, "", 7, "mtu -1"),
			sublinktest.Bad("mtu above master", master+`,"mtu":1500`, "", 7, "1400"),
			sublinktest.Bad("missing master", `"master":"`+e.Tag+`none"`, "", 7, e.Tag+"none"),
			sublinktest.Bad("wrong type", master+`,"mtu":"big"`, "", 6, `mtu`),
		}
	})
}
