package bandwidth_test

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

const (
	hostIP = "192.168.77.1"
	podIP  = "192.168.77.2"
	// limit is the shaped rate of the traffic tests, in bits per second,
	// and burst the bucket, in bits (64 KiB).
	limit = 8_000_000
	burst = 524_288
)

// env is a "host" network namespace, where the plugin runs, and pods
// whose eth0 is the container end of a veth pair with its host end in it.
// Everything the plugin creates (ifbs, qdiscs) is inside the host
// namespace and vanishes with it.
type env struct {
	t    *testing.T
	tag  string
	host *cnitest.Netns
}

type pod struct {
	e      *env
	ns     *cnitest.Netns
	ifName string // in the pod
	hostIf string // in the host namespace
}

func newEnv(t *testing.T) *env {
	t.Helper()
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	return &env{t: t, tag: tag, host: cnitest.NewNetns(t, tag+"H")}
}

// newPod makes a pod namespace (or reuses ns) with ifName linked to the
// host namespace's hostIf, both addressed when ip is set.
func (e *env) newPod(ns *cnitest.Netns, ifName, hostIf string, addressed bool) *pod {
	e.t.Helper()
	if ns == nil {
		ns = cnitest.NewNetns(e.t, e.tag+"P")
	}
	e.host.Do(e.t, func() error {
		f, err := os.Open(ns.Path)
		if err != nil {
			return err
		}
		defer f.Close()
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: ifName, PeerNamespace: netlink.NsFd(int(f.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating veth: %w", err)
		}
		return upWithAddr(hostIf, hostIP, addressed)
	})
	ns.Do(e.t, func() error {
		if err := upWithAddr("lo", "", false); err != nil {
			return err
		}
		return upWithAddr(ifName, podIP, addressed)
	})
	return &pod{e: e, ns: ns, ifName: ifName, hostIf: hostIf}
}

func upWithAddr(name, ip string, addressed bool) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if addressed {
		a, _ := netlink.ParseAddr(ip + "/24")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
	}
	return netlink.LinkSetUp(l)
}

