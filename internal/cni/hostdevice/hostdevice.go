// Package hostdevice is the host-device CNI plugin: it moves an existing
// host interface into the container, renamed to CNI_IFNAME, and gives it
// back under its original name on DEL.
//
// The original name is kept in the link's alias (IFLA_IFALIAS), as the
// reference plugin does, so DEL needs no state file and handles links the
// reference plugin moved. Move, rename and alias are one netlink request.
//
// When the container's namespace is destroyed before DEL, the kernel
// returns physical devices to the host namespace under the container-side
// name (or devN if that name is taken); DEL, GC and the next ADD find the
// device by its alias and restore its name. Virtual devices (veth, dummy)
// are destroyed with the namespace instead, and there is nothing to return.
package hostdevice

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
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

// Plugin returns the host-device plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "host-device", Funcs: plugin.Funcs{Add: add, Del: del, Check: check, GC: gc, Status: status}}
}

type conf struct {
	types.PluginConf
	Device        string `json:"device"`
	HWAddr        string `json:"hwaddr"`
	KernelPath    string `json:"kernelpath"`
	PCIAddr       string `json:"pciBusID"`
	RuntimeConfig struct {
		DeviceID string `json:"deviceID,omitempty"`
	} `json:"runtimeConfig,omitempty"`

	mac net.HardwareAddr
	aux string // auxiliary device name, from deviceID
}

var pciAddr = regexp.MustCompile(`^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$`)

func parse(stdin []byte) (*conf, error) {
	c := &conf{}
	if err := cnierr.Decode(stdin, c); err != nil {
		return nil, err
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, cnierr.New(cnierr.DecodingFailure, "prevResult: %v", err)
	}
	n := 0
	for _, s := range []string{c.Device, c.HWAddr, c.KernelPath, c.PCIAddr, c.RuntimeConfig.DeviceID} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return nil, cnierr.New(cnierr.InvalidConfig, `give exactly one of "device", "hwaddr", "kernelpath", "pciBusID" or runtimeConfig "deviceID" (got %d)`, n)
	}
	if id := c.RuntimeConfig.DeviceID; id != "" {
		if pciAddr.MatchString(id) {
			c.PCIAddr = id
		} else {
			c.aux = id
		}
	}
	if c.PCIAddr != "" && !pciAddr.MatchString(c.PCIAddr) {
		return nil, cnierr.New(cnierr.InvalidConfig, `"pciBusID" %q is not a PCI address like 0000:01:00.0`, c.PCIAddr)
	}
	if c.KernelPath != "" && (!filepath.IsAbs(c.KernelPath) || !strings.HasPrefix(filepath.Clean(c.KernelPath), "/sys/")) {
		return nil, cnierr.New(cnierr.InvalidConfig, `"kernelpath" %q is not a path under /sys`, c.KernelPath)
	}
	if c.HWAddr != "" {
		mac, err := net.ParseMAC(c.HWAddr)
		if err != nil {
			return nil, cnierr.New(cnierr.InvalidConfig, `"hwaddr" %q is not a MAC address`, c.HWAddr)
		}
		c.mac = mac
	}
	return c, nil
}

// selector describes the configured device for messages.
func (c *conf) selector() string {
	switch {
	case c.Device != "":
		return fmt.Sprintf("device %q", c.Device)
	case c.HWAddr != "":
		return fmt.Sprintf("hwaddr %s", c.HWAddr)
	case c.KernelPath != "":
		return fmt.Sprintf("kernelpath %s", c.KernelPath)
	case c.aux != "":
		return fmt.Sprintf("auxiliary device %s", c.aux)
	}
	return fmt.Sprintf("PCI device %s", c.PCIAddr)
}

// sysfsNetDir is the directory whose entries name the device's network
// interface, for the selectors that address hardware.
func (c *conf) sysfsNetDir() string {
	switch {
	case c.KernelPath != "":
		return filepath.Join(c.KernelPath, "net")
	case c.PCIAddr != "":
		return filepath.Join("/sys/bus/pci/devices", c.PCIAddr, "net")
	case c.aux != "":
		return filepath.Join("/sys/bus/auxiliary/devices", c.aux, "net")
	}
	return ""
}

