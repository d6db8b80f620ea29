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
// addresses and host routes go with it), each found from the attachment's
// identity alone. Every step runs even when another fails; the first
// failure is reported. The rules go first over a connection closed at the
// end, so that the kernel's wait for them overlaps the veth's removal (see
// bridge).
func del(ctx context.Context, args *skel.CmdArgs) error {
	n, err := load(args)
	if err != nil {
		return err
	}
	var errs []error
	c, err := masq.Lasting()
	if err != nil {
		errs = append(errs, masq.CodedCleanup("ptp", err))
	}
	if c != nil {
		defer func() { _ = c.CloseLasting() }()
		errs = append(errs, masq.CodedCleanup("ptp", masq.RemoveWith(c, attachment(n, args.ContainerID, args.IfName))))
	}
	errs = append(errs, steps.Parallel(
		func() error { return veth.Remove(n.Name, hostVethName(n, args), args.IfName, args.Netns) },
		func() error { return ipamcall.Del(ctx, n.IPAM.Type, args) },
	)...)
	return steps.First(errs...)
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
