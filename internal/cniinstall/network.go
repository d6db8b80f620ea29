package cniinstall

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ConfFile is the name the default network config is written under.
const ConfFile = "10-tripod.conflist"

// Network is the default pod network: a bridge with host-local addresses,
// masquerading towards the outside, hostPorts, the firewall plugin (so a
// host whose forward policy is drop still passes pod traffic) and traffic
// shaping from the pod's bandwidth annotations.
type Network struct {
	Name   string       // network name (default "tripod")
	Bridge string       // bridge device (default "tripod0")
	Subnet netip.Prefix // IPv4 pod range
	// IPAMDir is host-local's dataDir; empty means its default
	// (/var/lib/cni/networks).
	IPAMDir string
}

// Defaults fill the unset names.
func (n Network) withDefaults() Network {
	if n.Name == "" {
		n.Name = "tripod"
	}
	if n.Bridge == "" {
		n.Bridge = "tripod0"
	}
	return n
}

// Conflist renders the network as a CNI 1.1.0 configuration list.
func (n Network) Conflist() ([]byte, error) {
	n = n.withDefaults()
	if !n.Subnet.IsValid() || !n.Subnet.Addr().Is4() || n.Subnet.Bits() > 30 {
		return nil, fmt.Errorf("subnet %v: want an IPv4 range of /30 or larger", n.Subnet)
	}
	if len(n.Bridge) > 15 {
		return nil, fmt.Errorf("bridge %q: longer than 15 characters", n.Bridge)
	}
	type (
		rng struct {
			Subnet string `json:"subnet"`
		}
		route struct {
			Dst string `json:"dst"`
		}
		ipamTy struct {
			Type    string  `json:"type"`
			Ranges  [][]rng `json:"ranges"`
			Routes  []route `json:"routes"`
			DataDir string  `json:"dataDir,omitempty"`
		}
		plugin struct {
			Type         string          `json:"type"`
			Bridge       string          `json:"bridge,omitempty"`
			IsGateway    bool            `json:"isGateway,omitempty"`
			IPMasq       bool            `json:"ipMasq,omitempty"`
			HairpinMode  bool            `json:"hairpinMode,omitempty"`
			IPAM         *ipamTy         `json:"ipam,omitempty"`
			Capabilities map[string]bool `json:"capabilities,omitempty"`
		}
	)
	conf := struct {
		CNIVersion string   `json:"cniVersion"`
		Name       string   `json:"name"`
		Plugins    []plugin `json:"plugins"`
	}{"1.1.0", n.Name, []plugin{
		{Type: "bridge", Bridge: n.Bridge, IsGateway: true, IPMasq: true, HairpinMode: true, IPAM: &ipamTy{
			Type: "host-local", Ranges: [][]rng{{{n.Subnet.Masked().String()}}}, Routes: []route{{"0.0.0.0/0"}}, DataDir: n.IPAMDir}},
		{Type: "portmap", Capabilities: map[string]bool{"portMappings": true}},
		{Type: "firewall"},
		{Type: "bandwidth", Capabilities: map[string]bool{"bandwidth": true}},
	}}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Existing returns the config file the runtime would use from dir (the
// first by name, as libcni and tripodd pick), or "" when there is none.
func Existing(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	var names []string
	for _, e := range ents {
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			if !e.IsDir() {
				names = append(names, e.Name())
			}
		}
	}
	if len(names) == 0 {
		return "", nil
	}
	sort.Strings(names)
	return filepath.Join(dir, names[0]), nil
}

// NetworkName reads the name of the network a config file defines.
func NetworkName(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var c struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return c.Name, nil
}

// Write puts conf into destDir+dir under name unless dir already holds a
// config (then it returns that file and written=false). The file appears
// whole (written beside and renamed). made lists what was created, the
// directories first.
func Write(destDir, dir, name string, conf []byte, record Record) (path string, written bool, made []string, err error) {
	full := filepath.Join(destDir, dir)
	if existing, err := Existing(full); err != nil || existing != "" {
		return existing, false, nil, err
	}
	if record == nil {
		record = func(byte, string) {}
	}
	made, err = mkdirAll(destDir, dir, record)
	if err != nil {
		return "", false, made, err
	}
	path = filepath.Join(full, name)
	f, err := os.CreateTemp(full, "."+name+".tmp-*")
	if err != nil {
		return "", false, made, err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(conf)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	// Link, not rename: a config another installer wrote meanwhile under
	// the same name is not replaced.
	if err == nil {
		err = os.Link(f.Name(), path)
	}
	if err != nil {
		return "", false, made, fmt.Errorf("write %s: %w", path, err)
	}
	record('f', filepath.Join(dir, name))
	return path, true, append(made, path), nil
}

// Candidate ranges, in order: 10.88.0.0/16 (the range podman and
// containerd's examples use) and the rest of 10/8 above it, then
// 172.16/12 and 192.168/16 in smaller pieces.
func candidates() []netip.Prefix {
	var out []netip.Prefix
	for b := 88; b <= 255; b++ {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(b), 0, 0}), 16))
	}
	for b := 16; b <= 31; b++ {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(b), 0, 0}), 16))
	}
	for b := 0; b <= 255; b++ {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(b), 0}), 24))
	}
	return out
}

// FreeSubnet picks the first candidate private range that overlaps none
// of taken.
func FreeSubnet(taken []netip.Prefix) (netip.Prefix, error) {
	for _, c := range candidates() {
		if !slices.ContainsFunc(taken, c.Overlaps) {
			return c, nil
		}
	}
	return netip.Prefix{}, errors.New("every private IPv4 range tried (10.88-255.0.0/16, 172.16-31.0.0/16, 192.168.x.0/24) overlaps a route or address of this host: name one with --subnet")
}

// HostPrefixes lists the IPv4 ranges in use in the calling thread's network
// namespace: every address's network and every route's destination in any
// table, except default routes. Addresses and routes of the link named
// except (the bridge of the network being configured) are left out, so a
// bridge left from an earlier config does not push its own range away.
func HostPrefixes(except string) ([]netip.Prefix, error) {
	skip := -1
	if except != "" {
		if l, err := netlink.LinkByName(except); err == nil {
			skip = l.Attrs().Index
		}
	}
	var out []netip.Prefix
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if a.LinkIndex == skip || a.IPNet == nil {
			continue
		}
		if p, ok := prefix(a.IPNet); ok {
			out = append(out, p.Masked())
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.LinkIndex == skip && skip > 0 || r.Dst == nil {
			continue
		}
		if p, ok := prefix(r.Dst); ok && p.Bits() > 0 {
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

func prefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
