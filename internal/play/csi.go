package play

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// csiClient is tripod-csi as kubelet sees it: Identity, Controller and
// Node over its socket, and what the driver says it can do.
type csiClient struct {
	conn *grpc.ClientConn
	id   csi.IdentityClient
	ctrl csi.ControllerClient
	node csi.NodeClient
	name string // GetPluginInfo
	// stage: the node service has STAGE_UNSTAGE_VOLUME, so a claim is
	// staged once at a global path and published per pod.
	stage bool
}

// csiClient connects on first use: pods without CSI volumes need no
// driver.
func (n *Node) csiClient(ctx context.Context) (*csiClient, error) {
	n.csiMu.Lock()
	defer n.csiMu.Unlock()
	if n.csi != nil {
		return n.csi, nil
	}
	conn, err := grpc.NewClient(n.opts.CSIEndpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("CSI endpoint %s: %w", n.opts.CSIEndpoint, err)
	}
	c := &csiClient{conn: conn, id: csi.NewIdentityClient(conn), ctrl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn)}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := c.id.GetPluginInfo(cctx, &csi.GetPluginInfoRequest{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("tripod-csi does not answer on %s (is tripod up?): %w", n.opts.CSIEndpoint, err)
	}
	c.name = info.Name
	caps, err := c.node.NodeGetCapabilities(cctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("CSI NodeGetCapabilities: %w", err)
	}
	for _, cp := range caps.Capabilities {
		if cp.GetRpc().GetType() == csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME {
			c.stage = true
		}
	}
	n.csi = c
	return c, nil
}

// mountCap is the capability play asks for: a filesystem, one node
// writing (a ReadWriteOnce claim, as kubelet sends it).
func mountCap(fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// inlineHandle is kubelet's volume handle for an inline volume: unique per
// pod and volume, stable across retries.
func inlineHandle(podUID, volume string) string {
	sum := sha256.Sum256([]byte(podUID + volume))
	return "csi-" + hex.EncodeToString(sum[:])
}

// podInfo is the volume context kubelet adds for a driver whose CSIDriver
// has podInfoOnMount (tripod's does).
func podInfo(p *Pod, uid string, ephemeral bool) map[string]string {
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return map[string]string{
		"csi.storage.k8s.io/pod.name":            p.Name,
		"csi.storage.k8s.io/pod.namespace":       p.Namespace,
		"csi.storage.k8s.io/pod.uid":             uid,
		"csi.storage.k8s.io/serviceAccount.name": sa,
		"csi.storage.k8s.io/ephemeral":           fmt.Sprint(ephemeral),
	}
}

// claimCSIName is the CreateVolume name of a claim: derived from it, so a
// retried or repeated creation finds the same volume.
func claimCSIName(key string) string { return "tripod-play/" + key }
