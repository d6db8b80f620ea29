package bridge

import (
	"context"
	"errors"
	"sync"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/ipamcall"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
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
		errs = append(errs, nftErr(err))
	}
	if c != nil {
		defer func() { _ = c.CloseLasting() }()
		errs = append(errs, nftErr(masq.RemoveWith(c, att)), nftErr(removeSpoofCheckWith(c, att)))
	}
	steps := []func() error{func() error { return removeVeth(args) }}
	if n.layer3() {
		steps = append(steps, func() error { return ipamcall.Del(ctx, n.IPAM.Type, args) })
	}
	return first(append(errs, parallel(steps...)...))
}

// parallel runs fns concurrently and returns their errors in order.
func parallel(fns ...func() error) []error {
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, f := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f()
		}()
	}
	wg.Wait()
	return errs
}

// nftErr codes an nftables failure: 102 when the kernel has no nftables.
func nftErr(err error) error {
	switch {
	case err == nil:
		return nil
	case masq.Unsupported(err):
		return cnierr.New(cnierr.KernelUnsupported, "bridge: %v: the kernel has no nftables (CONFIG_NF_TABLES)", err)
	}
	return cnierr.New(cnierr.Netlink, "bridge: %v", err)
}

// gcErr is nftErr for GC, where a kernel without nftables has no rules
// to collect.
func gcErr(err error) error {
	if masq.Unsupported(err) {
		return nil
	}
	return nftErr(err)
}

func first(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// removeVeth deletes the attachment's veth pair by its host end's name,
// which works with the namespace gone. Failing that, a veth called IfName
// in the namespace goes: one made by another implementation of the
// plugin, whose host end has another name.
func removeVeth(args *skel.CmdArgs) error {
	hostName := hostVethName(args)
	found, err := veth.Delete(hostName)
	if err != nil {
		return cnierr.New(cnierr.Netlink, "bridge: %v", err)
	}
	if found || args.Netns == "" {
		return nil
	}
	err = nsutil.Do(args.Netns, func() error {
		l, err := netlink.LinkByName(args.IfName)
		if err != nil {
			if notFound(err) {
				return nil
			}
			return cnierr.New(cnierr.Netlink, "bridge: looking up %s: %v", args.IfName, err)
		}
		if l.Type() != "veth" {
			return nil
		}
		if err := netlink.LinkDel(l); err != nil && !notFound(err) {
			return cnierr.New(cnierr.Netlink, "bridge: deleting %s: %v", args.IfName, err)
		}
		return nil
	})
	if errors.Is(err, nsutil.ErrGone) {
		return nil
	}
	return err
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
	keep := make([]nftown.Attachment, 0, len(n.ValidAttachments))
	names := map[string]bool{}
	for _, v := range n.ValidAttachments {
		keep = append(keep, attachment(n, v.ContainerID, v.IfName))
		names[veth.HostName(v.ContainerID, v.IfName)] = true
	}
	errs = append(errs, gcErr(masq.GC(n.Name, keep)), gcErr(SpoofTable().GC(n.Name, keep)))
	if _, err := veth.GC(n.Name, names); err != nil {
		errs = append(errs, cnierr.New(cnierr.Netlink, "bridge: GC: %v", err))
	}
	return first(errs)
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
