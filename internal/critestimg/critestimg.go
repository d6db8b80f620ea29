// Package critestimg builds look-alikes of every image critest v1.37.0
// pulls, so critest and `critest -benchmark` run offline: Push serves them
// from a registry on 127.0.0.1 under their upstream repository paths, and
// WriteHosts makes the runtime under test reach that registry through
// hosts.toml mirrors of the upstream hosts.
//
// The base layer is Debian's dynamically linked busybox (busybox-static's
// shell runs applets in-process, which defeats the MaskedPaths spec) with
// its applets as hard links, this host's procps pgrep and util-linux ipcs
// (specs use options busybox's lack), the shared libraries all of them
// need and the dynamic loader. nginx is Debian's binary with its
// libraries; nonewprivs and pause are small static Go programs (cmd/).
// Debian packages are fetched with `apt-get download`, never installed
// (busybox conflicts with the busybox-static the host keeps), and cached
// in the repository's .tools/critest.
package critestimg

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// Hosts are the upstream registries critest's image names use.
func Hosts() []string {
	return []string{"registry.k8s.io", "k8s.gcr.io", "gcr.io", "public.ecr.aws", "docker.io"}
}

// WriteHosts writes <dir>/<host>/hosts.toml for every upstream host,
// mirroring it to the plain-HTTP registry at registryHost ("127.0.0.1:port").
func WriteHosts(dir, registryHost string) error {
	for _, h := range Hosts() {
		if err := os.MkdirAll(filepath.Join(dir, h), 0o755); err != nil {
			return fmt.Errorf("hosts.toml for %s: %w", h, err)
		}
		body := fmt.Appendf(nil, "server = %q\n", "http://"+registryHost)
		if err := os.WriteFile(filepath.Join(dir, h, "hosts.toml"), body, 0o644); err != nil {
			return fmt.Errorf("hosts.toml for %s: %w", h, err)
		}
	}
	return nil
}

// ModuleRoot is the directory of tripod's go.mod, found from the working
// directory up (tests run in their package's directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/tripod-dev/tripod\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no tripod go.mod above the working directory")
		}
		dir = parent
	}
}

// Set is the built images, by upstream reference.
type Set struct {
	refs map[string]v1.Image
}

// Refs are the upstream references in the set, sorted.
func (s *Set) Refs() []string {
	var out []string
	for r := range s.refs {
		out = append(out, r)
	}
	sort.Strings(out)
	return out
}

// Image is the image for upstream reference ref, or nil.
func (s *Set) Image(ref string) v1.Image { return s.refs[ref] }

// Push stores every image in reg under its upstream repository path
// (registry.k8s.io/pause:3.9 → pause:3.9), as a hosts.toml mirror asks.
func (s *Set) Push(reg *imagetest.Registry) error {
	for _, ref := range s.Refs() {
		if _, err := reg.PushImage(MirrorPath(ref), s.refs[ref]); err != nil {
			return err
		}
	}
	return nil
}

// MirrorPath is ref without its registry host.
func MirrorPath(ref string) string {
	_, p, _ := strings.Cut(ref, "/")
	return p
}

// Options say where Build finds the source tree and keeps its cache.
type Options struct {
	// Root is tripod's module root (ModuleRoot when empty): the Go
	// programs of the pause and nonewprivs images are built from it.
	Root string
	// Cache holds downloaded packages (Root/.tools/critest when empty).
	Cache string
}