// matches reports whether l, a link in the current namespace, is the
// configured device.
func (c *conf) matches(l netlink.Link) bool {
	a := l.Attrs()
	switch {
	case c.Device != "":
		return a.Name == c.Device || a.Alias == c.Device
	case c.mac != nil:
		return a.HardwareAddr.String() == c.mac.String()
	}
	entries, err := os.ReadDir(c.sysfsNetDir())
	if err != nil {
		return false
	}
	for _, e := range entries {
		if e.Name() == a.Name {
			return true
		}
	}
	return false
}

// findHost returns the configured device in the host namespace.
func (c *conf) findHost() (netlink.Link, error) {
	if c.Device != "" {
		if l, err := netlink.LinkByName(c.Device); err == nil {
			return l, nil
		}
	}
	if dir := c.sysfsNetDir(); dir != "" {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s has no network interface (%v); a device bound to a userspace driver cannot be moved", c.selector(), err)
		}
		if len(entries) != 1 {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s has %d network interfaces under %s, want exactly one", c.selector(), len(entries), dir)
		}
		l, err := netlink.LinkByName(entries[0].Name())
		if err != nil {
			return nil, cnierr.New(cnierr.Netlink, "looking up %s of %s: %v", entries[0].Name(), c.selector(), err)
		}
		return l, nil
	}
	links, err := nldump.Retry(func() ([]netlink.Link, error) { return netlink.LinkList() })
	if err != nil {
		return nil, cnierr.New(cnierr.Netlink, "listing links: %v", err)
	}
	// By MAC, or a device the kernel returned from a dead namespace
	// under another name, found by the original name in its alias.
	for _, l := range links {
		if c.matches(l) {
			return l, nil
		}
	}
	return nil, cnierr.New(cnierr.InvalidConfig, "%s not found in the host network namespace", c.selector())
}

// move sends the link with index idx from the current namespace to the one
// open as nsFd, named name there and with the given alias (empty clears
// it), in one request: the kernel downs the device, moves it and renames
// it. The kernel moves before it renames: should the new name be taken
// in the target, the request fails with the device already moved.
func move(idx int, nsFd uintptr, name, alias string) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(idx)
	req.AddData(msg)
	fd := make([]byte, 4)
	binary.NativeEndian.PutUint32(fd, uint32(nsFd))
	req.AddData(nl.NewRtAttr(unix.IFLA_NET_NS_FD, fd))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(alias)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

func add(ctx context.Context, args *skel.CmdArgs) (types.Result, error) {
	c, err := parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	nsf, err := nsutil.Open(args.Netns)
	if err != nil {
		return nil, err
	}
	defer nsf.Close()
	host, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, cnierr.New(cnierr.IOFailure, "opening the host network namespace: %v", err)
	}
	defer host.Close()

	dev, err := c.findHost()
	if err != nil {
		return nil, err
	}
	orig := dev.Attrs().Name
	if a := dev.Attrs().Alias; a != "" && c.matches(dev) && a != orig && c.Device == a {
		orig = a // returned by the kernel from a dead namespace
	}
	if err := move(dev.Attrs().Index, nsf.Fd(), args.IfName, orig); err != nil {
		// The kernel renames after moving: a taken CNI_IFNAME fails the
		// request with the device already in the container under its
		// host name. Send it back as it was.
		_ = nsutil.DoFile(nsf, func() error {
			l, err := netlink.LinkByName(dev.Attrs().Name)
			if err != nil || l.Attrs().HardwareAddr.String() != dev.Attrs().HardwareAddr.String() {
				return nil
			}
			return move(l.Attrs().Index, host.Fd(), dev.Attrs().Name, dev.Attrs().Alias)
		})
		if errors.Is(err, unix.EEXIST) {
			return nil, cnierr.New(cnierr.AlreadyAttached, "interface %s already exists in %s", args.IfName, args.Netns)
		}
		return nil, cnierr.New(cnierr.Netlink, "moving %s into %s as %s: %v", orig, args.Netns, args.IfName, err)
	}
	giveBack := func() {
		_ = nsutil.DoFile(nsf, func() error {
			l, err := netlink.LinkByName(args.IfName)
			if err != nil {
				return err
			}
			return move(l.Attrs().Index, host.Fd(), orig, "")
		})
	}

	return podlink.Configure(ctx, args, &c.PluginConf, nsf, c.PCIAddr, giveBack)
}

