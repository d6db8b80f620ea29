package static_test

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types020 "github.com/containernetworking/cni/pkg/types/020"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

const fullIPAM = `{"type":"static",
	"addresses":[{"address":"10.1.2.3/24","gateway":"10.1.2.1"},{"address":"fd00:1::3/64","gateway":"fd00:1::1"}],
	"routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.1.2.254"},{"dst":"::/0"}],
	"dns":{"nameservers":["10.1.2.53"],"domain":"example.test","search":["example.test"]}}`

// env is a direct invocation's environment; the netns only has to exist
// (skel refuses the caller's own), static never enters it.
func env(ns *cnitest.Netns, cmd, id string, extra ...string) map[string]string {
	e := map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": id, "CNI_NETNS": ns.Path, "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
	for i := 0; i+1 < len(extra); i += 2 {
		e[extra[i]] = extra[i+1]
	}
	return e
}

func conf(version, name, ipam string) string {
	return `{"cniVersion":"` + version + `","name":"` + name + `","type":"static","ipam":` + ipam + `}`
}

func parse(t *testing.T, out []byte) *current.Result {
	t.Helper()
	r := &current.Result{}
	if err := json.Unmarshal(out, r); err != nil {
		t.Fatalf("decoding result %s: %v", out, err)
	}
	return r
}

func wantIPs(t *testing.T, r *current.Result, want ...string) {
	t.Helper()
	var got []string
	for _, ip := range r.IPs {
		s := ip.Address.String()
		if ip.Gateway != nil {
			s += " gw " + ip.Gateway.String()
		}
		got = append(got, s)
		if ip.Interface != nil {
			t.Errorf("IP %s carries interface index %d: an IPAM result must leave it to the main plugin", ip.Address.String(), *ip.Interface)
		}
	}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("IPs %q, want %q", got, want)
	}
}

// TestLifecycleThroughLibcni runs static as the only plugin of a list, for
// every result version the runtime may ask for.
func TestLifecycleThroughLibcni(t *testing.T) {
	cnitest.Root(t)
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			tag := cnitest.Tag(t)
			ns := cnitest.NewNetns(t, tag)
			r := cnitest.NewRunner(t)
			list := cnitest.ConfList(t, `{"cniVersion":"`+v+`","name":"`+tag+`","plugins":[{"type":"static","ipam":`+fullIPAM+`}]}`)
			rt := cnitest.RuntimeConf(tag, ns.Path, "eth0")
			ctx := context.Background()

			cur := r.AddVersion(t, list, rt, v)
			wantIPs(t, cur, "10.1.2.3/24 gw 10.1.2.1", "fd00:1::3/64 gw fd00:1::1")
			if len(cur.Interfaces) != 0 {
				t.Errorf("IPAM result has interfaces: %+v", cur.Interfaces)
			}
			var routes []string
			for _, rt := range cur.Routes {
				routes = append(routes, rt.String())
			}
			if len(cur.Routes) != 3 || cur.Routes[0].Dst.String() != "0.0.0.0/0" || cur.Routes[1].GW.String() != "10.1.2.254" || cur.Routes[2].Dst.String() != "::/0" {
				t.Errorf("routes %v", routes)
			}
			if len(cur.DNS.Nameservers) != 1 || cur.DNS.Nameservers[0] != "10.1.2.53" || cur.DNS.Domain != "example.test" || len(cur.DNS.Search) != 1 {
				t.Errorf("DNS %+v", cur.DNS)
			}
			if v != "0.3.1" {
				if err := r.CNI.CheckNetworkList(ctx, list, rt); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			if err := r.CNI.GetStatusNetworkList(ctx, list); err != nil {
				t.Fatalf("STATUS: %v", err)
			}
			if err := r.CNI.GCNetworkList(ctx, list, &libcni.GCArgs{}); err != nil {
				t.Fatalf("GC: %v", err)
			}
			if err := r.CNI.DelNetworkList(ctx, list, rt); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if err := r.CNI.DelNetworkList(ctx, list, rt); err != nil {
				t.Fatalf("second DEL: %v", err)
			}
		})
	}
}

