package main_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// secImage is busybox with users and groups as critest's test images have
// them, and /usr/local/bin/euid: a setuid-root static program that prints
// its effective uid (what critest's nonewprivs image does).
func secImage(t *testing.T) []imagetest.Entry {
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	os.WriteFile(src, []byte("package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() { fmt.Printf(\"Effective uid: %d\\n\", os.Geteuid()) }\n"), 0o644)
	bin := filepath.Join(dir, "euid")
	cmd := exec.Command("go", "build", "-o", bin, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build euid: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	es := busyboxImage(t)
	for i := range es {
		switch es[i].Name {
		case "etc/passwd":
			es[i].Body = "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\n" +
				"default-user:x:1000:1000::/home:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"
		case "etc/group":
			es[i].Body = "root:x:0:\nwww-data:x:33:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\nnogroup:x:65534:\n"
		}
	}
	return append(es, imagetest.Entry{Name: "usr/", Type: '5'}, imagetest.Entry{Name: "usr/local/", Type: '5'},
		imagetest.Entry{Name: "usr/local/bin/", Type: '5'}, imagetest.Entry{Name: "usr/local/bin/euid", Body: string(b), Mode: 0o4755})
}

// secEnv is a podEnv with secImage pulled and a second runtime handler,
// "old", on Debian's runc 1.1 (no idmapped mounts).
func secEnv(t *testing.T) (*podEnv, string) {
	runtimePrereqs(t)
	var image string
	e := newPodEnvWith(t, cnitest.BinDir(t), func(e *podEnv, reg *imagetest.Registry) {
		reg.Push(t, "test/sec:1", imagetest.Image(runtime.GOARCH, "", imagetest.Layer(secImage(t)...)))
		image = reg.Host + "/test/sec:1"
		f, _ := os.OpenFile(filepath.Join(e.n.state, "none.toml"), os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString("[runtime.handlers.old]\npath = \"/usr/sbin/runc\"\n")
		f.Close()
	})
	if _, err := e.img.PullImage(testCtx(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: image}}); err != nil {
		t.Fatal(err)
	}
	return e, image
}

// sub is e for a subtest: its helpers fail t.
func (e *podEnv) sub(t *testing.T) *podEnv {
	c := *e
	c.t = t
	return &c
}

// podWith runs a pod whose config f adjusts.
func (e *podEnv) podWith(name string, f func(*runtimeapi.PodSandboxConfig)) (string, *runtimeapi.PodSandboxConfig, error) {
	cfg := e.podConfig(name)
	if f != nil {
		f(cfg)
	}
	resp, err := e.rt.RunPodSandbox(testCtx(e.t), &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return "", cfg, err
	}
	return resp.PodSandboxId, cfg, nil
}

// ctrWith creates a container of image running cmd, with sc as its
// security context.
func (e *podEnv) ctrWith(pod string, pcfg *runtimeapi.PodSandboxConfig, name, image string, sc *runtimeapi.LinuxContainerSecurityContext, mounts []*runtimeapi.Mount, cmd ...string) (string, error) {
	resp, err := e.rt.CreateContainer(testCtx(e.t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, SandboxConfig: pcfg,
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image: &runtimeapi.ImageSpec{Image: image, UserSpecifiedImage: "user/" + name}, Command: cmd, LogPath: name + ".log",
			Mounts: mounts, Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: sc}}})
	if err != nil {
		return "", err
	}
	return resp.ContainerId, nil
}

// running creates and starts a container that sleeps, failing the test
// on error.
func (e *podEnv) running(pod string, pcfg *runtimeapi.PodSandboxConfig, name, image string, sc *runtimeapi.LinuxContainerSecurityContext, mounts ...*runtimeapi.Mount) string {
	e.t.Helper()
	id, err := e.ctrWith(pod, pcfg, name, image, sc, mounts, "sleep", "1000")
	if err != nil {
		e.t.Fatalf("CreateContainer %s: %v", name, err)
	}
	e.start(id)
	return id
}

// sh runs a shell command in a container.
func (e *podEnv) sh(id, script string) (stdout, stderr string, code int32) {
	e.t.Helper()
	r, err := e.rt.ExecSync(testCtx(e.t), &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"sh", "-c", script}, Timeout: 30})
	if err != nil {
		e.t.Fatalf("ExecSync %q: %v", script, err)
	}
	return strings.TrimSpace(string(r.Stdout)), strings.TrimSpace(string(r.Stderr)), r.ExitCode
}

// mustSh runs a shell command that must succeed and returns its output.
func (e *podEnv) mustSh(id, script string) string {
	e.t.Helper()
	out, errOut, code := e.sh(id, script)
	if code != 0 {
		e.t.Fatalf("%q: exit %d, stdout %q, stderr %q", script, code, out, errOut)
	}
	return out
}

func wantCode(t *testing.T, err error, code codes.Code, text string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(err.Error(), text) {
		t.Fatalf("got %v, want %v mentioning %q", err, code, text)
	}
}

