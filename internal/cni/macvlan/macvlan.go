// Package macvlan is the macvlan CNI plugin.
package macvlan

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the macvlan plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "macvlan"}
}
