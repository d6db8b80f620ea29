// Package bandwidth is the bandwidth CNI plugin: a chained plugin that
// shapes a container's traffic on the host end of its veth pair with token
// bucket filters. Traffic to the container is shaped by a tbf root qdisc
// on the host veth; traffic from it is redirected from the host veth's
// ingress to an ifb device whose root tbf shapes it.
package bandwidth

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nldump"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
)

// Plugin returns the bandwidth plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "bandwidth", Funcs: plugin.Funcs{Add: add, Del: del, Check: check, GC: gc}}
}

// ethHeader is the link-layer header a token bucket counts with each
// packet: a burst smaller than MTU plus this lets no full-size packet pass.
const ethHeader = 14

// containerVeth returns the index of the container's interface and of its
// veth peer, read inside the container's namespace.
func containerVeth(netns, ifName string) (index, peer int, err error) {
	err = nsutil.Do(netns, func() error {
		l, err := netlink.LinkByName(ifName)
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return cnierr.New(cnierr.InvalidEnv, "interface %s (CNI_IFNAME) does not exist in the container's network namespace", ifName)
		}
		if err != nil {
			return cnierr.New(cnierr.Netlink, "reading interface %s: %v", ifName, err)
		}
		if l.Type() != "veth" {
			return cnierr.New(cnierr.InvalidConfig, "bandwidth shapes the host end of a veth pair, but %s is a %s link", ifName, l.Type())
		}
		index, peer = l.Attrs().Index, l.Attrs().ParentIndex
		return nil
	})
	return index, peer, err
}

// hostVeth finds the host end of the container's veth pair, which must be
// in this namespace and listed (without a sandbox) in prevResult.
func hostVeth(netns, ifName string, prev *current.Result) (netlink.Link, error) {
	index, peer, err := containerVeth(netns, ifName)
	if err != nil {
		return nil, err
	}
	host, err := netlink.LinkByIndex(peer)
	if err != nil || host.Type() != "veth" || host.Attrs().ParentIndex != index {
		return nil, cnierr.New(cnierr.InvalidConfig, "the peer of %s is not in the plugin's network namespace", ifName)
	}
	for _, i := range prev.Interfaces {
		if i.Sandbox == "" && i.Name == host.Attrs().Name {
			return host, nil
		}
	}
	return nil, cnierr.New(cnierr.InvalidConfig, "prevResult does not list %s, the host end of %s, among the host interfaces", host.Attrs().Name, ifName)
}

func add(_ context.Context, args *skel.CmdArgs) (types.Result, error) {
	c, err := parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	lim, err := c.effective()
	if err != nil {
		return nil, err
	}
	prev, err := plugin.RequirePrevResult("bandwidth", &c.PluginConf)
	if err != nil {
		return nil, err
	}
	if !lim.on() {
		return prev, nil
	}
	nl.EnableErrorMessageReporting = true
	host, err := hostVeth(args.Netns, args.IfName, prev)
	if err != nil {
		return nil, err
	}
	hostName, mtu := host.Attrs().Name, host.Attrs().MTU
	for _, l := range []limit{lim.Ingress, lim.Egress} {
		if l.on() && l.Burst/8 < uint64(mtu+ethHeader) {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s %d bits is less than one full-size packet on %s (%d bytes, %d bits)",
				l.field, l.Burst, hostName, mtu+ethHeader, 8*(mtu+ethHeader))
		}
	}

	var undo []func()
	fail := func(err error) (types.Result, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return nil, err
	}
	if lim.Ingress.on() {
		p := tbfFor(lim.Ingress)
		if err := setTbf(host.Attrs().Index, p, hostName); err != nil {
			return fail(err)
		}
		undo = append(undo, func() { _ = netlink.QdiscDel(p.qdisc(host.Attrs().Index)) })
	}
	if lim.Egress.on() {
		name := ifbName(c.Name, args.ContainerID, args.IfName)
		ifb, created, err := ensureIfb(name, ifbAlias(c.Name, args.ContainerID, args.IfName, host.Attrs().Index), mtu)
		if err != nil {
			return fail(err)
		}
		if created {
			undo = append(undo, func() { _ = netlink.LinkDel(ifb) })
		}
		if err := redirect(host, ifb.Attrs().Index); err != nil {
			return fail(err)
		}
		undo = append(undo, func() { _ = unshape(host, ifb.Attrs().Index, false) })
		if err := setTbf(ifb.Attrs().Index, tbfFor(lim.Egress), name); err != nil {
			return fail(err)
		}
		prev.Interfaces = append(prev.Interfaces, &current.Interface{Name: name, Mac: ifb.Attrs().HardwareAddr.String()})
	}
	return prev, nil
}

