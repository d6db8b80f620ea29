// Package bandwidth is the bandwidth CNI plugin.
package bandwidth

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the bandwidth plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "bandwidth"}
}
