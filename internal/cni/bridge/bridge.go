// Package bridge is the bridge CNI plugin: a veth pair per attachment, the
// host end a port of a Linux bridge, the container end addressed by IPAM.
//
// The host end's name is derived from the attachment (see package veth)
// and its rules are named after it (see nftown), so DEL and GC clean up
// with no state file, also when the container's namespace or address is
// already gone.
package bridge

import (
	"net"
	"strconv"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
	"github.com/tripod-dev/tripod/internal/cni/veth"
)

// Plugin returns the bridge plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "bridge", Funcs: plugin.Funcs{Add: add, Del: del, Check: check, GC: gc, Status: status}}
}

// defaultBridge is the bridge used when the config names none.
const defaultBridge = "cni0"

type vlanTrunk struct {
	MinID *int `json:"minID"`
	MaxID *int `json:"maxID"`
	ID    *int `json:"id"`
}

type netConf struct {
	types.PluginConf
	BrName                    string       `json:"bridge"`
	IsGW                      bool         `json:"isGateway"`
	IsDefaultGW               bool         `json:"isDefaultGateway"`
	ForceAddress              bool         `json:"forceAddress"`
	IPMasq                    bool         `json:"ipMasq"`
	IPMasqBackend             string       `json:"ipMasqBackend"`
	MTU                       int          `json:"mtu"`
	HairpinMode               bool         `json:"hairpinMode"`
	PromiscMode               bool         `json:"promiscMode"`
	Vlan                      int          `json:"vlan"`
	VlanTrunk                 []*vlanTrunk `json:"vlanTrunk"`
	PreserveDefaultVlan       *bool        `json:"preserveDefaultVlan"`
	MacSpoofChk               bool         `json:"macspoofchk"`
	EnableDad                 bool         `json:"enabledad"`
	DisableContainerInterface bool         `json:"disableContainerInterface"`
	PortIsolation             bool         `json:"portIsolation"`

	Args struct {
		CNI struct {
			Mac string `json:"mac"`
		} `json:"cni"`
	} `json:"args"`
	RuntimeConfig struct {
		Mac string `json:"mac"`
	} `json:"runtimeConfig"`

	mac   net.HardwareAddr // requested container MAC, if any
	trunk []vlanRange
}

type vlanRange struct{ min, max int }

func (n *netConf) vlanFiltering() bool { return n.Vlan != 0 || len(n.trunk) > 0 }

func (n *netConf) preserveDefaultVlan() bool {
	return n.PreserveDefaultVlan == nil || *n.PreserveDefaultVlan
}

func (n *netConf) layer3() bool { return n.IPAM.Type != "" }

