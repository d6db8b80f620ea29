package vmtest

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestResolveModulesOrdersDependenciesFirst(t *testing.T) {
	deps := map[string][]string{
		"kernel/net/8021q/8021q.ko.xz":           {"kernel/net/802/garp.ko.xz", "kernel/net/802/stp.ko.xz", "kernel/net/llc/llc.ko.xz"},
		"kernel/net/802/garp.ko.xz":              {"kernel/net/802/stp.ko.xz", "kernel/net/llc/llc.ko.xz"},
		"kernel/net/802/stp.ko.xz":               {"kernel/net/llc/llc.ko.xz"},
		"kernel/net/llc/llc.ko.xz":               nil,
		"kernel/drivers/net/ipvlan/ipvlan.ko.xz": nil,
	}
	got, err := resolveModules(deps, []string{"8021q", "ipvlan", "llc"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, f := range got {
		pos[moduleName(f)] = i
	}
	if len(got) != 5 {
		t.Fatalf("got %v, want 5 modules once each", got)
	}
	for _, before := range [][2]string{{"llc", "stp"}, {"stp", "garp"}, {"garp", "8021q"}, {"llc", "8021q"}} {
		if pos[before[0]] > pos[before[1]] {
			t.Errorf("%s loaded after %s: %v", before[0], before[1], got)
		}
	}
	if _, err := resolveModules(deps, []string{"nosuchmod"}); err == nil || !strings.Contains(err.Error(), "nosuchmod") {
		t.Errorf("unknown module: err = %v, want one naming it", err)
	}
}

func TestCpioLayout(t *testing.T) {
	var b bytes.Buffer
	if err := writeCpio(&b, []entry{{name: "a/b/c", mode: 0o644, data: []byte("hello")}}); err != nil {
		t.Fatal(err)
	}
	s := b.String()
	if b.Len()%4 != 0 {
		t.Errorf("archive length %d is not 4-byte aligned", b.Len())
	}
	// The parents come first so the kernel can create c.
	ia, ib, ic := strings.Index(s, "a\x00"), strings.Index(s, "a/b\x00"), strings.Index(s, "a/b/c\x00")
	if ia < 0 || ib < ia || ic < ib || !strings.Contains(s, "hello") || !strings.Contains(s, "TRAILER!!!") {
		t.Errorf("unexpected archive layout: %q", s)
	}
}

// TestBoot boots the VM once: modules load in order, files arrive, the
// command's exit status comes back.
func TestBoot(t *testing.T) {
	Host(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	vm := &VM{
		Modules:     []string{"dummy"},
		Files:       []File{{Path: "/etc/vmtest-probe", Data: []byte("probe-42")}, NetnsExecShim()},
		Command:     []string{"sh", "-c", `cat /etc/vmtest-probe; echo; echo "guest=$` + GuestEnv + ` x=$X"; ip link add vmt0 type dummy && echo dummy-ok; mkdir /run/netns/ns1 2>/dev/null; exit 7`},
		Env:         map[string]string{"X": "it's"},
		BootTimeout: time.Minute,
	}
	res, err := vm.Run(ctx, t.TempDir())
	if err != nil {
		if res != nil {
			t.Log(res.Tail(40))
		}
		t.Fatal(err)
	}
	for _, want := range []string{"probe-42", "guest=1 x=it's", "dummy-ok"} {
		if !strings.Contains(res.Console, want) {
			t.Errorf("console lacks %q:\n%s", want, res.Tail(40))
		}
	}
	if res.Exit != 7 {
		t.Errorf("exit status %d, want 7:\n%s", res.Exit, res.Tail(40))
	}
}

func TestKernelImageNewest(t *testing.T) {
	if !versionLess(filepath.Join("/boot", "vmlinuz-6.1.0-9-amd64"), "/boot/vmlinuz-6.1.0-56-amd64") {
		t.Error("6.1.0-9 should sort before 6.1.0-56")
	}
}

// TestDynamicBinary: the real ldd on a real dynamically linked binary
// (the go tool chain's own is static, so /bin/sh's): the loader and libc
// come along, each once, at their host paths.
func TestDynamicBinary(t *testing.T) {
	files, err := DynamicBinary(context.Background(), "/bin/sh", "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var loader, libc bool
	for _, f := range files {
		if seen[f.Path] {
			t.Errorf("%s twice", f.Path)
		}
		seen[f.Path] = true
		loader = loader || strings.HasPrefix(filepath.Base(f.Path), "ld-linux")
		libc = libc || strings.HasPrefix(filepath.Base(f.Path), "libc.so")
	}
	if !loader || !libc || files[0].Path != "/bin/sh" {
		t.Fatalf("files for /bin/sh: %v", files)
	}
	if _, err := parseLdd([]byte("\tlibfoo.so.1 => not found\n")); err == nil {
		t.Fatal("a missing library was not an error")
	}
}
