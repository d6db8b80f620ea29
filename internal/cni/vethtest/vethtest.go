// Package vethtest is the test harness shared by the veth-based plugins
// (bridge, ptp): a "host" network namespace of the test's own, so that the
// bridges, host routes and NAT tables the plugins make are private to the
// test, with libcni run from inside it, and pods as further namespaces.
package vethtest

import (
	"context"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/masq"
	"github.com/tripod-dev/tripod/internal/cni/nftown"
)

// Env is one test's host namespace, libcni runner and IPAM data directory.
type Env struct {
	T       testing.TB
	Tag     string
	Host    *cnitest.Netns
	Runner  *cnitest.Runner
	DataDir string
}

// New makes the environment; everything in it goes when the test ends.
func New(t testing.TB) *Env {
	t.Helper()
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	e := &Env{T: t, Tag: tag, Host: cnitest.NewNetns(t, tag+"host"), Runner: cnitest.NewRunner(t), DataDir: t.TempDir()}
	e.In(func() {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			t.Fatalf("bringing lo up in the host namespace: %v", err)
		}
	})
	return e
}

// In runs fn on a thread inside the host namespace. Plugins that libcni
// execs from fn inherit the namespace. fn may fail the test (t.Fatal):
// its goroutine ends and the test stops here.
func (e *Env) In(fn func()) {
	e.T.Helper()
	f, err := os.Open(e.Host.Path)
	if err != nil {
		e.T.Fatal(err)
	}
	defer f.Close()
	done := make(chan bool, 1)
	go func() {
		finished := false
		defer func() { done <- finished }()
		// Never unlocked: the thread dies with the goroutine rather than
		// serving others from inside the namespace.
		runtime.LockOSThread()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			e.T.Errorf("entering the host namespace: %v", err)
			return
		}
		fn()
		finished = true
	}()
	if !<-done {
		e.T.FailNow()
	}
}

// Pod makes a pod namespace named after the test.
func (e *Env) Pod(name string) *cnitest.Netns {
	return cnitest.NewNetns(e.T, e.Tag+name)
}

// OutsideAddr answers in the namespace Outside makes.
const OutsideAddr = "192.168.77.2"

// Outside connects the host namespace (call it inside In) to a further
// namespace holding OutsideAddr, which has no route back to any pod
// network: only masqueraded traffic gets answers.
func (e *Env) Outside() *cnitest.Netns {
	e.T.Helper()
	o := e.Pod("o")
	f, err := os.Open(o.Path)
	if err != nil {
		e.T.Fatal(err)
	}
	defer f.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = e.Tag + "o"
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(f.Fd())}); err != nil {
		e.T.Fatal(err)
	}
	up := func(name, cidr string) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		ip, n, _ := net.ParseCIDR(cidr)
		n.IP = ip
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: n}); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	}
	if err := up(e.Tag+"o", "192.168.77.1/24"); err != nil {
		e.T.Fatal(err)
	}
	o.Do(e.T, func() error { return up("eth0", OutsideAddr+"/24") })
	return o
}

// ConfList parses a config list, with every "TAG" replaced by the test's
// tag and every "DATADIR" by its IPAM data directory.
func (e *Env) ConfList(js string) *libcni.NetworkConfigList {
	e.T.Helper()
	js = strings.ReplaceAll(strings.ReplaceAll(js, "TAG", e.Tag), "DATADIR", e.DataDir)
	return cnitest.ConfList(e.T, js)
}

