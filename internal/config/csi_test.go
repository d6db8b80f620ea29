package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCSITable: tripod-csi's [csi] table shares the file; tripodd's strict
// loading accepts it while still refusing unknown keys of its own.
func TestCSITable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tripod.toml")
	os.WriteFile(p, []byte("root = '/data/tripod'\n[runtime]\ncgroup_parent = '/x'\n[csi]\nroot = '/srv/csi'\nmax_volumes = 3\n"), 0o644)
	c, err := Load(p, true)
	if err != nil {
		t.Fatalf("[csi] refused: %v", err)
	}
	if c.Root != "/data/tripod" || c.CSI["root"] != "/srv/csi" {
		t.Fatalf("loaded %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, []byte("[csi]\nroot = '/srv/csi'\n[runtime]\ncgroup_parnet = '/x'\n"), 0o644)
	if _, err := Load(p, true); err == nil || !strings.Contains(err.Error(), "cgroup_parnet") {
		t.Fatalf("unknown key beside [csi]: %v", err)
	}
	// The default config prints no empty [csi] table.
	out, _ := Default().Encode()
	if strings.Contains(string(out), "[csi]") {
		t.Fatalf("default config has a [csi] table:\n%s", out)
	}
}
