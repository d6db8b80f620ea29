// Package sublink is the machinery shared by the plugins that give a
// container a link stacked on a master interface: macvlan, ipvlan and
// vlan. The link is created directly inside the container's namespace in
// one netlink request (the kernel resolves the master in the namespace the
// request comes from), so no temporary host link ever exists: there is
// nothing on the host to leak or to garbage-collect.
package sublink

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/ifaceconf"
	"github.com/tripod-dev/tripod/internal/cni/ipamcall"
	"github.com/tripod-dev/tripod/internal/cni/nldump"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
	"github.com/tripod-dev/tripod/internal/cni/podlink"
)

// Kind is a link type and where the kernel gets it from.
type Kind struct {
	Name   string // netlink kind: "macvlan"
	Module string // kernel module: "macvlan"
	Config string // kernel option: "CONFIG_MACVLAN"
}

// Conf is the part of the network configuration every stacked-link plugin
// shares with the reference plugins' schema.
type Conf struct {
	types.PluginConf
	Master          string `json:"master"`
	MTU             int    `json:"mtu"`
	LinkInContainer bool   `json:"linkInContainer,omitempty"`
}

// Parse decodes stdin into c (a struct embedding Conf) and parses the
// previous result, if any.
func Parse(stdin []byte, c any, base *Conf) error {
	if err := cnierr.Decode(stdin, c); err != nil {
		return err
	}
	if err := version.ParsePrevResult(&base.PluginConf); err != nil {
		return cnierr.New(cnierr.DecodingFailure, "prevResult: %v", err)
	}
	if base.MTU < 0 {
		return cnierr.New(cnierr.InvalidConfig, "mtu %d is negative", base.MTU)
	}
	return nil
}

// Spec is one plugin's request: what to create and how to check it.
type Spec struct {
	Kind Kind
	Conf *Conf
	// MAC, when set, is the new link's address.
	MAC net.HardwareAddr
	// New builds the link to create from attributes that already hold the
	// name, master index, MTU, address and target namespace.
	New func(netlink.LinkAttrs) netlink.Link
	// Verify checks an existing link's type-specific settings (CHECK).
	Verify func(netlink.Link) error
}

// Master returns the link named name in the current namespace, or the
// interface of the default route when name is empty.
func Master(name string) (netlink.Link, error) {
	if name == "" {
		n, err := DefaultRouteInterface()
		if err != nil {
			return nil, err
		}
		name = n
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, cnierr.New(cnierr.InvalidConfig, "master interface %q not found", name)
		}
		return nil, cnierr.New(cnierr.Netlink, "looking up master %q: %v", name, err)
	}
	return l, nil
}

// DefaultRouteInterface names the interface of the current namespace's
// IPv4 default route (IPv6 if there is none).
func DefaultRouteInterface() (string, error) {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := nldump.Retry(func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return "", cnierr.New(cnierr.Netlink, "listing routes: %v", err)
		}
		for _, r := range routes {
			if (r.Dst == nil || isZero(r.Dst)) && r.LinkIndex > 0 {
				l, err := netlink.LinkByIndex(r.LinkIndex)
				if err != nil {
					return "", cnierr.New(cnierr.Netlink, "looking up the default route's interface: %v", err)
				}
				return l.Attrs().Name, nil
			}
		}
	}
	return "", cnierr.New(cnierr.InvalidConfig, `"master" is not set and there is no default route to take it from`)
}

