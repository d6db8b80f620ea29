package state

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Records written (durably or not) are read back, listed in ID order,
// survive reopening the store (a restarted driver), and deletes stick;
// a temporary file left by a write a crash interrupted is swept at open.
func TestStore(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"vb", "va", "vc"} {
		if err := s.PutVolume(&Volume{ID: id, Name: "n-" + id, Phase: Ready, Capacity: 1}); err != nil {
			t.Fatal(err)
		}
	}
	v, _ := s.Volume("vb")
	v.Staging = "/x"
	if err := s.PutVolumeVolatile(v); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVolume("vc"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSnapshot(&Snapshot{ID: "s1", SourceVolume: "va", Phase: Ready}); err != nil {
		t.Fatal(err)
	}
	torn := filepath.Join(dir, "volumes", ".tmp-vd-123")
	if err := os.WriteFile(torn, []byte(`{"id":"vd","na`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, st := range []*Store{s, reopen(t, dir)} {
		vols, err := st.Volumes()
		if err != nil || len(vols) != 2 || vols[0].ID != "va" || vols[1].ID != "vb" || vols[1].Staging != "/x" {
			t.Errorf("Volumes: %+v %v", vols, err)
		}
		if _, err := st.Volume("vc"); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted volume: %v", err)
		}
		if snaps, err := st.Snapshots(); err != nil || len(snaps) != 1 || snaps[0].SourceVolume != "va" {
			t.Errorf("Snapshots: %+v %v", snaps, err)
		}
	}
	if _, err := os.Stat(torn); !os.IsNotExist(err) {
		t.Errorf("temporary file not swept at open: %v", err)
	}
	// A returned record is a copy: changing it changes nothing stored.
	v, _ = s.Volume("va")
	v.Capacity = 99
	if again, _ := s.Volume("va"); again.Capacity != 1 {
		t.Errorf("store changed through a returned record")
	}
	if err := s.Check(); err != nil {
		t.Errorf("Check: %v", err)
	}
}

func reopen(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
