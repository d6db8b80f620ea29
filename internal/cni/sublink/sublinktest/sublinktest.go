// Package sublinktest holds the host-side tests every stacked-link plugin
// (macvlan, ipvlan, vlan) runs: config validation, and the error for a
// kernel without the link type. The links themselves are tested in a VM by
// internal/cni/l2test, as this host's kernel may lack them.
package sublinktest

import (
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/vmtest"
)

// Plugin names a plugin under test and the kernel support it needs.
type Plugin struct {
	Type   string // plugin type: "vlan"
	Module string // kernel module: "8021q"
	Config string // kernel option: "CONFIG_VLAN_8021Q"
	// Extra is more JSON members a valid config of this plugin needs,
	// each with a leading comma: `,"vlanId":10`.
	Extra string
	// Probe builds a link of this type on the given attributes, to learn
	// whether the kernel creates such links.
	Probe func(netlink.LinkAttrs) netlink.Link
}

// Env is a pod namespace and a host veth to stack links on (MTU 1400),
// both removed at cleanup.
type Env struct {
	Tag    string
	NS     *cnitest.Netns
	Master string
}

// Setup makes an Env.
func Setup(t *testing.T) *Env {
	t.Helper()
	cnitest.Root(t)
	vmtest.Host(t)
	tag := cnitest.Tag(t)
	e := &Env{Tag: tag, NS: cnitest.NewNetns(t, tag), Master: tag + "m"}
	t.Cleanup(func() { cnitest.DeleteLinks(tag) })
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: e.Master, MTU: 1400}, PeerName: tag + "p"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("creating master veth: %v", err)
	}
	return e
}

// Vars is the plugin environment for verb cmd on eth0 in the pod, with
// CNI_ARGS args.
func (e *Env) Vars(cmd, args string) map[string]string {
	return map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c1", "CNI_NETNS": e.NS.Path, "CNI_IFNAME": "eth0", "CNI_PATH": os.Getenv(cnitest.BinEnv), "CNI_ARGS": args}
}

// KernelWithout checks that ADD on a kernel without the link type fails
// with code 102 naming the type and kernel option, leaves nothing behind,
// and that DEL of that attachment succeeds. It skips, saying why, on a
// kernel that has the link type.
func KernelWithout(t *testing.T, p Plugin) {
	e := Setup(t)
	if kernelHas(t, e.NS, p.Probe) {
		t.Skipf("skipped: this kernel has %s, so the KernelUnsupported path cannot be reached (the VM tests cover the link)", p.Module)
	}
	conf := `{"cniVersion":"1.1.0","name":"` + e.Tag + `","type":"` + p.Type + `","master":"` + e.Master + `"` + p.Extra + `,"ipam":{"type":"static","addresses":[{"address":"10.9.0.2/24"}]}}`
	r := cnitest.Exec(t, p.Type, e.Vars("ADD", ""), conf)
	if r.Err == nil {
		t.Fatalf("ADD succeeded on a kernel without %s: %s", p.Module, r.Stdout)
	}
	if r.Err.Code != 102 || !strings.Contains(r.Err.Msg, p.Type) || !strings.Contains(r.Err.Msg, p.Config) {
		t.Errorf("error %d %q, want code 102 naming %s and %s", r.Err.Code, r.Err.Msg, p.Type, p.Config)
	}
	e.NS.OnlyLo(t)
	// DEL of the attachment that never came to be succeeds.
	if r := cnitest.Exec(t, p.Type, e.Vars("DEL", ""), conf); r.Err != nil {
		t.Errorf("DEL: %v", r.Err)
	}
	cnitest.DeleteLinks(e.Tag)
	cnitest.NoLinks(t, e.Tag)
}

// BadCase is a config ADD must refuse.
type BadCase struct {
	Name string
	Conf string // JSON members after type, master included
	Args string // CNI_ARGS
	Code uint
	Msg  string // what the message must contain
}

// Bad is a BadCase: ADD with the members conf and CNI_ARGS args fails
// with code and a message containing msg.
func Bad(name, conf, args string, code uint, msg string) BadCase {
	return BadCase{Name: name, Conf: conf, Args: args, Code: code, Msg: msg}
}

// BadConfig runs ADD with each case's config and checks the error's code
// and message, and that the pod is left with only lo. cases gets the Env
// to name its master and tag.
func BadConfig(t *testing.T, typ string, cases func(e *Env) []BadCase) {
	e := Setup(t)
	base := `"cniVersion":"1.1.0","name":"` + e.Tag + `","type":"` + typ + `"`
	for _, tc := range cases(e) {
		t.Run(tc.Name, func(t *testing.T) {
			r := cnitest.Exec(t, typ, e.Vars("ADD", tc.Args), `{`+base+`,`+tc.Conf+`}`)
			if r.Err == nil {
				t.Fatalf("ADD succeeded: %s", r.Stdout)
			}
			if r.Err.Code != tc.Code || !strings.Contains(r.Err.Msg, tc.Msg) {
				t.Errorf("error %d %q, want code %d mentioning %q", r.Err.Code, r.Err.Msg, tc.Code, tc.Msg)
			}
			e.NS.OnlyLo(t)
		})
	}
}

// kernelHas reports whether the kernel creates the links probe builds,
// trying one on a veth in the test's namespace.
func kernelHas(t *testing.T, ns *cnitest.Netns, probe func(netlink.LinkAttrs) netlink.Link) bool {
	t.Helper()
	ok := false
	ns.Do(t, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "probe0"}, PeerName: "probe1"}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		defer netlink.LinkDel(v)
		p, err := netlink.LinkByName("probe0")
		if err != nil {
			return err
		}
		l := probe(netlink.LinkAttrs{Name: "probe2", ParentIndex: p.Attrs().Index})
		if netlink.LinkAdd(l) == nil {
			ok = true
			return netlink.LinkDel(l)
		}
		return nil
	})
	return ok
}
