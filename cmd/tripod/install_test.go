package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// makeInstall runs make TARGET from the repository with DESTDIR=dest and
// the binaries this test built (make's own build step is skipped: other
// packages' tests may be running bin/).
func makeInstall(t *testing.T, dest, target string) string {
	t.Helper()
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatal("runc is not on PATH (make test puts .tools/bin first)")
	}
	crictl, err := exec.LookPath("crictl")
	if err != nil {
		t.Fatal("crictl is not on PATH (make test puts .tools/bin first)")
	}
	out, err := exec.Command("make", "-s", "-C", "../..", "-o", "build", target, "DESTDIR="+dest, "BIN="+binDir,
		"INSTALL_RUNC="+runc, "INSTALL_CRICTL="+crictl).CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", target, err, out)
	}
	return string(out)
}

// tree lists every path under dir, relative.
func tree(dir string) []string {
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if rel, _ := filepath.Rel(dir, p); err == nil && rel != "." {
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// TestMakeInstall: make install DESTDIR=… puts every program, runc, the
// plugins, the config and the systemd units in place; the config and the
// units are valid; a second install changes nothing; make uninstall
// leaves the tree as it found it, except a config edited since and a
// plugin that was someone else's.
func TestMakeInstall(t *testing.T) {
	dest := t.TempDir()
	makeInstall(t, dest, "install")
	for _, f := range []string{"usr/local/bin/tripodd", "usr/local/bin/tripod", "usr/local/bin/tripod-csi", "usr/local/bin/tripod-monitor", "usr/local/bin/tripod-exec",
		"usr/local/bin/tripod-cni", "usr/local/bin/crictl", "usr/local/lib/tripod/runc", "opt/cni/bin/tripod-cni"} {
		if fi, err := os.Stat(filepath.Join(dest, f)); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	for _, p := range []string{"bridge", "host-local", "portmap", "firewall", "bandwidth", "loopback"} {
		if target, err := os.Readlink(filepath.Join(dest, "opt/cni/bin", p)); err != nil || target != "tripod-cni" {
			t.Errorf("plugin %s: %q %v", p, target, err)
		}
	}
	conf := filepath.Join(dest, "etc/tripod/tripod.toml")
	// Both daemons accept the config, tripodd with runc at the installed path.
	out, err := exec.Command(filepath.Join(dest, "usr/local/bin/tripodd"), "--config", conf, "config", "check").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "path = '/usr/local/lib/tripod/runc'") {
		t.Errorf("tripodd config check: %v\n%s", err, out)
	}
	out, err = exec.Command(filepath.Join(dest, "usr/local/bin/tripod-csi"), "--config", conf, "--print-config").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `registration_dir = "/var/lib/kubelet/plugins_registry"`) {
		t.Errorf("tripod-csi --print-config: %v\n%s", err, out)
	}
	for _, u := range []string{"tripodd", "tripod-csi"} {
		b, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system", u+".service"))
		if err != nil || !strings.Contains(string(b), "ExecStart=/usr/local/bin/"+u+" --config /etc/tripod/tripod.toml\n") {
			t.Errorf("%s.service: %v\n%s", u, err, b)
		}
	}
	t.Run("systemd-analyze verify", func(t *testing.T) { verifyUnits(t, dest) })

	manifest, err := os.ReadFile(filepath.Join(dest, "usr/local/lib/tripod/manifest"))
	if err != nil {
		t.Fatal(err)
	}
	before := tree(dest)
	makeInstall(t, dest, "install")
	again, _ := os.ReadFile(filepath.Join(dest, "usr/local/lib/tripod/manifest"))
	// The same entries (a reinstall lists the directories first).
	lines := func(b []byte) []string { l := strings.Split(string(b), "\n"); slices.Sort(l); return l }
	if !slices.Equal(lines(again), lines(manifest)) {
		t.Errorf("second install changed the manifest:\n%s\n---\n%s", manifest, again)
	}
	if after := tree(dest); !slices.Equal(after, before) {
		t.Errorf("second install changed the tree:\n%q\n---\n%q", before, after)
	}
	makeInstall(t, dest, "uninstall")
	if left := tree(dest); len(left) > 0 {
		t.Fatalf("uninstall left %q", left)
	}

	// Someone else's bridge plugin is neither replaced nor removed; an
	// edited config stays.
	os.MkdirAll(filepath.Join(dest, "opt/cni/bin"), 0o755)
	os.WriteFile(filepath.Join(dest, "opt/cni/bin/bridge"), []byte("#!/bin/sh\n"), 0o755)
	if out := makeInstall(t, dest, "install"); !strings.Contains(out, "kept "+filepath.Join(dest, "opt/cni/bin/bridge")) {
		t.Errorf("install over a foreign plugin:\n%s", out)
	}
	f, _ := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("# edited\n")
	f.Close()
	out2 := makeInstall(t, dest, "uninstall")
	want := []string{"etc", "etc/tripod", "etc/tripod/tripod.toml", "opt", "opt/cni", "opt/cni/bin", "opt/cni/bin/bridge"}
	if left := tree(dest); !slices.Equal(left, want) {
		t.Fatalf("uninstall left %q, want %q\n%s", left, want, out2)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "opt/cni/bin/bridge")); string(b) != "#!/bin/sh\n" {
		t.Error("the foreign bridge plugin was changed")
	}
}

// verifyUnits runs systemd-analyze verify on the installed units, with
// their paths pointed into the staging tree (verify checks that ExecStart
// exists); any warning fails.
func verifyUnits(t *testing.T, dest string) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("skipped: systemd-analyze is not installed (Debian's systemd package)")
	}
	dir := t.TempDir()
	var units []string
	for _, u := range []string{"tripodd", "tripod-csi"} {
		b, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system", u+".service"))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.ReplaceAll(string(b), "/usr/local/bin/", filepath.Join(dest, "usr/local/bin")+"/")
		s = strings.ReplaceAll(s, " /etc/tripod/", " "+filepath.Join(dest, "etc/tripod")+"/")
		p := filepath.Join(dir, u+".service")
		os.WriteFile(p, []byte(s), 0o644)
		units = append(units, p)
	}
	out, err := exec.Command(sa, append([]string{"verify"}, units...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
