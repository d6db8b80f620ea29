package layer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/klauspost/compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/image/content"
)

// Store keeps unpacked layers at root/sha256/<chain ID hex>, each an
// overlayfs lower directory. A layer is unpacked into root/tmp and renamed
// into place only once complete and verified, so a directory under its
// final name is whole (the metadata store, not the directory, says whether
// a pull committed it).
type Store struct {
	root string
	opt  Options
}

// NewStore opens (creating if needed) a layer store in root.
func NewStore(root string, opt Options) (*Store, error) {
	for _, d := range []string{filepath.Join(root, "sha256"), filepath.Join(root, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("layer store: %w", err)
		}
	}
	return &Store{root: root, opt: opt}, nil
}

// Root is the store's directory (its filesystem is the image filesystem).
func (s *Store) Root() string { return s.root }

// Path is the lower directory of the layer with this chain ID.
func (s *Store) Path(chainID v1.Hash) string {
	return filepath.Join(s.root, chainID.Algorithm, chainID.Hex)
}

// Exists reports whether the layer is unpacked.
func (s *Store) Exists(chainID v1.Hash) bool {
	fi, err := os.Stat(s.Path(chainID))
	return err == nil && fi.IsDir()
}

// Unpack decompresses blob (of the given media type), checks that the tar
// stream has digest diffID, and unpacks it as the layer chainID. An
// existing layer is kept as is. beforeCommit, if not nil, runs once the
// layer is verified and before it is published: the caller's last word
// (the compressed blob's own digest check when it streams the download
// straight into the unpack).
func (s *Store) Unpack(ctx context.Context, chainID, diffID v1.Hash, mediaType string, blob io.Reader, beforeCommit func() error) (Stats, error) {
	if s.Exists(chainID) {
		return Stats{}, nil
	}
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), chainID.Hex[:12]+"-")
	if err != nil {
		return Stats{}, fmt.Errorf("layer %s: %w", chainID, content.Classify(err))
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Stats{}, err
	}
	tarStream, closer, err := decompress(mediaType, blob)
	if err != nil {
		return Stats{}, fmt.Errorf("layer %s: %w", diffID, err)
	}
	defer closer()
	h := sha256.New()
	st, err := Apply(ctx, io.TeeReader(tarStream, h), tmp, s.opt)
	if err != nil {
		return st, fmt.Errorf("unpack layer %s: %w", diffID, err)
	}
	// The tar reader stops at the end-of-archive marker; the digest
	// covers the padding after it too.
	if _, err := io.Copy(h, tarStream); err != nil {
		return st, fmt.Errorf("unpack layer %s: %w", diffID, errdefs.Wrap(errdefs.ErrDataLoss, err))
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != diffID.Hex {
		return st, fmt.Errorf("layer %s: uncompressed content has digest sha256:%s: %w", diffID, got, errdefs.ErrDataLoss)
	}
	if beforeCommit != nil {
		if err := beforeCommit(); err != nil {
			return st, err
		}
	}
	if err := os.Rename(tmp, s.Path(chainID)); err != nil {
		if s.Exists(chainID) { // a concurrent unpack of the same layer won
			return st, nil
		}
		return st, fmt.Errorf("layer %s: commit: %w", chainID, content.Classify(err))
	}
	ok = true
	return st, nil
}

// Remove deletes an unpacked layer.
func (s *Store) Remove(chainID v1.Hash) error {
	dst, err := s.Detach(chainID)
	if err != nil || dst == "" {
		return err
	}
	return os.RemoveAll(dst)
}

// Detach moves a layer out of its name into tmp and returns where it went
// ("" if it did not exist), for the caller to delete at leisure. A crash
// mid-delete so leaves tmp garbage, never a half-empty layer.
func (s *Store) Detach(chainID v1.Hash) (string, error) {
	dst, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "rm-")
	if err != nil {
		return "", err
	}
	if err := os.Rename(s.Path(chainID), filepath.Join(dst, "l")); err != nil {
		os.Remove(dst)
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		return "", fmt.Errorf("remove layer %s: %w", chainID, err)
	}
	return dst, nil
}

// Usage measures a layer directory (for layers whose stats were not
// recorded when unpacked).
func Usage(dir string) (Stats, error) {
	var st Stats
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		st.Inodes++
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				st.Bytes += fi.Size()
			}
		}
		return nil
	})
	return st, err
}

// Walk calls fn with the chain ID of every unpacked layer.
func (s *Store) Walk(fn func(chainID v1.Hash) error) error {
	ents, err := os.ReadDir(filepath.Join(s.root, "sha256"))
	if err != nil {
		return fmt.Errorf("list layers: %w", err)
	}
	for _, e := range ents {
		if err := fn(v1.Hash{Algorithm: "sha256", Hex: e.Name()}); err != nil {
			return err
		}
	}
	return nil
}

// CleanTmp removes unfinished unpacks and removals. Call it only when no
// unpack is in flight (at start).
func (s *Store) CleanTmp() (int, error) {
	dir := filepath.Join(s.root, "tmp")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return 0, fmt.Errorf("clean layer tmp: %w", err)
		}
	}
	return len(ents), nil
}

// Sync flushes the filesystem holding the layers, once per pull rather
// than once per file.
func (s *Store) Sync() error {
	f, err := os.Open(s.root)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

func decompress(mediaType string, r io.Reader) (io.Reader, func(), error) {
	switch {
	case strings.HasSuffix(mediaType, "+zstd") || strings.HasSuffix(mediaType, ".zstd"):
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, nil, errdefs.Wrap(errdefs.ErrDataLoss, err)
		}
		return zr, zr.Close, nil
	case strings.HasSuffix(mediaType, "+gzip") || strings.HasSuffix(mediaType, ".gzip") || mediaType == "":
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, errdefs.Wrap(errdefs.ErrDataLoss, fmt.Errorf("gzip: %w", err))
		}
		return zr, func() { zr.Close() }, nil
	case strings.HasSuffix(mediaType, ".tar") || strings.HasSuffix(mediaType, "layer.v1.tar"):
		return r, func() {}, nil
	}
	return nil, nil, fmt.Errorf("layer media type %q: %w", mediaType, errdefs.ErrInvalidArgument)
}
