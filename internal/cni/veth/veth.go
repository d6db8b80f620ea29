// Package veth creates and removes the veth pairs of tripod's bridge and
// ptp plugins. The host end's name is derived from the attachment's
// identity (network, container ID, interface name) alone, so DEL and GC
// find it with no state file and with the container's namespace already
// gone; its alias records the network it belongs to.
package veth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nldump"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
)

// prefix starts every host-side name; the rest is 11 hex digits, filling
// IFNAMSIZ exactly.
const prefix = "veth"

// aliasPrefix starts the alias of every host end tripod creates.
const aliasPrefix = "tripod-cni:"

// HostName is the host-side name of the veth of an attachment. The
// network is part of it so that DEL on one network can never take the
// veth of another that the same container interface name is on.
func HostName(network, containerID, ifName string) string {
	h := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifName))
	return prefix + hex.EncodeToString(h[:])[:11]
}

// Alias is the alias tripod gives the host end of a veth on network.
func Alias(network string) string { return aliasPrefix + network }

// RandomMAC returns a random locally administered unicast address. Picking
// it here rather than letting the kernel do so saves reading it back.
func RandomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	_, _ = rand.Read(m)
	m[0] = m[0]&^0x01 | 0x02
	return m
}

// Pair describes a veth pair to create from the host namespace.
type Pair struct {
	HostName string
	HostMAC  net.HardwareAddr
	PeerName string
	PeerMAC  net.HardwareAddr
	// PeerNetns is an open file descriptor of the namespace the peer is
	// created in.
	PeerNetns int
	// MTU of both ends; 0 leaves the kernel default.
	MTU int
	// MasterIndex enslaves the host end (to a bridge) as it is created.
	MasterIndex int
}

// Create makes the pair in a single netlink request: both ends named, the
// host end up, addressed and enslaved, the peer created directly in its
// namespace (still down). It returns the host end's index, taken from the
// kernel's echo of the request, and the kernel's error unchanged (EEXIST
// when either name is taken) so that the caller can tell the cases apart.
// Setting the alias and the bridge port flags takes a second request.
func Create(p Pair) (int, error) {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK|unix.NLM_F_ECHO)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Change = unix.IFF_UP
	msg.Flags = unix.IFF_UP
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(p.HostName)))
	if p.HostMAC != nil {
		req.AddData(nl.NewRtAttr(unix.IFLA_ADDRESS, p.HostMAC))
	}
	if p.MTU > 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(p.MTU))))
	}
	if p.MasterIndex != 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(p.MasterIndex))))
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	peer := data.AddRtAttr(nl.VETH_INFO_PEER, nil)
	// The peer cannot be brought up here: the kernel opens it before
	// the pair is linked and fails with ENOTCONN.
	nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	peer.AddRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(p.PeerName))
	if p.PeerMAC != nil {
		peer.AddRtAttr(unix.IFLA_ADDRESS, p.PeerMAC)
	}
	if p.MTU > 0 {
		peer.AddRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(p.MTU)))
	}
	peer.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(p.PeerNetns)))
	req.AddData(info)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return 0, err
	}
	index := echoedIndex(msgs, p.HostName)
	if index == 0 {
		// A kernel that does not echo: ask.
		l, err := netlink.LinkByName(p.HostName)
		if err != nil {
			_, _ = Delete(p.HostName)
			return 0, fmt.Errorf("finding the new link %s: %w", p.HostName, err)
		}
		index = l.Attrs().Index
	}
	return index, nil
}

// echoedIndex finds the index of the link called name in RTM_NEWLINK
// messages.
func echoedIndex(msgs [][]byte, name string) int {
	for _, m := range msgs {
		if len(m) < unix.SizeofIfInfomsg {
			continue
		}
		ifi := nl.DeserializeIfInfomsg(m)
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfInfomsg:])
		if err != nil {
			continue
		}
		for _, a := range attrs {
			if a.Attr.Type == unix.IFLA_IFNAME && unix.ByteSliceToString(a.Value) == name {
				return int(ifi.Index)
			}
		}
	}
	return 0
}

