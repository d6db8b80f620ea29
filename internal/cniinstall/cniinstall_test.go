package cniinstall

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestFreeSubnet(t *testing.T) {
	for _, c := range []struct {
		taken []netip.Prefix
		want  string
	}{
		{nil, "10.88.0.0/16"},
		{[]netip.Prefix{pfx("192.0.2.0/24"), pfx("10.88.7.0/24")}, "10.89.0.0/16"},
		{[]netip.Prefix{pfx("10.88.0.0/15")}, "10.90.0.0/16"},
		// A VPN's 10/8 pushes the pods to 172.16/12.
		{[]netip.Prefix{pfx("10.0.0.0/8")}, "172.16.0.0/16"},
		{[]netip.Prefix{pfx("10.0.0.0/8"), pfx("172.16.0.0/12")}, "192.168.0.0/24"},
		{[]netip.Prefix{pfx("10.0.0.0/8"), pfx("172.16.0.0/12"), pfx("192.168.0.0/23")}, "192.168.2.0/24"},
	} {
		got, err := FreeSubnet(c.taken)
		if err != nil || got.String() != c.want {
			t.Errorf("FreeSubnet(%v) = %v %v, want %s", c.taken, got, err, c.want)
		}
	}
	if _, err := FreeSubnet([]netip.Prefix{pfx("10.0.0.0/8"), pfx("172.16.0.0/12"), pfx("192.168.0.0/16")}); err == nil {
		t.Error("every range taken, yet one was picked")
	}
}

