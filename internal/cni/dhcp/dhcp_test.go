package dhcp_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/ifaceconf"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

// list is a network whose only plugin is dhcp, so that libcni drives the
// IPAM plugin the way a main plugin would delegate to it.
func (lb *lab) list(t *testing.T, name, ipamExtra string) *libcni.NetworkConfigList {
	t.Helper()
	return cnitest.ConfList(t, fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"dhcp",
		"ipam":{"type":"dhcp","daemonSocketPath":%q,"timeout":"5s"%s}}]}`, name, lb.socket, ipamExtra))
}

// conf is a single plugin config for running the binary directly.
func (lb *lab) conf(ipamExtra string) string {
	return fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"type":"dhcp","ipam":{"type":"dhcp","daemonSocketPath":%q%s}}`, lb.tag, lb.socket, ipamExtra)
}

func env(cmd, containerID, netns, ifName string) map[string]string {
	return map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": containerID, "CNI_NETNS": netns, "CNI_IFNAME": ifName, "CNI_PATH": "/nonexistent"}
}

func result(t *testing.T, r types.Result) *current.Result {
	t.Helper()
	cur, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(cur.IPs) != 1 {
		t.Fatalf("want one IP in the result, got %+v", cur)
	}
	return cur
}

// addExec runs ADD for pod "a" by exec, as a runtime would, puts the
// leased address on its eth0, and returns the address.
func (lb *lab) addExec(t *testing.T, pod *cnitest.Netns) string {
	t.Helper()
	res := cnitest.Exec(t, "dhcp", env("ADD", lb.tag+"-a", pod.Path, "eth0"), lb.conf(""))
	if res.Err != nil {
		t.Fatalf("ADD: %v", res.Err)
	}
	r, err := current.NewResult(res.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	cur := result(t, r)
	ip := inRange(t, cur)
	pod.Do(t, func() error { return ifaceconf.Configure("eth0", 0, cur) })
	return ip
}

// delExec runs DEL for pod "a" by exec and checks that the lease is
// released to dnsmasq and its state file gone.
func (lb *lab) delExec(t *testing.T, pod *cnitest.Netns) {
	t.Helper()
	if res := cnitest.Exec(t, "dhcp", env("DEL", lb.tag+"-a", pod.Path, "eth0"), lb.conf("")); res.Err != nil {
		t.Fatalf("DEL: %v", res.Err)
	}
	waitFor(t, "dnsmasq to drop the released lease", 5*time.Second, func() bool { return len(lb.leases(t)) == 0 })
	cnitest.EmptyDir(t, lb.state)
}

// inRange checks that a result's address is one dnsmasq hands out.
func inRange(t *testing.T, cur *current.Result) string {
	t.Helper()
	a := cur.IPs[0].Address
	ip := a.IP.To4()
	if ip == nil || ip[0] != 10 || ip[1] != 99 || ip[2] != 0 || ip[3] < rangeLo || ip[3] > rangeHi {
		t.Fatalf("address %s is outside dnsmasq's range 10.99.0.%d-%d", a.String(), rangeLo, rangeHi)
	}
	if ones, _ := a.Mask.Size(); ones != 24 {
		t.Errorf("address %s: want a /24 mask", a.String())
	}
	return ip.String()
}

func code(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestLifecycle(t *testing.T) {
	lb := newLab(t)
	lb.startDnsmasq(t)
	lb.startDaemon(t)
	pod := lb.pod(t, "a")
	ctx := background()
	r := cnitest.NewRunner(t)
	list := lb.list(t, lb.tag, `,"provide":[{"option":"host-name","fromArg":"K8S_POD_NAME"}]`)
	rt := cnitest.RuntimeConf(lb.tag+"-a", pod.Path, "eth0")
	rt.Args = [][2]string{{"K8S_POD_NAME", "web-1"}}

	res, err := r.CNI.AddNetworkList(ctx, list, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	cur := result(t, res)
	ip := inRange(t, cur)
	if gw := cur.IPs[0].Gateway; !gw.Equal(net.ParseIP(serverIP)) {
		t.Errorf("gateway %v, want dnsmasq's router %s", gw, serverIP)
	}
	if len(cur.Routes) != 1 || cur.Routes[0].Dst.String() != "0.0.0.0/0" || !cur.Routes[0].GW.Equal(net.ParseIP(serverIP)) {
		t.Errorf("routes %v, want only the default route via %s", cur.Routes, serverIP)
	}
	if len(cur.DNS.Nameservers) != 1 || cur.DNS.Nameservers[0] != dnsIP || cur.DNS.Domain != domain {
		t.Errorf("DNS %+v, want nameserver %s and domain %s", cur.DNS, dnsIP, domain)
	}
	if !linkUp(t, pod) {
		t.Error("eth0 is down after ADD: the daemon should have brought it up to run DHCP")
	}

	// dnsmasq holds the lease, with the reference plugin's client ID and
	// the host name from CNI_ARGS.
	l, ok := lb.leases(t)[ip]
	if !ok {
		t.Fatalf("dnsmasq has no lease for %s: %v", ip, lb.leases(t))
	}
	wantID := hex.EncodeToString(append([]byte{0}, lb.tag+"-a/"+lb.tag+"/eth0"...))
	if got := strings.ReplaceAll(l.ClientID, ":", ""); got != wantID {
		t.Errorf("client ID %s, want %s", got, wantID)
	}
	if l.Host != "web-1" {
		t.Errorf("dnsmasq recorded host name %q, want web-1 (from K8S_POD_NAME)", l.Host)
	}
	if mac := pod.Link(t, "eth0").Attrs().HardwareAddr.String(); l.MAC != mac {
		t.Errorf("lease is for MAC %s, eth0 has %s", l.MAC, mac)
	}

	// The address works: configure it as a main plugin would and ping
	// the router.
	pod.Do(t, func() error { return ifaceconf.Configure("eth0", 0, cur) })
	pod.Ping(t, serverIP)

	if err := r.CNI.CheckNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}

	// A repeated ADD of the same attachment gets the lease it holds; the
	// same attachment from another namespace is refused.
	again := cnitest.Exec(t, "dhcp", env("ADD", lb.tag+"-a", pod.Path, "eth0"), lb.conf(""))
	if again.Err != nil {
		t.Fatalf("repeated ADD: %v", again.Err)
	}
	if !strings.Contains(string(again.Stdout), ip+"/24") {
		t.Errorf("repeated ADD returned %s, want the held lease %s", again.Stdout, ip)
	}
	other := lb.pod(t, "b")
	if res := cnitest.Exec(t, "dhcp", env("ADD", lb.tag+"-a", other.Path, "eth0"), lb.conf("")); res.Err == nil || res.Err.Code != 101 {
		t.Errorf("ADD of a held attachment from another netns: %+v, want code 101", res.Err)
	}

	// Renewal: dnsmasq gives T1 = 4 s; the expiry it records moves on.
	before := lb.leases(t)[ip].Expiry
	waitFor(t, "dnsmasq to record a renewal", 30*time.Second, func() bool { return lb.leases(t)[ip].Expiry > before })
	waitFor(t, "the daemon to log the renewal", 5*time.Second, func() bool { return lb.daemon.log.Count("renewing: lease "+ip+" extended") > 0 })
	if err := r.CNI.CheckNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("CHECK after renewal: %v", err)
	}

	if err := r.CNI.DelNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	waitFor(t, "dnsmasq to drop the released lease", 5*time.Second, func() bool { _, ok := lb.leases(t)[ip]; return !ok })
	cnitest.EmptyDir(t, lb.state)
	if err := r.CNI.DelNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	if res := cnitest.Exec(t, "dhcp", env("CHECK", lb.tag+"-a", pod.Path, "eth0"), lb.conf("")); res.Err == nil || res.Err.Code != 104 {
		t.Errorf("CHECK after DEL: %+v, want code 104", res.Err)
	}
	// DEL of an attachment that never existed succeeds.
	if res := cnitest.Exec(t, "dhcp", env("DEL", "never-added", "", "eth0"), lb.conf("")); res.Err != nil {
		t.Errorf("DEL of an unknown attachment: %v", res.Err)
	}
}

func TestClasslessRoutesSearchAndSuppress(t *testing.T) {
	lb := newLab(t)
	lb.startDnsmasq(t,
		"--dhcp-option=option:classless-static-route,192.168.77.0/24,10.99.0.254,0.0.0.0/0,"+serverIP,
		"--dhcp-option=option:domain-search,"+domain+",svc."+domain)
	lb.startDaemon(t)
	ctx := background()
	r := cnitest.NewRunner(t)

	pod := lb.pod(t, "a")
	list := lb.list(t, lb.tag, "")
	rt := cnitest.RuntimeConf(lb.tag+"-a", pod.Path, "eth0")
	res, err := r.CNI.AddNetworkList(ctx, list, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	cur := result(t, res)
	inRange(t, cur)
	routes := fmt.Sprint(cur.Routes)
	if want := "[{Dst:{IP:192.168.77.0 Mask:ffffff00} GW:10.99.0.254 MTU:0 AdvMSS:0 Priority:0 Table:<nil> Scope:<nil>} {Dst:{IP:0.0.0.0 Mask:00000000} GW:10.99.0.1 MTU:0 AdvMSS:0 Priority:0 Table:<nil> Scope:<nil>}]"; routes != want {
		t.Errorf("routes\n got %s\nwant %s (option 121 only, in the server's order)", routes, want)
	}
	if got := strings.Join(cur.DNS.Search, ","); got != domain+",svc."+domain {
		t.Errorf("search domains %q", got)
	}
	pod.Do(t, func() error { return ifaceconf.Configure("eth0", 0, cur) })
	pod.Ping(t, serverIP)

	// suppress: ["gateway"] keeps the other routes but no gateway and no
	// default route (a secondary network must not take the pod's default).
	pod2 := lb.pod(t, "b")
	list2 := lb.list(t, lb.tag+"-2", `,"suppress":["gateway"],"broadcast":true,"request":[{"skipDefault":true},{"option":"classless-static-routes"}]`)
	rt2 := cnitest.RuntimeConf(lb.tag+"-b", pod2.Path, "eth0")
	res2, err := r.CNI.AddNetworkList(ctx, list2, rt2)
	if err != nil {
		t.Fatalf("ADD with suppress: %v", err)
	}
	cur2 := result(t, res2)
	inRange(t, cur2)
	if cur2.IPs[0].Gateway != nil {
		t.Errorf("gateway %v despite suppress", cur2.IPs[0].Gateway)
	}
	if len(cur2.Routes) != 1 || cur2.Routes[0].Dst.String() != "192.168.77.0/24" {
		t.Errorf("routes %v, want only 192.168.77.0/24", cur2.Routes)
	}
	if n := lb.dnsmasq.log.Count("broadcast response"); n == 0 {
		t.Error(`"broadcast": true did not make dnsmasq broadcast its replies`)
	}

	for _, c := range []struct {
		l  *libcni.NetworkConfigList
		rt *libcni.RuntimeConf
	}{{list, rt}, {list2, rt2}} {
		if err := r.CNI.DelNetworkList(ctx, c.l, c.rt); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	}
	waitFor(t, "dnsmasq to drop both leases", 5*time.Second, func() bool { return len(lb.leases(t)) == 0 })
	cnitest.EmptyDir(t, lb.state)
}

func TestDaemonRestartKeepsLeases(t *testing.T) {
	lb := newLab(t)
	lb.startDnsmasq(t)
	lb.startDaemon(t)
	pod := lb.pod(t, "a")
	ctx := background()
	r := cnitest.NewRunner(t)
	list := lb.list(t, lb.tag, "")
	rt := cnitest.RuntimeConf(lb.tag+"-a", pod.Path, "eth0")
	res, err := r.CNI.AddNetworkList(ctx, list, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	ip := inRange(t, result(t, res))
	pod.Do(t, func() error { return ifaceconf.Configure("eth0", 0, result(t, res)) })

	// A second daemon on the same socket refuses to start.
	out, err := exec.Command(filepath.Join(cnitest.BinDir(t), "dhcp"), "daemon", "-socketpath", lb.socket).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "already serving") {
		t.Errorf("second daemon on the same socket: %v\n%s", err, out)
	}

	// SIGTERM: the daemon stops cleanly, keeps the lease on file and does
	// not release it.
	if err := lb.daemon.Stop(t); err != nil {
		t.Fatalf("daemon exit after SIGTERM: %v\n%s", err, lb.daemon.log.String())
	}
	if _, err := os.Stat(lb.socket); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind after SIGTERM: %v", lb.socket, err)
	}
	if lb.daemon.log.Count("released") != 0 {
		t.Error("the daemon released a lease on SIGTERM")
	}
	files, _ := filepath.Glob(filepath.Join(lb.state, "*.json"))
	if len(files) != 1 {
		t.Errorf("lease files after shutdown: %v, want one", files)
	}

	// While it is down: STATUS says not available, ADD and DEL say
	// what to start.
	down := cnitest.Exec(t, "dhcp", map[string]string{"CNI_COMMAND": "STATUS", "CNI_PATH": "/nonexistent"}, lb.conf(""))
	if down.Err == nil || down.Err.Code != 50 {
		t.Errorf("STATUS with the daemon down: %+v, want code 50", down.Err)
	}
	for _, cmd := range []string{"ADD", "DEL"} {
		res := cnitest.Exec(t, "dhcp", env(cmd, lb.tag+"-x", pod.Path, "eth1"), lb.conf(""))
		if res.Err == nil || res.Err.Code != 104 || !strings.Contains(res.Err.Msg, "dhcp daemon") {
			t.Errorf("%s with the daemon down: %+v, want code 104 naming 'dhcp daemon'", cmd, res.Err)
		}
	}
	if _, ok := lb.leases(t)[ip]; !ok {
		t.Fatalf("dnsmasq lost the lease %s while the daemon was down", ip)
	}

	lb.startDaemon(t)
	if lb.daemon.log.Count("1 leases restored") != 1 {
		t.Errorf("restarted daemon did not restore the lease:\n%s", lb.daemon.log.String())
	}
	if err := r.CNI.CheckNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("CHECK after restart: %v", err)
	}
	// The restored lease is renewed by the new daemon.
	before := lb.leases(t)[ip].Expiry
	waitFor(t, "a renewal by the restarted daemon", 30*time.Second, func() bool { return lb.leases(t)[ip].Expiry > before })
	if err := r.CNI.DelNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("DEL after restart: %v", err)
	}
	waitFor(t, "dnsmasq to drop the released lease", 5*time.Second, func() bool { _, ok := lb.leases(t)[ip]; return !ok })
	cnitest.EmptyDir(t, lb.state)
}

