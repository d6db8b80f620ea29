// Package ptp is the ptp CNI plugin.
package ptp

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the ptp plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "ptp"}
}
