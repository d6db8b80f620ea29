// Command tripod-cni is every tripod CNI plugin in one executable. It acts
// as the plugin named by the name it was invoked under (bin/cni/bridge is a
// link to it), or by its first argument: tripod-cni bridge.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/tripod-dev/tripod/internal/cni/bandwidth"
	"github.com/tripod-dev/tripod/internal/cni/bridge"
	"github.com/tripod-dev/tripod/internal/cni/dhcp"
	"github.com/tripod-dev/tripod/internal/cni/firewall"
	"github.com/tripod-dev/tripod/internal/cni/flannel"
	"github.com/tripod-dev/tripod/internal/cni/hostdevice"
	"github.com/tripod-dev/tripod/internal/cni/hostlocal"
	"github.com/tripod-dev/tripod/internal/cni/ipvlan"
	"github.com/tripod-dev/tripod/internal/cni/loopback"
	"github.com/tripod-dev/tripod/internal/cni/macvlan"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
	"github.com/tripod-dev/tripod/internal/cni/portmap"
	"github.com/tripod-dev/tripod/internal/cni/ptp"
	"github.com/tripod-dev/tripod/internal/cni/static"
	"github.com/tripod-dev/tripod/internal/cni/tuning"
	"github.com/tripod-dev/tripod/internal/cni/vlan"
)

func plugins() map[string]func() plugin.Plugin {
	return map[string]func() plugin.Plugin{
		"bandwidth":   bandwidth.Plugin,
		"bridge":      bridge.Plugin,
		"dhcp":        dhcp.Plugin,
		"firewall":    firewall.Plugin,
		"flannel":     flannel.Plugin,
		"host-device": hostdevice.Plugin,
		"host-local":  hostlocal.Plugin,
		"ipvlan":      ipvlan.Plugin,
		"loopback":    loopback.Plugin,
		"macvlan":     macvlan.Plugin,
		"portmap":     portmap.Plugin,
		"ptp":         ptp.Plugin,
		"static":      static.Plugin,
		"tuning":      tuning.Plugin,
		"vlan":        vlan.Plugin,
	}
}

func main() {
	all := plugins()
	name := filepath.Base(os.Args[0])
	if _, ok := all[name]; !ok && len(os.Args) > 1 {
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	if name == "list" {
		var names []string
		for n := range all {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Println(n)
		}
		return
	}
	if name == "dhcp" && len(os.Args) > 1 && os.Args[1] == "daemon" {
		os.Exit(dhcp.Daemon(os.Args[2:]))
	}
	mk, ok := all[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "tripod-cni: no plugin named %q; run it as a link named after a plugin, or as 'tripod-cni PLUGIN' ('tripod-cni list' lists them)\n", name)
		os.Exit(2)
	}
	os.Exit(plugin.Main(mk()))
}
