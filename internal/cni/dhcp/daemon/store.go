package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tripod-dev/tripod/internal/cni/dhcp/api"
	"github.com/tripod-dev/tripod/internal/cni/dhcp/dhcp4"
)

// recordVersion is the version of the lease file format.
const recordVersion = 1

// record is one lease as persisted: enough to renew and release it after a
// daemon restart.
type record struct {
	Version    int            `json:"version"`
	Attachment api.Attachment `json:"attachment"`
	Netns      string         `json:"netns"`
	Params     api.Params     `json:"params"`
	Lease      dhcp4.Lease    `json:"lease"`
}

// store keeps one file per lease in a directory. Files are replaced
// atomically, so a crash leaves either the old or the new lease.
type store struct {
	dir string
}

func (s *store) path(a api.Attachment) string {
	h := sha256.Sum256([]byte(a.ContainerID + "\x00" + a.Network + "\x00" + a.IfName))
	return filepath.Join(s.dir, hex.EncodeToString(h[:16])+".json")
}

func (s *store) save(r *record) error {
	r.Version = recordVersion
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(s.dir, ".tmp-")
	if err != nil {
		return fmt.Errorf("saving lease: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path(r.Attachment))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving lease in %s: %w", s.dir, err)
	}
	return nil
}

func (s *store) remove(a api.Attachment) error {
	if err := os.Remove(s.path(a)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing lease file: %w", err)
	}
	return nil
}

// load returns every lease in the directory. Unreadable files are
// reported and left in place for an operator to inspect.
func (s *store) load() ([]*record, []error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, []error{fmt.Errorf("reading state directory: %w", err)}
	}
	var recs []*record
	var errs []error
	for _, e := range ents {
		name := e.Name()
		p := filepath.Join(s.dir, name)
		if strings.HasPrefix(name, ".tmp-") {
			os.Remove(p) // an interrupted save
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r := &record{}
		if err := json.Unmarshal(b, r); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		if r.Version != recordVersion {
			errs = append(errs, fmt.Errorf("%s: lease file format %d, this daemon reads %d", p, r.Version, recordVersion))
			continue
		}
		recs = append(recs, r)
	}
	return recs, errs
}