// load decodes and validates the configuration and the per-attachment
// arguments. Everything wrong with them is found here, before any work.
func load(args *skel.CmdArgs) (*netConf, error) {
	n := &netConf{BrName: defaultBridge}
	if err := cnierr.Decode(args.StdinData, n); err != nil {
		return nil, err
	}
	if n.BrName == "" {
		n.BrName = defaultBridge
	}
	if err := utils.ValidateInterfaceName(n.BrName); err != nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "bridge: \"bridge\" %q is not a valid interface name: %s", n.BrName, err.Msg)
	}
	if n.IsDefaultGW {
		n.IsGW = true
	}
	if n.MTU < 0 {
		return nil, cnierr.New(cnierr.InvalidConfig, "bridge: \"mtu\" %d is negative", n.MTU)
	}
	if n.HairpinMode && n.PromiscMode {
		return nil, cnierr.New(cnierr.InvalidConfig, "bridge: \"hairpinMode\" and \"promiscMode\" cannot both be set")
	}
	switch n.IPMasqBackend {
	case "", "iptables", "nftables":
		// Accepted for compatibility; tripod always uses nftables.
	default:
		return nil, cnierr.New(cnierr.InvalidConfig, "bridge: \"ipMasqBackend\" %q is not \"iptables\" or \"nftables\"", n.IPMasqBackend)
	}
	if n.Vlan < 0 || n.Vlan > 4094 {
		return nil, cnierr.New(cnierr.InvalidConfig, "bridge: \"vlan\" %d is outside 0-4094", n.Vlan)
	}
	for i, t := range n.VlanTrunk {
		r, err := trunkRange(i, t)
		if err != nil {
			return nil, err
		}
		n.trunk = append(n.trunk, r)
	}
	if n.Vlan != 0 && len(n.trunk) > 0 {
		return nil, cnierr.New(cnierr.InvalidConfig, "bridge: \"vlan\" and \"vlanTrunk\" cannot both be set")
	}
	if n.DisableContainerInterface && n.layer3() {
		return nil, cnierr.New(cnierr.InvalidConfig, "bridge: \"disableContainerInterface\" leaves the interface down, so it cannot have \"ipam\"")
	}
	if n.IsGW && n.Vlan != 0 && len(n.BrName)+1+len(strconv.Itoa(n.Vlan)) > 15 {
		return nil, cnierr.New(cnierr.InvalidConfig, "bridge: gateway interface %s.%d would exceed 15 characters; shorten \"bridge\"", n.BrName, n.Vlan)
	}
	// The MAC: CNI_ARGS MAC=, then args.cni.mac, then the mac capability.
	mac, from := plugin.Args(args.Args)["MAC"], "CNI_ARGS MAC"
	if n.Args.CNI.Mac != "" {
		mac, from = n.Args.CNI.Mac, "args.cni.mac"
	}
	if n.RuntimeConfig.Mac != "" {
		mac, from = n.RuntimeConfig.Mac, "runtimeConfig.mac"
	}
	if mac != "" {
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			return nil, cnierr.New(cnierr.InvalidConfig, "bridge: %s %q is not an Ethernet MAC address", from, mac)
		}
		if hw[0]&1 != 0 {
			return nil, cnierr.New(cnierr.InvalidConfig, "bridge: %s %q is a multicast address", from, mac)
		}
		n.mac = hw
	}
	return n, nil
}

func trunkRange(i int, t *vlanTrunk) (vlanRange, error) {
	bad := func(what string, v int) error {
		return cnierr.New(cnierr.InvalidConfig, "bridge: vlanTrunk[%d].%s %d is outside 1-4094", i, what, v)
	}
	switch {
	case t == nil:
		return vlanRange{}, cnierr.New(cnierr.InvalidConfig, "bridge: vlanTrunk[%d] is null", i)
	case t.ID != nil:
		if t.MinID != nil || t.MaxID != nil {
			return vlanRange{}, cnierr.New(cnierr.InvalidConfig, "bridge: vlanTrunk[%d] sets both \"id\" and a range", i)
		}
		if *t.ID < 1 || *t.ID > 4094 {
			return vlanRange{}, bad("id", *t.ID)
		}
		return vlanRange{*t.ID, *t.ID}, nil
	case t.MinID != nil && t.MaxID != nil:
		if *t.MinID < 1 || *t.MinID > 4094 {
			return vlanRange{}, bad("minID", *t.MinID)
		}
		if *t.MaxID < 1 || *t.MaxID > 4094 {
			return vlanRange{}, bad("maxID", *t.MaxID)
		}
		if *t.MinID > *t.MaxID {
			return vlanRange{}, cnierr.New(cnierr.InvalidConfig, "bridge: vlanTrunk[%d].minID %d is greater than maxID %d", i, *t.MinID, *t.MaxID)
		}
		return vlanRange{*t.MinID, *t.MaxID}, nil
	case t.MinID != nil || t.MaxID != nil:
		return vlanRange{}, cnierr.New(cnierr.InvalidConfig, "bridge: vlanTrunk[%d] needs both \"minID\" and \"maxID\"", i)
	}
	return vlanRange{}, cnierr.New(cnierr.InvalidConfig, "bridge: vlanTrunk[%d] sets neither \"id\" nor \"minID\"/\"maxID\"", i)
}

// attachment is the identity DEL and GC find everything by.
func attachment(n *netConf, containerID, ifName string) nftown.Attachment {
	return nftown.Attachment{Network: n.Name, ContainerID: containerID, IfName: ifName}
}

func hostVethName(n *netConf, args *skel.CmdArgs) string {
	return veth.HostName(n.Name, args.ContainerID, args.IfName)
}
