package hostlocal_test

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

// harness drives host-local directly, as a main plugin's exec would: one
// network (named by the test's tag), its dataDir in t.TempDir().
type harness struct {
	t       *testing.T
	tag     string
	dataDir string
	ns      *cnitest.Netns
	version string
	ipam    string
}

func newHarness(t *testing.T, ipam string) *harness {
	t.Helper()
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	return &harness{t: t, tag: tag, dataDir: t.TempDir(), ns: cnitest.NewNetns(t, tag), version: "1.1.0", ipam: ipam}
}

// netDir is the network's directory in the reference layout.
func (h *harness) netDir() string { return filepath.Join(h.dataDir, h.tag) }

// call is one invocation; the zero value is eth0 in the harness's netns.
type call struct {
	ifname, netns, cniArgs string
	top                    map[string]any
	ipam                   string
}

func (h *harness) stdin(c call) string {
	h.t.Helper()
	src := h.ipam
	if c.ipam != "" {
		src = c.ipam
	}
	var ipam map[string]any
	if err := json.Unmarshal([]byte(src), &ipam); err != nil {
		h.t.Fatalf("test ipam config %s: %v", src, err)
	}
	if _, ok := ipam["dataDir"]; !ok {
		ipam["dataDir"] = h.dataDir
	}
	conf := map[string]any{"cniVersion": h.version, "name": h.tag, "type": "host-local", "ipam": ipam}
	for k, v := range c.top {
		conf[k] = v
	}
	b, err := json.Marshal(conf)
	if err != nil {
		h.t.Fatal(err)
	}
	return string(b)
}

func (h *harness) run(cmd, id string, c call) cnitest.ExecResult {
	h.t.Helper()
	if c.ifname == "" {
		c.ifname = "eth0"
	}
	if c.netns == "" {
		c.netns = h.ns.Path
	}
	env := map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": id, "CNI_NETNS": c.netns, "CNI_IFNAME": c.ifname,
		"CNI_PATH": cnitest.BinDir(h.t), "CNI_ARGS": c.cniArgs}
	return cnitest.Exec(h.t, "host-local", env, h.stdin(c))
}

// add runs ADD and returns the addresses ("ip/len gw g") it handed out.
func (h *harness) add(id string, c call) []string {
	h.t.Helper()
	res := h.run("ADD", id, c)
	if res.Err != nil {
		h.t.Fatalf("ADD %s: code %d: %s", id, res.Err.Code, res.Err.Msg)
	}
	return addrs(h.t, res.Stdout)
}

// fails runs cmd and returns its error, failing the test on success or on
// another code than want.
func (h *harness) fails(cmd, id string, c call, want uint, mention string) string {
	h.t.Helper()
	res := h.run(cmd, id, c)
	if res.Err == nil {
		h.t.Fatalf("%s %s succeeded, want code %d: %s", cmd, id, want, res.Stdout)
	}
	if res.Err.Code != want || !strings.Contains(res.Err.Msg, mention) {
		h.t.Fatalf("%s %s: code %d %q, want code %d mentioning %q", cmd, id, res.Err.Code, res.Err.Msg, want, mention)
	}
	return res.Err.Msg
}

func (h *harness) ok(cmd, id string, c call) {
	h.t.Helper()
	if res := h.run(cmd, id, c); res.Err != nil {
		h.t.Fatalf("%s %s: code %d: %s", cmd, id, res.Err.Code, res.Err.Msg)
	}
}

func addrs(t *testing.T, out []byte) []string {
	t.Helper()
	r := &current.Result{}
	if err := json.Unmarshal(out, r); err != nil {
		t.Fatalf("decoding result %s: %v", out, err)
	}
	var s []string
	for _, ip := range r.IPs {
		if ip.Interface != nil {
			t.Errorf("IPAM result sets interface %d on %s: that is the main plugin's job", *ip.Interface, ip.Address.String())
		}
		e := ip.Address.String()
		if ip.Gateway != nil {
			e += " gw " + ip.Gateway.String()
		}
		s = append(s, e)
	}
	return s
}

// reservations maps each reserved address to its file's content.
func (h *harness) reservations() map[string]string {
	h.t.Helper()
	ents, err := os.ReadDir(h.netDir())
	if os.IsNotExist(err) {
		return map[string]string{}
	}
	if err != nil {
		h.t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err != nil || e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(h.netDir(), e.Name()))
		if err != nil {
			h.t.Fatal(err)
		}
		m[e.Name()] = string(b)
	}
	return m
}

func (h *harness) reservedIPs() []string {
	var s []string
	for ip := range h.reservations() {
		s = append(s, ip)
	}
	sort.Strings(s)
	return s
}

// metaFiles counts tripod's index links for the network.
func (h *harness) metaFiles() int {
	h.t.Helper()
	ents, err := os.ReadDir(filepath.Join(h.netDir(), ".tripod"))
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return len(ents)
}

// editLabel rewrites with fn the label tripod keeps on each reservation
// of (id, ifname): an extended attribute holding JSON.
func (h *harness) editLabel(id, ifname string, fn func(map[string]any)) {
	h.t.Helper()
	n := 0
	for ip, holder := range h.reservations() {
		if holder != id+"\r\n"+ifname {
			continue
		}
		p := filepath.Join(h.netDir(), ip)
		buf := make([]byte, 4096)
		sz, err := unix.Getxattr(p, "user.tripod.cni", buf)
		if err != nil {
			h.t.Fatalf("label of %s: %v", p, err)
		}
		var m map[string]any
		if err := json.Unmarshal(buf[:sz], &m); err != nil {
			h.t.Fatalf("label of %s: %v", p, err)
		}
		fn(m)
		b, err := json.Marshal(m)
		if err != nil {
			h.t.Fatal(err)
		}
		if err := unix.Setxattr(p, "user.tripod.cni", b, 0); err != nil {
			h.t.Fatal(err)
		}
		n++
	}
	if n == 0 {
		h.t.Fatalf("no reservation of %s/%s", id, ifname)
	}
}

// referenceRelease removes what the reference plugin's DEL removes: every
// file under the network's directory whose content is "<id>\r\n<ifname>".
func (h *harness) referenceRelease(id, ifname string) {
	h.t.Helper()
	err := filepath.Walk(h.netDir(), func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(b)) == id+"\r\n"+ifname {
			return os.Remove(p)
		}
		return nil
	})
	if err != nil {
		h.t.Fatal(err)
	}
}

// clean asserts the data dir holds nothing but the bookkeeping files the
// reference layout keeps between attachments.
func (h *harness) clean() {
	h.t.Helper()
	cnitest.EmptyDir(h.t, h.dataDir, "lock", "last_reserved_ip.0", "last_reserved_ip.1", "last_reserved_ip.2")
}

func equal(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("%s: got %q, want %q", what, got, want)
	}
}
