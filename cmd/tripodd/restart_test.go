package main_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func containerPid(t *testing.T, st map[string]string) int {
	t.Helper()
	i := strings.Index(st["info"], `"pid":`)
	if i < 0 {
		t.Fatalf("no pid in verbose info %v", st)
	}
	rest := st["info"][i+6:]
	pid, err := strconv.Atoi(rest[:strings.IndexAny(rest, ",}")])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestRestartKeepsPods: 20 running pods, kill -9 tripodd, one container
// ends while it is down; after the restart every pod and container is
// listed as before, the running ones still log, and the one that ended
// has its own exit code.
func TestRestartKeepsPods(t *testing.T) {
	e := newPodEnv(t)
	ctx := testCtx(t)
	const n = 20
	pods := make([]string, n)
	ctrs := make([]string, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("p%d", i)
			resp, err := e.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: e.podConfig(name)})
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			pods[i] = resp.PodSandboxId
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("RunPodSandbox: %v", errs)
	}
	for i, pod := range pods {
		cmd := []string{"sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"}
		if i == 0 {
			cmd = []string{"sh", "-c", "trap 'echo bye; exit 7' TERM; echo ready; while true; do sleep 0.1; done"}
		}
		ctrs[i] = e.create(pod, "c", cmd...)
		e.start(ctrs[i])
	}
	waitFor(t, filepath.Join(e.logDir, "p0", "c.log"), "ready")
	pid0 := containerPid(t, statusInfo(t, e, ctrs[0]))

	e.d.kill()
	if err := syscall.Kill(pid0, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The monitor records the exit while tripodd is down.
	bundle := filepath.Join(e.n.state, "runtime", "containers", ctrs[0])
	waitFor(t, filepath.Join(bundle, "exit.json"), "code")
	e.boot()

	lp, err := e.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil || len(lp.Items) != n {
		t.Fatalf("pods after restart: %d %v", len(lp.Items), err)
	}
	for _, p := range lp.Items {
		if p.State != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Fatalf("pod %s is %v after restart", p.Id, p.State)
		}
	}
	st := e.status(ctrs[0])
	if st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 7 || st.Reason != "Error" {
		t.Fatalf("container ended while tripodd was down: %v code %d %q", st.State, st.ExitCode, st.Reason)
	}
	waitFor(t, filepath.Join(e.logDir, "p0", "c.log"), "stdout F bye")
	for i := 1; i < n; i++ {
		if st := e.status(ctrs[i]); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Fatalf("container %d after restart: %v", i, st.State)
		}
	}
	// Still logging: a tick newer than any before the restart.
	log := filepath.Join(e.logDir, "p5", "c.log")
	b, _ := os.ReadFile(log)
	last := strings.Count(string(b), "tick")
	waitFor(t, log, fmt.Sprintf("tick %d\n", last+2))
	// And still stoppable, with the right code, through the new daemon.
	if _, err := e.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: ctrs[5], Timeout: 0}); err != nil {
		t.Fatal(err)
	}
	if st := e.status(ctrs[5]); st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 {
		t.Fatalf("stopped after restart: %v %d", st.State, st.ExitCode)
	}
}

func statusInfo(t *testing.T, e *podEnv, id string) map[string]string {
	r, err := e.rt.ContainerStatus(testCtx(t), &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	return r.Info
}

// TestCrashPoints kills tripodd (SIGKILL from inside) at points within
// RunPodSandbox and CreateContainer; after a restart nothing is left:
// no record, namespace mount, bridge port, IP reservation, rootfs mount or
// runc container, and the names can be used again.
func TestCrashPoints(t *testing.T) {
	for _, point := range []string{"pod-netns", "pod-cni-add", "ctr-rootfs", "ctr-create"} {
		t.Run(point, func(t *testing.T) {
			e := newPodEnv(t)
			ctx := testCtx(t)
			e.d.kill()
			e.d = startDaemonEnv(t, e.n, []string{"TRIPOD_CRASH_AT=" + point}, e.extra...)
			var pod string
			if strings.HasPrefix(point, "pod-") {
				_, err := e.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: e.podConfig("crash")})
				if err == nil {
					t.Fatal("RunPodSandbox succeeded through a crash")
				}
			} else {
				pod = e.runPod("crash")
				_, err := e.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod,
					Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c"},
						Image: &runtimeapi.ImageSpec{Image: e.image}, Command: []string{"sleep", "1000"}}})
				if err == nil {
					t.Fatal("CreateContainer succeeded through a crash")
				}
			}
			<-e.d.done
			e.d.done <- nil
			if !strings.Contains(e.d.log.String(), "crash point reached") {
				t.Fatalf("the crash point was not reached:\n%s", e.d.log.String())
			}
			e.boot()
			lc, _ := e.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
			if len(lc.Containers) != 0 {
				t.Fatalf("containers after rollback: %v", lc.Containers)
			}
			lp, _ := e.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
			wantPods := 0
			if pod != "" {
				wantPods = 1
			}
			if len(lp.Items) != wantPods {
				t.Fatalf("pods after rollback: %v", lp.Items)
			}
			mounts, _ := os.ReadFile("/proc/self/mountinfo")
			for _, line := range strings.Split(string(mounts), "\n") {
				if strings.Contains(line, e.n.state) && (wantPods == 0 || strings.Contains(line, "/containers/")) {
					t.Fatalf("mount left: %s", line)
				}
			}
			if wantPods == 0 {
				if br, err := netlink.LinkByName(e.tag + "br"); err == nil {
					links, _ := netlink.LinkList()
					for _, l := range links {
						if l.Attrs().MasterIndex == br.Attrs().Index {
							t.Fatalf("bridge port left: %s", l.Attrs().Name)
						}
					}
				}
				ipam, _ := filepath.Glob(filepath.Join(filepath.Dir(e.confDir), "*", "ipam", e.tag, "10.*"))
				if len(ipam) != 0 {
					t.Fatalf("IP reservations left: %v", ipam)
				}
			}
			out, _ := exec.Command("runc", "--root", filepath.Join(e.n.state, "runtime", "runtime", "runc"), "list", "-q").Output()
			if strings.TrimSpace(string(out)) != "" {
				t.Fatalf("runc containers left: %s", out)
			}
			// The names are free again.
			if pod == "" {
				e.runPod("crash")
			} else {
				c := e.create(pod, "c", "sleep", "1000")
				e.start(c)
			}
		})
	}
}
