package kubelet_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/csi/csitest"
)

const csiDriver = "csi.tripod.dev"

var loopback = net.IPv4(127, 0, 0, 1)

// startCSI runs tripod-csi for the node, registering itself with the
// kubelet through kubelet's plugin registration directory.
func (n *node) startCSI() {
	t := n.t
	n.csiRoot = filepath.Join(n.dir, "csi/root")
	if err := os.MkdirAll(n.csiRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	n.csiSock = filepath.Join(n.dir, "csi/csi.sock")
	n.csi = startProc(t, n.dir, "tripod-csi", nil, n.tools.tripodCSI, "--endpoint", "unix://"+n.csiSock,
		"--node-id", "localhost", "--root", n.csiRoot, "--registration-dir", filepath.Join(n.kubelet.root, "plugins_registry"))
}

// csiImages are the volume images tripod-csi holds.
func (n *node) csiImages() []string {
	m, _ := filepath.Glob(filepath.Join(n.csiRoot, "volumes", "*.img"))
	return m
}

// appPod mounts the claim "data" at /data and an inline tripod-csi volume
// at /scratch, prints what it finds there and what backs each, then
// writes token to both.
func appPod(namespace, token string) *corev1.Pod {
	grace := int64(5)
	script := `echo "data=$(cat /data/token 2>/dev/null || echo none) scratch=$(cat /scratch/token 2>/dev/null || echo none)"
for d in /data /scratch; do echo "mount $d $(awk -v d=$d '$2 == d { print $3 }' /proc/mounts)"; done
echo "$TOKEN" > /data/token && echo "$TOKEN" > /scratch/token && sync && echo written
trap 'exit 0' TERM
sleep 3600 & wait`
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: namespace},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "app", Image: busyboxRef, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"sh", "-c", script},
				Env:     []corev1.EnvVar{{Name: "TOKEN", Value: token}},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"},
					{Name: "scratch", MountPath: "/scratch"}},
			}},
			Volumes: []corev1.Volume{
				{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}}},
				{Name: "scratch", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: csiDriver,
					VolumeAttributes: map[string]string{"size": "64Mi", "fsType": "ext4"}}}},
			},
		},
	}
}

