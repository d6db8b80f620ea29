package server_test

import (
	"archive/tar"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/config"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// testImage is a three-layer image: a base, a layer that deletes and
// replaces parts of it (whiteout, opaque directory), and a big random one.
func testImage(arch, user, marker string) (v1.Image, []v1.Layer) {
	base := imagetest.Layer(
		imagetest.Entry{Name: "bin/", Type: tar.TypeDir},
		imagetest.Entry{Name: "bin/sh", Body: "#!shell " + arch, Mode: 0o755},
		imagetest.Entry{Name: "etc/", Type: tar.TypeDir},
		imagetest.Entry{Name: "etc/passwd", Body: "root:x:0:0::/root:/bin/sh\n"},
		imagetest.Entry{Name: "etc/old", Body: "to be deleted"},
		imagetest.Entry{Name: "opt/app/", Type: tar.TypeDir},
		imagetest.Entry{Name: "opt/app/stale", Body: "hidden by opaque"},
		imagetest.Entry{Name: "bin/busybox", Type: tar.TypeSymlink, Linkname: "/bin/sh"},
	)
	edits := imagetest.Layer(
		imagetest.Entry{Name: "etc/.wh.old", Body: ""},
		imagetest.Entry{Name: "opt/app/", Type: tar.TypeDir},
		imagetest.Entry{Name: "opt/app/.wh..wh..opq", Body: ""},
		imagetest.Entry{Name: "opt/app/fresh", Body: marker, Uid: 1000, Gid: 1000, Mode: 0o640},
		imagetest.Entry{Name: "etc/hardlink", Type: tar.TypeLink, Linkname: "opt/app/fresh"},
	)
	big := imagetest.Layer(imagetest.Entry{Name: "data/blob", Size: 3 << 20})
	layers := []v1.Layer{base, edits, big}
	return imagetest.Image(arch, user, layers...), layers
}

func configDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestPullListStatusRemove(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	img, layers := testImage(runtime.GOARCH, "1000", "v1")
	mdig := reg.Push(t, "app/web:1.0", img)
	e := start(t, nil)

	tag := reg.Host + "/app/web:1.0"
	id := e.mustPull(tag)
	if want := configDigest(t, img); id != want {
		t.Fatalf("image ref %s, want the config digest %s", id, want)
	}
	byDigest := reg.Host + "/app/web@" + mdig.String()
	if id2 := e.mustPull(byDigest); id2 != id {
		t.Fatalf("pull by digest gave %s, want %s", id2, id)
	}

	imgs := e.list()
	if len(imgs) != 1 {
		t.Fatalf("list: %d images, want 1: %v", len(imgs), imgs)
	}
	got := imgs[0]
	if got.Id != id || !slices.Equal(got.RepoTags, []string{tag}) || !slices.Equal(got.RepoDigests, []string{byDigest}) {
		t.Fatalf("list: got %v", got)
	}
	if got.Uid == nil || got.Uid.Value != 1000 || got.Username != "" {
		t.Fatalf("uid/username: got %v %q, want 1000", got.Uid, got.Username)
	}
	var size int64
	for _, l := range layers {
		s, _ := l.Size()
		size += s
	}
	if got.Size < uint64(size) {
		t.Fatalf("size %d < sum of layers %d", got.Size, size)
	}

	// Status by tag, digest, full ID, ID without algorithm, short ID.
	hexID := strings.TrimPrefix(id, "sha256:")
	for _, ref := range []string{tag, byDigest, id, hexID, hexID[:12]} {
		st := e.status(ref, false)
		if st.Image == nil || st.Image.Id != id {
			t.Fatalf("status %q: got %v", ref, st.Image)
		}
	}
	// Filtered list.
	resp, err := e.images.ListImages(ctx(t), &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: tag}}})
	if err != nil || len(resp.Images) != 1 {
		t.Fatalf("filtered list: %v %v", resp, err)
	}
	resp, err = e.images.ListImages(ctx(t), &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: reg.Host + "/app/other:1"}}})
	if err != nil || len(resp.Images) != 0 {
		t.Fatalf("filtered list of a missing image: %v %v", resp, err)
	}
	// Unknown image: empty status, no error.
	if st := e.status(reg.Host+"/app/web:nope", false); st.Image != nil {
		t.Fatalf("status of a missing image: %v", st.Image)
	}

	// Verbose status carries the config and the layer directories.
	st := e.status(tag, true)
	var info struct {
		ImageSpec v1.ConfigFile `json:"imageSpec"`
		LayerDirs []string      `json:"layerDirs"`
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		t.Fatalf("verbose info: %v: %q", err, st.Info)
	}
	if info.ImageSpec.Config.User != "1000" || info.ImageSpec.Architecture != runtime.GOARCH || len(info.LayerDirs) != 3 {
		t.Fatalf("verbose info: %+v", info)
	}
	checkLayers(t, info.LayerDirs, "v1")

	// Remove by tag: everything goes, the store is empty again.
	e.remove(tag)
	if imgs := e.list(); len(imgs) != 0 {
		t.Fatalf("after remove: %v", imgs)
	}
	e.remove(tag) // idempotent
	e.remove(id)
	blobs, ls, partial := e.storeFiles()
	if len(blobs)+len(ls)+len(partial) != 0 {
		t.Fatalf("store not empty after remove: blobs %v layers %v partial %v", blobs, ls, partial)
	}
	for _, d := range info.LayerDirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Fatalf("layer dir %s still there: %v", d, err)
		}
	}
}

