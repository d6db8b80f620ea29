package hostlocal

import (
	"fmt"
	"math/big"
	"net/netip"
	"strings"
)

// ipRange is one validated range: the addresses start..end of subnet,
// minus the gateway, the subnet's own address and (IPv4) its broadcast.
type ipRange struct {
	subnet     netip.Prefix
	start, end netip.Addr
	gateway    netip.Addr
}

func (r ipRange) String() string {
	return fmt.Sprintf("%s (%s-%s)", r.subnet, r.start, r.end)
}

func (r ipRange) holds(a netip.Addr) bool {
	return r.start.Compare(a) <= 0 && a.Compare(r.end) <= 0
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// usable says whether a may be handed out: never the gateway, the subnet's
// own address or the IPv4 broadcast.
func (r ipRange) usable(a netip.Addr) bool {
	if a == r.gateway || a == r.subnet.Addr() {
		return false
	}
	return !a.Is4() || a != broadcast(r.subnet)
}

// size is the number of usable addresses.
func (r ipRange) size() *big.Int {
	n := new(big.Int).Sub(new(big.Int).SetBytes(r.end.AsSlice()), new(big.Int).SetBytes(r.start.AsSlice()))
	n.Add(n, big.NewInt(1))
	skip := []netip.Addr{r.gateway, r.subnet.Addr()}
	if r.subnet.Addr().Is4() {
		skip = append(skip, broadcast(r.subnet))
	}
	seen := map[netip.Addr]bool{}
	for _, a := range skip {
		if a.IsValid() && r.holds(a) && !seen[a] {
			seen[a] = true
			n.Sub(n, big.NewInt(1))
		}
	}
	return n
}

// rangeSet is one entry of "ranges": the plugin takes one address from it
// per attachment.
type rangeSet []ipRange

func (s rangeSet) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		parts[i] = r.String()
	}
	return strings.Join(parts, ", ")
}

func (s rangeSet) is4() bool { return s[0].subnet.Addr().Is4() }

// find returns the range holding a, or -1.
func (s rangeSet) find(a netip.Addr) int {
	for i, r := range s {
		if r.holds(a) {
			return i
		}
	}
	return -1
}

func (s rangeSet) usable(a netip.Addr) bool {
	i := s.find(a)
	if i < 0 {
		return false
	}
	for _, r := range s {
		// Another range's gateway may fall inside this one: never hand
		// out any gateway.
		if a == r.gateway {
			return false
		}
	}
	return s[i].usable(a)
}

// next is the candidate after a, walking the ranges in order and wrapping
// around; an address outside the set starts at the first range.
func (s rangeSet) next(a netip.Addr) netip.Addr {
	i := s.find(a)
	if i < 0 {
		return s[0].start
	}
	if a == s[i].end {
		return s[(i+1)%len(s)].start
	}
	return a.Next()
}

func (s rangeSet) overlaps(o rangeSet) (ipRange, ipRange, bool) {
	for _, a := range s {
		for _, b := range o {
			if a.start.Is4() == b.start.Is4() && a.start.Compare(b.end) <= 0 && b.start.Compare(a.end) <= 0 {
				return a, b, true
			}
		}
	}
	return ipRange{}, ipRange{}, false
}
