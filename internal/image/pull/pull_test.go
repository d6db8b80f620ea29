package pull

import (
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/tripod-dev/tripod/internal/errdefs"
)

func TestParseRef(t *testing.T) {
	digest := "sha256:" + "ab12000000000000000000000000000000000000000000000000000000000000"[:64]
	cases := map[string]Ref{
		"busybox":                        {Host: "docker.io", Repository: "library/busybox", Tag: "latest"},
		"docker.io/library/busybox:1.36": {Host: "docker.io", Repository: "library/busybox", Tag: "1.36"},
		"index.docker.io/foo/bar:2":      {Host: "docker.io", Repository: "foo/bar", Tag: "2"},
		"registry.k8s.io/pause:3.10":     {Host: "registry.k8s.io", Repository: "pause", Tag: "3.10"},
		"127.0.0.1:5000/a/b/c":           {Host: "127.0.0.1:5000", Repository: "a/b/c", Tag: "latest"},
		"quay.io/x/y@" + digest:          {Host: "quay.io", Repository: "x/y", Digest: digest},
		"quay.io/x/y:v1@" + digest:       {Host: "quay.io", Repository: "x/y", Tag: "v1", Digest: digest},
	}
	for in, want := range cases {
		got, err := ParseRef(in)
		if err != nil || got != want {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	if r, _ := ParseRef("busybox"); r.String() != "docker.io/library/busybox:latest" {
		t.Errorf("String: %s", r.String())
	}
	for _, bad := range []string{"", " busybox", "Busybox", "a:b:c", "x@sha256:12", "repo:" + string(make([]byte, 200))} {
		if _, err := ParseRef(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseRef(%q): %v, want InvalidArgument", bad, err)
		}
	}
}

func writeFile(t *testing.T, p, body string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestEndpoints(t *testing.T) {
	dir := t.TempDir()
	// Defaults.
	for host, want := range map[string]string{
		"docker.io":       "https://registry-1.docker.io/v2",
		"registry.k8s.io": "https://registry.k8s.io/v2",
		"127.0.0.1:5000":  "http://127.0.0.1:5000/v2",
		"localhost:5000":  "http://localhost:5000/v2",
		"[::1]:5000":      "http://[::1]:5000/v2",
		"10.0.0.1:5000":   "https://10.0.0.1:5000/v2",
	} {
		eps, err := Endpoints(dir, host)
		if err != nil || len(eps) != 1 || eps[0].String() != want {
			t.Errorf("%s: %v %v, want %s", host, eps, err, want)
		}
	}
	// Order kept, paths, capabilities, headers, server override.
	writeFile(t, filepath.Join(dir, "registry.k8s.io", "hosts.toml"), `
server = "https://registry.k8s.io"

[host."https://zz-first.example"]
  capabilities = ["pull"]
  [host."https://zz-first.example".header]
    x-mirror = "yes"

[host."http://aa-second.example:5000/prefix"]

[host."https://override.example/custom/api"]
  override_path = true
  skip_verify = true
`)
	eps, err := Endpoints(dir, "registry.k8s.io")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"https://zz-first.example/v2", "http://aa-second.example:5000/prefix/v2", "https://override.example/custom/api", "https://registry.k8s.io/v2"}
	if len(eps) != len(want) {
		t.Fatalf("endpoints %v", eps)
	}
	for i := range want {
		if eps[i].String() != want[i] {
			t.Errorf("endpoint %d: %s, want %s", i, eps[i], want[i])
		}
	}
	if eps[0].Can("resolve") || !eps[0].Can("pull") || eps[0].Header.Get("X-Mirror") != "yes" || !eps[0].Mirror {
		t.Errorf("first: %+v", eps[0])
	}
	if !eps[1].Can("resolve") || eps[2].TLS == nil || !eps[2].TLS.InsecureSkipVerify || eps[3].Mirror {
		t.Errorf("flags: %+v %+v %+v", eps[1], eps[2], eps[3])
	}
	// Hosts as dotted keys (no table header) are not lost.
	writeFile(t, filepath.Join(dir, "dotted.example", "hosts.toml"), "host.\"http://127.0.0.1:7\".capabilities = [\"pull\"]\n")
	if eps, _ := Endpoints(dir, "dotted.example"); len(eps) != 2 || eps[0].String() != "http://127.0.0.1:7/v2" || eps[0].Can("resolve") {
		t.Errorf("dotted: %v", eps)
	}
	// _default applies to hosts without their own file; host:port dirs.
	writeFile(t, filepath.Join(dir, "_default", "hosts.toml"), "[host.\"http://127.0.0.1:9\"]\n")
	if eps, _ := Endpoints(dir, "quay.io"); len(eps) != 2 || eps[0].String() != "http://127.0.0.1:9/v2" {
		t.Errorf("_default: %v", eps)
	}
	// Errors name the file.
	writeFile(t, filepath.Join(dir, "bad.example", "hosts.toml"), "server = [1,2")
	if _, err := Endpoints(dir, "bad.example"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad toml: %v", err)
	}
	writeFile(t, filepath.Join(dir, "badca.example", "hosts.toml"), "server = \"https://badca.example\"\nca = \"missing.crt\"\n")
	if _, err := Endpoints(dir, "badca.example"); err == nil {
		t.Error("missing CA accepted")
	}
}

func TestRewriter(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.URL.Path+" "+r.Header.Get("X-A"))
	}))
	defer srv.Close()
	host := srv.Listener.Addr().String()
	base := newBaseTransport()
	base.TLSClientConfig = &tls.Config{}
	for _, c := range []struct {
		ep   Endpoint
		want []string
	}{
		{Endpoint{Host: host, Path: "/prefix/v2", Header: http.Header{"X-A": {"1"}}}, []string{"/prefix/v2/ 1", "/prefix/v2/r/manifests/t 1"}},
		{Endpoint{Host: host, Path: "/v2/mirror/reg"}, []string{"/v2/ ", "/v2/mirror/reg/r/manifests/t "}},
	} {
		got = nil
		cl := &http.Client{Transport: c.ep.transport(base)}
		for _, p := range []string{"/v2/", "/v2/r/manifests/t"} {
			resp, err := cl.Get("http://" + host + p)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
		if len(got) != 2 || got[0] != c.want[0] || got[1] != c.want[1] {
			t.Errorf("%s: got %q want %q", c.ep.Path, got, c.want)
		}
	}
}
