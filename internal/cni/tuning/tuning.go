// Package tuning is the tuning CNI plugin: a chained plugin that sets
// network sysctls and interface attributes (MAC, MTU, promiscuous and
// all-multicast modes, transmit queue length) inside the container's
// network namespace, and puts the previous values back on DEL.
package tuning

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
)

const (
	defaultDataDir = "/run/cni/tuning"
	// allowlistPath is the reference plugin's: when it exists, only
	// sysctls matching one of its patterns may be set.
	allowlistPath = "/etc/cni/tuning/allowlist.conf"
)

// Plugin returns the tuning plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "tuning", Funcs: plugin.Funcs{Add: add, Del: del, Check: check, GC: gc}}
}

// tunables are the settings that args.cni may override.
type tunables struct {
	Sysctl   *sysctlMap `json:"sysctl"`
	Mac      *string    `json:"mac"`
	Promisc  *bool      `json:"promisc"`
	Mtu      *int       `json:"mtu"`
	Allmulti *bool      `json:"allmulti"`
	TxQLen   *int       `json:"txQLen"`
}

type conf struct {
	types.PluginConf
	DataDir  string    `json:"dataDir"`
	Sysctl   sysctlMap `json:"sysctl"`
	Mac      string    `json:"mac"`
	Promisc  *bool     `json:"promisc"`
	Mtu      int       `json:"mtu"`
	Allmulti *bool     `json:"allmulti"`
	TxQLen   *int      `json:"txQLen"`

	RuntimeConfig struct {
		Mac string `json:"mac"`
	} `json:"runtimeConfig"`
	Args struct {
		CNI *tunables `json:"cni"`
	} `json:"args"`
}

func parse(stdin []byte) (*conf, error) {
	c := &conf{}
	if err := cnierr.Decode(stdin, c); err != nil {
		return nil, err
	}
	if c.DataDir == "" {
		c.DataDir = defaultDataDir
	}
	if !filepath.IsAbs(c.DataDir) {
		return nil, cnierr.New(cnierr.InvalidConfig, "dataDir %q must be an absolute path", c.DataDir)
	}
	return c, nil
}

// settings are the effective, validated settings of one attachment.
type settings struct {
	sysctls  []sysctl
	mac      net.HardwareAddr
	macFrom  string // the field the MAC came from, for error messages
	mtu      *int
	txQLen   *int
	promisc  *bool
	allmulti *bool
}

func (s *settings) linkChange() *linkChange {
	return &linkChange{MTU: s.mtu, TxQLen: s.txQLen, Addr: s.mac, Promisc: s.promisc, Allmulti: s.allmulti}
}

func (s *settings) empty() bool { return len(s.sysctls) == 0 && s.linkChange().empty() }

