package server_test

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// TestSelfSignedRegistry: an HTTPS registry with a self-signed certificate
// is refused until hosts.toml trusts its CA or skips verification.
func TestSelfSignedRegistry(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{TLS: true})
	img, _ := testImage(runtime.GOARCH, "", "tls")
	reg.Push(t, "secure/app:1", img)
	ref := reg.Host + "/secure/app:1"

	e := start(t, nil)
	// Loopback defaults to plain HTTP, which an HTTPS server refuses.
	_, err := e.pull(ref, nil)
	wantCode(t, err, codes.Unavailable)

	// HTTPS without trusting the certificate.
	writeHosts(t, e.cfg.Image.RegistryHostsDir, reg.Host, fmt.Sprintf("server = \"https://%s\"\n", reg.Host))
	_, err = e.pull(ref, nil)
	wantCode(t, err, codes.Unavailable)

	// Trusting it through a CA file, relative to the hosts.toml.
	dir := filepath.Join(e.cfg.Image.RegistryHostsDir, reg.Host)
	os.WriteFile(filepath.Join(dir, "ca.crt"), reg.CertPEM(), 0o644)
	writeHosts(t, e.cfg.Image.RegistryHostsDir, reg.Host, fmt.Sprintf("server = \"https://%s\"\nca = \"ca.crt\"\n", reg.Host))
	e.mustPull(ref)
	e.remove(ref)

	// skip_verify on a mirror entry.
	writeHosts(t, e.cfg.Image.RegistryHostsDir, reg.Host, fmt.Sprintf("[host.\"https://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n", reg.Host))
	e.mustPull(ref)
}

