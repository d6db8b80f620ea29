// Package masq masquerades traffic leaving a pod network (the ipMasq
// option of bridge and ptp) with rules in a tripod-owned nftables table.
//
// Each attachment gets a chain per address family behind a jump that
// matches its source address; since the chains are named after the
// attachment (see nftown), DEL removes them without knowing the address,
// so nothing leaks when the namespace or the address is already gone.
package masq

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
)

// TableName is the inet table holding the masquerade rules.
const TableName = "tripod_nat"

// Base chains: one per family, so that each attachment's jump can match
// its single source address of that family.
const (
	chain4 = "masq4"
	chain6 = "masq6"
)

// Table is the table masquerade rules live in.
func Table() nftown.Table {
	return nftown.Table{
		Name:   TableName,
		Family: nftables.TableFamilyINet,
		Chains: []nftown.BaseChain{
			{Name: chain4, Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource},
			{Name: chain6, Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource},
		},
	}
}

// Multicast ranges are never masqueraded.
var (
	mcast4 = net.IPNet{IP: net.IPv4(224, 0, 0, 0).To4(), Mask: net.CIDRMask(4, 32)}
	mcast6 = net.IPNet{IP: net.ParseIP("ff00::"), Mask: net.CIDRMask(8, 128)}
)

// Set installs the masquerade rules of an attachment whose addresses are
// ips: traffic from each address to anything outside its own subnet (and
// not multicast) leaves with the host's address. It replaces any rules
// the attachment had.
func Set(att nftown.Attachment, ips []*current.IPConfig) error {
	byFamily := map[string][]*current.IPConfig{}
	for _, ip := range ips {
		if ip.Address.IP.To4() != nil {
			byFamily[chain4] = append(byFamily[chain4], ip)
		} else {
			byFamily[chain6] = append(byFamily[chain6], ip)
		}
	}
	jumps := map[string]nftown.Jump{}
	for chain, list := range byFamily {
		v4 := chain == chain4
		j := nftown.Jump{Match: family(v4)}
		if len(list) == 1 {
			// The common case: the jump itself selects the pod's packets.
			j.Match = append(j.Match, addrMatch(v4, true, hostNet(list[0].Address.IP), expr.CmpOpEq)...)
		}
		for _, ip := range list {
			subnet := net.IPNet{IP: ip.Address.IP.Mask(ip.Address.Mask), Mask: ip.Address.Mask}
			mcast := mcast4
			if !v4 {
				mcast = mcast6
			}
			var r []expr.Any
			r = append(r, addrMatch(v4, true, hostNet(ip.Address.IP), expr.CmpOpEq)...)
			r = append(r, addrMatch(v4, false, subnet, expr.CmpOpNeq)...)
			r = append(r, addrMatch(v4, false, mcast, expr.CmpOpNeq)...)
			r = append(r, &expr.Masq{})
			j.Rules = append(j.Rules, r)
		}
		jumps[chain] = j
	}
	if len(jumps) == 0 {
		return nil
	}
	if err := Table().Set(att, jumps); err != nil {
		return fmt.Errorf("masquerade rules: %w", err)
	}
	return nil
}

// Remove deletes the attachment's masquerade rules; nothing to delete is
// not an error.
func Remove(att nftown.Attachment) error {
	if err := Table().Remove(att); err != nil {
		return fmt.Errorf("masquerade rules: %w", err)
	}
	return nil
}

// Lasting opens a lasting nftables connection for RemoveWith, which the
// caller closes once its other slow work (deleting a veth) is done, so
// that the kernel's wait for the deleted rules overlaps it. It returns
// nil and no error when the kernel has no nftables at all: then there are
// no rules to remove.
func Lasting() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.AsLasting())
	if Unsupported(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// Unsupported reports whether err came from a kernel without nftables:
// without nfnetlink the socket cannot be opened, and without nf_tables
// behind it even listing tables fails. Only the failure paths ask, so the
// probe costs nothing when all is well.
func Unsupported(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.EPROTONOSUPPORT) {
		return true
	}
	c, err := nftables.New()
	if err != nil {
		return errors.Is(err, syscall.EPROTONOSUPPORT)
	}
	_, err = c.ListTables()
	return errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.EINVAL)
}

// Coded gives an nftables failure of plugin its CNI code: 102 when the
// kernel has no nftables, 103 otherwise.
func Coded(plugin string, err error) error {
	switch {
	case err == nil:
		return nil
	case Unsupported(err):
		return cnierr.New(cnierr.KernelUnsupported, "%s: %v: the kernel has no nftables (CONFIG_NF_TABLES)", plugin, err)
	}
	return cnierr.New(cnierr.Netlink, "%s: %v", plugin, err)
}

// CodedCleanup is Coded for DEL and GC, where a kernel without nftables
// has no rules to remove.
func CodedCleanup(plugin string, err error) error {
	if Unsupported(err) {
		return nil
	}
	return Coded(plugin, err)
}

// RemoveWith is Remove over the caller's connection (see
// nftown.Table.RemoveWith).
func RemoveWith(c *nftables.Conn, att nftown.Attachment) error {
	if err := Table().RemoveWith(c, att); err != nil {
		return fmt.Errorf("masquerade rules: %w", err)
	}
	return nil
}

// GC deletes the masquerade rules of network's attachments not in keep.
func GC(network string, keep []nftown.Attachment) error {
	if err := Table().GC(network, keep); err != nil {
		return fmt.Errorf("masquerade rules: %w", err)
	}
	return nil
}

// Present reports whether the attachment has masquerade rules.
func Present(att nftown.Attachment) (bool, error) {
	tags, err := Table().Tags(att.Network)
	if err != nil {
		return false, fmt.Errorf("masquerade rules: %w", err)
	}
	for _, t := range tags {
		if t == att.Tag() {
			return true, nil
		}
	}
	return false, nil
}

func hostNet(ip net.IP) net.IPNet {
	if ip4 := ip.To4(); ip4 != nil {
		return net.IPNet{IP: ip4, Mask: net.CIDRMask(32, 32)}
	}
	return net.IPNet{IP: ip.To16(), Mask: net.CIDRMask(128, 128)}
}

// family matches packets of one family, as an inet table must before it
// reads a network header.
func family(v4 bool) []expr.Any {
	p := byte(unix.NFPROTO_IPV6)
	if v4 {
		p = unix.NFPROTO_IPV4
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// addrMatch compares the source (src) or destination address with n.
func addrMatch(v4, src bool, n net.IPNet, op expr.CmpOp) []expr.Any {
	var off, size uint32 = 16, 4 // IPv4 daddr
	ip := n.IP.To4()
	if !v4 {
		off, size, ip = 24, 16, n.IP.To16()
	}
	if src {
		off -= size
	}
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size}}
	if ones, bits := n.Mask.Size(); ones != bits {
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: []byte(n.Mask), Xor: make([]byte, size)})
		ip = ip.Mask(n.Mask)
	}
	return append(out, &expr.Cmp{Op: op, Register: 1, Data: []byte(ip)})
}
