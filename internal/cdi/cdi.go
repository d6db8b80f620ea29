// Package cdi resolves Container Device Interface devices (fully
// qualified names such as vendor.com/class=name) against the CDI spec
// files of a node and applies their container edits (device nodes,
// environment, mounts, hooks) to OCI specs.
package cdi

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"

	"github.com/tripod-dev/tripod/internal/errdefs"
)

// Registry is the CDI devices described in a list of spec directories.
type Registry struct {
	cache *cdi.Cache
	log   *slog.Logger
}

// New reads specs from dirs (later ones take precedence over earlier
// ones, as in the CDI specification). The directories are rescanned for
// each injection, not watched: devices are asked for only at container
// creation, and a watch would cost a goroutine and inotify for nothing.
func New(dirs []string, log *slog.Logger) (*Registry, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := cdi.NewCache(cdi.WithSpecDirs(dirs...), cdi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("cdi: %w", err)
	}
	return &Registry{cache: c, log: log}, nil
}

// Devices lists the devices a container asks for: its CRI CDI_devices,
// then those its cdi.k8s.io/ annotations name, each once.
func Devices(named []string, annotations map[string]string) ([]string, error) {
	_, fromAnn, err := cdi.ParseAnnotations(annotations)
	if err != nil {
		return nil, fmt.Errorf("annotations: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var out []string
	for _, d := range append(slices.Clone(named), fromAnn...) {
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out, nil
}

// Inject applies the container edits of devices to spec. An unknown or
// malformed device name is an InvalidArgument error naming it.
func (r *Registry) Inject(spec *specs.Spec, devices []string) error {
	if len(devices) == 0 {
		return nil
	}
	var bad []string
	for _, d := range devices {
		if !parser.IsQualifiedName(d) {
			bad = append(bad, d)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("CDI_devices: %s: not a fully qualified CDI device name (vendor/class=name): %w",
			strings.Join(bad, ", "), errdefs.ErrInvalidArgument)
	}
	// A broken spec file spoils only its own devices: say so, and go on
	// with the others.
	if err := r.cache.Refresh(); err != nil {
		r.log.Warn("CDI spec errors", "err", err)
	}
	unresolved, err := r.cache.InjectDevices(spec, devices...)
	if len(unresolved) > 0 {
		return fmt.Errorf("CDI_devices: unknown CDI device %s (spec dirs %s): %w",
			strings.Join(unresolved, ", "), strings.Join(r.cache.GetSpecDirectories(), ", "), errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return fmt.Errorf("CDI devices %s: %w", strings.Join(devices, ", "), err)
	}
	return nil
}

// ErrDisabled is returned when a container asks for CDI devices on a node
// configured without CDI spec directories.
var ErrDisabled = errors.New("CDI is disabled (runtime.cdi_spec_dirs is empty)")
