package tuning_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

// env is one pod: a network namespace holding eth0, the container end of a
// veth pair whose host end (tag+"h") is in the test's namespace.
type env struct {
	t       *testing.T
	tag     string
	ns      *cnitest.Netns
	dataDir string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	ns := cnitest.NewNetns(t, tag)
	t.Cleanup(func() { cnitest.DeleteLinks(tag) })
	// A new namespace copies the host's IPv4 settings, and the bridge and
	// ptp plugins turn the host's forwarding on: start from off, so that
	// the tests see tuning's change and its undoing.
	ns.Do(t, func() error {
		for _, k := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+k+"/forwarding", []byte("0"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	f, err := os.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tag + "h"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(f.Fd()))}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("creating veth: %v", err)
	}
	return &env{t: t, tag: tag, ns: ns, dataDir: filepath.Join(t.TempDir(), "tuning")}
}

// stdin is a tuning config with a hand-built prevResult, as the plugin
// before tuning in a chain would hand it over. fields are extra JSON
// members, each followed by a comma.
func (e *env) stdin(fields string) string {
	return e.stdinFor("1.0.0", e.tag, fields)
}

func (e *env) stdinFor(version, network, fields string) string {
	ipVersion := ""
	if strings.HasPrefix(version, "0.") {
		ipVersion = `"version":"4",`
	}
	prev := fmt.Sprintf(`{"cniVersion":%q,"interfaces":[{"name":%q,"mac":"aa:00:00:00:00:01"},{"name":"eth0","mac":"aa:00:00:00:00:02","sandbox":%q}],"ips":[{%s"address":"10.200.0.2/24","interface":1}]}`,
		version, e.tag+"h", e.ns.Path, ipVersion)
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"tuning","dataDir":%q,%s"prevResult":%s}`, version, network, e.dataDir, fields, prev)
}

func (e *env) run(cmd, containerID, ifName, stdin string, extra ...string) cnitest.ExecResult {
	e.t.Helper()
	env := map[string]string{
		"CNI_COMMAND":     cmd,
		"CNI_CONTAINERID": containerID,
		"CNI_NETNS":       e.ns.Path,
		"CNI_IFNAME":      ifName,
		"CNI_PATH":        cnitest.BinDir(e.t),
	}
	for _, kv := range extra {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	return cnitest.Exec(e.t, "tuning", env, stdin)
}

// ok runs a verb that must succeed.
func (e *env) ok(cmd, ifName, stdin string, extra ...string) cnitest.ExecResult {
	e.t.Helper()
	r := e.run(cmd, e.tag, ifName, stdin, extra...)
	if r.Err != nil {
		e.t.Fatalf("%s: code %d: %s (%s)", cmd, r.Err.Code, r.Err.Msg, r.Err.Details)
	}
	return r
}

// fails runs a verb that must fail with code and a message holding want.
func (e *env) fails(cmd, ifName, stdin string, code uint, want string, extra ...string) {
	e.t.Helper()
	r := e.run(cmd, e.tag, ifName, stdin, extra...)
	if r.Err == nil {
		e.t.Fatalf("%s succeeded, want code %d (%s)", cmd, code, want)
	}
	if r.Err.Code != code || !strings.Contains(r.Err.Msg, want) {
		e.t.Fatalf("%s: got code %d %q, want code %d mentioning %q", cmd, r.Err.Code, r.Err.Msg, code, want)
	}
}

func (e *env) sysctl(path string) string {
	e.t.Helper()
	var v string
	e.ns.Do(e.t, func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", path))
		v = strings.TrimSpace(string(b))
		return err
	})
	return v
}

func (e *env) setSysctl(path, v string) {
	e.t.Helper()
	e.ns.Do(e.t, func() error { return os.WriteFile(filepath.Join("/proc/sys", path), []byte(v), 0) })
}

func (e *env) statePath(containerID, ifName string) string {
	return filepath.Join(e.dataDir, containerID+"_"+ifName+".json")
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// snapshot is everything tuning may change on eth0 and in its namespace.
type snapshot struct {
	Forwarding, Somaxconn, Rmem string
	Mac                         string
	MTU, TxQLen                 int
	Promisc, Allmulti           bool
}

func (e *env) snapshot(ifName string) snapshot {
	e.t.Helper()
	l := e.ns.Link(e.t, ifName).Attrs()
	return snapshot{
		Forwarding: e.sysctl("net/ipv4/conf/" + ifName + "/forwarding"),
		Somaxconn:  e.sysctl("net/core/somaxconn"),
		Rmem:       strings.Join(strings.Fields(e.sysctl("net/ipv4/tcp_rmem")), " "),
		Mac:        l.HardwareAddr.String(),
		MTU:        l.MTU,
		TxQLen:     l.TxQLen,
		Promisc:    l.Promisc != 0,
		Allmulti:   l.Allmulti != 0,
	}
}

const allFields = `"sysctl":{"net.ipv4.conf.IFNAME.forwarding":"1","net.core.somaxconn":"1234","net.ipv4.tcp_rmem":"4096 65536 1048576"},` +
	`"mac":"c2:b0:57:49:47:f1","mtu":1400,"promisc":true,"allmulti":true,"txQLen":321,`

// TestLifecycle sets every tunable, reads each back from the kernel, checks
// that CHECK notices drift, and that DEL puts the original values back.
func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	before := e.snapshot("eth0")
	if before.Forwarding != "0" || before.Promisc || before.Allmulti || before.MTU == 1400 {
		t.Fatalf("unexpected starting point: %+v", before)
	}
	stdin := e.stdin(allFields)

	r := e.ok("ADD", "eth0", stdin)
	got := e.snapshot("eth0")
	want := snapshot{Forwarding: "1", Somaxconn: "1234", Rmem: "4096 65536 1048576", Mac: "c2:b0:57:49:47:f1", MTU: 1400, TxQLen: 321, Promisc: true, Allmulti: true}
	if got != want {
		t.Fatalf("after ADD:\n got %+v\nwant %+v", got, want)
	}
	res := &current.Result{}
	if err := json.Unmarshal(r.Stdout, res); err != nil {
		t.Fatalf("decoding result: %v\n%s", err, r.Stdout)
	}
	if len(res.Interfaces) != 2 || res.Interfaces[1].Mac != "c2:b0:57:49:47:f1" || res.Interfaces[0].Mac != "aa:00:00:00:00:01" {
		t.Errorf("result does not carry the new MAC on eth0 only: %s", r.Stdout)
	}
	if len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.200.0.2/24" {
		t.Errorf("result lost prevResult's IPs: %s", r.Stdout)
	}
	if !exists(e.statePath(e.tag, "eth0")) {
		t.Fatal("no state file after ADD")
	}

	e.ok("CHECK", "eth0", stdin)
	// Drift in an attribute, then in a sysctl, each makes CHECK fail.
	l := e.ns.Link(t, "eth0")
	e.ns.Do(t, func() error { return netlink.LinkSetMTU(l, 1300) })
	e.fails("CHECK", "eth0", stdin, 7, "MTU of eth0 is 1300, configured 1400")
	e.ns.Do(t, func() error { return netlink.LinkSetMTU(l, 1400) })
	e.setSysctl("net/core/somaxconn", "99")
	e.fails("CHECK", "eth0", stdin, 7, `sysctl "net.core.somaxconn" is "99", configured "1234"`)
	e.setSysctl("net/core/somaxconn", "1234")
	e.ns.Do(t, func() error { return netlink.SetPromiscOff(l) })
	e.fails("CHECK", "eth0", stdin, 7, "promiscuous mode of eth0 is false")
	e.ns.Do(t, func() error { return netlink.SetPromiscOn(l) })
	e.ok("CHECK", "eth0", stdin)

	// A repeated ADD keeps the values from before the first one as the
	// originals to restore.
	e.ok("ADD", "eth0", stdin)

	e.ok("DEL", "eth0", stdin)
	if after := e.snapshot("eth0"); after != before {
		t.Fatalf("DEL did not restore:\n got %+v\nwant %+v", after, before)
	}
	cnitest.EmptyDir(t, e.dataDir)
	// DEL is idempotent.
	e.ok("DEL", "eth0", stdin)
}

// TestDelNetnsGone: with the namespace gone there is nothing to restore,
// but the state must not leak.
func TestDelNetnsGone(t *testing.T) {
	e := newEnv(t)
	stdin := e.stdin(allFields)
	e.ok("ADD", "eth0", stdin)
	e.ns.Remove(t)
	e.ok("DEL", "eth0", stdin)
	cnitest.EmptyDir(t, e.dataDir)
	// DEL of an attachment that never existed succeeds too.
	if r := e.run("DEL", "never-added", "eth0", stdin); r.Err != nil {
		t.Fatalf("DEL of an unknown attachment: %+v", r.Err)
	}
}

// TestPrecedence: CNI_ARGS MAC < runtimeConfig.mac < args.cni, and
// args.cni overrides single sysctls and attributes.
func TestPrecedence(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name, fields, cniArgs string
		mac                   string
		mtu                   int
		somaxconn, forwarding string
	}{
		{"config", `"mac":"02:00:00:00:00:01","mtu":1450,`, "", "02:00:00:00:00:01", 1450, "", ""},
		{"CNI_ARGS", `"mac":"02:00:00:00:00:01",`, "IgnoreUnknown=1;K8S_POD_NAME=x;MAC=02:00:00:00:00:02", "02:00:00:00:00:02", 0, "", ""},
		{"runtimeConfig", `"mac":"02:00:00:00:00:01","runtimeConfig":{"mac":"02:00:00:00:00:03"},`, "MAC=02:00:00:00:00:02", "02:00:00:00:00:03", 0, "", ""},
		{"args.cni", `"mac":"02:00:00:00:00:01","mtu":1450,"sysctl":{"net.core.somaxconn":"500","net.ipv4.conf.eth0.forwarding":"1"},"runtimeConfig":{"mac":"02:00:00:00:00:03"},` +
			`"args":{"cni":{"mac":"02:00:00:00:00:04","mtu":1300,"sysctl":{"net.core.somaxconn":"600"}}},`,
			"MAC=02:00:00:00:00:02", "02:00:00:00:00:04", 1300, "600", "1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.snapshot("eth0")
			stdin := e.stdin(c.fields)
			var extra []string
			if c.cniArgs != "" {
				extra = append(extra, "CNI_ARGS="+c.cniArgs)
			}
			e.ok("ADD", "eth0", stdin, extra...)
			got := e.snapshot("eth0")
			if got.Mac != c.mac {
				t.Errorf("MAC %s, want %s", got.Mac, c.mac)
			}
			if c.mtu != 0 && got.MTU != c.mtu {
				t.Errorf("MTU %d, want %d", got.MTU, c.mtu)
			}
			if c.somaxconn != "" && (got.Somaxconn != c.somaxconn || got.Forwarding != c.forwarding) {
				t.Errorf("somaxconn %s forwarding %s, want %s %s", got.Somaxconn, got.Forwarding, c.somaxconn, c.forwarding)
			}
			e.ok("CHECK", "eth0", stdin, extra...)
			e.ok("DEL", "eth0", stdin, extra...)
			if after := e.snapshot("eth0"); after != before {
				t.Errorf("DEL did not restore:\n got %+v\nwant %+v", after, before)
			}
			cnitest.EmptyDir(t, e.dataDir)
		})
	}
}

// TestBadInput: every bad value is refused with the right code and a
// message naming it, and a refused ADD leaves nothing changed.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name, ifName, fields string
		code                 uint
		want                 string
	}{
		{"other subsystem", "eth0", `"sysctl":{"kernel.hostname":"x"},`, 7, `sysctl key "kernel.hostname": only network sysctls`},
		{"dot dot", "eth0", `"sysctl":{"net/ipv4/../../kernel/hostname":"x"},`, 7, `component ".." is not allowed`},
		{"empty component", "eth0", `"sysctl":{"net..ipv4.ip_forward":"1"},`, 7, `component "" is not allowed`},
		{"bare net", "eth0", `"sysctl":{"net":"1"},`, 7, `only network sysctls`},
		{"duplicate key", "eth0", `"sysctl":{"net.core.somaxconn":"1","net.core.somaxconn":"2"},`, 7, `"net.core.somaxconn" is given more than once`},
		{"unknown key", "eth0", `"sysctl":{"net.core.somaxconn":"777","net.ipv4.nope":"1"},`, 7, `"net.ipv4.nope": /proc/sys/net/ipv4/nope does not exist`},
		{"read-only key", "eth0", `"sysctl":{"net.core.somaxconn":"777","net.ipv4.tcp_available_congestion_control":"reno"},`, 7, "is read-only"},
		{"bad value", "eth0", `"sysctl":{"net.core.somaxconn":"777","net.ipv4.conf.IFNAME.forwarding":"abc"},`, 7, `"net.ipv4.conf.IFNAME.forwarding": the kernel refused value "abc"`},
		{"newline value", "eth0", `"sysctl":{"net.core.somaxconn":"1\n2"},`, 7, "newline"},
		{"value not a string", "eth0", `"sysctl":{"net.core.somaxconn":1},`, 6, "sysctl"},
		{"bad mac", "eth0", `"mac":"not-a-mac",`, 7, `mac "not-a-mac" is not a MAC address`},
		{"multicast mac", "eth0", `"mac":"01:00:5e:00:00:01",`, 7, "not a unicast MAC"},
		{"bad runtime mac", "eth0", `"runtimeConfig":{"mac":"zz"},`, 7, `runtimeConfig.mac "zz"`},
		{"bad args mac", "eth0", `"args":{"cni":{"mac":"zz"}},`, 7, `args.cni.mac "zz"`},
		{"mtu too big", "eth0", `"mtu":70000,`, 7, "mtu 70000 is out of range for eth0"},
		{"mtu too small", "eth0", `"mtu":20,`, 7, "mtu 20 is out of range for eth0"},
		{"negative mtu", "eth0", `"mtu":-1,`, 7, "mtu -1 is out of range"},
		{"negative args mtu", "eth0", `"args":{"cni":{"mtu":-5}},`, 7, "args.cni.mtu -5 is out of range"},
		{"negative txQLen", "eth0", `"txQLen":-1,`, 7, "txQLen -1 is out of range"},
		{"missing interface", "eth9", `"mtu":1400,`, 4, "interface eth9 (CNI_IFNAME) does not exist"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.snapshot("eth0")
			e.fails("ADD", c.ifName, e.stdin(c.fields), c.code, c.want)
			if after := e.snapshot("eth0"); after != before {
				t.Errorf("a refused ADD changed things:\n got %+v\nwant %+v", after, before)
			}
			cnitest.EmptyDir(t, e.dataDir)
			// The same attachment can be added with a good config.
			good := e.stdin(`"sysctl":{"net.core.somaxconn":"888"},"mtu":1420,`)
			e.ok("ADD", "eth0", good)
			e.ok("DEL", "eth0", good)
		})
	}
	t.Run("no prevResult", func(t *testing.T) {
		stdin := fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"type":"tuning","dataDir":%q,"mtu":1400}`, e.tag, e.dataDir)
		e.fails("ADD", "eth0", stdin, 7, "no prevResult")
	})
}

