package bandwidth

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/nldump"
)

const (
	ifbPrefix = "bwp"
	// aliasPrefix marks tripod's ifb devices; the alias also carries the
	// network (hashed) and the host veth, so GC can attribute and clean
	// them from the links alone.
	aliasPrefix = "tripod-bandwidth"
	// latencyUsec is how long a packet may wait in a token bucket's queue;
	// it sizes the queue (the reference plugin's value).
	latencyUsec = 25_000
	// maxBufferTicks is the largest bucket the kernel keeps when it is
	// given as a time (TCA_TBF_PARMS): 2^32-1 ns, in 64 ns scheduler
	// ticks. Larger bursts are capped to it.
	maxBufferTicks = math.MaxUint32 >> 6
	// filterHandle is our u32 filter's fixed handle (the first node of
	// u32's root hash table), so a repeated ADD replaces it.
	filterHandle = 0x800<<20 | 0x800
	filterPrio   = 1
)

var (
	rootHandle    = netlink.MakeHandle(1, 0)
	ingressHandle = netlink.MakeHandle(0xffff, 0)
)

// ifbName is the ifb of one attachment: deterministic, so that DEL and GC
// find it with the container's namespace gone.
func ifbName(network, containerID, ifName string) string {
	h := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifName))
	return ifbPrefix + hex.EncodeToString(h[:])[:15-len(ifbPrefix)]
}

func netTag(network string) string {
	h := sha256.Sum256([]byte(network))
	return hex.EncodeToString(h[:8])
}

// ifbAlias describes an ifb: which network it belongs to, the host veth it
// shapes, and (when it fits the kernel's 255 bytes) the attachment.
func ifbAlias(network, containerID, ifName string, hostIndex int) string {
	a := fmt.Sprintf("%s net=%s host=%d", aliasPrefix, netTag(network), hostIndex)
	if full := a + " id=" + containerID + "/" + ifName; len(full) <= 255 {
		return full
	}
	return a
}

// parseAlias returns the network tag and host index of a tripod ifb.
func parseAlias(alias string) (net string, host int, ok bool) {
	f := strings.Fields(alias)
	if len(f) < 3 || f[0] != aliasPrefix {
		return "", 0, false
	}
	for _, kv := range f[1:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "net":
			net = v
		case "host":
			host, _ = strconv.Atoi(v)
		}
	}
	return net, host, net != ""
}

// legacyIfbName is the name the reference plugin gives its ifb (a hash of
// network and container ID only), so DEL also removes those left by it.
func legacyIfbName(network, containerID string) string {
	h := sha512Hex(network + containerID)
	return ifbPrefix + h[:15-len(ifbPrefix)]
}

// tbfParams are a token bucket filter's kernel parameters.
type tbfParams struct {
	Rate   uint64 // bytes per second
	Buffer uint32 // scheduler ticks
	Limit  uint32 // bytes
}

// tbfFor turns bits into the kernel's units: bytes per second, the burst
// as the time to send it at the rate, and a queue of latencyUsec plus the
// burst.
func tbfFor(l limit) tbfParams {
	rate := l.Rate / 8
	burst := float64(l.Burst / 8)
	ticks := burst * 1e6 / float64(rate) * netlink.TickInUsec()
	if ticks > maxBufferTicks {
		ticks = maxBufferTicks
		burst = float64(rate) * maxBufferTicks / netlink.TickInUsec() / 1e6
	}
	lim := float64(rate)*latencyUsec/1e6 + burst
	if lim > math.MaxUint32 {
		lim = math.MaxUint32
	}
	return tbfParams{Rate: rate, Buffer: uint32(ticks), Limit: uint32(lim)}
}

func (p tbfParams) qdisc(linkIndex int) *netlink.Tbf {
	return &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: linkIndex, Handle: rootHandle, Parent: netlink.HANDLE_ROOT},
		Rate:       p.Rate,
		Buffer:     p.Buffer,
		Limit:      p.Limit,
	}
}

// tcErr gives a kernel refusal its code: an unknown qdisc, action or link
// kind means the kernel lacks the feature.
func tcErr(err error, format string, args ...any) error {
	code := cnierr.Netlink
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
		code = cnierr.KernelUnsupported
	}
	return cnierr.New(code, format+": %v", append(args, err)...)
}

