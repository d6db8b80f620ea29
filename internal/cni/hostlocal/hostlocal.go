// Package hostlocal is the host-local CNI plugin.
package hostlocal

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the host-local plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "host-local"}
}
