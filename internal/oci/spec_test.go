package oci

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestProcessArgs(t *testing.T) {
	img := &v1.Config{Entrypoint: []string{"/ep"}, Cmd: []string{"c1", "c2"}}
	for _, tc := range []struct {
		name          string
		command, args []string
		want          []string
	}{
		{"image only", nil, nil, []string{"/ep", "c1", "c2"}},
		{"args replace cmd", nil, []string{"a"}, []string{"/ep", "a"}},
		{"command replaces both", []string{"/cmd"}, nil, []string{"/cmd"}},
		{"command and args", []string{"/cmd"}, []string{"a"}, []string{"/cmd", "a"}},
	} {
		got, err := processArgs(img, tc.command, tc.args)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v %v, want %v", tc.name, got, err, tc.want)
		}
	}
	if _, err := processArgs(&v1.Config{}, nil, nil); err == nil {
		t.Error("no command at all was accepted")
	}
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"PATH=/bin", "A=1"}, []string{"A=2", "B=3"})
	if want := []string{"PATH=/bin", "A=2", "B=3"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got := mergeEnv(nil, []string{"X=1"}); len(got) != 2 || got[1][:5] != "PATH=" {
		t.Fatalf("a default PATH is added: %v", got)
	}
}

func TestResolveUser(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/:/bin/sh\nwww-data:x:33:33::/:/bin/false\nu:x:1000:50000::/:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nwww-data:x:33:\nspecial:x:1004:\n"), 0o644)
	i64 := func(v int64) *int64 { return &v }
	for _, tc := range []struct {
		name, image, username string
		uid, gid              *int64
		want                  specs.User
		fail                  bool
	}{
		{name: "empty is root"},
		{name: "image uid", image: "1002", want: specs.User{UID: 1002}},
		{name: "image uid with passwd gid", image: "1000", want: specs.User{UID: 1000, GID: 50000}},
		{name: "image name", image: "www-data", want: specs.User{UID: 33, GID: 33}},
		{name: "image uid:gid", image: "1003:1004", want: specs.User{UID: 1003, GID: 1004}},
		{name: "image name:group", image: "www-data:special", want: specs.User{UID: 33, GID: 1004}},
		{name: "CRI uid wins", image: "www-data", uid: i64(7), want: specs.User{UID: 7}},
		{name: "CRI name", username: "www-data", want: specs.User{UID: 33, GID: 33}},
		{name: "CRI gid", image: "www-data", gid: i64(5), want: specs.User{UID: 33, GID: 5}},
		{name: "unknown name", image: "nobody-here", fail: true},
	} {
		got, err := resolveUser(root, tc.image, tc.uid, tc.username, tc.gid, nil, false)
		if (err != nil) != tc.fail || (!tc.fail && (got.UID != tc.want.UID || got.GID != tc.want.GID)) {
			t.Errorf("%s: %+v %v, want %+v (fail %v)", tc.name, got, err, tc.want, tc.fail)
		}
	}
}

func TestGenerate(t *testing.T) {
	s, err := Generate(Input{
		Image:       &v1.Config{Cmd: []string{"sh"}, WorkingDir: "/w", Env: []string{"PATH=/bin"}},
		Rootfs:      t.TempDir(),
		Env:         []string{"K=V"},
		Hostname:    "h",
		Mounts:      []Mount{{HostPath: "/tmp", ContainerPath: "/data", Readonly: true, Propagation: "rslave"}},
		Resources:   Resources{CPUQuota: 50000, CPUPeriod: 100000, MemoryLimit: 64 << 20, OOMScoreAdj: -1000},
		CgroupsPath: "/p/c",
		Namespaces:  map[specs.LinuxNamespaceType]string{specs.NetworkNamespace: "/run/ns/net", specs.PIDNamespace: ""},
		Files:       map[string]string{"/etc/hosts": "/pod/hosts"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.Process.Cwd != "/w" || !slices.Contains(s.Process.Env, "K=V") || s.Hostname != "h" || s.Linux.CgroupsPath != "/p/c" {
		t.Fatalf("process/hostname/cgroup: %+v", s.Process)
	}
	if *s.Linux.Resources.CPU.Quota != 50000 || *s.Linux.Resources.Memory.Limit != 64<<20 {
		t.Fatalf("resources: %+v", s.Linux.Resources)
	}
	b, _ := os.ReadFile("/proc/self/oom_score_adj")
	cur, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if want := max(-1000, cur); *s.Process.OOMScoreAdj != want {
		t.Fatalf("oom_score_adj %d, want %d (never below ours)", *s.Process.OOMScoreAdj, want)
	}
	var data, hosts bool
	for _, m := range s.Mounts {
		if m.Destination == "/data" {
			data = slices.Contains(m.Options, "ro") && slices.Contains(m.Options, "rslave")
		}
		if m.Destination == "/etc/hosts" {
			hosts = m.Source == "/pod/hosts"
		}
	}
	if !data || !hosts {
		t.Fatalf("mounts: %+v", s.Mounts)
	}
	nsPath := map[specs.LinuxNamespaceType]string{}
	for _, n := range s.Linux.Namespaces {
		nsPath[n.Type] = n.Path
	}
	if nsPath[specs.NetworkNamespace] != "/run/ns/net" || len(nsPath) != 3 {
		t.Fatalf("namespaces: %+v", s.Linux.Namespaces)
	}
	if len(s.Linux.MaskedPaths) == 0 || slices.Contains(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN") {
		t.Fatal("an unprivileged container has no masked paths or has CAP_SYS_ADMIN")
	}
	p, _ := Generate(Input{Image: &v1.Config{Cmd: []string{"sh"}}, Rootfs: t.TempDir(), Privileged: true})
	if len(p.Linux.MaskedPaths) != 0 || !slices.Contains(p.Process.Capabilities.Bounding, "CAP_SYS_ADMIN") {
		t.Fatal("a privileged container is masked or lacks CAP_SYS_ADMIN")
	}
}