func TestStatusAndUnreachableDaemon(t *testing.T) {
	lb := newLab(t)
	ctx := background()
	r := cnitest.NewRunner(t)
	list := lb.list(t, lb.tag, "")
	err := r.CNI.GetStatusNetworkList(ctx, list)
	if code(err) != 50 || !strings.Contains(err.Error(), "dhcp daemon") {
		t.Errorf("STATUS without a daemon: %v, want code 50 saying to start 'dhcp daemon'", err)
	}
	pod := lb.pod(t, "a")
	res := cnitest.Exec(t, "dhcp", env("ADD", lb.tag, pod.Path, "eth0"), lb.conf(""))
	if res.Err == nil || res.Err.Code != 104 || !strings.Contains(res.Err.Msg, "'dhcp daemon'") || !strings.Contains(res.Err.Msg, lb.socket) {
		t.Errorf("ADD without a daemon: %+v, want code 104 naming the socket and 'dhcp daemon'", res.Err)
	}
	if linkUp(t, pod) {
		t.Error("eth0 was brought up although no daemon ran")
	}

	lb.startDaemon(t)
	if err := r.CNI.GetStatusNetworkList(ctx, list); err != nil {
		t.Errorf("STATUS with the daemon running: %v", err)
	}
	// GC with nothing to collect, and DEL of nothing, succeed.
	if err := r.CNI.GCNetworkList(ctx, list, &libcni.GCArgs{}); err != nil {
		t.Errorf("GC: %v", err)
	}
	if res := cnitest.Exec(t, "dhcp", env("DEL", lb.tag, pod.Path, "eth0"), lb.conf("")); res.Err != nil {
		t.Errorf("DEL: %v", res.Err)
	}
	cnitest.EmptyDir(t, lb.state)
}