const (
	gcr     = "gcr.io/k8s-staging-cri-tools/"
	e2e     = "registry.k8s.io/e2e-test-images/"
	envPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Build makes every image. The first run downloads Debian's busybox and
// nginx packages (about 1 MB); later runs take them from the cache.
func Build(ctx context.Context, opt Options) (*Set, error) {
	if opt.Root == "" {
		r, err := ModuleRoot()
		if err != nil {
			return nil, err
		}
		opt.Root = r
	}
	if opt.Cache == "" {
		opt.Cache = filepath.Join(opt.Root, ".tools", "critest")
	}
	tuple, err := multiarch(runtime.GOARCH)
	if err != nil {
		return nil, err
	}
	b := &builder{tuple: tuple, arch: runtime.GOARCH, seen: map[string]bool{}}
	bbRoot, err := debRoot(ctx, filepath.Join(opt.Cache, "debs"), "busybox")
	if err != nil {
		return nil, err
	}
	nginxRoot, err := debRoot(ctx, filepath.Join(opt.Cache, "debs"), "nginx")
	if err != nil {
		return nil, err
	}
	base, err := b.baseLayer(ctx, bbRoot)
	if err != nil {
		return nil, err
	}
	nginx, err := b.nginxLayer(nginxRoot)
	if err != nil {
		return nil, err
	}
	bins := filepath.Join(opt.Cache, "bin")
	pauseBin, err := goBuild(ctx, opt.Root, bins, "pause")
	if err != nil {
		return nil, err
	}
	nnpBin, err := goBuild(ctx, opt.Root, bins, "nnp")
	if err != nil {
		return nil, err
	}

	s := &Set{refs: map[string]v1.Image{}}
	add := func(ref string, img v1.Image, cfg func(*v1.Config)) error {
		cf, err := img.ConfigFile()
		if err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
		cf = cf.DeepCopy()
		cf.Config = v1.Config{Env: []string{envPath}, Cmd: []string{"sh"}}
		if cfg != nil {
			cfg(&cf.Config)
		}
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
		s.refs[ref] = img
		return nil
	}
	// marked is the base plus an empty file naming the image, so that
	// images meant to differ have distinct IDs.
	marked := func(name string) v1.Image {
		return imagetest.Image(b.arch, "", base, imagetest.Layer(imagetest.Entry{Name: "image-" + name}))
	}
	busybox := imagetest.Image(b.arch, "", base)
	web := func(port int) v1.Image { return imagetest.Image(b.arch, "", base, nginx, nginxConf(port)) }
	webCfg := func(c *v1.Config) {
		c.Entrypoint, c.Cmd = []string{"nginx", "-g", "daemon off;"}, nil
		c.StopSignal = "SIGQUIT"
	}
	type step struct {
		ref string
		img v1.Image
		cfg func(*v1.Config)
	}
	steps := []step{
		{e2e + "busybox:1.29-2", busybox, nil},
		{e2e + "nginx:1.14-2", web(80), func(c *v1.Config) {
			webCfg(c)
			c.ExposedPorts = map[string]struct{}{"80/tcp": {}}
		}},
		{gcr + "hostnet-nginx-" + b.arch + ":latest", web(12003), func(c *v1.Config) {
			webCfg(c)
			c.ExposedPorts = map[string]struct{}{"12003/tcp": {}}
		}},
		{e2e + "httpd:2.4.39-4", imagetest.Image(b.arch, "", base, imagetest.Layer(
			dirs("usr/local/apache2/htdocs/")...,
		), imagetest.Layer(imagetest.Entry{Name: "usr/local/apache2/htdocs/index.html", Body: "<html><body><h1>It works!</h1></body></html>\n"})),
			func(c *v1.Config) {
				// Apache names itself on stderr when it starts; the
				// multi-container spec looks for "httpd" in the log.
				c.Cmd = []string{"sh", "-c", "echo 'httpd: serving /usr/local/apache2/htdocs on :80' >&2; exec httpd -f -p 80 -h /usr/local/apache2/htdocs"}
				c.WorkingDir = "/usr/local/apache2"
				c.ExposedPorts = map[string]struct{}{"80/tcp": {}}
			}},
		{e2e + "nonewprivs:1.3", imagetest.Image(b.arch, "", base, imagetest.Layer(append(dirs("usr/local/bin/"),
			imagetest.Entry{Name: "usr/local/bin/nnp", Body: nnpBin, Mode: 0o4755})...)),
			func(c *v1.Config) { c.Entrypoint, c.Cmd = []string{"/usr/local/bin/nnp"}, nil }},
		{gcr + "test-image-1:latest", marked("1"), nil},
		{gcr + "test-image-2:latest", marked("2"), nil},
		{gcr + "test-image-3:latest", marked("3"), nil},
		{gcr + "test-image-latest:latest", marked("latest"), nil},
		{gcr + "test-image-digest:latest", marked("digest"), nil},
		{gcr + "test-image-tags:1", marked("tags"), nil},
		{gcr + "test-image-tags:2", marked("tags"), nil},
		{gcr + "test-image-tags:3", marked("tags"), nil},
		{gcr + "test-image-tag:test", marked("tag-test"), nil},
		{gcr + "test-image-tag:all", marked("tag-all"), nil},
		{gcr + "test-image-user-uid:latest", busybox, func(c *v1.Config) { c.User = "1002" }},
		{gcr + "test-image-user-username:latest", busybox, func(c *v1.Config) { c.User = "www-data" }},
		{gcr + "test-image-user-uid-group:latest", busybox, func(c *v1.Config) { c.User = "1003:1004" }},
		{gcr + "test-image-user-username-group:latest", busybox, func(c *v1.Config) { c.User = "www-data:1004" }},
		{gcr + "test-image-predefined-group:latest", imagetest.Image(b.arch, "", base, imagetest.Layer(
			imagetest.Entry{Name: "etc/passwd", Body: passwd + "default-user:x:1000:1000:Default user:/home/default-user:/bin/sh\n"},
			imagetest.Entry{Name: "etc/group", Body: group + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"},
			imagetest.Entry{Name: "home/default-user/", Type: '5', Uid: 1000, Gid: 1000},
		)), func(c *v1.Config) { c.User = "1000" }},
	}
	pause := imagetest.Image(b.arch, "", imagetest.Layer(imagetest.Entry{Name: "pause", Body: pauseBin, Mode: 0o755}))
	for _, h := range []string{"registry.k8s.io", "k8s.gcr.io"} {
		steps = append(steps, step{h + "/pause:3.9", pause, func(c *v1.Config) {
			c.Env, c.Cmd, c.Entrypoint, c.User = nil, nil, []string{"/pause"}, "65535:65535"
		}})
	}
	// `critest -benchmark` lists these.
	for _, tag := range []string{"1.35.0-glibc", "1-uclibc", "1", "1-glibc", "1-musl"} {
		steps = append(steps, step{"public.ecr.aws/docker/library/busybox:" + tag, busybox, nil})
	}
	for _, st := range steps {
		if err := add(st.ref, st.img, st.cfg); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// dirs are directory entries for p and each of its parents.
func dirs(p string) []imagetest.Entry {
	var out []imagetest.Entry
	p = strings.TrimSuffix(p, "/")
	for p != "." && p != "" && p != "/" {
		out = append([]imagetest.Entry{{Name: p + "/", Type: '5'}}, out...)
		p = path.Dir(p)
	}
	return out
}

// goBuild builds ./internal/critestimg/cmd/<name> static and returns the
// binary's contents.
func goBuild(ctx context.Context, root, outDir, name string) (string, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", fmt.Errorf("build %s: %w", name, err)
	}
	out := filepath.Join(outDir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./internal/critestimg/cmd/"+name)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v: %s", name, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return "", fmt.Errorf("build %s: %w", name, err)
	}
	return string(b), nil
}
