// Package flannel is the flannel CNI plugin.
package flannel

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the flannel plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "flannel"}
}
