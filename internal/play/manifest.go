package play

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Pod is one pod of a manifest: decoded strictly into the upstream type,
// with the API server's defaults applied (tripod play has no API server to
// apply them), and checked.
type Pod struct {
	*corev1.Pod
	// Hash identifies the pod's desired state: a replay of the same
	// manifest adopts the running pod, a changed one is refused.
	Hash string
}

// Key is the pod's namespace/name.
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// Load reads a YAML (or JSON) stream of v1 Pods. Every document is
// decoded strictly: an unknown or duplicate field is an error naming the
// pod and the field's path. Nothing is returned unless every pod is valid.
func Load(data []byte) ([]*Pod, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var pods []*Pod
	seen := map[string]int{}
	var errs []error
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		p, err := decode(raw, doc)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if p == nil {
			continue // empty or comments only
		}
		if d, ok := seen[p.Key()]; ok {
			errs = append(errs, fmt.Errorf("pod %s: defined twice (documents %d and %d)", p.Key(), d, doc))
			continue
		}
		seen[p.Key()] = doc
		pods = append(pods, p)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(pods) == 0 {
		return nil, errors.New("no pod in the manifest")
	}
	return pods, nil
}

// head is what is read from a document before it is known to be a pod, to
// name it in errors.
type head struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

func decode(raw []byte, doc int) (*Pod, error) {
	// Leniently first, to name the pod in the errors of the strict pass.
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("document %d: %w", doc, err)
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || string(t) == "null" {
		return nil, nil
	}
	var h head
	if err := json.Unmarshal(js, &h); err != nil {
		return nil, fmt.Errorf("document %d: %w", doc, err)
	}
	name := fmt.Sprintf("document %d", doc)
	if h.Metadata.Name != "" {
		ns := h.Metadata.Namespace
		if ns == "" {
			ns = "default"
		}
		name = "pod " + ns + "/" + h.Metadata.Name
	}
	if h.APIVersion != "v1" || h.Kind != "Pod" {
		return nil, fmt.Errorf("%s: apiVersion %q kind %q: tripod play runs v1 Pods only", name, h.APIVersion, h.Kind)
	}
	if _, err := yaml.YAMLToJSONStrict(raw); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err) // a key given twice
	}
	var pod corev1.Pod
	strict, err := sigsjson.UnmarshalStrict(js, &pod)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(strict) > 0 {
		msgs := make([]string, len(strict))
		for i, e := range strict {
			msgs[i] = e.Error()
		}
		return nil, fmt.Errorf("%s: %s", name, strings.Join(msgs, "; "))
	}
	if pod.Name == "" {
		return nil, fmt.Errorf("%s: metadata.name: required (generateName is not supported: a replay must find the same pod)", name)
	}
	setDefaults(&pod)
	if errs := validate(&pod); len(errs) > 0 {
		return nil, fmt.Errorf("pod %s/%s: %s", pod.Namespace, pod.Name, strings.Join(errs, "; "))
	}
	canon, err := json.Marshal(struct {
		Namespace, Name, UID string
		Labels, Annotations  map[string]string
		Spec                 corev1.PodSpec
	}{pod.Namespace, pod.Name, string(pod.UID), pod.Labels, pod.Annotations, pod.Spec})
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(canon)
	return &Pod{Pod: &pod, Hash: hex.EncodeToString(sum[:8])}, nil
}