// stdin is a bandwidth config with a hand-built prevResult naming the
// host end and the pod end, as ptp or bridge would hand it over. fields
// are extra JSON members, each followed by a comma.
func (p *pod) stdin(version, network, fields string) string {
	prev := fmt.Sprintf(`{"cniVersion":%q,"interfaces":[{"name":%q},{"name":%q,"sandbox":%q}],"ips":[{%s"address":"%s/24","interface":1}]}`,
		version, p.hostIf, p.ifName, p.ns.Path, ipVersionField(version), podIP)
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"bandwidth",%s"prevResult":%s}`, version, network, fields, prev)
}

func ipVersionField(v string) string {
	if strings.HasPrefix(v, "0.") {
		return `"version":"4",`
	}
	return ""
}

// run executes the plugin inside the host namespace: a child process
// inherits the namespace of the thread that starts it.
func (e *env) run(cmd, containerID, netns, ifName, stdin string) cnitest.ExecResult {
	e.t.Helper()
	c := exec.Command(filepath.Join(cnitest.BinDir(e.t), "bandwidth"))
	c.Env = []string{"PATH=" + os.Getenv("PATH"), "CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + containerID,
		"CNI_NETNS=" + netns, "CNI_IFNAME=" + ifName, "CNI_PATH=" + cnitest.BinDir(e.t)}
	c.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	var runErr error
	e.host.Do(e.t, func() error {
		runErr = c.Run()
		return nil
	})
	r := cnitest.ExecResult{Stdout: out.Bytes(), Stderr: errb.Bytes()}
	if runErr != nil {
		ee, ok := runErr.(*exec.ExitError)
		if !ok {
			e.t.Fatalf("running bandwidth: %v", runErr)
		}
		r.Exit = ee.ExitCode()
		r.Err = &types.Error{}
		if err := json.Unmarshal(out.Bytes(), r.Err); err != nil {
			e.t.Fatalf("bandwidth exited %d without a JSON error: %q (stderr %q)", r.Exit, out.String(), errb.String())
		}
	}
	return r
}

// with returns p reporting to the subtest t.
func (p *pod) with(t *testing.T) *pod {
	e := *p.e
	e.t = t
	c := *p
	c.e = &e
	return &c
}

func (p *pod) ok(cmd, stdin string) cnitest.ExecResult {
	p.e.t.Helper()
	r := p.e.run(cmd, p.e.tag+p.ifName, p.ns.Path, p.ifName, stdin)
	if r.Err != nil {
		p.e.t.Fatalf("%s: code %d: %s", cmd, r.Err.Code, r.Err.Msg)
	}
	return r
}

func (p *pod) fails(cmd, stdin string, code uint, want string) {
	p.e.t.Helper()
	r := p.e.run(cmd, p.e.tag+p.ifName, p.ns.Path, p.ifName, stdin)
	if r.Err == nil {
		p.e.t.Fatalf("%s succeeded, want code %d (%s)", cmd, code, want)
	}
	if r.Err.Code != code || !strings.Contains(r.Err.Msg, want) {
		p.e.t.Fatalf("%s: got code %d %q, want code %d mentioning %q", cmd, r.Err.Code, r.Err.Msg, code, want)
	}
}

// shaping is what the test can see of the plugin's work in the host
// namespace.
type shaping struct {
	rootTbf *netlink.Tbf   // root qdisc of the host veth, if a tbf
	ingress bool           // the host veth has an ingress qdisc
	mirred  int            // ifindex its filter redirects to, if any
	ifbs    []netlink.Link // every ifb in the host namespace
}

func (e *env) shaping(hostIf string) shaping {
	e.t.Helper()
	var s shaping
	e.host.Do(e.t, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Type() == "ifb" {
				s.ifbs = append(s.ifbs, l)
			}
		}
		l, err := netlink.LinkByName(hostIf)
		if err != nil {
			return nil // gone with its pod
		}
		qs, err := netlink.QdiscList(l)
		if err != nil {
			return err
		}
		for _, q := range qs {
			switch q := q.(type) {
			case *netlink.Tbf:
				if q.Parent == netlink.HANDLE_ROOT {
					s.rootTbf = q
				}
			case *netlink.Ingress:
				s.ingress = true
			}
		}
		if !s.ingress {
			return nil
		}
		fs, err := netlink.FilterList(l, netlink.MakeHandle(0xffff, 0))
		if err != nil {
			return err
		}
		for _, f := range fs {
			if u, ok := f.(*netlink.U32); ok {
				for _, a := range u.Actions {
					if m, ok := a.(*netlink.MirredAction); ok {
						s.mirred = m.Ifindex
					}
				}
			}
		}
		return nil
	})
	return s
}

// qdiscOf returns the root qdisc of a link in the host namespace.
func (e *env) rootQdisc(name string) netlink.Qdisc {
	e.t.Helper()
	var root netlink.Qdisc
	e.host.Do(e.t, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		qs, err := netlink.QdiscList(l)
		for _, q := range qs {
			if q.Attrs().Parent == netlink.HANDLE_ROOT {
				root = q
			}
		}
		return err
	})
	return root
}

// clean asserts that nothing of the plugin's is left on hostIf and that no
// ifb is left in the host namespace.
func (e *env) clean(hostIf string) {
	e.t.Helper()
	s := e.shaping(hostIf)
	if s.rootTbf != nil || s.ingress || len(s.ifbs) > 0 {
		e.t.Errorf("leaked shaping on %s: root tbf %v, ingress qdisc %v, ifbs %d", hostIf, s.rootTbf != nil, s.ingress, len(s.ifbs))
	}
	cnitest.NoLinks(e.t, e.tag)
}

func resultIfb(t *testing.T, stdout []byte) *current.Interface {
	t.Helper()
	res := &current.Result{}
	if err := json.Unmarshal(stdout, res); err != nil {
		t.Fatalf("decoding result: %v\n%s", err, stdout)
	}
	for _, i := range res.Interfaces {
		if strings.HasPrefix(i.Name, "bwp") {
			return i
		}
	}
	return nil
}

// throughput streams TCP for d across the veth pair, to the pod or from
// it, and returns what the receiver got in bits per second. The listener
// is in the pod, the dialer in the host namespace.
func (p *pod) throughput(toPod bool, d time.Duration) float64 {
	t := p.e.t
	t.Helper()
	var ln net.Listener
	p.ns.Do(t, func() (err error) {
		ln, err = net.Listen("tcp", podIP+":0")
		return err
	})
	defer ln.Close()
	var hostConn net.Conn
	p.e.host.Do(t, func() (err error) {
		hostConn, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	})
	podConn, err := ln.Accept()
	if err != nil {
		hostConn.Close()
		t.Fatal(err)
	}
	send, recv := podConn, hostConn
	if toPod {
		send, recv = hostConn, podConn
	}
	defer send.Close()
	defer recv.Close()
	go func() {
		buf := make([]byte, 64<<10)
		_ = send.SetWriteDeadline(time.Now().Add(d))
		for {
			if _, err := send.Write(buf); err != nil {
				break
			}
		}
		send.Close()
	}()
	_ = recv.SetReadDeadline(time.Now().Add(d + 10*time.Second))
	start := time.Now()
	n, _ := io.Copy(io.Discard, recv)
	return float64(n) * 8 / time.Since(start).Seconds()
}

const both = `"ingressRate":%d,"ingressBurst":%d,"egressRate":%d,"egressBurst":%d,`

// TestShapingLimitsThroughput measures real TCP traffic both ways before,
// during and after shaping.
func TestShapingLimitsThroughput(t *testing.T) {
	e := newEnv(t)
	p := e.newPod(nil, "eth0", e.tag+"h", true)
	baseDown, baseUp := p.throughput(true, 500*time.Millisecond), p.throughput(false, 500*time.Millisecond)
	t.Logf("unshaped: to the pod %.0f Mbit/s, from it %.0f Mbit/s", baseDown/1e6, baseUp/1e6)
	if baseDown < 5*limit || baseUp < 5*limit {
		t.Skipf("skipped: the unshaped veth carries only %.1f/%.1f Mbit/s here, too little to tell a %d Mbit/s limit apart", baseDown/1e6, baseUp/1e6, limit/1_000_000)
	}

	stdin := p.stdin("1.0.0", e.tag, fmt.Sprintf(both, limit, burst, limit, burst))
	r := p.ok("ADD", stdin)
	ifb := resultIfb(t, r.Stdout)
	if ifb == nil || ifb.Sandbox != "" || ifb.Mac == "" {
		t.Fatalf("the result does not list the ifb: %s", r.Stdout)
	}
	p.ok("CHECK", stdin)

	down, up := p.throughput(true, 2*time.Second), p.throughput(false, 2*time.Second)
	t.Logf("shaped to %d Mbit/s: to the pod %.2f Mbit/s, from it %.2f Mbit/s", limit/1_000_000, down/1e6, up/1e6)
	for dir, got := range map[string]float64{"to the pod": down, "from the pod": up} {
		if got < 0.5*limit || got > 1.3*limit {
			t.Errorf("traffic %s ran at %.2f Mbit/s, want about %d Mbit/s", dir, got/1e6, limit/1_000_000)
		}
	}

	p.ok("DEL", stdin)
	e.clean(p.hostIf)
	if after := p.throughput(true, 300*time.Millisecond); after < 5*limit {
		t.Errorf("after DEL traffic to the pod still runs at only %.2f Mbit/s", after/1e6)
	}
	p.ok("DEL", stdin)
}

// TestLifecycle checks the qdiscs, the ifb and its redirect for each
// direction and spec version, that CHECK sees them drift, and that DEL
// removes them.
func TestLifecycle(t *testing.T) {
	cases := []struct {
		name, version, fields string
		ingress, egress       bool
	}{
		{"ingress 0.3.1", "0.3.1", `"ingressRate":16000000,"ingressBurst":800000,`, true, false},
		{"egress 0.4.0", "0.4.0", `"egressRate":24000000,"egressBurst":800000,`, false, true},
		{"both 1.0.0", "1.0.0", fmt.Sprintf(both, 16_000_000, 800_000, 24_000_000, 800_000), true, true},
		{"runtimeConfig 1.1.0", "1.1.0", `"ingressRate":1000000,"ingressBurst":800000,"runtimeConfig":{"bandwidth":{"ingressRate":16000000,"ingressBurst":800000,"egressRate":24000000,"egressBurst":800000}},`, true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			p := e.newPod(nil, "eth0", e.tag+"h", false)
			stdin := p.stdin(c.version, e.tag, c.fields)
			r := p.ok("ADD", stdin)
			check := func() *netlink.Tbf {
				s := e.shaping(p.hostIf)
				if c.ingress != (s.rootTbf != nil) {
					t.Fatalf("root tbf on the host veth: %v, want %v", s.rootTbf != nil, c.ingress)
				}
				if c.ingress && s.rootTbf.Rate != 2_000_000 {
					t.Errorf("ingress tbf rate %d B/s, want 2000000", s.rootTbf.Rate)
				}
				if !c.egress {
					if s.ingress || len(s.ifbs) > 0 {
						t.Errorf("ingress-only shaping made an ingress qdisc (%v) or ifbs (%d)", s.ingress, len(s.ifbs))
					}
					return nil
				}
				if len(s.ifbs) != 1 || s.mirred != s.ifbs[0].Attrs().Index {
					t.Fatalf("want one ifb that the host veth redirects to: ifbs %d, redirect to %d", len(s.ifbs), s.mirred)
				}
				ifb := s.ifbs[0].Attrs()
				if ifb.Flags&net.FlagUp == 0 || ifb.MTU != 1500 || !strings.HasPrefix(ifb.Alias, "tripod-bandwidth ") {
					t.Errorf("ifb %s: up %v, MTU %d, alias %q", ifb.Name, ifb.Flags&net.FlagUp != 0, ifb.MTU, ifb.Alias)
				}
				q, ok := e.rootQdisc(ifb.Name).(*netlink.Tbf)
				if !ok || q.Rate != 3_000_000 {
					t.Fatalf("ifb root qdisc %+v, want a tbf at 3000000 B/s", q)
				}
				return q
			}
			ifbTbf := check()
			if ifb := resultIfb(t, r.Stdout); c.egress != (ifb != nil) {
				t.Errorf("result lists an ifb: %v, want %v (%s)", ifb != nil, c.egress, r.Stdout)
			}
			if c.version != "0.3.1" {
				p.ok("CHECK", stdin)
			}
			// A repeated ADD replaces rather than duplicates.
			p.ok("ADD", stdin)
			check()

			if c.version != "0.3.1" {
				if c.ingress {
					e.host.Do(t, func() error { return netlink.QdiscDel(e.shaping(p.hostIf).rootTbf) })
					p.fails("CHECK", stdin, 7, "has no tbf root qdisc")
				}
				if c.egress {
					e.host.Do(t, func() error { return netlink.QdiscDel(ifbTbf) })
					p.fails("CHECK", stdin, 7, "has no tbf root qdisc")
				}
			}
			p.ok("DEL", stdin)
			e.clean(p.hostIf)
			p.ok("DEL", stdin)
		})
	}
}

// TestCheckSeesChangedParameters: CHECK compares the token buckets with
// the configured rate.
func TestCheckSeesChangedParameters(t *testing.T) {
	e := newEnv(t)
	p := e.newPod(nil, "eth0", e.tag+"h", false)
	p.ok("ADD", p.stdin("1.0.0", e.tag, fmt.Sprintf(both, limit, burst, limit, burst)))
	p.fails("CHECK", p.stdin("1.0.0", e.tag, fmt.Sprintf(both, 2*limit, burst, limit, burst)), 7, "has rate 1000000 B/s")
	p.fails("CHECK", p.stdin("1.0.0", e.tag, fmt.Sprintf(both, limit, burst, limit, 2*burst)), 7, "configured rate 1000000 B/s")
	stdin := p.stdin("1.0.0", e.tag, fmt.Sprintf(both, limit, burst, limit, burst))
	p.ok("CHECK", stdin)
	p.ok("DEL", stdin)
	e.clean(p.hostIf)
}

// TestBadConfig: bad settings get the right code and a message naming
// them, and leave nothing behind.
func TestBadConfig(t *testing.T) {
	e := newEnv(t)
	p := e.newPod(nil, "eth0", e.tag+"h", false)
	cases := []struct {
		name, fields string
		code         uint
		want         string
	}{
		{"negative rate", `"ingressRate":-1,"ingressBurst":524288,`, 7, "ingressRate -1 is negative"},
		{"fractional rate", `"egressRate":1000.5,"egressBurst":524288,`, 7, "egressRate 1000.5 is not a whole number"},
		{"burst without rate", `"egressBurst":524288,`, 7, "egressBurst is 524288 but egressRate is not set"},
		{"zero rate with burst", `"ingressRate":0,"ingressBurst":524288,`, 7, "ingressBurst is 524288 but ingressRate is not set"},
		{"rate without burst", `"ingressRate":8000000,`, 7, "ingressRate is 8000000 but ingressBurst is not set"},
		{"rate too small", `"ingressRate":4,"ingressBurst":524288,`, 7, "ingressRate 4 is below 8 bits per second"},
		{"burst too big", `"ingressRate":8000000,"ingressBurst":34359738368,`, 7, "ingressBurst 34359738368 is 4 GiB or more"},
		{"burst below MTU", `"ingressRate":8000000,"ingressBurst":524288,"egressRate":8000000,"egressBurst":8000,`, 7, "egressBurst 8000 bits is less than one full-size packet on " + p.hostIf},
		{"bad runtime rate", `"runtimeConfig":{"bandwidth":{"egressRate":-5,"egressBurst":524288}},`, 7, "runtimeConfig.bandwidth.egressRate -5 is negative"},
		{"unshapedSubnets", `"ingressRate":8000000,"ingressBurst":524288,"unshapedSubnets":["10.0.0.0/8"],`, 2, "unshapedSubnets is not supported"},
		{"shapedSubnets", `"runtimeConfig":{"bandwidth":{"shapedSubnets":["10.0.0.0/8"]}},`, 2, "runtimeConfig.bandwidth.shapedSubnets is not supported"},
		{"rate not a number", `"ingressRate":"fast","ingressBurst":524288,`, 6, `field "ingressRate": expected uint64, got JSON string`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := p.with(t)
			p.fails("ADD", p.stdin("1.0.0", e.tag, c.fields), c.code, c.want)
			p.e.clean(p.hostIf)
		})
	}
	t.Run("no prevResult", func(t *testing.T) {
		p := p.with(t)
		p.fails("ADD", fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"type":"bandwidth",`+both[:len(both)-1]+`}`, e.tag, limit, burst, limit, burst), 7, "no prevResult")
	})
	t.Run("host end not in prevResult", func(t *testing.T) {
		p := p.with(t)
		stdin := strings.Replace(p.stdin("1.0.0", e.tag, fmt.Sprintf(both, limit, burst, limit, burst)), `{"name":"`+p.hostIf+`"},`, "", 1)
		p.fails("ADD", stdin, 7, "prevResult does not list "+p.hostIf)
		p.e.clean(p.hostIf)
	})
	t.Run("not a veth", func(t *testing.T) {
		lo := p.with(t)
		lo.ifName = "lo"
		lo.fails("ADD", lo.stdin("1.0.0", e.tag, fmt.Sprintf(both, limit, burst, limit, burst)), 7, "lo is a device link")
		lo.e.clean(p.hostIf)
	})
	t.Run("no such interface", func(t *testing.T) {
		none := p.with(t)
		none.ifName = "eth7"
		none.fails("ADD", none.stdin("1.0.0", e.tag, fmt.Sprintf(both, limit, burst, limit, burst)), 4, "interface eth7 (CNI_IFNAME) does not exist")
	})
	// The attachment works with a good config afterwards.
	stdin := p.stdin("1.0.0", e.tag, fmt.Sprintf(both, limit, burst, limit, burst))
	p.ok("ADD", stdin)
	p.ok("DEL", stdin)
	e.clean(p.hostIf)
}

