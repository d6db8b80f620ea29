// Package imagetest builds OCI images in memory and serves them from a
// registry on 127.0.0.1, for tests and benchmarks. Nothing here is a mock:
// it is go-containerregistry's registry, spoken to over real HTTP.
package imagetest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Entry is one tar entry of a test layer.
type Entry struct {
	Name     string
	Type     byte // tar.TypeReg when zero
	Body     string
	Size     int64 // random bytes of this size instead of Body, when > 0
	Mode     int64
	Linkname string
	Uid, Gid int
	Major    int64
	Minor    int64
	Xattrs   map[string]string
}

// Tar returns an uncompressed tar of entries, exactly as given (no name
// cleaning: hostile names stay hostile).
func Tar(entries ...Entry) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Linkname: e.Linkname,
			Uid: e.Uid, Gid: e.Gid, Devmajor: e.Major, Devminor: e.Minor, ModTime: time.Unix(1700000000, 0),
			Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		var body []byte
		if h.Typeflag == tar.TypeReg {
			body = []byte(e.Body)
			if e.Size > 0 {
				body = make([]byte, e.Size)
				rand.Read(body)
			}
			h.Size = int64(len(body))
		}
		for k, v := range e.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			panic(fmt.Sprintf("tar header %q: %v", e.Name, err))
		}
		tw.Write(body)
	}
	tw.Close()
	return b.Bytes()
}

// Gzip compresses b.
func Gzip(b []byte) []byte {
	var out bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&out, gzip.BestSpeed)
	zw.Write(b)
	zw.Close()
	return out.Bytes()
}

// Layer is a gzip-compressed layer of the given entries.
func Layer(entries ...Entry) v1.Layer { return LayerFromTar(Tar(entries...)) }

// LayerFromTar compresses an uncompressed tar into a layer.
func LayerFromTar(tarBytes []byte) v1.Layer {
	gz := Gzip(tarBytes)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		panic(err)
	}
	return l
}

// ZstdLayer is a zstd-compressed OCI layer of the given entries.
func ZstdLayer(entries ...Entry) v1.Layer {
	tb := Tar(entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tb)), nil
	}, tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
	if err != nil {
		panic(err)
	}
	return l
}

// UncompressedLayer is an OCI layer stored as a plain tar (its digest and
// diff ID are the same).
func UncompressedLayer(entries ...Entry) v1.Layer {
	return static.NewLayer(Tar(entries...), types.OCIUncompressedLayer)
}

// DockerImage is Image with Docker schema 2 media types throughout.
func DockerImage(arch string, layers ...v1.Layer) v1.Image {
	img := mutate.MediaType(empty.Image, types.DockerManifestSchema2)
	img = mutate.ConfigMediaType(img, types.DockerConfigJSON)
	for _, l := range layers {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: types.DockerLayer})
		if err != nil {
			panic(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		panic(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		panic(err)
	}
	return img
}

// DockerIndex is a Docker manifest list of images.
func DockerIndex(imgs ...v1.Image) v1.ImageIndex {
	return mutate.IndexMediaType(Index(imgs...), types.DockerManifestList)
}

// Image assembles layers into an OCI image for linux/arch, with user as its
// config's User.
func Image(arch, user string, layers ...v1.Layer) v1.Image {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		panic(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		panic(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.User = user
	cf.Config.Cmd = []string{"/bin/sh"}
	cf.Config.Env = []string{"PATH=/usr/bin:/bin"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		panic(err)
	}
	return img
}

// Index is a multi-platform index of images, each for its config's arch.
func Index(imgs ...v1.Image) v1.ImageIndex {
	var adds []mutate.IndexAddendum
	for _, img := range imgs {
		cf, err := img.ConfigFile()
		if err != nil {
			panic(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}}})
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	return mutate.AppendManifests(idx, adds...)
}

// Registry is an in-process registry on 127.0.0.1.
type Registry struct {
	// Host is "127.0.0.1:port".
	Host string
	srv  *httptest.Server

	mu        sync.Mutex
	user      string
	pass      string
	bearer    bool
	corrupt   map[string]func([]byte) []byte
	stall     map[string]chan struct{}
	drops     map[string]int
	blobGets  map[string]int
	requests  atomic.Int64
	stalledAt chan string
	tls       bool
}

// selfSigned makes a certificate for ip.
func selfSigned(ip net.IP) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tripod test registry"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{ip}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// CertPEM is the registry's certificate (TLS registries only).
func (r *Registry) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw})
}

