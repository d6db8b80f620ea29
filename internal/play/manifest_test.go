package play

import (
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestLoadExamples: the examples decode strictly, with defaults applied.
func TestLoadExamples(t *testing.T) {
	for _, f := range []string{"../../examples/web.yaml", "../../examples/init-probe.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pods, err := Load(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if len(pods) != 1 || pods[0].Namespace != "default" || pods[0].Hash == "" {
			t.Fatalf("%s: %+v", f, pods)
		}
		p := pods[0]
		if p.Spec.TerminationGracePeriodSeconds == nil || p.Spec.DNSPolicy != corev1.DNSClusterFirst {
			t.Errorf("%s: defaults not applied: %+v", f, p.Spec)
		}
		for _, c := range allContainers(p) {
			if c.c.ImagePullPolicy != corev1.PullIfNotPresent {
				t.Errorf("%s: %s pull policy %q", f, c.field, c.c.ImagePullPolicy)
			}
		}
	}
}

// TestLoadErrors: each bad manifest is refused with the pod and the field
// named.
func TestLoadErrors(t *testing.T) {
	const head = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\nspec:\n"
	for _, c := range []struct{ name, doc, want string }{
		{"unknown field", head + "  containers:\n  - name: a\n    image: x:1\n    imagee: y\n", `pod default/bad: unknown field "spec.containers[0].imagee"`},
		{"duplicate field", head + "  containers:\n  - name: a\n    image: x:1\n    image: y:1\n", "pod default/bad: yaml: unmarshal errors:\n  line 9: key \"image\" already set in map"},
		{"wrong type", head + "  containers:\n  - name: a\n    image: x:1\n    ports:\n    - containerPort: eighty\n", `pod default/bad: json: cannot unmarshal string into Go struct field ContainerPort.spec.containers.ports.containerPort of type int32`},
		{"kind", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n", `pod default/d: apiVersion "apps/v1" kind "Deployment": tripod play runs v1 Pods only`},
		{"no name", "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: a\n    image: x:1\n", "document 1: metadata.name: required"},
		{"no containers", head + "  restartPolicy: Never\n", "pod default/bad: spec.containers: at least one container is required"},
		{"configMap volume", head + "  containers:\n  - name: a\n    image: x:1\n  volumes:\n  - name: v\n    configMap:\n      name: c\n",
			"pod default/bad: spec.volumes[0].configMap: volume type not supported by tripod play"},
		{"mount of no volume", head + "  containers:\n  - name: a\n    image: x:1\n    volumeMounts:\n    - name: nope\n      mountPath: /x\n",
			`spec.containers[0].volumeMounts[0].name: "nope" names no volume of the pod`},
		{"restart policy", head + "  restartPolicy: Sometimes\n  containers:\n  - name: a\n    image: x:1\n", `spec.restartPolicy: "Sometimes"`},
		{"envFrom", head + "  containers:\n  - name: a\n    image: x:1\n    envFrom:\n    - configMapRef:\n        name: c\n", "spec.containers[0].envFrom: not supported by tripod play"},
		{"secretKeyRef", head + "  containers:\n  - name: a\n    image: x:1\n    env:\n    - name: X\n      valueFrom:\n        secretKeyRef:\n          name: s\n          key: k\n",
			"spec.containers[0].env[0].valueFrom.secretKeyRef: not supported"},
		{"fieldRef", head + "  containers:\n  - name: a\n    image: x:1\n    env:\n    - name: X\n      valueFrom:\n        fieldRef:\n          fieldPath: spec.nothing\n",
			`spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: "spec.nothing" is not supported`},
		{"probe port name", head + "  containers:\n  - name: a\n    image: x:1\n    livenessProbe:\n      httpGet:\n        port: web\n",
			`spec.containers[0].livenessProbe.httpGet.port: "web" names no port of the container`},
		{"same host port", head + "  containers:\n  - name: a\n    image: x:1\n    ports:\n    - containerPort: 80\n      hostPort: 8080\n  - name: b\n    image: x:1\n    ports:\n    - containerPort: 81\n      hostPort: 8080\n",
			"spec.containers[1].ports[0].hostPort: 8080/TCP is also spec.containers[0].ports[0].hostPort"},
		{"hugepages", head + "  containers:\n  - name: a\n    image: x:1\n    resources:\n      limits:\n        hugepages-2Mi: 2Mi\n", "spec.containers[0].resources.limits[hugepages-2Mi]: not supported"},
		{"request over limit", head + "  containers:\n  - name: a\n    image: x:1\n    resources:\n      limits:\n        memory: 1Mi\n      requests:\n        memory: 2Mi\n", "spec.containers[0].resources.requests[memory]: 2Mi is more than the limit 1Mi"},
		{"init probe", head + "  initContainers:\n  - name: i\n    image: x:1\n    readinessProbe:\n      exec:\n        command: [\"true\"]\n  containers:\n  - name: a\n    image: x:1\n", "spec.initContainers[0]: init containers may not have probes"},
		{"seccomp", head + "  securityContext:\n    seccompProfile:\n      type: Localhost\n  containers:\n  - name: a\n    image: x:1\n", "spec.securityContext.seccompProfile.localhostProfile: required"},
		{"pull secrets", head + "  imagePullSecrets:\n  - name: s\n  containers:\n  - name: a\n    image: x:1\n", "spec.imagePullSecrets: not supported"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load([]byte(c.doc))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v\nwant %q", err, c.want)
			}
		})
	}
}

