package veth

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/ipamcall"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/cni/steps"
)

// The verb steps the bridge and ptp plugins (named plugin in messages)
// share.

// IPAM runs the IPAM plugin's ADD, pushes its release onto u (run even
// when ctx is cancelled), and returns a result that has an address.
func IPAM(ctx context.Context, plugin, ipamType string, args *skel.CmdArgs, u *steps.Undo) (*current.Result, error) {
	r, err := ipamcall.Add(ctx, ipamType, args)
	if err != nil {
		return nil, err
	}
	u.Push(func() { _ = ipamcall.Del(context.WithoutCancel(ctx), ipamType, args) })
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, cnierr.New(cnierr.Delegate, "%s: IPAM plugin %q gave an unusable result: %v", plugin, ipamType, err)
	}
	if len(res.IPs) == 0 {
		return nil, cnierr.New(cnierr.Delegate, "%s: IPAM plugin %q returned no IP address", plugin, ipamType)
	}
	return res, nil
}

// CreateError gives a failed Create of hostName / args.IfName its code.
func CreateError(plugin string, args *skel.CmdArgs, hostName string, err error) error {
	if !errors.Is(err, syscall.EEXIST) {
		return cnierr.New(cnierr.Netlink, "%s: creating veth %s (host) / %s (container): %v", plugin, hostName, args.IfName, err)
	}
	if _, err := netlink.LinkByName(hostName); err == nil {
		return cnierr.New(cnierr.AlreadyAttached, "%s: container %s interface %s is already attached (host veth %s exists); DEL it first", plugin, args.ContainerID, args.IfName, hostName)
	}
	return cnierr.New(cnierr.AlreadyAttached, "%s: interface %s already exists in network namespace %s", plugin, args.IfName, args.Netns)
}

// ResultMTU is the MTU a result reports for a pair created with mtu.
func ResultMTU(mtu int) int {
	if mtu == 0 {
		return 1500 // the kernel's default for a new veth
	}
	return mtu
}

// PrevResult parses the config's prevResult, which CHECK needs.
func PrevResult(plugin string, c *types.PluginConf) (*current.Result, error) {
	if err := version.ParsePrevResult(c); err != nil {
		return nil, cnierr.New(cnierr.DecodingFailure, "%s: prevResult: %v", plugin, err)
	}
	if c.PrevResult == nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "%s: CHECK needs prevResult", plugin)
	}
	prev, err := current.NewResultFromResult(c.PrevResult)
	if err != nil {
		return nil, cnierr.New(cnierr.DecodingFailure, "%s: prevResult: %v", plugin, err)
	}
	return prev, nil
}

// Ends finds in prev the container interface ifName and the first host
// interface not named skip (the bridge); skip "" skips none.
func Ends(plugin string, prev *current.Result, ifName, skip string) (contIdx, hostIdx int, err error) {
	contIdx, hostIdx = -1, -1
	for i, iface := range prev.Interfaces {
		switch {
		case iface.Sandbox != "" && iface.Name == ifName:
			contIdx = i
		case iface.Sandbox == "" && (skip == "" || iface.Name != skip) && hostIdx < 0:
			hostIdx = i
		}
	}
	if contIdx < 0 || hostIdx < 0 {
		return 0, 0, cnierr.New(cnierr.InvalidConfig, "%s: prevResult lists no container interface %s and host veth", plugin, ifName)
	}
	return contIdx, hostIdx, nil
}

// SameMAC checks link name's address have against want (if any).
func SameMAC(plugin, name, want string, have net.HardwareAddr) error {
	if want != "" && !strings.EqualFold(want, have.String()) {
		return cnierr.New(cnierr.InvalidConfig, "%s: %s has MAC %s, prevResult says %s", plugin, name, have, want)
	}
	return nil
}

// CheckPeer verifies, in the container's namespace, that ifName is the
// peer of the host veth host (index hostIndex) with the MAC cont
// reports, and returns it.
func CheckPeer(plugin, ifName string, cont, host *current.Interface, hostIndex int) (netlink.Link, error) {
	cl, err := netlink.LinkByName(ifName)
	if err != nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "%s: interface %s is missing: %v", plugin, ifName, err)
	}
	if cl.Type() != "veth" || cl.Attrs().ParentIndex != hostIndex {
		return nil, cnierr.New(cnierr.InvalidConfig, "%s: interface %s is not the peer of host veth %s", plugin, ifName, host.Name)
	}
	if err := SameMAC(plugin, ifName, cont.Mac, cl.Attrs().HardwareAddr); err != nil {
		return nil, err
	}
	return cl, nil
}

// Keep lists, for GC, the attachments of network that valid names, and
// the names of their host ends.
func Keep(network string, valid []types.GCAttachment) ([]nftown.Attachment, map[string]bool) {
	names := map[string]bool{}
	for _, v := range valid {
		names[HostName(network, v.ContainerID, v.IfName)] = true
	}
	return nftown.Keep(network, valid), names
}

// Del removes an attachment on network: its masquerade rules and what
// more removes over the same nftables connection, its veth pair, and its
// IPAM reservation when ipamType is set; each found from the attachment's
// identity alone. Every step runs even when another fails; the first
// failure is reported.
//
// Deleting rules and links both make the kernel wait for RCU grace
// periods, and the waits serialise unless ordered: the rules go first
// over a connection closed only at the end, so their wait (paid on close)
// runs during the veth's unregistration instead of before it.
func Del(ctx context.Context, plugin, network, ipamType string, args *skel.CmdArgs, more ...func(*nftables.Conn, nftown.Attachment) error) error {
	att := nftown.Attachment{Network: network, ContainerID: args.ContainerID, IfName: args.IfName}
	var errs []error
	// Rules go whether or not the config still asks for them: a config
	// changed since ADD must not leak them.
	c, err := masq.Lasting()
	if err != nil {
		errs = append(errs, masq.CodedCleanup(plugin, err))
	}
	if c != nil {
		defer func() { _ = c.CloseLasting() }()
		errs = append(errs, masq.CodedCleanup(plugin, masq.RemoveWith(c, att)))
		for _, rm := range more {
			errs = append(errs, masq.CodedCleanup(plugin, rm(c, att)))
		}
	}
	work := []func() error{func() error {
		return Remove(network, HostName(network, args.ContainerID, args.IfName), args.IfName, args.Netns)
	}}
	if ipamType != "" {
		work = append(work, func() error { return ipamcall.Del(ctx, ipamType, args) })
	}
	return steps.First(append(errs, steps.Parallel(work...)...)...)
}
