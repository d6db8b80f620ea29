// Package vlan is the vlan CNI plugin: the container gets an 802.1Q VLAN
// link on a master interface.
package vlan

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
	"github.com/tripod-dev/tripod/internal/cni/sublink"
)

// Plugin returns the vlan plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "vlan", Funcs: sublink.Funcs(spec)}
}

// kind is the kernel link type this plugin creates.
var kind = sublink.Kind{Name: "vlan", Module: "8021q", Config: "CONFIG_VLAN_8021Q"}

type conf struct {
	sublink.Conf
	VlanID *int `json:"vlanId"`
}

func spec(args *skel.CmdArgs) (*sublink.Spec, error) {
	c := &conf{}
	if err := sublink.Parse(args.StdinData, c, &c.Conf); err != nil {
		return nil, err
	}
	if c.Master == "" {
		return nil, cnierr.New(cnierr.InvalidConfig, `"master" is required: the interface to create the VLAN on`)
	}
	if c.VlanID == nil {
		return nil, cnierr.New(cnierr.InvalidConfig, `"vlanId" is required`)
	}
	id := *c.VlanID
	if id < 0 || id > 4094 {
		return nil, cnierr.New(cnierr.InvalidConfig, `"vlanId" %d is out of range (0 to 4094)`, id)
	}
	return &sublink.Spec{
		Kind: kind,
		Conf: &c.Conf,
		New: func(a netlink.LinkAttrs) netlink.Link {
			return &netlink.Vlan{LinkAttrs: a, VlanId: id}
		},
		Verify: func(l netlink.Link) error {
			v, ok := l.(*netlink.Vlan)
			if !ok || v.VlanId != id {
				return cnierr.New(cnierr.InvalidConfig, "interface %s is not on VLAN %d", args.IfName, id)
			}
			return nil
		},
	}, nil
}
