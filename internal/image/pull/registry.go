// Package pull fetches images from registries: references, containerd-format
// hosts.toml mirrors and TLS settings, credentials, platform selection, and
// classified errors. It fetches; storing and unpacking are the caller's.
package pull

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/tripod-dev/tripod/internal/errdefs"
)

// Auth is a registry credential, as the CRI and docker config.json carry it.
type Auth struct {
	Username      string
	Password      string
	Auth          string // base64 of username:password
	IdentityToken string
	RegistryToken string
}

func (a *Auth) empty() bool {
	return a == nil || (a.Username == "" && a.Password == "" && a.Auth == "" && a.IdentityToken == "" && a.RegistryToken == "")
}

// Client resolves and fetches images. It is safe for concurrent use.
type Client struct {
	hostsDir  string
	auths     map[string]Auth
	base      *http.Transport
	userAgent string
}

// NewClient makes a client reading mirrors from hostsDir and using auths
// (by registry host) when a pull brings no credentials of its own.
func NewClient(hostsDir string, auths map[string]Auth, userAgent string) *Client {
	return &Client{hostsDir: hostsDir, auths: auths, base: newBaseTransport(), userAgent: userAgent}
}

// Platform is what to select from a multi-platform index.
type Platform struct{ OS, Architecture, Variant string }

func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// Resolved is an image manifest found in a registry.
type Resolved struct {
	Ref Ref
	// Index is the raw multi-platform index the manifest was selected
	// from, if any, with its digest and media type.
	Index          []byte
	IndexDigest    v1.Hash
	IndexMediaType string

	Manifest          []byte
	ManifestDigest    v1.Hash
	ManifestMediaType string
	Parsed            *v1.Manifest
	// Endpoint is where it was found; blobs come from there first.
	Endpoint string
}

// Session fetches the blobs of one resolved image.
type Session struct {
	ref     Ref
	eps     []Endpoint
	pullers []*remote.Puller
	auths   []authn.Authenticator
	rts     []http.RoundTripper
	first   int

	mu     sync.Mutex
	blobRT map[int]http.RoundTripper // authenticated transports, made on first use
}

// Resolve finds ref's manifest for platform, trying the registry's mirrors
// in order, then the registry.
func (c *Client) Resolve(ctx context.Context, ref Ref, auth *Auth, platform Platform) (*Resolved, *Session, error) {
	eps, err := Endpoints(c.hostsDir, ref.Host)
	if err != nil {
		return nil, nil, err
	}
	s := &Session{ref: ref, eps: eps, pullers: make([]*remote.Puller, len(eps)),
		auths: make([]authn.Authenticator, len(eps)), rts: make([]http.RoundTripper, len(eps)),
		blobRT: map[int]http.RoundTripper{}}
	for i, ep := range eps {
		s.auths[i] = c.authenticator(ref, ep, auth)
		s.rts[i] = ep.transport(c.base)
		s.pullers[i], err = c.puller(ctx, s.rts[i], s.auths[i])
		if err != nil {
			return nil, nil, err
		}
	}
	need := "resolve"
	if ref.Digest != "" {
		need = "pull" // a digest is content: any pull mirror may serve it
	}
	var errs []error
	for i, ep := range eps {
		if !ep.Can(need) {
			continue
		}
		res, err := s.resolveAt(ctx, i, platform)
		if err == nil {
			s.first = i
			return res, s, nil
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		errs = append(errs, fmt.Errorf("%s: %w", ep, err))
		// A platform mismatch is a fact about the image, not the mirror.
		if errors.Is(err, errNoPlatform) {
			break
		}
	}
	if len(errs) == 0 {
		return nil, nil, fmt.Errorf("%s: no endpoint can %s: %w", ref, need, errdefs.ErrFailedPrecondition)
	}
	return nil, nil, fmt.Errorf("resolve %s: %w", ref, mostSpecific(errs))
}

var errNoPlatform = errors.New("no manifest for the platform")

func (s *Session) resolveAt(ctx context.Context, i int, platform Platform) (*Resolved, error) {
	ep := s.eps[i]
	r, err := s.name(i, s.ref.Identifier())
	if err != nil {
		return nil, err
	}
	d, err := s.pullers[i].Get(ctx, r)
	if err != nil {
		return nil, classify(err)
	}
	res := &Resolved{Ref: s.ref, Endpoint: ep.String()}
	if s.ref.Digest != "" && d.Digest.String() != s.ref.Digest {
		return nil, fmt.Errorf("manifest has digest %s, want %s: %w", d.Digest, s.ref.Digest, errdefs.ErrDataLoss)
	}
	for depth := 0; ; depth++ {
		if d.MediaType.IsImage() {
			res.Manifest, res.ManifestDigest, res.ManifestMediaType = d.Manifest, d.Digest, string(d.MediaType)
			m, err := v1.ParseManifest(strings.NewReader(string(d.Manifest)))
			if err != nil {
				return nil, fmt.Errorf("manifest %s: %v: %w", d.Digest, err, errdefs.ErrDataLoss)
			}
			res.Parsed = m
			return res, nil
		}
		if !d.MediaType.IsIndex() || depth > 0 {
			return nil, fmt.Errorf("%s: unsupported manifest media type %q: %w", s.ref, d.MediaType, errdefs.ErrInvalidArgument)
		}
		res.Index, res.IndexDigest, res.IndexMediaType = d.Manifest, d.Digest, string(d.MediaType)
		var idx v1.IndexManifest
		if err := json.Unmarshal(d.Manifest, &idx); err != nil {
			return nil, fmt.Errorf("index %s: %v: %w", d.Digest, err, errdefs.ErrDataLoss)
		}
		child, err := selectPlatform(&idx, platform)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.ref, err)
		}
		cr, err := s.name(i, child.Digest.String())
		if err != nil {
			return nil, err
		}
		d, err = s.pullers[i].Get(ctx, cr)
		if err != nil {
			return nil, classify(err)
		}
		if d.Digest != child.Digest {
			return nil, fmt.Errorf("manifest has digest %s, index says %s: %w", d.Digest, child.Digest, errdefs.ErrDataLoss)
		}
	}
}

