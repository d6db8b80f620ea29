// Package cnitest is the harness for tripod's CNI tests: real network
// namespaces, the real plugin binaries driven through libcni or exec'd
// directly, unique names for everything a test creates, and checks that
// nothing was left behind.
package cnitest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/nftown"
	"github.com/tripod-dev/tripod/internal/netns"
	"golang.org/x/sys/unix"
)

// BinEnv names the directory holding the plugins under their type names
// (the Makefile points it at bin/cni). When unset, Main builds them.
const BinEnv = "TRIPOD_CNI_BIN"

// Main runs a package's tests with the plugins available in BinEnv,
// building them into a temporary directory when it is not set. Call it
// from TestMain.
func Main(m *testing.M) int {
	if os.Getenv(BinEnv) != "" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "tripod-cnitest-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cnitest:", err)
		return 2
	}
	defer os.RemoveAll(dir)
	if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "cnitest: building plugins:", err)
		return 2
	}
	os.Setenv(BinEnv, dir)
	return m.Run()
}

func build(dir string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	bin := filepath.Join(dir, "tripod-cni")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/tripod-cni")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "list").Output()
	if err != nil {
		return fmt.Errorf("tripod-cni list: %w", err)
	}
	for _, name := range strings.Fields(string(out)) {
		if err := os.Symlink("tripod-cni", filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// BinDir is the directory holding the plugins.
func BinDir(t testing.TB) string {
	t.Helper()
	d := os.Getenv(BinEnv)
	if d == "" {
		t.Fatalf("%s is not set: call cnitest.Main from TestMain", BinEnv)
	}
	return d
}

// Root fails the test unless it runs as root: every CNI test needs real
// namespaces and links.
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: CNI tests create network namespaces and links, which needs root (make test runs as root)")
	}
}

// Tag returns a short unique prefix (7 characters: "tp" + 5 hex) for the
// names of everything one test creates, so that a link name built from it
// plus up to 8 more characters still fits IFNAMSIZ.
func Tag(t testing.TB) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "tp" + hex.EncodeToString(b)[:5]
}

// Netns is a network namespace made for a test, pinned at /run/netns/Name.
type Netns struct {
	Name string
	Path string
}

// NewNetns creates a named network namespace that is removed when the test
// ends, pass or fail.
func NewNetns(t testing.TB, name string) *Netns {
	t.Helper()
	n := &Netns{Name: name, Path: filepath.Join("/run/netns", name)}
	if err := netns.PinNet(n.Path); err != nil {
		t.Fatalf("creating netns %s: %v", name, err)
	}
	t.Cleanup(func() { n.Remove(t) })
	return n
}

// Remove unmounts and deletes the namespace; it may be called early to
// simulate a container that is already gone.
func (n *Netns) Remove(t testing.TB) {
	t.Helper()
	if err := netns.Unpin(map[netns.Kind]string{netns.Net: n.Path}); err != nil {
		t.Error(err)
	}
}

// Do runs fn inside the namespace on a locked thread.
func (n *Netns) Do(t testing.TB, fn func() error) {
	t.Helper()
	if err := n.Try(fn); err != nil {
		t.Fatalf("in netns %s: %v", n.Name, err)
	}
}

