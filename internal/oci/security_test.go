package oci

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestCapabilities(t *testing.T) {
	has := func(caps []string, c string) bool { return slices.Contains(caps, c) }
	for _, tc := range []struct {
		name       string
		sec        Security
		privileged bool
		with       []string
		without    []string
		count      int // -1: don't check
		fail       string
	}{
		{name: "default", with: []string{"CAP_CHOWN", "CAP_NET_RAW", "CAP_KILL"}, without: []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}, count: len(defaultCaps)},
		{name: "add without prefix", sec: Security{CapAdd: []string{"NET_ADMIN"}}, with: []string{"CAP_NET_ADMIN", "CAP_CHOWN"}, count: len(defaultCaps) + 1},
		{name: "add lower case with prefix", sec: Security{CapAdd: []string{"cap_sys_time"}}, with: []string{"CAP_SYS_TIME"}, count: len(defaultCaps) + 1},
		{name: "drop", sec: Security{CapDrop: []string{"NET_RAW", "CAP_CHOWN"}}, without: []string{"CAP_NET_RAW", "CAP_CHOWN"}, count: len(defaultCaps) - 2},
		{name: "add ALL", sec: Security{CapAdd: []string{"ALL"}}, with: []string{"CAP_SYS_ADMIN", "CAP_BPF"}, count: -1},
		{name: "drop ALL", sec: Security{CapDrop: []string{"ALL"}}, count: 0},
		{name: "drop ALL, add one", sec: Security{CapDrop: []string{"ALL"}, CapAdd: []string{"CHOWN"}}, with: []string{"CAP_CHOWN"}, count: 1},
		{name: "add ALL, drop one", sec: Security{CapAdd: []string{"ALL"}, CapDrop: []string{"SYS_ADMIN"}}, with: []string{"CAP_NET_ADMIN"}, without: []string{"CAP_SYS_ADMIN"}, count: -1},
		{name: "privileged", privileged: true, sec: Security{CapDrop: []string{"ALL"}}, with: []string{"CAP_SYS_ADMIN", "CAP_CHOWN"}, count: -1},
		{name: "unknown", sec: Security{CapAdd: []string{"FLY"}}, fail: "add_capabilities"},
		{name: "unknown drop", sec: Security{CapDrop: []string{"CAP_NOPE"}}, fail: "drop_capabilities"},
	} {
		caps, _, err := capabilities(tc.sec, tc.privileged)
		if tc.fail != "" {
			if err == nil || !strings.Contains(err.Error(), tc.fail) {
				t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.fail)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		for _, c := range tc.with {
			if !has(caps, c) && has(bounded(allCaps()), c) {
				t.Errorf("%s: %s missing from %v", tc.name, c, caps)
			}
		}
		for _, c := range tc.without {
			if has(caps, c) {
				t.Errorf("%s: %s present in %v", tc.name, c, caps)
			}
		}
		if tc.count >= 0 && len(caps) != tc.count {
			t.Errorf("%s: %d capabilities %v, want %d", tc.name, len(caps), caps, tc.count)
		}
	}
	// Ambient capabilities join every set.
	caps, amb, err := capabilities(Security{CapAmbient: []string{"NET_BIND_SERVICE", "SYS_NICE"}}, false)
	if err != nil || !slices.Equal(amb, []string{"CAP_NET_BIND_SERVICE", "CAP_SYS_NICE"}) || !slices.Contains(caps, "CAP_SYS_NICE") {
		t.Fatalf("ambient: caps %v ambient %v %v", caps, amb, err)
	}
}

func TestResolveGroups(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/:/bin/sh\ndefault-user:x:1000:1000::/:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user,other\nwheel:x:10:other\n"), 0o644)
	uid := int64(1000)
	u, err := resolveUser(root, "", &uid, "", nil, []int64{1234}, false)
	if err != nil || u.UID != 1000 || u.GID != 1000 || !slices.Equal(u.AdditionalGids, []uint32{1000, 50000, 1234}) {
		t.Fatalf("merge: %+v %v", u, err)
	}
	u, err = resolveUser(root, "", &uid, "", nil, []int64{1234, 1000}, true)
	if err != nil || !slices.Equal(u.AdditionalGids, []uint32{1000, 1234}) {
		t.Fatalf("strict: %+v %v", u, err)
	}
	u, err = resolveUser(root, "default-user", nil, "", nil, nil, false)
	if err != nil || !slices.Equal(u.AdditionalGids, []uint32{1000, 50000}) {
		t.Fatalf("image user by name: %+v %v", u, err)
	}
	// A uid without a passwd entry: gid 0, no image groups.
	uid = 4242
	if u, err = resolveUser(root, "", &uid, "", nil, nil, false); err != nil || u.GID != 0 || !slices.Equal(u.AdditionalGids, []uint32{0}) {
		t.Fatalf("unknown uid: %+v %v", u, err)
	}
	if _, err := resolveUser(root, "", nil, "", nil, []int64{-1}, false); err == nil {
		t.Fatal("a negative group was accepted")
	}
}

