package pull

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/tripod-dev/tripod/internal/errdefs"
)

// Endpoint is one place a registry's content can be fetched from: a
// mirror from hosts.toml or the registry itself.
type Endpoint struct {
	Scheme string // "https" or "http"
	Host   string // host[:port]
	// Path is the API root; "/v2" unless hosts.toml says otherwise.
	Path         string
	Capabilities []string // "pull", "resolve"
	Header       http.Header
	TLS          *tls.Config
	// Mirror is true for every endpoint but the registry's own server.
	Mirror bool
}

// Can reports whether the endpoint has a capability.
func (e Endpoint) Can(c string) bool {
	for _, x := range e.Capabilities {
		if x == c {
			return true
		}
	}
	return false
}

func (e Endpoint) String() string { return e.Scheme + "://" + e.Host + e.Path }

// hostsFile is containerd's hosts.toml schema (the parts that apply to a
// pull-only client).
type hostsFile struct {
	Server       string               `toml:"server"`
	Capabilities []string             `toml:"capabilities"`
	CA           any                  `toml:"ca"`
	Client       any                  `toml:"client"`
	SkipVerify   *bool                `toml:"skip_verify"`
	Header       map[string]any       `toml:"header"`
	OverridePath bool                 `toml:"override_path"`
	Host         map[string]hostEntry `toml:"host"`
}

type hostEntry struct {
	Capabilities []string       `toml:"capabilities"`
	CA           any            `toml:"ca"`
	Client       any            `toml:"client"`
	SkipVerify   *bool          `toml:"skip_verify"`
	Header       map[string]any `toml:"header"`
	OverridePath bool           `toml:"override_path"`
	Dial         any            `toml:"dial_timeout"`
}

// hostHeader matches [host."URL"] table headers, to keep the file's order:
// mirrors are tried in the order written, which a TOML map loses.
var hostHeader = regexp.MustCompile(`(?m)^\s*\[\s*host\.(?:"([^"]+)"|'([^']+)')\s*\]`)

