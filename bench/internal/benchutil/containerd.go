// Package benchutil holds what more than one benchmark needs.
package benchutil

import "fmt"

// HostsTOML is a containerd hosts.toml (certs.d/HOST/hosts.toml) that pulls
// and resolves from host over plain HTTP.
func HostsTOML(host string) string {
	return fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, host)
}

// ContainerdConfig is what differs between the benchmarks' containerd
// configurations: all else (overlayfs, no other snapshotters, the CRI
// plugin's defaults) is the same for every one.
type ContainerdConfig struct {
	Root, State  string
	Socket       string // the gRPC socket; ttrpc listens at Socket+".ttrpc"
	SandboxImage string
	CertsDir     string // the registry config_path (certs.d)
	CNIBinDir    string
	CNIConfDir   string
}

// TOML renders c as a containerd config.toml (version 2).
func (c ContainerdConfig) TOML() string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.opt"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`, c.Root, c.State, c.Socket, c.Socket+".ttrpc", c.SandboxImage, c.CertsDir, c.CNIBinDir, c.CNIConfDir)
}
