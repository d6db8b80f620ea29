package cnierr

import (
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestDecodeNamesTheJSONField(t *testing.T) {
	type inner struct {
		MTU int `json:"mtu"`
	}
	type conf struct {
		types.PluginConf
		inner
		IPAM struct {
			Ranges []string `json:"ranges"`
		} `json:"ipam"`
	}
	cases := map[string]string{
		`{"name":5}`:               `"name"`,
		`{"mtu":"big"}`:            `"mtu"`,
		`{"ipam":{"ranges":"x"}}`:  `"ipam.ranges"`,
		`{"cniVersion":["1.0.0"]}`: `"cniVersion"`,
		`[1]`:                      `(top level)`,
	}
	for in, want := range cases {
		var c conf
		err := Decode([]byte(in), &c)
		if Code(err) != DecodingFailure {
			t.Errorf("%s: code %d (%v), want %d", in, Code(err), err, DecodingFailure)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %q does not name %s", in, err.Error(), want)
		}
	}
	var c conf
	if err := Decode([]byte(`{"name":`), &c); Code(err) != DecodingFailure || !strings.Contains(err.Error(), "JSON") {
		t.Errorf("truncated JSON: %v", err)
	}
}
