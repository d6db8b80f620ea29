package netns

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// LinkStats are one interface's traffic counters.
type LinkStats struct {
	Name                                    string
	RxBytes, RxPackets, RxErrors, RxDropped uint64
	TxBytes, TxPackets, TxErrors, TxDropped uint64
}

// Links reads the counters of every interface but loopback in the network
// namespace pinned at path, by name. The netlink socket is made inside the
// namespace; the calling thread never leaves its own.
func Links(path string) ([]LinkStats, error) {
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("links in %s: %w", path, err)
	}
	var out []LinkStats
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 {
			continue
		}
		ls := LinkStats{Name: a.Name}
		if s := a.Statistics; s != nil {
			ls.RxBytes, ls.RxPackets, ls.RxErrors, ls.RxDropped = s.RxBytes, s.RxPackets, s.RxErrors, s.RxDropped
			ls.TxBytes, ls.TxPackets, ls.TxErrors, ls.TxDropped = s.TxBytes, s.TxPackets, s.TxErrors, s.TxDropped
		}
		out = append(out, ls)
	}
	slices.SortFunc(out, func(a, b LinkStats) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
