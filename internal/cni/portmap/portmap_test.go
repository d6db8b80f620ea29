package portmap_test

import (
	"encoding/json"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/nftables"

	"github.com/tripod-dev/tripod/internal/cni/chaintest"
	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/cni/portmap"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

func TestForwardIPv4(t *testing.T) {
	tp := newTopo(t)
	serveTCP(t, tp.pod, 8080)
	serveUDP(t, tp.pod, 5353)
	conf := tp.conf(t, tp.dualStack(), []map[string]any{pm("tcp", 18080, 8080, ""), pm("udp", 15353, 5353, "")}, nil)

	// Nothing answers on the host ports before ADD.
	unreachable(t, tp.host, "tcp", chaintest.HostPort("127.0.0.1", 18080))
	unreachable(t, tp.host, "tcp", chaintest.HostPort(host4, 18080))

	out := tp.must(t, "ADD", tp.tag, conf)
	res, err := current.NewResult(out)
	if err != nil {
		t.Fatalf("decoding ADD result: %v\n%s", err, out)
	}
	if r := res.(*current.Result); len(r.IPs) != 2 || len(r.Interfaces) != 2 {
		t.Errorf("ADD did not pass prevResult on: %s", out)
	}

	// From the host itself (output hook): loopback, needing route_localnet
	// and masquerading, and the host's own address.
	if from := reach(t, tp.host, "tcp", chaintest.HostPort("127.0.0.1", 18080)); from != gw4 {
		t.Errorf("connection from 127.0.0.1 reached the pod from %s, want masqueraded to %s", from, gw4)
	}
	if from := reach(t, tp.host, "tcp", chaintest.HostPort(host4, 18080)); from != host4 {
		t.Errorf("connection to %s reached the pod from %s, want unmasqueraded %s", host4, from, host4)
	}
	reach(t, tp.host, "udp", chaintest.HostPort("127.0.0.1", 15353))
	reach(t, tp.host, "udp", chaintest.HostPort(host4, 15353))
	// From outside (prerouting hook): the client's address is kept.
	if from := reach(t, tp.out, "tcp", chaintest.HostPort(outHost4, 18080)); from != outPeer4 {
		t.Errorf("outside connection reached the pod from %s, want %s", from, outPeer4)
	}
	reach(t, tp.out, "udp", chaintest.HostPort(outHost4, 15353))
	// Hairpin: the pod reaches its own host port and sees the host, not
	// itself, as the peer.
	if from := reach(t, tp.pod, "tcp", chaintest.HostPort(host4, 18080)); from == pod4 {
		t.Errorf("hairpin connection was not masqueraded (source %s)", from)
	}
	// The port mapping is for the mapped port only.
	unreachable(t, tp.host, "tcp", chaintest.HostPort(host4, 18081))

	tp.host.Do(t, func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + tp.hostVeth + "/route_localnet")
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(b)) != "1" {
			t.Errorf("route_localnet on %s is %s, want 1", tp.hostVeth, b)
		}
		if b, _ := os.ReadFile("/proc/sys/net/ipv4/conf/all/route_localnet"); strings.TrimSpace(string(b)) != "0" {
			t.Errorf("route_localnet of all changed to %s", b)
		}
		return nil
	})

	tp.must(t, "CHECK", tp.tag, conf)
	tp.must(t, "DEL", tp.tag, conf)
	unreachable(t, tp.host, "tcp", chaintest.HostPort("127.0.0.1", 18080))
	unreachable(t, tp.host, "tcp", chaintest.HostPort(host4, 18080))
	unreachable(t, tp.out, "tcp", chaintest.HostPort(outHost4, 18080))
	tp.noLeaks(t)
	if r := tp.exec(t, "portmap", "CHECK", tp.tag, conf); r.err == nil || r.err.Code != 7 {
		t.Errorf("CHECK after DEL: %+v, want code 7", r.err)
	}
	// DEL is idempotent.
	tp.must(t, "DEL", tp.tag, conf)
}