// setTbf makes a token bucket the root qdisc of the link.
func setTbf(linkIndex int, p tbfParams, linkName string) error {
	if err := netlink.QdiscReplace(p.qdisc(linkIndex)); err != nil {
		return tcErr(err, "installing the tbf qdisc on %s", linkName)
	}
	return nil
}

// rootTbf returns the link's root qdisc if it is a token bucket with our
// handle, or nil.
func rootTbf(qdiscs []netlink.Qdisc) *netlink.Tbf {
	for _, q := range qdiscs {
		if t, ok := q.(*netlink.Tbf); ok && t.Parent == netlink.HANDLE_ROOT && t.Handle == rootHandle {
			return t
		}
	}
	return nil
}

func ingressQdisc(qdiscs []netlink.Qdisc) netlink.Qdisc {
	for _, q := range qdiscs {
		if _, ok := q.(*netlink.Ingress); ok {
			return q
		}
	}
	return nil
}

// redirect sends everything arriving on the host veth (what the container
// sends) to the ifb, whose root token bucket shapes it.
func redirect(host netlink.Link, ifbIndex int) error {
	name := host.Attrs().Name
	created := true
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: host.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
	if err := netlink.QdiscAdd(q); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return tcErr(err, "adding the ingress qdisc to %s", name)
		}
		created = false
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: host.Attrs().Index,
			Parent:    ingressHandle,
			Handle:    filterHandle,
			Priority:  filterPrio,
			Protocol:  unix.ETH_P_ALL,
		},
		Actions: []netlink.Action{netlink.NewMirredAction(ifbIndex)},
	}
	if err := netlink.FilterReplace(f); err != nil {
		if created {
			_ = netlink.QdiscDel(q)
		}
		return tcErr(err, "redirecting the traffic of %s to its ifb", name)
	}
	return nil
}

// redirectsTo reports whether the filters hold our mirred redirect to the
// ifb, and how many other filters there are.
func redirectsTo(filters []netlink.Filter, ifbIndex int) (ours bool, others int) {
	for _, f := range filters {
		if isOurs(f, ifbIndex) {
			ours = true
		} else {
			others++
		}
	}
	return ours, others
}

func isOurs(f netlink.Filter, ifbIndex int) bool {
	u, ok := f.(*netlink.U32)
	if !ok {
		return false
	}
	for _, a := range u.Actions {
		if m, ok := a.(*netlink.MirredAction); ok && m.Ifindex == ifbIndex && m.MirredAction == netlink.TCA_EGRESS_REDIR {
			return true
		}
	}
	return false
}

// unshape removes what ADD put on the host veth: the redirect to the ifb
// at ifbIndex (with the ingress qdisc once nothing else is on it), and the
// root token bucket. rootAlways removes the latter even when no redirect
// to the ifb proves that the link is this attachment's. A link that is
// gone has nothing to remove.
func unshape(host netlink.Link, ifbIndex int, rootAlways bool) error {
	name := host.Attrs().Name
	qdiscs, err := nldump.Retry(func() ([]netlink.Qdisc, error) { return netlink.QdiscList(host) })
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) || gone(err) {
			return nil
		}
		return tcErr(err, "listing the qdiscs of %s", name)
	}
	var filters []netlink.Filter
	in := ingressQdisc(qdiscs)
	if in != nil && ifbIndex > 0 {
		if filters, err = nldump.Retry(func() ([]netlink.Filter, error) { return netlink.FilterList(host, ingressHandle) }); err != nil {
			return tcErr(err, "listing the ingress filters of %s", name)
		}
	}
	ours, others := redirectsTo(filters, ifbIndex)
	if t := rootTbf(qdiscs); t != nil && (rootAlways || ours) {
		if err := netlink.QdiscDel(t); err != nil && !gone(err) {
			return tcErr(err, "removing the tbf qdisc of %s", name)
		}
	}
	switch {
	case !ours:
	case others == 0:
		if err := netlink.QdiscDel(in); err != nil && !gone(err) {
			return tcErr(err, "removing the ingress qdisc of %s", name)
		}
	default:
		for _, f := range filters {
			if isOurs(f, ifbIndex) {
				if err := netlink.FilterDel(f); err != nil && !gone(err) {
					return tcErr(err, "removing the ifb redirect of %s", name)
				}
			}
		}
	}
	return nil
}

func gone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)
}

func sha512Hex(s string) string {
	h := sha512.Sum512([]byte(s))
	return hex.EncodeToString(h[:])
}
