// Package bridge is the bridge CNI plugin.
package bridge

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the bridge plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "bridge"}
}
