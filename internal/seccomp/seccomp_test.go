package seccomp

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// rulesFor returns the rules of s that name call.
func rulesFor(s *specs.LinuxSeccomp, call string) []specs.LinuxSyscall {
	var out []specs.LinuxSyscall
	for _, r := range s.Syscalls {
		if slices.Contains(r.Names, call) {
			out = append(out, r)
		}
	}
	return out
}

// unconditional reports whether s allows call whatever its arguments.
func unconditional(s *specs.LinuxSeccomp, call string) bool {
	for _, r := range rulesFor(s, call) {
		if r.Action == specs.ActAllow && len(r.Args) == 0 {
			return true
		}
	}
	return false
}

var dockerCaps = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}

func TestDefaultProfile(t *testing.T) {
	s := Default(dockerCaps)
	if s.DefaultAction != specs.ActErrno || s.DefaultErrnoRet != nil {
		t.Fatalf("default action %s (errno %v), want EPERM", s.DefaultAction, s.DefaultErrnoRet)
	}
	if a := nativeArches("amd64"); !slices.Equal(a, []specs.Arch{specs.ArchX86_64, specs.ArchX86}) {
		t.Fatalf("amd64 architectures %v", a)
	}
	for _, call := range []string{"read", "openat", "execve", "mkdirat", "fchmodat", "setgroups", "rt_sigreturn", "wait4", "chroot"} {
		if !unconditional(s, call) {
			t.Errorf("%s is not allowed", call)
		}
	}
	for _, call := range []string{"keyctl", "add_key", "request_key", "kexec_load", "init_module", "mount", "umount2", "setns",
		"pivot_root", "bpf", "perf_event_open", "io_uring_setup", "userfaultfd", "reboot", "swapon", "sethostname", "clock_settime"} {
		if len(rulesFor(s, call)) != 0 {
			t.Errorf("%s is allowed without the capability that needs it", call)
		}
	}
	// Namespaces: clone and unshare only without namespace flags, clone3
	// answers ENOSYS.
	for call, mask := range map[string]uint64{"clone": nsFlagsClone, "unshare": nsFlagsUnshare} {
		rs := rulesFor(s, call)
		if len(rs) != 1 || len(rs[0].Args) != 1 || rs[0].Args[0].Op != specs.OpMaskedEqual || rs[0].Args[0].Value != mask || rs[0].Args[0].ValueTwo != 0 {
			t.Errorf("%s: %+v, want allowed only with no namespace flag", call, rs)
		}
	}
	if mask := uint64(0x10000000); nsFlagsUnshare&mask == 0 || nsFlagsClone&mask == 0 {
		t.Error("CLONE_NEWUSER is not among the filtered flags")
	}
	if rs := rulesFor(s, "clone3"); len(rs) != 1 || rs[0].Action != specs.ActErrno || rs[0].ErrnoRet == nil || *rs[0].ErrnoRet != 38 {
		t.Errorf("clone3: %+v, want ENOSYS", rs)
	}
	if rs := rulesFor(s, "socket"); len(rs) != 1 || rs[0].Args[0].Op != specs.OpNotEqual || rs[0].Args[0].Value != afVsock {
		t.Errorf("socket: %+v, want all families but AF_VSOCK", rs)
	}

	// CAP_SYS_ADMIN opens namespaces and mounts; CAP_SYS_TIME the clock.
	a := Default(append(slices.Clone(dockerCaps), "CAP_SYS_ADMIN", "CAP_SYS_TIME"))
	for _, call := range []string{"mount", "unshare", "clone", "clone3", "setns", "sethostname", "clock_settime"} {
		if !unconditional(a, call) {
			t.Errorf("with CAP_SYS_ADMIN and CAP_SYS_TIME, %s is not allowed", call)
		}
	}
	if len(rulesFor(a, "keyctl")) != 0 || len(rulesFor(a, "kexec_load")) != 0 {
		t.Error("keyctl or kexec_load allowed with CAP_SYS_ADMIN")
	}
	// Without CAP_SYS_CHROOT, no chroot.
	if unconditional(Default([]string{"CAP_CHOWN"}), "chroot") {
		t.Error("chroot allowed without CAP_SYS_CHROOT")
	}
}

