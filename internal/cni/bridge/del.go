package bridge

import (
	"context"
	"errors"

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
// an earlier one failed; the first failure is reported. The bridge stays:
// other attachments may use it.
func del(ctx context.Context, args *skel.CmdArgs) error {
	n, err := load(args)
	if err != nil {
		return err
	}
	att := attachment(n, args.ContainerID, args.IfName)
	var errs []error
	if n.layer3() {
		errs = append(errs, ipamcall.Del(ctx, n.IPAM.Type, args))
	}
	errs = append(errs, removeVeth(args))
	// Rules go whether or not the config still asks for them: a config
	// changed since ADD must not leak them.
	if err := masq.Remove(att); err != nil {
		errs = append(errs, cnierr.New(cnierr.Netlink, "bridge: %v", err))
	}
	if err := removeSpoofCheck(att); err != nil {
		errs = append(errs, cnierr.New(cnierr.Netlink, "bridge: %v", err))
	}
	return first(errs)
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
	if err := masq.GC(n.Name, keep); err != nil {
		errs = append(errs, cnierr.New(cnierr.Netlink, "bridge: GC: %v", err))
	}
	if err := SpoofTable().GC(n.Name, keep); err != nil {
		errs = append(errs, cnierr.New(cnierr.Netlink, "bridge: GC: macspoofchk rules: %v", err))
	}
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