// TestUserDBStaysInRoot: an image whose /etc/passwd is an absolute symlink
// gets it resolved inside its own rootfs, never on the host.
func TestUserDBStaysInRoot(t *testing.T) {
	host := t.TempDir()
	os.WriteFile(filepath.Join(host, "passwd"), []byte("hostuser:x:777:777::/:/bin/sh\n"), 0o644)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.Symlink(filepath.Join(host, "passwd"), filepath.Join(root, "etc/passwd"))
	if _, err := resolveUser(root, "hostuser", nil, "", nil, nil, false); err == nil {
		t.Fatal("a user was found through a symlink out of the rootfs")
	}
	// The same link target inside the rootfs is what counts.
	os.MkdirAll(filepath.Join(root, host), 0o755)
	os.WriteFile(filepath.Join(root, host, "passwd"), []byte("inside:x:55:56::/:/bin/sh\n"), 0o644)
	if u, err := resolveUser(root, "inside", nil, "", nil, nil, false); err != nil || u.UID != 55 || u.GID != 56 {
		t.Fatalf("symlink inside the rootfs: %+v %v", u, err)
	}
}

func genSecurity(t *testing.T, in Input) (*specs.Spec, error) {
	t.Helper()
	in.Image = &v1.Config{Cmd: []string{"sh"}}
	if in.Rootfs == "" {
		in.Rootfs = t.TempDir()
	}
	return Generate(in)
}

