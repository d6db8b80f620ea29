// Package dhcp is the dhcp IPAM plugin. The plugin asks a long-running
// daemon ('dhcp daemon', package daemon) over a unix socket for a lease on
// the container's interface; the daemon runs DHCP inside the container's
// network namespace and keeps the lease renewed until DEL.
package dhcp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/dhcp/api"
	"github.com/tripod-dev/tripod/internal/cni/dhcp/daemon"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
)

// Plugin returns the dhcp plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "dhcp", Funcs: plugin.Funcs{Add: add, Del: del, Check: check, GC: gc, Status: status}}
}

// Daemon runs 'dhcp daemon' with the arguments after "daemon" and returns
// the exit status.
func Daemon(args []string) int { return daemon.Main(args, os.Stderr) }

// How long the plugin waits for the daemon beyond the acquisition bound
// it asked for; without ipam.timeout the daemon's own -timeout bounds ADD
// and addWait is only a backstop.
const (
	callSlack = 5 * time.Second
	addWait   = 10 * time.Minute
	shortWait = 30 * time.Second
)

func attachment(c *conf, containerID, ifName string) api.Attachment {
	return api.Attachment{ContainerID: containerID, Network: c.Name, IfName: ifName}
}

// call sends one request and returns the lease in the answer, or the
// daemon's coded error.
func call(ctx context.Context, c *conf, req *api.Request, wait time.Duration) (*api.Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	resp, err := api.Call(ctx, c.socket, req)
	if err != nil {
		return nil, unreachable(c, err, cnierr.DHCPDaemon)
	}
	if resp.Error != nil {
		return nil, resp.Error
	}
	return resp.Lease, nil
}

func unreachable(c *conf, err error, code uint) error {
	var de *api.DialError
	if errors.As(err, &de) {
		return cnierr.New(code, "cannot reach the dhcp daemon at %s (%v): start it with 'dhcp daemon' (or 'tripod-cni dhcp daemon'), or set ipam.daemonSocketPath to the socket it serves", c.socket, de.Err)
	}
	return cnierr.New(code, "dhcp daemon at %s: %v", c.socket, err)
}

func add(ctx context.Context, args *skel.CmdArgs) (types.Result, error) {
	c, err := parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	p, err := c.params(args.ContainerID, args.IfName, args.Args)
	if err != nil {
		return nil, err
	}
	// The daemon runs elsewhere: a relative path means nothing there.
	netns, err := filepath.Abs(args.Netns)
	if err != nil {
		return nil, cnierr.New(cnierr.InvalidEnv, "CNI_NETNS %q: %v", args.Netns, err)
	}
	wait := addWait
	if c.timeout > 0 {
		wait = c.timeout + callSlack
	}
	l, err := call(ctx, c, &api.Request{Op: api.OpAdd, Attachment: attachment(c, args.ContainerID, args.IfName), Netns: netns, Params: p}, wait)
	if err != nil {
		return nil, err
	}
	return c.result(l), nil
}

// result turns a lease into a CNI result. The first router is the gateway
// and the default route, unless suppress lists "gateway"; classless
// static routes (option 121), when present, replace the router's default
// route and option 33, as RFC 3442 requires.
func (c *conf) result(l *api.Lease) *current.Result {
	r := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	ipc := &current.IPConfig{Address: ipNet(l.Address)}
	var gw net.IP
	if len(l.Routers) > 0 {
		gw = l.Routers[0].AsSlice()
	}
	if !c.suppressGateway {
		ipc.Gateway = gw
	}
	r.IPs = []*current.IPConfig{ipc}
	var routes []*types.Route
	if len(l.Classless) > 0 {
		for _, rt := range l.Classless {
			routes = append(routes, route(rt.Dst, rt.GW))
		}
	} else {
		for _, rt := range l.Static {
			routes = append(routes, route(rt.Dst, rt.GW))
		}
		if gw != nil {
			routes = append(routes, route(netip.PrefixFrom(netip.IPv4Unspecified(), 0), l.Routers[0]))
		}
	}
	for _, rt := range routes {
		if ones, _ := rt.Dst.Mask.Size(); ones == 0 && c.suppressGateway {
			continue
		}
		r.Routes = append(r.Routes, rt)
	}
	for _, a := range l.DNS {
		r.DNS.Nameservers = append(r.DNS.Nameservers, a.String())
	}
	r.DNS.Domain = l.Domain
	r.DNS.Search = l.Search
	return r
}

func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func route(dst netip.Prefix, gw netip.Addr) *types.Route {
	rt := &types.Route{Dst: ipNet(dst.Masked())}
	if gw.IsValid() && !gw.IsUnspecified() {
		rt.GW = gw.AsSlice() // 0.0.0.0 in option 121 means on-link
	}
	return rt
}

func del(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	_, err = call(ctx, c, &api.Request{Op: api.OpDel, Attachment: attachment(c, args.ContainerID, args.IfName)}, shortWait)
	return err
}

// check verifies that the daemon holds a live lease for the attachment
// and, when the runtime passes prevResult, that it is the address the
// container was given.
func check(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	l, err := call(ctx, c, &api.Request{Op: api.OpCheck, Attachment: attachment(c, args.ContainerID, args.IfName)}, shortWait)
	if err != nil {
		return err
	}
	prev, err := plugin.PrevResult(&c.PluginConf)
	if err != nil || prev == nil {
		return err
	}
	var listed []string
	for _, ip := range prev.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok && a.Unmap() == l.Address.Addr() {
			return nil
		}
		listed = append(listed, ip.Address.String())
	}
	return cnierr.New(cnierr.DHCPDaemon, "the DHCP lease of interface %s is %s, but prevResult lists %v", args.IfName, l.Address, listed)
}

// gc releases the leases of this network whose attachment the runtime no
// longer lists.
func gc(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	valid := make([]api.Attachment, 0, len(c.ValidAttachments))
	for _, v := range c.ValidAttachments {
		valid = append(valid, api.Attachment{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	_, err = call(ctx, c, &api.Request{Op: api.OpGC, Attachment: api.Attachment{Network: c.Name}, Valid: valid}, shortWait)
	return err
}

// status is ready when the daemon answers.
func status(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, shortWait)
	defer cancel()
	resp, err := api.Call(ctx, c.socket, &api.Request{Op: api.OpStatus})
	if err != nil {
		return unreachable(c, err, cnierr.NotAvailable)
	}
	if resp.Error != nil {
		return cnierr.New(cnierr.NotAvailable, "dhcp daemon at %s: %s", c.socket, resp.Error.Msg)
	}
	return nil
}
