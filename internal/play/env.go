package play

import (
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// podFacts are what a container's environment may refer to that is not in
// the manifest: known once the sandbox runs.
type podFacts struct {
	uid    string
	podIP  string
	podIPs []string
	hostIP string
	node   string
}

// fieldValue answers a downward API fieldRef, as kubelet does.
func fieldValue(p *corev1.Pod, fieldPath string, f *podFacts) (string, error) {
	if f == nil {
		f = &podFacts{}
	}
	if k, ok := subscript(fieldPath, "metadata.labels"); ok {
		return p.Labels[k], nil
	}
	if k, ok := subscript(fieldPath, "metadata.annotations"); ok {
		return p.Annotations[k], nil
	}
	switch fieldPath {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return f.uid, nil
	case "spec.nodeName":
		return f.node, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.podIP":
		return f.podIP, nil
	case "status.podIPs":
		return strings.Join(f.podIPs, ","), nil
	case "status.hostIP", "status.hostIPs":
		return f.hostIP, nil
	}
	return "", fmt.Errorf("%q is not supported (metadata.name, metadata.namespace, metadata.uid, metadata.labels['…'], metadata.annotations['…'], spec.nodeName, spec.serviceAccountName, status.podIP(s), status.hostIP(s))", fieldPath)
}

// subscript reads field['key'].
func subscript(fieldPath, field string) (string, bool) {
	rest, ok := strings.CutPrefix(fieldPath, field+"['")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "']")
}

// containerEnv is a container's environment in order, each value expanded
// against those before it ($(NAME); $$ is a literal $), as kubelet does.
func containerEnv(p *corev1.Pod, ct *corev1.Container, f *podFacts) ([]*runtimeapi.KeyValue, map[string]string, error) {
	vars := map[string]string{}
	var out []*runtimeapi.KeyValue
	for _, e := range ct.Env {
		v := expand(e.Value, vars)
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			var err error
			if v, err = fieldValue(p, e.ValueFrom.FieldRef.FieldPath, f); err != nil {
				return nil, nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
		}
		vars[e.Name] = v
		out = append(out, &runtimeapi.KeyValue{Key: e.Name, Value: []byte(v)})
	}
	return out, vars, nil
}

// expand replaces $(NAME) by vars[NAME] where defined (an undefined
// reference stays as written) and $$ by $.
func expand(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func expandAll(in []string, vars map[string]string) []string {
	if in == nil {
		return nil
	}
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = expand(s, vars)
	}
	return out
}

// stopSignal maps lifecycle.stopSignal (SIGTERM, SIGRTMIN+1, …) to the
// CRI's enum.
func stopSignal(sig corev1.Signal) (runtimeapi.Signal, bool) {
	name := strings.NewReplacer("+", "PLUS", "-", "MINUS").Replace(string(sig))
	v, ok := runtimeapi.Signal_value["SIGNAL_"+name]
	return runtimeapi.Signal(v), ok && v != 0
}

// nodeName is this node's name as spec.nodeName reports it.
func nodeName() string {
	h, err := os.Hostname()
	if err != nil {
		return "localhost"
	}
	return strings.ToLower(h)
}