func TestGCReleasesOnlyInvalidAttachments(t *testing.T) {
	lb := newLab(t)
	lb.startDnsmasq(t)
	lb.startDaemon(t)
	ctx := background()
	r := cnitest.NewRunner(t)
	list := lb.list(t, lb.tag, "")
	names := []string{"a", "b", "c"}
	pods := map[string]*cnitest.Netns{}
	for _, n := range names {
		pods[n] = lb.pod(t, n)
	}
	// libcni sets itself up lazily and not safely for concurrent first
	// use: a STATUS first (which must succeed) does that.
	if err := r.CNI.GetStatusNetworkList(ctx, list); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	// The three ADDs run at once.
	ips := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := r.CNI.AddNetworkList(ctx, list, cnitest.RuntimeConf(lb.tag+"-"+n, pods[n].Path, "eth0"))
			if err != nil {
				errs <- fmt.Errorf("ADD %s: %w", n, err)
				return
			}
			cur, err := current.NewResultFromResult(res)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			ips[n] = cur.IPs[0].Address.IP.String()
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(lb.leases(t)) != 3 {
		t.Fatalf("dnsmasq leases %v, want three", lb.leases(t))
	}

	// GC of another network touches nothing.
	other := cnitest.NewRunner(t)
	if err := other.CNI.GCNetworkList(ctx, lb.list(t, lb.tag+"-other", ""), &libcni.GCArgs{}); err != nil {
		t.Fatalf("GC of another network: %v", err)
	}
	// A runner with an empty cache issues no DELs of its own: what goes
	// away is the plugin's GC at work.
	gcRunner := cnitest.NewRunner(t)
	valid := []types.GCAttachment{{ContainerID: lb.tag + "-a", IfName: "eth0"}}
	if err := gcRunner.CNI.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	waitFor(t, "dnsmasq to drop the leases of b and c", 5*time.Second, func() bool { return len(lb.leases(t)) == 1 })
	if _, ok := lb.leases(t)[ips["a"]]; !ok {
		t.Errorf("GC released the valid attachment's lease %s", ips["a"])
	}
	if err := r.CNI.CheckNetworkList(ctx, list, cnitest.RuntimeConf(lb.tag+"-a", pods["a"].Path, "eth0")); err != nil {
		t.Errorf("CHECK of the valid attachment after GC: %v", err)
	}
	for _, n := range []string{"b", "c"} {
		if res := cnitest.Exec(t, "dhcp", env("CHECK", lb.tag+"-"+n, pods[n].Path, "eth0"), lb.conf("")); res.Err == nil || res.Err.Code != 104 {
			t.Errorf("CHECK of collected attachment %s: %+v, want code 104", n, res.Err)
		}
	}
	for _, n := range names {
		if err := r.CNI.DelNetworkList(ctx, list, cnitest.RuntimeConf(lb.tag+"-"+n, pods[n].Path, "eth0")); err != nil {
			t.Fatalf("DEL %s: %v", n, err)
		}
	}
	waitFor(t, "dnsmasq to drop every lease", 5*time.Second, func() bool { return len(lb.leases(t)) == 0 })
	cnitest.EmptyDir(t, lb.state)
}

