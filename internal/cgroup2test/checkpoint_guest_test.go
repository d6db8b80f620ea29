package cgroup2test_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/daemonctl"
	"github.com/tripod-dev/tripod/internal/monitor"
)

// readArchive returns a tar's entries in order, with their bodies.
func readArchive(t *testing.T, r io.Reader) ([]*tar.Header, [][]byte) {
	t.Helper()
	var hdrs []*tar.Header
	var bodies [][]byte
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, bodies
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hdrs, bodies = append(hdrs, h), append(bodies, b)
	}
}

// rewriteArchive writes a copy of the archive at src to dst, each entry
// passed through edit (nil drops it), plus extra entries at the end.
func rewriteArchive(t *testing.T, src, dst string, edit func(*tar.Header, []byte) []byte, extra ...*tar.Header) {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdrs, bodies := readArchive(t, f)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i, h := range hdrs {
		b := edit(h, bodies[i])
		if b == nil {
			continue
		}
		h.Size = int64(len(b))
		if h.Typeflag == tar.TypeDir {
			h.Size = 0
		}
		tw.WriteHeader(h)
		tw.Write(b)
	}
	for _, h := range extra {
		h.Size = 0
		tw.WriteHeader(h)
	}
	tw.Close()
	if err := os.WriteFile(dst, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// firstTick is the number of the first "tick N" line in a CRI log.
func firstTick(t *testing.T, log string) int {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if _, v, ok := strings.Cut(line, " stdout F tick "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("log line %q", line)
			}
			return n
		}
	}
	t.Fatalf("no tick in the log:\n%s", log)
	return 0
}

