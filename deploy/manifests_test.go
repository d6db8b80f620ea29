// Package deploy_test checks the Kubernetes manifests under deploy/: every
// document decodes strictly (an unknown or misspelt field fails) into the
// upstream API type of its kind, the objects agree with each other (one
// driver name, selectors matching their pods, every mount backed by a
// volume), and the CNI DaemonSet's install command, run as the node would
// run it, installs the plugins and a network.
package deploy_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// snapshotClass is the shape of VolumeSnapshotClass and
// VolumeGroupSnapshotClass (external-snapshotter's API, not in k8s.io/api).
type snapshotClass struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Driver            string            `json:"driver"`
	DeletionPolicy    string            `json:"deletionPolicy"`
	Parameters        map[string]string `json:"parameters,omitempty"`
}

// kinds maps apiVersion/kind to a new object of its type.
var kinds = map[string]func() any{
	"apps/v1/DaemonSet":        func() any { return &appsv1.DaemonSet{} },
	"v1/Pod":                   func() any { return &corev1.Pod{} },
	"v1/PersistentVolumeClaim": func() any { return &corev1.PersistentVolumeClaim{} },
	"v1/ServiceAccount":        func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":             func() any { return &corev1.ConfigMap{} },
	"rbac.authorization.k8s.io/v1/ClusterRole":                      func() any { return &rbacv1.ClusterRole{} },
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding":               func() any { return &rbacv1.ClusterRoleBinding{} },
	"storage.k8s.io/v1/CSIDriver":                                   func() any { return &storagev1.CSIDriver{} },
	"storage.k8s.io/v1/StorageClass":                                func() any { return &storagev1.StorageClass{} },
	"storage.k8s.io/v1/VolumeAttributesClass":                       func() any { return &storagev1.VolumeAttributesClass{} },
	"snapshot.storage.k8s.io/v1/VolumeSnapshotClass":                func() any { return &snapshotClass{} },
	"groupsnapshot.storage.k8s.io/v1beta1/VolumeGroupSnapshotClass": func() any { return &snapshotClass{} },
}

// load decodes every document of every manifest under deploy/.
func load(t *testing.T) map[string][]any {
	t.Helper()
	files, err := filepath.Glob("*/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	out := map[string][]any{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range bytes.Split(b, []byte("\n---")) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s document %d: %v", f, i+1, err)
			}
			if tm.Kind == "" {
				continue // comments only
			}
			key := tm.APIVersion + "/" + tm.Kind
			mk, ok := kinds[key]
			if !ok {
				t.Fatalf("%s document %d: %s is not a kind this test knows", f, i+1, key)
			}
			obj := mk()
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Fatalf("%s document %d (%s): %v", f, i+1, key, err)
			}
			out[tm.Kind] = append(out[tm.Kind], obj)
		}
	}
	return out
}

