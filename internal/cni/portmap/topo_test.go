package portmap_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/cni/portmap"
)

// Addresses live only inside the namespaces a test creates.
const (
	gw4, pod4   = "10.99.0.1", "10.99.0.2"
	gw6, pod6   = "fd00:99::1", "fd00:99::2"
	host4       = "10.77.0.1" // the host's "own" address, on its lo
	host6       = "fd00:77::1"
	outHost4    = "10.88.0.1" // host side of the link to the outside netns
	outPeer4    = "10.88.0.2"
	outHost6    = "fd00:88::1"
	outPeer6    = "fd00:88::2"
	dialTimeout = 3 * time.Second
)

// topo is a private "host" netns (where the plugin runs and its nftables
// tables live), a "pod" netns joined to it by a veth pair, and an "outside"
// netns joined by another, as a remote client.
type topo struct {
	tag       string
	host, pod *cnitest.Netns
	out       *cnitest.Netns
	hostVeth  string
	podIndex  int
}

func newTopo(t *testing.T) *topo {
	t.Helper()
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	tp := &topo{tag: tag, hostVeth: tag + "v"}
	tp.host = cnitest.NewNetns(t, tag+"-host")
	tp.pod = cnitest.NewNetns(t, tag+"-pod")
	tp.out = cnitest.NewNetns(t, tag+"-out")
	podFd, err := os.Open(tp.pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer podFd.Close()
	outFd, err := os.Open(tp.out.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer outFd.Close()

	// No duplicate address detection anywhere, link-local addresses
	// included: IPv6 is usable as soon as the links are up.
	for _, ns := range []*cnitest.Netns{tp.host, tp.pod, tp.out} {
		ns.Do(t, func() error {
			return sysctls("ipv6/conf/default/accept_dad=0", "ipv6/conf/all/accept_dad=0")
		})
	}
	tp.host.Do(t, func() error {
		if err := sysctls("ipv4/ip_forward=1", "ipv6/conf/all/forwarding=1"); err != nil {
			return err
		}
		if err := up("lo"); err != nil {
			return err
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tp.hostVeth}, PeerName: "eth0", PeerNamespace: netlink.NsFd(podFd.Fd())}); err != nil {
			return fmt.Errorf("veth to pod: %w", err)
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tag + "o"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(outFd.Fd())}); err != nil {
			return fmt.Errorf("veth to outside: %w", err)
		}
		for name, addrs := range map[string][]string{
			tp.hostVeth: {gw4 + "/24", gw6 + "/64"},
			tag + "o":   {outHost4 + "/24", outHost6 + "/64"},
			"lo":        {host4 + "/32", host6 + "/128"},
		} {
			if err := addAddrs(name, addrs...); err != nil {
				return err
			}
			if err := up(name); err != nil {
				return err
			}
		}
		return nil
	})
	for _, ns := range []struct {
		n      *cnitest.Netns
		addrs  []string
		gw4    string
		gw6    string
		record bool
	}{{tp.pod, []string{pod4 + "/24", pod6 + "/64"}, gw4, gw6, true}, {tp.out, []string{outPeer4 + "/24", outPeer6 + "/64"}, outHost4, outHost6, false}} {
		ns.n.Do(t, func() error {
			if err := up("lo"); err != nil {
				return err
			}
			if err := addAddrs("eth0", ns.addrs...); err != nil {
				return err
			}
			if err := up("eth0"); err != nil {
				return err
			}
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			if ns.record {
				tp.podIndex = l.Attrs().Index
			}
			for _, gw := range []string{ns.gw4, ns.gw6} {
				if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
					return fmt.Errorf("default route via %s: %w", gw, err)
				}
			}
			return nil
		})
	}
	return tp
}

