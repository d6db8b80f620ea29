package image_test

import (
	"archive/tar"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/tripod-dev/tripod/internal/image"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// TestLayersInUseSurviveRemoval: layers a container still stacks on stay
// after their image is removed, and go once released.
func TestLayersInUseSurviveRemoval(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	img := imagetest.Image(runtime.GOARCH, "",
		imagetest.Layer(imagetest.Entry{Name: "etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "etc/base", Body: "base"}),
		imagetest.Layer(imagetest.Entry{Name: "app", Body: "app"}))
	reg.Push(t, "use/app:1", img)

	var mu sync.Mutex
	inUse := map[string]bool{}
	ctx := context.Background()
	s, err := image.New(ctx, image.Options{
		Root: t.TempDir(), HostsDir: t.TempDir(),
		LayersInUse: func() map[string]bool {
			mu.Lock()
			defer mu.Unlock()
			out := map[string]bool{}
			for k, v := range inUse {
				out[k] = v
			}
			return out
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stored, err := s.Pull(ctx, reg.Host+"/use/app:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := s.LayerDirs(stored)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	for _, l := range stored.Layers {
		inUse[l.ChainID] = true
	}
	mu.Unlock()
	if err := s.Remove(ctx, stored.ID); err != nil {
		t.Fatal(err)
	}
	if imgs, _ := s.List(""); len(imgs) != 0 {
		t.Fatalf("image still listed: %v", imgs)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); err != nil {
			t.Fatalf("layer in use collected: %v", err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dirs[0], "etc/base")); string(b) != "base" {
		t.Fatalf("layer content: %q", b)
	}
	mu.Lock()
	clear(inUse)
	mu.Unlock()
	res, err := s.GC(ctx)
	if err != nil || res.Layers != 2 {
		t.Fatalf("gc after release: %+v %v", res, err)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Fatalf("released layer kept: %v", err)
		}
	}
}