// resolve merges the sources in the reference plugin's order of
// precedence (config, CNI_ARGS MAC, runtimeConfig.mac, args.cni) and
// validates the result.
func resolve(c *conf, args *skel.CmdArgs) (*settings, error) {
	s := &settings{promisc: c.Promisc, allmulti: c.Allmulti, txQLen: c.TxQLen}
	sysctls, mac, macFrom, mtu, mtuFrom, txFrom := c.Sysctl, c.Mac, "mac", c.Mtu, "mtu", "txQLen"
	if m := plugin.Args(args.Args)["MAC"]; m != "" {
		mac, macFrom = m, "CNI_ARGS MAC"
	}
	if c.RuntimeConfig.Mac != "" {
		mac, macFrom = c.RuntimeConfig.Mac, "runtimeConfig.mac"
	}
	if a := c.Args.CNI; a != nil {
		if a.Sysctl != nil {
			if len(a.Sysctl.dups) > 0 {
				return nil, cnierr.New(cnierr.InvalidConfig, "args.cni.sysctl key %q is given more than once", a.Sysctl.dups[0])
			}
			merged := sysctlMap{m: map[string]string{}, dups: sysctls.dups}
			for k, v := range sysctls.m {
				merged.m[k] = v
			}
			for k, v := range a.Sysctl.m {
				merged.m[k] = v
			}
			sysctls = merged
		}
		if a.Mac != nil {
			mac, macFrom = *a.Mac, "args.cni.mac"
		}
		if a.Promisc != nil {
			s.promisc = a.Promisc
		}
		if a.Mtu != nil {
			mtu, mtuFrom = *a.Mtu, "args.cni.mtu"
		}
		if a.Allmulti != nil {
			s.allmulti = a.Allmulti
		}
		if a.TxQLen != nil {
			s.txQLen, txFrom = a.TxQLen, "args.cni.txQLen"
		}
	}
	var err error
	if s.sysctls, err = parseSysctls(sysctls, args.IfName); err != nil {
		return nil, err
	}
	if mac != "" {
		hw, err := net.ParseMAC(mac)
		if err != nil {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s %q is not a MAC address", macFrom, mac)
		}
		if len(hw) == 6 && (hw[0]&1 != 0 || strings.Trim(hw.String(), "0:") == "") {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s %q is not a unicast MAC address", macFrom, mac)
		}
		s.mac, s.macFrom = hw, macFrom
	}
	switch {
	case mtu < 0 || mtu > math.MaxInt32:
		return nil, cnierr.New(cnierr.InvalidConfig, "%s %d is out of range", mtuFrom, mtu)
	case mtu > 0:
		s.mtu = &mtu
	}
	if s.txQLen != nil && (*s.txQLen < 0 || *s.txQLen > math.MaxUint32) {
		return nil, cnierr.New(cnierr.InvalidConfig, "%s %d is out of range (0 to %d)", txFrom, *s.txQLen, uint32(math.MaxUint32))
	}
	return s, nil
}

func add(_ context.Context, args *skel.CmdArgs) (types.Result, error) {
	c, err := parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	s, err := resolve(c, args)
	if err != nil {
		return nil, err
	}
	if err := checkAllowlist(allowlistPath, s.sysctls); err != nil {
		return nil, err
	}
	prev, err := plugin.RequirePrevResult("tuning", &c.PluginConf)
	if err != nil {
		return nil, err
	}
	if s.empty() {
		return prev, nil
	}
	path := statePath(c.DataDir, args.ContainerID, args.IfName)
	old, err := loadState(path)
	if err != nil {
		return nil, err
	}
	nl.EnableErrorMessageReporting = true
	err = nsutil.Do(args.Netns, func() error {
		return apply(s, args, c.Name, path, old)
	})
	if err != nil {
		return nil, err
	}
	if s.mac != nil {
		for _, i := range prev.Interfaces {
			if i.Name == args.IfName && i.Sandbox != "" {
				i.Mac = s.mac.String()
			}
		}
	}
	return prev, nil
}