func selectPlatform(idx *v1.IndexManifest, want Platform) (v1.Descriptor, error) {
	var have []string
	for _, m := range idx.Manifests {
		if !m.MediaType.IsImage() && !m.MediaType.IsIndex() {
			continue
		}
		p := m.Platform
		if p == nil {
			continue
		}
		have = append(have, Platform{p.OS, p.Architecture, p.Variant}.String())
		if p.OS != want.OS || p.Architecture != want.Architecture {
			continue
		}
		if want.Variant != "" && p.Variant != "" && p.Variant != want.Variant {
			continue
		}
		return m, nil
	}
	return v1.Descriptor{}, fmt.Errorf("%w %s (index has: %s): %w", errNoPlatform, want, strings.Join(have, ", "), errdefs.ErrNotFound)
}

// Blob opens a blob of the resolved image, from the endpoint that resolved
// it, falling back to the other pull endpoints. The caller verifies the
// digest (it hashes what it stores anyway, so hashing here too would only
// cost a second pass).
func (s *Session) Blob(ctx context.Context, d v1.Hash) (io.ReadCloser, error) {
	var errs []error
	for k := range s.eps {
		i := (s.first + k) % len(s.eps)
		if !s.eps[i].Can("pull") {
			continue
		}
		rc, err := s.blobAt(ctx, i, d)
		if err == nil {
			return rc, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		errs = append(errs, fmt.Errorf("%s: %w", s.eps[i], err))
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("blob %s: no pull endpoint: %w", d, errdefs.ErrFailedPrecondition)
	}
	return nil, fmt.Errorf("blob %s: %w", d, mostSpecific(errs))
}

func (s *Session) blobAt(ctx context.Context, i int, d v1.Hash) (io.ReadCloser, error) {
	r, err := s.name(i, d.String())
	if err != nil {
		return nil, err
	}
	repo := r.Context()
	s.mu.Lock()
	rt, ok := s.blobRT[i]
	s.mu.Unlock()
	if !ok {
		rt, err = transport.NewWithContext(ctx, repo.Registry, s.auths[i], s.rts[i], []string{repo.Scope(transport.PullScope)})
		if err != nil {
			return nil, classify(err)
		}
		s.mu.Lock()
		s.blobRT[i] = rt
		s.mu.Unlock()
	}
	u := url.URL{Scheme: repo.Scheme(), Host: repo.RegistryStr(), Path: "/v2/" + repo.RepositoryStr() + "/blobs/" + d.String()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return nil, classify(err)
	}
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		resp.Body.Close()
		return nil, classify(err)
	}
	return readCloser{resp.Body}, nil
}

