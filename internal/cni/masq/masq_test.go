package masq_test

import (
	"fmt"
	"net"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
)

func ipc(cidr string) *current.IPConfig {
	ip, n, err := net.ParseCIDR(cidr)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return &current.IPConfig{Address: *n}
}

// rules returns, per chain of the masquerade table, how many rules it has
// and how many of them masquerade.
func rules() (map[string][2]int, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	tbl := &nftables.Table{Name: masq.TableName, Family: nftables.TableFamilyINet}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, err
	}
	out := map[string][2]int{}
	for _, ch := range chains {
		if ch.Table.Name != masq.TableName {
			continue
		}
		rs, err := c.GetRules(tbl, ch)
		if err != nil {
			return nil, err
		}
		n := [2]int{len(rs), 0}
		for _, r := range rs {
			for _, e := range r.Exprs {
				if _, ok := e.(*expr.Masq); ok {
					n[1]++
				}
			}
		}
		out[ch.Name] = n
	}
	return out, nil
}

// TestSetRemoveGC runs in a namespace of its own, so the table it fills is
// private to the test.
func TestSetRemoveGC(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	ns := cnitest.NewNetns(t, tag)
	a := nftown.Attachment{Network: tag, ContainerID: "c1", IfName: "eth0"}
	b := nftown.Attachment{Network: tag, ContainerID: "c2", IfName: "eth0"}
	other := nftown.Attachment{Network: tag + "x", ContainerID: "c1", IfName: "eth0"}
	ns.Do(t, func() error {
		if err := masq.Set(a, []*current.IPConfig{ipc("10.1.0.2/24"), ipc("fd00::2/64")}); err != nil {
			return err
		}
		got, err := rules()
		if err != nil {
			return err
		}
		// Base chains hold one jump each; the attachment's chains one
		// masquerade rule each.
		want := map[string][2]int{"masq4": {1, 0}, "masq6": {1, 0}, a.ChainName("masq4"): {1, 1}, a.ChainName("masq6"): {1, 1}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("after Set: %v, want %v", got, want)
		}
		// Set again replaces; two IPv4 addresses give two rules.
		if err := masq.Set(a, []*current.IPConfig{ipc("10.1.0.2/24"), ipc("10.2.0.2/24")}); err != nil {
			return err
		}
		got, _ = rules()
		want = map[string][2]int{"masq4": {1, 0}, "masq6": {0, 0}, a.ChainName("masq4"): {2, 2}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("after replacing Set: %v, want %v", got, want)
		}
		for _, x := range []nftown.Attachment{b, other} {
			if err := masq.Set(x, []*current.IPConfig{ipc("10.1.0.3/24")}); err != nil {
				return err
			}
		}
		if ok, err := masq.Present(b); !ok || err != nil {
			return fmt.Errorf("Present(b) = %v, %v", ok, err)
		}
		if err := masq.GC(tag, []nftown.Attachment{b}); err != nil {
			return err
		}
		for x, want := range map[nftown.Attachment]bool{a: false, b: true, other: true} {
			if ok, err := masq.Present(x); ok != want || err != nil {
				return fmt.Errorf("after GC, Present(%v) = %v, %v; want %v", x, ok, err, want)
			}
		}
		for _, x := range []nftown.Attachment{a, b, other, b} {
			if err := masq.Remove(x); err != nil {
				return fmt.Errorf("Remove(%v): %v", x, err)
			}
		}
		for _, n := range []string{tag, tag + "x"} {
			if tags, err := masq.Table().Tags(n); len(tags) != 0 || err != nil {
				return fmt.Errorf("chains of network %s left: %v (%v)", n, tags, err)
			}
		}
		got, _ = rules()
		want = map[string][2]int{"masq4": {0, 0}, "masq6": {0, 0}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("after Remove: %v, want %v", got, want)
		}
		return nil
	})
}
