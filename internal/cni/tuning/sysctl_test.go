package tuning

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
)

func TestParseKey(t *testing.T) {
	for key, want := range map[string]string{
		"net.core.somaxconn":                 "net/core/somaxconn",
		"net.ipv4.conf.IFNAME.forwarding":    "net/ipv4/conf/eth0/forwarding",
		"net/ipv4/conf/eth0.100/forwarding":  "net/ipv4/conf/eth0.100/forwarding",
		"net/ipv6/conf/IFNAME/disable_ipv6":  "net/ipv6/conf/eth0/disable_ipv6",
		"net.ipv4.conf.IFNAMEX.forwarding":   "net/ipv4/conf/IFNAMEX/forwarding",
		"kernel.hostname":                    "",
		"net":                                "",
		"net..core":                          "",
		"net/ipv4/../../kernel/hostname":     "",
		"net/./core/somaxconn":               "",
		"/net/core/somaxconn":                "",
		"net.core.somaxconn.":                "",
		"vm.IFNAME":                          "",
		"net.ipv4.conf.a\x00b.forwarding":    "",
		"net/ipv4/conf/eth0.100//forwarding": "",
	} {
		got, err := parseKey(key, "eth0")
		if want == "" {
			if err == nil {
				t.Errorf("parseKey(%q) = %q, want an error", key, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("parseKey(%q) = %q, %v; want %q", key, got, err, want)
		}
	}
}

func TestAllowlist(t *testing.T) {
	ss := func(keys ...string) []sysctl {
		var out []sysctl
		for _, k := range keys {
			out = append(out, sysctl{Key: k})
		}
		return out
	}
	missing := filepath.Join(t.TempDir(), "none.conf")
	if err := checkAllowlist(missing, ss("net.core.somaxconn")); err != nil {
		t.Fatalf("a missing allowlist must allow everything: %v", err)
	}
	path := filepath.Join(t.TempDir(), "allowlist.conf")
	if err := os.WriteFile(path, []byte("^net\\.core\\.somaxconn$\n\n  ^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]+$  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkAllowlist(path, ss("net.core.somaxconn", "net.ipv4.conf.IFNAME.arp_filter")); err != nil {
		t.Errorf("allowed keys refused: %v", err)
	}
	err := checkAllowlist(path, ss("net.core.somaxconn", "net.ipv4.ip_forward"))
	if cnierr.Code(err) != cnierr.InvalidConfig || !strings.Contains(err.Error(), `"net.ipv4.ip_forward" is not allowed`) {
		t.Errorf("a key off the list: got %v", err)
	}
	if err := os.WriteFile(path, []byte("net.(core\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkAllowlist(path, ss("net.core.somaxconn")); cnierr.Code(err) != cnierr.InvalidConfig {
		t.Errorf("a bad pattern: got %v", err)
	}
}

func TestSameValue(t *testing.T) {
	if !sameValue("4096\t131072\t6291456", "4096 131072  6291456") {
		t.Error("vector values differing only in blanks must compare equal")
	}
	if sameValue("1", "10") {
		t.Error("1 and 10 compared equal")
	}
}