// Options set up a registry's authentication.
type Options struct {
	// User and Password, when set, are required: with Basic auth, or
	// through a token service on the same server when Bearer is set.
	User, Password string
	Bearer         bool
	// TLS serves HTTPS on 127.0.0.2 with a self-signed certificate
	// for that address (see CertPEM). Not 127.0.0.1: registry clients
	// (go-containerregistry's among them) always speak plain HTTP to it.
	TLS bool
}

// NewRegistry starts a registry, stopped when the test ends.
func NewRegistry(t testing.TB, opt Options) *Registry {
	r, err := Serve(opt)
	if err != nil {
		t.Fatalf("registry: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

// Serve starts a registry outside a test (benchmarks); Close stops it.
func Serve(opt Options) (*Registry, error) {
	r := &Registry{user: opt.User, pass: opt.Password, bearer: opt.Bearer,
		corrupt: map[string]func([]byte) []byte{}, stall: map[string]chan struct{}{},
		drops: map[string]int{}, blobGets: map[string]int{}, stalledAt: make(chan string, 16)}
	inner := registry.New(registry.Logger(nilLogger()))
	addr := "127.0.0.1:0"
	if opt.TLS {
		addr = "127.0.0.2:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	r.srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: r.handler(inner), ErrorLog: nilLogger()}}
	if opt.TLS {
		cert, err := selfSigned(net.ParseIP("127.0.0.2"))
		if err != nil {
			l.Close()
			return nil, err
		}
		r.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		r.srv.StartTLS()
	} else {
		r.srv.Start()
	}
	r.Host = l.Addr().String()
	r.tls = opt.TLS
	return r, nil
}

// Close releases stalled downloads and stops the registry.
func (r *Registry) Close() {
	r.mu.Lock()
	for k, c := range r.stall {
		close(c)
		delete(r.stall, k)
	}
	r.mu.Unlock()
	r.srv.CloseClientConnections()
	r.srv.Close()
}

func (r *Registry) handler(inner http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		if req.URL.Path == "/token" {
			r.token(w, req)
			return
		}
		if !r.authorized(req) {
			if r.bearer {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, req.Host))
			} else {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:") {
			d := req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:]
			r.mu.Lock()
			r.blobGets[d]++
			corrupt := r.corrupt[d]
			stall := r.stall[d]
			drop := r.drops[d] > 0
			if drop {
				r.drops[d]--
			}
			r.mu.Unlock()
			if drop {
				// Half the body, then the connection is cut.
				rec := httptest.NewRecorder()
				inner.ServeHTTP(rec, req)
				body := rec.Body.Bytes()
				w.Header().Set("Content-Length", fmt.Sprint(len(body)))
				w.WriteHeader(rec.Code)
				w.Write(body[:len(body)/2])
				w.(http.Flusher).Flush()
				if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
					conn.Close()
				}
				return
			}
			if corrupt != nil || stall != nil {
				rec := httptest.NewRecorder()
				inner.ServeHTTP(rec, req)
				body := rec.Body.Bytes()
				if corrupt != nil {
					body = corrupt(body)
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.Header().Set("Content-Length", fmt.Sprint(len(body)))
				w.WriteHeader(rec.Code)
				if stall != nil {
					half := len(body) / 2
					w.Write(body[:half])
					w.(http.Flusher).Flush()
					select {
					case r.stalledAt <- d:
					default:
					}
					select {
					case <-stall:
					case <-req.Context().Done():
						return
					}
					w.Write(body[half:])
					return
				}
				w.Write(body)
				return
			}
		}
		inner.ServeHTTP(w, req)
	})
}

