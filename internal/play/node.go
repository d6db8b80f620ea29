// Package play is a small kubelet for one node: it runs Kubernetes v1 Pod
// manifests by speaking to tripodd only over the CRI (gRPC on its socket)
// and to tripod-csi only over CSI (gRPC on its socket), never through
// their Go code, so it exercises the interfaces as kubelet does. It
// supervises the pods (restart policies with kubelet's back-off, probes)
// and keeps what it played in a small state file, so that another process
// can list, follow, exec into and delete the pods, and a later play adopts
// them instead of starting them twice.
package play

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PullFunc pulls one image through img, showing progress as it likes.
type PullFunc func(ctx context.Context, img runtimeapi.ImageServiceClient, image string) error

// Options say where the node's services are.
type Options struct {
	CRIEndpoint string // tripodd, e.g. unix:///run/tripod/tripod.sock
	CSIEndpoint string // tripod-csi
	Dir         string // play's state: state.json, pod directories, claims' staging paths
	// Out receives events (one line each) and progress.
	Out io.Writer
	// Pull pulls an image; nil means a plain CRI PullImage.
	Pull PullFunc
	// SeccompDir resolves Localhost seccomp profiles, as kubelet's
	// <root-dir>/seccomp does.
	SeccompDir string
	// Backoff is the first restart delay of a crashing container (kubelet:
	// 10s), doubled per restart up to MaxBackoff (5m).
	Backoff, MaxBackoff time.Duration
}

// Node is one connection to the node's CRI (and, on first need, CSI).
type Node struct {
	opts Options
	st   *store
	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient
	img  runtimeapi.ImageServiceClient

	csiMu sync.Mutex
	csi   *csiClient

	outMu sync.Mutex
}

// Open connects to tripodd and checks that it answers.
func Open(ctx context.Context, opts Options) (*Node, error) {
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 10 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Minute
	}
	if opts.SeccompDir == "" {
		opts.SeccompDir = "/var/lib/kubelet/seccomp"
	}
	conn, err := grpc.NewClient(opts.CRIEndpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("CRI endpoint %s: %w", opts.CRIEndpoint, err)
	}
	n := &Node{opts: opts, st: &store{dir: opts.Dir}, conn: conn,
		rt: runtimeapi.NewRuntimeServiceClient(conn), img: runtimeapi.NewImageServiceClient(conn)}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := n.rt.Version(vctx, &runtimeapi.VersionRequest{}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("tripodd does not answer on %s (is tripod up?): %w", opts.CRIEndpoint, err)
	}
	return n, nil
}

// Close drops the connections.
func (n *Node) Close() {
	n.conn.Close()
	if n.csi != nil {
		n.csi.conn.Close()
	}
}

// Runtime is the CRI runtime client (for callers that print or test).
func (n *Node) Runtime() runtimeapi.RuntimeServiceClient { return n.rt }

// event prints one line about a pod.
func (n *Node) event(key, format string, args ...any) {
	n.outMu.Lock()
	defer n.outMu.Unlock()
	fmt.Fprintf(n.opts.Out, "%s %s: %s\n", time.Now().Format("15:04:05"), key, fmt.Sprintf(format, args...))
}

// hostIP is the address this node reaches the outside from (status.hostIP).
func hostIP() string {
	c, err := net.Dial("udp", "192.0.2.1:9") // no packet leaves: a UDP connect only routes
	if err != nil {
		return "127.0.0.1"
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String()
}

// callTimeout bounds one CRI or CSI call that should not hang forever.
const callTimeout = 2 * time.Minute

func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, callTimeout)
}