// ensureIfb creates the attachment's ifb, up and with the host veth's MTU,
// or returns the one a previous ADD of the same attachment created.
func ensureIfb(name, alias string, mtu int) (netlink.Link, bool, error) {
	la := netlink.NewLinkAttrs()
	la.Name, la.MTU, la.Flags = name, mtu, net.FlagUp
	ifb := &netlink.Ifb{LinkAttrs: la}
	err := netlink.LinkAdd(ifb)
	created := err == nil
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, false, tcErr(err, "creating ifb %s", name)
	}
	// The kernel ignores an alias given at creation.
	if created {
		if err := netlink.LinkSetAlias(ifb, alias); err != nil {
			_ = netlink.LinkDel(ifb)
			return nil, false, cnierr.New(cnierr.Netlink, "labelling ifb %s: %v", name, err)
		}
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, false, cnierr.New(cnierr.Netlink, "reading ifb %s: %v", name, err)
	}
	if !created && (l.Type() != "ifb" || l.Attrs().Alias != alias) {
		return nil, false, cnierr.New(cnierr.Netlink, "a %s link named %s already exists and is not this attachment's ifb", l.Type(), name)
	}
	return l, created, nil
}

func del(_ context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	nl.EnableErrorMessageReporting = true
	var ifb netlink.Link
	ifbIndex, aliasHost := 0, 0
	if l, err := netlink.LinkByName(ifbName(c.Name, args.ContainerID, args.IfName)); err == nil && l.Type() == "ifb" {
		ifb, ifbIndex = l, l.Attrs().Index
		_, aliasHost, _ = parseAlias(l.Attrs().Alias)
	}

	// The host veth is found through the container's namespace while it
	// exists; otherwise through the ifb's record of it, trusted only if it
	// still redirects to that ifb (its index may have been reused).
	var host netlink.Link
	rootAlways := false
	if args.Netns != "" {
		if index, peer, err := containerVeth(args.Netns, args.IfName); err == nil {
			if h, err := netlink.LinkByIndex(peer); err == nil && h.Attrs().ParentIndex == index {
				host, rootAlways = h, true
			}
		}
	}
	if host == nil && aliasHost > 0 && ifbIndex > 0 {
		host, _ = netlink.LinkByIndex(aliasHost)
	}
	if host != nil {
		if err := unshape(host, ifbIndex, rootAlways); err != nil {
			return err
		}
	}
	if ifb != nil {
		if err := netlink.LinkDel(ifb); err != nil && !gone(err) {
			return cnierr.New(cnierr.Netlink, "removing ifb %s: %v", ifb.Attrs().Name, err)
		}
	}
	// An ifb the reference plugin left for this container.
	if l, err := netlink.LinkByName(legacyIfbName(c.Name, args.ContainerID)); err == nil && l.Type() == "ifb" && !strings.HasPrefix(l.Attrs().Alias, aliasPrefix) {
		if err := netlink.LinkDel(l); err != nil && !gone(err) {
			return cnierr.New(cnierr.Netlink, "removing ifb %s: %v", l.Attrs().Name, err)
		}
	}
	return nil
}

