package kubelet_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

func TestMain(m *testing.M) {
	// The pods' CNI attachments are in the host's namespace's tables: the
	// ones this package's tests made go again afterwards.
	dropTables, err := cnitest.TablesSince()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := cnitest.Main(m)
	if err := dropTables(); err != nil {
		fmt.Fprintln(os.Stderr, "removing test-created nftables tables:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// tools are the binaries the tests run.
type tools struct {
	// tripod's, from bin/ (make build) or TRIPOD_BIN; tripod-csi from
	// TRIPOD_CSI_BIN when set (as make test sets it).
	tripodd, tripodCSI string
	cniBin             string
	crictl             string
	// Kubernetes', built by e2e/k8sbuild/build.sh (make k8s-tools) into
	// .tools/k8s/<version>, or from TRIPOD_K8S_BIN.
	kubelet, apiserver, controllerManager, scheduler, kubectl, provisioner string
	// Debian's etcd-server.
	etcd string
}

// repoRoot is the module's root: tests run in their package's directory.
func repoRoot(t *testing.T) string {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// k8sVersion is the k8s.io/kubernetes version the wrapper module pins.
func k8sVersion(t *testing.T) string {
	f, err := os.Open(filepath.Join(repoRoot(t), "e2e/k8sbuild/go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) >= 2 && fs[0] == "k8s.io/kubernetes" && strings.HasPrefix(fs[1], "v") {
			return fs[1]
		}
	}
	t.Fatal("e2e/k8sbuild/go.mod requires no k8s.io/kubernetes version")
	return ""
}

// findTools locates every binary, failing with what to run when one is
// missing: these tests are part of make test, which builds them all.
func findTools(t *testing.T, controlPlane bool) tools {
	t.Helper()
	cnitest.Root(t)
	if pid := runningKubelet(); pid > 0 {
		t.Skipf("skipped: a kubelet (PID %d) runs on this machine; this test's kubelet would act on paths every kubelet shares "+
			"(its device manager clears %s, its log GC removes the directories in %s of pods it does not know)", pid, devicePluginsDir, podLogsDir)
	}
	root := repoRoot(t)
	var missing []string
	file := func(path, hint string) string {
		if fi, err := os.Stat(path); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			missing = append(missing, fmt.Sprintf("%s (%s)", path, hint))
		}
		return path
	}
	look := func(name, fallback, hint string) string {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		return file(fallback, hint)
	}
	bin := os.Getenv("TRIPOD_BIN")
	if bin == "" {
		bin = filepath.Join(root, "bin")
	}
	k8s := os.Getenv("TRIPOD_K8S_BIN")
	if k8s == "" {
		k8s = filepath.Join(root, ".tools/k8s", k8sVersion(t))
	}
	tl := tools{
		tripodd:   file(filepath.Join(bin, "tripodd"), "make build"),
		tripodCSI: os.Getenv("TRIPOD_CSI_BIN"),
		cniBin:    cnitest.BinDir(t),
		crictl:    look("crictl", filepath.Join(root, ".tools/bin/crictl"), "make go-tools"),
		kubelet:   file(filepath.Join(k8s, "kubelet"), "make k8s-tools"),
		kubectl:   file(filepath.Join(k8s, "kubectl"), "make k8s-tools"),
	}
	file(filepath.Join(bin, "tripod-monitor"), "make build")
	file(filepath.Join(bin, "tripod-exec"), "make build")
	if tl.tripodCSI == "" {
		tl.tripodCSI = filepath.Join(bin, "tripod-csi")
	}
	file(tl.tripodCSI, "make build")
	if _, err := exec.LookPath("runc"); err != nil {
		missing = append(missing, "runc in PATH (make go-tools builds it into .tools/bin)")
	}
	if controlPlane {
		tl.apiserver = file(filepath.Join(k8s, "kube-apiserver"), "make k8s-tools")
		tl.controllerManager = file(filepath.Join(k8s, "kube-controller-manager"), "make k8s-tools")
		tl.scheduler = file(filepath.Join(k8s, "kube-scheduler"), "make k8s-tools")
		tl.provisioner = file(filepath.Join(k8s, "csi-provisioner"), "make k8s-tools")
		tl.etcd = look("etcd", "/usr/bin/etcd", "apt-get install etcd-server")
	}
	if len(missing) > 0 {
		t.Fatalf("missing (make deps build installs and builds them all):\n  %s", strings.Join(missing, "\n  "))
	}
	return tl
}