// Port is what Finish sets on a host end after creating it.
type Port struct {
	// Alias marks the link (see Alias); the kernel ignores an alias given
	// at creation.
	Alias string
	// Hairpin and Isolated are bridge port flags; they need a bridge
	// master.
	Hairpin  bool
	Isolated bool
}

// Finish applies p to the link with index in one request.
func Finish(index int, p Port) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	if p.Alias != "" {
		req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(p.Alias)))
	}
	if p.Hairpin || p.Isolated {
		info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
		info.AddRtAttr(nl.IFLA_INFO_SLAVE_KIND, nl.NonZeroTerminated("bridge"))
		data := info.AddRtAttr(nl.IFLA_INFO_SLAVE_DATA, nil)
		if p.Hairpin {
			data.AddRtAttr(nl.IFLA_BRPORT_MODE, []byte{1})
		}
		if p.Isolated {
			data.AddRtAttr(nl.IFLA_BRPORT_ISOLATED, []byte{1})
		}
		req.AddData(info)
	}
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("setting alias and port flags of link %d: %w", index, err)
	}
	return nil
}

// Delete removes the link called name from the current namespace (with a
// veth, its peer goes too) in one request. It reports whether there was
// one.
func Delete(name string) (bool, error) {
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		if errors.Is(err, syscall.ENODEV) {
			return false, nil
		}
		return false, fmt.Errorf("deleting link %s: %w", name, err)
	}
	return true, nil
}

// Owned lists the host ends tripod created for network in the current
// namespace.
func Owned(network string) ([]netlink.Link, error) {
	links, err := nldump.Retry(func() ([]netlink.Link, error) { return netlink.LinkList() })
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	want := Alias(network)
	var out []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if l.Type() == "veth" && a.Alias == want && strings.HasPrefix(a.Name, prefix) {
			out = append(out, l)
		}
	}
	return out, nil
}

// GC deletes the host ends of network whose attachment is not in keep,
// given as host-side names (HostName). It returns the names it deleted.
func GC(network string, keep map[string]bool) ([]string, error) {
	links, err := Owned(network)
	if err != nil {
		return nil, err
	}
	var gone []string
	for _, l := range links {
		name := l.Attrs().Name
		if keep[name] {
			continue
		}
		if _, err := Delete(name); err != nil {
			return gone, err
		}
		gone = append(gone, name)
	}
	return gone, nil
}

// SetUp brings the link called name in the current namespace up, in one
// request.
func SetUp(name string) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Change = unix.IFF_UP
	msg.Flags = unix.IFF_UP
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("bringing %s up: %w", name, err)
	}
	return nil
}

// Remove deletes the veth pair of an attachment on network: by its host
// end's name (HostName), which works with the container's namespace gone,
// or failing that by the veth called ifName in the namespace at netnsPath,
// which is how a pair made by another implementation of the plugin, with
// another host name, is found. A veth whose host end tripod made for
// another network is left alone. Nothing to delete is success. Errors
// carry a CNI code.
func Remove(network, hostName, ifName, netnsPath string) error {
	found, err := Delete(hostName)
	if err != nil {
		return cnierr.New(cnierr.Netlink, "%v", err)
	}
	if found || netnsPath == "" {
		return nil
	}
	ns, err := nsutil.Open(netnsPath)
	if errors.Is(err, nsutil.ErrGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer ns.Close()
	peer := -1 // the index of the host end of the namespace's ifName
	err = nsutil.DoFile(ns, func() error {
		l, err := netlink.LinkByName(ifName)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil
			}
			return cnierr.New(cnierr.Netlink, "looking up %s in %s: %v", ifName, netnsPath, err)
		}
		if l.Type() == "veth" {
			peer = l.Attrs().ParentIndex
		}
		return nil
	})
	if err != nil || peer < 0 {
		return err
	}
	if l, err := netlink.LinkByIndex(peer); err == nil {
		if a := l.Attrs().Alias; strings.HasPrefix(a, aliasPrefix) && a != Alias(network) {
			return nil
		}
	}
	return nsutil.DoFile(ns, func() error {
		if _, err := Delete(ifName); err != nil {
			return cnierr.New(cnierr.Netlink, "%v", err)
		}
		return nil
	})
}
