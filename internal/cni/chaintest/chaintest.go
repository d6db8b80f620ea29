// Package chaintest helps test the chained plugins (firewall, portmap) in
// a private "host" network namespace joined to pod namespaces by veths:
// setting such namespaces up, running plugins in them, and TCP/UDP
// servers and clients that tell who they saw.
package chaintest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

// Sysctls sets net.* keys (path=value under /proc/sys/net) in the
// namespace of the calling thread.
func Sysctls(kvs ...string) error {
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		if err := os.WriteFile("/proc/sys/net/"+k, []byte(v), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Up brings the link called name up.
func Up(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// AddAddrs gives the link called name the addresses addrs (CIDRs).
func AddAddrs(name string, addrs ...string) error {
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

// Conf is the JSON config of a plugin of type typ on network name, with
// prevResult prev (if not nil) and extra merged at the top level.
func Conf(t *testing.T, name, typ string, prev, extra map[string]any) string {
	t.Helper()
	c := map[string]any{"cniVersion": "1.1.0", "name": name, "type": typ}
	if prev != nil {
		c["prevResult"] = prev
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

// Exec runs a plugin verb on eth0 of netns from inside host: the child
// inherits the namespace of the locked thread that starts it.
func Exec(t *testing.T, host *cnitest.Netns, plugin, cmd, containerID, netns, stdin string) cnitest.ExecResult {
	t.Helper()
	env := map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": containerID, "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": cnitest.BinDir(t)}
	return cnitest.ExecIn(t, host, plugin, env, stdin)
}

// ServeTCP listens on addr inside ns and answers each connection with
// greeting and the address it came from, so tests see masquerading.
func ServeTCP(t *testing.T, ns *cnitest.Netns, addr, greeting string) {
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
			fmt.Fprintf(c, "%s%s\n", greeting, host)
			c.Close()
		}
	}()
}

// Dial connects from inside ns and returns the server's greeting.
func Dial(ns *cnitest.Netns, network, addr string, timeout time.Duration) (string, error) {
	var got string
	err := ns.Try(func() error {
		var err error
		got, err = DialHere(network, addr, timeout)
		return err
	})
	return got, err
}

// DialHere connects from the calling thread's netns; over UDP it sends a
// datagram first.
func DialHere(network, addr string, timeout time.Duration) (string, error) {
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

// HostPort joins ip and port.
func HostPort(ip string, port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }
