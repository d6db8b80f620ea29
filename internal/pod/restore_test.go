package pod

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/oci"
)

// tarEntry is one member of a test archive.
type tarEntry struct {
	name, body, link string
	typ              byte
}

func makeTar(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Mode: 0o644, Linkname: e.link, Size: int64(len(e.body))}
		if typ == tar.TypeDir {
			h.Mode, h.Size = 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

const (
	goodConfig = `{"id":"old","name":"counter","rootfsImageRef":"sha256:0123","rootfsImageName":"test/busybox:1"}`
	goodSpec   = `{"ociVersion":"1.2.0","process":{"args":["sh","-c","loop"],"env":["A=1"],"cwd":"/w","user":{"uid":7,"gid":8}},
	  "mounts":[{"destination":"/data","type":"bind","source":"/srv/data","options":["rbind","ro"]},{"destination":"/etc/hosts","type":"bind","source":"/old/hosts"},{"destination":"/proc","type":"proc","source":"proc"}]}`
)

// goodArchive is a well-formed archive: metadata, CRIU images and a
// writable layer with a file, a directory, a link and a deletion.
func goodArchive(t *testing.T, diff []byte) []tarEntry {
	return []tarEntry{{name: ckptConfig, body: goodConfig}, {name: ckptSpec, body: goodSpec},
		{name: ckptDeleted, body: `["/etc/gone"]`}, {name: ckptRootfs, body: string(diff)},
		{name: "checkpoint/", typ: tar.TypeDir}, {name: "checkpoint/inventory.img", body: "inv"}, {name: "checkpoint/pages-1.img", body: "pages"}}
}

func writeArchive(t *testing.T, entries ...tarEntry) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ckpt.tar")
	if err := os.WriteFile(p, makeTar(t, entries...), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOpenCheckpointRejects: every way an archive can be malformed or
// reach outside the directories it is unpacked in is refused, before
// anything is made, as InvalidArgument naming the fault.
func TestOpenCheckpointRejects(t *testing.T) {
	diff := makeTar(t, tarEntry{name: "tmp/", typ: tar.TypeDir}, tarEntry{name: "tmp/c", body: "42\n"})
	replace := func(name, body string) []tarEntry {
		es := goodArchive(t, diff)
		for i := range es {
			if es[i].name == name {
				es[i].body = body
			}
		}
		return es
	}
	drop := func(name string) []tarEntry {
		var es []tarEntry
		for _, e := range goodArchive(t, diff) {
			if e.name != name {
				es = append(es, e)
			}
		}
		return es
	}
	cases := []struct {
		name    string
		entries []tarEntry
		raw     []byte
		why     string
	}{
		{name: "dot-dot", entries: append(goodArchive(t, diff), tarEntry{name: "checkpoint/../../evil"}), why: "leaves the archive"},
		{name: "absolute", entries: append(goodArchive(t, diff), tarEntry{name: "/etc/evil"}), why: "leaves the archive"},
		{name: "parent", entries: append(goodArchive(t, diff), tarEntry{name: "../evil"}), why: "leaves the archive"},
		{name: "symlink", entries: append(goodArchive(t, diff), tarEntry{name: "checkpoint/link", link: "/etc/shadow", typ: tar.TypeSymlink}), why: "not a regular file"},
		{name: "device", entries: append(goodArchive(t, diff), tarEntry{name: "checkpoint/dev", typ: tar.TypeChar}), why: "not a regular file"},
		{name: "twice", entries: append(goodArchive(t, diff), tarEntry{name: ckptSpec, body: goodSpec}), why: "twice"},
		{name: "no-config", entries: drop(ckptConfig), why: "no config.dump"},
		{name: "no-spec", entries: drop(ckptSpec), why: "no spec.dump"},
		{name: "no-inventory", entries: drop("checkpoint/inventory.img"), why: "no checkpoint/inventory.img"},
		{name: "bad-json", entries: replace(ckptConfig, "{"), why: "config.dump"},
		{name: "no-image", entries: replace(ckptConfig, `{"id":"x"}`), why: "names no image"},
		{name: "no-process", entries: replace(ckptSpec, `{"ociVersion":"1.2.0"}`), why: "has no process"},
		{name: "deleted-escapes", entries: replace(ckptDeleted, `["/../../etc/passwd"]`), why: "not a path in the container"},
		{name: "deleted-relative", entries: replace(ckptDeleted, `["etc/x"]`), why: "not a path in the container"},
		{name: "diff-escapes", entries: replace(ckptRootfs, string(makeTar(t, tarEntry{name: "../../etc/passwd", body: "x"}))), why: "leaves the container's root"},
		{name: "diff-absolute", entries: replace(ckptRootfs, string(makeTar(t, tarEntry{name: "/etc/passwd", body: "x"}))), why: "leaves the container's root"},
		{name: "diff-hardlink", entries: replace(ckptRootfs, string(makeTar(t, tarEntry{name: "etc/x", link: "../../../etc/shadow", typ: tar.TypeLink}))), why: "leaves the container's root"},
		{name: "diff-device", entries: replace(ckptRootfs, string(makeTar(t, tarEntry{name: "dev/sda", typ: tar.TypeBlock}))), why: "is not restored"},
		{name: "diff-garbage", entries: replace(ckptRootfs, strings.Repeat("x", 1024)), why: "rootfs-diff.tar"},
		{name: "truncated", raw: makeTar(t, goodArchive(t, diff)...)[:1500], why: "not a readable tar"},
		{name: "not-tar", raw: []byte("hello"), why: "not a readable tar"},
	}
	for _, c := range cases {
		p := filepath.Join(t.TempDir(), "ckpt.tar")
		raw := c.raw
		if raw == nil {
			raw = makeTar(t, c.entries...)
		}
		os.WriteFile(p, raw, 0o600)
		_, err := openCheckpoint(p)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: %v, want InvalidArgument with %q", c.name, err, c.why)
		}
	}
	term := replace(ckptSpec, `{"process":{"terminal":true,"args":["sh"]}}`)
	if _, err := openCheckpoint(writeArchive(t, term...)); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("a container with a terminal: %v, want FailedPrecondition", err)
	}
}

// TestCheckpointUnpack: a good archive's config goes into the restored
// container's (the request's name, labels and mounts win; the process is
// the checkpointed one), its CRIU images into the bundle and its changes
// onto a root file system; a symbolic link in that root that points out
// of it is not followed.
func TestCheckpointUnpack(t *testing.T) {
	diff := makeTar(t, tarEntry{name: "tmp/", typ: tar.TypeDir}, tarEntry{name: "tmp/c", body: "42\n"},
		tarEntry{name: "new/deep/file", body: "deep"}, tarEntry{name: "tmp/link", link: "c", typ: tar.TypeSymlink},
		tarEntry{name: "tmp/hard", link: "tmp/c", typ: tar.TypeLink}, tarEntry{name: "tmp/fifo", typ: tar.TypeFifo})
	a, err := openCheckpoint(writeArchive(t, goodArchive(t, diff)...))
	if err != nil {
		t.Fatal(err)
	}
	if a.imageRef() != "sha256:0123" || a.config.Name != "counter" {
		t.Fatalf("config.dump read as %+v", a.config)
	}
	cfg := ContainerConfig{Meta: Meta{Name: "restored"}, Image: "/ckpt.tar", Labels: map[string]string{"l": "v"}}
	a.apply(&cfg)
	if cfg.Image != "test/busybox:1" || cfg.UserImage != "/ckpt.tar" || strings.Join(cfg.Command, " ") != "sh -c loop" || cfg.WorkingDir != "/w" ||
		*cfg.RunAsUser != 7 || *cfg.RunAsGroup != 8 || cfg.Meta.Name != "restored" || cfg.Labels["l"] != "v" {
		t.Fatalf("config: %+v", cfg)
	}
	if len(cfg.Mounts) != 1 || cfg.Mounts[0].ContainerPath != "/data" || cfg.Mounts[0].HostPath != "/srv/data" || !cfg.Mounts[0].Readonly {
		t.Fatalf("mounts (the checkpointed bind mounts but tripod's own files): %+v", cfg.Mounts)
	}
	given := ContainerConfig{Mounts: []oci.Mount{{ContainerPath: "/x", HostPath: "/y"}}}
	a.apply(&given)
	if len(given.Mounts) != 1 || given.Mounts[0].ContainerPath != "/x" {
		t.Fatalf("the request's mounts did not win: %+v", given.Mounts)
	}

	root, bundle := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc", "gone"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(root, "etc", "kept"), []byte("x"), 0o644)
	if err := a.unpack(context.Background(), filepath.Join(bundle, restoreDir), root); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{"tmp/c": "42\n", "new/deep/file": "deep", "tmp/link": "42\n", "tmp/hard": "42\n", "etc/kept": "x"} {
		if b, err := os.ReadFile(filepath.Join(root, p)); err != nil || string(b) != want {
			t.Errorf("%s: %q %v, want %q", p, b, err, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "tmp", "fifo")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("tmp/fifo: %v %v", fi, err)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc", "gone")); !os.IsNotExist(err) {
		t.Errorf("deleted.files: etc/gone is still there: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(bundle, restoreDir, "checkpoint", "pages-1.img")); err != nil || string(b) != "pages" {
		t.Errorf("CRIU images: %q %v", b, err)
	}

	// The root holds a link to a host directory; the diff writes through
	// it: refused, the host directory untouched.
	outside := t.TempDir()
	evilRoot := t.TempDir()
	os.Symlink(outside, filepath.Join(evilRoot, "evil"))
	ev, err := openCheckpoint(writeArchive(t, goodArchive(t, makeTar(t, tarEntry{name: "evil/planted", body: "x"}))...))
	if err != nil {
		t.Fatal(err)
	}
	if err := ev.unpack(context.Background(), filepath.Join(t.TempDir(), restoreDir), evilRoot); err == nil {
		t.Fatal("a diff written through a link out of the root succeeded")
	}
	if left, _ := os.ReadDir(outside); len(left) != 0 {
		t.Fatalf("the diff wrote outside the root: %v", left)
	}
	del, err := openCheckpoint(writeArchive(t, replaceEntry(goodArchive(t, diff), ckptDeleted, `["/evil/victim"]`)...))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(outside, "victim"), []byte("x"), 0o644)
	del.unpack(context.Background(), filepath.Join(t.TempDir(), restoreDir), evilRoot)
	if _, err := os.Stat(filepath.Join(outside, "victim")); err != nil {
		t.Fatalf("deleted.files removed a file outside the root: %v", err)
	}
}

func replaceEntry(es []tarEntry, name, body string) []tarEntry {
	for i := range es {
		if es[i].name == name {
			es[i].body = body
		}
	}
	return es
}
