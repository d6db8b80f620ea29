package pod

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/tripod-dev/tripod/internal/errdefs"
)

var (
	podBucket       = []byte("pods")
	containerBucket = []byte("containers")
)

// store persists pod and container records in bbolt; every change is one
// transaction, so a kill -9 leaves either the old record or the new one.
type store struct{ db *bolt.DB }

func openStore(path string) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: in use by another tripodd (separate instances need separate --root): %w", path, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("runtime metadata %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{podBucket, containerBucket} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("runtime metadata: %w", err)
	}
	return &store{db: db}, nil
}

func (s *store) put(bucket []byte, id string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(id), b) }); err != nil {
		return fmt.Errorf("save %s %s: %w", bucket, id, err)
	}
	return nil
}

func (s *store) delete(bucket []byte, id string) error {
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(id)) }); err != nil {
		return fmt.Errorf("delete %s %s: %w", bucket, id, err)
	}
	return nil
}

func loadAll[T any](s *store, bucket []byte) ([]*T, error) {
	var out []*T
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			t := new(T)
			if err := json.Unmarshal(v, t); err != nil {
				return fmt.Errorf("%s %s: %w", bucket, k, err)
			}
			out = append(out, t)
			return nil
		})
	})
	return out, err
}
