package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaultRoundTrip(t *testing.T) {
	def := Default()
	if err := def.Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
	out, err := def.Encode()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "tripod.toml")
	os.WriteFile(p, out, 0o644)
	got, err := Load(p, true)
	if err != nil {
		t.Fatalf("printed default does not load: %v\n%s", err, out)
	}
	if got.Root != def.Root || got.Listen != def.Listen || got.Image.PauseImage != def.Image.PauseImage || got.Image.MaxConcurrentDownloads != def.Image.MaxConcurrentDownloads {
		t.Fatalf("round trip: %+v", got)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if c, err := Load(filepath.Join(dir, "missing.toml"), false); err != nil || c.Root != Default().Root {
		t.Fatalf("missing optional file: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.toml"), true); err == nil {
		t.Fatal("missing explicit file accepted")
	}
	p := filepath.Join(dir, "c.toml")
	os.WriteFile(p, []byte("root = '/data/tripod'\n[image]\nmax_concurrent_downloads = 8\n[image.auths.'reg.example']\nusername = 'u'\npassword = 'p'\n"), 0o644)
	c, err := Load(p, true)
	if err != nil || c.Root != "/data/tripod" || c.Image.MaxConcurrentDownloads != 8 || c.State != Default().State || c.Image.Auths["reg.example"].Username != "u" {
		t.Fatalf("partial file over defaults: %+v %v", c, err)
	}
	os.WriteFile(p, []byte("[image]\nmax_concurent_downloads = 8\n"), 0o644)
	if _, err := Load(p, true); err == nil || !strings.Contains(err.Error(), "max_concurent_downloads") {
		t.Fatalf("typo not reported: %v", err)
	}
	os.WriteFile(p, []byte("root = \n"), 0o644)
	if _, err := Load(p, true); err == nil || !strings.Contains(err.Error(), ":1:") {
		t.Fatalf("syntax error without position: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for field, mut := range map[string]func(*Config){
		"root":                           func(c *Config) { c.Root = "rel" },
		"state":                          func(c *Config) { c.State = "" },
		"listen":                         func(c *Config) { c.Listen = "tcp://0.0.0.0:1" },
		"image.registry_hosts_dir":       func(c *Config) { c.Image.RegistryHostsDir = "certs.d" },
		"image.max_concurrent_downloads": func(c *Config) { c.Image.MaxConcurrentDownloads = 100 },
		"image.platform":                 func(c *Config) { c.Image.Platform = "linux/" },
		"image.auths.r":                  func(c *Config) { c.Image.Auths = map[string]Auth{"r": {}} },
		"metrics.address":                func(c *Config) { c.Metrics.Address = "192.168.1.1:9000" },
		"tls.key_file": func(c *Config) {
			c.Listen = "tcp://127.0.0.1:1"
			c.TLS = TLS{CertFile: "/c.pem", ClientCAFile: "/ca.pem"}
		},
		"tls: applies only":   func(c *Config) { c.TLS = TLS{CertFile: "/c.pem", KeyFile: "/k.pem", ClientCAFile: "/ca.pem"} },
		"needs [tls]":         func(c *Config) { c.Listen = "tcp://0.0.0.0:373" },
		"streaming.address":   func(c *Config) { c.Streaming.Address = "127.0.0.1" },
		"streaming.key_file":  func(c *Config) { c.Streaming.CertFile = "/c.pem" },
		"streaming.cert_file": func(c *Config) { c.Streaming.ClientCAFile = "/ca.pem" },
	} {
		c := Default()
		mut(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v", field, err)
		}
	}
	for _, ok := range []string{"unix:///run/x.sock", "tcp://127.0.0.1:373", "tcp://localhost:373", "tcp://[::1]:373"} {
		if _, _, err := ParseListen(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	st := Default()
	if st.Streaming.Address != "127.0.0.1:0" {
		t.Errorf("streaming listens on %q by default, want loopback", st.Streaming.Address)
	}
	st.Streaming = Streaming{Address: "0.0.0.0:10010", CertFile: "/c.pem", KeyFile: "/k.pem"}
	if err := st.Validate(); err != nil {
		t.Errorf("a configured non-loopback streaming address with TLS: %v", err)
	}
	mtls := Default()
	mtls.Listen, mtls.TLS = "tcp://0.0.0.0:373", TLS{CertFile: "/c.pem", KeyFile: "/k.pem", ClientCAFile: "/ca.pem"}
	if err := mtls.Validate(); err != nil {
		t.Errorf("a non-loopback endpoint with mutual TLS: %v", err)
	}
	for _, bad := range []string{"unix://relative.sock", "/run/x.sock", "http://127.0.0.1:1", "tcp://example.com:1"} {
		if _, _, err := ParseListen(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