func TestConflist(t *testing.T) {
	b, err := Network{Subnet: pfx("10.89.0.0/16"), IPAMDir: "/var/lib/x"}.Conflist()
	if err != nil {
		t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("libcni refuses it: %v\n%s", err, b)
	}
	var types []string
	for _, p := range l.Plugins {
		types = append(types, p.Network.Type)
	}
	if l.Name != "tripod" || l.CNIVersion != "1.1.0" || !slices.Equal(types, []string{"bridge", "portmap", "firewall", "bandwidth"}) {
		t.Fatalf("%s %s %v", l.Name, l.CNIVersion, types)
	}
	var br struct {
		Bridge    string
		IsGateway bool
		IPMasq    bool
		IPAM      struct {
			Type    string
			Ranges  [][]struct{ Subnet string }
			DataDir string
		}
	}
	json.Unmarshal(l.Plugins[0].Bytes, &br)
	if br.Bridge != "tripod0" || !br.IsGateway || !br.IPMasq || br.IPAM.Type != "host-local" || br.IPAM.Ranges[0][0].Subnet != "10.89.0.0/16" || br.IPAM.DataDir != "/var/lib/x" {
		t.Fatalf("bridge: %+v", br)
	}
	for _, bad := range []Network{{Subnet: pfx("fd00::/64")}, {Subnet: pfx("10.0.0.0/31")}, {Subnet: pfx("10.0.0.0/16"), Bridge: "a-very-long-bridge-name"}} {
		if _, err := bad.Conflist(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// TestInstall: the binary and one link per type; a foreign plugin of the
// same name is kept unless forced; a second run changes nothing; the
// record lists what is tripod's.
func TestInstall(t *testing.T) {
	ctx := context.Background()
	// The plugin links point at the multi-call binary, wherever the
	// harness keeps it (bin/tripod-cni under make test).
	from, err := filepath.EvalSymlinks(filepath.Join(cnitest.BinDir(t), "loopback"))
	if err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	bin := filepath.Join(dest, "opt/cni/bin")
	os.MkdirAll(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "bridge"), []byte("someone else's bridge"), 0o755)
	var rec []string
	p := Plugins{From: from, BinDir: "/opt/cni/bin/", DestDir: dest, Record: func(k byte, path string) { rec = append(rec, string(k)+" "+path) }}
	res, err := p.Install(ctx)
	if err != nil {
		t.Fatal(err)
	}
	types, _ := Types(ctx, from)
	if !res.Changed || len(res.Types) != len(types)-1 || !slices.Equal(res.Kept, []string{filepath.Join(bin, "bridge")}) {
		t.Fatalf("first install: %+v", res)
	}
	if b, _ := os.ReadFile(filepath.Join(bin, "bridge")); string(b) != "someone else's bridge" {
		t.Fatal("foreign bridge replaced")
	}
	if target, err := os.Readlink(filepath.Join(bin, "portmap")); err != nil || target != Binary {
		t.Fatalf("portmap link: %q %v", target, err)
	}
	if !slices.Contains(rec, "f /opt/cni/bin/tripod-cni") || !slices.Contains(rec, "l /opt/cni/bin/portmap") || slices.Contains(rec, "l /opt/cni/bin/bridge") {
		t.Fatalf("record: %v", rec)
	}
	// The installed plugins run: VERSION through the link.
	cmd := exec.Command(filepath.Join(bin, "portmap"))
	cmd.Env, cmd.Stdin = []string{"CNI_COMMAND=VERSION"}, strings.NewReader(`{"cniVersion":"1.1.0"}`)
	if out, err := cmd.Output(); err != nil || !strings.Contains(string(out), `"supportedVersions"`) {
		t.Fatalf("installed portmap: %v %s", err, out)
	}
	res, err = p.Install(ctx)
	if err != nil || res.Changed || len(res.New) != 0 {
		t.Fatalf("second install: %+v %v", res, err)
	}
	p.Force = true
	if res, err = p.Install(ctx); err != nil || !res.Changed || len(res.Kept) != 0 {
		t.Fatalf("forced install: %+v %v", res, err)
	}
	if target, _ := os.Readlink(filepath.Join(bin, "bridge")); target != Binary {
		t.Fatal("forced install kept the foreign bridge")
	}
	// Made from nothing: the directories are new and recorded.
	rec = nil
	p = Plugins{From: from, BinDir: "/new/cni", DestDir: dest, Record: func(k byte, path string) { rec = append(rec, string(k)+" "+path) }}
	if res, err = p.Install(ctx); err != nil || res.New[0] != filepath.Join(dest, "new") || res.New[1] != filepath.Join(dest, "new/cni") {
		t.Fatalf("fresh dirs: %+v %v", res.New, err)
	}
	if rec[0] != "d /new" || rec[1] != "d /new/cni" {
		t.Fatalf("record: %v", rec[:2])
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	conf, _ := Network{Subnet: pfx("10.88.0.0/16")}.Conflist()
	path, written, made, err := Write(dir, "/etc/cni/net.d", ConfFile, conf, nil)
	if err != nil || !written || path != filepath.Join(dir, "etc/cni/net.d", ConfFile) || len(made) != 4 {
		t.Fatalf("Write: %s %v %v %v", path, written, made, err)
	}
	if name, err := NetworkName(path); err != nil || name != "tripod" {
		t.Fatalf("NetworkName: %q %v", name, err)
	}
	// Any config there already (another CNI's, first by name) is kept.
	other := filepath.Join(dir, "other")
	os.MkdirAll(other, 0o755)
	os.WriteFile(filepath.Join(other, "05-flannel.conflist"), []byte(`{"name":"cbr0"}`), 0o644)
	path, written, _, err = Write(dir, "/other", ConfFile, conf, nil)
	if err != nil || written || path != filepath.Join(other, "05-flannel.conflist") {
		t.Fatalf("over an existing config: %s %v %v", path, written, err)
	}
	if ents, _ := os.ReadDir(other); len(ents) != 1 {
		t.Fatalf("left %v", ents)
	}
}

// TestHostPrefixes: in a namespace of its own, the ranges of its
// addresses and routes are found, default routes and the named bridge's
// own left out, and the next free range is picked around them.
func TestHostPrefixes(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	ns := cnitest.NewNetns(t, tag)
	ns.Do(t, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		for _, l := range []struct{ name, addr string }{{tag + "a", "10.88.7.1/24"}, {tag + "br", "10.90.0.1/16"}} {
			// (No dummy links in this kernel: bridges hold addresses too.)
			d := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: l.name}}
			if err := netlink.LinkAdd(d); err != nil {
				return err
			}
			a, _ := netlink.ParseAddr(l.addr)
			if err := netlink.AddrAdd(d, a); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(d); err != nil {
				return err
			}
		}
		a, _ := netlink.LinkByName(tag + "a")
		_, dst, _ := net.ParseCIDR("10.89.0.0/16")
		gw, _ := netip.ParseAddr("10.88.7.2")
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: a.Attrs().Index, Dst: dst, Gw: gw.AsSlice()}); err != nil {
			return err
		}
		_, def, _ := net.ParseCIDR("0.0.0.0/0")
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: a.Attrs().Index, Dst: def, Gw: gw.AsSlice()}); err != nil {
			return err
		}
		got, err := HostPrefixes(tag + "br")
		if err != nil {
			return err
		}
		for _, want := range []string{"10.88.7.0/24", "10.89.0.0/16", "127.0.0.0/8"} {
			if !slices.Contains(got, pfx(want)) {
				t.Errorf("%s missing from %v", want, got)
			}
		}
		for _, p := range got {
			if p.Bits() == 0 || pfx("10.90.0.0/16").Overlaps(p) {
				t.Errorf("%v listed: %v", p, got)
			}
		}
		if free, err := FreeSubnet(got); err != nil || free.String() != "10.90.0.0/16" {
			t.Errorf("free: %v %v (the bridge's own range is reused)", free, err)
		}
		return nil
	})
}
