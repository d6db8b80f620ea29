package portmap

import (
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nftexpr"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
)

type entry struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

type conf struct {
	types.PluginConf
	SNAT *bool `json:"snat,omitempty"`
	// MarkMasqBit and ExternalSetMarkChain are accepted for compatibility
	// and validated as the reference does, but unused: masquerading is
	// decided from conntrack in tripod's own postrouting chain, so no mark
	// bit is claimed and no external (iptables) chain is called.
	MarkMasqBit          *int      `json:"markMasqBit,omitempty"`
	ExternalSetMarkChain *string   `json:"externalSetMarkChain,omitempty"`
	MasqAll              bool      `json:"masqAll,omitempty"`
	ConditionsV4         *[]string `json:"conditionsV4,omitempty"`
	ConditionsV6         *[]string `json:"conditionsV6,omitempty"`
	RuntimeConfig        struct {
		PortMaps []entry `json:"portMappings,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// mapping is a validated portMappings entry.
type mapping struct {
	index    int
	proto    string
	protoNum byte
	hostPort uint16
	ctrPort  uint16
	// hostIP is nil for "every local address"; an unspecified address
	// (0.0.0.0, ::) limits the mapping to its family only.
	hostIP net.IP
}

func (m mapping) appliesTo(f fam) bool { return m.hostIP == nil || nftexpr.FamOf(m.hostIP) == f }

// daddr is the destination the mapping is restricted to, if any.
func (m mapping) daddr() net.IP {
	if m.hostIP == nil || m.hostIP.IsUnspecified() {
		return nil
	}
	return m.hostIP
}

func (m mapping) String() string {
	host := "*"
	if d := m.daddr(); d != nil {
		host = d.String()
	} else if m.hostIP != nil {
		host = m.hostIP.String()
	}
	return fmt.Sprintf("runtimeConfig.portMappings[%d] (%s %s:%d -> %d)", m.index, m.proto, host, m.hostPort, m.ctrPort)
}

// overlaps reports whether two mappings would capture the same packets.
func (m mapping) overlaps(o mapping) bool {
	if m.protoNum != o.protoNum || m.hostPort != o.hostPort {
		return false
	}
	if m.hostIP == nil || o.hostIP == nil {
		return true
	}
	if nftexpr.FamOf(m.hostIP) != nftexpr.FamOf(o.hostIP) {
		return false
	}
	return m.hostIP.IsUnspecified() || o.hostIP.IsUnspecified() || m.hostIP.Equal(o.hostIP)
}

type parsed struct {
	conf
	snat  bool
	maps  []mapping
	conds map[byte][]expr.Any // by nfproto
	prev  *current.Result
}

func protocol(name string) (byte, bool) {
	switch name {
	case "tcp":
		return unix.IPPROTO_TCP, true
	case "udp":
		return unix.IPPROTO_UDP, true
	case "sctp":
		return unix.IPPROTO_SCTP, true
	}
	return 0, false
}

func parse(stdin []byte) (*parsed, error) {
	p := &parsed{}
	if err := cnierr.Decode(stdin, &p.conf); err != nil {
		return nil, err
	}
	prev, err := plugin.PrevResult(&p.PluginConf)
	if err != nil {
		return nil, err
	}
	p.prev = prev
	p.snat = p.SNAT == nil || *p.SNAT
	if p.MarkMasqBit != nil && p.ExternalSetMarkChain != nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "markMasqBit and externalSetMarkChain are mutually exclusive")
	}
	if p.MarkMasqBit != nil && (*p.MarkMasqBit < 0 || *p.MarkMasqBit > 31) {
		return nil, cnierr.New(cnierr.InvalidConfig, "markMasqBit %d is out of range 0-31", *p.MarkMasqBit)
	}
	p.conds = map[byte][]expr.Any{}
	for _, c := range []struct {
		field string
		f     fam
		list  *[]string
	}{{"conditionsV4", nftexpr.V4(), p.ConditionsV4}, {"conditionsV6", nftexpr.V6(), p.ConditionsV6}} {
		if c.list == nil {
			continue
		}
		e, err := parseConditions(c.field, c.f, *c.list)
		if err != nil {
			return nil, err
		}
		p.conds[c.f.NFProto] = e
	}
	for i, e := range p.RuntimeConfig.PortMaps {
		m, err := validate(i, e)
		if err != nil {
			return nil, err
		}
		for _, o := range p.maps {
			if m.overlaps(o) {
				return nil, cnierr.New(cnierr.InvalidConfig, "%s overlaps %s", m, o)
			}
		}
		p.maps = append(p.maps, m)
	}
	return p, nil
}

func validate(i int, e entry) (mapping, error) {
	name := fmt.Sprintf("runtimeConfig.portMappings[%d]", i)
	if e.HostPort < 1 || e.HostPort > 65535 {
		return mapping{}, cnierr.New(cnierr.InvalidConfig, "%s: hostPort %d is out of range 1-65535", name, e.HostPort)
	}
	if e.ContainerPort < 1 || e.ContainerPort > 65535 {
		return mapping{}, cnierr.New(cnierr.InvalidConfig, "%s: containerPort %d is out of range 1-65535", name, e.ContainerPort)
	}
	proto := strings.ToLower(e.Protocol)
	if proto == "" {
		proto = "tcp"
	}
	num, ok := protocol(proto)
	if !ok {
		return mapping{}, cnierr.New(cnierr.InvalidConfig, "%s: protocol %q is not tcp, udp or sctp", name, e.Protocol)
	}
	m := mapping{index: i, proto: proto, protoNum: num, hostPort: uint16(e.HostPort), ctrPort: uint16(e.ContainerPort)}
	if e.HostIP != "" {
		m.hostIP = net.ParseIP(e.HostIP)
		if m.hostIP == nil {
			return mapping{}, cnierr.New(cnierr.InvalidConfig, "%s: hostIP %q is not an IP address", name, e.HostIP)
		}
		if v := m.hostIP.To4(); v != nil {
			m.hostIP = v
		}
	}
	return m, nil
}

// podIPs picks the container's first IPv4 and IPv6 address on ifName, as
// the reference does: addresses of host-side interfaces are skipped.
func podIPs(r *current.Result, ifName string) (ip4, ip6 net.IP) {
	for _, ip := range r.IPs {
		if ip.Interface != nil {
			i := *ip.Interface
			if i >= 0 && i < len(r.Interfaces) && (r.Interfaces[i].Sandbox == "" || r.Interfaces[i].Name != ifName) {
				continue
			}
		}
		if v := ip.Address.IP.To4(); v != nil {
			if ip4 == nil {
				ip4 = v
			}
		} else if ip6 == nil {
			ip6 = ip.Address.IP.To16()
		}
	}
	return ip4, ip6
}
