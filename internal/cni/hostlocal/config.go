package hostlocal

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/ipamconf"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
)

const defaultDataDir = "/var/lib/cni/networks"

// netConf is the part of the network configuration host-local reads; the
// schema is the reference plugin's.
type netConf struct {
	CNIVersion    string    `json:"cniVersion"`
	Name          string    `json:"name"`
	IPAM          *ipamConf `json:"ipam"`
	RuntimeConfig struct {
		IPRanges [][]rangeConf `json:"ipRanges"`
		IPs      []string      `json:"ips"`
	} `json:"runtimeConfig"`
	Args struct {
		CNI struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
	// The GC list is raw so that a list present but null (what libcni
	// sends for "no attachment is valid") differs from no list at all.
	ValidAttachments json.RawMessage `json:"cni.dev/valid-attachments"`
	// Attachments is the key's name in the spec's first 1.1.0 text.
	Attachments json.RawMessage `json:"cni.dev/attachments"`
	PrevResult  json.RawMessage `json:"prevResult"`
}

type ipamConf struct {
	Type string `json:"type"`
	// The legacy single range at the top level of "ipam".
	rangeConf
	Ranges     [][]rangeConf    `json:"ranges"`
	Routes     []ipamconf.Route `json:"routes"`
	DataDir    string           `json:"dataDir"`
	ResolvConf string           `json:"resolvConf"`
}

type rangeConf struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Gateway    string `json:"gateway"`
}

// config is a validated configuration.
type config struct {
	version    string
	name       string
	dataDir    string
	sets       []rangeSet
	routes     []*types.Route
	resolvConf string
	// requested[i] is the address asked for in sets[i], if any.
	requested []netip.Addr
	// valid is the GC list; hasValid says whether one was given.
	valid    []types.GCAttachment
	hasValid bool
	prev     json.RawMessage
}

func invalid(format string, args ...any) error {
	return cnierr.New(cnierr.InvalidConfig, "host-local: "+format, args...)
}

// loadBase decodes the configuration and checks only what locating the
// store needs: DEL and GC must work even when the ranges no longer make
// sense.
func loadBase(stdin []byte) (*netConf, *config, error) {
	n := &netConf{}
	if err := cnierr.Decode(stdin, n); err != nil {
		return nil, nil, err
	}
	if n.IPAM == nil {
		return nil, nil, invalid("network config has no \"ipam\" section")
	}
	if n.Name == "" || n.Name == "." || n.Name == ".." || strings.ContainsAny(n.Name, "/\x00") {
		return nil, nil, invalid("network name %q cannot name a directory under the data dir", n.Name)
	}
	c := &config{version: n.CNIVersion, name: n.Name, dataDir: n.IPAM.DataDir, resolvConf: n.IPAM.ResolvConf, prev: n.PrevResult}
	if c.version == "" {
		c.version = "0.1.0"
	}
	if c.dataDir == "" {
		c.dataDir = defaultDataDir
	}
	list := n.ValidAttachments
	if list == nil {
		list = n.Attachments
	}
	if list != nil {
		c.hasValid = true
		if err := json.Unmarshal(list, &c.valid); err != nil {
			return nil, nil, cnierr.New(cnierr.DecodingFailure, "host-local: cni.dev/valid-attachments: %v", err)
		}
	}
	return n, c, nil
}

// load decodes and validates the whole configuration, including the
// addresses requested through CNI_ARGS, args and runtimeConfig.
func load(stdin []byte, cniArgs string) (*config, error) {
	n, c, err := loadBase(stdin)
	if err != nil {
		return nil, err
	}
	// The legacy top-level range becomes set 0, as in the reference
	// plugin; the ipRanges capability replaces them all.
	raw := n.IPAM.Ranges
	where := func(i, j int) string { return fmt.Sprintf("ipam.ranges[%d][%d]", i, j) }
	if n.IPAM.Subnet != "" || n.IPAM.RangeStart != "" || n.IPAM.RangeEnd != "" || n.IPAM.Gateway != "" {
		raw = append([][]rangeConf{{n.IPAM.rangeConf}}, raw...)
		where = func(i, j int) string {
			if i == 0 {
				return "ipam"
			}
			return fmt.Sprintf("ipam.ranges[%d][%d]", i-1, j)
		}
	}
	if len(n.RuntimeConfig.IPRanges) > 0 {
		raw = n.RuntimeConfig.IPRanges
		where = func(i, j int) string { return fmt.Sprintf("runtimeConfig.ipRanges[%d][%d]", i, j) }
	}
	if len(raw) == 0 {
		return nil, invalid("no IP ranges: set ipam.ranges (or ipam.subnet, or the ipRanges capability)")
	}
	var n4, n6 int
	for i, rs := range raw {
		set, err := parseSet(i, rs, where)
		if err != nil {
			return nil, err
		}
		for j, prev := range c.sets {
			if a, b, ok := set.overlaps(prev); ok {
				return nil, invalid("range set %d (%s) overlaps range set %d (%s)", i, a, j, b)
			}
		}
		if set.is4() {
			n4++
		} else {
			n6++
		}
		c.sets = append(c.sets, set)
	}
	if ok, _ := version.GreaterThanOrEqualTo(c.version, "0.3.0"); !ok && (n4 > 1 || n6 > 1) {
		return nil, invalid("cniVersion %s carries one IPv4 and one IPv6 address at most, but %d IPv4 and %d IPv6 range sets are configured", c.version, n4, n6)
	}
	routes, err := ipamconf.Routes("host-local", n.IPAM.Routes)
	if err != nil {
		return nil, err
	}
	c.routes = append(c.routes, routes...)
	if err := c.placeRequested(requested(n, cniArgs)); err != nil {
		return nil, err
	}
	return c, nil
}