func (r *Registry) authorized(req *http.Request) bool {
	r.mu.Lock()
	user, pass, bearer := r.user, r.pass, r.bearer
	r.mu.Unlock()
	if user == "" {
		return true
	}
	h := req.Header.Get("Authorization")
	if bearer {
		return h == "Bearer "+r.validToken()
	}
	u, p, ok := req.BasicAuth()
	return ok && u == user && p == pass
}

func (r *Registry) validToken() string {
	return base64.RawURLEncoding.EncodeToString([]byte("token-for-" + r.user))
}

// IdentityToken is the OAuth2 refresh token the token service accepts (as
// a CRI identity_token), and Token the bearer token it hands out (usable
// directly as a CRI registry_token).
func (r *Registry) IdentityToken() string { return "refresh-for-" + r.user }

// Token is the registry's bearer token.
func (r *Registry) Token() string { return r.validToken() }

// token is a minimal token service: Basic credentials (GET) or an OAuth2
// refresh token (POST) in, bearer token out.
func (r *Registry) token(w http.ResponseWriter, req *http.Request) {
	if req.Method == http.MethodPost {
		if req.ParseForm() != nil || req.PostForm.Get("grant_type") != "refresh_token" || req.PostForm.Get("refresh_token") != r.IdentityToken() {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad refresh token"}]}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":%q,"expires_in":300}`, r.validToken())
		return
	}
	u, p, ok := req.BasicAuth()
	if !ok || u != r.user || p != r.pass {
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"token":%q,"expires_in":300}`, r.validToken())
}

// Corrupt makes the registry serve blob d passed through f.
func (r *Registry) Corrupt(d v1.Hash, f func([]byte) []byte) {
	r.mu.Lock()
	r.corrupt[d.String()] = f
	r.mu.Unlock()
}

// Drop makes the next n downloads of blob d stop half way with the
// connection closed.
func (r *Registry) Drop(d v1.Hash, n int) {
	r.mu.Lock()
	r.drops[d.String()] = n
	r.mu.Unlock()
}

// Stall makes the registry send half of blob d then wait until release
// is called (or the test ends). Stalled reports each stalled digest.
func (r *Registry) Stall(d v1.Hash) (release func()) {
	c := make(chan struct{})
	r.mu.Lock()
	r.stall[d.String()] = c
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			if r.stall[d.String()] == c {
				delete(r.stall, d.String())
			}
			r.mu.Unlock()
			close(c)
		})
	}
}

// Stalled delivers the digest of each blob download that reached its stall.
func (r *Registry) Stalled() <-chan string { return r.stalledAt }

// BlobGets is how many times blob d was requested.
func (r *Registry) BlobGets(d v1.Hash) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blobGets[d.String()]
}

// Requests is the number of HTTP requests served.
func (r *Registry) Requests() int64 { return r.requests.Load() }

func (r *Registry) opts() []remote.Option {
	o := []remote.Option{r.auth(), remote.WithContext(context.Background())}
	if r.tls {
		o = append(o, remote.WithTransport(r.srv.Client().Transport))
	}
	return o
}

func (r *Registry) nameOpts() []name.Option {
	if r.tls {
		return nil
	}
	return []name.Option{name.Insecure}
}

func (r *Registry) auth() remote.Option {
	if r.user == "" {
		return remote.WithAuth(authn.Anonymous)
	}
	return remote.WithAuth(&authn.Basic{Username: r.user, Password: r.pass})
}

// Push stores img as repo:tag and returns the manifest digest.
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) v1.Hash {
	t.Helper()
	d, err := r.PushImage(repoTag, img)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// PushImage is Push outside a test.
func (r *Registry) PushImage(repoTag string, img v1.Image) (v1.Hash, error) {
	ref, err := name.ParseReference(r.Host+"/"+repoTag, r.nameOpts()...)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", repoTag, err)
	}
	if err := remote.Write(ref, img, r.opts()...); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", repoTag, err)
	}
	return img.Digest()
}

// PushIndex stores idx as repo:tag and returns the index digest.
func (r *Registry) PushIndex(t testing.TB, repoTag string, idx v1.ImageIndex) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(r.Host+"/"+repoTag, r.nameOpts()...)
	if err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
	if err := remote.WriteIndex(ref, idx, r.opts()...); err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// nilLogger keeps the registry's request log out of test output.
func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }
