package main_test

import (
	"archive/tar"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

func image3(marker string) (v1.Image, []v1.Layer) {
	ls := []v1.Layer{
		imagetest.Layer(imagetest.Entry{Name: "etc/", Type: tar.TypeDir}, imagetest.Entry{Name: "etc/os-release", Body: marker}),
		imagetest.Layer(imagetest.Entry{Name: "etc/.wh.os-release"}, imagetest.Entry{Name: "usr/bin/app", Size: 1 << 20, Mode: 0o755}),
		imagetest.Layer(imagetest.Entry{Name: "data/big", Size: 4 << 20}),
	}
	return imagetest.Image(runtime.GOARCH, "nobody", ls...), ls
}

// storeUsage is the bytes and files under the image store, its metadata
// database aside (bbolt keeps its pages once grown).
func storeUsage(t *testing.T, root string) (bytes int64, files []string) {
	t.Helper()
	base := filepath.Join(root, "images")
	filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == base {
			return nil
		}
		rel, _ := filepath.Rel(base, p)
		if rel == "meta.db" {
			return nil
		}
		if d.IsDir() {
			switch rel {
			case "content", "content/blobs", "content/blobs/sha256", "content/ingest", "layers", "layers/sha256", "layers/tmp":
				return nil
			}
		}
		files = append(files, rel)
		if fi, err := d.Info(); err == nil && d.Type().IsRegular() {
			bytes += fi.Size()
		}
		return nil
	})
	return bytes, files
}

// TestKill9MidPull: SIGKILL while a layer is half downloaded (others done),
// restart, the store is repaired, a committed image is intact, the same
// pull succeeds, and after rmi the store is back to where it started.
func TestKill9MidPull(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	kept, _ := image3("kept")
	reg.Push(t, "crash/kept:1", kept)
	img, layers := image3("victim")
	reg.Push(t, "crash/victim:1", img)
	bigDigest, _ := layers[2].Digest()
	release := reg.Stall(bigDigest)
	defer release()

	n := newNode(t)
	d := startDaemon(t, n)
	c := client(t, n)
	before, files := storeUsage(t, n.root)
	if before != 0 || len(files) != 0 {
		t.Fatalf("fresh store not empty: %v", files)
	}
	if _, err := c.PullImage(testCtx(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: reg.Host + "/crash/kept:1"}}); err != nil {
		t.Fatal(err)
	}
	_, keptFiles := storeUsage(t, n.root)

	pullErr := make(chan error, 1)
	go func() {
		_, err := c.PullImage(testCtx(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: reg.Host + "/crash/victim:1"}})
		pullErr <- err
	}()
	select {
	case <-reg.Stalled():
	case <-time.After(time.Minute):
		t.Fatal("pull never reached the big layer")
	}
	// Wait until the other layers are unpacked and the big one is partly
	// on disk, so the kill leaves every kind of debris.
	deadline := time.Now().Add(time.Minute)
	for {
		_, files := storeUsage(t, n.root)
		partial, layerDirs := 0, 0
		for _, f := range files {
			if strings.HasPrefix(f, "content/ingest/") || strings.HasPrefix(f, "layers/tmp/") {
				partial++
			}
			if strings.Count(f, "/") == 2 && strings.HasPrefix(f, "layers/sha256/") {
				layerDirs++
			}
		}
		if partial > 0 && layerDirs >= 5 { // 3 kept + 2 of the victim's
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no partial state to crash on: %v", files)
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.kill()
	if err := <-pullErr; err == nil {
		t.Fatal("pull succeeded though the daemon was killed")
	}
	release()

	d2 := startDaemon(t, n)
	c2 := client(t, n)
	if !strings.Contains(d2.log.String(), "image store repaired") {
		t.Fatalf("no repair logged:\n%s", d2.log.String())
	}
	_, after := storeUsage(t, n.root)
	if strings.Join(after, "\n") != strings.Join(keptFiles, "\n") {
		t.Fatalf("after repair the store is not what the committed image left:\nafter %v\nwant  %v", after, keptFiles)
	}
	list, err := c2.ListImages(testCtx(t), &runtimeapi.ListImagesRequest{})
	if err != nil || len(list.Images) != 1 || list.Images[0].RepoTags[0] != reg.Host+"/crash/kept:1" {
		t.Fatalf("after restart: %v %v", list, err)
	}
	if _, err := c2.PullImage(testCtx(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: reg.Host + "/crash/victim:1"}}); err != nil {
		t.Fatalf("pull after repair: %v", err)
	}
	st, err := c2.ImageStatus(testCtx(t), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: reg.Host + "/crash/victim:1"}, Verbose: true})
	if err != nil || st.Image == nil || st.Image.Username != "nobody" {
		t.Fatalf("status: %v %v", st, err)
	}
	big := filepath.Join(n.root, "images/layers/sha256")
	ents, _ := os.ReadDir(big)
	if len(ents) != 6 {
		t.Fatalf("%d layers, want 6", len(ents))
	}
	for _, ref := range []string{reg.Host + "/crash/victim:1", reg.Host + "/crash/kept:1"} {
		if _, err := c2.RemoveImage(testCtx(t), &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
			t.Fatal(err)
		}
	}
	if usage, files := storeUsage(t, n.root); usage != before || len(files) != 0 {
		t.Fatalf("after rmi: %d bytes in %v, want %d", usage, files, before)
	}
	d2.stop(t)
}

// TestRepairDropsIncompleteImage: an image whose layer vanished while the
// daemon was down is removed at start (and only it); pulling it again works.
func TestRepairDropsIncompleteImage(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	broken, _ := image3("broken")
	intact := imagetest.Image(runtime.GOARCH, "", imagetest.Layer(imagetest.Entry{Name: "intact", Body: "yes"}))
	reg.Push(t, "r/broken:1", broken)
	reg.Push(t, "r/intact:1", intact)
	n := newNode(t)
	d := startDaemon(t, n)
	c := client(t, n)
	for _, ref := range []string{"/r/broken:1", "/r/intact:1"} {
		if _, err := c.PullImage(testCtx(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: reg.Host + ref}}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := c.ImageStatus(testCtx(t), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: reg.Host + "/r/broken:1"}, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ LayerDirs []string }
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil || len(info.LayerDirs) != 3 {
		t.Fatalf("info: %v %v", info, err)
	}
	d.stop(t)
	if err := os.RemoveAll(info.LayerDirs[1]); err != nil {
		t.Fatal(err)
	}

	d2 := startDaemon(t, n)
	c2 := client(t, n)
	if log := d2.log.String(); !strings.Contains(log, "removing incomplete image") || !strings.Contains(log, "missing") {
		t.Fatalf("repair not logged:\n%s", log)
	}
	list, err := c2.ListImages(testCtx(t), &runtimeapi.ListImagesRequest{})
	if err != nil || len(list.Images) != 1 || list.Images[0].RepoTags[0] != reg.Host+"/r/intact:1" {
		t.Fatalf("after repair: %v %v", list, err)
	}
	for _, dir := range []string{info.LayerDirs[0], info.LayerDirs[2]} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("layer %s of the dropped image not collected: %v", dir, err)
		}
	}
	if _, err := c2.PullImage(testCtx(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: reg.Host + "/r/broken:1"}}); err != nil {
		t.Fatalf("pull again: %v", err)
	}
	if _, err := os.Stat(filepath.Join(info.LayerDirs[1], "usr/bin/app")); err != nil {
		t.Fatalf("layer not restored: %v", err)
	}
}