// TestDefaultNamesAreSyscalls catches misspelt names, which runc would
// drop silently: every name must be in this machine's syscall tables
// (kernel headers) or among the calls newer than them.
func TestDefaultNamesAreSyscalls(t *testing.T) {
	headers, _ := filepath.Glob("/usr/include/*-linux-gnu/asm/unistd*.h")
	headers = append(headers, "/usr/include/asm-generic/unistd.h")
	known := map[string]bool{}
	re := regexp.MustCompile(`#define __NR3?2?_?([a-z0-9_]+)\s`)
	for _, h := range headers {
		b, err := os.ReadFile(h)
		if err != nil {
			continue
		}
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			known[m[1]] = true
		}
	}
	if len(known) < 300 {
		t.Skipf("skipped: no kernel syscall headers under /usr/include (%d names; apt-get install linux-libc-dev)", len(known))
	}
	// Newer than Debian 12's headers (Linux 6.1), or of other
	// architectures than this one.
	for _, n := range []string{"cachestat", "fchmodat2", "map_shadow_stack", "futex_wake", "futex_wait", "futex_requeue",
		"statmount", "listmount", "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules", "mseal",
		"setxattrat", "getxattrat", "listxattrat", "removexattrat", "open_tree_attr", "file_getattr", "file_setattr",
		"arm_sync_file_range", "arm_fadvise64_64", "sync_file_range2", "ugetrlimit", "set_mempolicy_home_node", "clock_adjtime64"} {
		known[n] = true
	}
	names := slices.Clone(allowed)
	for _, l := range byCap {
		names = append(names, l...)
	}
	names = append(names, "personality", "socket", "clone", "clone3", "unshare")
	for _, n := range names {
		if !known[n] {
			t.Errorf("%q is not a Linux system call", n)
		}
	}
}

func TestParseProfile(t *testing.T) {
	e := env{caps: dockerCaps, goarch: "amd64", kernel: [2]int{6, 1}}
	// The shape critest writes: default allow, one rule.
	s, err := parse([]byte(`{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}`), e)
	if err != nil {
		t.Fatal(err)
	}
	if s.DefaultAction != specs.ActAllow || len(s.Syscalls) != 1 || !slices.Equal(s.Syscalls[0].Names, []string{"mkdir", "mkdirat"}) {
		t.Fatalf("parsed %+v", s)
	}
	// Docker-style conditions and archMap.
	s, err = parse([]byte(`{
	  "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
	  "archMap": [{"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
	              {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
	  "syscalls": [
	    {"names": ["read"], "action": "SCMP_ACT_ALLOW", "comment": "always"},
	    {"name": "mount", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["SYS_ADMIN"]}},
	    {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
	    {"names": ["s390_only"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
	    {"names": ["new_call"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "6.10"}},
	    {"names": ["old_call"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
	    {"names": ["not_with_chown"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_CHOWN"]}},
	    {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
	  ]}`), e)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range s.Syscalls {
		got = append(got, r.Names...)
	}
	if want := []string{"read", "chroot", "old_call", "personality"}; !slices.Equal(got, want) {
		t.Fatalf("rules kept %v, want %v", got, want)
	}
	if !slices.Equal(s.Architectures, []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}) {
		t.Fatalf("architectures %v", s.Architectures)
	}
	for _, bad := range []struct{ json, want string }{
		{`{"defaultAction":"SCMP_ACT_NOPE"}`, "defaultAction"},
		{`{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"ALLOW"}]}`, "syscalls[0]: action"},
		{`{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"action":"SCMP_ACT_ERRNO"}]}`, "no syscall names"},
		{`{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"op":"EQ"}]}]}`, "operator"},
		{`{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_NOPE"]}`, "flag"},
		{`{"defaultAction":"SCMP_ACT_ALLOW","architectures":["x86_64"]}`, "architecture"},
		{`{"defaultAction":`, "JSON"},
		{`{"defaultAction":"SCMP_ACT_ALLOW"} {}`, "after"},
	} {
		if _, err := parse([]byte(bad.json), e); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want an error about %s", bad.json, err, bad.want)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "p.json")
	os.WriteFile(good, []byte(`{"defaultAction":"SCMP_ACT_ALLOW"}`), 0o600)
	if s, err := Load(good, nil); err != nil || s.DefaultAction != specs.ActAllow {
		t.Fatalf("Load: %+v %v", s, err)
	}
	missing := filepath.Join(dir, "missing.json")
	if _, err := Load(missing, nil); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing profile: %v, want an error naming it", err)
	}
	if _, err := Load("p.json", nil); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Fatalf("relative path: %v", err)
	}
	if _, err := Load(dir, nil); err == nil {
		t.Fatal("a directory was read as a profile")
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte("not json"), 0o600)
	if _, err := Load(bad, nil); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("invalid profile: %v, want an error naming it", err)
	}
}

func TestParseKernel(t *testing.T) {
	for in, want := range map[string][2]int{"6.18.44-fc-v669": {6, 18}, "5.4": {5, 4}, "4.8.0": {4, 8}, "6.1rc2": {6, 1}} {
		if got, ok := parseKernel(in); !ok || got != want {
			t.Errorf("parseKernel(%q) = %v %v, want %v", in, got, ok, want)
		}
	}
	if _, ok := parseKernel("junk"); ok {
		t.Error("junk parsed")
	}
}