func isZero(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// Add creates the link in the container, runs IPAM (if configured),
// applies the result and brings the link up. On failure it undoes what it
// did, so a retry starts clean.
func Add(ctx context.Context, args *skel.CmdArgs, s *Spec) (*current.Result, error) {
	nsf, err := nsutil.Open(args.Netns)
	if err != nil {
		return nil, err
	}
	defer nsf.Close()
	c := s.Conf
	attrs := netlink.NewLinkAttrs()
	attrs.Name = args.IfName
	attrs.MTU = c.MTU // zero: the kernel inherits the master's
	attrs.HardwareAddr = s.MAC
	create := func() error {
		master, err := Master(c.Master)
		if err != nil {
			return err
		}
		if m := master.Attrs().MTU; c.MTU > m {
			return cnierr.New(cnierr.InvalidConfig, "mtu %d exceeds the MTU %d of master %s", c.MTU, m, master.Attrs().Name)
		}
		attrs.ParentIndex = master.Attrs().Index
		if !c.LinkInContainer {
			attrs.Namespace = netlink.NsFd(int(nsf.Fd()))
		}
		// The kernel's own words tell an unknown link kind from other
		// refusals; only failures carry them, so the cost is nil.
		nl.EnableErrorMessageReporting = true
		if err := netlink.LinkAdd(s.New(attrs)); err != nil {
			return s.createError(err, master.Attrs().Name, args, nsf)
		}
		return nil
	}
	if c.LinkInContainer {
		err = nsutil.DoFile(nsf, create)
	} else {
		err = create()
	}
	if err != nil {
		return nil, err
	}
	undoLink := func() {
		_ = nsutil.DoFile(nsf, func() error { return deleteLink(args.IfName, s.Kind.Name) })
	}
	return podlink.Configure(ctx, args, &c.PluginConf, nsf, "", undoLink)
}

// createError gives a failed link creation its code. The kernel answers
// EOPNOTSUPP with the extended-ack message "Unknown device type" for a
// link kind it does not know (after trying to load its module); the same
// errno without that message means a master that refuses the link. A
// kernel too old for extended acks is judged by its modules instead.
func (s *Spec) createError(err error, master string, args *skel.CmdArgs, nsf *os.File) error {
	k := s.Kind
	unknownKind := strings.Contains(err.Error(), "Unknown device type") ||
		!strings.Contains(err.Error(), ": ") && !KernelHas(k)
	switch {
	case errors.Is(err, unix.EOPNOTSUPP) && unknownKind:
		return cnierr.New(cnierr.KernelUnsupported, "the running kernel has no %s support (%s; module %s is neither loaded nor built in): creating %s on %s: %v",
			k.Name, k.Config, k.Module, args.IfName, master, err)
	case errors.Is(err, unix.EEXIST):
		exists := nsutil.DoFile(nsf, func() error {
			_, err := netlink.LinkByName(args.IfName)
			return err
		}) == nil
		if exists {
			return cnierr.New(cnierr.AlreadyAttached, "interface %s already exists in %s", args.IfName, args.Netns)
		}
		return cnierr.New(cnierr.InvalidConfig, "master %s already has a %s link that conflicts with this one: %v", master, k.Name, err)
	}
	return cnierr.New(cnierr.Netlink, "creating %s link %s on master %s: %v", k.Name, args.IfName, master, err)
}

// KernelHas reports whether the running kernel provides k: its module is
// loaded (the kernel loads it on first use when it can) or built in.
func KernelHas(k Kind) bool {
	if _, err := os.Stat("/sys/module/" + k.Module); err == nil {
		return true
	}
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	f, err := os.Open("/lib/modules/" + unix.ByteSliceToString(u.Release[:]) + "/modules.builtin")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasSuffix(sc.Text(), "/"+k.Module+".ko") {
			return true
		}
	}
	return false
}

// deleteLink removes the link named name from the current namespace if it
// is of kind; a missing link is not an error, and a link of another kind
// (some other plugin's) is left alone.
func deleteLink(name, kind string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return cnierr.New(cnierr.Netlink, "looking up %s: %v", name, err)
	}
	if l.Type() != kind {
		return nil
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return cnierr.New(cnierr.Netlink, "deleting %s: %v", name, err)
	}
	return nil
}

