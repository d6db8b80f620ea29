// Package ipamcall delegates to an IPAM plugin. When the plugin that
// CNI_PATH would execute is this very executable (tripod's multi-call
// binary), the call runs in-process: same config, same arguments, same
// result, minus a fork and exec on every pod start.
package ipamcall

import (
	"context"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/delegate"
	"github.com/tripod-dev/tripod/internal/cni/dhcp"
	"github.com/tripod-dev/tripod/internal/cni/hostlocal"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
	"github.com/tripod-dev/tripod/internal/cni/static"
)

func builtin(ipamType string) (plugin.Plugin, bool) {
	switch ipamType {
	case "host-local":
		return hostlocal.Plugin(), true
	case "static":
		return static.Plugin(), true
	case "dhcp":
		return dhcp.Plugin(), true
	}
	return plugin.Plugin{}, false
}

// inProcess returns the built-in plugin for ipamType when CNI_PATH resolves
// that type to the running executable.
func inProcess(ipamType, cniPath string) (plugin.Plugin, bool) {
	p, ok := builtin(ipamType)
	if !ok {
		return p, false
	}
	found, err := delegate.Find(ipamType, cniPath)
	if err != nil {
		return p, false
	}
	self, err := os.Stat("/proc/self/exe")
	if err != nil {
		return p, false
	}
	other, err := os.Stat(found)
	if err != nil || !os.SameFile(self, other) {
		return p, false
	}
	return p, true
}

func failed(ipamType string, err error) error {
	return cnierr.Wrap(cnierr.Delegate, err, "IPAM plugin %q", ipamType)
}

// Add runs ADD of ipamType with the caller's arguments and config.
func Add(ctx context.Context, ipamType string, args *skel.CmdArgs) (types.Result, error) {
	if p, ok := inProcess(ipamType, args.Path); ok && p.Funcs.Add != nil {
		r, err := p.Funcs.Add(ctx, args)
		if err != nil {
			return nil, failed(ipamType, err)
		}
		return r, nil
	}
	r, err := delegate.Add(ctx, ipamType, args.StdinData)
	if err != nil {
		return nil, failed(ipamType, err)
	}
	return r, nil
}

// verb runs a verb without result, in-process where possible.
func verb(ctx context.Context, ipamType string, args *skel.CmdArgs, pick func(plugin.Funcs) func(context.Context, *skel.CmdArgs) error,
	verbName string,
) error {
	if p, ok := inProcess(ipamType, args.Path); ok {
		if f := pick(p.Funcs); f != nil {
			return failedOrNil(ipamType, f(ctx, args))
		}
		return nil
	}
	return failedOrNil(ipamType, delegate.Run(ctx, verbName, ipamType, args.StdinData))
}

func failedOrNil(ipamType string, err error) error {
	if err == nil {
		return nil
	}
	return failed(ipamType, err)
}

// Del runs DEL of ipamType.
func Del(ctx context.Context, ipamType string, args *skel.CmdArgs) error {
	return verb(ctx, ipamType, args, func(f plugin.Funcs) func(context.Context, *skel.CmdArgs) error { return f.Del }, "DEL")
}

// Check runs CHECK of ipamType.
func Check(ctx context.Context, ipamType string, args *skel.CmdArgs) error {
	return verb(ctx, ipamType, args, func(f plugin.Funcs) func(context.Context, *skel.CmdArgs) error { return f.Check }, "CHECK")
}

// GC runs GC of ipamType.
func GC(ctx context.Context, ipamType string, args *skel.CmdArgs) error {
	return verb(ctx, ipamType, args, func(f plugin.Funcs) func(context.Context, *skel.CmdArgs) error { return f.GC }, "GC")
}

// Status runs STATUS of ipamType.
func Status(ctx context.Context, ipamType string, args *skel.CmdArgs) error {
	return verb(ctx, ipamType, args, func(f plugin.Funcs) func(context.Context, *skel.CmdArgs) error { return f.Status }, "STATUS")
}
