// Package ipvlan is the ipvlan CNI plugin.
package ipvlan

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the ipvlan plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "ipvlan"}
}
