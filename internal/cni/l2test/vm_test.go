package l2test_test

import (
	"bytes"
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

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

// guestTests are the tests the VM must run and pass; listing them guards
// against a guest that silently ran nothing.
var guestTests = []string{
	"TestGuestMacvlan", "TestGuestMacvlanModes", "TestGuestMacvlanMAC", "TestGuestIpvlan", "TestGuestIpvlanL3",
	"TestGuestVlan", "TestGuestLinkInContainer", "TestGuestResultVersions", "TestGuestFailedAddUndoes", "TestGuestGC",
}

// TestInVM boots the VM once and runs every TestGuest* test inside it.
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
	files := []vmtest.File{{Path: "/l2test.test", Src: testBin, Exec: true}, vmtest.NetnsExecShim()}
	plugins, err := pluginFiles(cnitest.BinDir(t), "/cni")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, plugins...)
	vm := &vmtest.VM{
		Kernel:  kernel,
		Modules: []string{"veth", "dummy", "macvlan", "ipvlan", "8021q"},
		Files:   files,
		Command: []string{"/l2test.test", "-test.v", "-test.count=1", "-test.timeout=8m", "-test.run=^TestGuest"},
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
	for _, name := range guestTests {
		if !strings.Contains(res.Console, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass in the VM (skipped or missing)", name)
		}
	}
}

// pluginFiles mirrors the plugin directory into the VM: the multi-call
// binary once, every plugin name a link to it.
func pluginFiles(binDir, dst string) ([]vmtest.File, error) {
	entries, err := os.ReadDir(binDir)
	if err != nil {
		return nil, err
	}
	files := []vmtest.File{}
	added := map[string]string{}
	for _, e := range entries {
		real, err := filepath.EvalSymlinks(filepath.Join(binDir, e.Name()))
		if err != nil {
			return nil, err
		}
		if _, ok := added[real]; !ok {
			name := filepath.Base(real)
			added[real] = name
			files = append(files, vmtest.File{Path: dst + "/" + name, Src: real, Exec: true})
		}
		if added[real] != e.Name() {
			files = append(files, vmtest.File{Path: dst + "/" + e.Name(), Link: added[real]})
		}
	}
	return files, nil
}

// lineLog logs the console line by line as it arrives.
type lineLog struct {
	t   *testing.T
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		line, err := l.buf.ReadString('\n')
		if err != nil {
			l.buf.WriteString(line)
			break
		}
		l.t.Log("vm: " + strings.TrimRight(line, "\r\n"))
	}
	return len(p), nil
}