// TestFailedAddUndoes: when the ifb cannot be made (its name is taken by
// a link that is not this attachment's), the token bucket already put on
// the host veth is removed again and the other link is left alone.
func TestFailedAddUndoes(t *testing.T) {
	e := newEnv(t)
	p := e.newPod(nil, "eth0", e.tag+"h", false)
	stdin := p.stdin("1.0.0", e.tag, fmt.Sprintf(both, limit, burst, limit, burst))
	ifb := resultIfb(t, p.ok("ADD", stdin).Stdout)
	p.ok("DEL", stdin)
	e.host.Do(t, func() error {
		return netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: ifb.Name, TxQLen: -1}})
	})

	p.fails("ADD", stdin, 103, "already exists and is not this attachment's ifb")
	s := e.shaping(p.hostIf)
	if s.rootTbf != nil || s.ingress {
		t.Errorf("the failed ADD left a root tbf (%v) or an ingress qdisc (%v)", s.rootTbf != nil, s.ingress)
	}
	if len(s.ifbs) != 1 || s.ifbs[0].Attrs().Name != ifb.Name {
		t.Fatalf("the other link was touched: %d ifbs", len(s.ifbs))
	}
	e.host.Do(t, func() error { return netlink.LinkDel(s.ifbs[0]) })
	p.ok("ADD", stdin)
	p.ok("DEL", stdin)
	e.clean(p.hostIf)
}

