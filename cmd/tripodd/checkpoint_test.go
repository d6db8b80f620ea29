package main_test

import (
	"archive/tar"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCheckpointContainer: CheckpointContainer's argument and state
// errors; then a real dump of a running busybox container through runc
// and CRIU. Where CRIU works it yields an archive at the location; where
// it cannot run (Debian's CRIU 3.17.1 on kernels from 6.13 on, whose
// vDSO layout it does not know: `criu check` fails) the error is
// FailedPrecondition with CRIU's own reason, the container keeps running
// and nothing is left at the location or in the bundle. Restoring (a
// CreateContainer whose image is an archive's path) is refused with
// FailedPrecondition and the reason.
func TestCheckpointContainer(t *testing.T) {
	if _, err := exec.LookPath("criu"); err != nil {
		t.Fatal("criu is not installed (make test installs Debian's criu)")
	}
	criuWorks := exec.Command("criu", "check").Run() == nil
	e := newPodEnv(t)
	ctx := testCtx(t)
	pod := e.runPod("ck")
	c := e.create(pod, "c", "sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done")
	loc := filepath.Join(t.TempDir(), "ckpt", "c.tar")
	checkpoint := func(id, location string) error {
		_, err := e.rt.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: location})
		return err
	}
	for _, bad := range []struct {
		id, loc string
		code    codes.Code
	}{
		{"", loc, codes.InvalidArgument},
		{c, "", codes.InvalidArgument},
		{c, "relative.tar", codes.InvalidArgument},
		{"0123456789abcdef-no-such", loc, codes.NotFound},
		{c, loc, codes.FailedPrecondition}, // created, not running
	} {
		if err := checkpoint(bad.id, bad.loc); status.Code(err) != bad.code {
			t.Fatalf("CheckpointContainer(%q, %q): %v, want %v", bad.id, bad.loc, err, bad.code)
		}
	}
	e.start(c)
	log := filepath.Join(e.logDir, "ck", "c.log")
	waitFor(t, log, "tick 1\n")

	err := checkpoint(c, loc)
	if criuWorks {
		if err != nil {
			t.Fatalf("CheckpointContainer with a working CRIU: %v", err)
		}
		f, err := os.Open(loc)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		names := map[string]bool{}
		tr := tar.NewReader(f)
		for h, err := tr.Next(); err == nil; h, err = tr.Next() {
			names[h.Name] = true
		}
		for _, n := range []string{"config.dump", "spec.dump", "rootfs-diff.tar", "deleted.files", "checkpoint/"} {
			if !names[n] {
				t.Fatalf("archive lacks %s: %v", n, names)
			}
		}
	} else {
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "CRIU cannot dump on this node") ||
			!strings.Contains(err.Error(), "Error (criu/") {
			t.Fatalf("CheckpointContainer where CRIU cannot run: %v, want FailedPrecondition with CRIU's errors", err)
		}
		t.Logf("CRIU cannot run here, as expected: %v", status.Convert(err).Message())
		if _, err := os.Stat(loc); !os.IsNotExist(err) {
			t.Fatalf("a failed checkpoint left %s: %v", loc, err)
		}
		if left, _ := filepath.Glob(filepath.Join(e.n.state, "runtime", "containers", c, "checkpoint-*")); len(left) != 0 {
			t.Fatalf("a failed checkpoint left %v", left)
		}
		// A restore is refused with the reason: an archive of the
		// layout kubelet's runtimes use, as the image.
		os.MkdirAll(filepath.Dir(loc), 0o755)
		f, err := os.Create(loc)
		if err != nil {
			t.Fatal(err)
		}
		tw := tar.NewWriter(f)
		for _, n := range []string{"config.dump", "spec.dump"} {
			tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Size: 2, Typeflag: tar.TypeReg})
			tw.Write([]byte("{}"))
		}
		tw.Close()
		f.Close()
	}
	// The container was left running (and logging) either way.
	if st := e.status(c); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("container after checkpoint: %v", st.State)
	}
	b, _ := os.ReadFile(log)
	waitFor(t, log, fmt.Sprintf("tick %d\n", strings.Count(string(b), "tick")+2))

	if criuWorks {
		// Restores are tested where CRIU runs: internal/cgroup2test's VM.
		return
	}
	_, err = e.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, SandboxConfig: e.podConfig("ck"),
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "restored"}, Image: &runtimeapi.ImageSpec{Image: loc}}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "checkpoint archive") || !strings.Contains(err.Error(), "CRIU") {
		t.Fatalf("CreateContainer from a checkpoint archive: %v, want FailedPrecondition naming the archive and CRIU's reason", err)
	}
	// Nothing was made: no container, no bundle.
	l, err := e.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: pod}})
	if err != nil || len(l.Containers) != 1 {
		t.Fatalf("containers after the refused restore: %v %v", l, err)
	}
	if left, _ := os.ReadDir(filepath.Join(e.n.state, "runtime", "containers")); len(left) != 1 {
		t.Fatalf("bundles after the refused restore: %v", left)
	}
}
