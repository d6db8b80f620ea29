package pod

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/oci"
	"github.com/tripod-dev/tripod/internal/rootfs"
)

// ImageMount asks for an image mounted read-only into the container as a
// volume (KEP-4639 image volumes).
type ImageMount struct {
	Image         string `json:"image"` // as given (kubelet gives the image ID)
	SubPath       string `json:"subPath,omitempty"`
	ContainerPath string `json:"containerPath"`
}

// ImageVolume is an image mount as made: the image's layers mounted
// read-only under the container's bundle, and the path bound into it.
// Its layers count as in use (LayersInUse) until the container is removed.
type ImageVolume struct {
	ImageMount
	ImageID  string   `json:"imageID"`
	ChainIDs []string `json:"chainIDs"`
	Dir      string   `json:"dir"`
	Source   string   `json:"source"`
}

// resolveImageVolumes looks up the images of ms; they must have been
// pulled. It returns the volumes (not yet mounted) and their layer dirs.
func (m *Manager) resolveImageVolumes(bundle string, ms []ImageMount) ([]ImageVolume, [][]string, error) {
	var vols []ImageVolume
	var dirs [][]string
	for i, im := range ms {
		if im.ContainerPath == "" {
			return nil, nil, fmt.Errorf("config.mounts[%d].container_path: required: %w", i, errdefs.ErrInvalidArgument)
		}
		if im.SubPath != "" && !filepath.IsLocal(im.SubPath) {
			return nil, nil, fmt.Errorf("config.mounts[%d].image_sub_path: %q is not a relative path inside the image: %w", i, im.SubPath, errdefs.ErrInvalidArgument)
		}
		img, err := m.images.Lookup(im.Image)
		if err != nil {
			return nil, nil, fmt.Errorf("config.mounts[%d].image %q (image volumes must be pulled first): %w", i, im.Image, err)
		}
		layers, err := m.images.LayerDirs(img)
		if err != nil {
			return nil, nil, fmt.Errorf("config.mounts[%d].image %q: %w", i, im.Image, err)
		}
		v := ImageVolume{ImageMount: im, ImageID: img.ID, Dir: filepath.Join(bundle, "image-volumes", strconv.Itoa(i))}
		for _, l := range img.Layers {
			v.ChainIDs = append(v.ChainIDs, l.ChainID)
		}
		vols = append(vols, v)
		dirs = append(dirs, layers)
	}
	return vols, dirs, nil
}

// mountImageVolumes mounts c's image volumes and finds their sources. On
// failure what was mounted is unmounted.
func (m *Manager) mountImageVolumes(c *Container, dirs [][]string) (err error) {
	defer func() {
		if err != nil {
			m.unmountImageVolumes(c)
		}
	}()
	for i := range c.ImageVolumes {
		v := &c.ImageVolumes[i]
		if err := rootfs.MountReadOnly(dirs[i], v.Dir); err != nil {
			return fmt.Errorf("image volume %s: %w", v.ContainerPath, err)
		}
		src, err := rootfs.Resolve(v.Dir, v.SubPath)
		if err != nil {
			return fmt.Errorf("config.mounts[%d].image_sub_path: not in image %s: %w", i, v.Image, errdefs.Wrap(errdefs.ErrInvalidArgument, err))
		}
		v.Source = src
	}
	return nil
}

// unmountImageVolumes unmounts what mountImageVolumes mounted; it is
// idempotent, for rollbacks and for removals a crash interrupted.
func (m *Manager) unmountImageVolumes(c *Container) error {
	var errs []error
	for _, v := range c.ImageVolumes {
		if err := rootfs.Unmount(v.Dir); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Remove(v.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// imageVolumeMounts are the bind mounts of c's image volumes, read-only.
func (c *Container) imageVolumeMounts() []oci.Mount {
	var out []oci.Mount
	for _, v := range c.ImageVolumes {
		out = append(out, oci.Mount{HostPath: v.Source, ContainerPath: v.ContainerPath, Readonly: true, Propagation: "private"})
	}
	return out
}
