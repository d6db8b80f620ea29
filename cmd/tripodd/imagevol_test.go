package main_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// imageVolumeMounts counts the image volume mounts under this node's state.
func imageVolumeMounts(t *testing.T, e *podEnv, id string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, filepath.Join(e.n.state, "runtime", "containers", id)) && strings.Contains(line, "/image-volumes/") {
			n++
		}
	}
	return n
}

func layerDirs(t *testing.T, e *podEnv, ref string) []string {
	t.Helper()
	r, err := e.img.ImageStatus(testCtx(t), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Verbose: true})
	if err != nil || r.Image == nil {
		t.Fatalf("ImageStatus %s: %v %v", ref, r, err)
	}
	var info struct{ LayerDirs []string }
	if err := json.Unmarshal([]byte(r.Info["info"]), &info); err != nil || len(info.LayerDirs) == 0 {
		t.Fatalf("image info %q: %v", r.Info["info"], err)
	}
	return info.LayerDirs
}

// TestImageVolumes: images mounted read-only as volumes (KEP-4639), from a
// two-layer image (an overlay of lower dirs only) and a one-layer image (a
// read-only bind), whole and by sub path (an absolute symlink in the
// image resolves inside the image, not on the host); their content is
// visible, executable and read-only in the container; status reports the
// image ID; bad requests fail with their codes and leave no mount; the
// image can be removed meanwhile (its layers stay until the container is
// gone); the volumes outlive a kill -9 of tripodd and are unmounted, and
// their layers freed, when the container is removed; a kill -9 inside
// CreateContainer after the mounts leaves none once rolled back.
func TestImageVolumes(t *testing.T) {
	runtimePrereqs(t)
	var volRef, oneRef string
	e := newPodEnvWith(t, cnitest.BinDir(t), func(e *podEnv, reg *imagetest.Registry) {
		bb, err := os.ReadFile("/bin/busybox")
		if err != nil {
			t.Fatal(err)
		}
		reg.Push(t, "test/vol:1", imagetest.Image("amd64", "",
			imagetest.Layer(imagetest.Entry{Name: "data/", Type: '5'}, imagetest.Entry{Name: "data/hello.txt", Body: "hello from layer one\n"},
				imagetest.Entry{Name: "etc/", Type: '5'}, imagetest.Entry{Name: "etc/image-marker", Body: "the image's etc\n"}),
			imagetest.Layer(imagetest.Entry{Name: "data/second.txt", Body: "second layer\n"},
				imagetest.Entry{Name: "tool/", Type: '5'}, imagetest.Entry{Name: "tool/busybox", Body: string(bb), Mode: 0o755},
				imagetest.Entry{Name: "escape", Type: '2', Linkname: "/etc"})))
		reg.Push(t, "test/one:1", imagetest.Image("amd64", "", imagetest.Layer(imagetest.Entry{Name: "only.txt", Body: "one layer\n"})))
		volRef, oneRef = reg.Host+"/test/vol:1", reg.Host+"/test/one:1"
	})
	ctx := testCtx(t)
	pod := e.runPod("iv")
	create := func(name string, mounts ...*runtimeapi.Mount) (string, error) {
		resp, err := e.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, SandboxConfig: e.podConfig("iv"),
			Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: name}, Image: &runtimeapi.ImageSpec{Image: e.image},
				Command: []string{"sleep", "1000"}, Mounts: mounts}})
		return resp.GetContainerId(), err
	}
	imgMount := func(path, ref, sub string) *runtimeapi.Mount {
		return &runtimeapi.Mount{ContainerPath: path, Readonly: true, Image: &runtimeapi.ImageSpec{Image: ref}, ImageSubPath: sub}
	}

	// Not pulled yet: NotFound.
	if _, err := create("early", imgMount("/mnt/vol", volRef, "")); status.Code(err) != codes.NotFound {
		t.Fatalf("image volume of an image not pulled: %v, want NotFound", err)
	}
	ids := map[string]string{}
	for _, ref := range []string{volRef, oneRef} {
		r, err := e.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		if err != nil {
			t.Fatal(err)
		}
		ids[ref] = r.ImageRef
	}
	volLayers := layerDirs(t, e, volRef)
	for _, bad := range []struct {
		m    *runtimeapi.Mount
		code codes.Code
	}{
		{imgMount("/mnt/vol", volRef, "no-such-dir"), codes.InvalidArgument},
		{imgMount("/mnt/vol", volRef, "../../etc"), codes.InvalidArgument},
		{&runtimeapi.Mount{ContainerPath: "/mnt/vol", Image: &runtimeapi.ImageSpec{Image: volRef}}, codes.InvalidArgument}, // not read-only
	} {
		if _, err := create("bad", imgMount("/mnt/ok", oneRef, ""), bad.m); status.Code(err) != bad.code {
			t.Fatalf("mount %v: %v, want %v", bad.m, err, bad.code)
		}
	}
	if n := imageVolumeMounts(t, e, ""); n != 0 {
		t.Fatalf("failed creations left %d image volume mounts", n)
	}

	c, err := create("c", imgMount("/mnt/vol", ids[volRef], ""), imgMount("/mnt/sub", volRef, "data"),
		imgMount("/mnt/esc", volRef, "escape"), imgMount("/mnt/one", oneRef, ""))
	if err != nil {
		t.Fatal(err)
	}
	e.start(c)
	exec := func(cmd ...string) (string, error) {
		r, err := e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c, Cmd: cmd, Timeout: 30})
		if err != nil {
			t.Fatal(err)
		}
		if r.ExitCode != 0 {
			return string(r.Stdout), status.Errorf(codes.Unknown, "%v: exit %d: %s", cmd, r.ExitCode, r.Stderr)
		}
		return string(r.Stdout), nil
	}
	check := func() {
		t.Helper()
		for cmd, want := range map[string]string{
			"cat /mnt/vol/data/hello.txt /mnt/vol/data/second.txt": "hello from layer one\nsecond layer\n",
			"cat /mnt/sub/hello.txt":                               "hello from layer one\n",
			"cat /mnt/esc/image-marker":                            "the image's etc\n",
			"cat /mnt/one/only.txt":                                "one layer\n",
			"/mnt/vol/tool/busybox echo runs from the volume":      "runs from the volume\n",
		} {
			if out, err := exec(strings.Fields(cmd)...); err != nil || out != want {
				t.Fatalf("%s: %q %v, want %q", cmd, out, err, want)
			}
		}
		for _, f := range []string{"/mnt/vol/new", "/mnt/vol/data/hello.txt", "/mnt/sub/new", "/mnt/one/new"} {
			if _, err := exec("sh", "-c", "echo x > "+f); err == nil || !strings.Contains(err.Error(), "Read-only file system") {
				t.Fatalf("write to %s: %v, want a read-only file system", f, err)
			}
		}
	}
	check()
	if n := imageVolumeMounts(t, e, c); n != 4 {
		t.Fatalf("%d image volume mounts for the container, want 4", n)
	}
	var got []string
	for _, m := range e.status(c).Mounts {
		if m.Image != nil {
			got = append(got, m.ContainerPath+"="+m.Image.ImageRef+":"+m.ImageSubPath)
		}
	}
	want := []string{"/mnt/vol=" + ids[volRef] + ":", "/mnt/sub=" + ids[volRef] + ":data", "/mnt/esc=" + ids[volRef] + ":escape", "/mnt/one=" + ids[oneRef] + ":"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("status mounts %v, want %v", got, want)
	}

	// Removing the image while it is mounted: the image goes, its layers
	// stay for the container (deferred, as for a container's own image).
	if _, err := e.img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: volRef}}); err != nil {
		t.Fatal(err)
	}
	if r, _ := e.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: volRef}}); r.GetImage() != nil {
		t.Fatal("removed image still listed")
	}
	check()

	// kill -9 and restart: the start-up GC keeps the layers, the mounts
	// are still there.
	e.d.kill()
	e.boot()
	check()
	for _, l := range volLayers {
		if _, err := os.Stat(l); err != nil {
			t.Fatalf("layer of a mounted image volume freed: %v", err)
		}
	}

	if _, err := e.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: c}); err != nil {
		t.Fatal(err)
	}
	if n := imageVolumeMounts(t, e, c); n != 0 {
		t.Fatalf("%d image volume mounts left after RemoveContainer", n)
	}
	// kill -9 in CreateContainer right after the volumes are mounted: the
	// next start rolls the container back, volumes included.
	e.d.kill()
	e.d = startDaemonEnv(t, e.n, []string{"TRIPOD_CRASH_AT=ctr-rootfs"}, e.extra...)
	if _, err := create("crash", imgMount("/mnt/one", oneRef, "")); err == nil {
		t.Fatal("CreateContainer succeeded through a crash")
	}
	<-e.d.done
	e.d.done <- nil
	if !strings.Contains(e.d.log.String(), "crash point reached") {
		t.Fatalf("the crash point was not reached:\n%s", e.d.log.String())
	}
	e.boot()
	if n := imageVolumeMounts(t, e, ""); n != 0 {
		t.Fatalf("%d image volume mounts left after rolling back a crashed CreateContainer", n)
	}
	// The next GC (any image removal) frees the volume image's layers.
	if _, err := e.img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: oneRef}}); err != nil {
		t.Fatal(err)
	}
	for _, l := range volLayers {
		if _, err := os.Stat(l); !os.IsNotExist(err) {
			t.Fatalf("layer %s of a removed image kept after its last user went: %v", l, err)
		}
	}
}
