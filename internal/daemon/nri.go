package daemon

import (
	"time"

	"github.com/tripod-dev/tripod/internal/config"
	"github.com/tripod-dev/tripod/internal/nri"
	"github.com/tripod-dev/tripod/internal/pod"
)

// newNRI prepares NRI over the daemon's runtime core and installs it as
// the core's hooks; Serve starts it.
func newNRI(cfg config.Config, d *Daemon, devices pod.DeviceInjector) (*nri.NRI, error) {
	n, err := nri.New(nri.Config{
		SocketPath:          cfg.NRI.SocketPath,
		PluginPath:          cfg.NRI.PluginPath,
		PluginConfigPath:    cfg.NRI.PluginConfigPath,
		RegistrationTimeout: time.Duration(cfg.NRI.RegistrationTimeout),
		RequestTimeout:      time.Duration(cfg.NRI.RequestTimeout),
		Version:             Version,
		Logger:              d.log,
		Metrics:             d.Metrics,
		CDI:                 devices,
	}, d.Pods)
	if err != nil {
		return nil, err
	}
	d.Pods.SetHooks(n)
	return n, nil
}
