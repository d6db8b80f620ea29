// Package portmap is the portmap CNI plugin.
package portmap

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the portmap plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "portmap"}
}