// TestSources covers where addresses come from and which source wins.
func TestSources(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	ns := cnitest.NewNetns(t, tag)
	cfgIPAM := `{"type":"static","addresses":[{"address":"10.1.2.3/24","gateway":"10.1.2.1"}]}`

	t.Run("CNI_ARGS IP adds to the config, GATEWAY applies by subnet", func(t *testing.T) {
		res := cnitest.Exec(t, "static", env(ns, "ADD", tag, "CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.9.0.5/16,fd00:9::5/64;GATEWAY=10.9.0.1"), conf("1.0.0", tag, cfgIPAM))
		if res.Err != nil {
			t.Fatalf("ADD: %+v", res.Err)
		}
		wantIPs(t, parse(t, res.Stdout), "10.1.2.3/24 gw 10.1.2.1", "10.9.0.5/16 gw 10.9.0.1", "fd00:9::5/64")
	})
	t.Run("args.cni.ips replace the config", func(t *testing.T) {
		c := `{"cniVersion":"1.0.0","name":"` + tag + `","type":"static","args":{"cni":{"ips":["10.7.0.7/24"]}},"ipam":` + cfgIPAM + `}`
		res := cnitest.Exec(t, "static", env(ns, "ADD", tag), c)
		if res.Err != nil {
			t.Fatalf("ADD: %+v", res.Err)
		}
		wantIPs(t, parse(t, res.Stdout), "10.7.0.7/24")
	})
	t.Run("runtimeConfig ips through libcni win over args.cni.ips", func(t *testing.T) {
		r := cnitest.NewRunner(t)
		list := cnitest.ConfList(t, `{"cniVersion":"1.1.0","name":"`+tag+`","plugins":[{"type":"static","capabilities":{"ips":true},"args":{"cni":{"ips":["10.7.0.7/24"]}},"ipam":`+cfgIPAM+`}]}`)
		rt := cnitest.RuntimeConf(tag, ns.Path, "eth0")
		rt.CapabilityArgs = map[string]any{"ips": []string{"10.8.0.8/24", "fd00:8::8/64"}}
		rt.Args = [][2]string{{"GATEWAY", "10.8.0.1"}}
		res, err := r.CNI.AddNetworkList(context.Background(), list, rt)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		cur, err := current.NewResultFromResult(res)
		if err != nil {
			t.Fatal(err)
		}
		wantIPs(t, cur, "10.8.0.8/24 gw 10.8.0.1", "fd00:8::8/64")
		if err := r.CNI.DelNetworkList(context.Background(), list, rt); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	})
}

// TestOldResultVersion: 0.2.0 carries one address per family; more is
// refused rather than dropped.
func TestOldResultVersion(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	ns := cnitest.NewNetns(t, tag)
	res := cnitest.Exec(t, "static", env(ns, "ADD", tag), conf("0.2.0", tag, fullIPAM))
	if res.Err != nil {
		t.Fatalf("ADD: %+v", res.Err)
	}
	old := &types020.Result{}
	if err := json.Unmarshal(res.Stdout, old); err != nil {
		t.Fatal(err)
	}
	if old.IP4 == nil || old.IP4.IP.String() != "10.1.2.3/24" || old.IP6 == nil || old.IP6.IP.String() != "fd00:1::3/64" {
		t.Errorf("0.2.0 result %s", res.Stdout)
	}
	two := `{"type":"static","addresses":[{"address":"10.1.2.3/24"},{"address":"10.1.3.3/24"}]}`
	res = cnitest.Exec(t, "static", env(ns, "ADD", tag), conf("0.2.0", tag, two))
	if res.Err == nil || res.Err.Code != types.ErrInvalidNetworkConfig {
		t.Fatalf("two IPv4 addresses at 0.2.0: %+v, want code 7", res.Err)
	}
}

