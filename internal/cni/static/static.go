// Package static is the static IPAM plugin: it hands out exactly the
// addresses its configuration (or the runtime) names, keeping no state.
package static

import (
	"context"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/ipamconf"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
)

// Plugin returns the static plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "static", Funcs: plugin.Funcs{Add: add, Check: check}}
}

// netConf is the part of the network configuration static reads.
type netConf struct {
	CNIVersion string    `json:"cniVersion"`
	IPAM       *ipamConf `json:"ipam"`
	// RuntimeConfig carries the "ips" capability.
	RuntimeConfig struct {
		IPs []string `json:"ips"`
	} `json:"runtimeConfig"`
	// Args carries args.cni.ips (the convention for per-attachment data).
	Args struct {
		CNI struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
}

type ipamConf struct {
	Type      string           `json:"type"`
	Addresses []address        `json:"addresses"`
	Routes    []ipamconf.Route `json:"routes"`
	DNS       types.DNS        `json:"dns"`
}

type address struct {
	Address string `json:"address"`
	Gateway string `json:"gateway"`
}

// load decodes and validates the configuration and the per-attachment
// address sources, returning the result ADD would give.
func load(args *skel.CmdArgs) (*current.Result, error) {
	c := &netConf{}
	if err := cnierr.Decode(args.StdinData, c); err != nil {
		return nil, err
	}
	if c.IPAM == nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "static: network config has no \"ipam\" section")
	}
	addrs, err := sources(c, args.Args)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, cnierr.New(cnierr.InvalidConfig, "static: no address given (ipam.addresses, runtimeConfig.ips, args.cni.ips or CNI_ARGS IP)")
	}
	r := &current.Result{CNIVersion: current.ImplementedSpecVersion, DNS: c.IPAM.DNS}
	for _, a := range addrs {
		ipc, err := a.parse()
		if err != nil {
			return nil, err
		}
		r.IPs = append(r.IPs, ipc)
	}
	if err := fitsVersion(c.CNIVersion, r.IPs); err != nil {
		return nil, err
	}
	routes, err := ipamconf.Routes("static", c.IPAM.Routes)
	if err != nil {
		return nil, err
	}
	r.Routes = append(r.Routes, routes...)
	return r, nil
}

// sources picks the addresses: runtimeConfig.ips wins over args.cni.ips,
// which wins over the config's addresses plus CNI_ARGS IP. CNI_ARGS
// GATEWAY then gives a gateway to each address whose subnet contains it.
func sources(c *netConf, cniArgs string) ([]address, error) {
	env := plugin.Args(cniArgs)
	var addrs []address
	switch {
	case len(c.RuntimeConfig.IPs) > 0:
		for _, s := range c.RuntimeConfig.IPs {
			addrs = append(addrs, address{Address: s})
		}
	case len(c.Args.CNI.IPs) > 0:
		for _, s := range c.Args.CNI.IPs {
			addrs = append(addrs, address{Address: s})
		}
	default:
		addrs = append(addrs, c.IPAM.Addresses...)
		if v := env["IP"]; v != "" {
			for _, s := range strings.Split(v, ",") {
				addrs = append(addrs, address{Address: strings.TrimSpace(s)})
			}
		}
	}
	if v := env["GATEWAY"]; v != "" {
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			gw := net.ParseIP(s)
			if gw == nil {
				return nil, cnierr.New(cnierr.InvalidConfig, "static: CNI_ARGS GATEWAY %q is not an IP address", s)
			}
			used := false
			for i := range addrs {
				_, n, err := net.ParseCIDR(addrs[i].Address)
				if err == nil && n.Contains(gw) {
					addrs[i].Gateway = s
					used = true
				}
			}
			if !used {
				return nil, cnierr.New(cnierr.InvalidConfig, "static: CNI_ARGS GATEWAY %s is in the subnet of none of the addresses", s)
			}
		}
	}
	return addrs, nil
}

// fitsVersion refuses what a pre-0.3.0 result cannot carry: more than one
// address per family would otherwise be dropped silently.
func fitsVersion(v string, ips []*current.IPConfig) error {
	if v == "" {
		v = "0.1.0"
	}
	if ok, err := version.GreaterThanOrEqualTo(v, "0.3.0"); err != nil || ok {
		return nil
	}
	var n4, n6 int
	for _, ip := range ips {
		if ip.Address.IP.To4() != nil {
			n4++
		} else {
			n6++
		}
	}
	if n4 > 1 || n6 > 1 {
		return cnierr.New(cnierr.InvalidConfig, "static: cniVersion %s carries at most one IPv4 and one IPv6 address, %d and %d given", v, n4, n6)
	}
	return nil
}

func (a address) parse() (*current.IPConfig, error) {
	ip, n, err := net.ParseCIDR(a.Address)
	if err != nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "static: address %q is not in CIDR notation (e.g. 10.1.2.3/24)", a.Address)
	}
	ipc := &current.IPConfig{Address: net.IPNet{IP: ip, Mask: n.Mask}}
	if v4 := ip.To4(); v4 != nil {
		ipc.Address.IP = v4
	}
	if a.Gateway != "" {
		gw := net.ParseIP(a.Gateway)
		if gw == nil {
			return nil, cnierr.New(cnierr.InvalidConfig, "static: gateway %q of address %s is not an IP address", a.Gateway, a.Address)
		}
		if (gw.To4() == nil) != (ip.To4() == nil) {
			return nil, cnierr.New(cnierr.InvalidConfig, "static: gateway %s of address %s is of another IP family", a.Gateway, a.Address)
		}
		if v4 := gw.To4(); v4 != nil {
			gw = v4
		}
		ipc.Gateway = gw
	}
	return ipc, nil
}

func add(_ context.Context, args *skel.CmdArgs) (types.Result, error) {
	return load(args)
}

// check validates the configuration: static keeps no state to compare.
func check(_ context.Context, args *skel.CmdArgs) error {
	_, err := load(args)
	return err
}
