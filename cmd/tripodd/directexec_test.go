package main_test

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/tools/remotecommand"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
	"github.com/tripod-dev/tripod/internal/monitor"
)

// probe prints what an exec'd process is: identity, capabilities,
// seccomp, namespaces, cgroups, limits, oom_score_adj, working directory,
// environment, umask, whether it sits in the container's PID namespace
// (its own PID is in the container's /proc, whose ps lists it), raw
// syscalls' results and the keyrings it sees (less serials and usage
// counts; a session keyring an earlier exec left until the kernel collects
// it looks like the one this exec made: sort -u).
const probe = `grep -E '^(Uid|Gid|Groups|Cap[A-Za-z]+|NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status
awk '/^NSpid/ {print "nspid levels", NF-1}' /proc/self/status
for n in /proc/self/ns/*; do echo "$n $(readlink $n)"; done
cat /proc/self/cgroup /proc/self/limits /proc/self/oom_score_adj
pwd; umask; env | grep -v '^_=' | sort
test -d /proc/$$ && echo "own pid visible"
ps -o pid,args | awk -v p=$$ '$1 == p {print "in ps:", $2, $3}'
mkdir /tmp/probe-$$ 2>&1 | sed "s/-$$//"; rmdir /tmp/probe-$$ 2>/dev/null
unshare -U true 2>&1; echo "unshare: $?"
/usr/local/bin/sysno 500 272 39 2>&1
cat /proc/self/attr/current 2>/dev/null; echo
awk '{$1 = $2 = $3 = ""; print}' /proc/keys 2>&1 | sort -u`

