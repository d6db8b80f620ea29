package server_test

import (
	"archive/tar"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/config"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func layerDigest(t *testing.T, l v1.Layer) v1.Hash {
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestBadInput: every failure has its code and leaves no image and no
// blob or layer behind.
func TestBadInput(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	good, _ := testImage(runtime.GOARCH, "", "good")
	goodDigest := reg.Push(t, "ok/app:1", good)

	corruptImg, cl := testImage(runtime.GOARCH, "", "corrupt")
	reg.Push(t, "bad/corrupt:1", corruptImg)
	reg.Corrupt(layerDigest(t, cl[2]), func(b []byte) []byte {
		c := append([]byte{}, b...)
		c[len(c)/2] ^= 0xff
		return c
	})
	truncImg, tl := testImage(runtime.GOARCH, "", "truncated")
	reg.Push(t, "bad/truncated:1", truncImg)
	reg.Corrupt(layerDigest(t, tl[2]), func(b []byte) []byte { return b[:len(b)/3] })

	hostile := imagetest.Image(runtime.GOARCH, "",
		imagetest.Layer(imagetest.Entry{Name: "ok", Body: "fine"}),
		imagetest.Layer(imagetest.Entry{Name: "../../../../tmp/tripod-escape", Body: "pwned"}))
	reg.Push(t, "bad/hostile:1", hostile)

	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	foreign, _ := testImage(other, "", "foreign")
	reg.PushIndex(t, "bad/foreign:1", imagetest.Index(foreign))

	e := start(t, nil)
	cases := []struct {
		ref  string
		code codes.Code
	}{
		{"", codes.InvalidArgument},
		{"UPPER/case:1", codes.InvalidArgument},
		{reg.Host + "/ok/app:bad tag", codes.InvalidArgument},
		{reg.Host + "/ok/app@sha256:1234", codes.InvalidArgument},
		{closedPort(t) + "/ok/app:1", codes.Unavailable},
		{reg.Host + "/ok/app:missing", codes.NotFound},
		{reg.Host + "/no/such:1", codes.NotFound},
		{reg.Host + "/ok/app@sha256:" + fmt.Sprintf("%064x", 1), codes.NotFound},
		{reg.Host + "/bad/corrupt:1", codes.DataLoss},
		{reg.Host + "/bad/truncated:1", codes.DataLoss},
		{reg.Host + "/bad/hostile:1", codes.InvalidArgument},
		{reg.Host + "/bad/foreign:1", codes.NotFound},
	}
	for _, c := range cases {
		t.Run(c.ref, func(t *testing.T) {
			_, err := e.pull(c.ref, nil)
			wantCode(t, err, c.code)
			if imgs := e.list(); len(imgs) != 0 {
				t.Fatalf("image left behind: %v", imgs)
			}
			blobs, layers, partial := e.storeFiles()
			if len(blobs)+len(layers)+len(partial) != 0 {
				t.Fatalf("left behind: blobs %v layers %v partial %v", blobs, layers, partial)
			}
		})
	}
	if _, err := os.Stat("/tmp/tripod-escape"); err == nil {
		t.Fatal("hostile layer wrote /tmp/tripod-escape")
	}
	// Nil image spec.
	_, err := e.images.PullImage(ctx(t), &runtimeapi.PullImageRequest{})
	wantCode(t, err, codes.InvalidArgument)
	_, err = e.images.ImageStatus(ctx(t), &runtimeapi.ImageStatusRequest{})
	wantCode(t, err, codes.InvalidArgument)
	_, err = e.images.RemoveImage(ctx(t), &runtimeapi.RemoveImageRequest{})
	wantCode(t, err, codes.InvalidArgument)

	// The store still works: the good image pulls, by digest too.
	e.mustPull(reg.Host + "/ok/app@" + goodDigest.String())
}

func TestAuth(t *testing.T) {
	for _, bearer := range []bool{false, true} {
		t.Run(fmt.Sprintf("bearer=%v", bearer), func(t *testing.T) {
			reg := imagetest.NewRegistry(t, imagetest.Options{User: "alice", Password: "s3cret", Bearer: bearer})
			img, _ := testImage(runtime.GOARCH, "", "auth")
			reg.Push(t, "private/app:1", img)
			ref := reg.Host + "/private/app:1"
			e := start(t, nil)

			_, err := e.pull(ref, nil)
			wantCode(t, err, codes.PermissionDenied)
			_, err = e.pull(ref, &runtimeapi.AuthConfig{Username: "alice", Password: "wrong"})
			wantCode(t, err, codes.PermissionDenied)
			if imgs := e.list(); len(imgs) != 0 {
				t.Fatalf("image after refused pull: %v", imgs)
			}
			if _, err := e.pull(ref, &runtimeapi.AuthConfig{Username: "alice", Password: "s3cret"}); err != nil {
				t.Fatalf("username/password: %v", err)
			}
			e.remove(ref)
			auth := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
			if _, err := e.pull(ref, &runtimeapi.AuthConfig{Auth: auth}); err != nil {
				t.Fatalf("auth field: %v", err)
			}
			e.remove(ref)
			if bearer {
				if _, err := e.pull(ref, &runtimeapi.AuthConfig{IdentityToken: reg.IdentityToken()}); err != nil {
					t.Fatalf("identity token: %v", err)
				}
				e.remove(ref)
				if _, err := e.pull(ref, &runtimeapi.AuthConfig{RegistryToken: reg.Token()}); err != nil {
					t.Fatalf("registry token: %v", err)
				}
				e.remove(ref)
				_, err := e.pull(ref, &runtimeapi.AuthConfig{IdentityToken: "stolen"})
				wantCode(t, err, codes.PermissionDenied)
			}

			// Credentials from the config file.
			e2 := start(t, func(c *config.Config) {
				c.Image.Auths = map[string]config.Auth{reg.Host: {Username: "alice", Password: "s3cret"}}
			})
			if _, err := e2.pull(ref, nil); err != nil {
				t.Fatalf("config auth: %v", err)
			}
		})
	}
}

// writeHosts writes <dir>/<host>/hosts.toml.
func writeHosts(t *testing.T, dir, host, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, host, "hosts.toml"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestMirror serves registry.k8s.io and docker.io images from a local
// mirror, as a node with hosts.toml files would, and checks the first
// mirror's failure falls through to the next.
func TestMirror(t *testing.T) {
	mirror := imagetest.NewRegistry(t, imagetest.Options{})
	pause := imagetest.Image(runtime.GOARCH, "65535", imagetest.Layer(imagetest.Entry{Name: "pause", Body: "pause", Mode: 0o755}))
	mirror.Push(t, "pause:3.10", pause)
	busy, _ := testImage(runtime.GOARCH, "", "busybox")
	mirror.Push(t, "library/busybox:1.36", busy)
	// A mirror under a path prefix, with override_path.
	prefixed := imagetest.NewRegistry(t, imagetest.Options{})
	prefixed.Push(t, "mirror/registry.k8s.io/pause:3.10", pause)

	e := start(t, nil)
	dead := closedPort(t)
	writeHosts(t, e.cfg.Image.RegistryHostsDir, "registry.k8s.io", fmt.Sprintf(`
server = "https://registry.k8s.io"

[host."http://%s"]
  capabilities = ["pull", "resolve"]

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, dead, mirror.Host))
	writeHosts(t, e.cfg.Image.RegistryHostsDir, "docker.io", fmt.Sprintf(`
[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, mirror.Host))

	id := e.mustPull("registry.k8s.io/pause:3.10")
	st := e.status("registry.k8s.io/pause:3.10", false).Image
	if st == nil || st.Id != id || st.RepoTags[0] != "registry.k8s.io/pause:3.10" {
		t.Fatalf("pause: %v", st)
	}
	if !st.Pinned {
		t.Fatal("the pause image is not pinned")
	}
	if st.Uid == nil || st.Uid.Value != 65535 {
		t.Fatalf("pause uid: %v", st.Uid)
	}
	e.mustPull("busybox:1.36")
	if st := e.status("docker.io/library/busybox:1.36", false).Image; st == nil || st.Pinned {
		t.Fatalf("busybox: %v", st)
	}

	// Path-prefixed mirror.
	e2 := start(t, nil)
	writeHosts(t, e2.cfg.Image.RegistryHostsDir, "registry.k8s.io", fmt.Sprintf(`
[host."http://%s/v2/mirror/registry.k8s.io"]
  capabilities = ["pull", "resolve"]
  override_path = true
`, prefixed.Host))
	if id2 := e2.mustPull("registry.k8s.io/pause:3.10"); id2 != id {
		t.Fatalf("prefixed mirror: %s", id2)
	}

	// A mirror that can only pull serves digests, not tags.
	e3 := start(t, nil)
	writeHosts(t, e3.cfg.Image.RegistryHostsDir, "registry.k8s.io", fmt.Sprintf(`
server = "http://%s"
[host."http://%s"]
  capabilities = ["pull"]
`, dead, mirror.Host))
	_, err := e3.pull("registry.k8s.io/pause:3.10", nil)
	wantCode(t, err, codes.Unavailable)
	pd, _ := pause.Digest()
	e3.mustPull("registry.k8s.io/pause@" + pd.String())
}

// TestConcurrentPullsShareDownload: many pulls of one image at once fetch
// each blob once.
func TestConcurrentPullsShareDownload(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	img, layers := testImage(runtime.GOARCH, "", "shared")
	reg.Push(t, "app/shared:1", img)
	// Hold the big layer so every pull is in flight at the same time.
	release := reg.Stall(layerDigest(t, layers[2]))
	e := start(t, nil)
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	ids := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i], errs[i] = e.pull(reg.Host+"/app/shared:1", nil)
		}()
	}
	<-reg.Stalled()
	release()
	wg.Wait()
	for i := range n {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Fatalf("pull %d: %s %v", i, ids[i], errs[i])
		}
	}
	for i, l := range layers {
		if got := reg.BlobGets(layerDigest(t, l)); got != 1 {
			t.Fatalf("layer %d fetched %d times, want 1", i, got)
		}
	}
	if imgs := e.list(); len(imgs) != 1 {
		t.Fatalf("%d images", len(imgs))
	}
}

