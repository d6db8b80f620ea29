package dhcp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/dhcp/api"
	"github.com/tripod-dev/tripod/internal/cni/dhcp/dhcp4"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
)

// netConf is the calling plugin's configuration; IPAM plugins get all of
// it and read their "ipam" section.
type netConf struct {
	types.PluginConf
	IPAM *ipamConf `json:"ipam"`
}

// ipamConf is the reference plugin's schema plus tripod's timeout,
// broadcast and suppress.
type ipamConf struct {
	Type             string          `json:"type"`
	DaemonSocketPath string          `json:"daemonSocketPath"`
	Request          []requestOption `json:"request"`
	Provide          []provideOption `json:"provide"`
	Timeout          *duration       `json:"timeout"`
	Broadcast        bool            `json:"broadcast"`
	Suppress         []string        `json:"suppress"`
}

type requestOption struct {
	SkipDefault bool   `json:"skipDefault"`
	Option      string `json:"option"`
}

type provideOption struct {
	Option  string `json:"option"`
	Value   string `json:"value"`
	FromArg string `json:"fromArg"`
}

// duration is a JSON number of seconds or a Go duration string ("15s").
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch v := v.(type) {
	case float64:
		*d = duration(v * float64(time.Second))
		return nil
	case string:
		p, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("ipam.timeout %q: %v", v, err)
		}
		*d = duration(p)
		return nil
	}
	return fmt.Errorf("ipam.timeout must be a number of seconds or a duration string such as \"10s\", got %s", bytes.TrimSpace(b))
}

// defaultRequest are the options asked for unless skipDefault: what a
// CNI result can carry (address, gateway, routes, DNS).
func defaultRequest() []byte {
	return []byte{
		dhcp4.OptSubnetMask, dhcp4.OptRouter, dhcp4.OptDNS, dhcp4.OptDomainName,
		dhcp4.OptDomainSearch, dhcp4.OptClasslessRoutes, dhcp4.OptStaticRoutes,
	}
}

// clientOwned are the options the client sets itself.
func clientOwned(code byte) bool {
	switch code {
	case dhcp4.OptMessageType, dhcp4.OptRequestedIP, dhcp4.OptServerID, dhcp4.OptParamRequest,
		dhcp4.OptMaxSize, dhcp4.OptOverload, dhcp4.OptLeaseTime:
		return true
	}
	return false
}

// conf is a parsed and validated configuration.
type conf struct {
	netConf
	socket          string
	timeout         time.Duration
	suppressGateway bool
}

func parse(stdin []byte) (*conf, error) {
	c := &conf{}
	if err := cnierr.Decode(stdin, &c.netConf); err != nil {
		return nil, err
	}
	if c.IPAM == nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "network config has no \"ipam\" section for the dhcp plugin")
	}
	c.socket = c.IPAM.DaemonSocketPath
	if c.socket == "" {
		c.socket = api.DefaultSocket
	}
	if c.IPAM.Timeout != nil {
		c.timeout = time.Duration(*c.IPAM.Timeout)
		if c.timeout <= 0 {
			return nil, cnierr.New(cnierr.InvalidConfig, "ipam.timeout must be positive, got %v", c.timeout)
		}
	}
	for i, s := range c.IPAM.Suppress {
		if s != "gateway" {
			return nil, cnierr.New(cnierr.InvalidConfig, "ipam.suppress[%d]: unknown value %q (supported: \"gateway\")", i, s)
		}
		c.suppressGateway = true
	}
	return c, nil
}

// params turns the configuration and CNI_ARGS into what the daemon sends.
func (c *conf) params(containerID, ifName, cniArgs string) (*api.Params, error) {
	p := &api.Params{Broadcast: c.IPAM.Broadcast, Timeout: c.timeout}
	skip := false
	var asked []byte
	for i, r := range c.IPAM.Request {
		skip = skip || r.SkipDefault
		if r.Option == "" || r.Option == "ip-address" {
			continue // the address is always requested
		}
		code, err := dhcp4.ParseOptionName(r.Option)
		if err != nil {
			return nil, cnierr.New(cnierr.InvalidConfig, "ipam.request[%d].option: %v", i, err)
		}
		asked = append(asked, code)
	}
	prl := []byte{dhcp4.OptSubnetMask}
	if !skip {
		prl = append(prl, defaultRequest()...)
	}
	for _, code := range append(prl, asked...) {
		if !bytes.Contains(p.Request, []byte{code}) {
			p.Request = append(p.Request, code)
		}
	}

	args := plugin.Args(cniArgs)
	for i, o := range c.IPAM.Provide {
		code, err := dhcp4.ParseOptionName(o.Option)
		if err != nil {
			return nil, cnierr.New(cnierr.InvalidConfig, "ipam.provide[%d].option: %v", i, err)
		}
		if clientOwned(code) {
			return nil, cnierr.New(cnierr.InvalidConfig, "ipam.provide[%d].option %q is set by the DHCP client itself", i, o.Option)
		}
		if o.Value == "" && o.FromArg == "" {
			return nil, cnierr.New(cnierr.InvalidConfig, "ipam.provide[%d] (option %q) needs \"value\" or \"fromArg\"", i, o.Option)
		}
		v, source := o.Value, "value"
		if a, ok := args[o.FromArg]; ok && o.FromArg != "" {
			v, source = a, "CNI_ARGS "+o.FromArg
		}
		if v == "" {
			continue // fromArg absent from CNI_ARGS: nothing to send
		}
		if len(v) > 255 {
			return nil, cnierr.New(cnierr.InvalidConfig, "ipam.provide[%d]: the %s for option %q is %d bytes, more than a DHCP option holds (255)", i, source, o.Option, len(v))
		}
		if code == dhcp4.OptClientID {
			p.ClientID = []byte(v)
			continue
		}
		p.Provide = append(p.Provide, dhcp4.Option{Code: code, Data: []byte(v)})
	}
	if p.ClientID == nil {
		p.ClientID = defaultClientID(containerID, c.Name, ifName)
	}
	return p, nil
}

// defaultClientID is the reference plugin's client identifier, so that
// server-side reservations keyed on it keep working: type 0 followed by
// "containerID/network/ifname", at most 255 bytes.
func defaultClientID(containerID, network, ifName string) []byte {
	id := containerID + "/" + network + "/" + ifName
	if len(id) > 254 {
		id = id[:254]
	}
	return append([]byte{0}, id...)
}
