package firewall

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/nftexpr"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
)

// Rules in chains tripod does not own.
//
// In nftables a packet dropped by any base chain on a hook is dropped, so
// an accept in tripod's own table cannot override another table's forward
// chain with policy drop (iptables-nft's "table ip filter" on a Docker
// host, a hand-written nft ruleset). For each such chain the firewall
// plugin appends, at its end, accept rules for the container's addresses,
// each tagged with a comment naming the attachment; DEL and GC find them
// by that tag alone. Appending keeps every explicit rule of the chain's
// owner in force: only the policy verdict changes, and only for the
// container's traffic. This is the one place tripod writes outside its own
// tables.

// commentPrefix starts the comment of every rule and set element the
// firewall plugin tags; the attachment tag (nftown.Attachment.Tag) follows.
const commentPrefix = "tripod-firewall "

func comment(a nftown.Attachment) string {
	return commentPrefix + a.Tag() + " " + a.ContainerID + "/" + a.IfName
}

// tagOf returns the attachment tag of a comment written by comment.
func tagOf(c string) (string, bool) {
	rest, ok := strings.CutPrefix(c, commentPrefix)
	if !ok {
		return "", false
	}
	tag, _, _ := strings.Cut(rest, " ")
	return tag, tag != ""
}

// forwardChains lists the base chains on the forward hook of every ip, ip6
// and inet table but tripod's own; dropOnly keeps those with policy drop.
func forwardChains(c *nftables.Conn, dropOnly bool) ([]*nftables.Chain, error) {
	all, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing nftables chains: %w", err)
	}
	var out []*nftables.Chain
	for _, ch := range all {
		if ch.Hooknum == nil || *ch.Hooknum != unix.NF_INET_FORWARD || ch.Table == nil {
			continue
		}
		switch ch.Table.Family {
		case nftables.TableFamilyIPv4, nftables.TableFamilyIPv6, nftables.TableFamilyINet:
		default:
			continue // bridge's forward hook has the same number
		}
		if ch.Table.Name == TableName && ch.Table.Family == nftables.TableFamilyINet {
			continue
		}
		if dropOnly && (ch.Policy == nil || *ch.Policy != nftables.ChainPolicyDrop) {
			continue
		}
		out = append(out, ch)
	}
	return out, nil
}

// foreignRules are the accept rules for the container's addresses in a
// table of family tf: everything from the container, and replies and
// DNATed (published-port) connections to it, as the reference plugin's
// CNI-FORWARD chain allows.
func foreignRules(tf nftables.TableFamily, ips []net.IP) [][]expr.Any {
	var out [][]expr.Any
	for _, ip := range ips {
		f := nftexpr.FamOf(ip)
		switch {
		case tf == nftables.TableFamilyINet:
			pre := nftexpr.NFProto(f)
			out = append(out,
				nftexpr.Concat(pre, addr(ip, false, false), counted(expr.VerdictAccept)),
				nftexpr.Concat(pre, addr(ip, true, false), nftexpr.CtBits(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), counted(expr.VerdictAccept)),
				nftexpr.Concat(pre, addr(ip, true, false), nftexpr.CtBits(expr.CtKeySTATUS, ipsDstNAT), counted(expr.VerdictAccept)))
		case byte(tf) == f.NFProto:
			// iptables-nft's own encoding of
			//   -s IP -j ACCEPT
			//   -d IP -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT
			out = append(out,
				nftexpr.Concat(addr(ip, false, false), counted(expr.VerdictAccept)),
				nftexpr.Concat(addr(ip, true, false), xtReplies(), counted(expr.VerdictAccept)))
		}
	}
	return out
}

// installForeign puts the attachment's accept rules at the end of every
// foreign forward chain with policy drop, replacing those it had, in one
// transaction. It returns the chains it wrote to.
func installForeign(a nftown.Attachment, ips []net.IP) ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	chains, err := forwardChains(c, true)
	if err != nil {
		return nil, err
	}
	tag, note := a.Tag(), comment(a)
	var used []string
	for _, ch := range chains {
		rules := foreignRules(ch.Table.Family, ips)
		if len(rules) == 0 {
			continue
		}
		if _, err := queueDeletes(c, ch, func(t string) bool { return t == tag }); err != nil {
			return nil, err
		}
		for _, r := range rules {
			c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: r, UserData: userdata.AppendString(nil, userdata.TypeComment, note)})
		}
		used = append(used, chainName(ch))
	}
	if len(used) == 0 {
		return nil, nil
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("nftables: adding accept rules to %s: %w", strings.Join(used, ", "), err)
	}
	return used, nil
}

func chainName(ch *nftables.Chain) string {
	return familyName(ch.Table.Family) + " " + ch.Table.Name + " " + ch.Name
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	}
	return fmt.Sprint(f)
}

// queueDeletes queues, on c, deleting the rules of ch whose tag matches,
// and returns how many.
func queueDeletes(c *nftables.Conn, ch *nftables.Chain, match func(tag string) bool) (int, error) {
	refs, err := tagged(ch, match)
	if err != nil {
		return 0, err
	}
	for _, r := range refs {
		if err := c.DelRule(&nftables.Rule{Table: ch.Table, Chain: ch, Handle: r.handle}); err != nil {
			return 0, err
		}
	}
	return len(refs), nil
}

// tagged lists the rules of ch whose tag matches.
func tagged(ch *nftables.Chain, match func(tag string) bool) ([]ruleRef, error) {
	refs, err := dumpRules(ch.Table.Family, ch.Table.Name, ch.Name)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("listing rules of %s: %w", chainName(ch), err)
	}
	var out []ruleRef
	for _, r := range refs {
		if t, ok := tagOf(r.comment); ok && match(t) {
			out = append(out, r)
		}
	}
	return out, nil
}

// removeForeign deletes the tagged rules whose tag matches from every
// foreign forward chain, whatever its policy is now. A chain that vanishes
// meanwhile makes the transaction fail; it is retried once.
func removeForeign(match func(tag string) bool) error {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if err = removeForeignOnce(match); err == nil || !errors.Is(err, syscall.ENOENT) {
			return err
		}
	}
	return err
}

func removeForeignOnce(match func(tag string) bool) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	chains, err := forwardChains(c, false)
	if err != nil {
		return err
	}
	queued := 0
	for _, ch := range chains {
		n, err := queueDeletes(c, ch, match)
		if err != nil {
			return err
		}
		queued += n
	}
	if queued == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: deleting tripod accept rules from foreign chains: %w", err)
	}
	return nil
}

// checkForeign verifies that every foreign forward chain with policy drop
// holds the attachment's accept rules.
func checkForeign(a nftown.Attachment, ips []net.IP) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	chains, err := forwardChains(c, true)
	if err != nil {
		return err
	}
	tag := a.Tag()
	for _, ch := range chains {
		want := len(foreignRules(ch.Table.Family, ips))
		have, err := tagged(ch, func(t string) bool { return t == tag })
		if err != nil {
			return err
		}
		if len(have) != want {
			return &missingErr{chain: chainName(ch), have: len(have), want: want}
		}
	}
	return nil
}

type missingErr struct {
	chain      string
	have, want int
}

func (e *missingErr) Error() string {
	return fmt.Sprintf("chain %s (policy drop) holds %d of the container's %d accept rules", e.chain, e.have, e.want)
}