// Endpoints returns where to fetch registry host's content from, in order:
// the mirrors of <dir>/<host>/hosts.toml, then the registry itself (or its
// `server`). Without a file, a loopback registry is plain HTTP and any
// other HTTPS, so a local test registry needs no configuration.
func Endpoints(dir, host string) ([]Endpoint, error) {
	def, err := defaultEndpoint(host)
	if err != nil {
		return nil, err
	}
	var path string
	for _, cand := range []string{host, strings.ReplaceAll(host, ":", "_"), "_default"} {
		p := filepath.Join(dir, cand, "hosts.toml")
		if _, err := os.Stat(p); err == nil {
			path = p
			break
		}
	}
	if path == "" || dir == "" {
		return []Endpoint{def}, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("registry hosts: %w", err)
	}
	var hf hostsFile
	if err := toml.Unmarshal(data, &hf); err != nil {
		return nil, fmt.Errorf("registry hosts %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	base := filepath.Dir(path)
	var order []string
	seen := map[string]bool{}
	for _, m := range hostHeader.FindAllStringSubmatch(string(data), -1) {
		if u := m[1] + m[2]; !seen[u] {
			order, seen[u] = append(order, u), true
		}
	}
	// Hosts written as dotted keys have no table header: after the others,
	// in name order.
	var rest []string
	for u := range hf.Host {
		if !seen[u] {
			rest = append(rest, u)
		}
	}
	sort.Strings(rest)
	var out []Endpoint
	for _, u := range append(order, rest...) {
		h, ok := hf.Host[u]
		if !ok {
			continue
		}
		ep, err := endpoint(u, h, base, true)
		if err != nil {
			return nil, fmt.Errorf("registry hosts %s: host %q: %w", path, u, err)
		}
		out = append(out, ep)
	}
	server := def
	if hf.Server != "" {
		server, err = endpoint(hf.Server, hostEntry{Capabilities: hf.Capabilities, CA: hf.CA, Client: hf.Client,
			SkipVerify: hf.SkipVerify, Header: hf.Header, OverridePath: hf.OverridePath}, base, false)
		if err != nil {
			return nil, fmt.Errorf("registry hosts %s: server: %w", path, err)
		}
	} else if hf.CA != nil || hf.SkipVerify != nil || hf.Client != nil {
		tc, err := tlsConfig(hostEntry{CA: hf.CA, Client: hf.Client, SkipVerify: hf.SkipVerify}, base)
		if err != nil {
			return nil, fmt.Errorf("registry hosts %s: %w", path, err)
		}
		server.TLS = tc
	}
	return append(out, server), nil
}

func defaultEndpoint(host string) (Endpoint, error) {
	ep := Endpoint{Scheme: "https", Host: host, Path: "/v2", Capabilities: []string{"pull", "resolve"}}
	if host == "docker.io" {
		ep.Host = "registry-1.docker.io"
	}
	if isLoopback(host) {
		ep.Scheme = "http"
	}
	return ep, nil
}

func isLoopback(hostport string) bool {
	h := hostport
	if hh, _, err := net.SplitHostPort(hostport); err == nil {
		h = hh
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(h, "[]"))
	return ip != nil && ip.IsLoopback()
}

func endpoint(raw string, h hostEntry, base string, mirror bool) (Endpoint, error) {
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return Endpoint{}, fmt.Errorf("%q is not an http(s) URL: %w", raw, errdefs.ErrInvalidArgument)
	}
	ep := Endpoint{Scheme: u.Scheme, Host: u.Host, Mirror: mirror, Capabilities: h.Capabilities}
	if ep.Capabilities == nil {
		ep.Capabilities = []string{"pull", "resolve"}
	}
	// containerd's rule: the path is the API root when override_path is
	// set, otherwise /v2 is appended to it.
	p := strings.TrimSuffix(u.Path, "/")
	switch {
	case h.OverridePath:
		ep.Path = p
	case strings.HasSuffix(p, "/v2"):
		ep.Path = p
	default:
		ep.Path = p + "/v2"
	}
	if len(h.Header) > 0 {
		ep.Header = http.Header{}
		for k, v := range h.Header {
			switch v := v.(type) {
			case string:
				ep.Header.Add(k, v)
			case []any:
				for _, x := range v {
					ep.Header.Add(k, fmt.Sprint(x))
				}
			default:
				return Endpoint{}, fmt.Errorf("header %q: want a string or a list: %w", k, errdefs.ErrInvalidArgument)
			}
		}
	}
	if ep.Scheme == "https" {
		tc, err := tlsConfig(h, base)
		if err != nil {
			return Endpoint{}, err
		}
		ep.TLS = tc
	}
	return ep, nil
}

func tlsConfig(h hostEntry, base string) (*tls.Config, error) {
	if h.CA == nil && h.SkipVerify == nil && h.Client == nil {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if h.SkipVerify != nil {
		tc.InsecureSkipVerify = *h.SkipVerify
	}
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}
	if h.CA != nil {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		for _, p := range stringList(h.CA) {
			pem, err := os.ReadFile(abs(p))
			if err != nil {
				return nil, fmt.Errorf("ca: %w", err)
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ca %s: no certificate found: %w", p, errdefs.ErrInvalidArgument)
			}
		}
		tc.RootCAs = pool
	}
	if h.Client != nil {
		var pairs [][2]string
		switch c := h.Client.(type) {
		case string:
			pairs = append(pairs, [2]string{c, ""})
		case []any:
			for _, x := range c {
				switch x := x.(type) {
				case string:
					pairs = append(pairs, [2]string{x, ""})
				case []any:
					if len(x) != 2 {
						return nil, fmt.Errorf("client: want [cert, key]: %w", errdefs.ErrInvalidArgument)
					}
					pairs = append(pairs, [2]string{fmt.Sprint(x[0]), fmt.Sprint(x[1])})
				}
			}
		}
		for _, p := range pairs {
			cert, key := abs(p[0]), p[1]
			if key == "" {
				key = strings.TrimSuffix(cert, filepath.Ext(cert)) + ".key"
			} else {
				key = abs(key)
			}
			kp, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				return nil, fmt.Errorf("client certificate: %w", err)
			}
			tc.Certificates = append(tc.Certificates, kp)
		}
	}
	return tc, nil
}

func stringList(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, x := range v {
			out = append(out, fmt.Sprint(x))
		}
		return out
	}
	return nil
}

// transport is the HTTP transport for one endpoint: its TLS settings, its
// headers, and a path rewrite when its API root is not /v2.
func (e Endpoint) transport(base *http.Transport) http.RoundTripper {
	t := base
	if e.TLS != nil {
		t = base.Clone()
		t.TLSClientConfig = e.TLS
	}
	if e.Path == "/v2" && len(e.Header) == 0 {
		return t
	}
	return &rewriter{ep: e, next: t}
}

type rewriter struct {
	ep   Endpoint
	next http.RoundTripper
}

func (r *rewriter) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != r.ep.Host {
		return r.next.RoundTrip(req) // token servers, redirects to storage
	}
	req = req.Clone(req.Context())
	// The version check ("/v2/") stays at the host's root when the API
	// root is itself under /v2 (a registry serving mirrors as repository
	// prefixes); otherwise it moves with the rest.
	ping := req.URL.Path == "/v2/" || req.URL.Path == "/v2"
	api := req.URL.Path == "/v2" || strings.HasPrefix(req.URL.Path, "/v2/")
	if r.ep.Path != "/v2" && api && !(ping && strings.HasPrefix(r.ep.Path, "/v2/")) {
		req.URL.Path = r.ep.Path + strings.TrimPrefix(req.URL.Path, "/v2")
		req.URL.RawPath = ""
	}
	for k, v := range r.ep.Header {
		req.Header[k] = append([]string{}, v...)
	}
	return r.next.RoundTrip(req)
}

// newBaseTransport is shared by every endpoint of a Puller.
func newBaseTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}
