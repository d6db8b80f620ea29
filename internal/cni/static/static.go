// Package static is the static CNI plugin.
package static

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the static plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "static"}
}
