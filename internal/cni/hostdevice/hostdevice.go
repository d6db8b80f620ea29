// Package hostdevice is the host-device CNI plugin.
package hostdevice

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the host-device plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "host-device"}
}