// checkLayers asserts what the three test layers put on disk, in overlay
// format.
func checkLayers(t *testing.T, dirs []string, marker string) {
	t.Helper()
	base, edits, big := dirs[0], dirs[1], dirs[2]
	if b, err := os.ReadFile(filepath.Join(base, "etc/old")); err != nil || string(b) != "to be deleted" {
		t.Fatalf("base etc/old: %q %v", b, err)
	}
	if l, err := os.Readlink(filepath.Join(base, "bin/busybox")); err != nil || l != "/bin/sh" {
		t.Fatalf("base symlink: %q %v", l, err)
	}
	if fi, err := os.Stat(filepath.Join(base, "bin/sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("bin/sh mode: %v %v", fi, err)
	}
	// Whiteout: a 0/0 character device.
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(edits, "etc/old"), &st); err != nil {
		t.Fatalf("whiteout: %v", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Fatalf("whiteout etc/old: mode %o rdev %d, want a 0/0 char device", st.Mode, st.Rdev)
	}
	if _, err := os.Lstat(filepath.Join(edits, "etc/.wh.old")); !os.IsNotExist(err) {
		t.Fatalf("whiteout marker file left on disk: %v", err)
	}
	// Opaque directory: the overlay xattr, and no marker file.
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(filepath.Join(edits, "opt/app"), "trusted.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Fatalf("opaque xattr: %q %v", buf[:n], err)
	}
	if _, err := os.Lstat(filepath.Join(edits, "opt/app/.wh..wh..opq")); !os.IsNotExist(err) {
		t.Fatalf("opaque marker left on disk: %v", err)
	}
	if err := unix.Lstat(filepath.Join(edits, "opt/app/fresh"), &st); err != nil || st.Uid != 1000 || st.Gid != 1000 || st.Mode&0o777 != 0o640 || st.Nlink != 2 {
		t.Fatalf("opt/app/fresh: %+v %v", st, err)
	}
	if b, _ := os.ReadFile(filepath.Join(edits, "etc/hardlink")); string(b) != marker {
		t.Fatalf("hardlink content %q", b)
	}
	if fi, err := os.Stat(filepath.Join(big, "data/blob")); err != nil || fi.Size() != 3<<20 {
		t.Fatalf("big layer: %v %v", fi, err)
	}
}

func TestPullIndexSelectsPlatform(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	mine, _ := testImage(runtime.GOARCH, "", "mine")
	theirs, _ := testImage(other, "", "theirs")
	idxDigest := reg.PushIndex(t, "multi/app:2", imagetest.Index(theirs, mine))
	reg.PushIndex(t, "multi/exotic:1", imagetest.Index(theirs))

	e := start(t, nil)
	id := e.mustPull(reg.Host + "/multi/app:2")
	if id != configDigest(t, mine) {
		t.Fatalf("pulled %s, want this node's platform %s", id, configDigest(t, mine))
	}
	st := e.status(id, true)
	if want := reg.Host + "/multi/app@" + idxDigest.String(); !slices.Equal(st.Image.RepoDigests, []string{want}) {
		t.Fatalf("repo digests %v, want the index digest %s", st.Image.RepoDigests, want)
	}
	var info struct{ LayerDirs []string }
	json.Unmarshal([]byte(st.Info["info"]), &info)
	checkLayers(t, info.LayerDirs, "mine")

	// By index digest too.
	if id2 := e.mustPull(reg.Host + "/multi/app@" + idxDigest.String()); id2 != id {
		t.Fatalf("by index digest: %s", id2)
	}

	// Another platform by configuration.
	e2 := start(t, func(c *config.Config) { c.Image.Platform = "linux/" + other })
	if id := e2.mustPull(reg.Host + "/multi/app:2"); id != configDigest(t, theirs) {
		t.Fatalf("platform linux/%s: pulled %s", other, id)
	}

	// No manifest for this platform: NotFound, nothing left behind.
	_, err := e.pull(reg.Host+"/multi/exotic:1", nil)
	wantCode(t, err, codes.NotFound)
	if !strings.Contains(err.Error(), "linux/"+runtime.GOARCH) {
		t.Fatalf("error does not name the platform: %v", err)
	}
}
