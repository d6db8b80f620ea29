package ptp

import (
	"context"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/ipamcall"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/steps"
	"github.com/tripod-dev/tripod/internal/cni/veth"
)

// del releases the address, removes the rules and deletes the veth (its
// addresses and host routes go with it); see veth.Del.
func del(ctx context.Context, args *skel.CmdArgs) error {
	n, err := load(args)
	if err != nil {
		return err
	}
	return veth.Del(ctx, "ptp", n.Name, n.IPAM.Type, args)
}

// gc removes everything of the network's attachments that are not in
// cni.dev/valid-attachments: addresses (through IPAM), rules and veths.
func gc(ctx context.Context, args *skel.CmdArgs) error {
	n, err := load(args)
	if err != nil {
		return err
	}
	errs := []error{ipamcall.GC(ctx, n.IPAM.Type, args)}
	keep, names := veth.Keep(n.Name, n.ValidAttachments)
	errs = append(errs, masq.CodedCleanup("ptp", masq.GC(n.Name, keep)))
	if _, err := veth.GC(n.Name, names); err != nil {
		errs = append(errs, cnierr.New(cnierr.Netlink, "ptp: GC: %v", err))
	}
	return steps.First(errs...)
}

// status reports the IPAM plugin's status.
func status(ctx context.Context, args *skel.CmdArgs) error {
	n, err := load(args)
	if err != nil {
		return err
	}
	return ipamcall.Status(ctx, n.IPAM.Type, args)
}
