package kubelet_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"sigs.k8s.io/yaml"

	"github.com/tripod-dev/tripod/internal/csi/csitest"
)

// Labels kubelet puts on the sandboxes and containers it creates.
const (
	labelNamespace = "io.kubernetes.pod.namespace"
	labelPodName   = "io.kubernetes.pod.name"
	labelContainer = "io.kubernetes.container.name"
)

// serverPod is a pod whose one container writes a line to its log and
// serves body over HTTP on addr with busybox httpd until SIGTERM.
func serverPod(namespace, name, addr, body string, hostNetwork bool) *corev1.Pod {
	grace := int64(5)
	script := fmt.Sprintf(`echo "tripod-e2e: %s started"; mkdir -p /www; echo %q > /www/index.html
trap 'exit 0' TERM
httpd -f -p %s -h /www & wait`, name, body, addr)
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: corev1.PodSpec{
			HostNetwork:                   hostNetwork,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "web", Image: busyboxRef, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"sh", "-c", script},
			}},
		},
	}
}

func toYAML(t *testing.T, obj any) []byte {
	b, err := yaml.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKubeletStandalone runs a real kubelet (no API server) on tripodd with
// static pods: a pod on tripod's CNI network and a hostNetwork pod start
// and serve HTTP, their logs appear under /var/log/pods, crictl exec works,
// removing the manifests stops them, and kubelet's garbage collection
// leaves tripodd holding no pod and no container.
func TestKubeletStandalone(t *testing.T) {
	tl := findTools(t, false)
	n := newNode(t, tl)
	p := newPKI(t, filepath.Join(n.dir, "pki"))
	k := n.startKubelet(kubeletOptions{pki: p})

	hostPort := freePort(t)
	pods := map[string]*corev1.Pod{
		"web":  serverPod(k.namespace, "web", "8080", "web-"+n.tag, false),
		"host": serverPod(k.namespace, "host", fmt.Sprintf("127.0.0.1:%d", hostPort), "host-"+n.tag, true),
	}
	for name, pod := range pods {
		k.writeManifest(name, toYAML(t, pod))
	}

	// Static pods are named <name>-<node name>.
	ctx := ctxFor(t, 4*time.Minute)
	running := map[string]*runtimeapi.Container{}
	for name := range pods {
		podName := name + "-localhost"
		if err := waitFor(ctx, "pod "+podName+" running", func(ctx context.Context) (bool, error) {
			cs, err := n.containers(ctx, map[string]string{labelNamespace: k.namespace, labelPodName: podName})
			if err != nil {
				return false, err
			}
			for _, c := range cs {
				if c.State == runtimeapi.ContainerState_CONTAINER_RUNNING {
					running[name] = c
					return true, nil
				}
			}
			return false, retry("containers %v", cs)
		}, k.p, n.tripodd); err != nil {
			t.Fatal(err)
		}
	}

	n.step("static pods running")

	t.Run("Network", func(t *testing.T) {
		c := running["web"]
		st, err := n.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: c.PodSandboxId})
		if err != nil {
			t.Fatal(err)
		}
		ip := st.GetStatus().GetNetwork().GetIp()
		_, subnet, _ := net.ParseCIDR(n.subnet)
		if !subnet.Contains(net.ParseIP(ip)) {
			t.Fatalf("pod IP %q is not in the CNI network's %s", ip, n.subnet)
		}
		var body string
		if err := waitFor(ctx, "HTTP to the pod", func(ctx context.Context) (bool, error) {
			body, err = httpGet(ctx, nil, "http://"+net.JoinHostPort(ip, "8080")+"/")
			return err == nil, err
		}); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(body) != "web-"+n.tag {
			t.Errorf("pod answered %q, want %q", body, "web-"+n.tag)
		}
	})

	t.Run("HostNetwork", func(t *testing.T) {
		c := running["host"]
		st, err := n.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: c.PodSandboxId})
		if err != nil {
			t.Fatal(err)
		}
		if m := st.GetStatus().GetLinux().GetNamespaces().GetOptions().GetNetwork(); m != runtimeapi.NamespaceMode_NODE {
			t.Errorf("hostNetwork pod's network namespace mode is %v, want NODE", m)
		}
		var body string
		if err := waitFor(ctx, "HTTP to the hostNetwork pod", func(ctx context.Context) (bool, error) {
			body, err = httpGet(ctx, nil, fmt.Sprintf("http://127.0.0.1:%d/", hostPort))
			return err == nil, err
		}); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(body) != "host-"+n.tag {
			t.Errorf("hostNetwork pod answered %q, want %q", body, "host-"+n.tag)
		}
	})

	t.Run("Logs", func(t *testing.T) {
		for name, c := range running {
			st, err := n.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.Id})
			if err != nil {
				t.Fatal(err)
			}
			logPath := st.GetStatus().GetLogPath()
			// <podLogsDir>/<namespace>_<name>_<uid>/<container>/<restart>.log
			dir := filepath.Join(podLogsDir, fmt.Sprintf("%s_%s-localhost_%s", k.namespace, name, c.Labels["io.kubernetes.pod.uid"]))
			if want := filepath.Join(dir, "web", "0.log"); logPath != want {
				t.Errorf("%s: log path %q, want %q", name, logPath, want)
			}
			want := fmt.Sprintf(" stdout F tripod-e2e: %s started\n", name)
			if err := waitFor(ctx, name+" log line", func(context.Context) (bool, error) {
				b, err := os.ReadFile(logPath)
				if err != nil || !strings.Contains(string(b), want) {
					return false, retry("%s: %q, %v", logPath, b, err)
				}
				return true, nil
			}); err != nil {
				t.Error(err)
			}
			// kubelet's legacy link in /var/log/containers.
			link := filepath.Join(containerLogsDir, fmt.Sprintf("%s-localhost_%s_web-%s.log", name, k.namespace, c.Id))
			if target, err := os.Readlink(link); err != nil || target != logPath {
				t.Errorf("%s: %s -> %q (%v), want -> %s", name, link, target, err, logPath)
			}
		}
	})

	t.Run("CrictlExec", func(t *testing.T) {
		for name, c := range running {
			cmd := exec.CommandContext(ctx, tl.crictl, "--runtime-endpoint", "unix://"+n.sock, "--timeout", "30s",
				"exec", c.Id, "cat", "/www/index.html")
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("crictl exec into %s: %v\n%s%s", name, err, out, stderr.String())
			}
			if got, want := strings.TrimSpace(string(out)), name+"-"+n.tag; got != want {
				t.Errorf("crictl exec cat in %s: %q, want %q", name, got, want)
			}
		}
	})

	// Removing a manifest stops its pod.
	for name := range pods {
		k.removeManifest(name)
	}
	ns := map[string]string{labelNamespace: k.namespace}
	if err := waitFor(ctx, "pods stopped", func(ctx context.Context) (bool, error) {
		sbs, err := n.sandboxes(ctx, ns)
		if err != nil {
			return false, err
		}
		for _, s := range sbs {
			if s.State == runtimeapi.PodSandboxState_SANDBOX_READY {
				return false, retry("sandbox %s ready", s.Metadata.Name)
			}
		}
		cs, err := n.containers(ctx, ns)
		if err != nil {
			return false, err
		}
		for _, c := range cs {
			if c.State == runtimeapi.ContainerState_CONTAINER_RUNNING {
				return false, retry("container of %s running", c.Labels[labelPodName])
			}
		}
		return true, nil
	}, k.p, n.tripodd); err != nil {
		t.Fatal(err)
	}
	n.step("manifests removed: pods stopped")
	if _, err := httpGet(ctx, nil, fmt.Sprintf("http://127.0.0.1:%d/", hostPort)); err == nil {
		t.Error("the hostNetwork pod still serves after its manifest was removed")
	}

	// kubelet's garbage collection (every minute) removes the dead
	// containers and sandboxes of deleted pods, and their log directories;
	// its pod cleanup removes their cgroups.
	if err := waitFor(ctx, "garbage collection", func(ctx context.Context) (bool, error) {
		sbs, err := n.sandboxes(ctx, nil)
		if err != nil {
			return false, err
		}
		cs, err := n.containers(ctx, nil)
		if err != nil {
			return false, err
		}
		if len(sbs)+len(cs) > 0 {
			return false, retry("tripodd holds %d pods, %d containers", len(sbs), len(cs))
		}
		return true, nil
	}, k.p, n.tripodd); err != nil {
		t.Fatal(err)
	}
	n.step("garbage collected: tripodd holds no pod and no container")
	if err := waitFor(ctx, "pod log directories and cgroups removed", func(context.Context) (bool, error) {
		if logs := k.podLogs(); len(logs) > 0 {
			return false, retry("log directories %v", logs)
		}
		if cg := k.podCgroups(); len(cg) > 0 {
			return false, retry("pod cgroups %v", cg)
		}
		return true, nil
	}, k.p); err != nil {
		t.Error(err)
	}
	mps, err := csitest.Mounts(k.root)
	if err != nil {
		t.Fatal(err)
	}
	for _, mp := range mps {
		if mp != k.root { // kubelet's own rshared bind of its root
			t.Errorf("mount left under kubelet's root: %s", mp)
		}
	}

	// kubelet 1.37 has no pause image setting and pulled only what the
	// pods run.
	imgs, err := n.img.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, img := range imgs.Images {
		tags = append(tags, img.RepoTags...)
	}
	if len(tags) != 1 || tags[0] != busyboxRef {
		t.Errorf("images on the node: %v, want only %s", tags, busyboxRef)
	}
}
