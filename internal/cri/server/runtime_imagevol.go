package server

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/pod"
)

// imageMount reads a CRI mount of an image (an image volume, KEP-4639);
// ok is false for other mounts. Image volumes are read-only by definition:
// one asked for writable is refused rather than silently made read-only.
func imageMount(i int, mt *runtimeapi.Mount) (im pod.ImageMount, ok bool, err error) {
	if mt.GetImage().GetImage() == "" {
		return im, false, nil
	}
	if !mt.Readonly {
		return im, true, status.Errorf(codes.InvalidArgument, "config.mounts[%d].readonly: an image volume is read-only; set readonly", i)
	}
	if mt.ContainerPath == "" {
		return im, true, status.Errorf(codes.InvalidArgument, "config.mounts[%d].container_path: required", i)
	}
	return pod.ImageMount{Image: mt.Image.Image, SubPath: mt.ImageSubPath, ContainerPath: mt.ContainerPath}, true, nil
}

// imageVolumeStatus reports a container's image volumes as CRI mounts,
// with the image ID as image_ref (what PullImage returned).
func imageVolumeStatus(c *pod.Container) []*runtimeapi.Mount {
	var out []*runtimeapi.Mount
	for _, v := range c.ImageVolumes {
		out = append(out, &runtimeapi.Mount{ContainerPath: v.ContainerPath, Readonly: true, ImageSubPath: v.SubPath,
			Image: &runtimeapi.ImageSpec{Image: v.Image, ImageRef: v.ImageID}})
	}
	return out
}
