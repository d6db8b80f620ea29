package bridge

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nldump"
	"github.com/tripod-dev/tripod/internal/cni/veth"
)

// bridgeInfo is what ADD needs to know of the bridge.
type bridgeInfo struct {
	index int
	name  string
	mac   net.HardwareAddr
}

func notFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, syscall.ENODEV)
}

// netlinkErr codes a failed netlink request: 102 when the kernel lacks
// the feature (VLAN filtering and 802.1Q are optional), 103 otherwise.
func netlinkErr(err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if errors.Is(err, syscall.EOPNOTSUPP) {
		return cnierr.New(cnierr.KernelUnsupported, "%s: the kernel does not support it (%v)", msg, err)
	}
	return cnierr.New(cnierr.Netlink, "%s: %v", msg, err)
}

// ensureBridge finds or creates the bridge and gives it what the config
// asks for: up, promiscuous, VLAN filtering.
func ensureBridge(n *netConf) (*bridgeInfo, error) {
	l, err := netlink.LinkByName(n.BrName)
	if err != nil {
		if !notFound(err) {
			return nil, netlinkErr(err, "bridge: looking up bridge %s", n.BrName)
		}
		info, err := createBridge(n)
		if err == nil || !errors.Is(err, syscall.EEXIST) {
			return info, err
		}
		// Another ADD created it meanwhile.
		if l, err = netlink.LinkByName(n.BrName); err != nil {
			return nil, netlinkErr(err, "bridge: looking up bridge %s", n.BrName)
		}
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, cnierr.New(cnierr.InvalidConfig, "bridge: %s exists and is a %s link, not a bridge", n.BrName, l.Type())
	}
	a := br.Attrs()
	if a.Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(br); err != nil {
			return nil, netlinkErr(err, "bridge: bringing %s up", n.BrName)
		}
	}
	if n.PromiscMode && a.Promisc == 0 {
		if err := netlink.SetPromiscOn(br); err != nil {
			return nil, netlinkErr(err, "bridge: making %s promiscuous", n.BrName)
		}
	}
	if n.vlanFiltering() && (br.VlanFiltering == nil || !*br.VlanFiltering) {
		if err := netlink.BridgeSetVlanFiltering(br, true); err != nil {
			return nil, netlinkErr(err, "bridge: enabling VLAN filtering on %s", n.BrName)
		}
	}
	return &bridgeInfo{index: a.Index, name: a.Name, mac: a.HardwareAddr}, nil
}

// createBridge makes the bridge. Its MAC is set explicitly so that it
// stays put as ports come and go (an unset bridge MAC follows the lowest
// port MAC, which would change the gateway's MAC under running pods).
func createBridge(n *netConf) (*bridgeInfo, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = n.BrName
	attrs.MTU = n.MTU
	attrs.Flags = net.FlagUp
	attrs.HardwareAddr = veth.RandomMAC()
	br := &netlink.Bridge{LinkAttrs: attrs}
	if n.vlanFiltering() {
		on := true
		br.VlanFiltering = &on
	}
	if err := netlink.LinkAdd(br); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return nil, err
		}
		if n.vlanFiltering() {
			return nil, netlinkErr(err, "bridge: creating bridge %s with VLAN filtering", n.BrName)
		}
		return nil, netlinkErr(err, "bridge: creating bridge %s", n.BrName)
	}
	if n.PromiscMode {
		if err := netlink.SetPromiscOn(br); err != nil {
			return nil, netlinkErr(err, "bridge: making %s promiscuous", n.BrName)
		}
	}
	// The plugin owns the bridge's IPv6 routes; router advertisements
	// must not add others.
	_ = os.WriteFile(fmt.Sprintf("/proc/sys/net/ipv6/conf/%s/accept_ra", n.BrName), []byte("0"), 0o644)
	return &bridgeInfo{index: br.Attrs().Index, name: n.BrName, mac: attrs.HardwareAddr}, nil
}

