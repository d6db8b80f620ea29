package layer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
	"github.com/tripod-dev/tripod/internal/image/layer"
)

type E = imagetest.Entry

// sandbox is a layer directory next to an "outside" directory holding a
// file that no layer may touch.
type sandbox struct {
	layer, outside, secret string
}

func newSandbox(t *testing.T) sandbox {
	base := t.TempDir()
	sb := sandbox{layer: filepath.Join(base, "work", "layer"), outside: filepath.Join(base, "outside")}
	for _, d := range []string{sb.layer, sb.outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sb.secret = filepath.Join(sb.outside, "secret")
	if err := os.WriteFile(sb.secret, []byte("untouched"), 0o600); err != nil {
		t.Fatal(err)
	}
	return sb
}

// assertOutsideIntact checks nothing was written or linked outside the
// layer: the secret is as it was, the outside and work dirs hold nothing new.
func (sb sandbox) assertOutsideIntact(t *testing.T) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(sb.secret, &st); err != nil {
		t.Fatalf("secret: %v", err)
	}
	if b, _ := os.ReadFile(sb.secret); string(b) != "untouched" || st.Nlink != 1 || st.Mode&0o777 != 0o600 {
		t.Fatalf("outside file changed: %q nlink %d mode %o", b, st.Nlink, st.Mode&0o777)
	}
	for _, d := range []string{sb.outside, filepath.Dir(sb.layer), filepath.Dir(filepath.Dir(sb.layer))} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			switch e.Name() {
			case "secret", "layer", "work", "outside":
			default:
				t.Fatalf("%s appeared outside the layer in %s", e.Name(), d)
			}
		}
	}
}

func apply(t *testing.T, sb sandbox, opt layer.Options, entries ...E) (layer.Stats, error) {
	t.Helper()
	return layer.Apply(context.Background(), bytes.NewReader(imagetest.Tar(entries...)), sb.layer, opt)
}

func TestHostileCorpusRefused(t *testing.T) {
	// Each case must fail the layer with InvalidArgument and leave the
	// outside untouched.
	cases := map[string]func(sb sandbox) []E{
		"dotdot":             func(sandbox) []E { return []E{{Name: "../escape", Body: "x"}} },
		"dotdot in middle":   func(sandbox) []E { return []E{{Name: "a/../../escape", Body: "x"}} },
		"deep dotdot":        func(sandbox) []E { return []E{{Name: "a/b/../../../../outside/secret", Body: "pwned"}} },
		"dotdot directory":   func(sandbox) []E { return []E{{Name: "../newdir/", Type: tar.TypeDir}} },
		"dotdot symlink":     func(sandbox) []E { return []E{{Name: "../link", Type: tar.TypeSymlink, Linkname: "/"}} },
		"dotdot whiteout":    func(sandbox) []E { return []E{{Name: "../.wh.secret"}} },
		"whiteout of dotdot": func(sandbox) []E { return []E{{Name: "a/.wh..."}} },
		"write through absolute symlink": func(sb sandbox) []E {
			return []E{{Name: "link", Type: tar.TypeSymlink, Linkname: sb.outside}, {Name: "link/secret", Body: "pwned"}}
		},
		"write through relative symlink": func(sandbox) []E {
			return []E{{Name: "link", Type: tar.TypeSymlink, Linkname: "../../outside"}, {Name: "link/new", Body: "pwned"}}
		},
		"symlink chain to outside": func(sb sandbox) []E {
			return []E{{Name: "a", Type: tar.TypeSymlink, Linkname: "b"}, {Name: "b", Type: tar.TypeSymlink, Linkname: "../../outside"}, {Name: "a/new", Body: "pwned"}}
		},
		"mkdir through symlink": func(sb sandbox) []E {
			return []E{{Name: "link", Type: tar.TypeSymlink, Linkname: sb.outside}, {Name: "link/sub/", Type: tar.TypeDir}}
		},
		"hardlink dotdot": func(sandbox) []E {
			return []E{{Name: "hl", Type: tar.TypeLink, Linkname: "../../outside/secret"}}
		},
		"hardlink absolute outside": func(sb sandbox) []E {
			// Taken as layer-relative: no such file in the layer.
			return []E{{Name: "hl", Type: tar.TypeLink, Linkname: sb.secret}}
		},
		"hardlink through symlink dir": func(sb sandbox) []E {
			return []E{{Name: "link", Type: tar.TypeSymlink, Linkname: sb.outside}, {Name: "hl", Type: tar.TypeLink, Linkname: "link/secret"}}
		},
		"whiteout through symlink": func(sb sandbox) []E {
			return []E{{Name: "link", Type: tar.TypeSymlink, Linkname: sb.outside}, {Name: "link/.wh.secret"}}
		},
		"opaque through symlink": func(sb sandbox) []E {
			return []E{{Name: "link", Type: tar.TypeSymlink, Linkname: sb.outside}, {Name: "link/.wh..wh..opq"}}
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			sb := newSandbox(t)
			_, err := apply(t, sb, layer.Options{}, mk(sb)...)
			if err == nil {
				t.Fatal("hostile layer accepted")
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			sb.assertOutsideIntact(t)
		})
	}
}

