package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNRIConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(p, []byte("[nri]\nsocket_path = '/run/tp/nri.sock'\nplugin_request_timeout = '750ms'\n[runtime]\ncdi_spec_dirs = ['/etc/cdi']\n"), 0o644)
	c, err := Load(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if !c.NRI.Enable || c.NRI.SocketPath != "/run/tp/nri.sock" || time.Duration(c.NRI.RequestTimeout) != 750*time.Millisecond ||
		time.Duration(c.NRI.RegistrationTimeout) != 5*time.Second || len(c.Runtime.CDISpecDirs) != 1 {
		t.Fatalf("[nri] over defaults: %+v %v", c.NRI, c.Runtime.CDISpecDirs)
	}
	out, err := c.Encode()
	if err != nil || !strings.Contains(string(out), "plugin_request_timeout = '750ms'") {
		t.Fatalf("encoded: %v\n%s", err, out)
	}
	os.WriteFile(p, []byte("[nri]\nplugin_request_timeout = 'soon'\n"), 0o644)
	if _, err := Load(p, true); err == nil || !strings.Contains(err.Error(), "soon") {
		t.Fatalf("bad duration: %v", err)
	}
	for field, mut := range map[string]func(*Config){
		"nri.socket_path":                 func(c *Config) { c.NRI.SocketPath = "nri.sock" },
		"nri.plugin_path":                 func(c *Config) { c.NRI.PluginPath = "" },
		"nri.plugin_request_timeout":      func(c *Config) { c.NRI.RequestTimeout = 0 },
		"nri.plugin_registration_timeout": func(c *Config) { c.NRI.RegistrationTimeout = Duration(time.Hour) },
		"runtime.cdi_spec_dirs":           func(c *Config) { c.Runtime.CDISpecDirs = []string{"cdi"} },
	} {
		c := Default()
		mut(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v", field, err)
		}
	}
	// Disabled, its paths are not checked.
	c = Default()
	c.NRI.Enable, c.NRI.SocketPath = false, ""
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}