// readCloser classifies errors met while reading a blob body.
type readCloser struct{ io.ReadCloser }

func (r readCloser) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = classify(err)
	}
	return n, err
}

// name builds the reference for identifier (tag or digest) at endpoint i.
func (s *Session) name(i int, identifier string) (name.Reference, error) {
	ep := s.eps[i]
	var opts []name.Option
	if ep.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	repo, err := name.NewRepository(ep.Host+"/"+s.ref.Repository, opts...)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %v: %w", ep.Host, s.ref.Repository, err, errdefs.ErrInvalidArgument)
	}
	if strings.HasPrefix(identifier, "sha256:") {
		return repo.Digest(identifier), nil
	}
	return repo.Tag(identifier), nil
}

// authenticator picks the credentials for one endpoint. Those from the
// request belong to the image's registry; a mirror gets only what the
// config file gives for its own host.
func (c *Client) authenticator(ref Ref, ep Endpoint, auth *Auth) authn.Authenticator {
	a := auth
	if ep.Mirror || a.empty() {
		if ca, ok := c.auths[ep.Host]; ok {
			a = &ca
		} else if ca, ok := c.auths[ref.Host]; ok && !ep.Mirror {
			a = &ca
		} else if ep.Mirror {
			a = nil
		}
	}
	if a.empty() {
		return authn.Anonymous
	}
	return authn.FromConfig(authn.AuthConfig{Username: a.Username, Password: a.Password,
		Auth: a.Auth, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken})
}

func (c *Client) puller(ctx context.Context, rt http.RoundTripper, auth authn.Authenticator) (*remote.Puller, error) {
	p, err := remote.NewPuller(
		remote.WithContext(ctx),
		remote.WithAuth(auth),
		remote.WithTransport(rt),
		remote.WithUserAgent(c.userAgent),
		// Few, short retries: a pull that cannot reach its registry
		// should say so while kubelet is still waiting.
		remote.WithRetryBackoff(remote.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 3}),
	)
	if err != nil {
		return nil, fmt.Errorf("registry client: %w", err)
	}
	return p, nil
}

// classify maps registry and network failures to error kinds.
func classify(err error) error {
	if err == nil || errdefs.Kind(err) != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var te *transport.Error
	if errors.As(err, &te) {
		for _, d := range te.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return errdefs.Wrap(errdefs.ErrNotFound, err)
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return errdefs.Wrap(errdefs.ErrPermissionDenied, err)
			case transport.TooManyRequestsErrorCode:
				return errdefs.Wrap(errdefs.ErrResourceExhausted, err)
			}
		}
		switch {
		case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden:
			return errdefs.Wrap(errdefs.ErrPermissionDenied, err)
		case te.StatusCode == http.StatusNotFound:
			return errdefs.Wrap(errdefs.ErrNotFound, err)
		case te.StatusCode == http.StatusTooManyRequests:
			return errdefs.Wrap(errdefs.ErrResourceExhausted, err)
		}
		// Anything else (a 400 from an HTTPS port spoken to in plain
		// HTTP, 5xx): the registry cannot serve us as configured.
		return errdefs.Wrap(errdefs.ErrUnavailable, err)
	}
	// go-containerregistry's verification errors are plain strings.
	msg := err.Error()
	if strings.HasPrefix(msg, "error verifying") || strings.Contains(msg, "digest mismatch") || strings.Contains(msg, "does not match") {
		return errdefs.Wrap(errdefs.ErrDataLoss, err)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &ne) || errors.As(err, &oe) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errdefs.Wrap(errdefs.ErrUnavailable, err)
	}
	return errdefs.Wrap(errdefs.ErrUnavailable, err)
}

// mostSpecific picks the error to report when every endpoint failed: a
// missing image or refused credentials say more than an unreachable mirror.
func mostSpecific(errs []error) error {
	for _, k := range []error{errdefs.ErrNotFound, errdefs.ErrPermissionDenied, errdefs.ErrDataLoss, errdefs.ErrInvalidArgument, errdefs.ErrResourceExhausted} {
		for _, e := range errs {
			if errors.Is(e, k) {
				return e
			}
		}
	}
	return errors.Join(errs...)
}
