package bandwidth

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strconv"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
)

// entry is one bandwidth setting, at the top level of the config or as
// the runtimeConfig "bandwidth" capability. Rates are in bits per second,
// bursts in bits. Numbers are kept as written so that a negative or
// fractional value is reported as such rather than as a decoding failure.
type entry struct {
	IngressRate     *number  `json:"ingressRate,omitempty"`
	IngressBurst    *number  `json:"ingressBurst,omitempty"`
	EgressRate      *number  `json:"egressRate,omitempty"`
	EgressBurst     *number  `json:"egressBurst,omitempty"`
	UnshapedSubnets []string `json:"unshapedSubnets,omitempty"`
	ShapedSubnets   []string `json:"shapedSubnets,omitempty"`
}

// number is a JSON number as written.
type number string

func (n *number) UnmarshalJSON(b []byte) error {
	var v json.Number
	if b[0] == '"' || json.Unmarshal(b, &v) != nil {
		return &json.UnmarshalTypeError{Value: "string", Type: reflect.TypeOf(uint64(0))}
	}
	*n = number(v)
	return nil
}

type conf struct {
	types.PluginConf
	// The top-level settings: an entry's fields, spelled out so that a
	// decoding error names them as written.
	IngressRate     *number  `json:"ingressRate,omitempty"`
	IngressBurst    *number  `json:"ingressBurst,omitempty"`
	EgressRate      *number  `json:"egressRate,omitempty"`
	EgressBurst     *number  `json:"egressBurst,omitempty"`
	UnshapedSubnets []string `json:"unshapedSubnets,omitempty"`
	ShapedSubnets   []string `json:"shapedSubnets,omitempty"`
	RuntimeConfig   struct {
		Bandwidth *entry `json:"bandwidth"`
	} `json:"runtimeConfig"`
}

// limit is one direction's validated shaping; a zero rate means none.
type limit struct {
	Rate  uint64 // bits per second
	Burst uint64 // bits
	field string // config field of the burst, for error messages
}

func (l limit) on() bool { return l.Rate > 0 }

// limits are the effective settings: ingress is traffic to the container,
// egress traffic from it.
type limits struct {
	Ingress, Egress limit
}

func (l limits) on() bool { return l.Ingress.on() || l.Egress.on() }

func parse(stdin []byte) (*conf, error) {
	c := &conf{}
	if err := cnierr.Decode(stdin, c); err != nil {
		return nil, err
	}
	return c, nil
}

// effective returns the validated limits. The runtime's bandwidth
// capability, when given, replaces the static settings as a whole.
func (c *conf) effective() (limits, error) {
	e, prefix := &entry{c.IngressRate, c.IngressBurst, c.EgressRate, c.EgressBurst, c.UnshapedSubnets, c.ShapedSubnets}, ""
	if c.RuntimeConfig.Bandwidth != nil {
		e, prefix = c.RuntimeConfig.Bandwidth, "runtimeConfig.bandwidth."
	}
	if len(e.UnshapedSubnets) > 0 {
		return limits{}, cnierr.New(cnierr.UnsupportedField, "%sunshapedSubnets is not supported: every packet of the container is shaped", prefix)
	}
	if len(e.ShapedSubnets) > 0 {
		return limits{}, cnierr.New(cnierr.UnsupportedField, "%sshapedSubnets is not supported: every packet of the container is shaped", prefix)
	}
	var l limits
	var err error
	if l.Ingress, err = direction(e.IngressRate, e.IngressBurst, prefix+"ingressRate", prefix+"ingressBurst"); err != nil {
		return l, err
	}
	if l.Egress, err = direction(e.EgressRate, e.EgressBurst, prefix+"egressRate", prefix+"egressBurst"); err != nil {
		return l, err
	}
	return l, nil
}

func direction(rateN, burstN *number, rateField, burstField string) (limit, error) {
	rate, err := count(rateN, rateField)
	if err != nil {
		return limit{}, err
	}
	burst, err := count(burstN, burstField)
	if err != nil {
		return limit{}, err
	}
	switch {
	case rate == 0 && burst == 0:
		return limit{}, nil
	case rate == 0:
		return limit{}, cnierr.New(cnierr.InvalidConfig, "%s is %d but %s is not set: a burst needs a rate", burstField, burst, rateField)
	case burst == 0:
		return limit{}, cnierr.New(cnierr.InvalidConfig, "%s is %d but %s is not set: a rate needs a burst", rateField, rate, burstField)
	case rate < 8:
		return limit{}, cnierr.New(cnierr.InvalidConfig, "%s %d is below 8 bits per second, the smallest rate the kernel can shape to", rateField, rate)
	case burst/8 >= math.MaxUint32:
		return limit{}, cnierr.New(cnierr.InvalidConfig, "%s %d is 4 GiB or more", burstField, burst)
	}
	return limit{Rate: rate, Burst: burst, field: burstField}, nil
}

// count parses a non-negative whole number of bits.
func count(n *number, field string) (uint64, error) {
	if n == nil {
		return 0, nil
	}
	s := string(*n)
	if v, err := strconv.ParseUint(s, 10, 64); err == nil {
		return v, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	switch {
	case err != nil && !errors.Is(err, strconv.ErrRange):
		return 0, cnierr.New(cnierr.InvalidConfig, "%s %q is not a number", field, s)
	case f < 0:
		return 0, cnierr.New(cnierr.InvalidConfig, "%s %s is negative", field, s)
	case f != math.Trunc(f):
		return 0, cnierr.New(cnierr.InvalidConfig, "%s %s is not a whole number of bits", field, s)
	case f >= math.MaxUint64:
		return 0, cnierr.New(cnierr.InvalidConfig, "%s %s is too large", field, s)
	}
	return uint64(f), nil
}
