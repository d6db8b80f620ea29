package l2test_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/vmtest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

// guestTests are the tests the VM must run and pass; listing them guards
// against a guest that silently ran nothing.
var guestTests = []string{
	"TestGuestMacvlan", "TestGuestMacvlanModes", "TestGuestMacvlanMAC", "TestGuestIpvlan", "TestGuestIpvlanL3",
	"TestGuestVlan", "TestGuestLinkInContainer", "TestGuestResultVersions", "TestGuestFailedAddUndoes", "TestGuestGC",
}

// bridgeGuestTests are the bridge package's tests that need this VM's
// kernel (bridge VLAN filtering and 802.1Q); they skip on the host.
var bridgeGuestTests = []string{"TestVlan"}

// TestInVM boots the VM once (QEMU is slow under software emulation) and
// runs every TestGuest* test of this package and the bridge package's
// VLAN tests inside it.
func TestInVM(t *testing.T) {
	cnitest.Root(t)
	vmtest.Host(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kernel, err := vmtest.KernelImage()
	if err != nil {
		t.Fatalf("the macvlan/ipvlan/vlan tests need a kernel image to boot: %v", err)
	}
	dir := t.TempDir()
	testBin, err := vmtest.GoTestBinary(ctx, dir, "./internal/cni/l2test")
	if err != nil {
		t.Fatal(err)
	}
	bridgeBin, err := vmtest.GoTestBinary(ctx, dir, "./internal/cni/bridge")
	if err != nil {
		t.Fatal(err)
	}
	files := []vmtest.File{{Path: "/l2test.test", Src: testBin, Exec: true}, {Path: "/bridge.test", Src: bridgeBin, Exec: true}, vmtest.NetnsExecShim()}
	plugins, err := vmtest.DirFiles(cnitest.BinDir(t), "/cni")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, plugins...)
	vm := &vmtest.VM{
		Kernel: kernel,
		// crc32c first: libcrc32c, which nf_tables needs, names it only as
		// a soft dependency.
		Modules: []string{"veth", "dummy", "macvlan", "ipvlan", "8021q", "bridge", "crc32c_generic", "nf_tables"},
		Files:   files,
		Command: []string{"/bin/sh", "-c", "/l2test.test -test.v -test.count=1 -test.timeout=8m -test.run=^TestGuest; a=$?; " +
			"/bridge.test -test.v -test.count=1 -test.timeout=4m '-test.run=^(" + strings.Join(bridgeGuestTests, "|") + ")$'; b=$?; " +
			"exit $((a | b))"},
		Env: map[string]string{cnitest.BinEnv: "/cni"},
	}
	vm.RunTests(ctx, t, dir, append(guestTests, bridgeGuestTests...)...)
}