// setPortVlans makes the host end of a veth an access port of n.Vlan or a
// trunk of n.trunk, dropping the default VLAN unless it is preserved.
func setPortVlans(n *netConf, index int) error {
	port := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: index}}
	if n.Vlan != 0 {
		if err := netlink.BridgeVlanAdd(port, uint16(n.Vlan), true, true, false, true); err != nil {
			return netlinkErr(err, "bridge: adding VLAN %d to port", n.Vlan)
		}
	}
	for _, r := range n.trunk {
		var err error
		if r.min == r.max {
			err = netlink.BridgeVlanAdd(port, uint16(r.min), false, false, false, true)
		} else {
			err = netlink.BridgeVlanAddRange(port, uint16(r.min), uint16(r.max), false, false, false, true)
		}
		if err != nil {
			return netlinkErr(err, "bridge: adding trunk VLANs %d-%d to port", r.min, r.max)
		}
	}
	if !n.preserveDefaultVlan() && !n.trunkHas(1) && n.Vlan != 1 {
		if err := netlink.BridgeVlanDel(port, 1, false, false, false, true); err != nil && !errors.Is(err, syscall.ENOENT) {
			return netlinkErr(err, "bridge: removing the default VLAN from port")
		}
	}
	return nil
}

func (n *netConf) trunkHas(vid int) bool {
	for _, r := range n.trunk {
		if r.min <= vid && vid <= r.max {
			return true
		}
	}
	return false
}

// vlanGateway returns the interface that holds the gateway addresses of
// VLAN vid: a VLAN device on the bridge, the bridge itself being made a
// tagged member of vid.
func vlanGateway(br *bridgeInfo, vid int) (netlink.Link, error) {
	name := fmt.Sprintf("%s.%d", br.name, vid)
	if l, err := netlink.LinkByName(name); err == nil {
		if v, ok := l.(*netlink.Vlan); !ok || v.VlanId != vid || v.ParentIndex != br.index {
			return nil, cnierr.New(cnierr.InvalidConfig, "bridge: %s exists and is not VLAN %d of %s", name, vid, br.name)
		}
		return l, nil
	} else if !notFound(err) {
		return nil, netlinkErr(err, "bridge: looking up %s", name)
	}
	brLink := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Index: br.index, Name: br.name}}
	if err := netlink.BridgeVlanAdd(brLink, uint16(vid), false, false, true, false); err != nil {
		return nil, netlinkErr(err, "bridge: adding VLAN %d to %s itself", vid, br.name)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.ParentIndex = br.index
	attrs.Flags = net.FlagUp
	v := &netlink.Vlan{LinkAttrs: attrs, VlanId: vid}
	if err := netlink.LinkAdd(v); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return netlink.LinkByName(name)
		}
		return nil, netlinkErr(err, "bridge: creating %s", name)
	}
	return v, nil
}

// ensureGateways gives link the gateway addresses gws. Another IPv4
// address, or an IPv6 address whose subnet overlaps a gateway's, is a
// conflict: replaced with forceAddress, an error without.
func ensureGateways(link netlink.Link, gws []net.IPNet, force bool) error {
	name := link.Attrs().Name
	have, err := nldump.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return netlinkErr(err, "bridge: listing addresses of %s", name)
	}
	isGW := func(a netlink.Addr) bool {
		for _, gw := range gws {
			if a.IP.Equal(gw.IP) && a.Mask.String() == gw.Mask.String() {
				return true
			}
		}
		return false
	}
	for _, a := range have {
		if isGW(a) || a.IP.IsLinkLocalUnicast() {
			continue
		}
		for _, gw := range gws {
			v4 := gw.IP.To4() != nil
			if (a.IP.To4() != nil) != v4 {
				continue
			}
			if !v4 && !a.Contains(gw.IP) && !gw.Contains(a.IP) {
				continue
			}
			if !force {
				return cnierr.New(cnierr.InvalidConfig, "bridge: %s already has address %s, not gateway %s (set \"forceAddress\" to replace it)", name, a.IPNet, gw.String())
			}
			if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
				return netlinkErr(err, "bridge: removing address %s from %s", a.IPNet, name)
			}
			break
		}
	}
	for _, gw := range gws {
		present := false
		for _, a := range have {
			if a.IP.Equal(gw.IP) && a.Mask.String() == gw.Mask.String() {
				present = true
			}
		}
		if present {
			continue
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: gw.IP, Mask: gw.Mask}}
		if gw.IP.To4() == nil {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
			return netlinkErr(err, "bridge: adding gateway address %s to %s", gw.String(), name)
		}
	}
	return nil
}
