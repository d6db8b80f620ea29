// Package vlan is the vlan CNI plugin.
package vlan

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the vlan plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "vlan"}
}
