// Package config is tripodd's configuration: one TOML file, every field
// defaulted and validated, with command-line flags applied on top.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// DefaultPath is where tripodd looks for its config when --config is not given.
const DefaultPath = "/etc/tripod/tripod.toml"

// Config is the whole file. Sections belong to the services that read them.
type Config struct {
	// Root holds persistent data (images, metadata); State holds what a
	// reboot may lose (sockets, runtime state).
	Root   string `toml:"root" comment:"persistent data: content store, unpacked layers, metadata"`
	State  string `toml:"state" comment:"volatile state: sockets and runtime files"`
	Listen string `toml:"listen" comment:"CRI endpoint: unix:///path.sock, or tcp://127.0.0.1:PORT (loopback only unless [tls] is set)"`
	TLS    TLS    `toml:"tls"`

	Image     Image     `toml:"image"`
	Runtime   Runtime   `toml:"runtime"`
	Metrics   Metrics   `toml:"metrics"`
	NRI       NRI       `toml:"nri"`
	Streaming Streaming `toml:"streaming"`

	// CSI is tripod-csi's [csi] table, kept in the same file so a node has
	// one config; tripod-csi parses it (tripod-csi --print-config).
	CSI map[string]any `toml:"csi,omitempty" comment:"tripod-csi's settings; tripodd ignores them"`
}

// Streaming configures the server behind the exec, attach and
// port-forward URLs (kubelet connects to it, from the same node).
type Streaming struct {
	Address      string `toml:"address" comment:"host:port of the exec/attach/port-forward server; port 0 picks a free one; a non-loopback address only if set here"`
	CertFile     string `toml:"cert_file" comment:"serve HTTPS with this certificate (PEM); empty: plain HTTP"`
	KeyFile      string `toml:"key_file" comment:"its private key (PEM)"`
	ClientCAFile string `toml:"client_ca_file" comment:"with HTTPS, require client certificates chaining to this CA (PEM); optional"`
}

// TLS serves a tcp:// CRI endpoint over mutual TLS. The CRI has no
// authentication of its own, so a client certificate is always required;
// with TLS set the endpoint may bind a non-loopback address.
type TLS struct {
	CertFile     string `toml:"cert_file" comment:"server certificate (PEM) for a tcp:// listen"`
	KeyFile      string `toml:"key_file" comment:"its private key (PEM)"`
	ClientCAFile string `toml:"client_ca_file" comment:"CA bundle (PEM) that client certificates must chain to"`
}

// Enabled reports whether any TLS field is set.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" || t.ClientCAFile != "" }

// Runtime configures the runtime service (pods and containers).
type Runtime struct {
	CNIConfDir     string             `toml:"cni_conf_dir" comment:"CNI network configurations; the first file by name is used"`
	CNIBinDir      string             `toml:"cni_bin_dir" comment:"CNI plugin binaries (several directories separated by ':')"`
	CgroupDriver   string             `toml:"cgroup_driver" comment:"cgroupfs or systemd; must match kubelet's"`
	CgroupParent   string             `toml:"cgroup_parent" comment:"cgroup parent of containers whose pod names none (cgroupfs path or systemd slice)"`
	DefaultHandler string             `toml:"default_handler" comment:"runtime handler for pods that name none"`
	Handlers       map[string]Handler `toml:"handlers" comment:"OCI runtimes by RuntimeClass handler name, e.g. [runtime.handlers.crun] path = \"crun\""`
	MonitorPath    string             `toml:"monitor_path" comment:"tripod-monitor binary; empty means beside tripodd"`
	EventBuffer    int                `toml:"event_buffer" comment:"container events buffered per GetContainerEvents subscriber; one that falls further behind is cut off (and relists)"`
	CDISpecDirs    []string           `toml:"cdi_spec_dirs" comment:"CDI spec directories, later ones taking precedence; empty disables CDI devices"`
}

// Handler is one OCI runtime.
type Handler struct {
	Path string `toml:"path" comment:"binary name (looked up in PATH) or absolute path"`
	Exec string `toml:"exec,omitempty" comment:"how execs start: direct (tripod-exec joins the container), runtime (<runtime> exec), or empty: direct for runc and crun"`
}

