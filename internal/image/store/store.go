// Package store is the image metadata: which images exist, the names that
// point at them, and which unpacked layers are committed. It is the truth
// the content and layer directories are checked against at start: a blob
// or layer on disk that no committed record references is garbage.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/tripod-dev/tripod/internal/errdefs"
)

const (
	bucketImages = "images" // image ID -> Image (JSON)
	bucketRefs   = "refs"   // tag or digest reference -> image ID
	bucketLayers = "layers" // chain ID -> Layer (JSON)
)

// Image is one stored image. ID is the config digest.
type Image struct {
	ID          string       `json:"id"`
	RepoTags    []string     `json:"repoTags,omitempty"`
	RepoDigests []string     `json:"repoDigests,omitempty"`
	Manifest    string       `json:"manifest"`
	MediaType   string       `json:"mediaType"`
	Config      string       `json:"config"`
	Layers      []ImageLayer `json:"layers"`
	// Blobs is every blob the image keeps: index, manifest, config, layers.
	Blobs    []string  `json:"blobs"`
	Size     int64     `json:"size"`
	UID      *int64    `json:"uid,omitempty"`
	Username string    `json:"username,omitempty"`
	Created  time.Time `json:"created"`
}

// ImageLayer is one layer of an image, in order.
type ImageLayer struct {
	Blob      string `json:"blob"`
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
	DiffID    string `json:"diffID"`
	ChainID   string `json:"chainID"`
}

// Layer is a committed unpacked layer.
type Layer struct {
	ChainID string `json:"chainID"`
	Bytes   int64  `json:"bytes"`
	Inodes  int64  `json:"inodes"`
}

// DB is the metadata database.
type DB struct {
	db *bolt.DB
}

// Open opens the database at path. A second daemon on the same root fails
// here rather than corrupting the first one's store.
func Open(path string) (*DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: in use by another tripodd (separate instances need separate --root): %w", path, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{bucketImages, bucketRefs, bucketLayers} {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init %s: %w", path, err)
	}
	return &DB{db: db}, nil
}

// Close closes the database.
func (d *DB) Close() error { return d.db.Close() }

// PutImage commits an image and the layers it was unpacked into, in one
// transaction. Its names move to it from any image that held them; an
// image already stored under the same ID gains the new names.
func (d *DB) PutImage(img Image, layers []Layer) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		ib, rb, lb := tx.Bucket([]byte(bucketImages)), tx.Bucket([]byte(bucketRefs)), tx.Bucket([]byte(bucketLayers))
		for _, l := range layers {
			if err := putJSON(lb, l.ChainID, l); err != nil {
				return err
			}
		}
		if old, err := getImage(ib, img.ID); err == nil {
			img.RepoTags = union(old.RepoTags, img.RepoTags)
			img.RepoDigests = union(old.RepoDigests, img.RepoDigests)
		}
		for _, ref := range append(append([]string{}, img.RepoTags...), img.RepoDigests...) {
			prev := rb.Get([]byte(ref))
			if prev != nil && string(prev) != img.ID {
				other, err := getImage(ib, string(prev))
				if err == nil {
					other.RepoTags = without(other.RepoTags, ref)
					other.RepoDigests = without(other.RepoDigests, ref)
					if err := putJSON(ib, other.ID, other); err != nil {
						return err
					}
				}
			}
			if err := rb.Put([]byte(ref), []byte(img.ID)); err != nil {
				return err
			}
		}
		return putJSON(ib, img.ID, img)
	})
}

// Image returns the image with this ID.
func (d *DB) Image(id string) (Image, error) {
	var img Image
	err := d.db.View(func(tx *bolt.Tx) error {
		var err error
		img, err = getImage(tx.Bucket([]byte(bucketImages)), id)
		return err
	})
	return img, err
}

// Resolve returns the ID of the image a tag or digest reference names.
func (d *DB) Resolve(ref string) (string, error) {
	var id string
	err := d.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket([]byte(bucketRefs)).Get([]byte(ref))
		if v == nil {
			return fmt.Errorf("image %q: %w", ref, errdefs.ErrNotFound)
		}
		id = string(v)
		return nil
	})
	return id, err
}

// Images returns every image, sorted by ID.
func (d *DB) Images() ([]Image, error) {
	var out []Image
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(bucketImages)).ForEach(func(k, v []byte) error {
			var img Image
			if err := json.Unmarshal(v, &img); err != nil {
				return fmt.Errorf("image %s: %w", k, err)
			}
			out = append(out, img)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, err
}

// DeleteImage removes an image and every name pointing at it. A missing
// image is not an error.
func (d *DB) DeleteImage(id string) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		ib, rb := tx.Bucket([]byte(bucketImages)), tx.Bucket([]byte(bucketRefs))
		var stale [][]byte
		if err := rb.ForEach(func(k, v []byte) error {
			if string(v) == id {
				stale = append(stale, append([]byte{}, k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range stale {
			if err := rb.Delete(k); err != nil {
				return err
			}
		}
		return ib.Delete([]byte(id))
	})
}

// Layers returns every committed layer by chain ID.
func (d *DB) Layers() (map[string]Layer, error) {
	out := map[string]Layer{}
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(bucketLayers)).ForEach(func(k, v []byte) error {
			var l Layer
			if err := json.Unmarshal(v, &l); err != nil {
				return fmt.Errorf("layer %s: %w", k, err)
			}
			out[string(k)] = l
			return nil
		})
	})
	return out, err
}

// DeleteLayers forgets committed layers.
func (d *DB) DeleteLayers(chainIDs []string) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		lb := tx.Bucket([]byte(bucketLayers))
		for _, id := range chainIDs {
			if err := lb.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return nil
	})
}

func getImage(b *bolt.Bucket, id string) (Image, error) {
	var img Image
	v := b.Get([]byte(id))
	if v == nil {
		return img, fmt.Errorf("image %s: %w", id, errdefs.ErrNotFound)
	}
	if err := json.Unmarshal(v, &img); err != nil {
		return img, fmt.Errorf("image %s: %w", id, err)
	}
	return img, nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), data)
}

func union(a, b []string) []string {
	out := append([]string{}, a...)
	for _, s := range b {
		if !contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func without(a []string, s string) []string {
	var out []string
	for _, x := range a {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

func contains(a []string, s string) bool {
	for _, x := range a {
		if x == s {
			return true
		}
	}
	return false
}