// Try is Do returning the error instead of failing the test.
func (n *Netns) Try(fn func() error) error {
	f, err := os.Open(n.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	return InFile(f, fn)
}

// InFile runs fn on a thread of its own inside the network namespace open
// as f and returns fn's error; concurrent goroutines of a test can each
// call it. fn must not fail the test itself.
func InFile(f *os.File, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread dies with the goroutine.
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Exec runs a command inside the namespace (ip netns exec).
func (n *Netns) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	return cmd.CombinedOutput()
}

// Ping sends pings from the namespace to addr and fails the test when none
// is answered.
func (n *Netns) Ping(t testing.TB, addr string) {
	t.Helper()
	if out, err := n.Exec(context.Background(), "ping", "-c", "2", "-i", "0.2", "-W", "2", addr); err != nil {
		t.Fatalf("ping %s from %s: %v\n%s", addr, n.Name, err, out)
	}
}

// Link returns the named link in the namespace.
func (n *Netns) Link(t testing.TB, name string) netlink.Link {
	t.Helper()
	var l netlink.Link
	n.Do(t, func() error {
		var err error
		l, err = netlink.LinkByName(name)
		return err
	})
	return l
}

// OnlyLo fails the test if the namespace holds any link but lo: what a
// failed or undone attachment must leave.
func (n *Netns) OnlyLo(t testing.TB) {
	t.Helper()
	var names []string
	n.Do(t, func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().Name != "lo" {
				names = append(names, l.Attrs().Name)
			}
		}
		return err
	})
	if len(names) > 0 {
		t.Errorf("netns %s still has links %v", n.Name, names)
	}
}

// Runner drives plugins through libcni with its own cache directory.
type Runner struct {
	CNI      *libcni.CNIConfig
	CacheDir string
}

// NewRunner returns a libcni runner over BinDir (plus extra plugin
// directories searched first).
func NewRunner(t testing.TB, extraPath ...string) *Runner {
	t.Helper()
	cache := t.TempDir()
	path := append(append([]string{}, extraPath...), BinDir(t))
	return &Runner{CNI: libcni.NewCNIConfigWithCacheDir(path, cache, nil), CacheDir: cache}
}

// AddVersion runs ADD of list, which must succeed with a result of
// cniVersion version, and returns that result as the current version.
func (r *Runner) AddVersion(t testing.TB, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf, version string) *current.Result {
	t.Helper()
	res, err := r.CNI.AddNetworkList(context.Background(), list, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if res.Version() != version {
		t.Errorf("result version %s, want %s", res.Version(), version)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	return cur
}

// ConfList parses a network configuration list.
func ConfList(t testing.TB, js string) *libcni.NetworkConfigList {
	t.Helper()
	var probe map[string]json.RawMessage
	if err := json.Unmarshal([]byte(js), &probe); err != nil {
		t.Fatalf("parsing network config: %v\n%s", err, js)
	}
	if _, ok := probe["plugins"]; !ok {
		// A single plugin config: wrap it in a list, as runtimes do for
		// .conf files.
		wrapped, err := json.Marshal(map[string]any{"cniVersion": probe["cniVersion"], "name": probe["name"], "plugins": []json.RawMessage{json.RawMessage(js)}})
		if err != nil {
			t.Fatal(err)
		}
		js = string(wrapped)
	}
	cl, err := libcni.NetworkConfFromBytes([]byte(js))
	if err != nil {
		t.Fatalf("parsing conflist: %v\n%s", err, js)
	}
	return cl
}

// RuntimeConf is the per-attachment part of a libcni call.
func RuntimeConf(containerID, netns, ifName string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: containerID, NetNS: netns, IfName: ifName}
}

// ExecResult is what a plugin printed and returned.
type ExecResult struct {
	Stdout []byte
	Stderr []byte
	Exit   int
	Err    *types.Error // set when the plugin printed an error
}

// Exec runs the plugin binary directly with env (CNI_* variables) and
// stdin, as a runtime would, and decodes an error if one was printed.
func Exec(t testing.TB, plugin string, env map[string]string, stdin string) ExecResult {
	t.Helper()
	r, err := execPlugin(BinDir(t), plugin, env, stdin)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// ExecIn is Exec from inside ns: the child inherits the namespace of the
// locked thread that starts it.
func ExecIn(t testing.TB, ns *Netns, plugin string, env map[string]string, stdin string) ExecResult {
	t.Helper()
	dir := BinDir(t)
	var r ExecResult
	err := ns.Try(func() error {
		var err error
		r, err = execPlugin(dir, plugin, env, stdin)
		return err
	})
	if err != nil {
		t.Fatalf("in netns %s: %v", ns.Name, err)
	}
	return r
}

func execPlugin(dir, plugin string, env map[string]string, stdin string) (ExecResult, error) {
	cmd := exec.Command(filepath.Join(dir, plugin))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := ExecResult{Stdout: out.Bytes(), Stderr: errb.Bytes()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			return r, fmt.Errorf("running %s: %v", plugin, err)
		}
		r.Exit = ee.ExitCode()
		e := &types.Error{}
		if jerr := json.Unmarshal(out.Bytes(), e); jerr != nil {
			return r, fmt.Errorf("%s exited %d without a JSON error on stdout: %q (stderr %q)", plugin, r.Exit, out.String(), errb.String())
		}
		r.Err = e
	}
	return r, nil
}

// NoLinks fails the test if any host link (in the current namespace) has a
// name starting with prefix.
func NoLinks(t testing.TB, prefix string) {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			t.Errorf("leaked link %s (%s)", l.Attrs().Name, l.Type())
		}
	}
}

