// Package server is tripodd's CRI gRPC layer. It validates and translates
// CRI messages into calls on the core services and their errors into gRPC
// status codes; the logic lives in the core.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/errdefs"
	"github.com/tripod-dev/tripod/internal/image"
	"github.com/tripod-dev/tripod/internal/image/pull"
)

// Images is what the image service needs from the core.
type Images interface {
	Pull(ctx context.Context, ref string, auth *pull.Auth) (image.Image, error)
	List(filter string) ([]image.Image, error)
	Lookup(ref string) (image.Image, error)
	Config(img image.Image) ([]byte, error)
	LayerDirs(img image.Image) ([]string, error)
	Remove(ctx context.Context, ref string) error
	FsInfo(ctx context.Context) (images, containers image.FsUsage, err error)
}

// ImageServer serves the CRI ImageService.
type ImageServer struct {
	runtimeapi.UnimplementedImageServiceServer
	images Images
}

// NewImageServer serves images.
func NewImageServer(images Images) *ImageServer { return &ImageServer{images: images} }

var _ runtimeapi.ImageServiceServer = (*ImageServer)(nil)

func imageRef(spec *runtimeapi.ImageSpec) (string, error) {
	if spec == nil || spec.Image == "" {
		return "", status.Error(codes.InvalidArgument, "image: an image reference is required")
	}
	return spec.Image, nil
}

// PullImage pulls an image; the reply's image_ref is the image ID.
func (s *ImageServer) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	ref, err := imageRef(req.GetImage())
	if err != nil {
		return nil, err
	}
	var auth *pull.Auth
	if a := req.GetAuth(); a != nil {
		auth = &pull.Auth{Username: a.Username, Password: a.Password, Auth: a.Auth,
			IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
	}
	img, err := s.images.Pull(ctx, ref, auth)
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.PullImageResponse{ImageRef: img.ID}, nil
}

// ListImages lists images, or the one the filter names.
func (s *ImageServer) ListImages(ctx context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	imgs, err := s.images.List(req.GetFilter().GetImage().GetImage())
	if err != nil {
		return nil, toStatus(err)
	}
	out := make([]*runtimeapi.Image, len(imgs))
	for i, img := range imgs {
		out[i] = toCRI(img)
	}
	return &runtimeapi.ListImagesResponse{Images: out}, nil
}

// StreamImages is ListImages in chunks, for nodes with many images.
func (s *ImageServer) StreamImages(req *runtimeapi.StreamImagesRequest, stream runtimeapi.ImageService_StreamImagesServer) error {
	imgs, err := s.images.List(req.GetFilter().GetImage().GetImage())
	if err != nil {
		return toStatus(err)
	}
	const chunk = 100
	for i := 0; i < len(imgs); i += chunk {
		resp := &runtimeapi.StreamImagesResponse{}
		for _, img := range imgs[i:min(i+chunk, len(imgs))] {
			resp.Images = append(resp.Images, toCRI(img))
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	return nil
}

// ImageStatus describes one image; an unknown image is an empty reply,
// not an error, as the CRI says.
func (s *ImageServer) ImageStatus(ctx context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	ref, err := imageRef(req.GetImage())
	if err != nil {
		return nil, err
	}
	img, err := s.images.Lookup(ref)
	if errors.Is(err, errdefs.ErrNotFound) {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &runtimeapi.ImageStatusResponse{Image: toCRI(img)}
	if req.Verbose {
		cfg, err := s.images.Config(img)
		if err != nil {
			return nil, toStatus(err)
		}
		dirs, err := s.images.LayerDirs(img)
		if err != nil {
			return nil, toStatus(err)
		}
		info, err := json.Marshal(struct {
			ImageSpec json.RawMessage `json:"imageSpec"`
			Manifest  string          `json:"manifest"`
			MediaType string          `json:"mediaType"`
			ChainID   string          `json:"chainID,omitempty"`
			LayerDirs []string        `json:"layerDirs"`
		}{cfg, img.Manifest, img.MediaType, topChain(img), dirs})
		if err != nil {
			return nil, status.Errorf(codes.Internal, "image info: %v", err)
		}
		resp.Info = map[string]string{"info": string(info)}
	}
	return resp, nil
}

func topChain(img image.Image) string {
	if len(img.Layers) == 0 {
		return ""
	}
	return img.Layers[len(img.Layers)-1].ChainID
}

// RemoveImage removes an image by ID, tag or digest; removing an image that
// is gone succeeds.
func (s *ImageServer) RemoveImage(ctx context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	ref, err := imageRef(req.GetImage())
	if err != nil {
		return nil, err
	}
	if err := s.images.Remove(ctx, ref); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}

// ImageFsInfo reports the image store's and the writable layers' usage.
func (s *ImageServer) ImageFsInfo(ctx context.Context, _ *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	imgs, ctrs, err := s.images.FsInfo(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	now := time.Now().UnixNano()
	usage := func(u image.FsUsage) *runtimeapi.FilesystemUsage {
		return &runtimeapi.FilesystemUsage{
			Timestamp:  now,
			FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: u.Mountpoint},
			UsedBytes:  &runtimeapi.UInt64Value{Value: u.Bytes},
			InodesUsed: &runtimeapi.UInt64Value{Value: u.Inodes},
		}
	}
	return &runtimeapi.ImageFsInfoResponse{
		ImageFilesystems:     []*runtimeapi.FilesystemUsage{usage(imgs)},
		ContainerFilesystems: []*runtimeapi.FilesystemUsage{usage(ctrs)},
	}, nil
}

func toCRI(img image.Image) *runtimeapi.Image {
	out := &runtimeapi.Image{
		Id:          img.ID,
		RepoTags:    img.RepoTags,
		RepoDigests: img.RepoDigests,
		Size:        uint64(img.Size),
		Username:    img.Username,
		Spec:        &runtimeapi.ImageSpec{Image: img.ID},
		Pinned:      img.Pinned,
	}
	if img.UID != nil {
		out.Uid = &runtimeapi.Int64Value{Value: *img.UID}
	}
	return out
}

// toStatus maps a core error to a gRPC status with the error's message.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	default:
		switch errdefs.Kind(err) {
		case errdefs.ErrInvalidArgument:
			code = codes.InvalidArgument
		case errdefs.ErrNotFound:
			code = codes.NotFound
		case errdefs.ErrAlreadyExists:
			code = codes.AlreadyExists
		case errdefs.ErrPermissionDenied:
			code = codes.PermissionDenied
		case errdefs.ErrUnavailable:
			code = codes.Unavailable
		case errdefs.ErrResourceExhausted:
			code = codes.ResourceExhausted
		case errdefs.ErrDataLoss:
			code = codes.DataLoss
		case errdefs.ErrFailedPrecondition:
			code = codes.FailedPrecondition
		}
	}
	return status.Error(code, err.Error())
}