// TestMediaTypes: Docker schema 2 manifests and manifest lists, zstd and
// uncompressed layers.
func TestMediaTypes(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	dmine := imagetest.DockerImage(runtime.GOARCH, imagetest.Layer(imagetest.Entry{Name: "docker", Body: "mine"}))
	dtheirs := imagetest.DockerImage(other, imagetest.Layer(imagetest.Entry{Name: "docker", Body: "theirs"}))
	reg.PushIndex(t, "docker/list:1", imagetest.DockerIndex(dtheirs, dmine))
	reg.Push(t, "docker/single:1", dmine)
	mixed := imagetest.Image(runtime.GOARCH, "",
		imagetest.ZstdLayer(imagetest.Entry{Name: "z/", Type: tar.TypeDir}, imagetest.Entry{Name: "z/file", Body: "zstd"}),
		imagetest.UncompressedLayer(imagetest.Entry{Name: "u/file", Body: "plain"}),
		imagetest.Layer(imagetest.Entry{Name: "z/.wh.file"}))
	reg.Push(t, "oci/mixed:1", mixed)

	e := start(t, nil)
	cfg, _ := dmine.ConfigName()
	for _, ref := range []string{reg.Host + "/docker/list:1", reg.Host + "/docker/single:1"} {
		if id := e.mustPull(ref); id != cfg.String() {
			t.Fatalf("%s: got %s want %s", ref, id, cfg)
		}
	}
	st := e.status(reg.Host+"/docker/single:1", true)
	if len(st.Image.RepoTags) != 2 || len(st.Image.RepoDigests) != 2 {
		t.Fatalf("one image, two names each way: %v", st.Image)
	}
	id := e.mustPull(reg.Host + "/oci/mixed:1")
	dirs := layerDirs(t, e, id)
	if b, _ := os.ReadFile(filepath.Join(dirs[0], "z/file")); string(b) != "zstd" {
		t.Fatalf("zstd layer: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dirs[1], "u/file")); string(b) != "plain" {
		t.Fatalf("uncompressed layer: %q", b)
	}
}

func layerDirs(t *testing.T, e *env, ref string) []string {
	t.Helper()
	img, err := e.d.Images.Lookup(ref)
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := e.d.Images.LayerDirs(img)
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// TestTagMoves: re-pulling a tag that now names another image moves the
// tag; the old image keeps its digest name, and tag@digest pins a digest.
func TestTagMoves(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	v1img, _ := testImage(runtime.GOARCH, "", "one")
	d1 := reg.Push(t, "moving/app:latest", v1img)
	e := start(t, nil)
	id1 := e.mustPull(reg.Host + "/moving/app")
	v2img, _ := testImage(runtime.GOARCH, "", "two")
	reg.Push(t, "moving/app:latest", v2img)
	id2 := e.mustPull(reg.Host + "/moving/app:latest")
	if id1 == id2 {
		t.Fatal("same image")
	}
	old := e.status(id1, false).Image
	if len(old.RepoTags) != 0 || !slices.Equal(old.RepoDigests, []string{reg.Host + "/moving/app@" + d1.String()}) {
		t.Fatalf("old image: %v", old)
	}
	if cur := e.status(reg.Host+"/moving/app:latest", false).Image; cur.Id != id2 {
		t.Fatalf("tag points at %s", cur.Id)
	}
	// name:tag@digest: the digest decides.
	if id := e.mustPull(reg.Host + "/moving/app:latest@" + d1.String()); id != id1 {
		t.Fatalf("tag@digest pulled %s", id)
	}
	resp, err := e.images.ListImages(ctx(t), &runtimeapi.ListImagesRequest{})
	if err != nil || len(resp.Images) != 2 {
		t.Fatalf("list: %v %v", resp, err)
	}
	// StreamImages returns the same.
	stream, err := e.images.StreamImages(ctx(t), &runtimeapi.StreamImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n += len(r.Images)
	}
	if n != 2 {
		t.Fatalf("stream: %d images", n)
	}
}

// TestCancelledPull: a client that gives up mid-pull leaves nothing.
func TestCancelledPull(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	img, layers := testImage(runtime.GOARCH, "", "cancel")
	reg.Push(t, "c/app:1", img)
	release := reg.Stall(layerDigest(t, layers[2]))
	defer release()
	e := start(t, nil)
	c, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := e.images.PullImage(c, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: reg.Host + "/c/app:1"}})
		errc <- err
	}()
	<-reg.Stalled()
	cancel()
	wantCode(t, <-errc, codes.Canceled)
	// The server notices the cancellation on its own schedule: wait for
	// the pull to end there, then check it cleaned up.
	deadline := time.Now().Add(time.Minute)
	for len(e.d.Images.Pulls()) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("pull still running after cancel")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if imgs := e.list(); len(imgs) != 0 {
		t.Fatalf("image after cancel: %v", imgs)
	}
	blobs, ls, partial := e.storeFiles()
	if len(blobs)+len(ls)+len(partial) != 0 {
		t.Fatalf("left behind: %v %v %v", blobs, ls, partial)
	}
	release()
	e.mustPull(reg.Host + "/c/app:1")
}

// TestSameLayerTwoCompressions: two images share a layer (same diff ID)
// compressed differently, pulled at once: one unpack, both blobs stored.
func TestSameLayerTwoCompressions(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	entries := []imagetest.Entry{{Name: "shared/", Type: tar.TypeDir}, {Name: "shared/data", Body: "same bytes, two compressions"}}
	gz, zs := imagetest.Layer(entries...), imagetest.ZstdLayer(entries...)
	reg.Push(t, "two/gzip:1", imagetest.Image(runtime.GOARCH, "", gz))
	reg.Push(t, "two/zstd:1", imagetest.Image(runtime.GOARCH, "", zs))
	release := reg.Stall(layerDigest(t, gz))
	defer release()
	e := start(t, nil)
	errc := make(chan error, 2)
	go func() { _, err := e.pull(reg.Host+"/two/gzip:1", nil); errc <- err }()
	<-reg.Stalled()
	go func() { _, err := e.pull(reg.Host+"/two/zstd:1", nil); errc <- err }()
	// Let the second pull reach the shared layer, then let the first go.
	deadline := time.Now().Add(time.Minute)
	for len(e.d.Images.Pulls()) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("second pull never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	release()
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	blobs, layers, _ := e.storeFiles()
	for _, l := range []v1.Layer{gz, zs} {
		d := layerDigest(t, l)
		if !slices.Contains(blobs, d.Hex) {
			t.Fatalf("blob %s missing: %v", d, blobs)
		}
	}
	if len(layers) != 1 {
		t.Fatalf("%d layer dirs, want 1 shared", len(layers))
	}
}