func TestForwardIPv6(t *testing.T) {
	tp := newTopo(t)
	serveTCP(t, tp.pod, 8080)
	serveUDP(t, tp.pod, 5353)
	conf := tp.conf(t, tp.dualStack(), []map[string]any{pm("tcp", 18080, 8080, ""), pm("udp", 15353, 5353, "")}, nil)
	tp.must(t, "ADD", tp.tag, conf)

	if from := reach(t, tp.host, "tcp", chaintest.HostPort(host6, 18080)); from != host6 {
		t.Errorf("connection to %s reached the pod from %s", host6, from)
	}
	reach(t, tp.host, "udp", chaintest.HostPort(host6, 15353))
	// [::1] cannot be forwarded (no route_localnet for IPv6): it is left
	// to the host's own listener instead of disappearing.
	serveTCPOn(t, tp.host, chaintest.HostPort("::1", 18080))
	if from := reach(t, tp.host, "tcp", chaintest.HostPort("::1", 18080)); from != "::1" {
		t.Errorf("[::1]:18080 was answered for %s, want the host's own listener", from)
	}
	if from := reach(t, tp.out, "tcp", chaintest.HostPort(outHost6, 18080)); from != outPeer6 {
		t.Errorf("outside connection reached the pod from %s, want %s", from, outPeer6)
	}
	reach(t, tp.out, "udp", chaintest.HostPort(outHost6, 15353))
	if from := reach(t, tp.pod, "tcp", chaintest.HostPort(host6, 18080)); from == pod6 {
		t.Errorf("IPv6 hairpin connection was not masqueraded (source %s)", from)
	}
	tp.must(t, "CHECK", tp.tag, conf)
	tp.must(t, "DEL", tp.tag, conf)
	unreachable(t, tp.host, "tcp", chaintest.HostPort(host6, 18080))
	unreachable(t, tp.out, "tcp", chaintest.HostPort(outHost6, 18080))
	tp.noLeaks(t)
}

func TestHostIP(t *testing.T) {
	tp := newTopo(t)
	serveTCP(t, tp.pod, 8080)
	conf := tp.conf(t, tp.dualStack(), []map[string]any{
		pm("tcp", 18080, 8080, host4),
		pm("tcp", 18080, 8080, "::"), // every IPv6 address, no IPv4 one
	}, nil)
	tp.must(t, "ADD", tp.tag, conf)
	reach(t, tp.host, "tcp", chaintest.HostPort(host4, 18080))
	unreachable(t, tp.host, "tcp", chaintest.HostPort("127.0.0.1", 18080))
	unreachable(t, tp.out, "tcp", chaintest.HostPort(outHost4, 18080))
	reach(t, tp.host, "tcp", chaintest.HostPort(host6, 18080))
	reach(t, tp.out, "tcp", chaintest.HostPort(outHost6, 18080))
	tp.must(t, "CHECK", tp.tag, conf)
	tp.must(t, "DEL", tp.tag, conf)
	unreachable(t, tp.host, "tcp", chaintest.HostPort(host4, 18080))
	tp.noLeaks(t)
}