func TestGenerateSecurity(t *testing.T) {
	dir := t.TempDir()
	prof := filepath.Join(dir, "deny-mkdir.json")
	os.WriteFile(prof, []byte(`{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}`), 0o600)

	s, err := genSecurity(t, Input{Security: Security{NoNewPrivs: true, Seccomp: Profile{Kind: ProfileRuntimeDefault}}})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Process.NoNewPrivileges || s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActErrno {
		t.Fatalf("no_new_privs %v, seccomp %+v", s.Process.NoNewPrivileges, s.Linux.Seccomp)
	}
	if !slices.Equal(s.Linux.MaskedPaths, defaultMasked) || !slices.Equal(s.Linux.ReadonlyPaths, defaultReadonly) {
		t.Fatalf("default masks: %v %v", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths)
	}
	if s, err = genSecurity(t, Input{}); err != nil || s.Linux.Seccomp != nil || s.Process.NoNewPrivileges {
		t.Fatalf("no profile is unconfined: %+v %v", s.Linux.Seccomp, err)
	}
	s, err = genSecurity(t, Input{Security: Security{Seccomp: Profile{Kind: ProfileLocalhost, Ref: prof}}})
	if err != nil || s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActAllow || !slices.Contains(s.Linux.Seccomp.Syscalls[0].Names, "mkdirat") {
		t.Fatalf("localhost profile: %+v %v", s.Linux.Seccomp, err)
	}
	missing := filepath.Join(dir, "nope.json")
	if _, err := genSecurity(t, Input{Security: Security{Seccomp: Profile{Kind: ProfileLocalhost, Ref: missing}}}); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing localhost profile: %v", err)
	}
	if _, err := genSecurity(t, Input{Security: Security{Seccomp: Profile{Kind: "bogus"}}}); err == nil {
		t.Fatal("an unknown profile kind was accepted")
	}

	// Masked and read-only paths from the CRI; empty lists mask nothing.
	s, err = genSecurity(t, Input{Security: Security{MaskedPaths: []string{"/bin/ls"}, ReadonlyPaths: []string{"/tmp"}}})
	if err != nil || !slices.Equal(s.Linux.MaskedPaths, []string{"/bin/ls"}) || !slices.Equal(s.Linux.ReadonlyPaths, []string{"/tmp"}) {
		t.Fatalf("CRI paths: %v %v %v", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths, err)
	}
	s, err = genSecurity(t, Input{Security: Security{MaskedPaths: []string{}, ReadonlyPaths: []string{}}})
	if err != nil || len(s.Linux.MaskedPaths) != 0 || len(s.Linux.ReadonlyPaths) != 0 {
		t.Fatalf("unmasked: %v %v %v", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths, err)
	}

	// Privileged: every capability, host devices, writable sysfs and
	// cgroupfs, no seccomp even when a (missing) profile is named, no
	// masks.
	s, err = genSecurity(t, Input{Privileged: true, Namespaces: map[specs.LinuxNamespaceType]string{specs.NetworkNamespace: "/x"},
		Devices:  []Device{{HostPath: "/dev/null", ContainerPath: "/dev/null", Permissions: "rw"}},
		Security: Security{Seccomp: Profile{Kind: ProfileLocalhost, Ref: missing}, MaskedPaths: []string{"/bin/ls"}}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Linux.Seccomp != nil || len(s.Linux.MaskedPaths) != 0 || len(s.Linux.ReadonlyPaths) != 0 || !slices.Contains(s.Process.Capabilities.Effective, "CAP_SYS_ADMIN") {
		t.Fatalf("privileged: seccomp %v masked %v caps %v", s.Linux.Seccomp, s.Linux.MaskedPaths, s.Process.Capabilities.Effective)
	}
	var devs []string
	for _, d := range s.Linux.Devices {
		devs = append(devs, d.Path)
	}
	if !slices.Contains(devs, "/dev/null") || slices.Contains(devs, "/dev/ptmx") || slices.Contains(devs, "/dev/console") || len(devs) < 3 {
		t.Fatalf("privileged devices: %v", devs)
	}
	if n := len(slices.DeleteFunc(slices.Clone(devs), func(d string) bool { return d != "/dev/null" })); n != 1 {
		t.Fatalf("/dev/null twice: the container's own and the host's: %v", devs)
	}
	for _, m := range s.Mounts {
		if (m.Destination == "/sys" || m.Destination == "/sys/fs/cgroup") && slices.Contains(m.Options, "ro") {
			t.Fatalf("privileged %s is read-only: %v", m.Destination, m.Options)
		}
	}
	if r := s.Linux.Resources.Devices; len(r) == 0 || !r[0].Allow || r[0].Major != nil || r[0].Access != "rwm" {
		t.Fatalf("privileged device cgroup: %+v", r)
	}
}

func TestGenerateMountsAndUserNS(t *testing.T) {
	ids := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	own := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 7, Size: 1}}
	s, err := genSecurity(t, Input{
		Namespaces: map[specs.LinuxNamespaceType]string{specs.UserNamespace: "/pod/ns/user", specs.NetworkNamespace: "/pod/ns/net"},
		IDMap:      &IDMap{UIDs: ids, GIDs: ids},
		Mounts: []Mount{{HostPath: "/a", ContainerPath: "/rro", Readonly: true, RecursiveReadOnly: true, Propagation: "private"},
			{HostPath: "/b", ContainerPath: "/own", UIDMappings: own, GIDMappings: own}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var user string
	for _, n := range s.Linux.Namespaces {
		if n.Type == specs.UserNamespace {
			user = n.Path
		}
	}
	if user != "/pod/ns/user" || s.Linux.UIDMappings != nil {
		t.Fatalf("user namespace %q, mappings %v (a joined namespace carries its own)", user, s.Linux.UIDMappings)
	}
	for _, m := range s.Mounts {
		switch m.Destination {
		case "/rro":
			if !slices.Contains(m.Options, "ro") || !slices.Contains(m.Options, "rro") || !slices.Equal(m.UIDMappings, ids) {
				t.Fatalf("rro mount: %+v", m)
			}
		case "/own":
			if !slices.Equal(m.UIDMappings, own) || !slices.Equal(m.GIDMappings, own) {
				t.Fatalf("mount with its own mappings: %+v", m)
			}
		case "/proc", "/etc/hosts":
			if m.UIDMappings != nil {
				t.Fatalf("%s is idmapped", m.Destination)
			}
		}
	}
}

func TestAppArmor(t *testing.T) {
	none := t.TempDir()
	for _, k := range []string{"", ProfileUnconfined, ProfileRuntimeDefault} {
		if name, err := apparmorFor(Profile{Kind: k}, none); name != "" || err != nil {
			t.Fatalf("%q on a host without AppArmor: %q %v", k, name, err)
		}
	}
	_, err := apparmorFor(Profile{Kind: ProfileLocalhost, Ref: "localhost/deny-write"}, none)
	if err == nil || !strings.Contains(err.Error(), "not enabled") || !strings.Contains(err.Error(), "deny-write") {
		t.Fatalf("localhost profile without AppArmor: %v", err)
	}
	fs := t.TempDir()
	os.MkdirAll(filepath.Join(fs, "apparmor"), 0o755)
	os.WriteFile(filepath.Join(fs, "apparmor", "profiles"), []byte("deny-write (enforce)\nother (complain)\n"), 0o644)
	if name, err := apparmorFor(Profile{Kind: ProfileLocalhost, Ref: "deny-write"}, fs); name != "deny-write" || err != nil {
		t.Fatalf("loaded profile: %q %v", name, err)
	}
	if _, err := apparmorFor(Profile{Kind: ProfileLocalhost, Ref: "localhost/absent"}, fs); err == nil || !strings.Contains(err.Error(), "not loaded") {
		t.Fatalf("unloaded profile: %v", err)
	}
	// This host: its answer must match whether AppArmor is there.
	_, err = apparmorFor(Profile{Kind: ProfileLocalhost, Ref: "x"}, "/sys/kernel/security")
	if _, serr := os.Stat("/sys/kernel/security/apparmor"); serr != nil && (err == nil || !strings.Contains(err.Error(), "not enabled")) {
		t.Fatalf("this host has no AppArmor, got %v", err)
	}
}

func TestHostDevices(t *testing.T) {
	devs, err := hostDevices("/dev")
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]specs.LinuxDevice{}
	for _, d := range devs {
		found[d.Path] = d
	}
	if d, ok := found["/dev/null"]; !ok || d.Type != "c" || d.Major != 1 || d.Minor != 3 {
		t.Fatalf("/dev/null: %+v", d)
	}
	for p := range found {
		if strings.HasPrefix(p, "/dev/pts/") || p == "/dev/ptmx" {
			t.Fatalf("%s listed", p)
		}
	}
	if _, err := hostDevices(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("a missing /dev was not an error")
	}
}