// apply runs in the container's namespace: it records the current values,
// then changes them, undoing everything if any change fails.
func apply(s *settings, args *skel.CmdArgs, network, path string, old *state) error {
	var l *linkAttrs
	change := s.linkChange()
	if !change.empty() {
		var err error
		if l, err = containerLink(args.IfName); err != nil {
			return err
		}
		if err := validateForLink(s, l, args.IfName); err != nil {
			return err
		}
	}
	orig := make([]string, len(s.sysctls))
	for i, sc := range s.sysctls {
		v, err := readSysctl(sc)
		if err != nil {
			return err
		}
		orig[i] = v
	}

	// The state keeps the values from before the first ADD: a repeated
	// ADD must not record its own earlier changes as the originals.
	st := &state{}
	if old != nil {
		*st = *old
	}
	st.Network, st.ContainerID, st.IfName = network, args.ContainerID, args.IfName
	if st.Sysctl == nil && len(s.sysctls) > 0 {
		st.Sysctl = map[string]string{}
	}
	for i, sc := range s.sysctls {
		if _, ok := st.Sysctl[sc.Path]; !ok {
			st.Sysctl[sc.Path] = orig[i]
		}
	}
	if l != nil {
		if s.mac != nil && st.Mac == "" {
			st.Mac = l.Addr.String()
		}
		if s.mtu != nil && st.Mtu == 0 {
			st.Mtu = l.MTU
		}
		if s.promisc != nil && st.Promisc == nil {
			st.Promisc = ptr(l.promisc())
		}
		if s.allmulti != nil && st.Allmulti == nil {
			st.Allmulti = ptr(l.allmulti())
		}
		if s.txQLen != nil && st.TxQLen == nil {
			st.TxQLen = ptr(l.TxQLen)
		}
	}
	if err := saveState(path, st); err != nil {
		return err
	}
	undoState := func() {
		if old != nil {
			_ = saveState(path, old)
		} else {
			_ = removeState(path)
		}
	}

	for i, sc := range s.sysctls {
		if err := writeSysctl(sc, sc.Value); err != nil {
			for j := i - 1; j >= 0; j-- {
				_ = writeSysctl(s.sysctls[j], orig[j])
			}
			undoState()
			return err
		}
	}
	if l != nil {
		if err := applyLink(l, change); err != nil {
			_ = applyLink(l, undoLink(change, l))
			for j := len(s.sysctls) - 1; j >= 0; j-- {
				_ = writeSysctl(s.sysctls[j], orig[j])
			}
			undoState()
			return linkErr(err, change, args.IfName, s.macFrom)
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

func containerLink(ifName string) (*linkAttrs, error) {
	l, err := getLink(ifName)
	if errors.Is(err, errNoLink) {
		return nil, cnierr.New(cnierr.InvalidEnv, "interface %s (CNI_IFNAME) does not exist in the container's network namespace", ifName)
	}
	if err != nil {
		return nil, cnierr.New(cnierr.Netlink, "reading interface %s: %v", ifName, err)
	}
	return l, nil
}

// validateForLink checks what only the interface can tell: its MTU range
// and address length.
func validateForLink(s *settings, l *linkAttrs, ifName string) error {
	if s.mtu != nil {
		if (l.MinMTU > 0 && *s.mtu < l.MinMTU) || (l.MaxMTU > 0 && *s.mtu > l.MaxMTU) {
			return cnierr.New(cnierr.InvalidConfig, "mtu %d is out of range for %s (%d to %d)", *s.mtu, ifName, l.MinMTU, l.MaxMTU)
		}
	}
	if s.mac != nil && len(l.Addr) != len(s.mac) {
		return cnierr.New(cnierr.InvalidConfig, "%s %s has %d bytes but %s addresses have %d", s.macFrom, s.mac, len(s.mac), ifName, len(l.Addr))
	}
	return nil
}

// undoLink is the change that puts back l's values for what c changes.
func undoLink(c *linkChange, l *linkAttrs) *linkChange {
	u := &linkChange{}
	if c.MTU != nil {
		u.MTU = &l.MTU
	}
	if c.TxQLen != nil {
		u.TxQLen = &l.TxQLen
	}
	if c.Addr != nil {
		u.Addr = l.Addr
	}
	if c.Promisc != nil {
		u.Promisc = ptr(l.promisc())
	}
	if c.Allmulti != nil {
		u.Allmulti = ptr(l.allmulti())
	}
	return u
}

func linkErr(err error, c *linkChange, ifName, macFrom string) error {
	var what []string
	if c.Addr != nil {
		what = append(what, fmt.Sprintf("%s %s", macFrom, c.Addr))
	}
	if c.MTU != nil {
		what = append(what, fmt.Sprintf("mtu %d", *c.MTU))
	}
	if c.TxQLen != nil {
		what = append(what, fmt.Sprintf("txQLen %d", *c.TxQLen))
	}
	if c.Promisc != nil {
		what = append(what, fmt.Sprintf("promisc %v", *c.Promisc))
	}
	if c.Allmulti != nil {
		what = append(what, fmt.Sprintf("allmulti %v", *c.Allmulti))
	}
	code := cnierr.Netlink
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ERANGE) || errors.Is(err, unix.EOPNOTSUPP) {
		code = cnierr.InvalidConfig
	}
	return cnierr.New(code, "setting %s on %s: %v (the ADD was undone)", strings.Join(what, ", "), ifName, err)
}

func del(_ context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	path := statePath(c.DataDir, args.ContainerID, args.IfName)
	st, err := loadState(path)
	if err != nil || st == nil {
		return err
	}
	if args.Netns != "" {
		nl.EnableErrorMessageReporting = true
		err := nsutil.Do(args.Netns, func() error { return restore(st, args.IfName) })
		if err != nil && !errors.Is(err, nsutil.ErrGone) {
			// The state stays so that a retried DEL tries again.
			return err
		}
	}
	return removeState(path)
}

// restore puts back the recorded values. What no longer exists (the
// interface, or a per-interface sysctl with it) has nothing to restore.
func restore(st *state, ifName string) error {
	var errs []error
	for p, v := range st.Sysctl {
		err := writeSysctl(sysctl{Key: strings.ReplaceAll(p, "/", "."), Path: p}, v)
		if err != nil && cnierr.Code(err) != cnierr.InvalidConfig {
			errs = append(errs, err)
		}
	}
	u := &linkChange{Promisc: st.Promisc, Allmulti: st.Allmulti, TxQLen: st.TxQLen}
	if st.Mtu != 0 {
		u.MTU = &st.Mtu
	}
	if st.Mac != "" {
		hw, err := net.ParseMAC(st.Mac)
		if err != nil {
			errs = append(errs, cnierr.New(cnierr.IOFailure, "tuning state holds a bad MAC address %q", st.Mac))
		}
		u.Addr = hw
	}
	if !u.empty() {
		l, err := getLink(ifName)
		switch {
		case errors.Is(err, errNoLink):
		case err != nil:
			errs = append(errs, cnierr.New(cnierr.Netlink, "reading interface %s: %v", ifName, err))
		default:
			if err := applyLink(l, u); err != nil {
				errs = append(errs, cnierr.New(cnierr.Netlink, "restoring the attributes of %s: %v", ifName, err))
			}
		}
	}
	if len(errs) > 0 {
		return cnierr.Wrap(cnierr.Netlink, errors.Join(errs...), "restoring %s", ifName)
	}
	return nil
}

func check(_ context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	s, err := resolve(c, args)
	if err != nil {
		return err
	}
	if _, err := plugin.RequirePrevResult("tuning", &c.PluginConf); err != nil {
		return err
	}
	if s.empty() {
		return nil
	}
	return nsutil.Do(args.Netns, func() error {
		for _, sc := range s.sysctls {
			v, err := readSysctl(sc)
			if err != nil {
				return err
			}
			if !sameValue(v, sc.Value) {
				return cnierr.New(cnierr.InvalidConfig, "sysctl %q is %q, configured %q", sc.Key, v, sc.Value)
			}
		}
		if s.linkChange().empty() {
			return nil
		}
		l, err := containerLink(args.IfName)
		if err != nil {
			return err
		}
		return checkLink(s, l, args.IfName)
	})
}

func checkLink(s *settings, l *linkAttrs, ifName string) error {
	drift := func(what string, have, want any) error {
		return cnierr.New(cnierr.InvalidConfig, "%s of %s is %v, configured %v", what, ifName, have, want)
	}
	switch {
	case s.mac != nil && l.Addr.String() != s.mac.String():
		return drift("MAC address", l.Addr, s.mac)
	case s.mtu != nil && l.MTU != *s.mtu:
		return drift("MTU", l.MTU, *s.mtu)
	case s.txQLen != nil && l.TxQLen != *s.txQLen:
		return drift("transmit queue length", l.TxQLen, *s.txQLen)
	case s.promisc != nil && l.promisc() != *s.promisc:
		return drift("promiscuous mode", l.promisc(), *s.promisc)
	case s.allmulti != nil && l.allmulti() != *s.allmulti:
		return drift("all-multicast mode", l.allmulti(), *s.allmulti)
	}
	return nil
}

func gc(_ context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	keep := map[[2]string]bool{}
	for _, a := range c.ValidAttachments {
		keep[[2]string{a.ContainerID, a.IfName}] = true
	}
	return gcStates(c.DataDir, c.Name, keep)
}