func TestNoOfferTimesOut(t *testing.T) {
	lb := newLab(t)
	lb.startDnsmasq(t)
	if err := lb.dnsmasq.Stop(t); err != nil {
		t.Logf("dnsmasq exit: %v", err)
	}
	lb.startDaemon(t)
	pod := lb.pod(t, "a")
	res := cnitest.Exec(t, "dhcp", env("ADD", lb.tag+"-a", pod.Path, "eth0"), lb.conf(`,"timeout":2`))
	if res.Err == nil || res.Err.Code != 104 || !strings.Contains(res.Err.Msg, "no DHCP offer on interface eth0") || !strings.Contains(res.Err.Msg, "2s") {
		t.Fatalf("ADD with no DHCP server: %+v, want code 104 naming eth0 and the 2s timeout", res.Err)
	}
	// The failed ADD left nothing: no lease, eth0 down as before.
	cnitest.EmptyDir(t, lb.state)
	if linkUp(t, pod) {
		t.Error("eth0 left up after a failed ADD")
	}

	// With the server back, the next ADD works.
	lb.startDnsmasq(t)
	res = cnitest.Exec(t, "dhcp", env("ADD", lb.tag+"-a", pod.Path, "eth0"), lb.conf(`,"timeout":"5s"`))
	if res.Err != nil {
		t.Fatalf("ADD after the server came back: %v", res.Err)
	}
	lb.delExec(t, pod)
}