// TestKernelRefusalUndoes: a macvlan's MTU may not exceed its parent's,
// which only the kernel knows. It refuses the link change after the sysctl and
// the MAC were set, and the failed ADD must put both back.
func TestKernelRefusalUndoes(t *testing.T) {
	e := newEnv(t)
	addMacvlan(e)
	before := e.snapshot("eth0.100")
	e.fails("ADD", "eth0.100", e.stdin(`"sysctl":{"net.core.somaxconn":"777"},"mac":"02:00:00:00:00:09","mtu":9000,`), 7,
		"setting mac 02:00:00:00:00:09, mtu 9000 on eth0.100")
	if after := e.snapshot("eth0.100"); after != before {
		t.Errorf("the refused ADD changed things:\n got %+v\nwant %+v", after, before)
	}
	cnitest.EmptyDir(t, e.dataDir)
}

// addMacvlan adds eth0.100, a macvlan on eth0: a name with a dot, on a
// link type whose MTU is bounded by its parent's.
func addMacvlan(e *env) {
	e.t.Helper()
	e.ns.Do(e.t, func() error {
		parent, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.LinkAdd(&netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: "eth0.100", ParentIndex: parent.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE})
	})
}

func TestRelativeDataDir(t *testing.T) {
	e := newEnv(t)
	stdin := strings.Replace(e.stdin(`"mtu":1400,`), `"dataDir":"`+e.dataDir+`"`, `"dataDir":"rel/dir"`, 1)
	e.fails("ADD", "eth0", stdin, 7, `dataDir "rel/dir" must be an absolute path`)
}

