package veth_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/veth"
)

func TestHostName(t *testing.T) {
	a := veth.HostName("n", "c1", "eth0")
	if len(a) != 15 || !strings.HasPrefix(a, "veth") {
		t.Errorf("HostName = %q: want veth + 11 hex digits", a)
	}
	if a != veth.HostName("n", "c1", "eth0") {
		t.Error("HostName is not deterministic")
	}
	for _, other := range []string{veth.HostName("n", "c1", "eth1"), veth.HostName("n", "c2", "eth0"), veth.HostName("n", "c1e", "th0"), veth.HostName("m", "c1", "eth0")} {
		if other == a {
			t.Errorf("HostName collides: %q", other)
		}
	}
	m := veth.RandomMAC()
	if m[0]&1 != 0 || m[0]&2 == 0 {
		t.Errorf("RandomMAC %s is not a locally administered unicast address", m)
	}
}

// TestCreateDeleteGC creates pairs from a "host" namespace into a
// container namespace and checks every attribute the single request sets.
func TestCreateDeleteGC(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	host := cnitest.NewNetns(t, tag+"h")
	cont := cnitest.NewNetns(t, tag+"c")
	f, err := os.Open(cont.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	names := []string{veth.HostName(tag, tag, "eth0"), veth.HostName(tag, tag, "eth1"), veth.HostName(tag, tag, "eth2")}
	hostMAC, peerMAC := veth.RandomMAC(), veth.RandomMAC()
	host.Do(t, func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: tag + "br"}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		br2, err := netlink.LinkByName(tag + "br")
		if err != nil {
			return err
		}
		p := veth.Pair{HostName: names[0], HostMAC: hostMAC, PeerName: "eth0", PeerMAC: peerMAC,
			PeerNetns: int(f.Fd()), MTU: 1400, MasterIndex: br2.Attrs().Index}
		index, err := veth.Create(p)
		if err != nil {
			return fmt.Errorf("Create: %v", err)
		}
		if err := veth.Finish(index, veth.Port{Alias: veth.Alias(tag), Hairpin: true, Isolated: true}); err != nil {
			return err
		}
		l, err := netlink.LinkByName(names[0])
		if err != nil {
			return fmt.Errorf("host end: %v", err)
		}
		a := l.Attrs()
		if a.Index != index || a.MasterIndex != br2.Attrs().Index || a.Alias != veth.Alias(tag) || a.MTU != 1400 ||
			a.HardwareAddr.String() != hostMAC.String() || a.Flags&net.FlagUp == 0 {
			t.Errorf("host end %+v: want index %d, master %d, alias %q, mtu 1400, mac %s, up", a, index, br2.Attrs().Index, veth.Alias(tag), hostMAC)
		}
		if pi, err := netlink.LinkGetProtinfo(l); err != nil || !pi.Hairpin || !pi.Isolated {
			t.Errorf("host end port flags %+v (%v): want hairpin and isolated", pi, err)
		}
		// The same names again: EEXIST, nothing created.
		if _, err := veth.Create(p); !errors.Is(err, syscall.EEXIST) {
			t.Errorf("second Create with the same names: %v, want EEXIST", err)
		}
		// Another network's veth is not GC'd with this one.
		for i, n := range names[1:] {
			p := veth.Pair{HostName: n, PeerName: "eth" + string(rune('1'+i)), PeerNetns: int(f.Fd())}
			index, err := veth.Create(p)
			if err != nil {
				return fmt.Errorf("Create %s: %v", n, err)
			}
			if err := veth.Finish(index, veth.Port{Alias: veth.Alias(tag + "x"[:i])}); err != nil {
				return err
			}
		}
		return nil
	})
	peer := cont.Link(t, "eth0")
	if a := peer.Attrs(); a.MTU != 1400 || a.HardwareAddr.String() != peerMAC.String() {
		t.Errorf("peer %+v: want mtu 1400, mac %s", a, peerMAC)
	}
	host.Do(t, func() error {
		owned, err := veth.Owned(tag)
		if err != nil {
			return err
		}
		if len(owned) != 2 {
			t.Errorf("Owned(%s) = %d links, want 2", tag, len(owned))
		}
		gone, err := veth.GC(tag, map[string]bool{names[0]: true})
		if err != nil {
			return err
		}
		if len(gone) != 1 || gone[0] != names[1] {
			t.Errorf("GC deleted %v, want [%s]", gone, names[1])
		}
		for i, want := range []bool{true, false, true} {
			_, err := netlink.LinkByName(names[i])
			if (err == nil) != want {
				t.Errorf("after GC, %s present = %v, want %v", names[i], err == nil, want)
			}
		}
		for _, n := range []string{names[0], names[2]} {
			if ok, err := veth.Delete(n); !ok || err != nil {
				t.Errorf("Delete(%s) = %v, %v", n, ok, err)
			}
			if ok, err := veth.Delete(n); ok || err != nil {
				t.Errorf("second Delete(%s) = %v, %v; want false, nil", n, ok, err)
			}
		}
		cnitest.NoLinks(t, "veth")
		return nil
	})
	cont.Do(t, func() error {
		cnitest.NoLinks(t, "eth")
		return nil
	})
}