type request struct {
	source, text string
}

// requested gathers the addresses asked for, from every source: CNI_ARGS
// IP, args.cni.ips and the "ips" capability.
func requested(n *netConf, cniArgs string) []request {
	var rs []request
	if v := plugin.Args(cniArgs)["IP"]; v != "" {
		for _, s := range strings.Split(v, ",") {
			rs = append(rs, request{"CNI_ARGS IP", strings.TrimSpace(s)})
		}
	}
	for _, s := range n.Args.CNI.IPs {
		rs = append(rs, request{"args.cni.ips", s})
	}
	for _, s := range n.RuntimeConfig.IPs {
		rs = append(rs, request{"runtimeConfig.ips", s})
	}
	return rs
}

// placeRequested assigns each requested address to the range set holding
// it: one per set, none outside every set, none that is never handed out.
func (c *config) placeRequested(rs []request) error {
	c.requested = make([]netip.Addr, len(c.sets))
	for _, r := range rs {
		a, err := parseAddrOrPrefix(r.text)
		if err != nil {
			return invalid("%s %q is not an IP address", r.source, r.text)
		}
		placed := false
		for i, s := range c.sets {
			if s.find(a) < 0 {
				continue
			}
			if !s.usable(a) {
				return invalid("%s %s is a gateway, subnet or broadcast address of range set %d (%s) and is never handed out", r.source, a, i, s)
			}
			if c.requested[i].IsValid() && c.requested[i] != a {
				return invalid("%s %s and %s are both in range set %d (%s): one address per range set", r.source, c.requested[i], a, i, s)
			}
			c.requested[i] = a
			placed = true
			break
		}
		if !placed {
			return invalid("%s %s is outside every range (%s)", r.source, a, c.setsString())
		}
	}
	return nil
}

func (c *config) setsString() string {
	parts := make([]string, len(c.sets))
	for i, s := range c.sets {
		parts[i] = s.String()
	}
	return strings.Join(parts, "; ")
}

func parseAddrOrPrefix(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, errors.New("not an address")
	}
	return a.Unmap(), nil
}

func parseSet(i int, rs []rangeConf, where func(i, j int) string) (rangeSet, error) {
	if len(rs) == 0 {
		return nil, invalid("range set %d is empty", i)
	}
	var set rangeSet
	for j, rc := range rs {
		r, err := rc.parse(where(i, j))
		if err != nil {
			return nil, err
		}
		if len(set) > 0 && r.start.Is4() != set[0].start.Is4() {
			return nil, invalid("range set %d mixes IPv4 and IPv6: subnet %s with %s", i, r.subnet, set[0].subnet)
		}
		for _, o := range set {
			if r.start.Compare(o.end) <= 0 && o.start.Compare(r.end) <= 0 {
				return nil, invalid("range set %d: range %s overlaps range %s", i, r, o)
			}
		}
		set = append(set, r)
	}
	return set, nil
}

// parse validates one range and fills in the defaults: gateway .1, start
// .1 (the gateway is skipped), end the last address (IPv4: before the
// broadcast).
func (rc rangeConf) parse(where string) (ipRange, error) {
	if rc.Subnet == "" {
		return ipRange{}, invalid("%s has no subnet", where)
	}
	p, err := netip.ParsePrefix(rc.Subnet)
	if err != nil || p.Addr().Zone() != "" {
		return ipRange{}, invalid("%s.subnet %q is not in CIDR notation (e.g. 10.22.0.0/16)", where, rc.Subnet)
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	p = p.Masked()
	if p.Bits() > p.Addr().BitLen()-2 {
		return ipRange{}, invalid("%s.subnet %s is too small to allocate from", where, rc.Subnet)
	}
	r := ipRange{subnet: p}
	addr := func(field, s string, def netip.Addr) (netip.Addr, error) {
		if s == "" {
			return def, nil
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Addr{}, invalid("%s.%s %q is not an IP address", where, field, s)
		}
		a = a.Unmap()
		if !p.Contains(a) {
			return netip.Addr{}, invalid("%s.%s %s is outside subnet %s", where, field, s, p)
		}
		return a, nil
	}
	last := broadcast(p)
	if p.Addr().Is4() {
		last = last.Prev()
	}
	if r.gateway, err = addr("gateway", rc.Gateway, p.Addr().Next()); err != nil {
		return r, err
	}
	if r.start, err = addr("rangeStart", rc.RangeStart, p.Addr().Next()); err != nil {
		return r, err
	}
	if r.end, err = addr("rangeEnd", rc.RangeEnd, last); err != nil {
		return r, err
	}
	if r.start.Compare(r.end) > 0 {
		return r, invalid("%s.rangeStart %s is after rangeEnd %s", where, r.start, r.end)
	}
	if r.size().Sign() <= 0 {
		return r, invalid("%s (%s) holds no address that may be handed out", where, r)
	}
	return r, nil
}

// parseResolvConf reads nameservers, domain, search and options from a
// resolv.conf-format file, as the reference plugin's resolvConf does.
func parseResolvConf(path string) (types.DNS, error) {
	var dns types.DNS
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return dns, invalid("resolvConf %s does not exist", path)
		}
		return dns, cnierr.New(cnierr.IOFailure, "host-local: reading resolvConf %s: %v", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "nameserver":
			dns.Nameservers = append(dns.Nameservers, fields[1])
		case "domain":
			dns.Domain = fields[1]
		case "search":
			dns.Search = append(dns.Search, fields[1:]...)
		case "options":
			dns.Options = append(dns.Options, fields[1:]...)
		}
	}
	if err := sc.Err(); err != nil {
		return dns, cnierr.New(cnierr.IOFailure, "host-local: reading resolvConf %s: %v", path, err)
	}
	return dns, nil
}
