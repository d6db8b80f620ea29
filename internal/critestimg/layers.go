package critestimg

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// The base image's users and groups: busybox's usual set, with www-data
// (33) which the image-user specs name.
const (
	passwd = "root:x:0:0:root:/root:/bin/sh\n" +
		"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n" +
		"bin:x:2:2:bin:/bin:/bin/false\n" +
		"sys:x:3:3:sys:/dev:/bin/false\n" +
		"mail:x:8:8:mail:/var/mail:/bin/false\n" +
		"www-data:x:33:33:www-data:/var/www:/bin/false\n" +
		"operator:x:37:37:Operator:/var:/bin/false\n" +
		"nobody:x:65534:65534:nobody:/home:/bin/false\n"
	group = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\nlp:x:7:\n" +
		"mail:x:8:\nkmem:x:9:\nwheel:x:10:root\ncdrom:x:11:\ndialout:x:18:\nfloppy:x:19:\n" +
		"video:x:28:\naudio:x:29:\ntape:x:32:\nwww-data:x:33:\noperator:x:37:\nutmp:x:43:\n" +
		"plugdev:x:46:\nstaff:x:50:\nlock:x:54:\nnetdev:x:82:\nusers:x:100:\nnogroup:x:65534:\n"
)

// builder assembles layers; seen holds the paths the base layer already
// has, so upper layers only add what is missing.
type builder struct {
	tuple, arch string
	seen        map[string]bool
}