func TestHostileCorpusNeutralized(t *testing.T) {
	sb := newSandbox(t)
	st, err := apply(t, sb, layer.Options{},
		// Absolute names are layer-relative.
		E{Name: "/etc/abs", Body: "abs"},
		// A symlink pointing anywhere is stored, not followed.
		E{Name: "escape", Type: tar.TypeSymlink, Linkname: sb.secret},
		E{Name: "up", Type: tar.TypeSymlink, Linkname: "../../../../.."},
		// A file over a symlink replaces the symlink.
		E{Name: "escape", Body: "replaced"},
		// A hardlink to a symlink links the symlink itself.
		E{Name: "up2", Type: tar.TypeLink, Linkname: "up"},
		// Devices are skipped by default; FIFOs are fine.
		E{Name: "dev/null", Type: tar.TypeChar, Major: 1, Minor: 3},
		E{Name: "dev/sda", Type: tar.TypeBlock, Major: 8, Minor: 0},
		E{Name: "run/fifo", Type: tar.TypeFifo},
		// Overlay metadata cannot be forged through xattrs; user ones pass.
		E{Name: "x/", Type: tar.TypeDir, Xattrs: map[string]string{"trusted.overlay.opaque": "y", "user.note": "hi"}},
		// Setuid survives chown.
		E{Name: "bin/su", Body: "su", Mode: 0o4755, Uid: 0},
		// Type changes: a dir replaced by a file and back.
		E{Name: "swap/", Type: tar.TypeDir},
		E{Name: "swap/child", Body: "c"},
		E{Name: "swap", Body: "now a file"},
		E{Name: "flip", Body: "file"},
		E{Name: "flip/", Type: tar.TypeDir},
		E{Name: "./", Type: tar.TypeDir, Mode: 0o755},
	)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	sb.assertOutsideIntact(t)
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(sb.layer, p))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return string(b)
	}
	if read("etc/abs") != "abs" || read("escape") != "replaced" || read("swap") != "now a file" {
		t.Fatal("contents wrong")
	}
	if l, _ := os.Readlink(filepath.Join(sb.layer, "up")); l != "../../../../.." {
		t.Fatalf("symlink target %q", l)
	}
	if fi, err := os.Lstat(filepath.Join(sb.layer, "up2")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("hardlink to symlink: %v %v", fi, err)
	}
	for _, p := range []string{"dev/null", "dev/sda"} {
		if _, err := os.Lstat(filepath.Join(sb.layer, p)); !os.IsNotExist(err) {
			t.Fatalf("device %s created: %v", p, err)
		}
	}
	if st.Skipped < 3 { // two devices, one xattr
		t.Fatalf("skipped %d entries, want at least 3", st.Skipped)
	}
	if fi, err := os.Lstat(filepath.Join(sb.layer, "run/fifo")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("fifo: %v %v", fi, err)
	}
	buf := make([]byte, 16)
	if _, err := unix.Lgetxattr(filepath.Join(sb.layer, "x"), "trusted.overlay.opaque", buf); err == nil {
		t.Fatal("trusted.overlay.opaque taken from the tar")
	}
	if n, err := unix.Lgetxattr(filepath.Join(sb.layer, "x"), "user.note", buf); err != nil || string(buf[:n]) != "hi" {
		t.Logf("user xattr not set (filesystem may not support it): %v", err)
	}
	if fi, err := os.Stat(filepath.Join(sb.layer, "bin/su")); err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("setuid lost: %v %v", fi, err)
	}
	if fi, err := os.Lstat(filepath.Join(sb.layer, "flip")); err != nil || !fi.IsDir() {
		t.Fatalf("flip: %v %v", fi, err)
	}
}

func TestDeviceNodesWhenAllowed(t *testing.T) {
	sb := newSandbox(t)
	if _, err := apply(t, sb, layer.Options{AllowDeviceNodes: true}, E{Name: "dev/null", Type: tar.TypeChar, Major: 1, Minor: 3, Mode: 0o666}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(sb.layer, "dev/null"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 || st.Mode&0o777 != 0o666 {
		t.Fatalf("dev/null: mode %o rdev %d:%d", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
}

func TestTruncatedTar(t *testing.T) {
	sb := newSandbox(t)
	full := imagetest.Tar(E{Name: "big", Size: 64 << 10})
	_, err := layer.Apply(context.Background(), bytes.NewReader(full[:len(full)/2]), sb.layer, layer.Options{})
	if !errors.Is(err, errdefs.ErrDataLoss) {
		t.Fatalf("truncated tar: %v, want DataLoss", err)
	}
}

func TestUnpackVerifiesDiffID(t *testing.T) {
	root := t.TempDir()
	s, err := layer.NewStore(root, layer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tb := imagetest.Tar(E{Name: "f", Body: "content"})
	sum := sha256.Sum256(tb)
	good := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	bad := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(make([]byte, 32))}
	gz := imagetest.Gzip(tb)

	_, err = s.Unpack(context.Background(), bad, bad, "application/vnd.oci.image.layer.v1.tar+gzip", bytes.NewReader(gz), nil)
	if !errors.Is(err, errdefs.ErrDataLoss) {
		t.Fatalf("wrong diff ID: %v, want DataLoss", err)
	}
	if s.Exists(bad) {
		t.Fatal("unverified layer published")
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "tmp")); len(ents) != 0 {
		t.Fatalf("partial unpack left: %v", ents)
	}
	// A failing last check keeps the layer unpublished too.
	_, err = s.Unpack(context.Background(), good, good, "application/vnd.oci.image.layer.v1.tar+gzip", bytes.NewReader(gz), func() error { return errdefs.ErrDataLoss })
	if err == nil || s.Exists(good) {
		t.Fatalf("beforeCommit failure: err %v, published %v", err, s.Exists(good))
	}
	st, err := s.Unpack(context.Background(), good, good, "application/vnd.oci.image.layer.v1.tar+gzip", bytes.NewReader(gz), nil)
	if err != nil || !s.Exists(good) || st.Bytes != 7 {
		t.Fatalf("good layer: %v %+v", err, st)
	}
	if b, _ := os.ReadFile(filepath.Join(s.Path(good), "f")); string(b) != "content" {
		t.Fatalf("content %q", b)
	}
	// Uncompressed and unknown media types.
	if _, err := s.Unpack(context.Background(), bad, good, "application/vnd.oci.image.layer.v1.tar", bytes.NewReader(tb), nil); err != nil {
		t.Fatalf("uncompressed: %v", err)
	}
	if _, err := s.Unpack(context.Background(), good, good, "application/x-rar", bytes.NewReader(tb), nil); err != nil {
		t.Fatalf("existing layer is kept whatever the input: %v", err)
	}
}
