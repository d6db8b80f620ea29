// Package macvlan is the macvlan CNI plugin: the container gets a macvlan
// link on a host (or, with linkInContainer, a container) interface, with
// its own MAC address.
package macvlan

import (
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
	"github.com/tripod-dev/tripod/internal/cni/sublink"
)

// Plugin returns the macvlan plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "macvlan", Funcs: sublink.Funcs(spec)}
}

// kind is the kernel link type this plugin creates.
var kind = sublink.Kind{Name: "macvlan", Module: "macvlan", Config: "CONFIG_MACVLAN"}

type conf struct {
	sublink.Conf
	Mode string `json:"mode"`
	// MAC is accepted in the config too, as the reference plugin does;
	// runtimeConfig and CNI_ARGS take precedence.
	MAC           string `json:"mac,omitempty"`
	RuntimeConfig struct {
		MAC string `json:"mac,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

var modes = map[string]netlink.MacvlanMode{
	"":         netlink.MACVLAN_MODE_BRIDGE,
	"bridge":   netlink.MACVLAN_MODE_BRIDGE,
	"private":  netlink.MACVLAN_MODE_PRIVATE,
	"vepa":     netlink.MACVLAN_MODE_VEPA,
	"passthru": netlink.MACVLAN_MODE_PASSTHRU,
}

func spec(args *skel.CmdArgs) (*sublink.Spec, error) {
	c := &conf{}
	if err := sublink.Parse(args.StdinData, c, &c.Conf); err != nil {
		return nil, err
	}
	mode, ok := modes[c.Mode]
	if !ok {
		return nil, cnierr.New(cnierr.InvalidConfig, `unknown macvlan "mode" %q (want bridge, private, vepa or passthru)`, c.Mode)
	}
	mac, src := c.MAC, `"mac"`
	if v := plugin.Args(args.Args)["MAC"]; v != "" {
		mac, src = v, "CNI_ARGS MAC"
	}
	if c.RuntimeConfig.MAC != "" {
		mac, src = c.RuntimeConfig.MAC, `runtimeConfig "mac"`
	}
	var hw net.HardwareAddr
	if mac != "" {
		var err error
		hw, err = net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s %q is not an Ethernet MAC address", src, mac)
		}
		if hw[0]&1 != 0 {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s %q is a multicast address", src, mac)
		}
	}
	return &sublink.Spec{
		Kind: kind,
		Conf: &c.Conf,
		MAC:  hw,
		New: func(a netlink.LinkAttrs) netlink.Link {
			return &netlink.Macvlan{LinkAttrs: a, Mode: mode}
		},
		Verify: func(l netlink.Link) error {
			m, ok := l.(*netlink.Macvlan)
			if !ok || m.Mode != mode {
				return cnierr.New(cnierr.InvalidConfig, "interface %s is not in macvlan mode %q", args.IfName, modeName(mode))
			}
			return nil
		},
	}, nil
}

func modeName(m netlink.MacvlanMode) string {
	for name, v := range modes {
		if v == m && name != "" {
			return name
		}
	}
	return "unknown"
}
