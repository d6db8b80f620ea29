package nftown_test

import (
	"os"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
)

func table(t *testing.T) nftown.Table {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: nftables needs root (make test runs as root)")
	}
	tbl := nftown.Table{
		Name:   cnitest.Tag(t) + "_nftown",
		Family: nftables.TableFamilyINet,
		Chains: []nftown.BaseChain{{Name: "fwd", Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter}},
	}
	t.Cleanup(func() {
		c, err := nftables.New()
		if err != nil {
			t.Error(err)
			return
		}
		c.DelTable(&nftables.Table{Name: tbl.Name, Family: tbl.Family})
		_ = c.Flush()
	})
	return tbl
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

func rulesIn(t *testing.T, tbl nftown.Table, chain string) int {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := c.GetRules(&nftables.Table{Name: tbl.Name, Family: tbl.Family}, &nftables.Chain{Name: chain})
	if err != nil {
		t.Fatalf("listing rules of %s: %v", chain, err)
	}
	return len(rules)
}

func TestSetRemoveGC(t *testing.T) {
	tbl := table(t)
	net := "n1"
	a := nftown.Attachment{Network: net, ContainerID: "c1", IfName: "eth0"}
	b := nftown.Attachment{Network: net, ContainerID: "c2", IfName: "eth0"}
	other := nftown.Attachment{Network: "n2", ContainerID: "c3", IfName: "eth0"}
	for _, x := range []nftown.Attachment{a, b, other} {
		if err := tbl.Set(x, map[string]nftown.Jump{"fwd": {Rules: [][]expr.Any{accept(), accept()}}}); err != nil {
			t.Fatalf("Set %v: %v", x, err)
		}
	}
	// Set again replaces instead of duplicating.
	if err := tbl.Set(a, map[string]nftown.Jump{"fwd": {Rules: [][]expr.Any{accept()}}}); err != nil {
		t.Fatal(err)
	}
	if n := rulesIn(t, tbl, a.ChainName("fwd")); n != 1 {
		t.Errorf("chain of a has %d rules after replace, want 1", n)
	}
	if n := rulesIn(t, tbl, "fwd"); n != 3 {
		t.Errorf("base chain has %d jumps, want 3", n)
	}
	tags, err := tbl.Tags(net)
	if err != nil {
		t.Fatal(err)
	}
	if len(tags) != 2 || !slices.Contains(tags, a.Tag()) || !slices.Contains(tags, b.Tag()) {
		t.Errorf("Tags(%s) = %v, want a and b", net, tags)
	}

	// GC keeps a, removes b, leaves the other network alone.
	if err := tbl.GC(net, []nftown.Attachment{a}); err != nil {
		t.Fatal(err)
	}
	tags, _ = tbl.Tags(net)
	if !slices.Equal(tags, []string{a.Tag()}) {
		t.Errorf("after GC Tags = %v, want only a", tags)
	}
	if tags, _ := tbl.Tags("n2"); len(tags) != 1 {
		t.Errorf("GC of n1 touched n2: %v", tags)
	}

	// Remove is idempotent, also for attachments that never existed.
	for i := 0; i < 2; i++ {
		if err := tbl.Remove(a); err != nil {
			t.Fatalf("Remove #%d: %v", i, err)
		}
	}
	if err := tbl.Remove(nftown.Attachment{Network: "n9", ContainerID: "none", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	cnitest.NoChains(t, tbl, net)
	if n := rulesIn(t, tbl, "fwd"); n != 1 {
		t.Errorf("base chain has %d jumps, want 1 (network n2)", n)
	}
}

func TestRemoveWithoutTable(t *testing.T) {
	tbl := table(t)
	if err := tbl.Remove(nftown.Attachment{Network: "n", ContainerID: "c", IfName: "eth0"}); err != nil {
		t.Fatalf("Remove on an absent table: %v", err)
	}
	if err := tbl.GC("n", nil); err != nil {
		t.Fatalf("GC on an absent table: %v", err)
	}
}