// TestDelWithoutNetns: DEL finds the ifb by name and the host veth from
// the ifb's record, both when the runtime passes no namespace and when
// the namespace is gone.
func TestDelWithoutNetns(t *testing.T) {
	e := newEnv(t)
	p := e.newPod(nil, "eth0", e.tag+"h", false)
	stdin := p.stdin("1.0.0", e.tag, fmt.Sprintf(both, limit, burst, limit, burst))
	p.ok("ADD", stdin)
	if r := e.run("DEL", e.tag+p.ifName, "", p.ifName, stdin); r.Err != nil {
		t.Fatalf("DEL without CNI_NETNS: %+v", r.Err)
	}
	e.clean(p.hostIf)

	p.ok("ADD", stdin)
	p.ns.Remove(t)
	if r := e.run("DEL", e.tag+p.ifName, p.ns.Path, p.ifName, stdin); r.Err != nil {
		t.Fatalf("DEL with the netns gone: %+v", r.Err)
	}
	if s := e.shaping(p.hostIf); len(s.ifbs) > 0 {
		t.Errorf("%d ifbs left", len(s.ifbs))
	}
	// DEL of an attachment that never existed.
	if r := e.run("DEL", "never", p.ns.Path, p.ifName, stdin); r.Err != nil {
		t.Fatalf("DEL of an unknown attachment: %+v", r.Err)
	}
}