// TestKubeletControlPlane runs the node under a real control plane: the
// kubelet registers the node with kube-apiserver, tripod-csi registers
// itself with the kubelet, the standard external-provisioner provisions a
// claim of tripod's StorageClass (deploy/csi, applied as shipped), and a
// pod created through the API server, scheduled by kube-scheduler, mounts
// the claim and an inline csi volume, writes to both, is deleted and
// created again, and finds the claim's data (and a fresh inline volume).
func TestKubeletControlPlane(t *testing.T) {
	tl := findTools(t, true)
	n := newNode(t, tl)
	p := newPKI(t, filepath.Join(n.dir, "pki"))
	c := n.startControlPlane(p)
	ctx := ctxFor(t, 6*time.Minute)

	// tripod-csi's objects and RBAC as a cluster installs them.
	root := repoRoot(t)
	for _, f := range []string{"csidriver.yaml", "storageclass.yaml", "rbac.yaml"} {
		c.must(ctx, nil, "apply", "-f", filepath.Join(root, "deploy/csi", f))
	}

	k := n.startKubelet(kubeletOptions{pki: p, kubeconfig: p.kubeconfig(t, "kubelet", c.server, "system:node:localhost", "system:nodes")})
	n.startCSI()
	watch := append(c.watch(), k.p, n.tripodd, n.csi)

	t.Run("NodeReady", func(t *testing.T) {
		if err := waitFor(ctx, "node localhost Ready", func(ctx context.Context) (bool, error) {
			var node corev1.Node
			if err := c.getJSON(ctx, &node, "node", "localhost"); err != nil {
				return false, retry("%v", err)
			}
			for _, cond := range node.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					for _, taint := range node.Spec.Taints {
						if taint.Effect == corev1.TaintEffectNoSchedule {
							return false, retry("ready, still tainted %v", taint)
						}
					}
					return true, nil
				}
			}
			return false, retry("conditions %v", node.Status.Conditions)
		}, watch...); err != nil {
			t.Fatal(err)
		}
		n.step("node localhost registered, Ready and untainted")
	})
	if t.Failed() {
		return
	}

	t.Run("CSIRegistration", func(t *testing.T) {
		// kubelet calls NodeGetInfo on registration and publishes the
		// driver and its topology key on the CSINode, the topology on
		// the node's labels.
		if err := waitFor(ctx, "CSINode localhost lists "+csiDriver, func(ctx context.Context) (bool, error) {
			var cn storagev1.CSINode
			if err := c.getJSON(ctx, &cn, "csinode", "localhost"); err != nil {
				return false, retry("%v", err)
			}
			for _, d := range cn.Spec.Drivers {
				if d.Name == csiDriver && d.NodeID == "localhost" {
					return true, nil
				}
			}
			return false, retry("drivers %+v", cn.Spec.Drivers)
		}, watch...); err != nil {
			t.Fatal(err)
		}
		n.step("tripod-csi registered with kubelet")
		var node corev1.Node
		if err := c.getJSON(ctx, &node, "node", "localhost"); err != nil {
			t.Fatal(err)
		}
		if v := node.Labels["topology.csi.tripod.dev/node"]; v != "localhost" {
			t.Errorf("node label topology.csi.tripod.dev/node = %q, want localhost", v)
		}
	})
	if t.Failed() {
		return
	}

	// external-provisioner beside the driver, as deploy/csi's DaemonSet
	// runs it, but as a host process with the service account's identity
	// (so deploy/csi/rbac.yaml is what grants it its rights).
	prov := startProc(t, n.dir, "csi-provisioner", []string{"NODE_NAME=localhost", "NAMESPACE=kube-system"}, tl.provisioner,
		"--csi-address", n.csiSock, "--kubeconfig", p.kubeconfig(t, "provisioner", c.server, "system:serviceaccount:kube-system:tripod-csi"),
		"--node-deployment=true", "--feature-gates=Topology=true", "--strict-topology=true", "--immediate-topology=false",
		"--enable-capacity=true", "--capacity-ownerref-level=-1", "--extra-create-metadata=true", "--leader-election=false")
	n.stops = append(n.stops, func() { prov.stop(10 * time.Second) })
	watch = append(watch, prov)

	ns := n.tag
	c.must(ctx, nil, "create", "namespace", ns)
	claim := &corev1.PersistentVolumeClaim{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "PersistentVolumeClaim"},
		ObjectMeta: metav1.ObjectMeta{Name: "data", Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr("tripod-ext4"),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}},
		},
	}
	c.must(ctx, toYAML(t, claim), "apply", "-f", "-")

	// runApp creates the pod, waits until it has written, and returns its
	// log's first lines.
	runApp := func(token string) (found string, mounts []string) {
		t.Helper()
		c.must(ctx, toYAML(t, appPod(ns, token)), "apply", "-f", "-")
		var log string
		if err := waitFor(ctx, "pod app wrote "+token, func(ctx context.Context) (bool, error) {
			// Through the API server to kubelet's /containerLogs
			// (reached as "localhost", its Hostname address).
			out, err := c.kubectl(ctx, nil, "logs", "-n", ns, "app")
			if err != nil {
				var pod corev1.Pod
				c.getJSON(ctx, &pod, "-n", ns, "pod", "app")
				return false, retry("%v; pod status %+v", err, pod.Status)
			}
			log = string(out)
			if !strings.Contains(log, "written") {
				return false, retry("log %q", log)
			}
			return true, nil
		}, watch...); err != nil {
			t.Fatal(err)
		}
		n.step("pod app running, wrote %s", token)
		for _, l := range strings.Split(log, "\n") {
			switch {
			case strings.HasPrefix(l, "data="):
				found = l
			case strings.HasPrefix(l, "mount "):
				mounts = append(mounts, l)
			}
		}
		return found, mounts
	}
	deleteApp := func() {
		t.Helper()
		c.must(ctx, nil, "delete", "-n", ns, "pod", "app", "--wait=true", "--timeout=2m")
		n.step("pod app deleted")
		// kubelet confirmed the pod's end before the API server let it
		// go: tripodd's sandbox is stopped.
		sbs, err := n.sandboxes(ctx, map[string]string{labelNamespace: ns})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range sbs {
			if s.State == runtimeapi.PodSandboxState_SANDBOX_READY {
				t.Errorf("sandbox of deleted pod %s still ready", s.Metadata.Name)
			}
		}
	}

	tok1, tok2 := n.tag+"-first", n.tag+"-second"
	found, mounts := runApp(tok1)
	if found != "data=none scratch=none" {
		t.Errorf("first pod found %q, want empty volumes", found)
	}
	for _, m := range []string{"mount /data ext4", "mount /scratch ext4"} {
		if !strings.Contains(strings.Join(mounts, "\n"), m) {
			t.Errorf("first pod's mounts %q: want %q (a tripod-csi ext4 volume)", mounts, m)
		}
	}
	var pvc corev1.PersistentVolumeClaim
	if err := c.getJSON(ctx, &pvc, "-n", ns, "pvc", "data"); err != nil {
		t.Fatal(err)
	}
	if pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName == "" {
		t.Fatalf("claim %s, volume %q: want Bound", pvc.Status.Phase, pvc.Spec.VolumeName)
	}
	var pv corev1.PersistentVolume
	if err := c.getJSON(ctx, &pv, "pv", pvc.Spec.VolumeName); err != nil {
		t.Fatal(err)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != csiDriver {
		t.Fatalf("volume %s is not a %s volume: %+v", pv.Name, csiDriver, pv.Spec.PersistentVolumeSource)
	}
	if imgs := n.csiImages(); len(imgs) != 2 {
		t.Errorf("tripod-csi holds %v, want the claim's and the inline volume's images", imgs)
	}

	// kubectl exec: API server, kubelet's /exec (reached as localhost),
	// tripodd's streaming server.
	if out, err := c.kubectl(ctx, nil, "exec", "-n", ns, "app", "--", "cat", "/data/token"); err != nil {
		t.Errorf("kubectl exec: %v", err)
	} else if strings.TrimSpace(string(out)) != tok1 {
		t.Errorf("kubectl exec cat /data/token: %q, want %q", out, tok1)
	}

	// kubelet's summary API (what metrics-server reads, and kubectl top
	// through it) carries the pod's usage, from tripodd's CRI stats. Asked
	// of kubelet directly: the API server's node proxy refuses loopback
	// addresses.
	scert, skey := p.client(t, "stats-reader", "tripod-e2e-stats")
	kc := p.httpClient(t, scert, skey)
	if err := waitFor(ctx, "pod app in kubelet's stats summary", func(ctx context.Context) (bool, error) {
		out, err := httpGet(ctx, kc, fmt.Sprintf("https://localhost:%d/stats/summary", k.port))
		if err != nil {
			return false, err
		}
		var sum statsSummary
		if err := json.Unmarshal([]byte(out), &sum); err != nil {
			return false, err
		}
		for _, p := range sum.Pods {
			if p.PodRef.Namespace != ns || p.PodRef.Name != "app" {
				continue
			}
			for _, c := range p.Containers {
				if c.Name == "app" && c.Memory.WorkingSetBytes != nil && *c.Memory.WorkingSetBytes > 0 && c.CPU.UsageCoreNanoSeconds != nil {
					return true, nil
				}
			}
			return false, retry("pod stats %s", out)
		}
		return false, retry("no pod app in the summary")
	}, watch...); err != nil {
		t.Error(err)
	} else {
		n.step("kubelet's stats summary has the pod's usage")
	}

	deleteApp()
	// The inline volume lives and dies with its pod.
	if err := waitFor(ctx, "inline volume deleted", func(context.Context) (bool, error) {
		imgs := n.csiImages()
		if len(imgs) != 1 || filepath.Base(imgs[0]) != pv.Spec.CSI.VolumeHandle+".img" {
			return false, retry("images %v, want only %s's", imgs, pv.Spec.CSI.VolumeHandle)
		}
		return true, nil
	}, watch...); err != nil {
		t.Error(err)
	}

	found, _ = runApp(tok2)
	if want := "data=" + tok1 + " scratch=none"; found != want {
		t.Errorf("second pod found %q, want %q (the claim's data, a fresh inline volume)", found, want)
	}

	// Deleting the pod and the claim unpublishes, unstages and deletes
	// the volume (reclaim policy Delete): nothing is left mounted under
	// kubelet's root, and tripod-csi holds no image.
	deleteApp()
	c.must(ctx, nil, "delete", "-n", ns, "pvc", "data", "--wait=true", "--timeout=2m")
	if err := waitFor(ctx, "volume deleted", func(ctx context.Context) (bool, error) {
		if _, err := c.kubectl(ctx, nil, "get", "pv", pv.Name); err == nil {
			return false, retry("PersistentVolume %s still there", pv.Name)
		}
		if imgs := n.csiImages(); len(imgs) > 0 {
			return false, retry("tripod-csi images %v", imgs)
		}
		mps, err := csitest.Mounts(k.root)
		if err != nil {
			return false, err
		}
		if len(mps) > 1 || len(mps) == 1 && mps[0] != k.root {
			return false, retry("mounts under kubelet's root: %v", mps)
		}
		return true, nil
	}, watch...); err != nil {
		t.Error(err)
	}
	n.step("claim deleted: volume unstaged and deleted")
}

// getJSON is kubectl get -o json into v.
func (c *controlPlane) getJSON(ctx context.Context, v any, args ...string) error {
	out, err := c.kubectl(ctx, nil, append([]string{"get", "-o", "json"}, args...)...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("kubectl get %v: %w", args, err)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// statsSummary is the part of kubelet's /stats/summary the test reads
// (k8s.io/kubelet's stats API, which tripod's module does not import).
type statsSummary struct {
	Pods []struct {
		PodRef struct {
			Name, Namespace string
		} `json:"podRef"`
		Containers []struct {
			Name string `json:"name"`
			CPU  struct {
				UsageCoreNanoSeconds *uint64 `json:"usageCoreNanoSeconds"`
			} `json:"cpu"`
			Memory struct {
				WorkingSetBytes *uint64 `json:"workingSetBytes"`
			} `json:"memory"`
		} `json:"containers"`
	} `json:"pods"`
}