// TestSharedLayers: images sharing layers keep them until the last goes.
func TestSharedLayers(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	base := imagetest.Layer(imagetest.Entry{Name: "base", Body: "shared"})
	a := imagetest.Image(runtime.GOARCH, "", base, imagetest.Layer(imagetest.Entry{Name: "a", Body: "a"}))
	b := imagetest.Image(runtime.GOARCH, "", base, imagetest.Layer(imagetest.Entry{Name: "b", Body: "b"}))
	reg.Push(t, "s/a:1", a)
	reg.Push(t, "s/b:1", b)
	e := start(t, nil)
	e.mustPull(reg.Host + "/s/a:1")
	e.mustPull(reg.Host + "/s/b:1")
	blobs, layers, _ := e.storeFiles()
	if len(layers) != 3 {
		t.Fatalf("%d layer dirs, want 3 (one shared)", len(layers))
	}
	fs0, _ := e.images.ImageFsInfo(ctx(t), &runtimeapi.ImageFsInfoRequest{})
	e.remove(reg.Host + "/s/a:1")
	blobs2, layers2, _ := e.storeFiles()
	if len(layers2) != 2 || len(blobs2) != len(blobs)-3 {
		t.Fatalf("after removing a: layers %v blobs %d (was %d)", layers2, len(blobs2), len(blobs))
	}
	st := e.status(reg.Host+"/s/b:1", true)
	if st.Image == nil {
		t.Fatal("b gone")
	}
	fs1, _ := e.images.ImageFsInfo(ctx(t), &runtimeapi.ImageFsInfoRequest{})
	if fs1.ImageFilesystems[0].UsedBytes.Value >= fs0.ImageFilesystems[0].UsedBytes.Value ||
		fs1.ImageFilesystems[0].InodesUsed.Value >= fs0.ImageFilesystems[0].InodesUsed.Value {
		t.Fatalf("usage did not drop: %v -> %v", fs0, fs1)
	}
	e.remove(st.Image.Id)
	blobs3, layers3, partial := e.storeFiles()
	if len(blobs3)+len(layers3)+len(partial) != 0 {
		t.Fatalf("store not empty: %v %v %v", blobs3, layers3, partial)
	}
}

