package bridge_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/vmtest"
)

// vmTests run inside the VM and must pass there, not skip.
var vmTests = []string{"TestVlan"}

// TestInVM boots a QEMU VM with a distribution kernel, which has bridge
// VLAN filtering and 802.1Q (this host's kernel may have neither), and
// runs the tests of vmTests inside it.
func TestInVM(t *testing.T) {
	cnitest.Root(t)
	vmtest.Host(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kernel, err := vmtest.KernelImage()
	if err != nil {
		t.Fatalf("the VLAN tests need a kernel image to boot: %v", err)
	}
	dir := t.TempDir()
	testBin, err := vmtest.GoTestBinary(ctx, dir, "./internal/cni/bridge")
	if err != nil {
		t.Fatal(err)
	}
	files := []vmtest.File{{Path: "/bridge.test", Src: testBin, Exec: true}, vmtest.NetnsExecShim()}
	// The plugin directory: the multi-call binary, every plugin a link.
	bin := cnitest.BinDir(t)
	entries, err := os.ReadDir(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		real, err := filepath.EvalSymlinks(filepath.Join(bin, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(real) == e.Name() {
			files = append(files, vmtest.File{Path: "/cni/" + e.Name(), Src: real, Exec: true})
		} else {
			files = append(files, vmtest.File{Path: "/cni/" + e.Name(), Link: filepath.Base(real)})
		}
	}
	vm := &vmtest.VM{
		Kernel: kernel,
		// crc32c first: libcrc32c, which nf_tables needs, names it only
		// as a soft dependency.
		Modules: []string{"veth", "bridge", "8021q", "crc32c_generic", "nf_tables"},
		Files:   files,
		Command: []string{"/bridge.test", "-test.v", "-test.count=1", "-test.timeout=8m", "-test.run=^(" + strings.Join(vmTests, "|") + ")$"},
		Env:     map[string]string{cnitest.BinEnv: "/cni"},
		Console: &lineLog{t: t},
	}
	res, err := vm.Run(ctx, dir)
	if err != nil {
		tail := ""
		if res != nil {
			tail = res.Tail(60)
		}
		t.Fatalf("%v\nconsole tail:\n%s", err, tail)
	}
	if res.Exit != 0 {
		t.Fatalf("in-VM tests failed (exit status %d): %v\nconsole tail:\n%s", res.Exit, res.Failures(), res.Tail(80))
	}
	for _, name := range vmTests {
		if !strings.Contains(res.Console, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass in the VM (skipped or missing)", name)
		}
	}
}

// lineLog passes the console to the test log a whole line at a time.
type lineLog struct {
	t       *testing.T
	mu      sync.Mutex
	pending string
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := strings.Split(l.pending+string(p), "\n")
	l.pending = lines[len(lines)-1]
	for _, line := range lines[:len(lines)-1] {
		l.t.Log("vm: " + strings.TrimRight(line, "\r"))
	}
	return len(p), nil
}