func TestBadInput(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	ns := cnitest.NewNetns(t, tag)
	cases := []struct {
		name, stdin, cniArgs string
		code                 uint
		mention              string
	}{
		{"bad CIDR", conf("1.0.0", tag, `{"type":"static","addresses":[{"address":"10.1.2.300/24"}]}`), "", 7, "10.1.2.300/24"},
		{"address without prefix", conf("1.0.0", tag, `{"type":"static","addresses":[{"address":"10.1.2.3"}]}`), "", 7, "10.1.2.3"},
		{"gateway of another family", conf("1.0.0", tag, `{"type":"static","addresses":[{"address":"10.1.2.3/24","gateway":"fd00::1"}]}`), "", 7, "fd00::1"},
		{"gateway not an IP", conf("1.0.0", tag, `{"type":"static","addresses":[{"address":"10.1.2.3/24","gateway":"gw"}]}`), "", 7, `"gw"`},
		{"bad route dst", conf("1.0.0", tag, `{"type":"static","addresses":[{"address":"10.1.2.3/24"}],"routes":[{"dst":"nowhere"}]}`), "", 7, "nowhere"},
		{"route gw of another family", conf("1.0.0", tag, `{"type":"static","addresses":[{"address":"10.1.2.3/24"}],"routes":[{"dst":"0.0.0.0/0","gw":"fd00::1"}]}`), "", 7, "fd00::1"},
		{"no ipam section", `{"cniVersion":"1.0.0","name":"` + tag + `","type":"static"}`, "", 7, "ipam"},
		{"no address", conf("1.0.0", tag, `{"type":"static"}`), "", 7, "no address"},
		{"bad CNI_ARGS IP", conf("1.0.0", tag, `{"type":"static"}`), "IP=10.0.0.1/33", 7, "10.0.0.1/33"},
		{"CNI_ARGS GATEWAY outside every address", conf("1.0.0", tag, `{"type":"static","addresses":[{"address":"10.1.2.3/24"}]}`), "GATEWAY=10.5.5.5", 7, "10.5.5.5"},
		{"bad runtimeConfig ip", `{"cniVersion":"1.0.0","name":"` + tag + `","type":"static","runtimeConfig":{"ips":["x/24"]},"ipam":{"type":"static"}}`, "", 7, "x/24"},
		{"addresses of the wrong type", conf("1.0.0", tag, `{"type":"static","addresses":"10.1.2.3/24"}`), "", 6, "addresses"},
		{"malformed JSON", `{"cniVersion":"1.0.0",`, "", 6, "JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, cmd := range []string{"ADD", "CHECK"} {
				res := cnitest.Exec(t, "static", env(ns, cmd, tag, "CNI_ARGS", c.cniArgs), c.stdin)
				if res.Err == nil {
					t.Fatalf("%s succeeded: %s", cmd, res.Stdout)
				}
				if res.Err.Code != c.code || !strings.Contains(res.Err.Msg, c.mention) {
					t.Errorf("%s: code %d %q, want code %d mentioning %q", cmd, res.Err.Code, res.Err.Msg, c.code, c.mention)
				}
			}
		})
	}
}

// TestDelAndGCAlwaysSucceed: static holds no state, so DEL and GC succeed
// even for a config ADD would refuse.
func TestDelAndGCAlwaysSucceed(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	ns := cnitest.NewNetns(t, tag)
	bad := conf("1.1.0", tag, `{"type":"static","addresses":[{"address":"nonsense"}]}`)
	for _, cmd := range []string{"DEL", "GC", "STATUS"} {
		if res := cnitest.Exec(t, "static", env(ns, cmd, tag), bad); res.Err != nil {
			t.Errorf("%s: %+v", cmd, res.Err)
		}
	}
	// An answer to a direct ADD carries the addresses without interface.
	res := cnitest.Exec(t, "static", env(ns, "ADD", tag), conf("1.1.0", tag, fullIPAM))
	if res.Err != nil {
		t.Fatalf("ADD: %+v", res.Err)
	}
	r := parse(t, res.Stdout)
	wantIPs(t, r, "10.1.2.3/24 gw 10.1.2.1", "fd00:1::3/64 gw fd00:1::1")
	if r.CNIVersion != "1.1.0" {
		t.Errorf("result cniVersion %q", r.CNIVersion)
	}
	if !r.IPs[0].Address.IP.Equal(net.ParseIP("10.1.2.3")) {
		t.Errorf("address %v", r.IPs[0].Address)
	}
}
