// Package nftown keeps per-attachment packet-filtering rules in nftables
// tables that tripod owns, over netlink: no nft or iptables binary, and no
// other table is touched.
//
// Each attachment (network, container ID, interface) gets one regular chain
// per base chain it needs, named <base>-<network hash>-<attachment hash>,
// reached by a single jump from the base chain. Because the names are
// derived from the attachment, DEL and GC find everything an ADD made
// without any state file and without knowing the container's IP.
package nftown

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// BaseChain is a hooked chain of a tripod table.
type BaseChain struct {
	Name     string
	Type     nftables.ChainType
	Hook     *nftables.ChainHook
	Priority *nftables.ChainPriority
}

// Table is a tripod-owned table and the base chains its attachments hang off.
type Table struct {
	Name   string
	Family nftables.TableFamily
	Chains []BaseChain
}

// Attachment identifies one CNI attachment.
type Attachment struct {
	Network     string
	ContainerID string
	IfName      string
}

// Jump is what an attachment puts behind one base chain: the jump from the
// base chain (guarded by Match, which may be empty) and the rules of the
// attachment's own chain.
type Jump struct {
	Match []expr.Any
	Rules [][]expr.Any
}

func hash8(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:4])
}

// NetworkTag is the part of chain names shared by every attachment of a network.
func NetworkTag(network string) string { return hash8(network) }

// Tag is the attachment's unique chain-name suffix.
func (a Attachment) Tag() string {
	return NetworkTag(a.Network) + "-" + hash8(a.Network, a.ContainerID, a.IfName) + hash8(a.IfName, a.ContainerID)[:4]
}

// ChainName is the name of the attachment's chain behind base chain base.
func (a Attachment) ChainName(base string) string { return base + "-" + a.Tag() }

func (t Table) nft() *nftables.Table { return &nftables.Table{Name: t.Name, Family: t.Family} }

// ensure queues creation of the table and of the base chains missing from
// existing; both are idempotent in the kernel (no NLM_F_EXCL), so
// concurrent plugins agree. Chains that exist are not queued again: the
// kernel commits a chain "update" only after an RCU grace period
// (milliseconds), which would otherwise be paid by every Set.
func (t Table) ensure(c *nftables.Conn, existing []*nftables.Chain) *nftables.Table {
	have := map[string]bool{}
	for _, ch := range existing {
		have[ch.Name] = true
	}
	tbl := t.nft()
	if len(existing) == 0 {
		tbl = c.AddTable(tbl)
	}
	for _, b := range t.Chains {
		if have[b.Name] {
			continue
		}
		policy := nftables.ChainPolicyAccept
		c.AddChain(&nftables.Chain{Name: b.Name, Table: tbl, Type: b.Type, Hooknum: b.Hook, Priority: b.Priority, Policy: &policy})
	}
	return tbl
}

func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

// Set installs the attachment's rules in one transaction, replacing any it
// had before. jumps is keyed by base chain name.
func (t Table) Set(a Attachment, jumps map[string]Jump) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	existing, stale, err := t.attachmentChains(c, a)
	if err != nil {
		return err
	}
	if stale {
		// A repeated ADD: clear the old rules first (their own transaction).
		if err := t.removeFrom(c, existing, map[string]bool{a.Tag(): true}); err != nil {
			return err
		}
	}
	tbl := t.ensure(c, existing)
	for _, b := range t.Chains {
		j, ok := jumps[b.Name]
		if !ok {
			continue
		}
		ch := c.AddChain(&nftables.Chain{Name: a.ChainName(b.Name), Table: tbl})
		for _, r := range j.Rules {
			c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: r})
		}
		exprs := append(append([]expr.Any{}, j.Match...), &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name})
		c.AddRule(&nftables.Rule{
			Table:    tbl,
			Chain:    &nftables.Chain{Name: b.Name, Table: tbl},
			Exprs:    exprs,
			UserData: comment("tripod " + a.ContainerID + " " + a.IfName),
		})
	}
	for name := range jumps {
		if !t.hasChain(name) {
			return fmt.Errorf("nftables: table %s has no base chain %q", t.Name, name)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: installing rules of %s/%s in table %s: %w", a.ContainerID, a.IfName, t.Name, err)
	}
	return nil
}

// attachmentChains looks up, by name, the base chains and the
// attachment's own chains that exist; stale reports whether the
// attachment has any. Listing the table (or its base chains' rules)
// instead would make every ADD and DEL cost grow with the pods on the node.
func (t Table) attachmentChains(c *nftables.Conn, a Attachment) (existing []*nftables.Chain, stale bool, err error) {
	for _, b := range t.Chains {
		for _, name := range []string{b.Name, a.ChainName(b.Name)} {
			ch, err := lookupChain(c, t.nft(), name)
			if err != nil {
				return nil, false, err
			}
			if ch != nil {
				existing = append(existing, ch)
				stale = stale || name != b.Name
			}
		}
	}
	return existing, stale, nil
}