// TestSlashKeys: keys may use slashes so that an interface name holding a
// dot (such as a VLAN's, eth0.100) stays one component.
func TestSlashKeys(t *testing.T) {
	e := newEnv(t)
	addMacvlan(e)
	stdin := e.stdin(`"sysctl":{"net/ipv4/conf/eth0.100/forwarding":"1","net/ipv4/conf/IFNAME/arp_ignore":"2"},`)
	e.ok("ADD", "eth0.100", stdin)
	if v := e.sysctl("net/ipv4/conf/eth0.100/forwarding"); v != "1" {
		t.Errorf("forwarding of eth0.100 is %s", v)
	}
	if v := e.sysctl("net/ipv4/conf/eth0.100/arp_ignore"); v != "2" {
		t.Errorf("arp_ignore of eth0.100 is %s", v)
	}
	e.ok("CHECK", "eth0.100", stdin)
	e.ok("DEL", "eth0.100", stdin)
	if v := e.sysctl("net/ipv4/conf/eth0.100/forwarding"); v != "0" {
		t.Errorf("forwarding of eth0.100 not restored: %s", v)
	}
	cnitest.EmptyDir(t, e.dataDir)
}

// TestGC removes the state of attachments not listed as valid, and only
// of this network.
func TestGC(t *testing.T) {
	e := newEnv(t)
	fields := `"sysctl":{"net.core.somaxconn":"999"},`
	netA, netB := e.tag+"a", e.tag+"b"
	for _, a := range []struct{ id, net string }{{"keep", netA}, {"stale", netA}, {"other", netB}} {
		if r := e.run("ADD", a.id, "eth0", e.stdinFor("1.1.0", a.net, fields)); r.Err != nil {
			t.Fatalf("ADD %s: %+v", a.id, r.Err)
		}
	}
	// A state file the reference plugin wrote names no network.
	legacy := e.statePath("legacy", "eth0")
	if err := os.WriteFile(legacy, []byte(`{"mtu":1500}`), 0o600); err != nil {
		t.Fatal(err)
	}
	gcConf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"type":"tuning","dataDir":%q,"cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]}`, netA, e.dataDir)
	if r := cnitest.Exec(t, "tuning", map[string]string{"CNI_COMMAND": "GC", "CNI_PATH": cnitest.BinDir(t)}, gcConf); r.Err != nil {
		t.Fatalf("GC: %+v", r.Err)
	}
	for id, want := range map[string]bool{"keep": true, "stale": false, "other": true, "legacy": true} {
		if got := exists(e.statePath(id, "eth0")); got != want {
			t.Errorf("state of %s exists=%v after GC, want %v", id, got, want)
		}
	}
	for _, a := range []struct{ id, net string }{{"keep", netA}, {"other", netB}} {
		if r := e.run("DEL", a.id, "eth0", e.stdinFor("1.1.0", a.net, fields)); r.Err != nil {
			t.Fatalf("DEL %s: %+v", a.id, r.Err)
		}
	}
	os.Remove(legacy)
	cnitest.EmptyDir(t, e.dataDir)
}