// Image configures the image service.
type Image struct {
	RegistryHostsDir string `toml:"registry_hosts_dir" comment:"directory of containerd-format <registry host>/hosts.toml files (mirrors, TLS, plain HTTP)"`
	// PauseImage is never needed by tripodd itself but kubelet still asks
	// for it: it is pinned so image GC does not remove it.
	PauseImage   string   `toml:"pause_image" comment:"pinned: kubelet's image GC leaves it alone"`
	PinnedImages []string `toml:"pinned_images" comment:"more references reported as pinned"`
	Platform     string   `toml:"platform" comment:"os/arch[/variant] selected from multi-platform images; empty means this node's"`

	MaxConcurrentDownloads int  `toml:"max_concurrent_downloads" comment:"layers fetched at once per pull"`
	AllowDeviceNodes       bool `toml:"allow_device_nodes" comment:"create block and character devices found in layers (otherwise skipped)"`

	// Auths are credentials per registry host, used when the CRI request
	// carries none.
	Auths map[string]Auth `toml:"auths" comment:"credentials per registry host (e.g. [image.auths.\"registry.example.com\"])"`
}

// Auth is one registry's credentials, as in a docker config.json.
type Auth struct {
	Username      string `toml:"username,omitempty"`
	Password      string `toml:"password,omitempty"`
	Auth          string `toml:"auth,omitempty" comment:"base64 of username:password"`
	IdentityToken string `toml:"identity_token,omitempty"`
	RegistryToken string `toml:"registry_token,omitempty"`
}

// Metrics configures the Prometheus text endpoint.
type Metrics struct {
	Address string `toml:"address" comment:"host:port for /metrics over HTTP, loopback only; empty disables"`
}

// Default returns the configuration used when a field is not set.
func Default() Config {
	return Config{
		Root:   "/var/lib/tripod",
		State:  "/run/tripod",
		Listen: "unix:///run/tripod/tripod.sock",
		Image: Image{
			RegistryHostsDir:       "/etc/tripod/certs.d",
			PauseImage:             "registry.k8s.io/pause:3.10",
			PinnedImages:           []string{},
			MaxConcurrentDownloads: 4,
			Auths:                  map[string]Auth{},
		},
		Runtime: Runtime{
			CNIConfDir:     "/etc/cni/net.d",
			CNIBinDir:      "/opt/cni/bin",
			CgroupDriver:   "cgroupfs",
			CgroupParent:   "/tripod",
			DefaultHandler: "runc",
			Handlers:       map[string]Handler{"runc": {Path: "runc"}},
			EventBuffer:    1024,
			CDISpecDirs:    []string{"/etc/cdi", "/var/run/cdi"},
		},
		Streaming: Streaming{Address: "127.0.0.1:0"},
		NRI:       defaultNRI(),
	}
}

