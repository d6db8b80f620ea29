// Package firewall is the firewall CNI plugin.
package firewall

import "github.com/tripod-dev/tripod/internal/cni/plugin"

// Plugin returns the firewall plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "firewall"}
}