func TestManifests(t *testing.T) {
	objs := load(t)
	for _, kind := range []string{"CSIDriver", "DaemonSet", "StorageClass", "VolumeSnapshotClass", "ClusterRole", "ServiceAccount"} {
		if len(objs[kind]) == 0 {
			t.Errorf("no %s", kind)
		}
	}
	const driver = "csi.tripod.dev"
	for _, o := range objs["CSIDriver"] {
		d := o.(*storagev1.CSIDriver)
		if d.Name != driver || d.Spec.AttachRequired == nil || *d.Spec.AttachRequired {
			t.Errorf("CSIDriver %s: %+v", d.Name, d.Spec)
		}
	}
	for _, o := range objs["StorageClass"] {
		if sc := o.(*storagev1.StorageClass); sc.Provisioner != driver {
			t.Errorf("StorageClass %s: provisioner %s", sc.Name, sc.Provisioner)
		}
	}
	for _, kind := range []string{"VolumeSnapshotClass", "VolumeGroupSnapshotClass"} {
		for _, o := range objs[kind] {
			if c := o.(*snapshotClass); c.Driver != driver || (c.DeletionPolicy != "Delete" && c.DeletionPolicy != "Retain") {
				t.Errorf("%s %s: %+v", kind, c.Name, c)
			}
		}
	}
	sas := map[string]bool{}
	for _, o := range objs["ServiceAccount"] {
		sa := o.(*corev1.ServiceAccount)
		sas[sa.Namespace+"/"+sa.Name] = true
	}
	for _, o := range objs["DaemonSet"] {
		ds := o.(*appsv1.DaemonSet)
		sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
		if err != nil || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
			t.Errorf("DaemonSet %s: selector %v does not select its pods %v", ds.Name, ds.Spec.Selector, ds.Spec.Template.Labels)
		}
		spec := ds.Spec.Template.Spec
		if sa := spec.ServiceAccountName; sa != "" && !sas[ds.Namespace+"/"+sa] {
			t.Errorf("DaemonSet %s: service account %s is not defined", ds.Name, sa)
		}
		volumes := map[string]bool{}
		for _, v := range spec.Volumes {
			volumes[v.Name] = true
		}
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			if c.Image == "" {
				t.Errorf("DaemonSet %s container %s: no image", ds.Name, c.Name)
			}
			for _, m := range c.VolumeMounts {
				if !volumes[m.Name] {
					t.Errorf("DaemonSet %s container %s: mount of undefined volume %s", ds.Name, c.Name, m.Name)
				}
			}
		}
	}
}

// TestCNIDaemonSetInstalls runs the CNI DaemonSet's init container command
// with the tripod and tripod-cni built from this tree, each volume mount
// a directory standing for the node's hostPath: the plugins and a network
// config land in the node's directories, and a second run (a restarted
// pod) changes nothing.
func TestCNIDaemonSetInstalls(t *testing.T) {
	var ds *appsv1.DaemonSet
	for _, o := range load(t)["DaemonSet"] {
		if d := o.(*appsv1.DaemonSet); d.Name == "tripod-cni" {
			ds = d
		}
	}
	if ds == nil || len(ds.Spec.Template.Spec.InitContainers) != 1 {
		t.Fatal("no tripod-cni DaemonSet with one init container")
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("the CNI installer must see the node's routes (hostNetwork)")
	}
	bin := t.TempDir()
	for name, pkg := range map[string]string{"tripod": "../cmd/tripod", "tripod-cni": "../cmd/tripod-cni"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, name), pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	node := t.TempDir()
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	c := spec.InitContainers[0]
	mounts := map[string]string{"/usr/local/bin": bin} // the image's binaries
	for _, m := range c.VolumeMounts {
		if p, ok := hostPaths[m.Name]; ok {
			mounts[m.MountPath] = filepath.Join(node, p)
			os.MkdirAll(filepath.Join(node, p), 0o755) // DirectoryOrCreate
		} else {
			mounts[m.MountPath] = t.TempDir() // the optional ConfigMap, absent
		}
	}
	var args []string
	for _, a := range c.Args {
		for in, out := range mounts {
			a = strings.Replace(a, "="+in, "="+out, 1)
		}
		args = append(args, a)
	}
	run := func() string {
		out, err := exec.Command(filepath.Join(bin, "tripod"), args...).CombinedOutput()
		if err != nil {
			t.Fatalf("tripod %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := run()
	if target, err := os.Readlink(filepath.Join(node, "opt/cni/bin/bridge")); err != nil || target != "tripod-cni" {
		t.Fatalf("bridge plugin on the node: %q %v\n%s", target, err, out)
	}
	conf, err := os.ReadFile(filepath.Join(node, "etc/cni/net.d/10-tripod.conflist"))
	var list struct {
		Name    string
		Plugins []struct{ Type string }
	}
	if err != nil || json.Unmarshal(conf, &list) != nil || list.Name != "tripod" || len(list.Plugins) == 0 || list.Plugins[0].Type != "bridge" {
		t.Fatalf("network config on the node: %v\n%s\n%s", err, conf, out)
	}
	out = run()
	if !strings.Contains(out, "up to date") || !strings.Contains(out, "kept the existing network config") {
		t.Fatalf("second run: %s", out)
	}
}
