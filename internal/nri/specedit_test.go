package nri

import (
	"slices"
	"testing"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/runtime-tools/generate"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// baseSpec is shaped like what internal/oci generates.
func baseSpec(ann, sysctl map[string]string) *specs.Spec {
	return &specs.Spec{
		Process: &specs.Process{Args: []string{"sleep", "1"}, Env: []string{"PATH=/bin", "KEEP=1", "DROP=1", "CHANGE=old"}},
		Mounts: []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/data", Type: "bind", Source: "/old", Options: []string{"rbind"}},
			{Destination: "/gone", Type: "bind", Source: "/x", Options: []string{"rbind"}}},
		Annotations: ann,
		Linux: &specs.Linux{CgroupsPath: "/tripod/x", Sysctl: sysctl,
			Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/run/ns/net"}, {Type: specs.PIDNamespace}},
			Resources:  &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}}},
	}
}

// TestAdjust runs NRI's own adjustment applier over specEdit: every kind
// of edit a plugin can ask for lands in the spec, removals included, and
// the maps the spec shares with tripod's records are left alone.
func TestAdjust(t *testing.T) {
	ann := map[string]string{"keep": "1", "drop": "1"}
	sysctl := map[string]string{"net.ipv4.ip_forward": "0"}
	spec := baseSpec(ann, sysctl)
	adj := &api.ContainerAdjustment{}
	adj.AddEnv("NEW", "v")
	adj.AddEnv("CHANGE", "new")
	adj.RemoveEnv("DROP")
	adj.AddMount(&api.Mount{Destination: "/data", Type: "bind", Source: "/new", Options: []string{"rbind", "ro"}})
	adj.AddMount(&api.Mount{Destination: "/a/b/c", Type: "tmpfs", Source: "tmpfs"})
	adj.RemoveMount("/gone")
	adj.AddAnnotation("added", "yes")
	adj.RemoveAnnotation("drop")
	adj.SetArgs([]string{"sh", "-c", "true"})
	adj.AddDevice(&api.LinuxDevice{Path: "/dev/tp0", Type: "c", Major: 1, Minor: 3, FileMode: api.FileMode(0o666)})
	adj.SetLinuxMemoryLimit(64 << 20)
	adj.SetLinuxCPUShares(512)
	adj.SetLinuxCPUSetCPUs("0")
	adj.SetLinuxCgroupsPath("/tripod/elsewhere")
	adj.SetLinuxOomScoreAdj(ptr(500))
	adj.AddRlimit("RLIMIT_NOFILE", 2048, 1024)
	adj.AddHooks(&api.Hooks{Poststart: []*api.Hook{{Path: "/bin/true"}}})
	adj.AddOrReplaceNamespace(&api.LinuxNamespace{Type: "network", Path: "/run/ns/other"})
	adj.SetLinuxSysctl("net.core.somaxconn", "1024")

	if err := generate.SpecGenerator(specEdit{spec}, generate.WithResourceChecker(checkResources)).Adjust(adj); err != nil {
		t.Fatal(err)
	}
	if want := []string{"PATH=/bin", "KEEP=1", "CHANGE=new", "NEW=v"}; !slices.Equal(spec.Process.Env, want) {
		t.Errorf("env %v, want %v", spec.Process.Env, want)
	}
	if !slices.Equal(spec.Process.Args, []string{"sh", "-c", "true"}) {
		t.Errorf("args %v", spec.Process.Args)
	}
	dests := map[string]specs.Mount{}
	for _, m := range spec.Mounts {
		dests[m.Destination] = m
	}
	if _, ok := dests["/gone"]; ok || dests["/data"].Source != "/new" || dests["/a/b/c"].Type != "tmpfs" || len(spec.Mounts) != 3 {
		t.Errorf("mounts %+v", spec.Mounts)
	}
	if spec.Mounts[len(spec.Mounts)-1].Destination != "/a/b/c" {
		t.Errorf("mounts not sorted parents first: %+v", spec.Mounts)
	}
	if spec.Annotations["added"] != "yes" || spec.Annotations["keep"] != "1" || spec.Annotations["drop"] != "" {
		t.Errorf("annotations %v", spec.Annotations)
	}
	if len(ann) != 2 || ann["drop"] != "1" || len(sysctl) != 1 {
		t.Errorf("the record's maps changed: %v %v", ann, sysctl)
	}
	if spec.Linux.Sysctl["net.core.somaxconn"] != "1024" || spec.Linux.Sysctl["net.ipv4.ip_forward"] != "0" {
		t.Errorf("sysctl %v", spec.Linux.Sysctl)
	}
	if len(spec.Linux.Devices) != 1 || spec.Linux.Devices[0].Path != "/dev/tp0" {
		t.Errorf("devices %+v", spec.Linux.Devices)
	}
	rules := spec.Linux.Resources.Devices
	if last := rules[len(rules)-1]; !last.Allow || last.Type != "c" || *last.Major != 1 || *last.Minor != 3 {
		t.Errorf("device cgroup rules %+v", rules)
	}
	r := spec.Linux.Resources
	if *r.Memory.Limit != 64<<20 || *r.CPU.Shares != 512 || r.CPU.Cpus != "0" {
		t.Errorf("resources %+v %+v", r.Memory, r.CPU)
	}
	if spec.Linux.CgroupsPath != "/tripod/elsewhere" || *spec.Process.OOMScoreAdj != 500 {
		t.Errorf("cgroups path %q, oom_score_adj %v", spec.Linux.CgroupsPath, *spec.Process.OOMScoreAdj)
	}
	if len(spec.Process.Rlimits) != 1 || spec.Process.Rlimits[0].Hard != 2048 {
		t.Errorf("rlimits %+v", spec.Process.Rlimits)
	}
	if spec.Hooks == nil || len(spec.Hooks.Poststart) != 1 || spec.Hooks.Poststart[0].Path != "/bin/true" {
		t.Errorf("hooks %+v", spec.Hooks)
	}
	if spec.Linux.Namespaces[0].Path != "/run/ns/other" || len(spec.Linux.Namespaces) != 2 {
		t.Errorf("namespaces %+v", spec.Linux.Namespaces)
	}
}

func TestAdjustRefusals(t *testing.T) {
	spec := baseSpec(nil, nil)
	adj := &api.ContainerAdjustment{}
	adj.SetLinuxCPUQuota(10)
	if err := generate.SpecGenerator(specEdit{spec}, generate.WithResourceChecker(checkResources)).Adjust(adj); err == nil {
		t.Error("a 10µs CPU quota was accepted")
	}
	adj = &api.ContainerAdjustment{}
	adj.AddOrReplaceNamespace(&api.LinuxNamespace{Type: "bogus"})
	if err := generate.SpecGenerator(specEdit{spec}).Adjust(adj); err == nil {
		t.Error("an unknown namespace type was accepted")
	}
}

func ptr[T any](v T) *T { return &v }
