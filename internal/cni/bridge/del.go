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

// del releases the address, deletes the veth and removes the rules, each
// found from the attachment's identity alone. Every step runs even when
// another fails; the first failure is reported. The bridge stays: other
// attachments may use it.
//
// Both deletions make the kernel wait for RCU grace periods, and the
// waits serialise unless ordered: the rules go first over a connection
// closed only at the end, so their wait (paid on close) runs during the
// veth's unregistration instead of before it.
func del(ctx context.Context, args *skel.CmdArgs) error {
	n, err := load(args)
	if err != nil {
		return err
	}
	att := attachment(n, args.ContainerID, args.IfName)
	var errs []error
	// Rules go whether or not the config still asks for them: a config
	// changed since ADD must not leak them.
	c, err := masq.Lasting()
	if err != nil {
		errs = append(errs, masq.CodedCleanup("bridge", err))
	}
	if c != nil {
		defer func() { _ = c.CloseLasting() }()
		errs = append(errs, masq.CodedCleanup("bridge", masq.RemoveWith(c, att)), masq.CodedCleanup("bridge", removeSpoofCheckWith(c, att)))
	}
	work := []func() error{func() error { return veth.Remove(n.Name, hostVethName(n, args), args.IfName, args.Netns) }}
	if n.layer3() {
		work = append(work, func() error { return ipamcall.Del(ctx, n.IPAM.Type, args) })
	}
	return steps.First(append(errs, steps.Parallel(work...)...)...)
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
