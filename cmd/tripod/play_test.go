package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/critestimg"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
	"github.com/tripod-dev/tripod/internal/play"
)

// playEnv is a node stack brought up by `tripod up` in a network namespace
// of its own (upEnv), with a registry listening inside that namespace to
// which docker.io is mirrored through hosts.toml, as TestCritest mirrors
// upstream registries: the examples' docker.io/library/busybox:1.37 is
// pulled from there, so they run unchanged.
type playEnv struct {
	*upEnv
	reg *imagetest.Registry
	tr  http.RoundTripper // dials from inside the namespace
	rt  runtimeapi.RuntimeServiceClient
	csi *grpc.ClientConn
}

// push stores an image in the namespace's registry as repoTag
// (library/x:1 is docker.io/library/x:1 through the mirror).
func (e *playEnv) push(t *testing.T, repoTag string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(e.reg.Host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(e.tr)); err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
}

const busyboxRef = "library/busybox:1.37"

func newPlayEnv(t *testing.T) *playEnv {
	u := newUpEnv(t)
	e := &playEnv{upEnv: u}
	var reg *imagetest.Registry
	e.ns.Do(t, func() error {
		var err error
		reg, err = imagetest.Serve(imagetest.Options{}) // listens in the namespace
		return err
	})
	t.Cleanup(reg.Close)
	e.reg = reg
	entries, err := imagetest.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	// The push dials from inside the namespace too.
	e.tr = &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := e.ns.Try(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	e.push(t, busyboxRef, imagetest.Image(runtime.GOARCH, "", imagetest.Layer(entries...)))
	if err := critestimg.WriteHosts(e.p("certs.d"), reg.Host); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(e.p("tripod.toml"), fmt.Appendf(nil, "[image]\nregistry_hosts_dir = %q\n\n[runtime]\ncgroup_parent = %q\n\n[nri]\nenable = false\n\n[csi]\nregistration_dir = \"\"\n",
		e.p("certs.d"), e.cgroup), 0o644)
	e.must(append([]string{"up"}, e.upArgs()...)...)
	conn, err := grpc.NewClient("unix://"+e.p("state/tripod.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e.rt = runtimeapi.NewRuntimeServiceClient(conn)
	if e.csi, err = grpc.NewClient("unix://"+e.p("state/csi.sock"), grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		t.Fatal(err)
	}
	// Runs before upEnv's cleanup (down --pods, unmounts): play's own
	// deletion unpublishes and deletes its volumes through CSI.
	t.Cleanup(func() {
		if out, err := e.play("delete", "--all", "--claims"); err != nil {
			t.Logf("cleanup: tripod delete --all --claims: %v\n%s", err, out)
		}
		conn.Close()
		e.csi.Close()
		if t.Failed() {
			b, _ := os.ReadFile(e.p("root/play/supervisor.log"))
			t.Logf("supervisor.log:\n%s", b)
		}
	})
	return e
}

// playArgs reach the test's stack.
func (e *playEnv) playArgs() []string {
	return []string{"--config", e.p("tripod.toml"), "--root", e.p("root"), "--state", e.p("state"), "--csi-endpoint", "unix://" + e.p("state/csi.sock")}
}

// play runs a pod command (play, ps, logs, exec, delete) against the stack.
func (e *playEnv) play(cmd string, args ...string) (string, error) {
	return e.tripod(append(append([]string{cmd}, e.playArgs()...), args...)...)
}

// playIn runs a pod command with stdin.
func (e *playEnv) playIn(t *testing.T, stdin, cmd string, args ...string) string {
	t.Helper()
	var out []byte
	err := e.ns.Try(func() error {
		c := exec.Command(tripod, append(append([]string{cmd}, e.playArgs()...), args...)...)
		c.Stdin = strings.NewReader(stdin)
		var err error
		out, err = c.CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("tripod %s %v: %v\n%s", cmd, args, err, out)
	}
	return string(out)
}

func (e *playEnv) playMust(t *testing.T, cmd string, args ...string) string {
	t.Helper()
	out, err := e.play(cmd, args...)
	if err != nil {
		t.Fatalf("tripod %s %s: %v\n%s", cmd, strings.Join(args, " "), err, out)
	}
	return out
}

type psOut struct {
	Pods       []play.PodStatus   `json:"pods"`
	Claims     []play.ClaimStatus `json:"claims"`
	Supervisor int                `json:"supervisor"`
}

func (e *playEnv) ps(t *testing.T) psOut {
	t.Helper()
	out := e.playMust(t, "ps", "-o", "json")
	var ps psOut
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		t.Fatalf("ps -o json: %v\n%s", err, out)
	}
	return ps
}

func (ps psOut) pod(name string) *play.PodStatus {
	for i := range ps.Pods {
		if ps.Pods[i].Name == name {
			return &ps.Pods[i]
		}
	}
	return nil
}

// container finds a container's status in a pod's.
func container(p *play.PodStatus, name string) *play.ContainerStatus {
	for i := range p.Containers {
		if p.Containers[i].Name == name {
			return &p.Containers[i]
		}
	}
	return nil
}

// waitPS polls tripod ps until cond holds.
func (e *playEnv) waitPS(t *testing.T, what string, timeout time.Duration, cond func(psOut) bool) psOut {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ps := e.ps(t)
		if cond(ps) {
			return ps
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(ps, "", "  ")
			log, _ := os.ReadFile(e.p("root/play/supervisor.log"))
			t.Fatalf("%s: not after %s\nps:\n%s\nsupervisor.log:\n%s", what, timeout, b, log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// httpGet fetches http://addr+path from the test's namespace until it
// answers 200 or timeout passes, and returns the body.
func (e *playEnv) httpGet(t *testing.T, addr, path string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	var body string
	for time.Now().Before(deadline) {
		last = e.ns.Try(func() error {
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr)
			b, err := io.ReadAll(c)
			body = string(b)
			return err
		})
		if status, _, _ := strings.Cut(body, "\r\n"); last == nil && strings.HasPrefix(status, "HTTP/1.") && strings.Contains(status, " 200 ") {
			return body
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("GET http://%s%s: %v %q", addr, path, last, body)
	return ""
}

// playedSandboxes lists the sandboxes tripod play made (by its label).
func (e *playEnv) playedSandboxes(t *testing.T) []string {
	t.Helper()
	resp, err := e.rt.ListPodSandbox(context.Background(), &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		LabelSelector: map[string]string{play.LabelPlayed: "true"}}})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range resp.Items {
		out = append(out, s.Metadata.Namespace+"/"+s.Metadata.Name+" "+s.Id[:13])
	}
	return out
}

// csiVolumes lists the driver's volumes.
func (e *playEnv) csiVolumes(t *testing.T) []string {
	t.Helper()
	resp, err := csi.NewControllerClient(e.csi).ListVolumes(context.Background(), &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range resp.Entries {
		out = append(out, v.Volume.VolumeId)
	}
	slices.Sort(out)
	return out
}

// playMounts are the mounts under play's directory (volumes published,
// claims staged, tmpfs, subPath binds).
func (e *playEnv) playMounts() []string {
	var out []string
	for _, m := range e.mounts() {
		if strings.HasPrefix(m, e.p("root/play")+"/") {
			out = append(out, m)
		}
	}
	return out
}

// nothingPlayed checks that no played pod is left anywhere: not in play's
// state, not in the CRI, no mount of play's; the CSI driver holds exactly
// the volumes of the claims in want (by namespace/name).
func (e *playEnv) nothingPlayed(t *testing.T, claims ...string) {
	t.Helper()
	ps := e.ps(t)
	if len(ps.Pods) > 0 {
		t.Errorf("pods left in play's state: %+v", ps.Pods)
	}
	if s := e.playedSandboxes(t); len(s) > 0 {
		t.Errorf("sandboxes left in the CRI: %v", s)
	}
	if m := e.playMounts(); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
	var got, ids []string
	for _, c := range ps.Claims {
		got = append(got, c.Namespace+"/"+c.Name)
		if c.VolumeID != "" {
			ids = append(ids, c.VolumeID)
		}
	}
	slices.Sort(got)
	slices.Sort(claims)
	slices.Sort(ids)
	if !slices.Equal(got, claims) {
		t.Errorf("claims %v, want %v", got, claims)
	}
	if v := e.csiVolumes(t); !slices.Equal(v, ids) {
		t.Errorf("CSI volumes %v, want those of the claims %v", v, ids)
	}
	for _, d := range []string{"pods", "locks"} {
		if ents, _ := os.ReadDir(e.p("root/play/" + d)); len(ents) > 0 {
			t.Errorf("%s left: %v", d, ents)
		}
	}
}

// noSupervisor waits for the background supervisor to go, as it does once
// it has no pod left.
func (e *playEnv) noSupervisor(t *testing.T) {
	t.Helper()
	for i := 0; play.SupervisorPID(e.p("root/play")) != 0; i++ {
		if i > 100 {
			t.Fatal("the background supervisor does not exit without pods")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writeManifest writes a manifest for a test.
func (e *playEnv) writeManifest(t *testing.T, name, body string) string {
	t.Helper()
	p := e.p(name + ".yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// pod is a manifest of one busybox pod.
func pod(name, restart, spec string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\nspec:\n  restartPolicy: %s\n  terminationGracePeriodSeconds: 3\n%s", name, restart, spec)
}

// TestPlay plays the examples and more on one node stack: the web server
// with a hostPort serving a page from a claim that survives delete and
// replay, the init container and probes (a failing liveness probe
// restarts the container), restart policies with back-off, a foreground
// play adopted after kill -9 and removed by Ctrl-C, and bad input and
// faults, each leaving nothing behind.
func TestPlay(t *testing.T) {
	e := newPlayEnv(t)
	web, _ := filepath.Abs("../../examples/web.yaml")
	greeter, _ := filepath.Abs("../../examples/init-probe.yaml")

	t.Run("web", func(t *testing.T) {
		start := time.Now()
		out := e.playMust(t, "play", "-d", web)
		body := e.httpGet(t, "127.0.0.1:8080", "/", 2*time.Minute)
		t.Logf("tripod play -d examples/web.yaml to the first HTTP 200 on its hostPort: %.2fs (cold: image pulled, claim created)", time.Since(start).Seconds())
		t.Logf("tripod play -d:\n%s", out)
		m := regexp.MustCompile(`page ([0-9a-f-]{36}), written by pod web`).FindStringSubmatch(body)
		if m == nil || !strings.Contains(body, "Hello from tripod") {
			t.Fatalf("page: %q", body)
		}
		ps := e.waitPS(t, "web ready", time.Minute, func(ps psOut) bool {
			p := ps.pod("web")
			return p != nil && p.Phase == "Running" && container(p, "httpd").Ready
		})
		p := ps.pod("web")
		if p.IP == "" || !slices.Equal(p.Ports, []string{"8080->80/TCP"}) || p.Supervisor == 0 || p.Supervisor != ps.Supervisor {
			t.Errorf("ps: %+v (supervisor %d)", p, ps.Supervisor)
		}
		if c := container(p, "page"); !c.Init || c.State != "Exited" || c.ExitCode != 0 || c.Reason != "Completed" {
			t.Errorf("init container: %+v", c)
		}
		if len(ps.Claims) != 1 || ps.Claims[0].Name != "web-data" || ps.Claims[0].Size != 64<<20 || !ps.Claims[0].Staged ||
			!slices.Equal(ps.Claims[0].Users, []string{"default/web"}) {
			t.Errorf("claims: %+v", ps.Claims)
		}
		out = e.playMust(t, "ps")
		t.Logf("tripod ps:\n%s", out)
		if !strings.Contains(out, "default/web") || !strings.Contains(out, "page (init)") || !strings.Contains(out, "default/web-data") {
			t.Errorf("ps:\n%s", out)
		}
		if out := e.playMust(t, "logs", "web", "-c", "page"); out != "wrote the page\n" {
			t.Errorf("logs of the init container: %q", out)
		}
		if out := e.playMust(t, "exec", "web", "--", "cat", "/www/index.html"); !strings.Contains(body, strings.TrimSpace(out)) {
			t.Errorf("exec cat: %q, page %q", out, body)
		}
		// The claim is mounted read-only in httpd, its root filesystem too.
		for _, path := range []string{"/www/x", "/x"} {
			if out, err := e.play("exec", "web", "--", "touch", path); err == nil || !strings.Contains(out, "Read-only file system") {
				t.Errorf("touch %s: %v %q", path, err, out)
			}
		}
		var exitErr *exec.ExitError
		if _, err := e.play("exec", "web", "--", "sh", "-c", "exit 3"); !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 {
			t.Errorf("exec exit 3: %v", err)
		}
		if out, err := e.play("exec", "web", "-c", "page", "--", "true"); err == nil || !strings.Contains(out, "not running") {
			t.Errorf("exec into the exited init container: %v %q", err, out)
		}
		// Through the CRI's streaming Exec: stdin, and a terminal.
		if out := e.playIn(t, "to stdin\n", "exec", "-i", "web", "--", "sh", "-c", "read l; echo got $l; echo err >&2"); !strings.Contains(out, "got to stdin\n") || !strings.Contains(out, "err\n") {
			t.Errorf("exec -i: %q", out)
		}
		if out := e.playIn(t, "", "exec", "-t", "web", "--", "tty"); !strings.HasPrefix(out, "/dev/pts/") {
			t.Errorf("exec -t: %q", out)
		}

		start = time.Now()
		e.playMust(t, "delete", "web")
		t.Logf("tripod delete web: %.2fs", time.Since(start).Seconds())
		e.nothingPlayed(t, "default/web-data")
		if ps := e.ps(t); ps.Claims[0].Staged {
			t.Error("the claim is still staged with no pod using it")
		}

		start = time.Now()
		e.playMust(t, "play", "-d", web)
		again := e.httpGet(t, "127.0.0.1:8080", "/", time.Minute)
		t.Logf("replay to the first HTTP 200: %.2fs (warm: image present, claim kept)", time.Since(start).Seconds())
		if !strings.Contains(again, m[1]) {
			t.Fatalf("the page did not survive delete and replay: was %q, now %q", body, again)
		}
		if out := e.playMust(t, "logs", "web", "-c", "page"); !strings.HasPrefix(out, "page exists: ") {
			t.Errorf("logs of the init container after the replay: %q", out)
		}
		e.playMust(t, "delete", "--claims", "web")
		e.nothingPlayed(t)
	})

	t.Run("init and probes", func(t *testing.T) {
		e.playMust(t, "play", "-d", greeter)
		ps := e.waitPS(t, "greeter ready", time.Minute, func(ps psOut) bool {
			p := ps.pod("greeter")
			return p != nil && p.Phase == "Running" && container(p, "app").Ready
		})
		ip := ps.pod("greeter").IP
		// The init container ran first: the app read its file from the
		// shared emptyDir (and got its IP from the downward API).
		if out := e.playMust(t, "logs", "greeter"); !strings.Contains(out, "app "+ip+" read: hello from the init container of greeter") {
			t.Errorf("app's log: %q", out)
		}
		if out := e.playMust(t, "exec", "greeter", "--", "grep", " /work ", "/proc/mounts"); !strings.HasPrefix(out, "tmpfs /work tmpfs") || !strings.Contains(out, "size=1024k") {
			t.Errorf("emptyDir medium Memory: %q", out)
		}
		e.playMust(t, "exec", "greeter", "--", "rm", "/work/healthy")
		e.waitPS(t, "app restarted after its liveness probe failed", time.Minute, func(ps psOut) bool {
			c := container(ps.pod("greeter"), "app")
			return c.Restarts >= 1 && c.State == "Running" && c.Ready
		})
		if log, _ := os.ReadFile(e.p("root/play/supervisor.log")); !strings.Contains(string(log), "container app: Liveness probe failed 1 time(s)") {
			t.Errorf("supervisor.log:\n%s", log)
		}
		if out := e.playMust(t, "logs", "-p", "greeter"); !strings.HasSuffix(out, "stopping\n") {
			t.Errorf("the previous instance was not stopped with SIGTERM: %q", out)
		}
		// A sandbox that goes away (a reboot, or here crictl) is made anew,
		// and the init container runs again in it.
		old := e.ps(t).pod("greeter").Sandbox
		e.crictl("stopp", old)
		ps = e.waitPS(t, "greeter in a new sandbox", time.Minute, func(ps psOut) bool {
			p := ps.pod("greeter")
			return p.Sandbox != old && p.Phase == "Running" && container(p, "app").Ready
		})
		if out := e.playMust(t, "logs", "greeter"); !strings.Contains(out, "app "+ps.pod("greeter").IP+" read: hello from the init container") {
			t.Errorf("app's log in the new sandbox: %q", out)
		}
		if s := e.playedSandboxes(t); len(s) != 1 {
			t.Errorf("sandboxes: %v (the old one is removed)", s)
		}
		e.playMust(t, "delete", "greeter")
		e.nothingPlayed(t)
	})

	t.Run("restart policies", func(t *testing.T) {
		f := e.writeManifest(t, "policies", pod("never", "Never", `  containers:
  - name: c
    image: docker.io/library/busybox:1.37
    command: ["sh", "-c", "echo once; exit 1"]
`)+"---\n"+pod("onfailure", "OnFailure", `  containers:
  - name: c
    image: docker.io/library/busybox:1.37
    command: ["sh", "-c", "n=$(( $(cat /data/n 2>/dev/null || echo 0) + 1 )); echo $n > /data/n; echo run $n; [ $n -ge 2 ]"]
    volumeMounts:
    - name: data
      mountPath: /data
  volumes:
  - name: data
    emptyDir: {}
`)+"---\n"+pod("always", "Always", `  containers:
  - name: c
    image: docker.io/library/busybox:1.37
    command: ["sh", "-c", "echo run"]
`))
		e.playMust(t, "play", "-d", f)
		backedOff := false
		ps := e.waitPS(t, "policies honoured", 2*time.Minute, func(ps psOut) bool {
			a := container(ps.pod("always"), "c")
			backedOff = backedOff || a.Reason == "CrashLoopBackOff"
			return ps.pod("never").Phase == "Failed" && ps.pod("onfailure").Phase == "Succeeded" && a.Restarts >= 2
		})
		if c := container(ps.pod("never"), "c"); c.Restarts != 0 || c.ExitCode != 1 {
			t.Errorf("Never: %+v", c)
		}
		if c := container(ps.pod("onfailure"), "c"); c.Restarts != 1 || c.ExitCode != 0 {
			t.Errorf("OnFailure: %+v", c)
		}
		if out := e.playMust(t, "logs", "onfailure"); out != "run 2\n" {
			t.Errorf("OnFailure's second run: %q", out)
		}
		if !backedOff {
			t.Error("Always: never seen waiting in CrashLoopBackOff between restarts")
		}
		// A completed pod's sandbox is stopped (its IP and ports freed) and
		// kept, with its logs, until deleted.
		st, err := e.rt.PodSandboxStatus(context.Background(), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: ps.pod("never").Sandbox})
		if err != nil || st.Status.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
			t.Errorf("sandbox of the failed pod: %v %v", st, err)
		}
		if out := e.playMust(t, "logs", "never"); out != "once\n" {
			t.Errorf("logs of the failed pod: %q", out)
		}
		e.playMust(t, "delete", "-f", f)
		e.nothingPlayed(t)
	})

	t.Run("foreground", func(t *testing.T) {
		e.noSupervisor(t)
		f := e.writeManifest(t, "sleeper", pod("sleeper", "Always", `  containers:
  - name: c
    image: docker.io/library/busybox:1.37
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
`))
		fg1 := e.startPlay(t, f)
		fg1.waitLine(t, "default/sleeper: ready")
		ps := e.ps(t)
		sandbox := ps.pod("sleeper").Sandbox
		if ps.pod("sleeper").Supervisor != fg1.cmd.Process.Pid {
			t.Errorf("supervisor %d, want the foreground play %d", ps.pod("sleeper").Supervisor, fg1.cmd.Process.Pid)
		}
		if out := e.playMust(t, "play", "-d", f); !strings.Contains(out, fmt.Sprintf("pod default/sleeper is already running, supervised by pid %d", fg1.cmd.Process.Pid)) {
			t.Errorf("play -d of a supervised pod: %q", out)
		}
		fg1.cmd.Process.Kill()
		fg1.wait(t)
		ps = e.ps(t)
		if p := ps.pod("sleeper"); p == nil || p.Supervisor != 0 || p.Phase != "Running" || container(p, "c").State != "Running" {
			t.Fatalf("after kill -9 of its play: %+v", p)
		}
		fg2 := e.startPlay(t, f)
		fg2.waitLine(t, "default/sleeper: adopted (sandbox "+sandbox[:13]+")")
		if ps := e.ps(t); ps.pod("sleeper").Sandbox != sandbox || len(e.playedSandboxes(t)) != 1 {
			t.Errorf("adoption made another sandbox: %+v %v", ps.pod("sleeper"), e.playedSandboxes(t))
		}
		fg2.waitLine(t, "supervising default/sleeper until Ctrl-C")
		fg2.cmd.Process.Signal(syscall.SIGINT)
		fg2.waitLine(t, "default/sleeper: removed")
		if err := fg2.wait(t); err != nil {
			t.Errorf("foreground play after Ctrl-C: %v", err)
		}
		e.nothingPlayed(t)
	})

	t.Run("follow and completion", func(t *testing.T) {
		f := e.writeManifest(t, "counter", pod("counter", "Never", `  containers:
  - name: c
    image: docker.io/library/busybox:1.37
    command: ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 1; done; printf 'no newline'"]
`))
		e.playMust(t, "play", "-d", f)
		// The runtime ends the last line at the container's exit, as
		// containerd does.
		if out := e.playMust(t, "logs", "-f", "counter"); out != "1\n2\n3\nno newline\n" {
			t.Errorf("logs -f: %q", out)
		}
		e.playMust(t, "delete", "counter")
		// A foreground play returns once its pods have completed, failing
		// when one failed; the pods stay for their logs.
		f = e.writeManifest(t, "failing", pod("failing", "Never", `  containers:
  - name: c
    image: docker.io/library/busybox:1.37
    command: ["sh", "-c", "echo bye; exit 4"]
`))
		fg := e.startPlay(t, f)
		fg.waitLine(t, "default/failing: Failed: 1 container(s) failed")
		fg.waitLine(t, "pod(s) failed: default/failing")
		var exitErr *exec.ExitError
		if err := fg.wait(t); !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
			t.Errorf("foreground play of a failing pod: %v", err)
		}
		if out := e.playMust(t, "logs", "failing"); out != "bye\n" {
			t.Errorf("logs: %q", out)
		}
		e.playMust(t, "delete", "failing")
		e.nothingPlayed(t)
	})

	t.Run("security and volumes", func(t *testing.T) {
		os.MkdirAll(e.p("hostdir/a/b"), 0o755)
		os.WriteFile(e.p("hostdir/a/b/file"), []byte("from the host\n"), 0o644)
		f := e.writeManifest(t, "secure", pod("secure", "Always", fmt.Sprintf(`  hostAliases:
  - ip: 10.1.2.3
    hostnames: [db.example]
  dnsPolicy: None
  dnsConfig:
    nameservers: [10.0.0.10]
    searches: [example.local]
  securityContext:
    runAsUser: 1000
    runAsGroup: 3000
    fsGroup: 2000
    supplementalGroups: [4000]
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: caps
    image: docker.io/library/busybox:1.37
    command: ["sh", "-c", "grep -E 'CapEff|NoNewPrivs|Seccomp:' /proc/self/status; sleep 3600"]
    securityContext:
      runAsUser: 0
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
  - name: c
    image: docker.io/library/busybox:1.37
    command: ["sh", "-c", "id; stat -c '%%n %%g %%a' /scratch /data; touch /data/written && echo data writable; echo '$(GREETING)'; grep db.example /etc/hosts; grep -v '^#' /etc/resolv.conf; ls /img/bin/busybox; cat /sub/file; sleep 3600"]
    env:
    - {name: NAME, value: world}
    - {name: GREETING, value: "hello $(NAME), $$(NAME) kept"}
    resources:
      limits: {cpu: 100m, memory: 32Mi}
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    - {name: data, mountPath: /data}
    - {name: img, mountPath: /img}
    - {name: host, mountPath: /sub, subPath: a/b}
  volumes:
  - name: scratch
    emptyDir: {}
  - name: data
    persistentVolumeClaim: {claimName: secure-data}
  - name: img
    image: {reference: docker.io/library/busybox:1.37}
  - name: host
    hostPath: {path: %s, type: DirectoryOrCreate}
`, e.p("hostdir"))))
		e.playMust(t, "play", "-d", f)
		var out string
		for i := 0; i < 100 && !strings.Contains(out, "from the host"); i++ {
			time.Sleep(100 * time.Millisecond)
			out, _ = e.play("logs", "secure", "-c", "c")
		}
		// fsGroup and supplementalGroups are the process's groups, and
		// fsGroup owns the volumes, so uid 1000 writes the claim.
		for _, want := range []string{"uid=1000 gid=3000 groups=2000,3000,4000", "/scratch 2000 2777", "/data 2000 2775", "data writable", "hello world, $(NAME) kept",
			"10.1.2.3\tdb.example", "nameserver 10.0.0.10", "search example.local", "/img/bin/busybox", "from the host"} {
			if !strings.Contains(out, want) {
				t.Errorf("the container's output lacks %q:\n%s", want, out)
			}
		}
		caps := e.playMust(t, "logs", "secure", "-c", "caps")
		for _, want := range []string{"CapEff:\t0000000000000400", "NoNewPrivs:\t1", "Seccomp:\t2"} {
			if !strings.Contains(caps, want) {
				t.Errorf("capabilities, no_new_privs, seccomp: lacks %q:\n%s", want, caps)
			}
		}
		ps := e.ps(t)
		st, err := e.rt.ContainerStatus(context.Background(), &runtimeapi.ContainerStatusRequest{ContainerId: container(ps.pod("secure"), "c").ID})
		if err != nil {
			t.Fatal(err)
		}
		if r := st.Status.Resources.GetLinux(); r.GetMemoryLimitInBytes() != 32<<20 || r.GetCpuQuota() != 10000 || r.GetCpuPeriod() != 100000 || r.GetCpuShares() != 102 {
			t.Errorf("resources: %+v", r)
		}
		e.playMust(t, "delete", "--claims", "secure")
		e.nothingPlayed(t)
		if _, err := os.Stat(e.p("hostdir/a/b/file")); err != nil {
			t.Errorf("hostPath content: %v", err)
		}
	})

	t.Run("killed while starting", func(t *testing.T) {
		// An image whose layer download stalls holds the start after the
		// claim, the volumes and the sandbox were made; kill -9 then. (No
		// background supervisor runs meanwhile: it would finish the
		// interrupted start itself.)
		e.noSupervisor(t)
		entries, _ := imagetest.Busybox()
		layer := imagetest.Layer(append(entries, imagetest.Entry{Name: "stall", Body: e.tag})...)
		e.push(t, "library/stall:1", imagetest.Image(runtime.GOARCH, "", layer))
		d, _ := layer.Digest()
		release := e.reg.Stall(d)
		defer release()
		f := e.writeManifest(t, "stalled", pod("stalled", "Always", `  containers:
  - name: c
    image: docker.io/library/stall:1
    command: ["sleep", "3600"]
    volumeMounts:
    - {name: data, mountPath: /data}
    - {name: mem, mountPath: /mem}
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: stalled-data}
  - name: mem
    emptyDir: {medium: Memory}
`))
		cmd := exec.Command(tripod, append(append([]string{"play", "-d"}, e.playArgs()...), f)...)
		e.ns.Do(t, cmd.Start)
		select {
		case <-e.reg.Stalled():
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("the pull never reached the stalled layer")
		}
		cmd.Process.Kill()
		cmd.Wait()
		ps := e.ps(t)
		if p := ps.pod("stalled"); p == nil || p.Phase != "Interrupted" || len(e.playedSandboxes(t)) != 1 || len(e.playMounts()) == 0 {
			t.Fatalf("after kill -9 mid-start: %+v, sandboxes %v, mounts %v", p, e.playedSandboxes(t), e.playMounts())
		}
		release()
		out := e.playMust(t, "play", "-d", f)
		if !strings.Contains(out, "default/stalled: finishing the interrupted start") {
			t.Errorf("replay after the interrupted start:\n%s", out)
		}
		e.waitPS(t, "stalled running", time.Minute, func(ps psOut) bool {
			p := ps.pod("stalled")
			return p != nil && p.Phase == "Running" && container(p, "c").State == "Running"
		})
		if s := e.playedSandboxes(t); len(s) != 1 {
			t.Errorf("sandboxes: %v", s)
		}
		e.playMust(t, "delete", "--claims", "stalled")
		e.nothingPlayed(t)
	})

	t.Run("killed while deleting", func(t *testing.T) {
		// sleep as PID 1 ignores SIGTERM: the deletion waits out the grace
		// period in StopContainer, and is killed there.
		f := e.writeManifest(t, "stubborn", pod("stubborn", "Always", `  containers:
  - name: c
    image: docker.io/library/busybox:1.37
    command: ["sleep", "3600"]
    volumeMounts:
    - {name: mem, mountPath: /mem}
  volumes:
  - name: mem
    emptyDir: {medium: Memory}
`))
		e.playMust(t, "play", "-d", f)
		e.waitPS(t, "stubborn running", time.Minute, func(ps psOut) bool {
			p := ps.pod("stubborn")
			return p != nil && container(p, "c").State == "Running"
		})
		cmd := exec.Command(tripod, append(append([]string{"delete"}, e.playArgs()...), "stubborn")...)
		e.ns.Do(t, cmd.Start)
		e.waitPS(t, "stubborn deleting", time.Minute, func(ps psOut) bool {
			p := ps.pod("stubborn")
			return p != nil && p.Phase == "Deleting"
		})
		cmd.Process.Kill()
		cmd.Wait()
		// The background supervisor finishes a deletion whose process died.
		e.waitPS(t, "the deletion finished", time.Minute, func(ps psOut) bool { return ps.pod("stubborn") == nil })
		if log, _ := os.ReadFile(e.p("root/play/supervisor.log")); !strings.Contains(string(log), "default/stubborn: finishing the interrupted deletion") {
			t.Errorf("supervisor.log:\n%s", log)
		}
		e.nothingPlayed(t)
	})

	t.Run("bad input", func(t *testing.T) {
		bad := func(t *testing.T, manifest, want string, claims ...string) {
			t.Helper()
			f := e.writeManifest(t, "bad", manifest)
			out, err := e.play("play", "-d", f)
			if err == nil || !strings.Contains(out, want) {
				t.Fatalf("play: %v\n%s\nwant %q", err, out, want)
			}
			t.Logf("%s", out)
			e.nothingPlayed(t, claims...)
		}
		const img = "docker.io/library/busybox:1.37"
		t.Run("unknown field", func(t *testing.T) {
			bad(t, pod("bad", "Always", "  containers:\n  - name: c\n    image: "+img+"\n    imagee: x\n"),
				`pod default/bad: unknown field "spec.containers[0].imagee"`)
		})
		t.Run("unknown volume type", func(t *testing.T) {
			bad(t, pod("bad", "Always", "  containers:\n  - name: c\n    image: "+img+"\n  volumes:\n  - name: v\n    configMap:\n      name: c\n"),
				"pod default/bad: spec.volumes[0].configMap: volume type not supported by tripod play")
		})
		t.Run("unknown CSI driver", func(t *testing.T) {
			bad(t, pod("bad", "Always", "  containers:\n  - name: c\n    image: "+img+"\n  volumes:\n  - name: v\n    csi:\n      driver: other.example.com\n"),
				`pod default/bad: spec.volumes[0].csi.driver: unknown CSI driver "other.example.com" (this node has csi.tripod.dev)`)
		})
		// A claim that exists before a failed play is kept; one the failed
		// play created is deleted again.
		e.playMust(t, "play", "-d", e.writeManifest(t, "keeper", pod("keeper", "Always",
			"  containers:\n  - name: c\n    image: "+img+"\n    command: [sleep, '3600']\n    volumeMounts:\n    - {name: v, mountPath: /v}\n  volumes:\n  - name: v\n    persistentVolumeClaim:\n      claimName: kept\n")))
		e.playMust(t, "delete", "keeper")
		volumes := `    volumeMounts:
    - {name: kept, mountPath: /kept}
    - {name: fresh, mountPath: /fresh}
    - {name: inline, mountPath: /inline}
    - {name: mem, mountPath: /mem}
    - {name: sub, mountPath: /sub, subPath: a/b}
  volumes:
  - name: kept
    persistentVolumeClaim: {claimName: kept}
  - name: fresh
    persistentVolumeClaim: {claimName: fresh}
  - name: inline
    csi:
      driver: csi.tripod.dev
      volumeAttributes: {size: 16Mi}
  - name: mem
    emptyDir: {medium: Memory}
  - name: sub
    emptyDir: {}
`
		t.Run("missing image", func(t *testing.T) {
			bad(t, pod("bad", "Always", "  containers:\n  - name: c\n    image: docker.io/library/nope:1\n"+volumes),
				"pod default/bad: spec.containers[0].image: image docker.io/library/nope:1 not found", "default/kept")
		})
		t.Run("command not found", func(t *testing.T) {
			bad(t, pod("bad", "Always", "  containers:\n  - name: c\n    image: "+img+"\n    command: [/nonexistent]\n"+volumes),
				"pod default/bad: spec.containers[0] (c): ", "default/kept")
		})
		t.Run("subPath through a symlink", func(t *testing.T) {
			os.MkdirAll(e.p("evil"), 0o755)
			os.Symlink("/etc", e.p("evil/link"))
			bad(t, pod("bad", "Always", fmt.Sprintf("  containers:\n  - name: c\n    image: %s\n    volumeMounts:\n    - {name: fresh, mountPath: /fresh}\n    - {name: h, mountPath: /h, subPath: link/x}\n  volumes:\n  - name: fresh\n    persistentVolumeClaim: {claimName: fresh}\n  - name: h\n    hostPath: {path: %s}\n", img, e.p("evil"))),
				"pod default/bad: spec.containers[0].volumeMounts[1].subPath: link is a symbolic link", "default/kept")
		})
		t.Run("port in use on the host", func(t *testing.T) {
			var l net.Listener
			e.ns.Do(t, func() error {
				var err error
				l, err = net.Listen("tcp", "127.0.0.1:8085")
				return err
			})
			defer l.Close()
			bad(t, pod("bad", "Always", "  containers:\n  - name: c\n    image: "+img+"\n    ports:\n    - {containerPort: 80, hostPort: 8085}\n"+volumes),
				fmt.Sprintf("pod default/bad: spec.containers[0].ports[0].hostPort: 8085/TCP is already in use on this host by pid %d", os.Getpid()), "default/kept")
		})
		t.Run("port of another played pod", func(t *testing.T) {
			e.playMust(t, "play", "-d", e.writeManifest(t, "holder", pod("holder", "Always",
				"  containers:\n  - name: c\n    image: "+img+"\n    command: [sleep, '3600']\n    ports:\n    - {containerPort: 80, hostPort: 8086}\n")))
			f := e.writeManifest(t, "bad", pod("bad", "Always", "  containers:\n  - name: c\n    image: "+img+"\n    ports:\n    - {containerPort: 81, hostPort: 8086}\n"))
			out, err := e.play("play", "-d", f)
			if err == nil || !strings.Contains(out, "pod default/bad: spec.containers[0].ports[0].hostPort: 8086/TCP is already mapped by pod default/holder") {
				t.Fatalf("play: %v\n%s", err, out)
			}
			e.playMust(t, "delete", "holder")
			e.nothingPlayed(t, "default/kept")
		})
		t.Run("port of a CRI pod", func(t *testing.T) {
			// A pod tripod play does not know (crictl's): the portmap plugin
			// refuses the mapping at RunPodSandbox, after the volumes.
			podJSON, _ := json.Marshal(map[string]any{
				"metadata":      map[string]any{"name": "other", "namespace": "default", "uid": e.tag + "-other"},
				"port_mappings": []map[string]any{{"container_port": 80, "host_port": 8087}},
			})
			os.WriteFile(e.p("other.json"), podJSON, 0o644)
			other := e.crictl("runp", e.p("other.json"))
			defer func() { e.crictl("stopp", other); e.crictl("rmp", other) }()
			bad(t, pod("bad", "Always", "  containers:\n  - name: c\n    image: "+img+"\n    ports:\n    - {containerPort: 80, hostPort: 8087}\n"+volumes),
				"pod default/bad: spec.containers[0].ports[0].hostPort (8087/TCP): RunPodSandbox: ", "default/kept")
		})
	})

	// tripod down --pods deletes the played pods through play (their
	// volumes unpublished) before removing every sandbox; claims stay.
	e.playMust(t, "play", "-d", web)
	e.httpGet(t, "127.0.0.1:8080", "/", time.Minute)
	// tripod up starts a supervisor for played pods left without one.
	sup := play.SupervisorPID(e.p("root/play"))
	if sup == 0 {
		t.Fatal("no background supervisor")
	}
	syscall.Kill(sup, syscall.SIGKILL)
	for play.SupervisorPID(e.p("root/play")) != 0 {
		time.Sleep(10 * time.Millisecond)
	}
	if out := e.must(append([]string{"up"}, e.upArgs()...)...); !strings.Contains(out, "resumed supervising 1 played pod(s)") {
		t.Errorf("up with an unsupervised played pod:\n%s", out)
	}
	if p := e.ps(t).pod("web"); p.Supervisor == 0 || p.Supervisor == sup {
		t.Errorf("web's supervisor after up: %d (killed: %d)", p.Supervisor, sup)
	}
	if out := e.must(append([]string{"down", "--pods"}, e.playArgs()...)...); !strings.Contains(out, "default/web: deleted") {
		t.Errorf("down --pods:\n%s", out)
	}
	if m := e.playMounts(); len(m) > 0 {
		t.Errorf("mounts after down --pods: %v", m)
	}
	e.must(append([]string{"up"}, e.upArgs()...)...)
	e.nothingPlayed(t, "default/kept", "default/web-data")
	e.playMust(t, "delete", "--claims", "-f", web)
	e.playMust(t, "delete", "--all", "--claims")
	e.nothingPlayed(t)
}

// fgPlay is a foreground `tripod play` the test started.
type fgPlay struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan error
}

// startPlay starts a foreground `tripod play FILE` in the test's
// namespace.
func (e *playEnv) startPlay(t *testing.T, file string) *fgPlay {
	t.Helper()
	cmd := exec.Command(tripod, append(append([]string{"play"}, e.playArgs()...), file)...)
	cmd.Env = append(os.Environ(), "PATH="+e.path)
	r, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w
	e.ns.Do(t, cmd.Start)
	p := &fgPlay{cmd: cmd, lines: make(chan string, 1000), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	go func() {
		p.done <- cmd.Wait()
		w.Close()
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	return p
}

// waitLine reads the output until a line contains want.
func (p *fgPlay) waitLine(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(time.Minute)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("output ended without %q", want)
			}
			t.Logf("play: %s", l)
			if strings.Contains(l, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no %q within a minute", want)
		}
	}
}

// wait waits for the process to exit.
func (p *fgPlay) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.done:
		return err
	case <-time.After(2 * time.Minute):
		t.Fatal("tripod play does not exit")
	}
	return nil
}
