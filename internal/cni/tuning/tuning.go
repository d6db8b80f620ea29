// Package tuning is the tuning CNI plugin.
package tuning

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the tuning plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "tuning"}
}