// DeleteLinks removes host links starting with prefix; tests register it
// as a cleanup so a failure leaves nothing for the next run.
func DeleteLinks(prefix string) {
	links, _ := netlink.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			_ = netlink.LinkDel(l)
		}
	}
}

// EmptyDir fails the test if dir holds anything but entries named in
// allowed (a missing dir counts as empty).
func EmptyDir(t testing.TB, dir string, allowed ...string) {
	t.Helper()
	var left []string
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if info.IsDir() {
			return nil
		}
		for _, a := range allowed {
			if filepath.Base(p) == a {
				return nil
			}
		}
		left = append(left, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("leaked files: %v", left)
	}
}

// NoChains fails the test if table still holds rules of any attachment of
// network.
func NoChains(t testing.TB, table nftown.Table, network string) {
	t.Helper()
	tags, err := table.Tags(network)
	if err != nil {
		t.Fatalf("listing %s chains: %v", table.Name, err)
	}
	if len(tags) > 0 {
		t.Errorf("leaked nftables chains in table %s for network %s: %v", table.Name, network, tags)
	}
}

// NoNetworkChains reports (as an error) any chain, in any nftables table
// of the current network namespace, that belongs to an attachment of
// network: every tripod plugin names its per-attachment chains with
// nftown.NetworkTag(network).
func NoNetworkChains(network string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	chains, err := c.ListChains()
	if err != nil {
		return fmt.Errorf("listing nftables chains: %w", err)
	}
	tag := nftown.NetworkTag(network)
	var left []string
	for _, ch := range chains {
		if strings.Contains(ch.Name, tag) {
			left = append(left, ch.Table.Name+"/"+ch.Name)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("leaked nftables chains of network %s: %v", network, left)
	}
	return nil
}

// TablesSince records the tripod nftables tables of the current network
// namespace and returns a function that deletes the ones created since,
// provided no attachment's chain is left in them: tests that run pods in
// the host's own namespace use it to leave the host as they found it.
func TablesSince() (func() error, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	key := func(t *nftables.Table) string { return fmt.Sprintf("%d/%s", t.Family, t.Name) }
	before := map[string]bool{}
	tables, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("listing nftables tables: %w", err)
	}
	for _, t := range tables {
		before[key(t)] = true
	}
	return func() error {
		tables, err := c.ListTables()
		if err != nil {
			return fmt.Errorf("listing nftables tables: %w", err)
		}
		chains, err := c.ListChains()
		if err != nil {
			return fmt.Errorf("listing nftables chains: %w", err)
		}
		for _, t := range tables {
			if before[key(t)] || !strings.HasPrefix(t.Name, "tripod_") {
				continue
			}
			empty := true
			for _, ch := range chains {
				if key(ch.Table) == key(t) && ch.Hooknum == nil {
					empty = false // an attachment's chain: a leak to report, not hide
				}
			}
			if empty {
				c.DelTable(t)
			}
		}
		return c.Flush()
	}, nil
}
