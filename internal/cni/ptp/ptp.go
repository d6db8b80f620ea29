// Package ptp is the ptp CNI plugin: a veth pair per attachment, routed
// rather than bridged. The host end holds each gateway as a host address
// (/32, /128) and a host route to each container address; the container
// reaches everything through that gateway.
//
// As with bridge, the host end's name is derived from the attachment (see
// package veth) and the masquerade rules are named after it, so DEL and GC
// need no state and work with the namespace or the address gone.
package ptp

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
	"github.com/tripod-dev/tripod/internal/cni/veth"
)

// Plugin returns the ptp plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "ptp", Funcs: plugin.Funcs{Add: add, Del: del, Check: check, GC: gc, Status: status}}
}

type netConf struct {
	types.PluginConf
	IPMasq        bool   `json:"ipMasq"`
	IPMasqBackend string `json:"ipMasqBackend"`
	MTU           int    `json:"mtu"`
}

func load(args *skel.CmdArgs) (*netConf, error) {
	n := &netConf{}
	if err := cnierr.Decode(args.StdinData, n); err != nil {
		return nil, err
	}
	if n.IPAM.Type == "" {
		return nil, cnierr.New(cnierr.InvalidConfig, "ptp: \"ipam\" is required: a routed link needs addresses")
	}
	if n.MTU < 0 {
		return nil, cnierr.New(cnierr.InvalidConfig, "ptp: \"mtu\" %d is negative", n.MTU)
	}
	switch n.IPMasqBackend {
	case "", "iptables", "nftables":
		// Accepted for compatibility; tripod always uses nftables.
	default:
		return nil, cnierr.New(cnierr.InvalidConfig, "ptp: \"ipMasqBackend\" %q is not \"iptables\" or \"nftables\"", n.IPMasqBackend)
	}
	return n, nil
}

func attachment(n *netConf, containerID, ifName string) nftown.Attachment {
	return nftown.Attachment{Network: n.Name, ContainerID: containerID, IfName: ifName}
}

func hostVethName(n *netConf, args *skel.CmdArgs) string {
	return veth.HostName(n.Name, args.ContainerID, args.IfName)
}