// Load reads path over the defaults. A missing file is an error only when
// mustExist is set (an explicit --config).
func Load(path string, mustExist bool) (Config, error) {
	c := Default()
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !mustExist {
			return c, nil
		}
		return c, fmt.Errorf("read config: %w", err)
	}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			return c, fmt.Errorf("config %s: %s", path, strict.String())
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return c, fmt.Errorf("config %s:%d:%d: %s", path, row, col, de.Error())
		}
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Encode writes c as TOML with the field comments.
func (c Config) Encode() ([]byte, error) {
	var b bytes.Buffer
	enc := toml.NewEncoder(&b)
	enc.SetIndentTables(true)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Validate checks every field and says which one is wrong.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	for _, f := range []struct{ name, v string }{{"root", c.Root}, {"state", c.State}, {"image.registry_hosts_dir", c.Image.RegistryHostsDir}} {
		if !filepath.IsAbs(f.v) {
			bad(f.name, "must be an absolute path, got %q", f.v)
		}
	}
	if network, _, err := ParseListenTLS(c.Listen, c.TLS.Enabled()); err != nil {
		bad("listen", "%v", err)
	} else if c.TLS.Enabled() && network != "tcp" {
		bad("tls", "applies only to a tcp:// listen, not %q", c.Listen)
	}
	if c.TLS.Enabled() {
		for _, f := range []struct{ name, v string }{{"tls.cert_file", c.TLS.CertFile}, {"tls.key_file", c.TLS.KeyFile}, {"tls.client_ca_file", c.TLS.ClientCAFile}} {
			if !filepath.IsAbs(f.v) {
				bad(f.name, "must be an absolute path (mutual TLS needs all three files), got %q", f.v)
			}
		}
	}
	if n := c.Image.MaxConcurrentDownloads; n < 1 || n > 64 {
		bad("image.max_concurrent_downloads", "must be between 1 and 64, got %d", n)
	}
	if c.Image.Platform != "" {
		if _, _, _, err := ParsePlatform(c.Image.Platform); err != nil {
			bad("image.platform", "%v", err)
		}
	}
	for host, a := range c.Image.Auths {
		if host == "" || strings.ContainsAny(host, "/ ") {
			bad("image.auths", "%q is not a registry host", host)
		}
		if a.Auth == "" && a.Username == "" && a.IdentityToken == "" && a.RegistryToken == "" {
			bad("image.auths."+host, "no credentials given")
		}
	}
	for _, f := range []struct{ name, v string }{{"runtime.cni_conf_dir", c.Runtime.CNIConfDir}, {"runtime.cni_bin_dir", c.Runtime.CNIBinDir}} {
		for _, d := range filepath.SplitList(f.v) {
			if !filepath.IsAbs(d) {
				bad(f.name, "must be absolute paths, got %q", d)
			}
		}
	}
	if d := c.Runtime.CgroupDriver; d != "cgroupfs" && d != "systemd" {
		bad("runtime.cgroup_driver", "want cgroupfs or systemd, got %q", d)
	}
	for name, h := range c.Runtime.Handlers {
		if name == "" || h.Path == "" {
			bad("runtime.handlers", "handler %q needs a path", name)
		}
		if h.Exec != "" && h.Exec != "direct" && h.Exec != "runtime" {
			bad("runtime.handlers", "handler %q: exec must be direct, runtime or empty, got %q", name, h.Exec)
		}
	}
	if _, ok := c.Runtime.Handlers[c.Runtime.DefaultHandler]; !ok && c.Runtime.DefaultHandler != "runc" {
		bad("runtime.default_handler", "%q is not among runtime.handlers", c.Runtime.DefaultHandler)
	}
	if _, _, err := net.SplitHostPort(c.Streaming.Address); err != nil {
		bad("streaming.address", "want host:port, got %q", c.Streaming.Address)
	}
	if st := c.Streaming; st.CertFile != "" || st.KeyFile != "" || st.ClientCAFile != "" {
		for _, f := range []struct{ name, v string }{{"streaming.cert_file", st.CertFile}, {"streaming.key_file", st.KeyFile}} {
			if !filepath.IsAbs(f.v) {
				bad(f.name, "must be an absolute path (HTTPS needs a certificate and its key), got %q", f.v)
			}
		}
		if st.ClientCAFile != "" && !filepath.IsAbs(st.ClientCAFile) {
			bad("streaming.client_ca_file", "must be an absolute path, got %q", st.ClientCAFile)
		}
	}
	if c.Runtime.EventBuffer < 1 {
		bad("runtime.event_buffer", "must be at least 1, got %d", c.Runtime.EventBuffer)
	}
	validateCDIDirs(c.Runtime.CDISpecDirs, bad)
	c.NRI.validate(bad)
	if a := c.Metrics.Address; a != "" {
		if err := loopbackHostPort(a); err != nil {
			bad("metrics.address", "%v", err)
		}
	}
	return errors.Join(errs...)
}

// ParseListen splits a CRI endpoint into a network and an address for
// net.Listen. TCP is accepted only on loopback: the CRI has no auth.
func ParseListen(s string) (network, addr string, err error) { return ParseListenTLS(s, false) }

// ParseListenTLS is ParseListen for an endpoint served over mutual TLS,
// which may bind any address.
func ParseListenTLS(s string, mutualTLS bool) (network, addr string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("%q: %v", s, err)
	}
	switch u.Scheme {
	case "unix":
		p := u.Path
		if u.Host != "" { // unix://relative/path is a mistake worth naming
			return "", "", fmt.Errorf("%q: want unix:///absolute/path.sock", s)
		}
		if !filepath.IsAbs(p) {
			return "", "", fmt.Errorf("%q: socket path must be absolute", s)
		}
		return "unix", p, nil
	case "tcp":
		if mutualTLS {
			if _, _, err := net.SplitHostPort(u.Host); err != nil {
				return "", "", fmt.Errorf("%q: %v", s, err)
			}
			return "tcp", u.Host, nil
		}
		if err := loopbackHostPort(u.Host); err != nil {
			return "", "", fmt.Errorf("%q: %v (a non-loopback endpoint needs [tls])", s, err)
		}
		return "tcp", u.Host, nil
	}
	return "", "", fmt.Errorf("%q: want unix:///path.sock or tcp://127.0.0.1:PORT", s)
}

func loopbackHostPort(hp string) error {
	host, _, err := net.SplitHostPort(hp)
	if err != nil {
		return fmt.Errorf("%q: %v", hp, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q: only loopback addresses are allowed", hp)
	}
	return nil
}

// ParsePlatform splits os/arch[/variant].
func ParsePlatform(s string) (os, arch, variant string, err error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return "", "", "", fmt.Errorf("%q: want os/arch[/variant]", s)
	}
	if len(parts) == 3 {
		variant = parts[2]
	}
	return parts[0], parts[1], variant, nil
}

// NodePlatform is the platform pulled when none is configured.
func NodePlatform() string {
	if runtime.GOARCH == "arm" {
		return "linux/arm/v7"
	}
	return runtime.GOOS + "/" + runtime.GOARCH
}
