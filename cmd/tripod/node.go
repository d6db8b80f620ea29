package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/tripod-dev/tripod/internal/config"
)

// csiDriverName is tripod-csi's default driver name (its socket directory
// under kubelet's plugins directory and its registration socket).
const csiDriverName = "csi.tripod.dev"

// kubeletDir is where kubelet looks for CSI plugins and registrations.
const kubeletDir = "/var/lib/kubelet"

// stack is the node stack as `tripod up`, `down` and `status` see it:
// tripodd's configuration (file, then flags) and tripod-csi's settings
// from the same file's [csi] table.
type stack struct {
	configFile string // "" when no file is used
	cri        config.Config

	csiEndpoint string
	csiRoot     string
	csiRegDir   string // "" means tripod-csi does not register with kubelet
}

// stackFlags are the flags every node command takes.
type stackFlags struct {
	config, root, state, listen, csiEndpoint string
	cniConfDir, cniBinDir                    string
}

func (f *stackFlags) register(fs *flag.FlagSet, withCNI bool) {
	fs.StringVar(&f.config, "config", "", "configuration file (default "+config.DefaultPath+" when it exists); its [csi] table configures tripod-csi")
	fs.StringVar(&f.root, "root", "", "tripodd's persistent data directory (tripod-csi's volumes go under <root>/csi unless [csi] root says otherwise)")
	fs.StringVar(&f.state, "state", "", "volatile state directory: sockets, PID files")
	fs.StringVar(&f.listen, "listen", "", "tripodd's CRI endpoint (default unix://<state>/tripod.sock)")
	fs.StringVar(&f.csiEndpoint, "csi-endpoint", "", "tripod-csi's endpoint (default unix://"+kubeletDir+"/plugins/"+csiDriverName+"/csi.sock)")
	if withCNI {
		fs.StringVar(&f.cniConfDir, "cni-conf-dir", "", "CNI network configurations (default /etc/cni/net.d)")
		fs.StringVar(&f.cniBinDir, "cni-bin-dir", "", "CNI plugin directory (default /opt/cni/bin)")
	}
}

// load reads the configuration the daemons will run with, applying the
// flags as tripodd applies its own.
func (f *stackFlags) load() (*stack, error) {
	s := &stack{configFile: f.config}
	explicit := f.config != ""
	if !explicit {
		if _, err := os.Stat(config.DefaultPath); err == nil {
			s.configFile = config.DefaultPath
		}
	}
	cfg := config.Default()
	if s.configFile != "" {
		var err error
		if cfg, err = config.Load(s.configFile, explicit); err != nil {
			return nil, err
		}
	}
	if f.state != "" {
		// The endpoint follows the state directory unless set apart.
		if cfg.Listen == config.Default().Listen {
			cfg.Listen = "unix://" + filepath.Join(f.state, "tripod.sock")
		}
		cfg.State = f.state
	}
	for _, o := range []struct {
		flag string
		dst  *string
	}{{f.root, &cfg.Root}, {f.listen, &cfg.Listen}, {f.cniConfDir, &cfg.Runtime.CNIConfDir}, {f.cniBinDir, &cfg.Runtime.CNIBinDir}} {
		if o.flag != "" {
			*o.dst = o.flag
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config %s:\n%w", s.configFile, err)
	}
	s.cri = cfg

	var file struct {
		CSI struct {
			Endpoint        *string `toml:"endpoint"`
			Root            *string `toml:"root"`
			RegistrationDir *string `toml:"registration_dir"`
		} `toml:"csi"`
	}
	if s.configFile != "" {
		b, err := os.ReadFile(s.configFile)
		if err != nil {
			return nil, err
		}
		if err := toml.Unmarshal(b, &file); err != nil {
			return nil, fmt.Errorf("config %s: %w", s.configFile, err)
		}
	}
	s.csiEndpoint = "unix://" + filepath.Join(kubeletDir, "plugins", csiDriverName, "csi.sock")
	if file.CSI.Endpoint != nil {
		s.csiEndpoint = *file.CSI.Endpoint
	}
	if f.csiEndpoint != "" {
		s.csiEndpoint = f.csiEndpoint
	}
	if !strings.HasPrefix(s.csiEndpoint, "unix:///") {
		return nil, fmt.Errorf("csi endpoint %q: want unix:///absolute/path.sock", s.csiEndpoint)
	}
	s.csiRoot = filepath.Join(cfg.Root, "csi")
	if file.CSI.Root != nil {
		s.csiRoot = *file.CSI.Root
	}
	// tripod-csi registers with kubelet when its socket is kubelet's:
	// a kubelet started later finds it without a node-driver-registrar.
	if file.CSI.RegistrationDir != nil {
		s.csiRegDir = *file.CSI.RegistrationDir
	} else if strings.HasPrefix(s.csiEndpoint, "unix://"+kubeletDir+"/") {
		s.csiRegDir = filepath.Join(kubeletDir, "plugins_registry")
	}
	return s, nil
}

func (s *stack) adminSocket() string { return filepath.Join(s.cri.State, "admin.sock") }

func (s *stack) pidFile(name string) string { return filepath.Join(s.cri.State, name+".pid") }

// monitorSocket and monitorPIDFile are where tripodd keeps its
// tripod-monitor (internal/pod: <state>/runtime).
func (s *stack) monitorSocket() string  { return filepath.Join(s.cri.State, "runtime", "monitor.sock") }
func (s *stack) monitorPIDFile() string { return filepath.Join(s.cri.State, "runtime", "monitor.pid") }

// containerBundles is the directory holding one OCI bundle per container
// tripodd knows; empty means the monitor holds nothing.
func (s *stack) containerBundles() string { return filepath.Join(s.cri.State, "runtime", "containers") }

// noContainers reports whether tripodd's state holds no container.
func (s *stack) noContainers() bool {
	ents, err := os.ReadDir(s.containerBundles())
	return errors.Is(err, os.ErrNotExist) || (err == nil && len(ents) == 0)
}