// Add runs ADD through libcni (call it inside In) and fails the test on an
// error.
func (e *Env) Add(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) *current.Result {
	e.T.Helper()
	res, err := e.Runner.CNI.AddNetworkList(context.Background(), list, rt)
	if err != nil {
		e.T.Fatalf("ADD %s/%s: %v", rt.ContainerID, rt.IfName, err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		e.T.Fatalf("converting the result: %v", err)
	}
	return cur
}

// Del runs DEL through libcni and fails the test on an error.
func (e *Env) Del(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) {
	e.T.Helper()
	if err := e.Runner.CNI.DelNetworkList(context.Background(), list, rt); err != nil {
		e.T.Fatalf("DEL %s/%s: %v", rt.ContainerID, rt.IfName, err)
	}
}

// Code returns the CNI error code of err, failing the test when err is
// nil or carries no code.
func Code(t testing.TB, err error) uint {
	t.Helper()
	if err == nil {
		t.Fatal("expected an error, got success")
	}
	c := cnierr.Code(err)
	if c == 0 {
		t.Fatalf("error without a CNI code: %v", err)
	}
	return c
}

// WantCode fails the test unless err carries code.
func WantCode(t testing.TB, err error, code uint) {
	t.Helper()
	if c := Code(t, err); c != code {
		t.Fatalf("error code %d, want %d: %v", c, code, err)
	}
}

// NoLeaks checks, inside the host namespace, that no veth, no masquerade
// chain of the networks, and no IPAM reservation is left.
func (e *Env) NoLeaks(networks []string, tables ...nftown.Table) {
	e.T.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		e.T.Fatal(err)
	}
	for _, l := range links {
		if l.Type() == "veth" && strings.HasPrefix(l.Attrs().Name, "veth") {
			e.T.Errorf("leaked host veth %s", l.Attrs().Name)
		}
	}
	for _, n := range networks {
		for _, tbl := range append([]nftown.Table{masq.Table()}, tables...) {
			cnitest.NoChains(e.T, tbl, n)
		}
		// And in any table at all.
		if err := cnitest.NoNetworkChains(n); err != nil {
			e.T.Error(err)
		}
	}
	cnitest.EmptyDir(e.T, e.DataDir, "lock", "last_reserved_ip.0", "last_reserved_ip.1", "last_reserved_ip.2")
}

// PodEmpty fails the test if the pod has any link but lo.
func PodEmpty(t testing.TB, pod *cnitest.Netns) {
	t.Helper()
	pod.OnlyLo(t)
}

// NoPing fails the test if a single ping from pod to addr is answered.
func NoPing(t testing.TB, pod *cnitest.Netns, addr string) {
	t.Helper()
	if out, err := pod.Exec(context.Background(), "ping", "-c", "1", "-W", "1", addr); err == nil {
		t.Fatalf("ping %s from %s was answered, want no answer:\n%s", addr, pod.Name, out)
	}
}

// Addrs returns the global addresses of the link called name in pod.
func Addrs(t testing.TB, pod *cnitest.Netns, name string) []string {
	t.Helper()
	var out []string
	pod.Do(t, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		for _, a := range addrs {
			if !a.IP.IsLinkLocalUnicast() {
				out = append(out, a.IPNet.String())
			}
		}
		return err
	})
	return out
}

// IP returns the address of the family (v4 or not) in res.
func IP(t testing.TB, res *current.Result, v4 bool) string {
	t.Helper()
	for _, ip := range res.IPs {
		if (ip.Address.IP.To4() != nil) == v4 {
			return ip.Address.IP.String()
		}
	}
	t.Fatalf("result has no IPv%s address: %v", map[bool]string{true: "4", false: "6"}[v4], res)
	return ""
}

// Versions are the result versions every lifecycle test covers.
var Versions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// GC runs GC through libcni keeping the attachments given as
// containerID/ifname.
func (e *Env) GC(list *libcni.NetworkConfigList, keep ...string) {
	e.T.Helper()
	args := &libcni.GCArgs{}
	for _, k := range keep {
		id, ifname, _ := strings.Cut(k, "/")
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: id, IfName: ifname})
	}
	if err := e.Runner.CNI.GCNetworkList(context.Background(), list, args); err != nil {
		e.T.Fatalf("GC: %v", err)
	}
}

// BenchAddDel times ADD and DEL of list for rt through libcni (the plugin
// exec'd, as a runtime does) from inside the host namespace, reports each
// verb's mean (add-ms, del-ms), and checks that nothing of the network
// (nor of tables) leaked.
func (e *Env) BenchAddDel(b *testing.B, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf, tables ...nftown.Table) {
	var add, del time.Duration
	e.In(func() {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			if _, err := e.Runner.CNI.AddNetworkList(context.Background(), list, rt); err != nil {
				b.Fatalf("ADD: %v", err)
			}
			t1 := time.Now()
			if err := e.Runner.CNI.DelNetworkList(context.Background(), list, rt); err != nil {
				b.Fatalf("DEL: %v", err)
			}
			add += t1.Sub(t0)
			del += time.Since(t1)
		}
		b.StopTimer()
		e.NoLeaks([]string{e.Tag}, tables...)
	})
	b.ReportMetric(float64(add.Microseconds())/1000/float64(b.N), "add-ms")
	b.ReportMetric(float64(del.Microseconds())/1000/float64(b.N), "del-ms")
}
