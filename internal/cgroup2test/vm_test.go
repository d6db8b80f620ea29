package cgroup2test_test

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/vmtest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

// guestTests are the tests the VM must run and pass; listing them guards
// against a guest that silently ran nothing.
var guestTests = []string{"TestGuestCgroupV2", "TestGuestMonitorDeath", "TestGuestCheckpointRestore"}

// TestInVM boots the VM once and runs every TestGuest* test inside it.
func TestInVM(t *testing.T) {
	vmtest.Host(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	kernel, err := vmtest.KernelImage()
	if err != nil {
		t.Fatalf("the cgroup v2 tests need a kernel image to boot: %v", err)
	}
	runc, err := staticRunc()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	testBin, err := vmtest.GoTestBinary(ctx, dir, "./internal/cgroup2test")
	if err != nil {
		t.Fatal(err)
	}
	files := []vmtest.File{{Path: "/cgroup2test.test", Src: testBin, Exec: true}, {Path: "/usr/local/bin/runc", Src: runc, Exec: true}}
	for _, pkg := range []string{"./cmd/tripodd", "./cmd/tripod-monitor"} {
		bin, err := vmtest.GoBinary(ctx, dir, pkg)
		if err != nil {
			t.Fatal(err)
		}
		// tripodd starts tripod-monitor from beside its own binary.
		files = append(files, vmtest.File{Path: "/tripod/" + filepath.Base(bin), Src: bin, Exec: true})
	}
	// and tripod-monitor its exec stage from beside its own.
	stage, err := vmtest.GoCgoBinary(ctx, dir, "./cmd/tripod-exec")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, vmtest.File{Path: "/tripod/tripod-exec", Src: stage, Exec: true})
	// CRIU for checkpoint and restore: Debian's, which runs on the VM's
	// 6.1 kernel (not on newer hosts': see docs/runtime.md).
	criu, err := exec.LookPath("criu")
	if err != nil {
		t.Fatalf("the checkpoint tests need CRIU (apt-get install criu; `make deps` does): %v", err)
	}
	criuFiles, err := vmtest.DynamicBinary(ctx, criu, "/usr/sbin/criu")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, criuFiles...)
	// CRIU saves and restores a container's own tmpfs mounts (its /dev)
	// with GNU tar's options (busybox's tar has not them; gzip may stay
	// busybox's).
	tarFiles, err := vmtest.DynamicBinary(ctx, "/usr/bin/tar", "/usr/bin/tar")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, tarFiles...)
	// CRIU 3.17 locks a container's network namespace during dump and
	// restore with iptables-restore (its nftables method is selectable
	// only through a config file, which crashes its RPC mode): Debian's
	// iptables-nft, its extensions, and nft_compat/xt_mark below.
	ipt, err := filepath.EvalSymlinks("/usr/sbin/iptables-restore")
	if err != nil {
		t.Fatalf("the checkpoint tests need iptables-restore for CRIU's network lock (apt-get install iptables; `make deps` does): %v", err)
	}
	iptFiles, err := vmtest.DynamicBinary(ctx, ipt, "/usr/sbin/"+filepath.Base(ipt))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, iptFiles...)
	for _, name := range []string{"iptables-restore", "ip6tables-restore"} {
		files = append(files, vmtest.File{Path: "/usr/sbin/" + name, Link: filepath.Base(ipt)})
	}
	exts, err := filepath.Glob("/usr/lib/x86_64-linux-gnu/xtables/*.so")
	if err != nil || len(exts) == 0 {
		t.Fatalf("iptables extensions: %v %v", exts, err)
	}
	for _, x := range exts {
		files = append(files, vmtest.File{Path: x, Src: x})
	}
	plugins, err := vmtest.DirFiles(cnitest.BinDir(t), "/cni")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, plugins...)
	vm := &vmtest.VM{
		Kernel: kernel,
		// crc32c first: libcrc32c, which nf_tables needs, names it only as
		// a soft dependency.
		// The socket diag modules and tun: CRIU finds a task's sockets
		// through sock_diag, and `criu check` wants tun.
		Modules: []string{"overlay", "veth", "bridge", "crc32c_generic", "nf_tables",
			"unix_diag", "inet_diag", "tcp_diag", "udp_diag", "netlink_diag", "af_packet_diag", "tun", "nft_compat", "xt_mark", "nf_conntrack_netlink"},
		Files: files,
		// The unified hierarchy alone, every controller the kernel has
		// enabled for the root's children, as a cgroup v2 distribution
		// boots.
		// devpts too, for CRIU (a /dev/ptmx to open).
		Command: []string{"/bin/sh", "-c", `mount -t cgroup2 cgroup2 /sys/fs/cgroup || exit 90
mkdir -p /dev/pts && mount -t devpts -o ptmxmode=0666 devpts /dev/pts || exit 92
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || exit 91; done
echo "cgroup v2 controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
/cgroup2test.test -test.v -test.count=1 -test.timeout=6m -test.run=^TestGuest`},
		Env:       map[string]string{cnitest.BinEnv: "/cni", "TRIPODD": "/tripod/tripodd"},
		MemoryMB:  1024,
		TmpfsRoot: true,
	}
	vm.RunTests(ctx, t, dir, guestTests...)
}

// staticRunc finds the first runc on PATH that is statically linked: the
// VM has no shared libraries.
func staticRunc() (string, error) {
	var seen []string
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(d, "runc")
		if _, err := os.Stat(p); err != nil {
			continue
		}
		seen = append(seen, p)
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		dynamic := false
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				dynamic = true
			}
		}
		f.Close()
		if !dynamic {
			return p, nil
		}
	}
	return "", fmt.Errorf("no statically linked runc on PATH (found %v): `make go-tools` builds one into .tools/bin and `make test` puts that first on PATH", seen)
}
