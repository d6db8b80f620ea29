package main_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// The critest specs this runtime passes: runtime info, pod and
// container lifecycle, networking (DNS, hostname, port mapping), logging,
// volumes, mount propagation, read-only mounts, OOM kills, sysctls,
// multiple containers and idempotence. Streaming, stats, metrics, security
// contexts and the rest belong to the next issue; "execSync with timeout"
// needs a pgrep the busybox-static base lacks.
const (
	critestFocus = `Runtime info|PodSandbox|Container|Networking|Idempotence|Multiple Containers`
	critestSkip  = `Image Volume|Security Context|SELinux|AppArmor|NRI|metrics|stats|[Ss]treaming|attach|port forward|exec$|execSync with timeout`
)

func critestPath(t *testing.T) string {
	if p, err := exec.LookPath("critest"); err == nil {
		return p
	}
	if p, err := filepath.Abs("../../.tools/bin/critest"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("critest not found: `make go-tools` (run by make test) builds sigs.k8s.io/cri-tools v1.37.0's critest into .tools/bin")
	return ""
}

// critestImages pushes look-alikes of the upstream images the selected
// specs use (see critest-images notes in docs/runtime.md).
func critestImages(t *testing.T, reg *imagetest.Registry) {
	base := busyboxImage(t)
	base = append(base[:0:0], base...)
	for i, e := range base {
		if e.Name == "etc/passwd" {
			base[i].Body = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nbin:x:2:2:bin:/bin:/bin/false\n" +
				"sys:x:3:3:sys:/dev:/bin/false\nmail:x:8:8:mail:/var/mail:/bin/false\nwww-data:x:33:33:www-data:/var/www:/bin/false\n" +
				"operator:x:37:37:Operator:/var:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
		}
		if e.Name == "etc/group" {
			base[i].Body = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nmail:x:8:\nwww-data:x:33:\noperator:x:37:\nnogroup:x:65534:\n"
		}
	}
	layer := imagetest.Layer(base...)
	withConfig := func(img v1.Image, f func(*v1.Config)) v1.Image {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		f(&cf.Config)
		out, err := mutate.ConfigFile(img, cf)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	busybox := withConfig(imagetest.Image(runtime.GOARCH, "", layer), func(c *v1.Config) { c.Cmd = []string{"sh"} })
	reg.Push(t, "e2e-test-images/busybox:1.29-2", busybox)
	web := imagetest.Image(runtime.GOARCH, "", layer, imagetest.Layer(
		imagetest.Entry{Name: "www/", Type: '5'}, imagetest.Entry{Name: "www/index.html", Body: "<html>tripod</html>\n"}))
	web = withConfig(web, func(c *v1.Config) {
		// Specs wait for nginx's "master process" in PID 1's command
		// line; the trailing "; true" keeps sh from exec'ing httpd.
		c.Entrypoint, c.Cmd = []string{"sh", "-c", "httpd -f -p 80 -h /www; true", "nginx: master process"}, nil
		c.StopSignal = "SIGQUIT"
		c.ExposedPorts = map[string]struct{}{"80/tcp": {}}
	})
	reg.Push(t, "e2e-test-images/nginx:1.14-2", web)
	httpd := imagetest.Image(runtime.GOARCH, "", layer, imagetest.Layer(
		imagetest.Entry{Name: "usr/", Type: '5'}, imagetest.Entry{Name: "usr/local/", Type: '5'}, imagetest.Entry{Name: "usr/local/apache2/", Type: '5'},
		imagetest.Entry{Name: "usr/local/apache2/htdocs/", Type: '5'}, imagetest.Entry{Name: "usr/local/apache2/htdocs/index.html", Body: "<html>It works!</html>\n"}))
	httpd = withConfig(httpd, func(c *v1.Config) {
		// Apache names itself on stderr at start; specs look for it.
		c.Entrypoint, c.Cmd = []string{"sh", "-c", "echo 'httpd: started' >&2; exec httpd -f -p 80 -h /usr/local/apache2/htdocs"}, nil
		c.WorkingDir = "/usr/local/apache2"
		c.ExposedPorts = map[string]struct{}{"80/tcp": {}}
	})
	reg.Push(t, "e2e-test-images/httpd:2.4.39-4", httpd)
}

// TestCritest runs the pinned critest's lifecycle, networking, DNS, port
// mapping, logging and idempotence specs against tripodd, with the
// upstream registries mirrored to a registry on 127.0.0.1.
func TestCritest(t *testing.T) {
	critest := critestPath(t)
	runtimePrereqs(t)
	e := newPodEnvWith(t, cnitest.BinDir(t), func(e *podEnv, reg *imagetest.Registry) {
		critestImages(t, reg)
		for _, host := range []string{"registry.k8s.io", "k8s.gcr.io", "gcr.io", "docker.io", "public.ecr.aws"} {
			os.MkdirAll(filepath.Join(e.n.hosts, host), 0o755)
			os.WriteFile(filepath.Join(e.n.hosts, host, "hosts.toml"), fmt.Appendf(nil, "server = \"http://%s\"\n", reg.Host), 0o644)
		}
	})
	ep := "unix://" + e.n.sock
	cmd := exec.Command(critest, "-runtime-endpoint", ep, "-image-endpoint", ep,
		"-ginkgo.focus", critestFocus, "-ginkgo.skip", critestSkip, "-ginkgo.no-color")
	out, err := cmd.CombinedOutput()
	summary := regexp.MustCompile(`(?m)^(Ran \d+ of \d+ Specs.*|(SUCCESS|FAIL)! .*)$`).FindAll(out, -1)
	for _, l := range summary {
		t.Logf("critest: %s", l)
	}
	if err != nil {
		t.Fatalf("critest: %v\n%s", err, out)
	}
}
