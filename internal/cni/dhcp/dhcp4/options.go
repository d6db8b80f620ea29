package dhcp4

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Option codes this client reads or writes (RFC 2132 and later).
const (
	OptPad             byte = 0
	OptSubnetMask      byte = 1
	OptRouter          byte = 3
	OptDNS             byte = 6
	OptHostName        byte = 12
	OptDomainName      byte = 15
	OptStaticRoutes    byte = 33
	OptRequestedIP     byte = 50
	OptLeaseTime       byte = 51
	OptOverload        byte = 52
	OptMessageType     byte = 53
	OptServerID        byte = 54
	OptParamRequest    byte = 55
	OptMessage         byte = 56
	OptMaxSize         byte = 57
	OptRenewalTime     byte = 58
	OptRebindingTime   byte = 59
	OptVendorClass     byte = 60
	OptClientID        byte = 61
	OptUserClass       byte = 77
	OptDomainSearch    byte = 119
	OptClasslessRoutes byte = 121
	OptEnd             byte = 255
)

// optionNames are the dhcp-options(5) names accepted in configurations.
var optionNames = map[string]byte{
	"subnet-mask":             OptSubnetMask,
	"routers":                 OptRouter,
	"domain-name-servers":     OptDNS,
	"host-name":               OptHostName,
	"domain-name":             OptDomainName,
	"static-routes":           OptStaticRoutes,
	"dhcp-requested-address":  OptRequestedIP,
	"dhcp-lease-time":         OptLeaseTime,
	"dhcp-server-identifier":  OptServerID,
	"dhcp-message":            OptMessage,
	"dhcp-renewal-time":       OptRenewalTime,
	"dhcp-rebinding-time":     OptRebindingTime,
	"vendor-class-identifier": OptVendorClass,
	"dhcp-client-identifier":  OptClientID,
	"user-class":              OptUserClass,
	"domain-search":           OptDomainSearch,
	"classless-static-routes": OptClasslessRoutes,
}

// ParseOptionName maps a dhcp-options(5) name or a decimal code (1-254) to
// an option code.
func ParseOptionName(s string) (byte, error) {
	if c, ok := optionNames[s]; ok {
		return c, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil || n == 0 || n == 255 {
		return 0, fmt.Errorf("unknown DHCP option %q: use a dhcp-options(5) name such as \"host-name\" or a code from 1 to 254", s)
	}
	return byte(n), nil
}

// Options are decoded DHCP options by code.
type Options map[byte][]byte

// Addr returns the first IPv4 address of option code.
func (o Options) Addr(code byte) (netip.Addr, bool) {
	if v := o[code]; len(v) >= 4 {
		return getAddr(v), true
	}
	return netip.Addr{}, false
}

// Addrs returns every IPv4 address of a list option (routers, DNS).
func (o Options) Addrs(code byte) []netip.Addr {
	v := o[code]
	var out []netip.Addr
	for ; len(v) >= 4; v = v[4:] {
		out = append(out, getAddr(v))
	}
	return out
}

// Duration returns a 32-bit seconds option. infinite reports 0xffffffff.
func (o Options) Duration(code byte) (d time.Duration, infinite, ok bool) {
	v := o[code]
	if len(v) != 4 {
		return 0, false, false
	}
	s := binary.BigEndian.Uint32(v)
	if s == 0xffffffff {
		return 0, true, true
	}
	return time.Duration(s) * time.Second, false, true
}

// PrefixLen returns the subnet mask (option 1) as a prefix length.
func (o Options) PrefixLen() (int, bool) {
	v := o[OptSubnetMask]
	if len(v) != 4 {
		return 0, false
	}
	m := binary.BigEndian.Uint32(v)
	ones := 0
	for m&0x80000000 != 0 {
		ones++
		m <<= 1
	}
	if m != 0 {
		return 0, false // not contiguous
	}
	return ones, true
}

// String returns a text option with trailing NULs dropped.
func (o Options) String(code byte) string {
	return strings.TrimRight(string(o[code]), "\x00")
}

// Route is a route learned from options 33 or 121. An unspecified GW
// means the destination is on-link.
type Route struct {
	Dst netip.Prefix `json:"dst"`
	GW  netip.Addr   `json:"gw"`
}

// ClasslessRoutes decodes option 121 (RFC 3442).
func (o Options) ClasslessRoutes() ([]Route, error) {
	v := o[OptClasslessRoutes]
	var out []Route
	for len(v) > 0 {
		bits := int(v[0])
		if bits > 32 {
			return nil, fmt.Errorf("option 121: prefix length %d", bits)
		}
		n := (bits + 7) / 8
		if len(v) < 1+n+4 {
			return nil, fmt.Errorf("option 121: truncated route")
		}
		var dst [4]byte
		copy(dst[:], v[1:1+n])
		pfx, err := netip.AddrFrom4(dst).Prefix(bits)
		if err != nil {
			return nil, fmt.Errorf("option 121: %w", err)
		}
		out = append(out, Route{Dst: pfx, GW: getAddr(v[1+n:])})
		v = v[1+n+4:]
	}
	return out, nil
}

// StaticRoutes decodes option 33: classful destinations and their routers.
func (o Options) StaticRoutes() []Route {
	v := o[OptStaticRoutes]
	var out []Route
	for ; len(v) >= 8; v = v[8:] {
		dst := getAddr(v)
		bits := 24
		switch first := v[0]; {
		case first < 128:
			bits = 8
		case first < 192:
			bits = 16
		}
		if dst.IsUnspecified() {
			continue // RFC 2132 forbids a default route here
		}
		out = append(out, Route{Dst: netip.PrefixFrom(dst, bits).Masked(), GW: getAddr(v[4:])})
	}
	return out
}

// DomainSearch decodes option 119 (RFC 3397): DNS names in RFC 1035
// encoding, with compression pointers relative to the option's start.
func (o Options) DomainSearch() ([]string, error) {
	v := o[OptDomainSearch]
	var out []string
	for i := 0; i < len(v); {
		name, next, err := readName(v, i)
		if err != nil {
			return nil, fmt.Errorf("option 119: %w", err)
		}
		if name != "" {
			out = append(out, name)
		}
		i = next
	}
	return out, nil
}

// readName reads the name at off and returns it and the offset after it.
func readName(b []byte, off int) (string, int, error) {
	var labels []string
	next := -1
	for jumps := 0; ; {
		if off >= len(b) {
			return "", 0, fmt.Errorf("name runs past the option")
		}
		l := int(b[off])
		switch {
		case l == 0:
			if next < 0 {
				next = off + 1
			}
			return strings.Join(labels, "."), next, nil
		case l&0xc0 == 0xc0:
			if off+1 >= len(b) {
				return "", 0, fmt.Errorf("truncated compression pointer")
			}
			if next < 0 {
				next = off + 2
			}
			if jumps++; jumps > 64 {
				return "", 0, fmt.Errorf("compression pointer loop")
			}
			off = (l&0x3f)<<8 | int(b[off+1])
		case l&0xc0 != 0:
			return "", 0, fmt.Errorf("invalid label length byte %#x", l)
		default:
			if off+1+l > len(b) {
				return "", 0, fmt.Errorf("label runs past the option")
			}
			labels = append(labels, string(b[off+1:off+1+l]))
			off += 1 + l
		}
	}
}