// libEntries are the entries for the shared libraries and interpreters
// of l that no earlier layer has, with the directories they need.
func (b *builder) libEntries(l *sharedLibs) ([]imagetest.Entry, error) {
	files := map[string]string{} // path in image → host file
	for so, src := range l.libs {
		files["lib/"+b.tuple+"/"+so] = src
	}
	for dst, src := range l.interp {
		files[strings.TrimPrefix(dst, "/")] = src
	}
	var names []string
	for n := range files {
		if !b.seen[n] {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var out []imagetest.Entry
	for _, n := range names {
		body, err := os.ReadFile(files[n])
		if err != nil {
			return nil, fmt.Errorf("shared library: %w", err)
		}
		out = append(out, imagetest.Entry{Name: n, Body: string(body), Mode: 0o755})
	}
	return out, nil
}

// withDirs prefixes entries with the directory entries they need, each
// once, parents first.
func withDirs(entries []imagetest.Entry) []imagetest.Entry {
	have := map[string]bool{}
	var ds []imagetest.Entry
	for _, e := range entries {
		if e.Type == '5' {
			have[strings.TrimSuffix(e.Name, "/")] = true
		}
	}
	for _, e := range entries {
		for _, d := range dirs(path.Dir(strings.TrimSuffix(e.Name, "/"))) {
			if n := strings.TrimSuffix(d.Name, "/"); !have[n] {
				have[n] = true
				ds = append(ds, d)
			}
		}
	}
	sort.SliceStable(ds, func(i, j int) bool { return strings.Count(ds[i].Name, "/") < strings.Count(ds[j].Name, "/") })
	return append(ds, entries...)
}

// baseLayer is the busybox base: Debian's dynamic busybox with its applets
// as hard links, procps' pgrep and util-linux's ipcs (busybox's own lack
// options specs use), their shared libraries and the dynamic loader, and
// /etc/passwd, /etc/group, a 1777 /tmp.
func (b *builder) baseLayer(ctx context.Context, bbRoot string) (v1.Layer, error) {
	bb := filepath.Join(bbRoot, "bin", "busybox")
	list, err := exec.CommandContext(ctx, bb, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", bb, err)
	}
	hostBins := map[string]string{"usr/bin/pgrep": "/usr/bin/pgrep", "usr/bin/ipcs": "/usr/bin/ipcs"}
	for dst, src := range hostBins {
		if _, err := os.Stat(src); err != nil {
			return nil, fmt.Errorf("the critest base image takes %s from this host (Debian package %s): %w",
				src, map[string]string{"usr/bin/pgrep": "procps", "usr/bin/ipcs": "util-linux"}[dst], err)
		}
	}
	libs, err := resolveLibs([]string{bb, hostBins["usr/bin/pgrep"], hostBins["usr/bin/ipcs"]}, nil, b.tuple)
	if err != nil {
		return nil, err
	}
	es := []imagetest.Entry{
		{Name: "tmp/", Type: '5', Mode: 0o1777}, {Name: "var/", Type: '5'}, {Name: "var/tmp/", Type: '5', Mode: 0o1777},
		// As on Debian: specs read nginx's pid from /var/run/nginx.pid.
		{Name: "var/run", Type: '2', Linkname: "/run"},
		{Name: "root/", Type: '5', Mode: 0o700}, {Name: "home/", Type: '5'}, {Name: "run/", Type: '5'},
		{Name: "proc/", Type: '5'}, {Name: "sys/", Type: '5'}, {Name: "dev/", Type: '5'},
		{Name: "usr/local/bin/", Type: '5'}, {Name: "usr/local/sbin/", Type: '5'},
		{Name: "etc/passwd", Body: passwd}, {Name: "etc/group", Body: group},
	}
	bbBody, err := os.ReadFile(bb)
	if err != nil {
		return nil, fmt.Errorf("busybox: %w", err)
	}
	es = append(es, imagetest.Entry{Name: "bin/busybox", Body: string(bbBody), Mode: 0o755})
	replaced := map[string]bool{}
	for dst := range hostBins {
		replaced[path.Base(dst)] = true
	}
	for _, a := range strings.Fields(string(list)) {
		a = strings.TrimPrefix(a, "/")
		if a == "bin/busybox" || replaced[path.Base(a)] {
			continue
		}
		es = append(es, imagetest.Entry{Name: a, Type: '1', Linkname: "bin/busybox"})
	}
	for _, dst := range []string{"usr/bin/pgrep", "usr/bin/ipcs"} {
		body, err := os.ReadFile(hostBins[dst])
		if err != nil {
			return nil, fmt.Errorf("base image: %w", err)
		}
		es = append(es, imagetest.Entry{Name: dst, Body: string(body), Mode: 0o755})
	}
	lib, err := b.libEntries(libs)
	if err != nil {
		return nil, err
	}
	es = withDirs(append(es, lib...))
	for _, e := range es {
		b.seen[strings.TrimSuffix(e.Name, "/")] = true
	}
	return imagetest.Layer(es...), nil
}

// nginxLayer is Debian's nginx binary with the libraries the base lacks
// and the directories it writes to; nginxConf is its configuration.
func (b *builder) nginxLayer(root string) (v1.Layer, error) {
	bin := filepath.Join(root, "usr", "sbin", "nginx")
	body, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	libs, err := resolveLibs([]string{bin}, []string{root}, b.tuple)
	if err != nil {
		return nil, err
	}
	lib, err := b.libEntries(libs)
	if err != nil {
		return nil, err
	}
	es := append([]imagetest.Entry{
		{Name: "usr/sbin/nginx", Body: string(body), Mode: 0o755},
		{Name: "var/log/nginx/", Type: '5'}, {Name: "var/lib/nginx/", Type: '5'},
		{Name: "usr/share/nginx/html/index.html", Body: "<!DOCTYPE html>\n<html><body><h1>Welcome to nginx!</h1></body></html>\n"},
	}, lib...)
	return imagetest.Layer(withDirs(es)...), nil
}

func nginxConf(port int) v1.Layer {
	conf := fmt.Sprintf(`user www-data www-data;
worker_processes 1;
pid /var/run/nginx.pid;
error_log stderr notice;
events {
    worker_connections 256;
}
http {
    access_log /dev/stdout;
    default_type text/html;
    server {
        listen %d;
        root /usr/share/nginx/html;
        index index.html;
    }
}
`, port)
	return imagetest.Layer(imagetest.Entry{Name: "etc/", Type: '5'}, imagetest.Entry{Name: "etc/nginx/", Type: '5'},
		imagetest.Entry{Name: "etc/nginx/nginx.conf", Body: conf})
}