// lookupChain fetches one chain by name, or nil when it (or its table)
// does not exist.
func lookupChain(c *nftables.Conn, tbl *nftables.Table, name string) (*nftables.Chain, error) {
	ch, err := c.ListChain(tbl, name)
	if err != nil {
		// google/nftables flattens the netlink error into text.
		if strings.Contains(err.Error(), syscall.ENOENT.Error()) {
			return nil, nil
		}
		return nil, fmt.Errorf("nftables: looking up chain %s/%s: %w", tbl.Name, name, err)
	}
	return ch, nil
}

func (t Table) hasChain(name string) bool {
	for _, b := range t.Chains {
		if b.Name == name {
			return true
		}
	}
	return false
}

// Remove deletes everything the attachment has in the table. It succeeds
// when there is nothing to delete, including when the table is absent.
func (t Table) Remove(a Attachment) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	return t.RemoveWith(c, a)
}

// RemoveWith is Remove over the caller's connection. The kernel defers
// freeing deleted rules past an RCU grace period and makes whoever closes
// the deleting socket wait for that: with a lasting connection, closed
// later, the caller can overlap the wait with other work.
func (t Table) RemoveWith(c *nftables.Conn, a Attachment) error {
	existing, _, err := t.attachmentChains(c, a)
	if err != nil {
		return err
	}
	return t.removeFrom(c, existing, map[string]bool{a.Tag(): true})
}

// GC deletes the rules of every attachment of network that is not in keep.
func (t Table) GC(network string, keep []Attachment) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	valid := map[string]bool{}
	for _, a := range keep {
		valid[a.Tag()] = true
	}
	tags, err := t.tags(c, NetworkTag(network))
	if err != nil {
		return err
	}
	stale := map[string]bool{}
	for _, tag := range tags {
		if !valid[tag] {
			stale[tag] = true
		}
	}
	if len(stale) == 0 {
		return nil
	}
	return t.remove(c, stale)
}

// Tags lists the attachment tags present for network.
func (t Table) Tags(network string) ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return t.tags(c, NetworkTag(network))
}

func (t Table) tags(c *nftables.Conn, netTag string) ([]string, error) {
	chains, err := t.chains(c)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, ch := range chains {
		for _, b := range t.Chains {
			rest, ok := strings.CutPrefix(ch.Name, b.Name+"-")
			if ok && strings.HasPrefix(rest, netTag+"-") && !seen[rest] {
				seen[rest] = true
				out = append(out, rest)
			}
		}
	}
	return out, nil
}

func (t Table) chains(c *nftables.Conn) ([]*nftables.Chain, error) {
	all, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("nftables: listing chains: %w", err)
	}
	var out []*nftables.Chain
	for _, ch := range all {
		if ch.Table.Name == t.Name {
			out = append(out, ch)
		}
	}
	return out, nil
}

// remove deletes, in one transaction, the jumps to and the chains of every
// tag in tags.
func (t Table) remove(c *nftables.Conn, tags map[string]bool) error {
	chains, err := t.chains(c)
	if err != nil {
		return err
	}
	return t.removeFrom(c, chains, tags)
}

// removeFrom is remove with the table's chains already listed.
func (t Table) removeFrom(c *nftables.Conn, chains []*nftables.Chain, tags map[string]bool) error {
	if len(chains) == 0 {
		return nil
	}
	existing := map[string]*nftables.Chain{}
	for _, ch := range chains {
		existing[ch.Name] = ch
	}
	tbl := t.nft()
	queued := false
	for _, b := range t.Chains {
		base, ok := existing[b.Name]
		if !ok {
			continue
		}
		// A jump can only point at a chain that exists: without one of
		// ours behind this base chain, its (many) rules need no listing.
		ours := false
		for tag := range tags {
			if _, ok := existing[b.Name+"-"+tag]; ok {
				ours = true
				break
			}
		}
		if !ours {
			continue
		}
		rules, err := c.GetRules(tbl, base)
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("nftables: listing rules of %s/%s: %w", t.Name, b.Name, err)
		}
		for _, r := range rules {
			if target := jumpTarget(r); target != "" {
				if tag, ok := strings.CutPrefix(target, b.Name+"-"); ok && tags[tag] {
					if err := c.DelRule(r); err != nil {
						return fmt.Errorf("nftables: %w", err)
					}
					queued = true
				}
			}
		}
		for tag := range tags {
			if ch, ok := existing[b.Name+"-"+tag]; ok {
				c.FlushChain(ch)
				c.DelChain(ch)
				queued = true
			}
		}
	}
	if !queued {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: deleting rules from table %s: %w", t.Name, err)
	}
	return nil
}

func jumpTarget(r *nftables.Rule) string {
	for _, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) {
			return v.Chain
		}
	}
	return ""
}

// Keep lists the attachments of network that GC's valid attachments name.
func Keep(network string, valid []types.GCAttachment) []Attachment {
	keep := make([]Attachment, 0, len(valid))
	for _, v := range valid {
		keep = append(keep, Attachment{Network: network, ContainerID: v.ContainerID, IfName: v.IfName})
	}
	return keep
}

// Usable reports why nftables cannot be used at all (STATUS), or nil.
func Usable() error {
	c, err := nftables.New()
	if err == nil {
		_, err = c.ListTablesOfFamily(nftables.TableFamilyINet)
	}
	return err
}