// TestGuestCheckpointRestore, with real CRIU (Debian's 3.17.1, which runs
// on this 6.1 kernel), real runc and cgroup v2: a shell counting in a
// variable is checkpointed, its container and pod removed, and the
// archive restored into a new container of a new pod. The count goes on
// from where it was (its memory came back, not a new start), the changes
// to the root file system are there (a new file, a deleted one), the
// container is running with its log going on, survives its monitor's
// death (re-adoption), can be checkpointed again, and stopping and removing it leaves nothing. A
// corrupted archive, one that escapes its directory, and one whose image
// is not in the store are refused with their reason, leaving nothing.
func TestGuestCheckpointRestore(t *testing.T) {
	e := newGuestEnv(t)
	c := ctx(t)
	if out, err := exec.Command("criu", "check").CombinedOutput(); err != nil {
		t.Fatalf("criu check in the VM: %v\n%s", err, out)
	}
	pc1 := e.podConfig("ck1")
	rp, err := e.rt.RunPodSandbox(c, &runtimeapi.RunPodSandboxRequest{Config: pc1})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	removePod := func(id string) {
		t.Cleanup(func() {
			e.rt.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id})
		})
	}
	removePod(rp.PodSandboxId)
	counter := e.create(rp.PodSandboxId, pc1, "counter", nil, "sh", "-c",
		"echo before > /marker; rm /etc/group; i=0; while :; do i=$((i+1)); echo $i > /tmp/c; echo tick $i; sleep 0.1; done")
	waitLog(t, filepath.Join(e.logDir, "ck1", "counter.log"), "tick 5\n")
	archive := filepath.Join(t.TempDir(), "counter.tar")
	start := time.Now()
	if _, err := e.rt.CheckpointContainer(c, &runtimeapi.CheckpointContainerRequest{ContainerId: counter, Location: archive}); err != nil {
		t.Fatalf("CheckpointContainer: %v", err)
	}
	took := time.Since(start)
	// The count when dumped, from the archive's copy of the writable layer.
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	hdrs, bodies := readArchive(t, f)
	f.Close()
	dumped := -1
	for i, h := range hdrs {
		if h.Name == "rootfs-diff.tar" {
			dh, db := readArchive(t, bytes.NewReader(bodies[i]))
			for j, h := range dh {
				if h.Name == "tmp/c" {
					dumped, _ = strconv.Atoi(strings.TrimSpace(string(db[j])))
				}
			}
		}
	}
	if dumped < 5 {
		t.Fatalf("the archive's rootfs-diff.tar has no count in tmp/c (%d)", dumped)
	}
	if fi, err := os.Stat(archive); err == nil {
		t.Logf("checkpointed at count %d in %v (QEMU without KVM): a %d-byte archive", dumped, took, fi.Size())
	}
	if _, err := e.rt.RemovePodSandbox(c, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: rp.PodSandboxId}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}

	pc2 := e.podConfig("ck2")
	rp2, err := e.rt.RunPodSandbox(c, &runtimeapi.RunPodSandboxRequest{Config: pc2})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	pod := rp2.PodSandboxId
	removePod(pod)
	restoreFrom := func(name, image string) (string, error) {
		r, err := e.rt.CreateContainer(c, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, SandboxConfig: pc2,
			Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: name}, Image: &runtimeapi.ImageSpec{Image: image},
				LogPath: name + ".log", Labels: map[string]string{"restored": "yes"}}})
		return r.GetContainerId(), err
	}
	nothingLeft := func(what string) {
		t.Helper()
		l, err := e.rt.ListContainers(c, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: pod}})
		if err != nil || len(l.Containers) != 0 {
			t.Fatalf("after %s: containers %v %v", what, l, err)
		}
		for _, dir := range []string{filepath.Join(e.state, "runtime", "containers"), filepath.Join(e.root, "runtime", "containers")} {
			if left, _ := os.ReadDir(dir); len(left) != 0 {
				t.Fatalf("after %s: %s holds %v", what, dir, left)
			}
		}
		if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), filepath.Join(e.state, "runtime", "containers")) {
			t.Fatalf("after %s: mounts left:\n%s", what, b)
		}
	}
	dir := t.TempDir()
	bad := []struct {
		name string
		code codes.Code
		why  string
		edit func(*tar.Header, []byte) []byte
		add  []*tar.Header
	}{
		{"truncated", codes.InvalidArgument, "not a readable tar", nil, nil},
		{"no-spec", codes.InvalidArgument, "has no spec.dump", func(h *tar.Header, b []byte) []byte {
			if h.Name == "spec.dump" {
				return nil
			}
			return b
		}, nil},
		{"escape", codes.InvalidArgument, "leaves the archive", func(_ *tar.Header, b []byte) []byte { return b },
			[]*tar.Header{{Name: "checkpoint/../../evil", Typeflag: tar.TypeReg, Mode: 0o600}}},
		{"no-image", codes.NotFound, "not in the image store", func(h *tar.Header, b []byte) []byte {
			if h.Name == "config.dump" {
				var cfg map[string]any
				json.Unmarshal(b, &cfg)
				cfg["rootfsImageRef"] = "sha256:" + strings.Repeat("ab", 32)
				cfg["rootfsImageName"] = "localhost/none:1"
				b, _ = json.Marshal(cfg)
			}
			return b
		}, nil},
	}
	for _, b := range bad {
		p := filepath.Join(dir, b.name+".tar")
		if b.edit == nil {
			raw, _ := os.ReadFile(archive)
			os.WriteFile(p, raw[:len(raw)/2+100], 0o600)
		} else {
			rewriteArchive(t, archive, p, b.edit, b.add...)
		}
		_, err := restoreFrom(b.name, p)
		if status.Code(err) != b.code || !strings.Contains(err.Error(), b.why) {
			t.Fatalf("restore from a %s archive: %v, want %v with %q", b.name, err, b.code, b.why)
		}
		nothingLeft("a restore from a " + b.name + " archive")
	}

	// Created from the archive but never started: removing it leaves
	// nothing either.
	pending, err := restoreFrom("pending", archive)
	if err != nil {
		t.Fatalf("CreateContainer from the checkpoint: %v", err)
	}
	if _, err := e.rt.RemoveContainer(c, &runtimeapi.RemoveContainerRequest{ContainerId: pending}); err != nil {
		t.Fatalf("RemoveContainer of a never-started restore: %v", err)
	}
	nothingLeft("removing a never-started restored container")

	id, err := restoreFrom("restored", archive)
	if err != nil {
		t.Fatalf("CreateContainer from the checkpoint: %v", err)
	}
	if st := e.status(id); st.State != runtimeapi.ContainerState_CONTAINER_CREATED || st.Labels["restored"] != "yes" || st.Metadata.Name != "restored" {
		t.Fatalf("restored container before start: %v", st)
	}
	start = time.Now()
	if _, err := e.rt.StartContainer(c, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer (restore): %v", err)
	}
	t.Logf("restored in %v (QEMU without KVM)", time.Since(start))
	if st := e.status(id); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("restored container: %v", st.State)
	}
	logPath := filepath.Join(e.logDir, "ck2", "restored.log")
	waitLog(t, logPath, " stdout F tick ")
	log, _ := os.ReadFile(logPath)
	// The count resumes after the dumped one (the dump happened at most
	// one step after tmp/c was written), not from 1.
	first := firstTick(t, string(log))
	if first < dumped || first > dumped+2 {
		t.Fatalf("the restored count starts at %d, the checkpoint was at %d:\n%s", first, dumped, log)
	}
	t.Logf("the restored container's log starts at tick %d", first)
	waitLog(t, logPath, fmt.Sprintf("tick %d\n", dumped+5))
	ex, err := e.rt.ExecSync(c, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"sh", "-c", "cat /marker; ls /etc/group 2>&1; cat /etc/hostname; hostname; ip -4 -o addr show eth0"}, Timeout: 60})
	if err != nil {
		t.Fatal(err)
	}
	if out := string(ex.Stdout); !strings.HasPrefix(out, "before\n") || !strings.Contains(out, "No such file") {
		t.Fatalf("the restored root file system: %q (want /marker, and /etc/group deleted)", out)
	}
	// The new pod's hostname, files and network, not the old pod's.
	ps, err := e.rt.PodSandboxStatus(c, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if err != nil {
		t.Fatal(err)
	}
	if out := string(ex.Stdout); !strings.Contains(out, "\nck2\nck2\n") || !strings.Contains(out, " "+ps.Status.Network.Ip+"/") {
		t.Fatalf("the restored container is not in the new pod (hostname ck2, IP %s): %q", ps.Status.Network.Ip, out)
	}

	// The restored process runs in the new container's cgroup, which its
	// stats come from.
	ipid, err := os.ReadFile(filepath.Join(e.state, "runtime", "containers", id, "init.pid"))
	if err != nil {
		t.Fatal(err)
	}
	if procs := readCgroup(t, filepath.Join(e.cgroupParent, id), "cgroup.procs"); !strings.Contains("\n"+procs+"\n", "\n"+strings.TrimSpace(string(ipid))+"\n") {
		t.Fatalf("the restored init %s is not in its container's cgroup: %q", ipid, procs)
	}
	stats, err := e.rt.ContainerStats(c, &runtimeapi.ContainerStatsRequest{ContainerId: id})
	if err != nil || stats.Stats.GetMemory().GetWorkingSetBytes().GetValue() == 0 || stats.Stats.GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 {
		t.Fatalf("ContainerStats of the restored container: %v %v", stats, err)
	}

	// A new monitor adopts the restored container as any other.
	old, err := daemonctl.ReadPIDFile(filepath.Join(e.state, "runtime", monitor.PIDFile))
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.PidfdOpen(old, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	monitor.WaitPidfd(fd)
	unix.Close(fd)
	log, _ = os.ReadFile(logPath)
	waitLog(t, logPath, fmt.Sprintf("tick %d\n", dumped+strings.Count(string(log), "tick")+3))

	// The restored container checkpoints again.
	again := filepath.Join(t.TempDir(), "again.tar")
	if _, err := e.rt.CheckpointContainer(c, &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: again}); err != nil {
		t.Fatalf("CheckpointContainer of the restored container: %v", err)
	}
	if st := e.status(id); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("restored container after its own checkpoint: %v", st.State)
	}

	pid := 0
	if b, err := os.ReadFile(filepath.Join(e.state, "runtime", "containers", id, "init.pid")); err == nil {
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if _, err := e.rt.StopContainer(c, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	// Adopted after its monitor died, on a kernel that keeps no exit
	// status for pidfds: 137 if the monitor saw the zombie, else 255
	// marked unknown (as in TestGuestMonitorDeath).
	if st := e.status(id); st.State != runtimeapi.ContainerState_CONTAINER_EXITED ||
		st.ExitCode != 137 && (st.ExitCode != 255 || !strings.Contains(st.Message, "unknown")) {
		t.Fatalf("stopped restored container: %v code %d %q", st.State, st.ExitCode, st.Message)
	}
	if pid <= 0 || syscall.Kill(pid, 0) == nil {
		t.Fatalf("the restored init %d is still there after the stop", pid)
	}
	if _, err := e.rt.RemoveContainer(c, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	nothingLeft("removing the restored container")
	if _, err := os.Stat(filepath.Join(cgroupRoot, e.cgroupParent, id)); !os.IsNotExist(err) {
		t.Fatalf("the restored container's cgroup is left: %v", err)
	}
	if _, err := e.rt.RemovePodSandbox(c, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	kids, _ := os.ReadDir(filepath.Join(cgroupRoot, e.cgroupParent))
	for _, k := range kids {
		if k.IsDir() {
			t.Errorf("cgroup %s/%s left after RemovePodSandbox", e.cgroupParent, k.Name())
		}
	}
}
