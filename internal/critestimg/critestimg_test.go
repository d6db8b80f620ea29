package critestimg

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// unpack writes img's flattened filesystem into dir.
func unpack(t *testing.T, img v1.Image, dir string) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, os.FileMode(h.Mode).Perm()|modeBits(h.Mode))
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			f.Close()
			os.Chmod(p, os.FileMode(h.Mode).Perm()|modeBits(h.Mode))
		case tar.TypeLink:
			os.Remove(p)
			if err := os.Link(filepath.Join(dir, filepath.Clean("/"+h.Linkname)), p); err != nil {
				t.Fatal(err)
			}
		case tar.TypeSymlink:
			os.Remove(p)
			if err := os.Symlink(h.Linkname, p); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func modeBits(m int64) os.FileMode {
	var out os.FileMode
	if m&0o4000 != 0 {
		out |= os.ModeSetuid
	}
	if m&0o1000 != 0 {
		out |= os.ModeSticky
	}
	return out
}

// chrootRun runs argv chrooted into root.
func chrootRun(t *testing.T, root string, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	cmd.Dir = "/"
	cmd.Env = []string{envPath}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v in the image: %v\n%s", argv, err, out)
	}
	return string(out)
}

// TestImagesRun builds the set and runs what critest's specs run inside
// the images (chrooted into their unpacked filesystems): busybox applets,
// procps' pgrep and util-linux's ipcs with their libraries, nginx's
// configuration check, and the setuid nonewprivs binary.
func TestImagesRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: chroot into the unpacked images needs root")
	}
	set, err := Build(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	unpack(t, set.Image(e2e+"busybox:1.29-2"), base)
	if st, err := os.Stat(filepath.Join(base, "tmp")); err != nil || st.Mode()&os.ModeSticky == 0 || st.Mode().Perm() != 0o777 {
		t.Errorf("/tmp: %v %v, want 1777", st.Mode(), err)
	}
	sh, err1 := os.Stat(filepath.Join(base, "bin/sh"))
	bb, err2 := os.Stat(filepath.Join(base, "bin/busybox"))
	if err1 != nil || err2 != nil || !os.SameFile(sh, bb) {
		t.Errorf("/bin/sh is not a hard link of /bin/busybox: %v %v", err1, err2)
	}
	if got := chrootRun(t, base, "/bin/sh", "-c", "echo hello; id -u www-data; id -g nobody"); got != "hello\n33\n65534\n" {
		t.Errorf("sh, id: %q", got)
	}
	if got := chrootRun(t, base, "/bin/sh", "-c", "pgrep --version"); !strings.Contains(got, "procps") {
		t.Errorf("pgrep is not procps': %q", got)
	}
	chrootRun(t, base, "/bin/sh", "-c", "ipcs -m")

	web := t.TempDir()
	unpack(t, set.Image(e2e+"nginx:1.14-2"), web)
	if got := chrootRun(t, web, "/usr/sbin/nginx", "-t"); !strings.Contains(got, "test is successful") {
		t.Errorf("nginx -t: %q", got)
	}
	conf, _ := os.ReadFile(filepath.Join(web, "etc/nginx/nginx.conf"))
	if !strings.Contains(string(conf), "listen 80;") || !strings.Contains(string(conf), "pid /var/run/nginx.pid;") {
		t.Errorf("nginx.conf: %s", conf)
	}
	// The HostPID spec reads nginx's pid from /var/run/nginx.pid.
	if l, err := os.Readlink(filepath.Join(web, "var/run")); err != nil || l != "/run" {
		t.Errorf("/var/run: %q %v, want a link to /run", l, err)
	}

	nnp := t.TempDir()
	unpack(t, set.Image(e2e+"nonewprivs:1.3"), nnp)
	if st, err := os.Stat(filepath.Join(nnp, "usr/local/bin/nnp")); err != nil || st.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("nnp is not setuid: %v", err)
	}
	cmd := exec.Command("/usr/local/bin/nnp")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: nnp, Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "Effective uid: 0\n" {
		t.Errorf("nnp as uid 1000: %q %v", out, err)
	}

	pause := t.TempDir()
	unpack(t, set.Image("registry.k8s.io/pause:3.9"), pause)
	cf, err := set.Image("k8s.gcr.io/pause:3.9").ConfigFile()
	if err != nil || cf.Config.User != "65535:65535" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/pause" {
		t.Errorf("pause config: %+v %v", cf, err)
	}
	p := exec.Command("/pause")
	p.SysProcAttr = &syscall.SysProcAttr{Chroot: pause}
	p.Dir = "/"
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	// SIGTERM ends it: with exit 0 once its handler is in place, or by
	// the signal itself if it comes during the Go runtime's start.
	p.Process.Signal(syscall.SIGTERM)
	if err := p.Wait(); err != nil && p.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("pause after SIGTERM: %v", err)
	}
}

// TestImageIdentities checks the identities the Image Manager specs rely
// on: tags meant to be one image are, and images meant to differ do.
func TestImageIdentities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: building the images needs root (apt-get download)")
	}
	set, err := Build(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	id := func(ref string) v1.Hash {
		img := set.Image(ref)
		if img == nil {
			t.Fatalf("no image %s", ref)
		}
		d, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if id(gcr+"test-image-tags:1") != id(gcr+"test-image-tags:2") || id(gcr+"test-image-tags:1") != id(gcr+"test-image-tags:3") {
		t.Error("test-image-tags:1, 2, 3 are not one image")
	}
	distinct := []string{gcr + "test-image-1:latest", gcr + "test-image-2:latest", gcr + "test-image-3:latest",
		gcr + "test-image-tag:test", gcr + "test-image-tag:all", gcr + "test-image-latest:latest", gcr + "test-image-digest:latest"}
	seen := map[v1.Hash]string{}
	for _, r := range distinct {
		if o, ok := seen[id(r)]; ok {
			t.Errorf("%s and %s are the same image", r, o)
		}
		seen[id(r)] = r
	}
	if id("registry.k8s.io/pause:3.9") != id("k8s.gcr.io/pause:3.9") {
		t.Error("pause:3.9 differs between its two registries")
	}
	reg := imagetest.NewRegistry(t, imagetest.Options{})
	if err := set.Push(reg); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := WriteHosts(dir, reg.Host); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "gcr.io", "hosts.toml"))
	if err != nil || string(b) != "server = \"http://"+reg.Host+"\"\n" {
		t.Errorf("hosts.toml: %q %v", b, err)
	}
}