func TestSNATOffAndMasqAll(t *testing.T) {
	tp := newTopo(t)
	serveTCP(t, tp.pod, 8080)
	maps := []map[string]any{pm("tcp", 18080, 8080, "")}

	off := tp.conf(t, tp.dualStack(), maps, map[string]any{"snat": false})
	tp.must(t, "ADD", "off", off)
	if from := reach(t, tp.host, "tcp", chaintest.HostPort(host4, 18080)); from != host4 {
		t.Errorf("snat=false: source %s, want %s", from, host4)
	}
	// Without masquerading, 127.0.0.1 cannot leave the host.
	unreachable(t, tp.host, "tcp", chaintest.HostPort("127.0.0.1", 18080))
	tp.host.Do(t, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		att := nftown.Attachment{Network: tp.tag, ContainerID: "off", IfName: "eth0"}
		if _, err := c.ListChain(&nftables.Table{Name: portmap.TableName, Family: nftables.TableFamilyINet}, att.ChainName("postrouting")); err == nil {
			t.Error("snat=false installed a postrouting chain")
		}
		return nil
	})
	tp.must(t, "CHECK", "off", off)
	tp.must(t, "DEL", "off", off)

	all := tp.conf(t, tp.dualStack(), maps, map[string]any{"masqAll": true})
	tp.must(t, "ADD", "all", all)
	if from := reach(t, tp.out, "tcp", chaintest.HostPort(outHost4, 18080)); from != gw4 {
		t.Errorf("masqAll: outside client seen as %s, want %s", from, gw4)
	}
	if from := reach(t, tp.out, "tcp", chaintest.HostPort(outHost6, 18080)); from != gw6 {
		t.Errorf("masqAll: IPv6 outside client seen as %s, want %s", from, gw6)
	}
	reach(t, tp.host, "tcp", chaintest.HostPort("127.0.0.1", 18080))
	tp.must(t, "CHECK", "all", all)
	tp.must(t, "DEL", "all", all)
	tp.noLeaks(t)
}

func TestConditions(t *testing.T) {
	for _, conds := range [][]string{{"-d", host4}, {"ip daddr " + host4}, {"!", "-d", "127.0.0.0/8"}} {
		t.Run(strings.Join(conds, "_"), func(t *testing.T) {
			tp := newTopo(t)
			serveTCP(t, tp.pod, 8080)
			conf := tp.conf(t, tp.dualStack(), []map[string]any{pm("tcp", 18080, 8080, "")},
				map[string]any{"conditionsV4": conds, "conditionsV6": []string{"-s", "fd00:88::/64"}})
			tp.must(t, "ADD", tp.tag, conf)
			reach(t, tp.host, "tcp", chaintest.HostPort(host4, 18080))
			unreachable(t, tp.host, "tcp", chaintest.HostPort("127.0.0.1", 18080))
			// IPv6: only clients from the outside link.
			reach(t, tp.out, "tcp", chaintest.HostPort(outHost6, 18080))
			unreachable(t, tp.host, "tcp", chaintest.HostPort(host6, 18080))
			tp.must(t, "CHECK", tp.tag, conf)
			tp.must(t, "DEL", tp.tag, conf)
			tp.noLeaks(t)
		})
	}
}

// DEL finds the rules from the attachment alone: with the container's
// netns gone, and with no prevResult or runtimeConfig at all.
func TestDelWithoutNetnsOrPrevResult(t *testing.T) {
	tp := newTopo(t)
	serveTCP(t, tp.pod, 8080)
	maps := []map[string]any{pm("tcp", 18080, 8080, ""), pm("udp", 15353, 5353, "")}
	conf := tp.conf(t, tp.dualStack(), maps, nil)

	tp.must(t, "ADD", "a", conf)
	reach(t, tp.host, "tcp", chaintest.HostPort(host4, 18080))
	tp.must(t, "DEL", "a", tp.conf(t, nil, nil, nil))
	unreachable(t, tp.host, "tcp", chaintest.HostPort(host4, 18080))
	tp.noLeaks(t)

	tp.must(t, "ADD", "b", conf)
	tp.pod.Remove(t)
	tp.must(t, "DEL", "b", tp.conf(t, tp.prevResult(), nil, nil))
	tp.noLeaks(t)
	// A DEL for an attachment that never existed succeeds.
	tp.must(t, "DEL", "never", conf)
}

