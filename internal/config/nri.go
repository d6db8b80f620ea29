package config

import (
	"fmt"
	"path/filepath"
	"time"
)

// NRI configures the Node Resource Interface: plugins that connect over a
// unix socket (or are started from plugin_path) and observe and adjust
// pods and containers.
type NRI struct {
	Enable              bool     `toml:"enable" comment:"serve NRI plugins"`
	SocketPath          string   `toml:"socket_path" comment:"unix socket external plugins connect to"`
	PluginPath          string   `toml:"plugin_path" comment:"pre-installed plugins started with tripodd (executables named NN-name)"`
	PluginConfigPath    string   `toml:"plugin_config_path" comment:"drop-in configuration of pre-installed plugins"`
	RegistrationTimeout Duration `toml:"plugin_registration_timeout" comment:"how long a plugin may take to register"`
	RequestTimeout      Duration `toml:"plugin_request_timeout" comment:"how long a plugin may take to answer one event; past it the plugin is dropped and the request goes on without it"`
}

// Duration is a time.Duration written as "2s" in TOML.
type Duration time.Duration

// MarshalText writes d as time.Duration's String.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText parses "500ms", "2s" and the like.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func defaultNRI() NRI {
	return NRI{
		Enable:              true,
		SocketPath:          "/var/run/nri/nri.sock",
		PluginPath:          "/opt/nri/plugins",
		PluginConfigPath:    "/etc/nri/conf.d",
		RegistrationTimeout: Duration(5 * time.Second),
		RequestTimeout:      Duration(2 * time.Second),
	}
}

func (n NRI) validate(bad func(field, format string, args ...any)) {
	if !n.Enable {
		return
	}
	for _, f := range []struct{ name, v string }{{"nri.socket_path", n.SocketPath}, {"nri.plugin_path", n.PluginPath}, {"nri.plugin_config_path", n.PluginConfigPath}} {
		if !filepath.IsAbs(f.v) {
			bad(f.name, "must be an absolute path, got %q", f.v)
		}
	}
	// A unix socket path is limited to 107 bytes.
	if len(n.SocketPath) > 107 {
		bad("nri.socket_path", "%q is longer than a unix socket path may be", n.SocketPath)
	}
	for _, f := range []struct {
		name string
		v    Duration
	}{{"nri.plugin_registration_timeout", n.RegistrationTimeout}, {"nri.plugin_request_timeout", n.RequestTimeout}} {
		if f.v <= 0 || time.Duration(f.v) > 5*time.Minute {
			bad(f.name, "must be between 1ns and 5m, got %s", fmt.Sprint(time.Duration(f.v)))
		}
	}
}

func validateCDIDirs(dirs []string, bad func(field, format string, args ...any)) {
	for _, d := range dirs {
		if !filepath.IsAbs(d) {
			bad("runtime.cdi_spec_dirs", "must be absolute paths, got %q", d)
		}
	}
}