func TestNetnsGone(t *testing.T) {
	lb := newLab(t)
	lb.startDnsmasq(t)
	lb.startDaemon(t)
	gone := "/run/netns/" + lb.tag + "-nope"
	res := cnitest.Exec(t, "dhcp", env("ADD", lb.tag+"-x", gone, "eth0"), lb.conf(""))
	if res.Err == nil || res.Err.Code != 3 || !strings.Contains(res.Err.Msg, gone) {
		t.Errorf("ADD into a missing netns: %+v, want code 3 naming %s", res.Err, gone)
	}
	pod := lb.pod(t, "a")
	res = cnitest.Exec(t, "dhcp", env("ADD", lb.tag+"-a", pod.Path, "eth1"), lb.conf(""))
	if res.Err == nil || !strings.Contains(res.Err.Msg, "eth1") {
		t.Errorf("ADD on a missing interface: %+v, want an error naming eth1", res.Err)
	}
	if res := cnitest.Exec(t, "dhcp", env("ADD", lb.tag+"-a", pod.Path, "eth0"), lb.conf("")); res.Err != nil {
		t.Fatalf("ADD: %v", res.Err)
	}
	pod.Remove(t)
	if res := cnitest.Exec(t, "dhcp", env("DEL", lb.tag+"-a", pod.Path, "eth0"), lb.conf("")); res.Err != nil {
		t.Fatalf("DEL after the netns is gone: %v", res.Err)
	}
	cnitest.EmptyDir(t, lb.state)
}