// capMask is the capability mask of names, within this host's bounding set.
func capMask(t *testing.T, names ...string) uint64 {
	all := []string{"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
		"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
		"SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE",
		"SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN",
		"SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"}
	var m uint64
	for _, n := range names {
		i := slices.Index(all, n)
		if i < 0 {
			t.Fatalf("no capability %s", n)
		}
		m |= 1 << i
	}
	return m & hostCap(t, "CapBnd")
}

func hostCap(t *testing.T, field string) uint64 {
	b, _ := os.ReadFile("/proc/self/status")
	return parseCap(t, string(b), field)
}

func parseCap(t *testing.T, status, field string) uint64 {
	t.Helper()
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in %q", field, status)
	return 0
}

var dockerCapNames = []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}

// TestSecurityContext runs containers with the CRI's security context
// options through tripodd and real runc, and checks each from inside: who
// the process is, its capabilities, its filesystem, its seccomp filter,
// privileges, and the errors for what cannot be done.
func TestSecurityContext(t *testing.T) {
	e, image := secEnv(t)
	ctx := testCtx(t)
	pod, pcfg, err := e.podWith("sec", nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.rt.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil || !st.Features.GetSupplementalGroupsPolicy() {
		t.Fatalf("Status features: %v %v", st.GetFeatures(), err)
	}

	t.Run("user and groups", func(t *testing.T) {
		e := e.sub(t)
		i64 := func(v int64) *runtimeapi.Int64Value { return &runtimeapi.Int64Value{Value: v} }
		// Merge: the image's /etc/group adds 50000 for default-user.
		c := e.running(pod, pcfg, "merge", image, &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(1000), SupplementalGroups: []int64{1234}})
		if got := e.mustSh(c, "id -u; id -g; id -G"); got != "1000\n1000\n1000 1234 50000" {
			t.Fatalf("merge: id says %q", got)
		}
		// The first process has them too, not only exec'd ones.
		if got := e.mustSh(c, "grep -E '^(Uid|Gid|Groups):' /proc/1/status | tr -s '\\t ' ' '"); got != "Uid: 1000 1000 1000 1000\nGid: 1000 1000 1000 1000\nGroups: 1000 1234 50000" {
			t.Fatalf("merge: pid 1 %q", got)
		}
		u := e.status(c).GetUser().GetLinux()
		if u.GetUid() != 1000 || u.GetGid() != 1000 || !slices.Equal(slices.Sorted(slices.Values(u.GetSupplementalGroups())), []int64{1000, 1234, 50000}) {
			t.Fatalf("merge: status user %v", u)
		}
		c = e.running(pod, pcfg, "strict", image, &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(1000), SupplementalGroups: []int64{1234},
			SupplementalGroupsPolicy: runtimeapi.SupplementalGroupsPolicy_Strict})
		if got := e.mustSh(c, "id -G"); got != "1000 1234" {
			t.Fatalf("strict: id -G %q", got)
		}
		if u := e.status(c).GetUser().GetLinux(); !slices.Equal(slices.Sorted(slices.Values(u.GetSupplementalGroups())), []int64{1000, 1234}) {
			t.Fatalf("strict: status user %v", u)
		}
		c = e.running(pod, pcfg, "byname", image, &runtimeapi.LinuxContainerSecurityContext{RunAsUsername: "www-data"})
		if got := e.mustSh(c, "id -un; id -u; id -g"); got != "www-data\n33\n33" {
			t.Fatalf("by name: %q", got)
		}
		c = e.running(pod, pcfg, "group", image, &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(1001), RunAsGroup: i64(1002)})
		if got := e.mustSh(c, "echo $(id -u):$(id -g)"); got != "1001:1002" {
			t.Fatalf("uid and gid: %q", got)
		}
		_, err := e.ctrWith(pod, pcfg, "nouser", image, &runtimeapi.LinuxContainerSecurityContext{RunAsGroup: i64(1002)}, nil, "true")
		wantCode(t, err, codes.InvalidArgument, "run_as_group")
		_, err = e.ctrWith(pod, pcfg, "noname", image, &runtimeapi.LinuxContainerSecurityContext{RunAsUsername: "ghost"}, nil, "true")
		wantCode(t, err, codes.InvalidArgument, "ghost")
	})

	t.Run("capabilities", func(t *testing.T) {
		e := e.sub(t)
		for _, tc := range []struct {
			name      string
			add, drop []string
			want      []string // nil: all of the host's
		}{
			{name: "default", want: dockerCapNames},
			{name: "add", add: []string{"NET_ADMIN", "cap_sys_time"}, want: append(slices.Clone(dockerCapNames), "NET_ADMIN", "SYS_TIME")},
			{name: "drop", drop: []string{"NET_RAW", "CAP_CHOWN"}, want: slices.DeleteFunc(slices.Clone(dockerCapNames), func(c string) bool { return c == "NET_RAW" || c == "CHOWN" })},
			{name: "dropall", drop: []string{"ALL"}, want: []string{}},
			{name: "dropall-add", drop: []string{"ALL"}, add: []string{"KILL"}, want: []string{"KILL"}},
			{name: "addall", add: []string{"ALL"}},
		} {
			c := e.running(pod, pcfg, "caps-"+tc.name, image, &runtimeapi.LinuxContainerSecurityContext{
				Capabilities: &runtimeapi.Capability{AddCapabilities: tc.add, DropCapabilities: tc.drop}})
			status := e.mustSh(c, "cat /proc/self/status")
			want := hostCap(t, "CapBnd")
			if tc.want != nil {
				want = capMask(t, tc.want...)
			}
			if eff, bnd := parseCap(t, status, "CapEff"), parseCap(t, status, "CapBnd"); eff != want || bnd != want {
				t.Errorf("%s: CapEff %x CapBnd %x, want %x", tc.name, eff, bnd, want)
			}
		}
		// What the capabilities allow, for real: NET_ADMIN makes a bridge
		// (in the pod's network namespace), and without NET_RAW no ping.
		c := e.running(pod, pcfg, "netadmin", image, &runtimeapi.LinuxContainerSecurityContext{Capabilities: &runtimeapi.Capability{AddCapabilities: []string{"NET_ADMIN"}}})
		e.mustSh(c, "brctl addbr tpsecbr0 && brctl delbr tpsecbr0")
		c = e.running(pod, pcfg, "noraw", image, &runtimeapi.LinuxContainerSecurityContext{Capabilities: &runtimeapi.Capability{DropCapabilities: []string{"NET_RAW"}}})
		if _, errOut, code := e.sh(c, "ping -c1 127.0.0.1"); code == 0 || !strings.Contains(strings.ToLower(errOut), "permission denied") {
			t.Errorf("ping without NET_RAW: exit %d, %q", code, errOut)
		}
		_, err := e.ctrWith(pod, pcfg, "badcap", image, &runtimeapi.LinuxContainerSecurityContext{Capabilities: &runtimeapi.Capability{AddCapabilities: []string{"FLY"}}}, nil, "true")
		wantCode(t, err, codes.InvalidArgument, "FLY")
	})

	t.Run("readonly rootfs and paths", func(t *testing.T) {
		e := e.sub(t)
		c := e.running(pod, pcfg, "rofs", image, &runtimeapi.LinuxContainerSecurityContext{ReadonlyRootfs: true})
		if _, errOut, code := e.sh(c, "touch /newfile"); code == 0 || !strings.Contains(errOut, "Read-only file system") {
			t.Errorf("write to a read-only rootfs: exit %d, %q", code, errOut)
		}
		e.mustSh(c, "echo ok > /dev/shm/f && cat /dev/shm/f") // the pod's /dev/shm stays writable
		c = e.running(pod, pcfg, "paths", image, &runtimeapi.LinuxContainerSecurityContext{MaskedPaths: []string{"/etc/group"}, ReadonlyPaths: []string{"/tmp"}})
		if _, errOut, code := e.sh(c, "touch /tmp/x"); code == 0 || !strings.Contains(errOut, "Read-only file system") {
			t.Errorf("read-only path: exit %d, %q", code, errOut)
		}
		// The CRI's list replaces the defaults: /proc/timer_list is not
		// masked then, and is with the defaults.
		if out := e.mustSh(c, "wc -c < /etc/group; stat -c %t,%T /proc/timer_list"); out != "0\n0,0" {
			t.Errorf("masked /etc/group, unmasked /proc/timer_list: %q", out)
		}
		def := e.running(pod, pcfg, "defpaths", image, nil)
		if out := e.mustSh(def, "stat -c %t,%T /proc/timer_list"); out != "1,3" {
			t.Errorf("default masked path /proc/timer_list is %s, want /dev/null (1,3)", out)
		}
	})

	t.Run("no_new_privs", func(t *testing.T) {
		e := e.sub(t)
		for _, nnp := range []bool{true, false} {
			name := fmt.Sprintf("nnp-%v", nnp)
			id, err := e.ctrWith(pod, pcfg, name, image, &runtimeapi.LinuxContainerSecurityContext{NoNewPrivs: nnp,
				RunAsUser: &runtimeapi.Int64Value{Value: 1000}}, nil, "/usr/local/bin/euid")
			if err != nil {
				t.Fatal(err)
			}
			e.start(id)
			e.waitExited(id)
			want := "Effective uid: 0"
			if nnp {
				want = "Effective uid: 1000"
			}
			waitFor(t, filepath.Join(e.logDir, "sec", name+".log"), "stdout F "+want)
		}
	})

	t.Run("seccomp", func(t *testing.T) {
		e := e.sub(t)
		dir := t.TempDir()
		denyMkdir := filepath.Join(dir, "deny-mkdir.json")
		os.WriteFile(denyMkdir, []byte(`{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}`), 0o600)
		def := e.running(pod, pcfg, "sc-default", image, &runtimeapi.LinuxContainerSecurityContext{Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}})
		if got := e.mustSh(def, "grep Seccomp: /proc/self/status | tr -d '\\t '"); got != "Seccomp:2" {
			t.Errorf("RuntimeDefault: %q, want a filter", got)
		}
		// Ordinary work goes on...
		if got := e.mustSh(def, "mkdir /tmp/d && echo hi > /tmp/d/f && chmod 600 /tmp/d/f && ln -s f /tmp/d/l && cat /tmp/d/l && (sleep 0.1 & wait) && ls /proc/self/fd >/dev/null && echo done"); got != "hi\ndone" {
			t.Errorf("RuntimeDefault blocks ordinary work: %q", got)
		}
		// ...but a new user namespace (no capability needed for one) is
		// refused, as are the kernel keyrings and the like.
		if _, errOut, code := e.sh(def, "unshare -U true"); code == 0 || !strings.Contains(errOut, "Operation not permitted") {
			t.Errorf("RuntimeDefault let unshare -U through: exit %d, %q", code, errOut)
		}
		unc := e.running(pod, pcfg, "sc-unconfined", image, &runtimeapi.LinuxContainerSecurityContext{Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}})
		if got := e.mustSh(unc, "grep Seccomp: /proc/self/status | tr -d '\\t '"); got != "Seccomp:0" {
			t.Errorf("Unconfined: %q", got)
		}
		e.mustSh(unc, "unshare -U true && mkdir /tmp/x")
		// No profile at all is unconfined too, as the CRI says.
		if got := e.mustSh(e.running(pod, pcfg, "sc-nil", image, nil), "grep Seccomp: /proc/self/status | tr -d '\\t '"); got != "Seccomp:0" {
			t.Errorf("no profile: %q", got)
		}
		for name, sc := range map[string]*runtimeapi.LinuxContainerSecurityContext{
			"sc-local":      {Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: denyMkdir}},
			"sc-deprecated": {SeccompProfilePath: "localhost/" + denyMkdir},
		} {
			c := e.running(pod, pcfg, name, image, sc)
			if _, errOut, code := e.sh(c, "mkdir /tmp/x"); code == 0 || !strings.Contains(errOut, "Operation not permitted") {
				t.Errorf("%s: mkdir: exit %d, %q", name, code, errOut)
			}
			e.mustSh(c, "touch /tmp/y && unshare -U true")
		}
		//lint:ignore SA1019 the deprecated field is still honoured
		if got := e.mustSh(e.running(pod, pcfg, "sc-deprecated-default", image, &runtimeapi.LinuxContainerSecurityContext{SeccompProfilePath: "runtime/default"}),
			"grep Seccomp: /proc/self/status | tr -d '\\t '"); got != "Seccomp:2" {
			t.Errorf("runtime/default: %q", got)
		}

		// A profile that is missing, relative or invalid: a clear error,
		// and nothing left behind.
		before, _ := os.ReadDir(filepath.Join(e.n.state, "runtime", "containers"))
		bad := filepath.Join(dir, "bad.json")
		os.WriteFile(bad, []byte(`{"defaultAction":"SCMP_ACT_SOMETIMES"}`), 0o600)
		for ref, want := range map[string]string{filepath.Join(dir, "missing.json"): "missing.json", "relative.json": "absolute", bad: "SCMP_ACT_SOMETIMES"} {
			_, err := e.ctrWith(pod, pcfg, "sc-bad", image, &runtimeapi.LinuxContainerSecurityContext{
				Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: ref}}, nil, "true")
			wantCode(t, err, codes.InvalidArgument, want)
		}
		after, _ := os.ReadDir(filepath.Join(e.n.state, "runtime", "containers"))
		if len(after) != len(before) {
			t.Errorf("a failed create left a bundle: %d → %d", len(before), len(after))
		}
		ls, err := e.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range ls.Containers {
			if c.Metadata.Name == "sc-bad" {
				t.Errorf("a failed create left container %s", c.Id)
			}
		}
		// The name is free again.
		e.running(pod, pcfg, "sc-bad", image, nil)
	})

	t.Run("privileged", func(t *testing.T) {
		e := e.sub(t)
		_, err := e.ctrWith(pod, pcfg, "priv-in-plain", image, &runtimeapi.LinuxContainerSecurityContext{Privileged: true}, nil, "true")
		wantCode(t, err, codes.InvalidArgument, "privileged")
		ppod, ppcfg, err := e.podWith("privpod", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{Privileged: true}
		})
		if err != nil {
			t.Fatal(err)
		}
		var dev string
		for _, d := range []string{"/dev/loop-control", "/dev/kmsg", "/dev/mem", "/dev/vda", "/dev/sda"} {
			if _, err := os.Stat(d); err == nil {
				dev = d
				break
			}
		}
		if dev == "" {
			t.Fatal("the host has none of the devices this test looks for")
		}
		// A seccomp profile is ignored in privileged mode.
		priv := e.running(ppod, ppcfg, "priv", image, &runtimeapi.LinuxContainerSecurityContext{Privileged: true,
			Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}})
		plain := e.running(ppod, ppcfg, "plain", image, nil)
		e.mustSh(priv, "test -e "+dev)
		if _, _, code := e.sh(plain, "test -e "+dev); code == 0 {
			t.Errorf("an unprivileged container sees %s", dev)
		}
		out := e.mustSh(priv, "cat /proc/self/status; grep -E ' /sys (sysfs|cgroup)' /proc/mounts; grep ' /sys/fs/cgroup' /proc/mounts | head -1; cat /proc/self/status | grep Seccomp:")
		if eff := parseCap(t, out, "CapEff"); eff != hostCap(t, "CapBnd") {
			t.Errorf("privileged CapEff %x, want the host's %x", eff, hostCap(t, "CapBnd"))
		}
		if !strings.Contains(out, " rw,") || strings.Contains(strings.SplitN(out, "Seccomp:", 3)[2], "2") {
			t.Errorf("privileged mounts or seccomp:\n%s", out)
		}
		e.mustSh(priv, "hostname tpsec-renamed && echo 1 > /proc/sys/net/ipv4/ip_forward")
	})

	t.Run("apparmor", func(t *testing.T) {
		e := e.sub(t)
		_, err := e.ctrWith(pod, pcfg, "aa", image, &runtimeapi.LinuxContainerSecurityContext{
			Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "localhost/tp-deny-write"}}, nil, "true")
		if _, serr := os.Stat("/sys/kernel/security/apparmor"); serr != nil {
			wantCode(t, err, codes.InvalidArgument, "AppArmor is not enabled")
		} else {
			wantCode(t, err, codes.InvalidArgument, "not loaded")
		}
		//lint:ignore SA1019 the deprecated field is still honoured
		_, err = e.ctrWith(pod, pcfg, "aa-old", image, &runtimeapi.LinuxContainerSecurityContext{ApparmorProfile: "localhost/tp-deny-write"}, nil, "true")
		wantCode(t, err, codes.InvalidArgument, "tp-deny-write")
		e.running(pod, pcfg, "aa-default", image, &runtimeapi.LinuxContainerSecurityContext{Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}})
	})

	t.Run("recursive read-only mounts", func(t *testing.T) {
		e := e.sub(t)
		st, err := e.rt.Status(ctx, &runtimeapi.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range st.RuntimeHandlers {
			if h.Name == "runc" && !h.Features.GetRecursiveReadOnlyMounts() {
				t.Fatalf("runc handler: %v", h.Features)
			}
		}
		host := t.TempDir()
		sub := filepath.Join(host, "tmpfs")
		os.Mkdir(sub, 0o755)
		if err := unix.Mount("tptmpfs", sub, "tmpfs", 0, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
		c := e.running(pod, pcfg, "rro", image, nil, &runtimeapi.Mount{HostPath: host, ContainerPath: "/mnt", Readonly: true, RecursiveReadOnly: true})
		if _, errOut, code := e.sh(c, "touch /mnt/tmpfs/f"); code == 0 || !strings.Contains(errOut, "Read-only file system") {
			t.Errorf("rro submount written: exit %d %q", code, errOut)
		}
		if m := e.status(c).Mounts; len(m) != 1 || !m[0].RecursiveReadOnly {
			t.Errorf("status mounts: %v", m)
		}
		c = e.running(pod, pcfg, "ro", image, nil, &runtimeapi.Mount{HostPath: host, ContainerPath: "/mnt", Readonly: true})
		e.mustSh(c, "touch /mnt/tmpfs/f") // plain read-only leaves submounts alone
		for _, m := range []*runtimeapi.Mount{{HostPath: host, ContainerPath: "/mnt", RecursiveReadOnly: true},
			{HostPath: host, ContainerPath: "/mnt", Readonly: true, RecursiveReadOnly: true, Propagation: runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER}} {
			_, err := e.ctrWith(pod, pcfg, "rro-bad", image, nil, []*runtimeapi.Mount{m}, "true")
			wantCode(t, err, codes.InvalidArgument, "recursive_read_only")
		}
	})

	t.Run("image fields", func(t *testing.T) {
		e := e.sub(t)
		pulled, err := e.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: image}})
		if err != nil {
			t.Fatal(err)
		}
		c := e.running(pod, pcfg, "img", pulled.ImageRef, nil)
		s := e.status(c)
		if s.ImageId != pulled.ImageRef || s.ImageRef != pulled.ImageRef || s.Image.Image != pulled.ImageRef || s.Image.UserSpecifiedImage != "user/img" {
			t.Fatalf("status image fields: id %q ref %q image %v (pulled %q)", s.ImageId, s.ImageRef, s.Image, pulled.ImageRef)
		}
		ls, err := e.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{Id: c}})
		if err != nil || len(ls.Containers) != 1 || ls.Containers[0].ImageId != pulled.ImageRef || ls.Containers[0].Image.UserSpecifiedImage != "user/img" {
			t.Fatalf("list: %v %v", ls, err)
		}
	})

	t.Run("target PID namespace", func(t *testing.T) {
		e := e.sub(t)
		target, err := e.ctrWith(pod, pcfg, "target", image, nil, nil, "sh", "-c", "exec sleep 4242")
		if err != nil {
			t.Fatal(err)
		}
		e.start(target)
		dbg := e.running(pod, pcfg, "debug", image, &runtimeapi.LinuxContainerSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_TARGET, TargetId: target}})
		if got := e.mustSh(dbg, "cat /proc/1/cmdline | tr '\\0' ' '"); got != "sleep 4242" {
			t.Fatalf("pid 1 seen from the debug container: %q", got)
		}
		_, err = e.ctrWith(pod, pcfg, "debug2", image, &runtimeapi.LinuxContainerSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_TARGET, TargetId: "nope"}}, nil, "true")
		wantCode(t, err, codes.NotFound, "target_id")
	})

	t.Run("sysctls", func(t *testing.T) {
		e := e.sub(t)
		_, _, err := e.podWith("sysctl-bad", func(c *runtimeapi.PodSandboxConfig) { c.Linux.Sysctls = map[string]string{"kernel.panic": "1"} })
		wantCode(t, err, codes.InvalidArgument, "kernel.panic")
		_, _, err = e.podWith("sysctl-hostnet", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.Sysctls = map[string]string{"net.ipv4.ip_forward": "1"}
			c.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}
		})
		wantCode(t, err, codes.InvalidArgument, "net.ipv4.ip_forward")
		sp, spcfg, err := e.podWith("sysctl", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.Sysctls = map[string]string{"net.ipv4.ip_unprivileged_port_start": "100", "kernel.shm_rmid_forced": "1"}
		})
		if err != nil {
			t.Fatal(err)
		}
		c := e.running(sp, spcfg, "sysctl", image, nil)
		if got := e.mustSh(c, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced"); got != "100\n1" {
			t.Fatalf("sysctls inside: %q", got)
		}
	})
}

