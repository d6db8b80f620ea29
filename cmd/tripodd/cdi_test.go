package main_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCDIDevices: a device from a CDI spec file in the configured spec
// directory (the host's /dev/null as a new device node, an environment
// variable, a bind mount, plus an edit common to the spec's devices),
// asked for by CDI_devices and by a cdi.k8s.io/ annotation, is there
// inside the running container; an unknown device is InvalidArgument
// naming it, and leaves nothing behind.
func TestCDIDevices(t *testing.T) {
	runtimePrereqs(t)
	specDir := t.TempDir()
	share := t.TempDir()
	if err := os.WriteFile(filepath.Join(share, "info"), []byte("cdi share\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := fmt.Sprintf(`{
  "cdiVersion": "0.6.0",
  "kind": "tripod.test/tpdev",
  "containerEdits": {"env": ["TP_CDI_VENDOR=tripod"]},
  "devices": [{
    "name": "null0",
    "containerEdits": {
      "deviceNodes": [{"path": "/dev/tpnull0", "hostPath": "/dev/null", "permissions": "rw"}],
      "env": ["TP_CDI_DEVICE=null0"],
      "mounts": [{"hostPath": %q, "containerPath": "/tp-cdi", "options": ["ro", "rbind"]}]
    }
  }]
}`, share)
	if err := os.WriteFile(filepath.Join(specDir, "tpdev.json"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newPodEnvConf(t, fmt.Sprintf("cdi_spec_dirs = [%q]\n", specDir), nil)
	podID := e.runPod("cdi")
	ctx := testCtx(t)
	create := func(name string, cdi []string, ann map[string]string) (string, error) {
		cfg := &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image: &runtimeapi.ImageSpec{Image: e.image}, Command: []string{"sleep", "3600"}, Annotations: ann}
		for _, d := range cdi {
			cfg.CDIDevices = append(cfg.CDIDevices, &runtimeapi.CDIDevice{Name: d})
		}
		r, err := e.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: podID, SandboxConfig: e.podConfig("cdi"), Config: cfg})
		if err != nil {
			return "", err
		}
		return r.ContainerId, nil
	}
	check := func(id string) {
		t.Helper()
		e.start(id)
		// Character device 1,3 (/dev/null's numbers), usable.
		if got := e.execOut(id, "stat", "-c", "%F %t,%T", "/dev/tpnull0"); got != "character special file 1,3\n" {
			t.Fatalf("/dev/tpnull0: %q", got)
		}
		e.execOut(id, "sh", "-c", "echo x > /dev/tpnull0")
		env := strings.Split(e.execOut(id, "env"), "\n")
		for _, kv := range []string{"TP_CDI_DEVICE=null0", "TP_CDI_VENDOR=tripod"} {
			if !slices.Contains(env, kv) {
				t.Fatalf("%s missing from the environment: %v", kv, env)
			}
		}
		if got := e.execOut(id, "cat", "/tp-cdi/info"); got != "cdi share\n" {
			t.Fatalf("CDI mount: %q", got)
		}
	}
	byField, err := create("by-field", []string{"tripod.test/tpdev=null0"}, nil)
	if err != nil {
		t.Fatalf("CreateContainer with a CDI device: %v", err)
	}
	check(byField)
	byAnn, err := create("by-annotation", nil, map[string]string{"cdi.k8s.io/tp-test": "tripod.test/tpdev=null0"})
	if err != nil {
		t.Fatalf("CreateContainer with a CDI annotation: %v", err)
	}
	check(byAnn)

	bundles := func() int { return len(mustReadDir(t, filepath.Join(e.n.state, "runtime", "containers"))) }
	layers := func() int { return len(mustReadDir(t, filepath.Join(e.n.root, "runtime", "containers"))) }
	rootfsMounts := func() int { return strings.Count(mountinfo(t), filepath.Join(e.n.state, "runtime", "containers")) }
	b0, l0, m0 := bundles(), layers(), rootfsMounts()
	_, err = create("unknown", []string{"tripod.test/tpdev=null0", "tripod.test/tpdev=nosuch"}, nil)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "tripod.test/tpdev=nosuch") ||
		strings.Contains(err.Error(), "tpdev=null0,") {
		t.Fatalf("unknown CDI device: %v; want InvalidArgument naming tripod.test/tpdev=nosuch only", err)
	}
	if _, err = create("malformed", []string{"nosuch"}, nil); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("malformed CDI device name: %v", err)
	}
	if b, l, m := bundles(), layers(), rootfsMounts(); b != b0 || l != l0 || m != m0 {
		t.Fatalf("failed creations left %d bundle(s), %d writable layer(s), %d mount(s) behind", b-b0, l-l0, m-m0)
	}
	l, err := e.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: podID}})
	if err != nil || len(l.Containers) != 2 {
		t.Fatalf("containers after the failed creations: %v %v", l, err)
	}
	// The name is free again.
	if _, err := create("unknown", []string{"tripod.test/tpdev=null0"}, nil); err != nil {
		t.Fatalf("name of a failed creation not released: %v", err)
	}
}