// sysctls sets net.* keys (path=value under /proc/sys/net) in the
// namespace of the calling thread.
func sysctls(kvs ...string) error {
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		if err := os.WriteFile("/proc/sys/net/"+k, []byte(v), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func up(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

func addAddrs(name string, addrs ...string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		ipn, err := netlink.ParseIPNet(a)
		if err != nil {
			return err
		}
		// No duplicate address detection: IPv6 addresses are usable at once.
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipn, Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("adding %s to %s: %w", a, name, err)
		}
	}
	return nil
}

// prevResult describes the topology as a bridge or ptp plugin would: the
// host-side veth, the container interface, and its addresses.
func (tp *topo) prevResult(ips ...string) map[string]any {
	var list []map[string]any
	for _, ip := range ips {
		list = append(list, map[string]any{"address": ip, "interface": 1})
	}
	return map[string]any{
		"cniVersion": "1.1.0",
		"interfaces": []map[string]any{
			{"name": tp.hostVeth},
			{"name": "eth0", "sandbox": tp.pod.Path},
		},
		"ips": list,
	}
}

func (tp *topo) dualStack() map[string]any {
	return tp.prevResult(pod4+"/24", pod6+"/64")
}

// conf builds a portmap config; extra fields are merged at the top level.
func (tp *topo) conf(t *testing.T, prev map[string]any, maps []map[string]any, extra map[string]any) string {
	t.Helper()
	c := map[string]any{"cniVersion": "1.1.0", "name": tp.tag, "type": "portmap"}
	if prev != nil {
		c["prevResult"] = prev
	}
	if maps != nil {
		c["runtimeConfig"] = map[string]any{"portMappings": maps}
	}
	for k, v := range extra {
		c[k] = v
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func pm(proto string, hostPort, ctrPort int, hostIP string) map[string]any {
	m := map[string]any{"hostPort": hostPort, "containerPort": ctrPort, "protocol": proto}
	if hostIP != "" {
		m["hostIP"] = hostIP
	}
	return m
}

type execResult struct {
	stdout []byte
	err    *types.Error
}

// exec runs the plugin from inside the host netns: the child inherits the
// namespace of the locked thread that starts it.
func (tp *topo) exec(t *testing.T, plugin, cmd, containerID, stdin string) execResult {
	t.Helper()
	var res execResult
	err := tp.host.Try(func() error {
		c := exec.Command(filepath.Join(cnitest.BinDir(t), plugin))
		c.Env = []string{
			"PATH=" + os.Getenv("PATH"),
			"CNI_COMMAND=" + cmd,
			"CNI_CONTAINERID=" + containerID,
			"CNI_NETNS=" + tp.pod.Path,
			"CNI_IFNAME=eth0",
			"CNI_PATH=" + cnitest.BinDir(t),
		}
		c.Stdin = strings.NewReader(stdin)
		var out, stderr bytes.Buffer
		c.Stdout, c.Stderr = &out, &stderr
		runErr := c.Run()
		res.stdout = out.Bytes()
		if runErr != nil {
			var ee *exec.ExitError
			if !errors.As(runErr, &ee) {
				return runErr
			}
			e := &types.Error{}
			if err := json.Unmarshal(out.Bytes(), e); err != nil {
				return fmt.Errorf("%s %s exited %d without a JSON error: %q (stderr %q)", plugin, cmd, ee.ExitCode(), out.String(), stderr.String())
			}
			res.err = e
		}
		return nil
	})
	if err != nil {
		t.Fatalf("running %s %s: %v", plugin, cmd, err)
	}
	return res
}

// must runs a verb that has to succeed.
func (tp *topo) must(t *testing.T, cmd, containerID, stdin string) []byte {
	t.Helper()
	r := tp.exec(t, "portmap", cmd, containerID, stdin)
	if r.err != nil {
		t.Fatalf("%s %s: code %d: %s", cmd, containerID, r.err.Code, r.err.Msg)
	}
	return r.stdout
}

// serveTCP listens inside ns; each connection is told the address it came
// from, so tests can see masquerading.
func serveTCP(t *testing.T, ns *cnitest.Netns, port int) {
	t.Helper()
	serveTCPOn(t, ns, fmt.Sprintf(":%d", port))
}

func serveTCPOn(t *testing.T, ns *cnitest.Netns, addr string) {
	t.Helper()
	var ln net.Listener
	ns.Do(t, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "tcp from %s\n", host)
			c.Close()
		}
	}()
}

// serveUDP answers each datagram inside ns with the sender's address.
func serveUDP(t *testing.T, ns *cnitest.Netns, port int) {
	t.Helper()
	var pc net.PacketConn
	ns.Do(t, func() error {
		var err error
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(from.String())
			_, _ = pc.WriteTo([]byte("udp from "+host+"\n"), from)
		}
	}()
}

// dial connects from inside ns and returns the server's greeting.
func dial(ns *cnitest.Netns, network, addr string, timeout time.Duration) (string, error) {
	var got string
	err := ns.Try(func() error {
		var err error
		got, err = dialHere(network, addr, timeout)
		return err
	})
	return got, err
}

// dialHere connects from the calling thread's netns.
func dialHere(network, addr string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	if strings.HasPrefix(network, "udp") {
		if _, err := c.Write([]byte("ping")); err != nil {
			return "", err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// reach fails the test unless addr answers from ns; it returns the source
// address the server saw.
func reach(t *testing.T, ns *cnitest.Netns, network, addr string) string {
	t.Helper()
	got, err := dial(ns, network, addr, dialTimeout)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", network, addr, ns.Name, err)
	}
	from, ok := strings.CutPrefix(got, network[:3]+" from ")
	if !ok {
		t.Fatalf("%s %s from %s: unexpected answer %q", network, addr, ns.Name, got)
	}
	return from
}

// unreachable fails the test if addr answers from ns.
func unreachable(t *testing.T, ns *cnitest.Netns, network, addr string) {
	t.Helper()
	// A dropped packet shows as a timeout; a second is ample on veths.
	if got, err := dial(ns, network, addr, time.Second); err == nil {
		t.Fatalf("%s %s from %s answered %q, want no answer", network, addr, ns.Name, got)
	}
}

// noLeaks checks, inside the host netns, that no chain of the network is
// left in any table.
func (tp *topo) noLeaks(t *testing.T) {
	t.Helper()
	if err := tp.host.Try(func() error {
		if err := cnitest.NoNetworkChains(tp.tag); err != nil {
			return err
		}
		tags, err := portmap.Table().Tags(tp.tag)
		if err != nil {
			return err
		}
		if len(tags) > 0 {
			return fmt.Errorf("attachments left in %s: %v", portmap.TableName, tags)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

func hostPort(ip string, port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }
