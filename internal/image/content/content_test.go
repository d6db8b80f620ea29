package content_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/image/content"
)

func digest(s string) v1.Hash {
	h, _, _ := v1.SHA256(strings.NewReader(s))
	return h
}

func TestWriteVerifies(t *testing.T) {
	root := t.TempDir()
	s, err := content.New(root)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d := digest("hello")
	for name, c := range map[string]struct {
		body string
		size int64
	}{
		"wrong content": {"hellO", 5},
		"too short":     {"hell", 5},
		"too long":      {"hello!", 5},
		"wrong size":    {"hello", 4},
	} {
		err := s.Write(ctx, d, c.size, strings.NewReader(c.body), nil)
		if !errors.Is(err, errdefs.ErrDataLoss) {
			t.Errorf("%s: %v, want DataLoss", name, err)
		}
		if s.Has(d, -1) {
			t.Fatalf("%s: bad blob committed", name)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "ingest")); len(ents) != 0 {
		t.Fatalf("ingest not cleaned: %v", ents)
	}
	var seen int64
	if err := s.Write(ctx, d, 5, strings.NewReader("hello"), func(n int64) { seen += n }); err != nil || seen != 5 {
		t.Fatalf("good write: %v, progress %d", err, seen)
	}
	if b, err := s.ReadAll(d); err != nil || string(b) != "hello" {
		t.Fatalf("read: %q %v", b, err)
	}
	// Present: the reader is not touched.
	if err := s.Write(ctx, d, 5, errReader{}, nil); err != nil {
		t.Fatalf("rewrite of a present blob: %v", err)
	}
	n := 0
	s.Walk(func(v1.Hash, int64) error { n++; return nil })
	if n != 1 {
		t.Fatalf("walk: %d", n)
	}
	if err := s.Delete(d); err != nil || s.Has(d, -1) {
		t.Fatalf("delete: %v", err)
	}
	if _, err := s.Open(d); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("open missing: %v", err)
	}
	if _, err := s.Open(v1.Hash{Algorithm: "sha256", Hex: "../../etc/passwd"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("path in digest: %v", err)
	}
	// A partial write left by a crash goes at CleanIngest.
	os.WriteFile(filepath.Join(root, "ingest", "partial"), []byte("x"), 0o600)
	if n, err := s.CleanIngest(); n != 1 || err != nil {
		t.Fatalf("clean: %d %v", n, err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("must not be read") }
