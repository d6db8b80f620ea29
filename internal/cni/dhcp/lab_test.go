package dhcp_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

// The lab is a DHCP server network: a "server" namespace holding a bridge
// with dnsmasq on it, and pod namespaces whose eth0 is a veth into that
// bridge. Everything lives in namespaces the test created.
const (
	dnsmasqBin = "/usr/sbin/dnsmasq"
	serverIP   = "10.99.0.1"
	serverCIDR = "10.99.0.1/24"
	rangeLo    = 100 // dnsmasq hands out 10.99.0.100 - 10.99.0.150
	rangeHi    = 150
	dnsIP      = "10.99.0.53"
	domain     = "tripod.test"
)

type lab struct {
	tag     string
	dir     string
	server  *cnitest.Netns
	bridge  int // ifindex of br0 in the server namespace
	dnsmasq *proc
	daemon  *proc
	socket  string
	state   string // the daemon's lease directory
}

// newLab creates the server namespace and bridge. Nothing runs yet.
func newLab(t *testing.T) *lab {
	t.Helper()
	cnitest.Root(t)
	if _, err := os.Stat(dnsmasqBin); err != nil {
		t.Fatalf("the tests need dnsmasq as DHCP server (make test installs it) (%s, Debian package dnsmasq-base): %v", dnsmasqBin, err)
	}
	tag := cnitest.Tag(t)
	// Registered first, so it runs last: after every namespace cleanup.
	t.Cleanup(func() {
		left, _ := filepath.Glob("/run/netns/" + tag + "*")
		if len(left) > 0 {
			t.Errorf("leaked network namespaces: %v", left)
		}
		cnitest.NoLinks(t, tag)
	})
	dir := t.TempDir()
	lb := &lab{tag: tag, dir: dir, socket: filepath.Join(dir, "dhcp.sock"), state: filepath.Join(dir, "dhcp.leases")}
	lb.server = cnitest.NewNetns(t, tag+"-srv")
	lb.server.Do(t, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// A MAC address of its own, rather than one taken from a port.
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", HardwareAddr: net.HardwareAddr{0x02, 0x99, 0, 0, 0, 0x01}}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("adding br0: %w", err)
		}
		addr, _ := netlink.ParseAddr(serverCIDR)
		if err := netlink.AddrAdd(br, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(br); err != nil {
			return err
		}
		lb.bridge = br.Attrs().Index
		return nil
	})
	return lb
}

// pod creates a namespace whose eth0 is plugged into the server's bridge.
// eth0 is left down, as a main plugin leaves it when it calls IPAM.
func (lb *lab) pod(t *testing.T, name string) *cnitest.Netns {
	t.Helper()
	ns := cnitest.NewNetns(t, lb.tag+"-"+name)
	podNs, err := os.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer podNs.Close()
	lb.server.Do(t, func() error {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: "v" + name, MasterIndex: lb.bridge},
			PeerName:      "p" + name,
			PeerNamespace: netlink.NsFd(int(podNs.Fd())),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("adding veth: %w", err)
		}
		return netlink.LinkSetUp(veth)
	})
	ns.Do(t, func() error {
		l, err := netlink.LinkByName("p" + name)
		if err != nil {
			return err
		}
		return netlink.LinkSetName(l, "eth0")
	})
	return ns
}

func (lb *lab) leaseFile() string { return filepath.Join(lb.dir, "dnsmasq.leases") }

// startDnsmasq runs dnsmasq on the bridge: a 2-minute lease (its minimum)
// with T1 of 4 s unless extra sets it, so that a renewal happens within
// seconds. --no-ping:
// dnsmasq otherwise pings each address before offering it and handles no
// other DHCP packet for up to 3 s meanwhile, which serializes concurrent
// ADDs behind one another.
func (lb *lab) startDnsmasq(t *testing.T, extra ...string) {
	t.Helper()
	args := append([]string{"netns", "exec", lb.server.Name, dnsmasqBin,
		"--no-daemon", "--conf-file=/dev/null", "--bind-interfaces", "--interface=br0",
		"--port=0", "--user=root", "--dhcp-authoritative", "--log-dhcp", "--no-ping",
		fmt.Sprintf("--dhcp-range=10.99.0.%d,10.99.0.%d,255.255.255.0,2m", rangeLo, rangeHi),
		"--dhcp-option=option:router," + serverIP,
		"--dhcp-option=option:dns-server," + dnsIP,
		"--dhcp-option=option:domain-name," + domain,
		"--dhcp-leasefile=" + lb.leaseFile(),
		"--pid-file=" + filepath.Join(lb.dir, "dnsmasq.pid"),
	}, extra...)
	if !strings.Contains(strings.Join(extra, " "), "option:T1,") {
		args = append(args, "--dhcp-option=option:T1,4")
	}
	// ip netns exec execs dnsmasq in place: the PID is dnsmasq's.
	lb.dnsmasq = start(t, "dnsmasq", exec.Command("ip", args...), "DHCP, sockets bound")
}

// startDaemon runs the real binary as 'dhcp daemon'.
func (lb *lab) startDaemon(t *testing.T, extra ...string) {
	t.Helper()
	args := append([]string{"daemon", "-socketpath", lb.socket}, extra...)
	lb.daemon = start(t, "dhcp daemon", exec.Command(filepath.Join(cnitest.BinDir(t), "dhcp"), args...), "serving ")
}

// dnsLease is a line of dnsmasq's lease file.
type dnsLease struct {
	Expiry   int64
	MAC      string
	IP       string
	Host     string
	ClientID string
}

// leases reads dnsmasq's lease file, by address.
func (lb *lab) leases(t *testing.T) map[string]dnsLease {
	t.Helper()
	b, err := os.ReadFile(lb.leaseFile())
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	out := map[string]dnsLease{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		exp, _ := strconv.ParseInt(f[0], 10, 64)
		out[f[2]] = dnsLease{Expiry: exp, MAC: f[1], IP: f[2], Host: f[3], ClientID: f[4]}
	}
	return out
}

// waitFor waits, within limit, for cond; dnsmasq handles a DHCPRELEASE
// after the plugin returns, since nothing answers one.
func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// proc is a child process started by a test and ended by PID at cleanup.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error
}

// start runs cmd, waits until its stderr shows ready, and registers its
// end as a cleanup.
func start(t *testing.T, name string, cmd *exec.Cmd, ready string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, log: &syncBuffer{}, done: make(chan struct{})}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	w.Close()
	readyc := make(chan struct{})
	var once sync.Once
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			p.log.WriteLine(sc.Text())
			if strings.Contains(sc.Text(), ready) {
				once.Do(func() { close(readyc) })
			}
		}
		r.Close()
	}()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.log.String())
		}
	})
	select {
	case <-readyc:
	case <-p.done:
		t.Fatalf("%s exited before it was ready (%v):\n%s", name, p.err, p.log.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("%s not ready after 20s:\n%s", name, p.log.String())
	}
	return p
}

// Stop sends SIGTERM to the process and waits for it (SIGKILL after 10s).
// It returns the exit error.
func (p *proc) Stop(t *testing.T) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s (PID %d) ignored SIGTERM for 10s; killing it", p.name, p.cmd.Process.Pid)
		_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	return p.err
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) WriteLine(l string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.WriteString(l + "\n")
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Count(sub string) int { return strings.Count(s.String(), sub) }

// linkUp reports whether eth0 in ns is administratively up.
func linkUp(t *testing.T, ns *cnitest.Netns) bool {
	t.Helper()
	return ns.Link(t, "eth0").Attrs().Flags&net.FlagUp != 0
}

func background() context.Context { return context.Background() }