// Del removes the link and releases the IPAM reservation. It succeeds when
// either is already gone, and when the namespace is gone (the kernel
// deleted the link with it).
func Del(ctx context.Context, args *skel.CmdArgs, s *Spec) error {
	if args.Netns != "" {
		err := nsutil.Do(args.Netns, func() error { return deleteLink(args.IfName, s.Kind.Name) })
		if err != nil && !errors.Is(err, nsutil.ErrGone) {
			return err
		}
	}
	if s.Conf.IPAM.Type != "" {
		return ipamcall.Del(ctx, s.Conf.IPAM.Type, args)
	}
	return nil
}

// Check verifies the attachment against the previous result: the link
// exists with the right kind, master and settings, and holds the
// addresses and routes the result gave it.
func Check(ctx context.Context, args *skel.CmdArgs, s *Spec) error {
	c := s.Conf
	prev, idx, err := podlink.Prev(ctx, args, &c.PluginConf)
	if err != nil {
		return err
	}
	var masterIndex int
	if !c.LinkInContainer {
		m, err := Master(c.Master)
		if err != nil {
			return err
		}
		masterIndex = m.Attrs().Index
	}
	return nsutil.Do(args.Netns, func() error {
		if c.LinkInContainer {
			m, err := Master(c.Master)
			if err != nil {
				return err
			}
			masterIndex = m.Attrs().Index
		}
		l, err := podlink.Link(args)
		if err != nil {
			return err
		}
		if l.Type() != s.Kind.Name {
			return cnierr.New(cnierr.InvalidConfig, "interface %s is a %s link, not %s", args.IfName, l.Type(), s.Kind.Name)
		}
		if p := l.Attrs().ParentIndex; p != masterIndex {
			return cnierr.New(cnierr.InvalidConfig, "interface %s sits on link index %d, not on master %q (index %d)", args.IfName, p, c.Master, masterIndex)
		}
		if err := podlink.SameMAC(args, prev.Interfaces[idx], l); err != nil {
			return err
		}
		if c.MTU != 0 && l.Attrs().MTU != c.MTU {
			return cnierr.New(cnierr.InvalidConfig, "interface %s has MTU %d, config says %d", args.IfName, l.Attrs().MTU, c.MTU)
		}
		if s.Verify != nil {
			if err := s.Verify(l); err != nil {
				return err
			}
		}
		return ifaceconf.Check(args.IfName, idx, prev)
	})
}

// GC releases IPAM reservations of attachments no longer valid. Links
// live only inside containers' namespaces and die with them, so there is
// no host-side link to collect.
func GC(ctx context.Context, args *skel.CmdArgs, c *Conf) error {
	if c.IPAM.Type == "" {
		return nil
	}
	return ipamcall.GC(ctx, c.IPAM.Type, args)
}

// Status reports the IPAM plugin's readiness.
func Status(ctx context.Context, args *skel.CmdArgs, c *Conf) error {
	if c.IPAM.Type == "" {
		return nil
	}
	return ipamcall.Status(ctx, c.IPAM.Type, args)
}

// Funcs returns a stacked-link plugin's verbs: each builds its Spec from
// the call's config with spec, then runs the shared verb.
func Funcs(spec func(*skel.CmdArgs) (*Spec, error)) plugin.Funcs {
	return plugin.Funcs{
		Add: func(ctx context.Context, args *skel.CmdArgs) (types.Result, error) {
			s, err := spec(args)
			if err != nil {
				return nil, err
			}
			return Add(ctx, args, s)
		},
		Del: func(ctx context.Context, args *skel.CmdArgs) error {
			s, err := spec(args)
			if err != nil {
				return err
			}
			return Del(ctx, args, s)
		},
		Check: func(ctx context.Context, args *skel.CmdArgs) error {
			s, err := spec(args)
			if err != nil {
				return err
			}
			return Check(ctx, args, s)
		},
		GC: func(ctx context.Context, args *skel.CmdArgs) error {
			s, err := spec(args)
			if err != nil {
				return err
			}
			return GC(ctx, args, s.Conf)
		},
		Status: func(ctx context.Context, args *skel.CmdArgs) error {
			s, err := spec(args)
			if err != nil {
				return err
			}
			return Status(ctx, args, s.Conf)
		},
	}
}