// nsIno is the inode of a namespace file.
func nsIno(t *testing.T, path string) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestUserNamespaces runs pods with a user namespace of their own (what
// kubelet asks for hostUsers: false): container root maps to the pod's
// range on the host, the pod's network, IPC and UTS namespaces belong to
// it, the rootfs and volumes are idmapped, and nothing outlives the pod.
func TestUserNamespaces(t *testing.T) {
	e, image := secEnv(t)
	ctx := testCtx(t)
	st, err := e.rt.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range st.RuntimeHandlers {
		switch {
		case h.Name == "old" && h.Features.GetUserNamespaces():
			t.Fatalf("Debian's runc 1.1 reported as supporting user namespaces")
		case h.Name == "runc" && !h.Features.GetUserNamespaces():
			p, _ := exec.LookPath("runc")
			t.Fatalf("the runc on PATH (%s) cannot do user namespaces with idmapped mounts: make test puts .tools/bin (runc v1.5.2) first", p)
		}
	}
	// Host IDs no other test uses: a 64k range above 1M.
	hostID := uint32(1<<20 + rand.IntN(1000)*65536)
	idm := []*runtimeapi.IDMapping{{ContainerId: 0, HostId: hostID, Length: 65536}}
	userns := func(c *runtimeapi.PodSandboxConfig) {
		c.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{
			UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: idm, Gids: idm}}}
	}
	// The container's root must be able to walk down to its rootfs: not
	// through a private directory (podEnv's state is made searchable).
	os.Chmod(filepath.Dir(e.n.state), 0o700)
	_, _, err = e.podWith("userns", userns)
	os.Chmod(filepath.Dir(e.n.state), 0o711)
	wantCode(t, err, codes.FailedPrecondition, "searchable")
	pod, pcfg, err := e.podWith("userns", userns)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := e.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if err != nil || ps.Status.Linux.Namespaces.Options.UsernsOptions.GetMode() != runtimeapi.NamespaceMode_POD ||
		ps.Status.Linux.Namespaces.Options.UsernsOptions.Uids[0].HostId != hostID {
		t.Fatalf("pod status: %v %v", ps, err)
	}
	// The pod's namespaces are owned by its user namespace.
	nsDir := filepath.Join(e.n.state, "runtime", "pods", pod, "ns")
	userIno := nsIno(t, filepath.Join(nsDir, "user"))
	for _, k := range []string{"net", "ipc", "uts"} {
		f, err := os.Open(filepath.Join(nsDir, k))
		if err != nil {
			t.Fatal(err)
		}
		owner, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_USERNS)
		f.Close()
		if err != nil {
			t.Fatalf("NS_GET_USERNS %s: %v", k, err)
		}
		var st unix.Stat_t
		unix.Fstat(owner, &st)
		unix.Close(owner)
		if st.Ino != userIno {
			t.Errorf("the pod's %s namespace is not owned by its user namespace", k)
		}
	}

	vol := t.TempDir()
	os.WriteFile(filepath.Join(vol, "from-host"), []byte("x"), 0o644)
	c := e.running(pod, pcfg, "root", image, nil, &runtimeapi.Mount{HostPath: vol, ContainerPath: "/vol"})
	if got := strings.Join(strings.Fields(e.mustSh(c, "cat /proc/self/uid_map")), " "); got != fmt.Sprintf("0 %d 65536", hostID) {
		t.Fatalf("uid_map inside: %q", got)
	}
	var info struct{ Pid int }
	s, err := e.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c, Verbose: true})
	if err != nil || json.Unmarshal([]byte(s.Info["info"]), &info) != nil || info.Pid <= 0 {
		t.Fatalf("container pid: %v %v", s, err)
	}
	// From the host: the container's root is the first ID of the range.
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", info.Pid))
	if !strings.Contains(string(b), fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d", hostID, hostID, hostID, hostID)) {
		t.Fatalf("host view of the container's uid:\n%s", b)
	}
	if nsIno(t, fmt.Sprintf("/proc/%d/ns/user", info.Pid)) != userIno {
		t.Fatal("the container is not in the pod's user namespace")
	}
	// The image's root-owned files are root's inside; root inside writes
	// to the rootfs (stored on the host with the range's IDs) and to the
	// idmapped volume (stored as root, as the host sees it).
	if got := e.mustSh(c, "id -u; stat -c %u:%g /bin/busybox /etc/passwd /vol/from-host; touch /rootfile /vol/from-pod && stat -c %u /vol/from-pod"); got != "0\n0:0\n0:0\n0:0\n0" {
		t.Fatalf("inside: %q", got)
	}
	var fst unix.Stat_t
	if err := unix.Stat(filepath.Join(vol, "from-pod"), &fst); err != nil || fst.Uid != 0 || fst.Gid != 0 {
		t.Fatalf("volume file on the host: uid %d gid %d %v, want 0 (idmapped)", fst.Uid, fst.Gid, err)
	}
	if err := unix.Stat(filepath.Join(e.n.root, "runtime", "containers", c, "upper", "rootfile"), &fst); err != nil || fst.Uid != hostID {
		t.Fatalf("rootfs file on the host: uid %d %v, want %d", fst.Uid, err, hostID)
	}
	// The pod's shared files belong to its root, who may edit them.
	if got := e.mustSh(c, "stat -c %u /etc/hosts; echo '10.0.0.9 extra' >> /etc/hosts && echo wrote"); got != "0\nwrote" {
		t.Fatalf("pod file: %q", got)
	}
	// Containers of the pod share its namespaces.
	c2 := e.running(pod, pcfg, "second", image, nil)
	if nsIno(t, fmt.Sprintf("/proc/%d/ns/net", info.Pid)) != nsIno(t, filepath.Join(nsDir, "net")) {
		t.Fatal("container not in the pod's network namespace")
	}
	if got := e.mustSh(c2, "hostname; cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'"); got != fmt.Sprintf("userns\n0 %d 65536", hostID) {
		t.Fatalf("second container: %q", got)
	}

	// A shared PID namespace, owned by the user namespace, with the
	// helper as its init.
	shared, scfg, err := e.podWith("userns-pid", func(c *runtimeapi.PodSandboxConfig) {
		userns(c)
		c.Linux.SecurityContext.NamespaceOptions.Pid = runtimeapi.NamespaceMode_POD
	})
	if err != nil {
		t.Fatal(err)
	}
	a := e.running(shared, scfg, "a", image, nil)
	b2 := e.running(shared, scfg, "b", image, nil)
	if got := e.mustSh(a, "cat /proc/1/cmdline | tr '\\0' ' '; cat /proc/1/uid_map | tr -s ' ' | sed 's/^ //'"); !strings.Contains(got, "pause") || !strings.Contains(got, fmt.Sprintf("0 %d 65536", hostID)) {
		t.Fatalf("shared PID namespace init: %q", got)
	}
	e.mustSh(b2, "ps | grep -q 'sleep 1000'")

	// Errors: the spec's rules for mappings and modes, and a handler that
	// cannot do it.
	for name, f := range map[string]func(*runtimeapi.UserNamespace){
		"two mappings": func(u *runtimeapi.UserNamespace) {
			u.Uids = append(u.Uids, &runtimeapi.IDMapping{ContainerId: 0, HostId: hostID + 65536, Length: 1})
		},
		"container ID 0 unmapped": func(u *runtimeapi.UserNamespace) {
			u.Gids = []*runtimeapi.IDMapping{{ContainerId: 1, HostId: hostID, Length: 65536}}
		},
		"mode CONTAINER": func(u *runtimeapi.UserNamespace) { u.Mode = runtimeapi.NamespaceMode_CONTAINER },
		"mode TARGET":    func(u *runtimeapi.UserNamespace) { u.Mode = runtimeapi.NamespaceMode_TARGET },
	} {
		_, _, err := e.podWith("userns-bad", func(c *runtimeapi.PodSandboxConfig) {
			userns(c)
			f(c.Linux.SecurityContext.NamespaceOptions.UsernsOptions)
		})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "userns_options") {
			t.Errorf("%s: %v", name, err)
		}
	}
	cfg := e.podConfig("userns-old")
	userns(cfg)
	_, err = e.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: "old"})
	wantCode(t, err, codes.InvalidArgument, `runtime handler "old"`)
	// NODE mode is the host's user namespace.
	node, ncfg, err := e.podWith("userns-node", func(c *runtimeapi.PodSandboxConfig) {
		c.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{
			UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE}}}
	})
	if err != nil {
		t.Fatal(err)
	}
	hostMap, _ := os.ReadFile("/proc/self/uid_map")
	if got := e.mustSh(e.running(node, ncfg, "n", image, nil), "cat /proc/self/uid_map"); strings.Join(strings.Fields(got), " ") != strings.Join(strings.Fields(string(hostMap)), " ") {
		t.Fatalf("NODE mode uid_map %q, host's %q", got, hostMap)
	}

	// Removing the pods leaves no process in their user namespaces and no
	// pinned namespace behind.
	sharedUser := nsIno(t, filepath.Join(e.n.state, "runtime", "pods", shared, "ns", "user"))
	for _, p := range []string{pod, shared} {
		if _, err := e.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(nsDir); !os.IsNotExist(err) {
		t.Errorf("pod namespace dir left: %v", err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/user")
	for _, p := range procs {
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil && (st.Ino == userIno || st.Ino == sharedUser) {
			pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
			syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("process %s is still in a removed pod's user namespace", p)
		}
	}
}

// mappedProcs lists the live processes whose user namespace maps 0 to
// hostID (a killed one may linger a moment as a zombie: not counted).
func mappedProcs(hostID uint32) []string {
	var out []string
	maps, _ := filepath.Glob("/proc/[0-9]*/uid_map")
	want := fmt.Sprintf("0 %d 65536", hostID)
	for _, m := range maps {
		b, _ := os.ReadFile(m)
		st, _ := os.ReadFile(filepath.Join(filepath.Dir(m), "status"))
		if strings.Join(strings.Fields(string(b)), " ") == want && !strings.Contains(string(st), "State:\tZ") && !strings.Contains(string(st), "State:\tX") && len(st) > 0 {
			out = append(out, filepath.Dir(m))
		}
	}
	return out
}

// TestUserNamespaceCrash: tripodd killed while it makes a pod's user
// namespace (its helper still alive, as the init of a shared PID namespace
// or not), after the pod's namespaces are pinned, or while it makes a
// container with an idmapped rootfs: the next start leaves no mount, no
// runc container and no process in the namespace but a surviving pod's
// init, and the names can be used again.
func TestUserNamespaceCrash(t *testing.T) {
	for _, tc := range []struct {
		point     string
		sharedPID bool
	}{{"pod-userns", true}, {"pod-userns", false}, {"pod-netns", true}, {"ctr-rootfs", true}, {"ctr-create", false}} {
		t.Run(fmt.Sprintf("%s/shared=%v", tc.point, tc.sharedPID), func(t *testing.T) {
			e, image := secEnv(t)
			ctx := testCtx(t)
			e.d.kill()
			e.d = startDaemonEnv(t, e.n, []string{"TRIPOD_CRASH_AT=" + tc.point}, e.extra...)
			hostID := uint32(1<<20 + rand.IntN(1000)*65536)
			idm := []*runtimeapi.IDMapping{{ContainerId: 0, HostId: hostID, Length: 65536}}
			pidMode := runtimeapi.NamespaceMode_CONTAINER
			if tc.sharedPID {
				pidMode = runtimeapi.NamespaceMode_POD
			}
			userns := func(c *runtimeapi.PodSandboxConfig) {
				c.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Pid: pidMode,
					UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: idm, Gids: idm}}}
			}
			var pod string
			var pcfg *runtimeapi.PodSandboxConfig
			if strings.HasPrefix(tc.point, "pod-") {
				if _, _, err := e.podWith("crash", userns); err == nil {
					t.Fatal("RunPodSandbox succeeded through a crash")
				}
			} else {
				var err error
				if pod, pcfg, err = e.podWith("crash", userns); err != nil {
					t.Fatal(err)
				}
				if _, err := e.ctrWith(pod, pcfg, "c", image, nil, nil, "sleep", "1000"); err == nil {
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
			mounts, _ := os.ReadFile("/proc/self/mountinfo")
			for _, line := range strings.Split(string(mounts), "\n") {
				if strings.Contains(line, e.n.root) || strings.Contains(line, e.n.state) && (pod == "" || strings.Contains(line, "/containers/")) {
					t.Fatalf("mount left: %s", line)
				}
			}
			out, _ := exec.Command("runc", "--root", filepath.Join(e.n.state, "runtime", "runtime", "runc"), "list", "-q").Output()
			if strings.TrimSpace(string(out)) != "" {
				t.Fatalf("runc containers left: %s", out)
			}
			var left []string
			for _, p := range mappedProcs(hostID) {
				cmdline, _ := os.ReadFile(p + "/cmdline")
				if pod != "" && tc.sharedPID && strings.HasSuffix(string(cmdline), "\x00pause\x00") {
					continue // the surviving pod's init
				}
				left = append(left, fmt.Sprintf("%s %q", p, cmdline))
			}
			if len(left) != 0 {
				t.Fatalf("processes left in the pod's user namespace: %v", left)
			}
			if pod == "" {
				pod, pcfg, _ = e.podWith("crash", userns)
			}
			c := e.running(pod, pcfg, "c", image, nil)
			if got := e.mustSh(c, "id -u; cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'"); got != fmt.Sprintf("0\n0 %d 65536", hostID) {
				t.Fatalf("after recovery: %q", got)
			}
		})
	}
}