// A second attachment may not take a host port another one maps: tripod
// refuses instead of letting the later shadow the earlier.
func TestConflict(t *testing.T) {
	tp := newTopo(t)
	serveTCP(t, tp.pod, 8080)
	conf := tp.conf(t, tp.dualStack(), []map[string]any{pm("tcp", 18080, 8080, "")}, nil)
	tp.must(t, "ADD", "first", conf)

	for _, m := range []map[string]any{pm("tcp", 18080, 9090, ""), pm("tcp", 18080, 9090, host4), pm("tcp", 18080, 9090, "::")} {
		r := tp.exec(t, "portmap", "ADD", "second", tp.conf(t, tp.dualStack(), []map[string]any{m}, nil))
		if r.err == nil || r.err.Code != 7 || !strings.Contains(r.err.Msg, "first") || !strings.Contains(r.err.Msg, "18080") {
			t.Fatalf("conflicting ADD %v: %+v, want code 7 naming the port and the first container", m, r.err)
		}
		if err := tp.host.Try(func() error {
			tags, err := portmap.Table().Tags(tp.tag)
			if err != nil {
				return err
			}
			if len(tags) != 1 {
				t.Errorf("failed ADD left rules: %v", tags)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// The first mapping still works; another protocol on the same port or
	// a different port is fine.
	reach(t, tp.host, "tcp", chaintest.HostPort(host4, 18080))
	other := tp.conf(t, tp.dualStack(), []map[string]any{pm("udp", 18080, 5353, ""), pm("tcp", 18081, 8080, "")}, nil)
	tp.must(t, "ADD", "second", other)
	reach(t, tp.host, "tcp", chaintest.HostPort(host4, 18081))

	// Duplicates inside one request are refused too.
	dup := tp.conf(t, tp.dualStack(), []map[string]any{pm("tcp", 18090, 80, "127.0.0.1"), pm("tcp", 18090, 81, "")}, nil)
	if r := tp.exec(t, "portmap", "ADD", "third", dup); r.err == nil || r.err.Code != 7 || !strings.Contains(r.err.Msg, "portMappings[1]") {
		t.Errorf("overlapping entries: %+v, want code 7 naming portMappings[1]", r.err)
	}
	tp.must(t, "DEL", "first", conf)
	tp.must(t, "DEL", "second", other)
	tp.noLeaks(t)
}

func TestGC(t *testing.T) {
	tp := newTopo(t)
	serveTCP(t, tp.pod, 8080)
	a := tp.conf(t, tp.dualStack(), []map[string]any{pm("tcp", 18080, 8080, "")}, nil)
	b := tp.conf(t, tp.dualStack(), []map[string]any{pm("tcp", 18081, 8080, "")}, nil)
	tp.must(t, "ADD", "a", a)
	tp.must(t, "ADD", "b", b)

	gc := tp.conf(t, nil, nil, map[string]any{"cni.dev/valid-attachments": []map[string]string{{"containerID": "a", "ifname": "eth0"}}})
	tp.must(t, "GC", "", gc)
	reach(t, tp.host, "tcp", chaintest.HostPort(host4, 18080))
	unreachable(t, tp.host, "tcp", chaintest.HostPort(host4, 18081))
	tp.must(t, "CHECK", "a", a)
	if r := tp.exec(t, "portmap", "CHECK", "b", b); r.err == nil {
		t.Error("CHECK of the collected attachment succeeded")
	}
	// Another network's GC does not touch this one.
	tp.must(t, "GC", "", strings.Replace(gc, tp.tag, tp.tag+"x", 1))
	reach(t, tp.host, "tcp", chaintest.HostPort(host4, 18080))

	tp.must(t, "GC", "", tp.conf(t, nil, nil, map[string]any{"cni.dev/valid-attachments": []any{}}))
	unreachable(t, tp.host, "tcp", chaintest.HostPort(host4, 18080))
	tp.noLeaks(t)
}

func TestCheckDetectsMissingRules(t *testing.T) {
	tp := newTopo(t)
	conf := tp.conf(t, tp.dualStack(), []map[string]any{pm("tcp", 18080, 8080, ""), pm("udp", 15353, 5353, "")}, nil)
	tp.must(t, "ADD", tp.tag, conf)
	tp.must(t, "CHECK", tp.tag, conf)
	// Someone flushes the attachment's output chain.
	tp.host.Do(t, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		att := nftown.Attachment{Network: tp.tag, ContainerID: tp.tag, IfName: "eth0"}
		tbl := &nftables.Table{Name: portmap.TableName, Family: nftables.TableFamilyINet}
		c.FlushChain(&nftables.Chain{Name: att.ChainName("output"), Table: tbl})
		return c.Flush()
	})
	r := tp.exec(t, "portmap", "CHECK", tp.tag, conf)
	if r.err == nil || r.err.Code != 7 || !strings.Contains(r.err.Msg, "missing") {
		t.Errorf("CHECK with a flushed chain: %+v, want code 7 naming the missing mapping", r.err)
	}
	// A repeated ADD repairs it.
	tp.must(t, "ADD", tp.tag, conf)
	tp.must(t, "CHECK", tp.tag, conf)
	tp.must(t, "DEL", tp.tag, conf)
	tp.noLeaks(t)
}

func TestBadInput(t *testing.T) {
	tp := newTopo(t)
	prev := tp.dualStack()
	cases := []struct {
		name  string
		conf  string
		code  uint
		words []string
	}{
		{"hostPort 0", tp.conf(t, prev, []map[string]any{pm("tcp", 0, 80, "")}, nil), 7, []string{"portMappings[0]", "hostPort"}},
		{"hostPort too big", tp.conf(t, prev, []map[string]any{pm("tcp", 80, 80, ""), pm("tcp", 70000, 80, "")}, nil), 7, []string{"portMappings[1]", "70000"}},
		{"containerPort", tp.conf(t, prev, []map[string]any{pm("tcp", 80, -1, "")}, nil), 7, []string{"containerPort"}},
		{"protocol", tp.conf(t, prev, []map[string]any{pm("icmp", 80, 80, "")}, nil), 7, []string{"portMappings[0]", "icmp"}},
		{"hostIP", tp.conf(t, prev, []map[string]any{pm("tcp", 80, 80, "10.0.0.300")}, nil), 7, []string{"hostIP", "10.0.0.300"}},
		{"hostPort type", `{"cniVersion":"1.1.0","name":"n","type":"portmap","runtimeConfig":{"portMappings":[{"hostPort":"80","containerPort":80}]}}`, 6, []string{"hostPort"}},
		{"markMasqBit", tp.conf(t, prev, nil, map[string]any{"markMasqBit": 32}), 7, []string{"markMasqBit"}},
		{"mark and chain", tp.conf(t, prev, nil, map[string]any{"markMasqBit": 3, "externalSetMarkChain": "KUBE-MARK-MASQ"}), 7, []string{"markMasqBit", "externalSetMarkChain"}},
		{"conditions", tp.conf(t, prev, []map[string]any{pm("tcp", 80, 80, "")}, map[string]any{"conditionsV4": []string{"-m", "addrtype"}}), 2, []string{"conditionsV4", "-m"}},
		{"conditions family", tp.conf(t, prev, []map[string]any{pm("tcp", 80, 80, "")}, map[string]any{"conditionsV6": []string{"-s", "10.0.0.0/8"}}), 7, []string{"conditionsV6", "10.0.0.0/8"}},
		{"no prevResult", tp.conf(t, nil, []map[string]any{pm("tcp", 80, 80, "")}, nil), 7, []string{"prevResult"}},
		{"no container IP", tp.conf(t, tp.prevResult(), []map[string]any{pm("tcp", 80, 80, "")}, nil), 7, []string{"eth0"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := tp.exec(t, "portmap", "ADD", tp.tag, c.conf)
			if r.err == nil {
				t.Fatalf("ADD succeeded")
			}
			if r.err.Code != c.code {
				t.Errorf("code %d (%s), want %d", r.err.Code, r.err.Msg, c.code)
			}
			for _, w := range c.words {
				if !strings.Contains(r.err.Msg, w) {
					t.Errorf("message %q does not name %q", r.err.Msg, w)
				}
			}
		})
	}
	tp.noLeaks(t)
	// DEL does not judge what ADD would refuse: it removes by attachment.
	tp.must(t, "ADD", tp.tag, tp.conf(t, prev, []map[string]any{pm("tcp", 18080, 8080, "")}, nil))
	tp.must(t, "DEL", tp.tag, cases[0].conf)
	tp.noLeaks(t)
	// No mappings: the result is passed on and nothing is installed.
	out := tp.must(t, "ADD", tp.tag, tp.conf(t, prev, nil, nil))
	var r map[string]any
	if err := json.Unmarshal(out, &r); err != nil || r["ips"] == nil {
		t.Errorf("ADD without mappings did not pass prevResult on: %s", out)
	}
	tp.noLeaks(t)
}

// A UDP client that sent to the host port before the mapping existed keeps
// its conntrack entry (no NAT) for as long as it keeps sending: ADD drops
// such entries so that the same socket reaches the container at once.
func TestUDPStaleConntrack(t *testing.T) {
	tp := newTopo(t)
	serveUDP(t, tp.pod, 5353)
	var pc net.PacketConn
	tp.host.Do(t, func() error {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		return err
	})
	defer pc.Close()
	dst := &net.UDPAddr{IP: net.ParseIP("127.0.0.1"), Port: 15353}
	send := func() (string, error) {
		if _, err := pc.WriteTo([]byte("ping"), dst); err != nil {
			return "", err
		}
		buf := make([]byte, 512)
		if err := pc.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			return "", err
		}
		n, _, err := pc.ReadFrom(buf)
		return string(buf[:n]), err
	}
	// With tripod's nat chains already hooked (another container's
	// mapping), the first packet gets a NAT binding to nowhere.
	other := tp.conf(t, tp.dualStack(), []map[string]any{pm("tcp", 18099, 8080, "")}, nil)
	tp.must(t, "ADD", "other", other)
	if got, err := send(); err == nil {
		t.Fatalf("127.0.0.1:15353 answered %q before ADD", got)
	}
	conf := tp.conf(t, tp.dualStack(), []map[string]any{pm("udp", 15353, 5353, "")}, nil)
	tp.must(t, "ADD", tp.tag, conf)
	if got, err := send(); err != nil || !strings.HasPrefix(got, "udp from ") {
		t.Fatalf("same UDP socket after ADD: %q, %v: the stale conntrack entry was kept", got, err)
	}
	tp.must(t, "DEL", tp.tag, conf)
	tp.must(t, "DEL", "other", other)
	tp.noLeaks(t)
}

// The result handed on is prevResult in the config's own version.
func TestConfigVersions(t *testing.T) {
	tp := newTopo(t)
	serveTCP(t, tp.pod, 8080)
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		prev := tp.dualStack()
		prev["cniVersion"] = v
		if v < "1.0.0" {
			for _, ip := range prev["ips"].([]map[string]any) {
				ip["version"] = map[bool]string{true: "4", false: "6"}[!strings.Contains(ip["address"].(string), ":")]
			}
		}
		conf := tp.conf(t, prev, []map[string]any{pm("tcp", 18080, 8080, "")}, map[string]any{"cniVersion": v})
		out := tp.must(t, "ADD", tp.tag, conf)
		var r struct {
			CNIVersion string           `json:"cniVersion"`
			IPs        []map[string]any `json:"ips"`
		}
		if err := json.Unmarshal(out, &r); err != nil || r.CNIVersion != v || len(r.IPs) != 2 {
			t.Errorf("%s: result %s (%v)", v, out, err)
		}
		reach(t, tp.host, "tcp", chaintest.HostPort(host4, 18080))
		if v != "0.3.1" {
			tp.must(t, "CHECK", tp.tag, conf)
		}
		tp.must(t, "DEL", tp.tag, conf)
		tp.noLeaks(t)
	}
}
