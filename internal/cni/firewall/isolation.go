package firewall

import (
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/nftexpr"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
)

// Isolation between bridges, as Docker networks and the reference's
// ingressPolicy same-bridge do it: traffic from an isolated container of
// one bridge to an isolated container of another is dropped; traffic from
// the uplink, the host or non-isolated bridges is not.
//
// "Comes from an isolated container" is a lookup of (input interface,
// source address) in the sets iso4/iso6 of tripod_filter. Each isolated
// attachment owns one element per address, commented with its tag, so DEL
// and GC remove exactly their own elements and no bridge-wide state needs
// reference counting. The drop itself lives in the destination's
// per-attachment chain (ownRules).

func isoSets() []*nftables.Set {
	tbl := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	return []*nftables.Set{
		{Table: tbl, Name: "iso4", KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr), Concatenation: true},
		{Table: tbl, Name: "iso6", KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIP6Addr), Concatenation: true},
	}
}

func isoSetFor(ip net.IP) *nftables.Set {
	s := isoSets()
	if ip.To4() != nil {
		return s[0]
	}
	return s[1]
}

func isoKey(bridge string, ip net.IP) []byte {
	return append(ifnameData(bridge), nftexpr.FamOf(ip).Bytes(ip)...)
}

// isolatedSource matches packets whose (input interface, source address)
// is in the isolation set of ip's family. Concatenated lookups take
// 32-bit registers: iifname fills NFT_REG32_00..03, the address follows.
func isolatedSource(ip net.IP) []expr.Any {
	f := nftexpr.FamOf(ip)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: unix.NFT_REG32_00},
		&expr.Payload{DestRegister: unix.NFT_REG32_04, Base: expr.PayloadBaseNetworkHeader, Offset: f.SaddrOff, Len: f.Alen},
		&expr.Lookup{SourceRegister: unix.NFT_REG32_00, SetName: isoSetFor(ip).Name},
	}
}

// addIsolated registers the container's addresses on bridge as isolated,
// taking over an element a stale attachment may still hold for the same
// address.
func addIsolated(a nftown.Attachment, bridge string, ips []net.IP) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	note := comment(a)
	for _, s := range isoSets() {
		have, err := c.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("listing set %s: %w", s.Name, err)
		}
		var add, stale []nftables.SetElement
		for _, ip := range ips {
			if isoSetFor(ip).Name != s.Name {
				continue
			}
			key := isoKey(bridge, ip)
			for _, e := range have {
				if string(e.Key) == string(key) && e.Comment != note {
					stale = append(stale, nftables.SetElement{Key: key})
				}
			}
			add = append(add, nftables.SetElement{Key: key, Comment: note})
		}
		if len(stale) > 0 {
			if err := c.SetDeleteElements(s, stale); err != nil {
				return err
			}
		}
		if len(add) > 0 {
			if err := c.SetAddElements(s, add); err != nil {
				return err
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: adding isolation set elements: %w", err)
	}
	return nil
}

// removeIsolated deletes the set elements whose tag matches.
func removeIsolated(match func(tag string) bool) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	queued := false
	for _, s := range isoSets() {
		have, err := c.GetSetElements(s)
		if err != nil {
			if nftexpr.NotFound(err) {
				continue // no set, no table: nothing was ever isolated
			}
			return fmt.Errorf("listing set %s: %w", s.Name, err)
		}
		var del []nftables.SetElement
		for _, e := range have {
			if t, ok := tagOf(e.Comment); ok && match(t) {
				del = append(del, nftables.SetElement{Key: e.Key})
			}
		}
		if len(del) > 0 {
			if err := c.SetDeleteElements(s, del); err != nil {
				return err
			}
			queued = true
		}
	}
	if !queued {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: deleting isolation set elements: %w", err)
	}
	return nil
}

func checkIsolated(a nftown.Attachment, bridge string, ips []net.IP) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	note := comment(a)
	for _, ip := range ips {
		s := isoSetFor(ip)
		have, err := c.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("listing set %s: %w", s.Name, err)
		}
		key, found := isoKey(bridge, ip), false
		for _, e := range have {
			found = found || (string(e.Key) == string(key) && e.Comment == note)
		}
		if !found {
			return fmt.Errorf("%s on %s is missing from set %s/%s", ip, bridge, TableName, s.Name)
		}
	}
	return nil
}
