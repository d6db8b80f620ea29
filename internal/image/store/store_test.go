package store

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tripod-dev/tripod/internal/errdefs"
)

func TestNamesMove(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := Open(path); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("second open: %v", err)
	}
	a := Image{ID: "sha256:a", RepoTags: []string{"r/x:1"}, RepoDigests: []string{"r/x@sha256:ma"},
		Layers: []ImageLayer{{ChainID: "sha256:l1"}}}
	if err := db.PutImage(a, []Layer{{ChainID: "sha256:l1", Bytes: 10, Inodes: 2}}); err != nil {
		t.Fatal(err)
	}
	b := Image{ID: "sha256:b", RepoTags: []string{"r/x:1"}, RepoDigests: []string{"r/x@sha256:mb"}}
	if err := db.PutImage(b, nil); err != nil {
		t.Fatal(err)
	}
	if id, _ := db.Resolve("r/x:1"); id != "sha256:b" {
		t.Fatalf("tag resolves to %s", id)
	}
	got, _ := db.Image("sha256:a")
	if len(got.RepoTags) != 0 || !slices.Equal(got.RepoDigests, []string{"r/x@sha256:ma"}) {
		t.Fatalf("a after the tag moved: %+v", got)
	}
	// Same ID again: names merge.
	db.PutImage(Image{ID: "sha256:a", RepoTags: []string{"r/y:2"}}, nil)
	got, _ = db.Image("sha256:a")
	if !slices.Equal(got.RepoTags, []string{"r/y:2"}) || len(got.RepoDigests) != 1 {
		t.Fatalf("merge: %+v", got)
	}
	if err := db.DeleteImage("sha256:a"); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"r/y:2", "r/x@sha256:ma"} {
		if _, err := db.Resolve(ref); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("%s after delete: %v", ref, err)
		}
	}
	ls, _ := db.Layers()
	if ls["sha256:l1"].Bytes != 10 {
		t.Fatalf("layers: %v", ls)
	}
	db.DeleteLayers([]string{"sha256:l1"})
	if ls, _ := db.Layers(); len(ls) != 0 {
		t.Fatalf("layers after delete: %v", ls)
	}
	imgs, _ := db.Images()
	if len(imgs) != 1 || imgs[0].ID != "sha256:b" {
		t.Fatalf("images: %v", imgs)
	}
}
