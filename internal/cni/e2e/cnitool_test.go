// Package e2e drives tripod's plugins the way operators and runtimes do:
// through cnitool and through whole conflists chaining several plugins.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

// cnitool runs the upstream cnitool (installed by make deps) with the
// network configs in netDir.
func cnitool(t *testing.T, netDir string, env []string, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath("cnitool")
	if err != nil {
		// An error, not t.Fatal: callers run this inside Netns.Try, whose
		// goroutine must return.
		return "", fmt.Errorf("cnitool is not on PATH: run 'make deps' (it installs github.com/containernetworking/cni/cnitool into .tools/bin): %v", err)
	}
	cmd := exec.CommandContext(context.Background(), path, args...)
	cmd.Env = append(os.Environ(), "NETCONFPATH="+netDir, "CNI_PATH="+cnitest.BinDir(t))
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func writeConf(t *testing.T, name, js string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "10-"+name+".conflist"), []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestCnitoolLoopback(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	ns := cnitest.NewNetns(t, tag)
	dir := writeConf(t, tag, `{"cniVersion":"1.1.0","name":"`+tag+`","plugins":[{"type":"loopback"}]}`)
	ifname := []string{"CNI_IFNAME=lo"}
	for _, verb := range []string{"add", "check", "status", "del", "gc"} {
		out, err := cnitool(t, dir, ifname, verb, tag, ns.Path)
		if err != nil {
			t.Fatalf("cnitool %s: %v\n%s", verb, err, out)
		}
		if verb == "add" && !strings.Contains(out, "127.0.0.1") {
			t.Errorf("cnitool add printed no loopback address:\n%s", out)
		}
	}
}

// The full pod chain through cnitool, run from a host namespace of the
// test's own.
func TestCnitoolChain(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	host := cnitest.NewNetns(t, tag+"-host")
	pod := cnitest.NewNetns(t, tag+"-pod")
	dataDir := t.TempDir()
	dir := writeConf(t, tag, chain(tag, tag+"br", dataDir))
	t.Cleanup(func() { _ = host.Try(func() error { cnitest.DeleteLinks(tag); return nil }) })
	caps := []string{`CAP_ARGS={"portMappings":[{"hostPort":18090,"containerPort":80,"protocol":"tcp"}],"bandwidth":{"ingressRate":100000000,"ingressBurst":1000000,"egressRate":100000000,"egressBurst":1000000}}`}
	for _, verb := range []string{"add", "check", "status", "del", "del", "add", "gc"} {
		var out string
		err := host.Try(func() error {
			var err error
			out, err = cnitool(t, dir, caps, verb, tag, pod.Path)
			return err
		})
		if err != nil {
			t.Fatalf("cnitool %s: %v\n%s", verb, err, out)
		}
		if verb == "add" && !strings.Contains(out, "10.77.0.") {
			t.Errorf("cnitool add printed no pod address:\n%s", out)
		}
	}
	// cnitool's GC lists no valid attachment: everything of the network goes.
	host.Do(t, func() error { return cnitest.NoNetworkChains(tag) })
	cnitest.EmptyDir(t, filepath.Join(dataDir, tag), "lock", "last_reserved_ip.0", "last_reserved_ip.1")
	// Let cnitool's own cache go too (it keeps it in /var/lib/cni).
	_ = host.Try(func() error { _, err := cnitool(t, dir, caps, "del", tag, pod.Path); return err })
}

// Each remaining main and IPAM plugin that runs on this kernel, through
// cnitool's whole verb set, from a host namespace of the test's own with a
// veth standing in for the node's NIC.
func TestCnitoolPlugins(t *testing.T) {
	cnitest.Root(t)
	cases := []struct {
		name, plugins string
	}{
		{"ptp+host-local", `{"type":"ptp","ipMasq":true,"ipam":{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.78.0.0/24"}]]}}`},
		{"bridge+static", `{"type":"bridge","bridge":"TAGbr","isGateway":true,"ipam":{"type":"static","addresses":[{"address":"10.79.0.5/24","gateway":"10.79.0.1"}]}}`},
		{"macvlan+host-local", `{"type":"macvlan","master":"TAGnic","mode":"bridge","ipam":{"type":"host-local","dataDir":"DATADIR","ranges":[[{"subnet":"10.80.0.0/24"}]]}}`},
		{"host-device", `{"type":"host-device","device":"TAGnicp"}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tag := cnitest.Tag(t)
			host := cnitest.NewNetns(t, tag+"-host")
			pod := cnitest.NewNetns(t, tag+"-pod")
			dataDir := t.TempDir()
			host.Do(t, func() error {
				nic := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tag + "nic"}, PeerName: tag + "nicp"}
				if err := netlink.LinkAdd(nic); err != nil {
					return err
				}
				return netlink.LinkSetUp(nic)
			})
			plugins := strings.NewReplacer("TAG", tag, "DATADIR", dataDir).Replace(c.plugins)
			dir := writeConf(t, tag, `{"cniVersion":"1.1.0","name":"`+tag+`","plugins":[`+plugins+`]}`)
			for _, verb := range []string{"add", "check", "status", "del", "del", "add", "gc"} {
				var out string
				err := host.Try(func() error {
					var err error
					out, err = cnitool(t, dir, nil, verb, tag, pod.Path)
					return err
				})
				if err != nil {
					t.Fatalf("cnitool %s: %v\n%s", verb, err, out)
				}
				if verb == "add" {
					if _, err := pod.Exec(context.Background(), "ip", "link", "show", "eth0"); err != nil {
						t.Fatalf("no eth0 in the pod after add: %v\n%s", err, out)
					}
				}
			}
			// cnitool's GC lists no valid attachment: everything goes.
			host.Do(t, func() error { return cnitest.NoNetworkChains(tag) })
			if _, err := pod.Exec(context.Background(), "ip", "link", "show", "eth0"); err == nil {
				t.Errorf("eth0 is still in the pod after GC")
			}
			cnitest.EmptyDir(t, filepath.Join(dataDir, tag), "lock", "last_reserved_ip.0")
			_ = host.Try(func() error { _, err := cnitool(t, dir, nil, "del", tag, pod.Path); return err })
		})
	}
}
