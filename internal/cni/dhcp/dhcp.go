// Package dhcp is the dhcp CNI plugin.
package dhcp

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the dhcp plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "dhcp"}
}