// TestDelRemovesReferenceIfb: an ifb the reference plugin made for the
// container (named from network and container ID) goes on DEL too.
func TestDelRemovesReferenceIfb(t *testing.T) {
	e := newEnv(t)
	p := e.newPod(nil, "eth0", e.tag+"h", false)
	id := e.tag + p.ifName
	h := sha512.Sum512([]byte(e.tag + id))
	legacy := "bwp" + hex.EncodeToString(h[:])[:12]
	e.host.Do(t, func() error {
		return netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: legacy, TxQLen: -1}})
	})
	p.ok("DEL", p.stdin("1.0.0", e.tag, ""))
	e.clean(p.hostIf)
}

// TestGC removes the ifbs and redirects of this network's attachments not
// listed as valid, and nothing of other attachments or networks.
func TestGC(t *testing.T) {
	e := newEnv(t)
	keep := e.newPod(nil, "eth0", e.tag+"h0", false)
	stale := e.newPod(keep.ns, "eth1", e.tag+"h1", false)
	other := e.newPod(keep.ns, "eth2", e.tag+"h2", false)
	netA, netB := e.tag+"a", e.tag+"b"
	fields := fmt.Sprintf(both, limit, burst, limit, burst)
	ifbs := map[*pod]string{}
	for p, n := range map[*pod]string{keep: netA, stale: netA, other: netB} {
		ifbs[p] = resultIfb(t, p.ok("ADD", p.stdin("1.1.0", n, fields)).Stdout).Name
	}
	gc := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"type":"bandwidth","cni.dev/valid-attachments":[{"containerID":%q,"ifname":"eth0"}]}`, netA, e.tag+"eth0")
	if r := e.run("GC", "", "", "", gc); r.Err != nil {
		t.Fatalf("GC: %+v", r.Err)
	}
	names := map[string]bool{}
	for _, l := range e.shaping(keep.hostIf).ifbs {
		names[l.Attrs().Name] = true
	}
	if !names[ifbs[keep]] || names[ifbs[stale]] || !names[ifbs[other]] {
		t.Errorf("after GC: keep %v, stale %v, other %v; want true, false, true", names[ifbs[keep]], names[ifbs[stale]], names[ifbs[other]])
	}
	if s := e.shaping(stale.hostIf); s.rootTbf != nil || s.ingress {
		t.Errorf("GC left shaping on %s: root tbf %v, ingress %v", stale.hostIf, s.rootTbf != nil, s.ingress)
	}
	for _, p := range []*pod{keep, other} {
		if s := e.shaping(p.hostIf); s.rootTbf == nil || !s.ingress {
			t.Errorf("GC removed shaping of %s", p.hostIf)
		}
	}
	keep.ok("DEL", keep.stdin("1.1.0", netA, fields))
	other.ok("DEL", other.stdin("1.1.0", netB, fields))
	for _, p := range []*pod{keep, stale, other} {
		e.clean(p.hostIf)
	}
}

// TestThroughLibcni chains bandwidth after a stand-in main plugin (a
// script printing the pod's veth pair, as ptp would) and drives it as a
// runtime does: the limits come from the bandwidth capability, the cached
// result feeds CHECK and DEL, and GC collects what no attachment holds.
func TestThroughLibcni(t *testing.T) {
	e := newEnv(t)
	p := e.newPod(nil, "eth0", e.tag+"h", false)
	dir := t.TempDir()
	script := fmt.Sprintf(`#!/bin/sh
