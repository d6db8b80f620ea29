package play

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// imageStatus is the image as the runtime has it, nil when absent.
func (n *Node) imageStatus(ctx context.Context, ref string) (*runtimeapi.Image, error) {
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	resp, err := n.img.ImageStatus(cctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		return nil, fmt.Errorf("ImageStatus %s: %w", ref, err)
	}
	return resp.Image, nil
}

// ensureImage makes ref present as the pull policy says: Never only
// checks, IfNotPresent pulls when missing, Always pulls (which costs only
// a manifest request when nothing changed).
func (n *Node) ensureImage(ctx context.Context, ref string, policy corev1.PullPolicy) error {
	if policy == "" {
		policy = corev1.PullIfNotPresent
		if latest(ref) {
			policy = corev1.PullAlways
		}
	}
	if policy != corev1.PullAlways {
		img, err := n.imageStatus(ctx, ref)
		if err != nil {
			return err
		}
		if img != nil {
			return nil
		}
		if policy == corev1.PullNever {
			return fmt.Errorf("image %s is not present and imagePullPolicy is Never", ref)
		}
	}
	var err error
	if n.opts.Pull != nil {
		err = n.opts.Pull(ctx, n.img, ref)
	} else {
		_, err = n.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	}
	if err != nil {
		if s, ok := status.FromError(err); ok && s.Code() == codes.NotFound {
			return fmt.Errorf("image %s not found: %s", ref, s.Message())
		}
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	return nil
}