func TestImageFsInfo(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	img, _ := testImage(runtime.GOARCH, "", "fs")
	reg.Push(t, "fs/app:1", img)
	e := start(t, nil)
	before, err := e.images.ImageFsInfo(ctx(t), &runtimeapi.ImageFsInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	e.mustPull(reg.Host + "/fs/app:1")
	// A container's writable layer, as the runtime will keep them.
	wdir := filepath.Join(e.cfg.Root, "runtime", "containers", "c1", "upper")
	os.MkdirAll(wdir, 0o755)
	os.WriteFile(filepath.Join(wdir, "f"), make([]byte, 4096), 0o644)
	after, err := e.images.ImageFsInfo(ctx(t), &runtimeapi.ImageFsInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	im0, im1 := before.ImageFilesystems[0], after.ImageFilesystems[0]
	if im1.FsId.Mountpoint != e.imageRoot() || im1.UsedBytes.Value < im0.UsedBytes.Value+3<<20 || im1.InodesUsed.Value < im0.InodesUsed.Value+10 {
		t.Fatalf("image fs: before %v after %v", im0, im1)
	}
	c := after.ContainerFilesystems[0]
	if c.FsId.Mountpoint != filepath.Join(e.cfg.Root, "runtime", "containers") || c.UsedBytes.Value != 4096 || c.InodesUsed.Value != 3 {
		t.Fatalf("container fs: %v", c)
	}
}

// TestDiskFull pulls into a store on a small tmpfs: ResourceExhausted, and
// nothing left behind.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	root := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tripod-test", root).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", root).Run() })
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	img, _ := testImage(runtime.GOARCH, "", "full") // 3 MB of random data
	reg.Push(t, "full/app:1", img)
	e := start(t, func(c *config.Config) { c.Root = root })
	_, err := e.pull(reg.Host+"/full/app:1", nil)
	wantCode(t, err, codes.ResourceExhausted)
	if imgs := e.list(); len(imgs) != 0 {
		t.Fatalf("image left: %v", imgs)
	}
	blobs, layers, partial := e.storeFiles()
	if len(blobs)+len(layers)+len(partial) != 0 {
		t.Fatalf("left behind: %v %v %v", blobs, layers, partial)
	}
	small := imagetest.Image(runtime.GOARCH, "", imagetest.Layer(imagetest.Entry{Name: "x", Body: "small"}, imagetest.Entry{Name: "d/", Type: tar.TypeDir}))
	reg.Push(t, "full/small:1", small)
	e.mustPull(reg.Host + "/full/small:1")
}

// TestRemoveDuringPull: removing an image while another pull is using its
// layers keeps those layers (the pull holds them) and frees the rest.
func TestRemoveDuringPull(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	base := imagetest.Layer(imagetest.Entry{Name: "base", Body: "shared base"})
	onlyA := imagetest.Layer(imagetest.Entry{Name: "a", Body: "a"})
	bigB := imagetest.Layer(imagetest.Entry{Name: "b", Size: 2 << 20})
	reg.Push(t, "r/a:1", imagetest.Image(runtime.GOARCH, "", base, onlyA))
	reg.Push(t, "r/b:1", imagetest.Image(runtime.GOARCH, "", base, bigB))
	release := reg.Stall(layerDigest(t, bigB))
	defer release()
	e := start(t, nil)
	e.mustPull(reg.Host + "/r/a:1")

	errc := make(chan error, 1)
	go func() { _, err := e.pull(reg.Host+"/r/b:1", nil); errc <- err }()
	<-reg.Stalled()
	e.remove(reg.Host + "/r/a:1") // GC runs while b holds the base layer
	release()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	dirs := layerDirs(t, e, reg.Host+"/r/b:1")
	if b, err := os.ReadFile(filepath.Join(dirs[0], "base")); err != nil || string(b) != "shared base" {
		t.Fatalf("shared layer lost: %q %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dirs[1], "b")); err != nil || fi.Size() != 2<<20 {
		t.Fatalf("b layer: %v %v", fi, err)
	}
	blobs, layers, _ := e.storeFiles()
	if len(layers) != 2 || len(blobs) != 4 { // 2 layers + config + manifest
		t.Fatalf("store holds more than b: blobs %v layers %v", blobs, layers)
	}
}

// TestDroppedConnectionRetried: a layer download cut half way is started
// over and the pull succeeds; cut every time, it fails Unavailable.
func TestDroppedConnectionRetried(t *testing.T) {
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	img, layers := testImage(runtime.GOARCH, "", "flaky")
	reg.Push(t, "flaky/app:1", img)
	big := layerDigest(t, layers[2])
	reg.Drop(big, 2)
	e := start(t, nil)
	e.mustPull(reg.Host + "/flaky/app:1")
	if got := reg.BlobGets(big); got != 3 {
		t.Fatalf("big layer fetched %d times, want 3 (two cut, one whole)", got)
	}
	dirs := layerDirs(t, e, reg.Host+"/flaky/app:1")
	checkLayers(t, dirs, "flaky")
	if _, _, partial := e.storeFiles(); len(partial) != 0 {
		t.Fatalf("partial files left: %v", partial)
	}
	// Cut every time: the pull fails Unavailable, leaving nothing.
	img2, layers2 := testImage(runtime.GOARCH, "", "dead")
	reg.Push(t, "flaky/dead:1", img2)
	reg.Drop(layerDigest(t, layers2[2]), 100)
	_, err := e.pull(reg.Host+"/flaky/dead:1", nil)
	wantCode(t, err, codes.Unavailable)
	if st := e.status(reg.Host+"/flaky/dead:1", false); st.Image != nil {
		t.Fatal("image recorded")
	}
}