func TestBadInput(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	sock := filepath.Join(t.TempDir(), "none.sock")
	ipam := func(extra string) string {
		return fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"type":"dhcp","ipam":{"type":"dhcp","daemonSocketPath":%q%s}}`, tag, sock, extra)
	}
	for _, tc := range []struct {
		name, conf string
		code       uint
		mention    string
	}{
		{"not JSON", `{"cniVersion":"1.1.0",`, 6, "JSON"},
		{"no ipam", `{"cniVersion":"1.1.0","name":"n","type":"dhcp"}`, 7, "ipam"},
		{"ipam not an object", `{"cniVersion":"1.1.0","name":"n","type":"dhcp","ipam":"dhcp"}`, 6, "ipam"},
		{"unknown request option", ipam(`,"request":[{"option":"bogus"}]`), 7, "ipam.request[0].option"},
		{"request not a list", ipam(`,"request":{"option":"routers"}`), 6, "request"},
		{"provide without value", ipam(`,"provide":[{"option":"host-name"}]`), 7, "ipam.provide[0]"},
		{"provide client-owned option", ipam(`,"provide":[{"option":"53","value":"x"}]`), 7, "set by the DHCP client"},
		{"provide value too long", ipam(`,"provide":[{"option":"host-name","value":"` + strings.Repeat("h", 256) + `"}]`), 7, "255"},
		{"timeout not a duration", ipam(`,"timeout":"soon"`), 6, "timeout"},
		{"timeout wrong type", ipam(`,"timeout":true`), 6, "timeout"},
		{"timeout negative", ipam(`,"timeout":-1`), 7, "ipam.timeout"},
		{"unknown suppress", ipam(`,"suppress":["routes"]`), 7, "ipam.suppress[0]"},
		{"broadcast wrong type", ipam(`,"broadcast":"yes"`), 6, "broadcast"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := cnitest.Exec(t, "dhcp", env("ADD", tag, "/run/netns/"+tag, "eth0"), tc.conf)
			if res.Err == nil || res.Err.Code != tc.code || !strings.Contains(res.Err.Msg, tc.mention) {
				t.Errorf("got %+v, want code %d mentioning %q", res.Err, tc.code, tc.mention)
			}
		})
	}
	// A missing CNI_NETNS on ADD is an environment error.
	e := env("ADD", tag, "", "eth0")
	delete(e, "CNI_NETNS")
	if res := cnitest.Exec(t, "dhcp", e, ipam("")); res.Err == nil || res.Err.Code != 4 {
		t.Errorf("ADD without CNI_NETNS: %+v, want code 4", res.Err)
	}
	// The daemon rejects bad flags before doing anything.
	bin := filepath.Join(cnitest.BinDir(t), "dhcp")
	for args, want := range map[string]int{"-nosuchflag": 2, "-timeout=0": 1, "-pidfile=relative.pid": 1} {
		cmd := exec.CommandContext(context.Background(), bin, "daemon", "-socketpath", sock, args)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != want {
			t.Errorf("dhcp daemon %s: %v, want exit status %d\n%s", args, err, want, out)
		}
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("a daemon that refused its flags left %s behind", sock)
	}
}

func TestNoCarrier(t *testing.T) {
	lb := newLab(t)
	lb.startDnsmasq(t)
	lb.startDaemon(t)
	pod := lb.pod(t, "a")
	// The bridge side of the veth is down: eth0 never gets a carrier.
	lb.server.Do(t, func() error {
		l, err := netlink.LinkByName("va")
		if err != nil {
			return err
		}
		return netlink.LinkSetDown(l)
	})
	res := cnitest.Exec(t, "dhcp", env("ADD", lb.tag+"-a", pod.Path, "eth0"), lb.conf(`,"timeout":"1s"`))
	if res.Err == nil || res.Err.Code != 104 || !strings.Contains(res.Err.Msg, "eth0") || !strings.Contains(res.Err.Msg, "carrier") {
		t.Fatalf("ADD without carrier: %+v, want code 104 naming eth0 and the missing carrier", res.Err)
	}
	if linkUp(t, pod) {
		t.Error("eth0 left up after a failed ADD")
	}
	cnitest.EmptyDir(t, lb.state)
}

// A daemon stopped in the middle of an ADD answers it with "try again
// later", undoes it, and exits without leaving anything behind.
func TestShutdownDuringAdd(t *testing.T) {
	lb := newLab(t)
	lb.startDaemon(t) // no DHCP server: the ADD waits for an offer
	pod := lb.pod(t, "a")
	done := make(chan cnitest.ExecResult, 1)
	go func() {
		done <- cnitest.Exec(t, "dhcp", env("ADD", lb.tag+"-a", pod.Path, "eth0"), lb.conf(`,"timeout":"30s"`))
	}()
	waitFor(t, "the daemon to bring eth0 up for the ADD", 10*time.Second, func() bool { return linkUp(t, pod) })
	if err := lb.daemon.Stop(t); err != nil {
		t.Fatalf("daemon exit after SIGTERM: %v", err)
	}
	res := <-done
	if res.Err == nil || res.Err.Code != 11 {
		t.Fatalf("ADD interrupted by the daemon's shutdown: %+v, want code 11", res.Err)
	}
	if linkUp(t, pod) {
		t.Error("eth0 left up after the interrupted ADD")
	}
	if _, err := os.Stat(lb.socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	cnitest.EmptyDir(t, lb.state)
}

// A plugin killed while it waits (the runtime's own timeout) makes the
// daemon abandon the ADD: no lease is kept for an ADD nobody saw succeed.
func TestPluginKilledDuringAdd(t *testing.T) {
	lb := newLab(t)
	lb.startDaemon(t) // no DHCP server yet
	pod := lb.pod(t, "a")
	cmd := exec.Command(filepath.Join(cnitest.BinDir(t), "dhcp"))
	for k, v := range env("ADD", lb.tag+"-a", pod.Path, "eth0") {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(lb.conf(`,"timeout":"30s"`))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the daemon to bring eth0 up for the ADD", 10*time.Second, func() bool { return linkUp(t, pod) })
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	waitFor(t, "the daemon to abandon the ADD and put eth0 back down", 10*time.Second, func() bool { return !linkUp(t, pod) })
	// The server appearing now must not produce a lease for the dead ADD.
	lb.startDnsmasq(t)
	cnitest.EmptyDir(t, lb.state)
	if n := len(lb.leases(t)); n != 0 {
		t.Errorf("dnsmasq holds %d leases for an abandoned ADD", n)
	}
}

// When the server stops answering unicast renewals, the lease is rebound
// by broadcast at T2 (RFC 2131 4.4.5).
func TestRebinding(t *testing.T) {
	lb := newLab(t)
	lb.startDnsmasq(t, "--dhcp-option=option:T1,3", "--dhcp-option=option:T2,6")
	lb.startDaemon(t)
	pod := lb.pod(t, "a")
	ip := lb.addExec(t, pod)
	// Renewals are unicast to the MAC address the server answered from;
	// giving br0 another one makes them vanish, while broadcasts still
	// reach dnsmasq.
	lb.server.Do(t, func() error {
		br, err := netlink.LinkByName("br0")
		if err != nil {
			return err
		}
		return netlink.LinkSetHardwareAddr(br, net.HardwareAddr{0x02, 0x99, 0, 0, 0, 0x02})
	})
	before := lb.leases(t)[ip].Expiry
	waitFor(t, "the daemon to rebind the lease", 30*time.Second, func() bool { return lb.daemon.log.Count("rebinding: lease "+ip+" extended") > 0 })
	if lb.daemon.log.Count("renewing "+ip+": no answer") == 0 {
		t.Errorf("the lease was rebound without a failed renewal first:\n%s", lb.daemon.log.String())
	}
	if after := lb.leases(t)[ip].Expiry; after <= before {
		t.Errorf("dnsmasq's expiry for %s did not move on rebinding (%d, then %d)", ip, before, after)
	}
	// Later renewals go to the address the rebinding answer came from.
	waitFor(t, "a unicast renewal after rebinding", 30*time.Second, func() bool { return lb.daemon.log.Count("renewing: lease "+ip+" extended") > 0 })
	lb.delExec(t, pod)
}

// A daemon that was down past a lease's expiry finds it expired on
// restart and acquires it again, asking for the same address.
func TestReacquireAfterExpiry(t *testing.T) {
	lb := newLab(t)
	lb.startDnsmasq(t)
	lb.startDaemon(t)
	pod := lb.pod(t, "a")
	ip := lb.addExec(t, pod)
	if err := lb.daemon.Stop(t); err != nil {
		t.Fatalf("daemon exit: %v", err)
	}
	// Age the lease file as if the daemon had been down for 10 minutes.
	files, _ := filepath.Glob(filepath.Join(lb.state, "*.json"))
	if len(files) != 1 {
		t.Fatalf("lease files %v, want one", files)
	}
	var rec map[string]json.RawMessage
	var lease map[string]any
	b, err := os.ReadFile(files[0])
	if err == nil {
		err = json.Unmarshal(b, &rec)
	}
	if err == nil {
		err = json.Unmarshal(rec["lease"], &lease)
	}
	if err != nil {
		t.Fatal(err)
	}
	lease["start"] = time.Now().Add(-10 * time.Minute).Format(time.RFC3339Nano)
	if rec["lease"], err = json.Marshal(lease); err != nil {
		t.Fatal(err)
	}
	if b, err = json.Marshal(rec); err == nil {
		err = os.WriteFile(files[0], b, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}

	lb.startDaemon(t)
	waitFor(t, "the restarted daemon to acquire the expired lease again", 20*time.Second, func() bool {
		return lb.daemon.log.Count("re-acquiring: lease "+ip+" extended") > 0
	})
	if res := cnitest.Exec(t, "dhcp", env("CHECK", lb.tag+"-a", pod.Path, "eth0"), lb.conf("")); res.Err != nil {
		t.Errorf("CHECK after re-acquiring: %v", res.Err)
	}
	lb.delExec(t, pod)
}
