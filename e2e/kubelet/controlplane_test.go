package kubelet_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// controlPlane is etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler on loopback, for one test. Every component authenticates
// with a client certificate of the test's CA.
type controlPlane struct {
	n        *node
	pki      *pki
	dir      string
	server   string // https://127.0.0.1:<port>
	admin    string // kubeconfig of a system:masters user
	cacheDir string // kubectl's discovery cache
	procs    []*proc
}

// Controllers kube-controller-manager runs: those a node with volumes
// needs (node lifecycle lifts the not-ready taint; the volume binder binds
// claims to the volumes the provisioner makes; the protection controllers
// hold claims and volumes in use; attach-detach records that CSI volumes
// need no attach).
var controllers = []string{"node-lifecycle-controller", "persistentvolume-binder-controller",
	"persistentvolume-protection-controller", "persistentvolumeclaim-protection-controller",
	"persistentvolume-attach-detach-controller", "garbage-collector-controller"}

// startControlPlane starts etcd and the API server and waits until it is
// ready, then the controller manager and the scheduler.
func (n *node) startControlPlane(p *pki) *controlPlane {
	t := n.t
	c := &controlPlane{n: n, pki: p, dir: filepath.Join(n.dir, "control-plane"), cacheDir: filepath.Join(n.dir, "kubectl-cache")}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// Stopped last (after the node's teardown), API server before etcd.
	n.after = append(n.after, func() {
		for i := len(c.procs) - 1; i >= 0; i-- {
			c.procs[i].stop(10 * time.Second)
			if t.Failed() {
				t.Logf("%s log (tail):\n%s", c.procs[i].name, c.procs[i].tail(8<<10))
			}
		}
	})

	// etcd: Debian's, on loopback, in the test's directory.
	client, peer := freePort(t), freePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", client)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
	etcd := startProc(t, n.dir, "etcd", nil, n.tools.etcd, "--name", n.tag, "--data-dir", filepath.Join(c.dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", n.tag+"="+peerURL, "--initial-cluster-token", n.tag, "--logger", "zap", "--log-level", "warn")
	c.procs = append(c.procs, etcd)
	ctx := ctxFor(t, 3*time.Minute)
	if err := waitFor(ctx, "etcd health", func(ctx context.Context) (bool, error) {
		body, err := httpGet(ctx, nil, etcdURL+"/health")
		return err == nil && strings.Contains(body, `"true"`), err
	}, etcd); err != nil {
		t.Fatal(err)
	}
	n.step("etcd healthy at %s", etcdURL)

	// kube-apiserver. The node is named localhost and reached by that
	// name (its InternalIP is the host's address, which the API server
	// must not dial); the endpoint reconciler would publish a loopback
	// address as the kubernetes service's endpoint, which it refuses; the
	// ServiceAccount admission plugin would hold every pod until a
	// controller (not run here) made its namespace's default account.
	apiPort := freePort(t)
	c.server = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	cert, key := p.serving(t, p.dir, "apiserver", []string{"localhost", "kubernetes", "kubernetes.default"}, []net.IP{loopback})
	kcert, kkey := p.client(t, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
	saKey, saPub := filepath.Join(p.dir, "sa.key"), filepath.Join(p.dir, "sa.pub")
	sa := newKey(t)
	writeKey(t, saKey, sa)
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, saPub, "PUBLIC KEY", pub)
	api := startProc(t, n.dir, "kube-apiserver", nil, n.tools.apiserver,
		"--etcd-servers", etcdURL, "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", fmt.Sprint(apiPort), "--tls-cert-file", cert, "--tls-private-key-file", key,
		"--client-ca-file", p.caFile, "--authorization-mode", "Node,RBAC",
		"--enable-admission-plugins", "NodeRestriction", "--disable-admission-plugins", "ServiceAccount",
		"--endpoint-reconciler-type", "none", "--kubelet-preferred-address-types", "Hostname",
		"--kubelet-client-certificate", kcert, "--kubelet-client-key", kkey, "--kubelet-certificate-authority", p.caFile,
		"--service-account-issuer", "https://kubernetes.default.svc", "--service-account-key-file", saPub,
		"--service-account-signing-key-file", saKey, "--service-cluster-ip-range", "10.96.0.0/24",
		"--cert-dir", filepath.Join(c.dir, "apiserver-certs"), "--profiling=false")
	c.procs = append(c.procs, api)
	c.admin = p.kubeconfig(t, "admin", c.server, "tripod-e2e-admin", "system:masters")
	acert, akey := filepath.Join(p.dir, "admin.crt"), filepath.Join(p.dir, "admin.key")
	hc := p.httpClient(t, acert, akey)
	if err := waitFor(ctx, "kube-apiserver ready", func(ctx context.Context) (bool, error) {
		body, err := httpGet(ctx, hc, c.server+"/readyz")
		return err == nil && strings.TrimSpace(body) == "ok", err
	}, api, etcd); err != nil {
		t.Fatal(err)
	}
	n.step("kube-apiserver ready at %s", c.server)

	// kube-controller-manager: as a system:masters user (its per-controller
	// service accounts need the token controller, which needs more PKI
	// than this test has use for). No leader election, no serving port.
	kcm := startProc(t, n.dir, "kube-controller-manager", nil, n.tools.controllerManager,
		"--kubeconfig", c.admin, "--controllers", strings.Join(controllers, ","), "--leader-elect=false",
		"--secure-port", "0", "--use-service-account-credentials=false")
	c.procs = append(c.procs, kcm)

	// kube-scheduler, with its own identity (bound by the default RBAC to
	// the scheduler's and the volume scheduler's roles).
	schedConf := filepath.Join(c.dir, "scheduler.yaml")
	if err := os.WriteFile(schedConf, fmt.Appendf(nil, `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %s
leaderElection:
  leaderElect: false
`, p.kubeconfig(t, "scheduler", c.server, "system:kube-scheduler")), 0o644); err != nil {
		t.Fatal(err)
	}
	sched := startProc(t, n.dir, "kube-scheduler", nil, n.tools.scheduler, "--config", schedConf, "--secure-port", "0")
	c.procs = append(c.procs, sched)
	return c
}

// kubectl runs kubectl as the admin, with stdin.
func (c *controlPlane) kubectl(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	args = append([]string{"--kubeconfig", c.admin, "--cache-dir", c.cacheDir}, args...)
	cmd := exec.CommandContext(ctx, c.n.tools.kubectl, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %v: %s", strings.Join(args[4:], " "), err, stderr.Bytes())
	}
	return out, nil
}

// must is kubectl failing the test on error.
func (c *controlPlane) must(ctx context.Context, stdin []byte, args ...string) string {
	c.n.t.Helper()
	out, err := c.kubectl(ctx, stdin, args...)
	if err != nil {
		c.n.t.Fatal(err)
	}
	return string(out)
}

// watch are the control plane's processes, for waitFor.
func (c *controlPlane) watch() []*proc { return c.procs }