func check(_ context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	lim, err := c.effective()
	if err != nil {
		return err
	}
	prev, err := plugin.RequirePrevResult("bandwidth", &c.PluginConf)
	if err != nil {
		return err
	}
	if !lim.on() {
		return nil
	}
	host, err := hostVeth(args.Netns, args.IfName, prev)
	if err != nil {
		return err
	}
	hostName := host.Attrs().Name
	if lim.Ingress.on() {
		if err := checkTbf(host, tbfFor(lim.Ingress)); err != nil {
			return err
		}
	}
	if !lim.Egress.on() {
		return nil
	}
	name := ifbName(c.Name, args.ContainerID, args.IfName)
	ifb, err := netlink.LinkByName(name)
	if err != nil || ifb.Type() != "ifb" {
		return cnierr.New(cnierr.InvalidConfig, "ifb %s, which shapes the traffic from %s, is missing", name, args.IfName)
	}
	if ifb.Attrs().Flags&net.FlagUp == 0 {
		return cnierr.New(cnierr.InvalidConfig, "ifb %s is down", name)
	}
	if err := checkTbf(ifb, tbfFor(lim.Egress)); err != nil {
		return err
	}
	filters, err := nldump.Retry(func() ([]netlink.Filter, error) { return netlink.FilterList(host, ingressHandle) })
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return tcErr(err, "listing the ingress filters of %s", hostName)
	}
	if ours, _ := redirectsTo(filters, ifb.Attrs().Index); !ours {
		return cnierr.New(cnierr.InvalidConfig, "the traffic arriving on %s is not redirected to ifb %s", hostName, name)
	}
	return nil
}

func checkTbf(l netlink.Link, want tbfParams) error {
	name := l.Attrs().Name
	qdiscs, err := nldump.Retry(func() ([]netlink.Qdisc, error) { return netlink.QdiscList(l) })
	if err != nil {
		return tcErr(err, "listing the qdiscs of %s", name)
	}
	t := rootTbf(qdiscs)
	if t == nil {
		return cnierr.New(cnierr.InvalidConfig, "%s has no tbf root qdisc", name)
	}
	have := tbfParams{Rate: t.Rate, Buffer: t.Buffer, Limit: t.Limit}
	if have != want {
		return cnierr.New(cnierr.InvalidConfig, "the tbf qdisc of %s has rate %d B/s, buffer %d ticks, limit %d bytes; configured rate %d B/s, buffer %d ticks, limit %d bytes",
			name, have.Rate, have.Buffer, have.Limit, want.Rate, want.Buffer, want.Limit)
	}
	return nil
}

// gc removes the ifbs of this network's attachments that are not listed
// as valid, and their redirects on host veths that still exist.
func gc(_ context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, a := range c.ValidAttachments {
		keep[ifbName(c.Name, a.ContainerID, a.IfName)] = true
	}
	tag := netTag(c.Name)
	links, err := nldump.Retry(func() ([]netlink.Link, error) { return netlink.LinkList() })
	if err != nil {
		return cnierr.New(cnierr.Netlink, "listing links: %v", err)
	}
	var errs []error
	for _, l := range links {
		n, hostIndex, ok := parseAlias(l.Attrs().Alias)
		if l.Type() != "ifb" || !ok || n != tag || keep[l.Attrs().Name] {
			continue
		}
		if hostIndex > 0 {
			if host, err := netlink.LinkByIndex(hostIndex); err == nil {
				if err := unshape(host, l.Attrs().Index, false); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if err := netlink.LinkDel(l); err != nil && !gone(err) {
			errs = append(errs, cnierr.New(cnierr.Netlink, "removing ifb %s: %v", l.Attrs().Name, err))
		}
	}
	if len(errs) > 0 {
		return cnierr.Wrap(cnierr.Netlink, errors.Join(errs...), "GC of network %s", c.Name)
	}
	return nil
}
