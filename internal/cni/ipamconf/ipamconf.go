// Package ipamconf holds the parts of an "ipam" config section the IPAM
// plugins (host-local, static) share.
package ipamconf

import (
	"net"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
)

// Route is types.Route with the addresses kept as text, so that a bad one
// is reported as invalid configuration naming the value rather than as an
// undecodable document.
type Route struct {
	Dst      string `json:"dst"`
	GW       string `json:"gw"`
	MTU      int    `json:"mtu"`
	AdvMSS   int    `json:"advmss"`
	Priority int    `json:"priority"`
	Table    *int   `json:"table"`
	Scope    *int   `json:"scope"`
}

// Routes parses the "routes" of plugin's config (named in messages).
func Routes(plugin string, rcs []Route) ([]*types.Route, error) {
	var out []*types.Route
	for i, rc := range rcs {
		rt, err := rc.parse(plugin, i)
		if err != nil {
			return nil, err
		}
		out = append(out, rt)
	}
	return out, nil
}

func (rc Route) parse(plugin string, i int) (*types.Route, error) {
	_, dst, err := net.ParseCIDR(rc.Dst)
	if err != nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "%s: routes[%d].dst %q is not in CIDR notation", plugin, i, rc.Dst)
	}
	rt := &types.Route{Dst: *dst, MTU: rc.MTU, AdvMSS: rc.AdvMSS, Priority: rc.Priority, Table: rc.Table, Scope: rc.Scope}
	if rc.GW != "" {
		gw := net.ParseIP(rc.GW)
		if gw == nil {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s: routes[%d].gw %q is not an IP address", plugin, i, rc.GW)
		}
		if (gw.To4() == nil) != (dst.IP.To4() == nil) {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s: routes[%d].gw %s is of another IP family than dst %s", plugin, i, rc.GW, rc.Dst)
		}
		if v4 := gw.To4(); v4 != nil {
			gw = v4
		}
		rt.GW = gw
	}
	return rt, nil
}