func del(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	if args.Netns != "" {
		host, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			return cnierr.New(cnierr.IOFailure, "opening the host network namespace: %v", err)
		}
		defer host.Close()
		err = nsutil.Do(args.Netns, func() error { return giveBack(c, args.IfName, host) })
		if errors.Is(err, nsutil.ErrGone) {
			err = restoreReturned(c, args.IfName)
		}
		if err != nil {
			return err
		}
	}
	if c.IPAM.Type != "" {
		return ipamcall.Del(ctx, c.IPAM.Type, args)
	}
	return nil
}

// giveBack runs in the container's namespace: it moves ifName, if it is
// the device this plugin moved in, back to the host under its original
// name.
func giveBack(c *conf, ifName string, host *os.File) error {
	l, err := netlink.LinkByName(ifName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil // already given back
		}
		return cnierr.New(cnierr.Netlink, "looking up %s: %v", ifName, err)
	}
	orig := l.Attrs().Alias
	if orig == "" {
		if c.mac == nil || l.Attrs().HardwareAddr.String() != c.mac.String() {
			return nil // not a device this plugin moved: leave it alone
		}
		orig = ifName
	}
	if err := move(l.Attrs().Index, host.Fd(), orig, ""); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return cnierr.New(cnierr.Netlink, "cannot return %s to the host as %s: the host already has a link of that name", ifName, orig)
		}
		return cnierr.New(cnierr.Netlink, "returning %s to the host as %s: %v", ifName, orig, err)
	}
	return nil
}

// restoreReturned finds the configured device among host links that the
// kernel returned from a destroyed namespace (it keeps the alias holding
// its original name) and gives it that name back. The kernel names such a
// device ifName, or devN when that is taken. Without ifName (GC) only a
// device configured by name is restored: its alias then is that name, not
// an operator's note.
func restoreReturned(c *conf, ifName string) error {
	links, err := nldump.Retry(func() ([]netlink.Link, error) { return netlink.LinkList() })
	if err != nil {
		return cnierr.New(cnierr.Netlink, "listing links: %v", err)
	}
	for _, l := range links {
		a := l.Attrs()
		if a.Alias == "" || a.Alias == a.Name || !c.matches(l) {
			continue
		}
		if c.Device != "" && a.Alias != c.Device || c.Device == "" && ifName == "" {
			continue
		}
		if ifName != "" && a.Name != ifName && !strings.HasPrefix(a.Name, "dev") {
			continue
		}
		if len(a.Alias) >= unix.IFNAMSIZ || strings.ContainsAny(a.Alias, " /:") {
			continue // not an interface name
		}
		if err := netlink.LinkSetDown(l); err != nil {
			return cnierr.New(cnierr.Netlink, "bringing returned device %s down: %v", a.Name, err)
		}
		if err := netlink.LinkSetName(l, a.Alias); err != nil {
			return cnierr.New(cnierr.Netlink, "renaming returned device %s to %s: %v", a.Name, a.Alias, err)
		}
		if err := netlink.LinkSetAlias(l, ""); err != nil {
			return cnierr.New(cnierr.Netlink, "clearing the alias of %s: %v", a.Alias, err)
		}
	}
	return nil
}

func check(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	prev, idx, err := podlink.Prev(ctx, args, &c.PluginConf)
	if err != nil {
		return err
	}
	return nsutil.Do(args.Netns, func() error {
		l, err := podlink.Link(args)
		if err != nil {
			return err
		}
		if err := podlink.SameMAC(args, prev.Interfaces[idx], l); err != nil {
			return err
		}
		if c.Device != "" && l.Attrs().Alias != c.Device {
			return cnierr.New(cnierr.InvalidConfig, "interface %s is not host device %s (its alias is %q)", args.IfName, c.Device, l.Attrs().Alias)
		}
		return ifaceconf.Check(args.IfName, idx, prev)
	})
}

// gc gives returned devices their names back (see restoreReturned), then
// lets IPAM release what is no longer valid.
func gc(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	if err := restoreReturned(c, ""); err != nil {
		return err
	}
	if c.IPAM.Type != "" {
		return ipamcall.GC(ctx, c.IPAM.Type, args)
	}
	return nil
}

func status(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	if c.IPAM.Type != "" {
		return ipamcall.Status(ctx, c.IPAM.Type, args)
	}
	return nil
}
