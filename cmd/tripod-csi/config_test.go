package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tripod.toml")
	body := "# tripod\n[cri]\nroot = \"/elsewhere\"\n\n[csi]\nroot = \"/srv/csi\"\nmax_volumes = 12\ncapacity = \"10Gi\"\n"
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	c := defaultConfig()
	if err := loadConfig(path, &c); err != nil {
		t.Fatal(err)
	}
	if c.Root != "/srv/csi" || c.MaxVolumes != 12 || c.Capacity != "10Gi" || c.DefaultFsType != "ext4" {
		t.Errorf("loaded %+v", c)
	}
	flags := c
	flags.Root = "/flag"
	merged := merge(c, flags, map[string]bool{"root": true})
	if merged.Root != "/flag" || merged.MaxVolumes != 12 {
		t.Errorf("flag did not override the file: %+v", merged)
	}
	dc, err := merged.driverConfig()
	if err != nil || dc.Capacity != 10<<30 {
		t.Errorf("driverConfig: %+v %v", dc, err)
	}
	// The printed config reads back the same.
	if err := os.WriteFile(path, []byte(merged.TOML()), 0o644); err != nil {
		t.Fatal(err)
	}
	back := defaultConfig()
	if err := loadConfig(path, &back); err != nil || back != merged {
		t.Errorf("round trip: %+v %v", back, err)
	}
}

func TestConfigErrors(t *testing.T) {
	for body, want := range map[string]string{
		"[csi]\nrooot = \"/x\"\n":  "unknown key",
		"[csi]\nmax_volumes = x\n": "want an integer",
		"[csi]\nroot = /x\n":       "quoted string",
		"[csi]\nroot\n":            "key = value",
	} {
		path := filepath.Join(t.TempDir(), "c.toml")
		os.WriteFile(path, []byte(body), 0o644)
		c := defaultConfig()
		if err := loadConfig(path, &c); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want error containing %q", body, err, want)
		}
	}
	c := defaultConfig()
	c.DefaultFsType = "btrfs"
	if _, err := c.driverConfig(); err == nil {
		t.Error("btrfs accepted as default filesystem")
	}
	c = defaultConfig()
	c.Capacity = "lots"
	if _, err := c.driverConfig(); err == nil {
		t.Error("bad capacity accepted")
	}
}

func TestBadDriverNameRefused(t *testing.T) {
	dir := t.TempDir()
	err := run([]string{"--name", "-bad-", "--root", filepath.Join(dir, "root"), "--endpoint", "unix://" + filepath.Join(dir, "s")})
	if err == nil || !strings.Contains(err.Error(), "invalid driver name") {
		t.Errorf("run with a bad name: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "root")); !os.IsNotExist(err) {
		t.Errorf("root created before the name was validated: %v", err)
	}
}
