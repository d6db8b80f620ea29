package bridge

import (
	"context"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/ipamcall"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/steps"
	"github.com/tripod-dev/tripod/internal/cni/veth"
)

// del releases the address, deletes the veth and removes the rules (see
// veth.Del). The bridge stays: other attachments may use it.
func del(ctx context.Context, args *skel.CmdArgs) error {
	n, err := load(args)
	if err != nil {
		return err
	}
	ipamType := ""
	if n.layer3() {
		ipamType = n.IPAM.Type
	}
	return veth.Del(ctx, "bridge", n.Name, ipamType, args, removeSpoofCheckWith)
}

// gc removes everything of the network's attachments that are not in
// cni.dev/valid-attachments: addresses (through IPAM), rules and veths.
func gc(ctx context.Context, args *skel.CmdArgs) error {
	n, err := load(args)
	if err != nil {
		return err
	}
	var errs []error
	if n.layer3() {
		errs = append(errs, ipamcall.GC(ctx, n.IPAM.Type, args))
	}
	keep, names := veth.Keep(n.Name, n.ValidAttachments)
	errs = append(errs, masq.CodedCleanup("bridge", masq.GC(n.Name, keep)), masq.CodedCleanup("bridge", SpoofTable().GC(n.Name, keep)))
	if _, err := veth.GC(n.Name, names); err != nil {
		errs = append(errs, cnierr.New(cnierr.Netlink, "bridge: GC: %v", err))
	}
	return steps.First(errs...)
}

// status reports the IPAM plugin's status; the bridge itself is made on
// demand and needs nothing in advance.
func status(ctx context.Context, args *skel.CmdArgs) error {
	n, err := load(args)
	if err != nil {
		return err
	}
	if n.layer3() {
		return ipamcall.Status(ctx, n.IPAM.Type, args)
	}
	return nil
}