// TestThroughLibcni chains tuning after loopback, as a runtime would,
// for every spec version that has CHECK, and collects garbage with GC.
func TestThroughLibcni(t *testing.T) {
	cnitest.Root(t)
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			tag := cnitest.Tag(t)
			ns := cnitest.NewNetns(t, tag)
			dataDir := filepath.Join(t.TempDir(), "tuning")
			r := cnitest.NewRunner(t)
			list := cnitest.ConfList(t, fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"loopback"},`+
				`{"type":"tuning","dataDir":%q,"sysctl":{"net.core.somaxconn":"4242"},"txQLen":77}]}`, v, tag, dataDir))
			rt := cnitest.RuntimeConf(tag, ns.Path, "lo")
			ctx := context.Background()
			read := func() (string, int) {
				var s string
				ns.Do(t, func() error {
					b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
					s = strings.TrimSpace(string(b))
					return err
				})
				return s, ns.Link(t, "lo").Attrs().TxQLen
			}
			s0, q0 := read()

			res, err := r.CNI.AddNetworkList(ctx, list, rt)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if res.Version() != v {
				t.Errorf("result version %s, want %s", res.Version(), v)
			}
			if s, q := read(); s != "4242" || q != 77 {
				t.Fatalf("after ADD somaxconn %s txqueuelen %d", s, q)
			}
			if v != "0.3.1" {
				if err := r.CNI.CheckNetworkList(ctx, list, rt); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			if v == "1.1.0" {
				// GC with no valid attachments drops the state; DEL then
				// has nothing to restore but still succeeds.
				if err := r.CNI.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}); err != nil {
					t.Fatalf("GC: %v", err)
				}
				cnitest.EmptyDir(t, dataDir)
				if err := r.CNI.DelNetworkList(ctx, list, rt); err != nil {
					t.Fatalf("DEL: %v", err)
				}
				return
			}
			if err := r.CNI.DelNetworkList(ctx, list, rt); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if s, q := read(); s != s0 || q != q0 {
				t.Errorf("after DEL somaxconn %s txqueuelen %d, want %s %d", s, q, s0, q0)
			}
			cnitest.EmptyDir(t, dataDir)
		})
	}
}