// TestDirectExec checks that the monitor's direct exec (tripod-exec) gives
// a process the same as `runc exec` does, for a matrix of containers: the
// same probe through ExecSync (the direct path, as the daemon's debug log
// must say) and through the runtime the daemon uses, run by hand on the
// same container. Then the failures: a missing binary, an exited
// container, an init killed right under the exec.
func TestDirectExec(t *testing.T) {
	runtimePrereqs(t)
	var image string
	e := newPodEnvWith(t, cnitest.BinDir(t), func(e *podEnv, reg *imagetest.Registry) {
		reg.Push(t, "test/sec:1", imagetest.Image(runtime.GOARCH, "", imagetest.Layer(append(secImage(t), sysnoEntry(t))...)))
		image = reg.Host + "/test/sec:1"
		e.extra = append(e.extra, "--log-level", "debug")
		f, _ := os.OpenFile(filepath.Join(e.n.state, "none.toml"), os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString("[runtime.handlers.slow]\npath = \"runc\"\nexec = \"runtime\"\n")
		f.Close()
	})
	ctx := testCtx(t)
	if _, err := e.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: image}}); err != nil {
		t.Fatal(err)
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatal(err)
	}
	viaRuntime := func(t *testing.T, id, script string) (string, string, int) {
		cmd := exec.Command(runc, "--root", filepath.Join(e.n.state, "runtime", "runtime", "runc"), "exec", id, "sh", "-c", script)
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		code := 0
		if x, ok := err.(*exec.ExitError); ok {
			code = x.ExitCode()
		} else if err != nil {
			t.Fatalf("runc exec: %v", err)
		}
		return strings.TrimSpace(out.String()), strings.TrimSpace(errOut.String()), code
	}
	direct := func(t *testing.T, id string) {
		t.Helper()
		if !logSays(e, id, "direct") {
			t.Fatalf("the exec into %s did not go the direct way:\n%s", id, e.d.log.String())
		}
	}
	same := func(t *testing.T, id string) {
		t.Helper()
		e := e.sub(t)
		got, gotErr, gotCode := e.sh(id, probe)
		direct(t, id)
		want, wantErr, wantCode := viaRuntime(t, id, probe)
		if got != want || gotErr != wantErr || gotCode != int32(wantCode) {
			t.Fatalf("direct exec differs from runc exec:\n--- direct (exit %d, stderr %q)\n%s\n--- runc exec (exit %d, stderr %q)\n%s", gotCode, gotErr, got, wantCode, wantErr, want)
		}
		if !strings.Contains(got, "own pid visible") || !strings.Contains(got, "in ps: sh -c") {
			t.Fatalf("the exec'd process is not in the container's PID namespace:\n%s", got)
		}
	}
	i64 := func(v int64) *runtimeapi.Int64Value { return &runtimeapi.Int64Value{Value: v} }
	denyMkdir := filepath.Join(t.TempDir(), "deny-mkdir.json")
	os.WriteFile(denyMkdir, []byte(`{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":18},
	  {"names":["unshare"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":268435456,"valueTwo":268435456,"op":"SCMP_CMP_MASKED_EQ"}]}]}`), 0o600)

	pod, pcfg, err := e.podWith("dx", nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, sc := range map[string]*runtimeapi.LinuxContainerSecurityContext{
		"default":       nil,
		"users":         {RunAsUser: i64(1000), RunAsGroup: i64(1002), SupplementalGroups: []int64{1234, 5}},
		"caps":          {Capabilities: &runtimeapi.Capability{AddCapabilities: []string{"NET_ADMIN", "SYS_TIME"}, DropCapabilities: []string{"NET_RAW", "CHOWN"}}},
		"readonly":      {ReadonlyRootfs: true},
		"nnp":           {NoNewPrivs: true, RunAsUser: i64(1000)},
		"sc-default":    {Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}},
		"sc-unconfined": {Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}},
		"sc-local":      {Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: denyMkdir}},
		"sc-local-nnp":  {NoNewPrivs: true, RunAsUser: i64(33), Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: denyMkdir}},
	} {
		t.Run(name, func(t *testing.T) {
			same(t, e.sub(t).running(pod, pcfg, name, image, sc))
		})
	}
	// The profile's errno comes back through both (the probe's mkdir
	// line is compared above; here it must be the profile's).
	t.Run("denied syscall", func(t *testing.T) {
		e := e.sub(t)
		c := e.running(pod, pcfg, "deny", image, &runtimeapi.LinuxContainerSecurityContext{Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: denyMkdir}})
		_, errOut, code := e.sh(c, "mkdir /tmp/x")
		_, rerrOut, rcode := viaRuntime(t, c, "mkdir /tmp/x")
		if code == 0 || !strings.Contains(errOut, "cross-device") || errOut != rerrOut || int(code) != rcode {
			t.Fatalf("mkdir under the profile: direct exit %d %q, runc exec %d %q", code, errOut, rcode, rerrOut)
		}
	})
	// A syscall past every one RuntimeDefault names: ENOSYS from the
	// runtime's stub in both, not the default action's EPERM.
	t.Run("unknown syscall", func(t *testing.T) {
		e := e.sub(t)
		c := e.running(pod, pcfg, "enosys", image, &runtimeapi.LinuxContainerSecurityContext{Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}})
		got := e.mustSh(c, "/usr/local/bin/sysno 500 169")
		want, _, _ := viaRuntime(t, c, "/usr/local/bin/sysno 500 169")
		if got != want || got != "syscall 500: function not implemented\nsyscall 169: operation not permitted" {
			t.Fatalf("direct exec: %q, runc exec: %q", got, want)
		}
	})
	t.Run("privileged", func(t *testing.T) {
		e := e.sub(t)
		ppod, ppcfg, err := e.podWith("dx-priv", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{Privileged: true}
		})
		if err != nil {
			t.Fatal(err)
		}
		same(t, e.running(ppod, ppcfg, "priv", image, &runtimeapi.LinuxContainerSecurityContext{Privileged: true}))
	})
	t.Run("host namespaces", func(t *testing.T) {
		e := e.sub(t)
		hpod, hpcfg, err := e.podWith("dx-host", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{
				Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_NODE, Ipc: runtimeapi.NamespaceMode_NODE}}
		})
		if err != nil {
			t.Fatal(err)
		}
		same(t, e.running(hpod, hpcfg, "host", image, nil))
	})
	t.Run("shared pid namespace", func(t *testing.T) {
		e := e.sub(t)
		spod, spcfg, err := e.podWith("dx-pidpod", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD}}
		})
		if err != nil {
			t.Fatal(err)
		}
		same(t, e.running(spod, spcfg, "pidpod", image, nil))
	})
	t.Run("user namespace", func(t *testing.T) {
		e := e.sub(t)
		hostID := uint32(1<<20 + rand.IntN(1000)*65536)
		idm := []*runtimeapi.IDMapping{{ContainerId: 0, HostId: hostID, Length: 65536}}
		upod, upcfg, err := e.podWith("dx-userns", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{
				UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: idm, Gids: idm}}}
		})
		if err != nil {
			t.Fatal(err)
		}
		same(t, e.running(upod, upcfg, "userns", image, nil))
		same(t, e.running(upod, upcfg, "userns-user", image, &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(1000), SupplementalGroups: []int64{7}}))
	})

	// A pod of a handler whose execs go through the runtime (exec =
	// "runtime"): the fallback, and the reference for the TTY.
	slowCfg := e.podConfig("dx-slow")
	slowPod, err := e.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: slowCfg, RuntimeHandler: "slow"})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("fallback", func(t *testing.T) {
		e := e.sub(t)
		c := e.running(slowPod.PodSandboxId, slowCfg, "slow", image, nil)
		if got := e.mustSh(c, "echo $$"); got == "" {
			t.Fatal("no output through the runtime")
		}
		if !logSays(e, c, `"runtime: not asked for direct"`) {
			t.Fatalf("exec into a container of an exec = \"runtime\" handler did not go through the runtime:\n%s", e.d.log.String())
		}
		// The stage itself turns down what it cannot hold (more
		// arguments than its table): the runtime runs it, on the same
		// pipes.
		d := e.running(pod, pcfg, "many-args", image, nil)
		cmd := []string{"sh", "-c", `echo "$#"`, "sh"}
		for range 5000 {
			cmd = append(cmd, "a")
		}
		r, err := e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: d, Cmd: cmd, Timeout: 30})
		if err != nil || r.ExitCode != 0 || strings.TrimSpace(string(r.Stdout)) != "5000" {
			t.Fatalf("exec with 5000 arguments: %v %v", r, err)
		}
		if !logSays(e, d, `"runtime: more than 4095 arguments"`) {
			t.Fatalf("the exec with 5000 arguments did not fall back to the runtime:\n%s", e.d.log.String())
		}
	})
	t.Run("tty", func(t *testing.T) {
		e := e.sub(t)
		const script = `stty -a; tty | sed 's/[0-9]*$/N/'; stat -c '%u %g %a' $(tty); [ "$(cut -d' ' -f6 /proc/$$/stat)" = $$ ] && echo session leader; env | grep -v '^_=' | sort`
		ttyExec := func(c string) string {
			r, err := e.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: c, Cmd: []string{"sh", "-c", script}, Stdout: true, Tty: true})
			if err != nil {
				t.Fatal(err)
			}
			var out syncBuffer
			if err := spdyExecutor(t, r.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Tty: true}); err != nil {
				t.Fatalf("exec with a TTY: %v", err)
			}
			return out.String()
		}
		sc := &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(1000)}
		c := e.running(pod, pcfg, "tty", image, sc)
		got := ttyExec(c)
		direct(t, c)
		want := ttyExec(e.running(slowPod.PodSandboxId, slowCfg, "tty-slow", image, sc))
		if got != want {
			t.Fatalf("with a TTY, direct exec differs from runc exec:\n--- direct\n%s\n--- runc exec\n%s", got, want)
		}
		if !strings.Contains(got, "session leader") || !strings.Contains(got, "/dev/pts/N") {
			t.Fatalf("no terminal, or not a session leader:\n%s", got)
		}
	})
	t.Run("failures", func(t *testing.T) {
		e := e.sub(t)
		c := e.running(pod, pcfg, "fail", image, nil)
		bundle := filepath.Join(e.n.state, "runtime", "containers", c)
		before := dirNames(t, bundle)
		fds := monitorFds(t, e)
		_, err := e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c, Cmd: []string{"no-such-binary"}, Timeout: 10})
		if status.Code(err) == codes.OK || !strings.Contains(err.Error(), `exec: "no-such-binary": executable file not found in $PATH`) {
			t.Fatalf("exec of a missing binary: %v", err)
		}
		_, err = e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c, Cmd: []string{"/bin/no-such-binary"}, Timeout: 10})
		if status.Code(err) == codes.OK || !strings.Contains(err.Error(), `exec: "/bin/no-such-binary": stat /bin/no-such-binary: no such file or directory`) {
			t.Fatalf("exec of a missing path: %v", err)
		}
		_, err = e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c, Cmd: []string{"/etc"}, Timeout: 10})
		if status.Code(err) == codes.OK || !strings.Contains(err.Error(), `exec: "/etc": is a directory`) {
			t.Fatalf("exec of a directory: %v", err)
		}
		// NUL separates the stage's spec records: an argument with one
		// is refused, not split into records (here one naming a file
		// the stage would write its pid into).
		victim := filepath.Join(t.TempDir(), "victim")
		os.WriteFile(victim, []byte("intact"), 0o600)
		_, err = e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c, Cmd: []string{"true\x00cg=" + victim}, Timeout: 10})
		if b, _ := os.ReadFile(victim); err == nil || !strings.Contains(err.Error(), "NUL") || string(b) != "intact" {
			t.Fatalf("exec with a NUL in an argument: %v; the file now says %q", err, b)
		}
		// What a failed exec leaves: nothing in the bundle, no
		// descriptor in the monitor, no process in the container.
		if after := dirNames(t, bundle); after != before {
			t.Fatalf("bundle before %s, after %s", before, after)
		}
		if after := settledFds(t, e, fds); after != fds {
			t.Fatalf("monitor descriptors: %d before, %d after the failed execs", fds, after)
		}
		// The init alone, beside this check's own sh, ps and awk.
		if got := e.mustSh(c, `ps -o pid,comm | awk 'NR > 1 && $2 != "sh" && $2 != "ps" && $2 != "awk" {print $2}'`); got != "sleep" {
			t.Fatalf("processes in the container: %q", got)
		}

		// A command found through a relative PATH entry is refused on
		// both paths (the runtime's Go LookPath says ErrDot).
		for _, pc := range []struct {
			pod string
			cfg *runtimeapi.PodSandboxConfig
		}{{pod, pcfg}, {slowPod.PodSandboxId, slowCfg}} {
			resp, err := e.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pc.pod, SandboxConfig: pc.cfg,
				Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "relpath"},
					Image: &runtimeapi.ImageSpec{Image: image}, Command: []string{"/bin/sleep", "1000"}, LogPath: "relpath.log",
					Envs: []*runtimeapi.KeyValue{{Key: "PATH", Value: []byte("bin")}}}})
			if err != nil {
				t.Fatal(err)
			}
			e.start(resp.ContainerId)
			_, err = e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: resp.ContainerId, Cmd: []string{"true"}, Timeout: 10})
			if status.Code(err) == codes.OK || !strings.Contains(err.Error(), `exec: "true": cannot run executable found relative to current directory`) {
				t.Fatalf("exec of a command found through a relative PATH entry (pod %s): %v", pc.cfg.Metadata.Name, err)
			}
			// Gone again, so that the monitor's descriptors count below
			// sees only the containers it did.
			if _, err := e.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: resp.ContainerId}); err != nil {
				t.Fatal(err)
			}
		}

		// An init that dies under the exec: an error or the exec ran,
		// never a hang or a leftover.
		d := e.running(pod, pcfg, "dies", image, nil)
		done := make(chan error, 1)
		go func() {
			time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond)
			_, err := e.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: d, Timeout: 0})
			done <- err
		}()
		for range 20 {
			_, err := e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: d, Cmd: []string{"true"}, Timeout: 10})
			if err != nil && status.Code(err) != codes.FailedPrecondition && !strings.Contains(err.Error(), "exited") && !strings.Contains(err.Error(), "not running") {
				t.Fatalf("exec while the container stops: %v", err)
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		_, err = e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: d, Cmd: []string{"true"}, Timeout: 10})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("exec into an exited container: %v", err)
		}
		if _, err := e.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: d}); err != nil {
			t.Fatal(err)
		}
		if after := settledFds(t, e, fds); after != fds {
			t.Fatalf("monitor descriptors: %d before, %d after (the container that stopped under the execs removed)", fds, after)
		}
	})
}

