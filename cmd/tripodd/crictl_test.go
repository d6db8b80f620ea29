package main_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

// crictlPath finds crictl: on PATH (make puts .tools/bin there) or in the
// repository's .tools/bin.
func crictlPath(t *testing.T) string {
	if p, err := exec.LookPath("crictl"); err == nil {
		return p
	}
	if p, err := filepath.Abs("../../.tools/bin/crictl"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("crictl not found: run `make go-tools` (installs sigs.k8s.io/cri-tools/cmd/crictl into .tools/bin)")
	return ""
}

func TestCrictl(t *testing.T) {
	crictl := crictlPath(t)
	reg := imagetest.NewRegistry(t, imagetest.Options{User: "bob", Password: "pw"})
	img, _ := image3("crictl")
	mdig := reg.Push(t, "tools/app:v1", img)
	n := newNode(t)
	startDaemon(t, n)
	run := func(args ...string) (string, error) {
		cfg := filepath.Join(n.state, "crictl.yaml")
		os.WriteFile(cfg, []byte("runtime-endpoint: unix://"+n.sock+"\nimage-endpoint: unix://"+n.sock+"\ntimeout: 60\n"), 0o644)
		cmd := exec.Command(crictl, append([]string{"--config", cfg}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("crictl %v: %v\n%s", args, err, out)
		}
		return out
	}
	ref := reg.Host + "/tools/app:v1"
	if out, err := run("pull", ref); err == nil || !strings.Contains(out, "PermissionDenied") {
		t.Fatalf("pull without credentials: %v %s", err, out)
	}
	out := must("pull", "--creds", "bob:pw", ref)
	cfgDigest, _ := img.ConfigName()
	if !strings.Contains(out, cfgDigest.String()) {
		t.Fatalf("pull output %q lacks the image ID %s", out, cfgDigest)
	}
	out = must("images")
	if !strings.Contains(out, reg.Host+"/tools/app") || !strings.Contains(out, "v1") {
		t.Fatalf("images: %s", out)
	}
	var list struct {
		Images []struct {
			ID          string   `json:"id"`
			RepoTags    []string `json:"repoTags"`
			RepoDigests []string `json:"repoDigests"`
			Username    string   `json:"username"`
		} `json:"images"`
	}
	if err := json.Unmarshal([]byte(must("images", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Images) != 1 || list.Images[0].ID != cfgDigest.String() || list.Images[0].RepoDigests[0] != reg.Host+"/tools/app@"+mdig.String() || list.Images[0].Username != "nobody" {
		t.Fatalf("images -o json: %+v", list)
	}
	var insp struct {
		Status struct {
			ID string `json:"id"`
		} `json:"status"`
		Info struct {
			ImageSpec struct {
				Architecture string `json:"architecture"`
				Config       struct {
					User string `json:"User"`
				} `json:"config"`
			} `json:"imageSpec"`
		} `json:"info"`
	}
	out = must("inspecti", ref)
	if err := json.Unmarshal([]byte(out), &insp); err != nil {
		t.Fatalf("inspecti: %v\n%s", err, out)
	}
	if insp.Status.ID != cfgDigest.String() || insp.Info.ImageSpec.Architecture != runtime.GOARCH || insp.Info.ImageSpec.Config.User != "nobody" {
		t.Fatalf("inspecti: %+v\n%s", insp, out)
	}
	out = must("imagefsinfo")
	if !strings.Contains(out, filepath.Join(n.root, "images")) || !strings.Contains(out, "usedBytes") {
		t.Fatalf("imagefsinfo: %s", out)
	}
	must("rmi", ref)
	if out := must("images", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("images after rmi: %q", out)
	}
	if _, files := storeUsage(t, n.root); len(files) != 0 {
		t.Fatalf("store after rmi: %v", files)
	}
	// By image ID too.
	must("pull", "--creds", "bob:pw", ref)
	must("rmi", strings.TrimPrefix(cfgDigest.String(), "sha256:")[:13])
	if out := must("images", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("images after rmi by ID: %q", out)
	}
}