case "$CNI_COMMAND" in
ADD) echo '{"cniVersion":"1.1.0","interfaces":[{"name":"%s"},{"name":"eth0","sandbox":"%s"}],"ips":[{"address":"%s/24","interface":1}]}' ;;
VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}' ;;
esac
`, p.hostIf, p.ns.Path, podIP)
	if err := os.WriteFile(filepath.Join(dir, e.tag+"main"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	r := cnitest.NewRunner(t, dir)
	list := cnitest.ConfList(t, fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":%q},`+
		`{"type":"bandwidth","capabilities":{"bandwidth":true}}]}`, e.tag, e.tag+"main"))
	rt := cnitest.RuntimeConf(e.tag, p.ns.Path, "eth0")
	rt.CapabilityArgs = map[string]any{"bandwidth": map[string]any{
		"ingressRate": 16_000_000, "ingressBurst": 800_000, "egressRate": 24_000_000, "egressBurst": 800_000}}
	ctx := t.Context()

	// libcni runs the plugins from this thread, hence in the host namespace.
	e.host.Do(t, func() error {
		res, err := r.CNI.AddNetworkList(ctx, list, rt)
		if err != nil {
			return fmt.Errorf("ADD: %w", err)
		}
		cur, err := current.NewResultFromResult(res)
		if err != nil {
			return err
		}
		if len(cur.Interfaces) != 3 || !strings.HasPrefix(cur.Interfaces[2].Name, "bwp") {
			return fmt.Errorf("the result does not end with the ifb: %+v", cur.Interfaces)
		}
		return nil
	})
	s := e.shaping(p.hostIf)
	if s.rootTbf == nil || s.rootTbf.Rate != 2_000_000 || len(s.ifbs) != 1 || s.mirred != s.ifbs[0].Attrs().Index {
		t.Fatalf("capability limits not applied: root tbf %+v, ifbs %d, redirect to %d", s.rootTbf, len(s.ifbs), s.mirred)
	}
	if q, ok := e.rootQdisc(s.ifbs[0].Attrs().Name).(*netlink.Tbf); !ok || q.Rate != 3_000_000 {
		t.Fatalf("ifb root qdisc %+v, want a tbf at 3000000 B/s", q)
	}
	e.host.Do(t, func() error {
		if err := r.CNI.CheckNetworkList(ctx, list, rt); err != nil {
			return fmt.Errorf("CHECK: %w", err)
		}
		// No attachment is valid any more: GC takes the ifb and the
		// redirect; DEL then has nothing left but still succeeds.
		if err := r.CNI.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}); err != nil {
			return fmt.Errorf("GC: %w", err)
		}
		return nil
	})
	if s := e.shaping(p.hostIf); len(s.ifbs) > 0 || s.ingress || s.rootTbf != nil {
		t.Errorf("GC left ifbs %d, ingress qdisc %v, root tbf %v", len(s.ifbs), s.ingress, s.rootTbf != nil)
	}
	e.host.Do(t, func() error { return r.CNI.DelNetworkList(ctx, list, rt) })
	e.clean(p.hostIf)
}

// TestHighRateAndHugeBurst: a rate past 32 bits of bytes per second and a
// burst past what the kernel keeps (Kubernetes' default of 2^31-1 bits at
// a low rate) are installed, read back equal by CHECK, and removed.
func TestHighRateAndHugeBurst(t *testing.T) {
	e := newEnv(t)
	p := e.newPod(nil, "eth0", e.tag+"h", false)
	stdin := p.stdin("1.0.0", e.tag, fmt.Sprintf(both, 40_000_000_000, 8_000_000, 1_000_000, 2147483647))
	p.ok("ADD", stdin)
	if s := e.shaping(p.hostIf); s.rootTbf == nil || s.rootTbf.Rate != 5_000_000_000 {
		t.Fatalf("root tbf %+v, want 5000000000 B/s", s.rootTbf)
	}
	p.ok("CHECK", stdin)
	p.ok("DEL", stdin)
	e.clean(p.hostIf)
}