// TestLoadStream: several pods in one stream; a pod defined twice fails.
func TestLoadStream(t *testing.T) {
	doc := func(name string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\nspec:\n  containers:\n  - name: a\n    image: x:1\n"
	}
	pods, err := Load([]byte("# comment\n---\n" + doc("a") + "---\n" + doc("b") + "---\n"))
	if err != nil || len(pods) != 2 || pods[0].Name != "a" || pods[1].Name != "b" {
		t.Fatalf("%v %v", pods, err)
	}
	if pods[0].Hash == pods[1].Hash {
		t.Error("different pods hash alike")
	}
	if _, err := Load([]byte(doc("a") + "---\n" + doc("a"))); err == nil || !strings.Contains(err.Error(), "pod default/a: defined twice (documents 1 and 2)") {
		t.Fatal(err)
	}
	if _, err := Load([]byte("# nothing\n")); err == nil {
		t.Fatal("an empty manifest loads")
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "1", "B": "x y"}
	for in, want := range map[string]string{
		"$(A)":         "1",
		"a$(A)b$(B)c":  "a1bx yc",
		"$(C)":         "$(C)",
		"$$(A)":        "$(A)",
		"$$":           "$",
		"cost $5":      "cost $5",
		"$(A":          "$(A",
		"plain":        "plain",
		"$(A)$(A)$$$$": "11$$",
	} {
		if got := expand(in, vars); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestBackoff: kubelet's sequence: immediate, then 10s doubling to 5m,
// reset after a run of twice the maximum.
func TestBackoff(t *testing.T) {
	w := &worker{n: &Node{opts: Options{Backoff: 10 * time.Second, MaxBackoff: 5 * time.Minute}}, backoff: map[string]*backoff{}}
	now := time.Now()
	if d := w.wait("c", now); d != 0 {
		t.Fatalf("first restart waits %s", d)
	}
	var seq []time.Duration
	for i := 0; i < 8; i++ {
		w.next("c", now)
		seq = append(seq, w.backoff["c"].cur)
	}
	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 300 * time.Second, 300 * time.Second, 300 * time.Second}
	for i := range want {
		if seq[i] != want[i] {
			t.Fatalf("back-off sequence %v, want %v", seq, want)
		}
	}
	if d := w.wait("c", now); d < 299*time.Second {
		t.Errorf("wait right after a crash: %s", d)
	}
	if d := w.wait("c", now.Add(11*time.Minute)); d != 0 {
		t.Errorf("a container that ran 11 minutes still backs off %s", d)
	}
	if _, ok := w.backoff["c"]; ok {
		t.Error("back-off not reset")
	}
}

func TestResources(t *testing.T) {
	b := []byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: r\nspec:\n  containers:\n  - name: a\n    image: x:1\n    resources:\n      limits:\n        cpu: 250m\n        memory: 64Mi\n")
	pods, err := Load(b)
	if err != nil {
		t.Fatal(err)
	}
	p := pods[0]
	if qosClass(p) != corev1.PodQOSGuaranteed {
		t.Errorf("QoS %s: limits default the requests", qosClass(p))
	}
	r := resources(p, &p.Spec.Containers[0])
	if r.CpuShares != 256 || r.CpuQuota != 25000 || r.CpuPeriod != 100000 || r.MemoryLimitInBytes != 64<<20 || r.OomScoreAdj != -997 {
		t.Errorf("resources %+v", r)
	}
	pods, _ = Load([]byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: r\nspec:\n  containers:\n  - name: a\n    image: x:1\n"))
	if r := resources(pods[0], &pods[0].Spec.Containers[0]); r.CpuShares != 2 || r.CpuQuota != 0 || r.OomScoreAdj != 1000 {
		t.Errorf("best effort resources %+v", r)
	}
}
