package pull

import (
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/tripod-dev/tripod/internal/errdefs"
)

// Ref is a parsed, normalized image reference.
type Ref struct {
	// Host is the registry as users and hosts.toml directories name it
	// ("docker.io", "registry.k8s.io", "127.0.0.1:5000").
	Host string
	// Repository is the path inside the registry ("library/busybox").
	Repository string
	Tag        string // empty when only a digest was given
	Digest     string // empty when only a tag was given
}

// ParseRef parses and normalizes a reference the way kubelet and the
// docker CLI do: "busybox" is docker.io/library/busybox:latest.
func ParseRef(s string) (Ref, error) {
	if s == "" || strings.TrimSpace(s) != s {
		return Ref{}, fmt.Errorf("image reference %q: %w", s, errdefs.ErrInvalidArgument)
	}
	r, err := name.ParseReference(s)
	if err != nil {
		return Ref{}, fmt.Errorf("image reference %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	out := Ref{Host: r.Context().RegistryStr(), Repository: r.Context().RepositoryStr()}
	if out.Host == name.DefaultRegistry {
		out.Host = "docker.io"
	}
	switch t := r.(type) {
	case name.Tag:
		out.Tag = t.TagStr()
	case name.Digest:
		out.Digest = t.DigestStr()
		if i := strings.LastIndex(s, "@"); i > 0 {
			if tag, err := name.NewTag(s[:i], name.StrictValidation); err == nil {
				out.Tag = tag.TagStr()
			}
		}
	}
	return out, nil
}

// Repo is host/repository.
func (r Ref) Repo() string { return r.Host + "/" + r.Repository }

// TagName is the normalized tag reference, or "" when there is no tag.
func (r Ref) TagName() string {
	if r.Tag == "" {
		return ""
	}
	return r.Repo() + ":" + r.Tag
}

// DigestName is repo@digest for the given digest.
func (r Ref) DigestName(digest string) string { return r.Repo() + "@" + digest }

// String is the most specific form: the digest when known.
func (r Ref) String() string {
	if r.Digest != "" {
		return r.DigestName(r.Digest)
	}
	return r.TagName()
}

// Identifier is what to ask the registry for: the digest if given, else the tag.
func (r Ref) Identifier() string {
	if r.Digest != "" {
		return r.Digest
	}
	return r.Tag
}
