// Package ipvlan is the ipvlan CNI plugin: the container gets an ipvlan
// link on a master interface, sharing the master's MAC address.
package ipvlan

import (
	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
	"github.com/tripod-dev/tripod/internal/cni/sublink"
)

// Plugin returns the ipvlan plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "ipvlan", Funcs: sublink.Funcs(spec)}
}

// kind is the kernel link type this plugin creates.
var kind = sublink.Kind{Name: "ipvlan", Module: "ipvlan", Config: "CONFIG_IPVLAN"}

type conf struct {
	sublink.Conf
	Mode string `json:"mode"`
}

var modes = map[string]netlink.IPVlanMode{
	"":    netlink.IPVLAN_MODE_L2,
	"l2":  netlink.IPVLAN_MODE_L2,
	"l3":  netlink.IPVLAN_MODE_L3,
	"l3s": netlink.IPVLAN_MODE_L3S,
}

func spec(args *skel.CmdArgs) (*sublink.Spec, error) {
	c := &conf{}
	if err := sublink.Parse(args.StdinData, c, &c.Conf); err != nil {
		return nil, err
	}
	mode, ok := modes[c.Mode]
	if !ok {
		return nil, cnierr.New(cnierr.InvalidConfig, `unknown ipvlan "mode" %q (want l2, l3 or l3s)`, c.Mode)
	}
	if c.Master == "" && c.PrevResult != nil {
		// Chained after another plugin, ipvlan stacks on the interface
		// that plugin made, as the reference plugin does.
		prev, err := current.NewResultFromResult(c.PrevResult)
		if err != nil {
			return nil, cnierr.New(cnierr.DecodingFailure, "prevResult: %v", err)
		}
		if len(prev.Interfaces) != 1 || prev.Interfaces[0].Name == "" {
			return nil, cnierr.New(cnierr.InvalidConfig, `"master" is not set and prevResult does not name exactly one interface to use instead`)
		}
		c.Master = prev.Interfaces[0].Name
	}
	return &sublink.Spec{
		Kind: kind,
		Conf: &c.Conf,
		New: func(a netlink.LinkAttrs) netlink.Link {
			return &netlink.IPVlan{LinkAttrs: a, Mode: mode}
		},
		Verify: func(l netlink.Link) error {
			v, ok := l.(*netlink.IPVlan)
			if !ok || v.Mode != mode {
				return cnierr.New(cnierr.InvalidConfig, "interface %s is not in ipvlan mode %q", args.IfName, c.Mode)
			}
			return nil
		},
	}, nil
}
