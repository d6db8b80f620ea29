// Package loopback is the loopback CNI plugin: it brings up lo in the
// container's network namespace.
package loopback

import (
	"context"
	"errors"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nldump"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
)

// Plugin returns the loopback plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "loopback", Funcs: plugin.Funcs{Add: add, Del: del, Check: check}}
}

type conf struct {
	types.PluginConf
}

func parse(stdin []byte) (*conf, error) {
	c := &conf{}
	if err := cnierr.Decode(stdin, c); err != nil {
		return nil, err
	}
	return c, nil
}

func add(_ context.Context, args *skel.CmdArgs) (types.Result, error) {
	c, err := parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	var addrs []netlink.Addr
	err = nsutil.Do(args.Netns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return cnierr.New(cnierr.Netlink, "finding lo: %v", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return cnierr.New(cnierr.Netlink, "bringing lo up: %v", err)
		}
		addrs, err = nldump.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(lo, netlink.FAMILY_ALL) })
		if err != nil {
			return cnierr.New(cnierr.Netlink, "listing addresses of lo: %v", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	r := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	if c.PrevResult != nil {
		// A chained loopback passes the previous result on untouched.
		prev, err := current.NewResultFromResult(c.PrevResult)
		if err != nil {
			return nil, cnierr.New(cnierr.DecodingFailure, "prevResult: %v", err)
		}
		return prev, nil
	}
	r.Interfaces = []*current.Interface{{Name: "lo", Mac: "00:00:00:00:00:00", Sandbox: args.Netns}}
	zero := 0
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		r.IPs = append(r.IPs, &current.IPConfig{Interface: &zero, Address: net.IPNet{IP: a.IP, Mask: a.Mask}})
	}
	return r, nil
}

func del(_ context.Context, args *skel.CmdArgs) error {
	if _, err := parse(args.StdinData); err != nil {
		return err
	}
	if args.Netns == "" {
		return nil
	}
	err := nsutil.Do(args.Netns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return nil
		}
		if err := netlink.LinkSetDown(lo); err != nil {
			return cnierr.New(cnierr.Netlink, "bringing lo down: %v", err)
		}
		return nil
	})
	if errors.Is(err, nsutil.ErrGone) {
		return nil
	}
	return err
}

func check(_ context.Context, args *skel.CmdArgs) error {
	if _, err := parse(args.StdinData); err != nil {
		return err
	}
	return nsutil.Do(args.Netns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return cnierr.New(cnierr.Netlink, "finding lo: %v", err)
		}
		if lo.Attrs().Flags&net.FlagUp == 0 {
			return cnierr.New(cnierr.InvalidConfig, "lo is down")
		}
		return nil
	})
}
