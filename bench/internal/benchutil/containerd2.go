package benchutil

import "fmt"

// TOML2 renders c as a config.toml for containerd 2.x (version 4, the
// format containerd 2.4 writes with `config default`), with the same
// choices as TOML: overlayfs only, the CRI plugin's defaults,
// restrict_oom_score_adj (root here lacks CAP_SYS_RESOURCE). NRI is off:
// its node-wide socket is not this instance's to take.
func (c ContainerdConfig) TOML2() string {
	return fmt.Sprintf(`version = 4
root = %q
state = %q
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri"]

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %q
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = %q

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [%q]
      conf_dir = %q

  [plugins.'io.containerd.server.v1.grpc']
    address = %q

  [plugins.'io.containerd.server.v1.ttrpc']
    address = %q
`, c.Root, c.State, c.SandboxImage, c.CertsDir, c.CNIBinDir, c.CNIConfDir, c.Socket, c.Socket+".ttrpc")
}