// logSays is containsVia on the daemon's log, given a moment to reach
// the test (it is copied from the daemon's stderr as it comes).
func logSays(e *podEnv, id, via string) bool {
	for range 50 {
		if containsVia(e.d.log.String(), id, via) {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// containsVia finds the "exec started" debug lines of a container and
// checks that each went via.
func containsVia(log, id, via string) bool {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `msg="exec started" container=`+id) {
			if !strings.Contains(l, "via="+via) {
				return false
			}
			n++
		}
	}
	return n > 0
}

func dirNames(t *testing.T, dir string) string {
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

// monitorFds counts the open descriptors of the node's monitor.
func monitorFds(t *testing.T, e *podEnv) int {
	b, err := os.ReadFile(filepath.Join(e.n.state, "runtime", monitor.PIDFile))
	if err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir(filepath.Join("/proc", strings.Fields(string(b))[0], "fd"))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// settledFds is monitorFds once it is want, or after some seconds: the
// monitor closes a session's descriptors just after its reply.
func settledFds(t *testing.T, e *podEnv, want int) int {
	n := monitorFds(t, e)
	for i := 0; i < 50 && n != want; i++ {
		time.Sleep(100 * time.Millisecond)
		n = monitorFds(t, e)
	}
	return n
}

// sysnoEntry is /usr/local/bin/sysno: a static program that makes the raw
// syscalls numbered by its arguments (without arguments of their own)
// and prints what each returned. 500 is past every syscall: a filter
// that denies by default says ENOSYS for it, as the runtime's does.
func sysnoEntry(t *testing.T) imagetest.Entry {
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	os.WriteFile(src, []byte(`package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

func main() {
	for _, a := range os.Args[1:] {
		n, _ := strconv.Atoi(a)
		_, _, e := syscall.RawSyscall(uintptr(n), 0, 0, 0)
		fmt.Printf("syscall %d: %v\n", n, e)
	}
}
`), 0o644)
	bin := filepath.Join(dir, "sysno")
	cmd := exec.Command("go", "build", "-o", bin, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build sysno: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	return imagetest.Entry{Name: "usr/local/bin/sysno", Body: string(b), Mode: 0o755}
}
