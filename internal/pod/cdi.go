package pod

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tripod-dev/tripod/internal/cdi"
	"github.com/tripod-dev/tripod/internal/errdefs"
)

// DeviceInjector applies CDI devices to a spec (internal/cdi.Registry).
type DeviceInjector interface {
	Inject(spec *specs.Spec, devices []string) error
}

// injectCDI applies the CDI devices c asks for (by CDI_devices or by
// cdi.k8s.io/ annotations) to its spec.
func (m *Manager) injectCDI(spec *specs.Spec, c *Container) error {
	devs, err := cdi.Devices(c.CDIDevices, c.Annotations)
	if err != nil || len(devs) == 0 {
		return err
	}
	if m.opt.CDI == nil {
		return fmt.Errorf("CDI_devices %v: %w", devs, errdefs.Wrap(errdefs.ErrFailedPrecondition, cdi.ErrDisabled))
	}
	return m.opt.CDI.Inject(spec, devs)
}
