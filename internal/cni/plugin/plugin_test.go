package plugin_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

// The protocol errors every plugin shares, exercised through the real
// binary: each must carry the code the spec assigns and name the problem.
func TestProtocolErrors(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	ns := cnitest.NewNetns(t, tag)
	env := func(kv ...string) map[string]string {
		m := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": tag, "CNI_NETNS": ns.Path, "CNI_IFNAME": "lo", "CNI_PATH": cnitest.BinDir(t)}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		return m
	}
	good := `{"cniVersion":"1.1.0","name":"` + tag + `","type":"loopback"}`
	cases := []struct {
		name    string
		env     map[string]string
		stdin   string
		code    uint
		mention string
	}{
		{"malformed JSON", env(), `{"cniVersion":`, 6, "JSON"},
		{"wrong field type", env(), `{"cniVersion":"1.1.0","name":"x","type":"loopback","dns":7}`, 6, "dns"},
		{"unsupported version", env(), `{"cniVersion":"9.9.9","name":"x","type":"loopback"}`, 1, "9.9.9"},
		{"missing CNI_COMMAND", env("CNI_COMMAND", ""), good, 4, "CNI_COMMAND"},
		{"unknown CNI_COMMAND", env("CNI_COMMAND", "FROB"), good, 4, "FROB"},
		{"missing CNI_NETNS", env("CNI_NETNS", ""), good, 4, "CNI_NETNS"},
		{"missing CNI_CONTAINERID", env("CNI_CONTAINERID", ""), good, 4, "CNI_CONTAINERID"},
		{"netns does not exist", env("CNI_NETNS", "/run/netns/"+tag+"-none"), good, 3, tag + "-none"},
		{"netns is not a namespace", env("CNI_NETNS", "/etc/hostname"), good, 3, "/etc/hostname"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := cnitest.Exec(t, "loopback", c.env, c.stdin)
			if r.Err == nil {
				t.Fatalf("succeeded: %s", r.Stdout)
			}
			if r.Err.Code != c.code {
				t.Errorf("code %d (%s), want %d", r.Err.Code, r.Err.Msg, c.code)
			}
			if !strings.Contains(r.Err.Msg+r.Err.Details, c.mention) {
				t.Errorf("message %q does not mention %q", r.Err.Msg, c.mention)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	r := cnitest.Exec(t, "loopback", map[string]string{"CNI_COMMAND": "VERSION"}, `{"cniVersion":"1.1.0"}`)
	if r.Err != nil {
		t.Fatalf("VERSION: %v", r.Err)
	}
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(r.Stdout, &v); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"0.3.0": true, "0.3.1": true, "0.4.0": true, "1.0.0": true, "1.1.0": true}
	for _, s := range v.SupportedVersions {
		delete(want, s)
	}
	if len(want) > 0 {
		t.Errorf("VERSION lacks %v: %s", want, r.Stdout)
	}
}
