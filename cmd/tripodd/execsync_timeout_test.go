package main_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestExecSyncTimeoutReaps: an ExecSync that times out fails with
// DeadlineExceeded and leaves no process behind, not even a zombie under a
// container init that never reaps (critest's "execSync with timeout").
func TestExecSyncTimeoutReaps(t *testing.T) {
	e := newPodEnv(t)
	pod := e.runPod("execto")
	// tail is the init and never waits for children it did not start.
	c := e.create(pod, "main", "tail", "-f", "/dev/null")
	e.start(c)
	_, err := e.rt.ExecSync(testCtx(t), &runtimeapi.ExecSyncRequest{ContainerId: c, Cmd: []string{"sleep", "4321"}, Timeout: 1})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("ExecSync past its timeout: %v, want DeadlineExceeded", err)
	}
	// Every process left in the test's cgroups, the pod's included.
	var left []string
	filepath.WalkDir(filepath.Join("/sys/fs/cgroup/pids", e.cgroup), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Name() != "cgroup.procs" {
			return nil
		}
		b, _ := os.ReadFile(p)
		for _, pid := range strings.Fields(string(b)) {
			stat, _ := os.ReadFile(filepath.Join("/proc", pid, "stat"))
			if strings.Contains(string(stat), "(sleep)") {
				left = append(left, pid+": "+string(stat))
			}
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("the timed-out exec's process is left: %v", left)
	}
	// The container is untouched and exec still works.
	r, err := e.rt.ExecSync(testCtx(t), &runtimeapi.ExecSyncRequest{ContainerId: c, Cmd: []string{"echo", "ok"}, Timeout: int64(time.Minute / time.Second)})
	if err != nil || string(r.Stdout) != "ok\n" || r.ExitCode != 0 {
		t.Errorf("ExecSync after a timeout: %v %+v", err, r)
	}
}
