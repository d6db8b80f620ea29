package flannel_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

func env(t *testing.T, cmd, id, netns string) map[string]string {
	return map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": id, "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": cnitest.BinDir(t)}
}

// Before flanneld has written its lease, STATUS says not available and ADD
// asks to try again later; a broken lease file is an invalid config.
func TestSubnetFileErrors(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	ns := cnitest.NewNetns(t, tag)
	dir := t.TempDir()
	subnet := filepath.Join(dir, "subnet.env")
	conf := `{"cniVersion":"1.1.0","name":"` + tag + `","type":"flannel","subnetFile":"` + subnet + `","dataDir":"` + filepath.Join(dir, "data") + `"}`

	if r := cnitest.Exec(t, "flannel", env(t, "STATUS", "", ""), conf); r.Err == nil || r.Err.Code != 50 {
		t.Errorf("STATUS without subnet.env: %+v, want code 50", r.Err)
	}
	if r := cnitest.Exec(t, "flannel", env(t, "ADD", tag, ns.Path), conf); r.Err == nil || r.Err.Code != 11 {
		t.Errorf("ADD without subnet.env: %+v, want code 11", r.Err)
	}
	for _, bad := range []string{
		"FLANNEL_NETWORK=10.1.0.0/16\n",                               // no subnet
		"FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.300.1/24\n", // bad CIDR
		"FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.3.1/24\nFLANNEL_MTU=big\n",
		"garbage\n",
	} {
		if err := os.WriteFile(subnet, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if r := cnitest.Exec(t, "flannel", env(t, "ADD", tag, ns.Path), conf); r.Err == nil || r.Err.Code != 7 {
			t.Errorf("ADD with subnet.env %q: %+v, want code 7", bad, r.Err)
		}
	}
	// DEL of an attachment that was never added succeeds.
	if r := cnitest.Exec(t, "flannel", env(t, "DEL", tag, ns.Path), conf); r.Err != nil {
		t.Errorf("DEL of nothing: %v", r.Err)
	}
	cnitest.EmptyDir(t, filepath.Join(dir, "data"))
}
