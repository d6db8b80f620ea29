// Package content is a content-addressed blob store: blobs are written to
// an ingest file, verified against their digest, then renamed into place,
// so a blob under its final name is always complete and correct. Blobs are
// not synced one by one: a caller about to record a reference to them calls
// Sync once (one filesystem flush for a whole pull instead of one per blob).
package content

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/errdefs"
)

// Store keeps blobs under root/blobs/sha256/<hex>; root/ingest holds
// partial writes, which never survive a restart (see CleanIngest).
type Store struct {
	root string
}

// New opens (creating if needed) a store in root.
func New(root string) (*Store, error) {
	for _, d := range []string{filepath.Join(root, "blobs", "sha256"), filepath.Join(root, "ingest")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("content store: %w", err)
		}
	}
	return &Store{root: root}, nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

// Path is where the blob with digest d lives (whether or not it exists).
func (s *Store) Path(d v1.Hash) string {
	return filepath.Join(s.root, "blobs", d.Algorithm, d.Hex)
}

// Size returns the size of blob d, or an ErrNotFound error.
func (s *Store) Size(d v1.Hash) (int64, error) {
	if err := checkDigest(d); err != nil {
		return 0, err
	}
	fi, err := os.Stat(s.Path(d))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("blob %s: %w", d, err)
	}
	return fi.Size(), nil
}

// Open opens blob d for reading.
func (s *Store) Open(d v1.Hash) (*os.File, error) {
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	f, err := os.Open(s.Path(d))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
	}
	return f, err
}

// ReadAll returns a small blob (manifest, config) whole.
func (s *Store) ReadAll(d v1.Hash) ([]byte, error) {
	f, err := s.Open(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// Write stores the blob read from r, which must have digest d and, when
// size >= 0, that size. A blob already present is not written again (r is
// not read). Nothing is left behind on error.
func (s *Store) Write(ctx context.Context, d v1.Hash, size int64, r io.Reader, progress func(n int64)) error {
	if s.Has(d, size) {
		return nil
	}
	w, err := s.Begin(d, size, progress)
	if err != nil {
		return err
	}
	defer w.Abort()
	src := io.Reader(r)
	if size >= 0 {
		// One byte past the size is enough to tell a blob that is too long.
		src = io.LimitReader(r, size+1)
	}
	if _, err := io.Copy(w, ctxReader{ctx, src}); err != nil {
		return fmt.Errorf("blob %s: write after %d bytes: %w", d, w.n, err)
	}
	return w.Commit()
}

// Has reports whether blob d is stored (with this size, when size >= 0).
func (s *Store) Has(d v1.Hash, size int64) bool {
	if checkDigest(d) != nil {
		return false
	}
	fi, err := os.Stat(s.Path(d))
	return err == nil && (size < 0 || fi.Size() == size)
}

// Writer receives one blob. Commit verifies and publishes it; Abort (safe
// after Commit) discards it.
type Writer struct {
	s        *Store
	d        v1.Hash
	size     int64
	f        *os.File
	h        hash.Hash
	n        int64
	progress func(int64)
	done     bool
}

// Begin starts writing blob d of the given size (-1 if unknown).
func (s *Store) Begin(d v1.Hash, size int64, progress func(n int64)) (*Writer, error) {
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(filepath.Join(s.root, "ingest"), d.Hex+"-*")
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, classify(err))
	}
	return &Writer{s: s, d: d, size: size, f: f, h: sha256.New(), progress: progress}, nil
}

func (w *Writer) Write(p []byte) (int, error) {
	if w.size >= 0 && w.n+int64(len(p)) > w.size {
		return 0, fmt.Errorf("blob %s: more than %d bytes: %w", w.d, w.size, errdefs.ErrDataLoss)
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	if w.progress != nil && n > 0 {
		w.progress(int64(n))
	}
	if err != nil {
		return n, classify(err)
	}
	return n, nil
}

// Written is how many bytes the writer has taken.
func (w *Writer) Written() int64 { return w.n }

// Verify checks size and digest of what was written so far.
func (w *Writer) Verify() error {
	if w.size >= 0 && w.n != w.size {
		return fmt.Errorf("blob %s: got %d bytes, want %d: %w", w.d, w.n, w.size, errdefs.ErrDataLoss)
	}
	if got := sum(w.h); got != w.d.Hex {
		return fmt.Errorf("blob %s: content has digest sha256:%s: %w", w.d, got, errdefs.ErrDataLoss)
	}
	return nil
}

// Commit verifies the blob and moves it to its final name.
func (w *Writer) Commit() error {
	if err := w.Verify(); err != nil {
		return err
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("blob %s: %w", w.d, classify(err))
	}
	if err := os.Rename(w.f.Name(), w.s.Path(w.d)); err != nil {
		return fmt.Errorf("blob %s: commit: %w", w.d, classify(err))
	}
	w.done = true
	return nil
}

// Abort discards an uncommitted blob.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.f.Close()
	os.Remove(w.f.Name())
}

// Delete removes blob d; a missing blob is not an error.
func (s *Store) Delete(d v1.Hash) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	if err := os.Remove(s.Path(d)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete blob %s: %w", d, err)
	}
	return nil
}

// Walk calls fn for every committed blob.
func (s *Store) Walk(fn func(d v1.Hash, size int64) error) error {
	dir := filepath.Join(s.root, "blobs", "sha256")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list blobs: %w", err)
	}
	for _, e := range ents {
		d := v1.Hash{Algorithm: "sha256", Hex: e.Name()}
		if checkDigest(d) != nil {
			// Not a blob name we write: garbage from outside.
			os.Remove(filepath.Join(dir, e.Name()))
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if err := fn(d, info.Size()); err != nil {
			return err
		}
	}
	return nil
}

// CleanIngest removes every partial write. Call it only when no write is
// in flight (at start).
func (s *Store) CleanIngest() (int, error) {
	dir := filepath.Join(s.root, "ingest")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("clean ingest: %w", err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return 0, fmt.Errorf("clean ingest: %w", err)
		}
	}
	return len(ents), nil
}

// Sync flushes the filesystem holding the store: after it, every blob
// committed so far survives a power cut.
func (s *Store) Sync() error {
	f, err := os.Open(s.root)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync content store: %w", classify(err))
	}
	return nil
}

func checkDigest(d v1.Hash) error {
	if d.Algorithm != "sha256" || len(d.Hex) != 64 {
		return fmt.Errorf("digest %q: only sha256 is supported: %w", d.String(), errdefs.ErrInvalidArgument)
	}
	if _, err := hex.DecodeString(d.Hex); err != nil {
		return fmt.Errorf("digest %q: %w", d.String(), errdefs.ErrInvalidArgument)
	}
	return nil
}

func sum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

// classify gives disk-full errors their kind, so a full disk is reported as
// ResourceExhausted rather than as an internal error.
func classify(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return errdefs.Wrap(errdefs.ErrResourceExhausted, err)
	}
	return err
}

// Classify is classify for other packages writing to the same disk.
func Classify(err error) error { return classify(err) }

// ctxReader stops a copy when ctx ends, so a cancelled pull does not keep
// a stalled connection's reader alive.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
