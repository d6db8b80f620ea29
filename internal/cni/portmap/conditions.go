package portmap

import (
	"net"
	"strings"

	"github.com/google/nftables/expr"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nftexpr"
)

// parseConditions turns conditionsV4/conditionsV6 into match expressions
// added to every DNAT rule of that family. The reference hands them
// verbatim to iptables or to nft, so either syntax may appear; tripod
// understands the address and input-interface matches both can express:
//
//	[!] -s|--source|--src ADDR[/LEN]      ip|ip6 saddr [!=] ADDR[/LEN]
//	[!] -d|--destination|--dst ADDR[/LEN] ip|ip6 daddr [!=] ADDR[/LEN]
//	[!] -i|--in-interface NAME[+]         iifname [!=] NAME
//
// Anything else cannot be honoured without an iptables or nft parser and
// is refused with code 2 naming the field and the token.
func parseConditions(field string, f fam, conds []string) ([]expr.Any, error) {
	var toks []string
	for _, c := range conds {
		toks = append(toks, strings.Fields(c)...)
	}
	var out []expr.Any
	next := func(i int, what string) (string, error) {
		if i+1 >= len(toks) {
			return "", cnierr.New(cnierr.InvalidConfig, "%s: %q needs %s after it", field, toks[i], what)
		}
		return strings.Trim(toks[i+1], `"'`), nil
	}
	negate := false
	for i := 0; i < len(toks); i++ {
		tok := toks[i]
		if negate && (tok == "ip" || tok == "ip6" || tok == "iifname") {
			return nil, cnierr.New(cnierr.UnsupportedField, "%s: \"!\" before %q: use != in nft syntax", field, tok)
		}
		switch tok {
		case "!":
			negate = true
			continue
		case "-s", "--source", "--src", "-d", "--destination", "--dst":
			v, err := next(i, "an address")
			if err != nil {
				return nil, err
			}
			n, err := condAddr(field, f, v)
			if err != nil {
				return nil, err
			}
			out = append(out, nftexpr.Addr(f, strings.HasPrefix(tok, "-d") || strings.HasPrefix(tok, "--d"), n, negate)...)
			i++
		case "-i", "--in-interface":
			v, err := next(i, "an interface name")
			if err != nil {
				return nil, err
			}
			out = append(out, ifname(v, negate)...)
			i++
		case "ip", "ip6":
			if (tok == "ip") != (f.Alen == 4) {
				return nil, cnierr.New(cnierr.InvalidConfig, "%s: %q matches the wrong IP family for %s", field, tok, f.Name)
			}
			sel, err := next(i, "saddr or daddr")
			if err != nil {
				return nil, err
			}
			if sel != "saddr" && sel != "daddr" {
				return nil, cnierr.New(cnierr.UnsupportedField, "%s: %q %q is not a condition tripod can honour (supported: saddr, daddr)", field, tok, sel)
			}
			i++
			neg, j, err := condOp(toks, i)
			if err != nil {
				return nil, cnierr.New(cnierr.UnsupportedField, "%s: %v", field, err)
			}
			i = j
			v, err := next(i, "an address")
			if err != nil {
				return nil, err
			}
			n, err := condAddr(field, f, v)
			if err != nil {
				return nil, err
			}
			out = append(out, nftexpr.Addr(f, sel == "daddr", n, neg)...)
			i++
		case "iifname":
			neg, j, err := condOp(toks, i)
			if err != nil {
				return nil, cnierr.New(cnierr.UnsupportedField, "%s: %v", field, err)
			}
			i = j
			v, err := next(i, "an interface name")
			if err != nil {
				return nil, err
			}
			out = append(out, ifname(v, neg)...)
			i++
		default:
			return nil, cnierr.New(cnierr.UnsupportedField,
				"%s: %q is not a condition tripod can honour over nftables (supported: [!] -s/-d ADDR, [!] -i IFACE, ip/ip6 saddr/daddr [!=] ADDR, iifname [!=] IFACE)", field, tok)
		}
		negate = false
	}
	if negate {
		return nil, cnierr.New(cnierr.InvalidConfig, "%s: trailing \"!\"", field)
	}
	return out, nil
}

// condOp consumes an optional == or != after toks[i].
func condOp(toks []string, i int) (negate bool, j int, err error) {
	if i+1 < len(toks) {
		switch toks[i+1] {
		case "!=":
			return true, i + 1, nil
		case "==", "eq":
			return false, i + 1, nil
		case "ne":
			return true, i + 1, nil
		}
		if strings.HasPrefix(toks[i+1], "{") {
			return false, i, &setErr{toks[i+1]}
		}
	}
	return false, i, nil
}

type setErr struct{ tok string }

func (e *setErr) Error() string {
	return "anonymous sets (" + e.tok + " ...) are not supported in conditions"
}

func condAddr(field string, f fam, v string) (net.IPNet, error) {
	var n net.IPNet
	if ip, ipn, err := net.ParseCIDR(v); err == nil {
		n = net.IPNet{IP: ip, Mask: ipn.Mask}
	} else if ip := net.ParseIP(v); ip != nil {
		n = nftexpr.HostNet(ip)
	} else {
		return n, cnierr.New(cnierr.InvalidConfig, "%s: %q is not an IP address or CIDR", field, v)
	}
	if nftexpr.FamOf(n.IP).Alen != f.Alen {
		return n, cnierr.New(cnierr.InvalidConfig, "%s: %s is not an %s address", field, v, f.Name)
	}
	return n, nil
}
