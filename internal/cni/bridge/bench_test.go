package bridge_test

import (
	"testing"

	"github.com/tripod-dev/tripod/internal/cni/bridge"
	"github.com/tripod-dev/tripod/internal/cni/vethtest"
)

// BenchmarkAddDel times ADD and DEL through libcni (the plugin exec'd, as
// a runtime does) with a typical pod network: host-local, gateway,
// masquerade. It reports each verb's mean.
func BenchmarkAddDel(b *testing.B) {
	e := vethtest.New(b)
	list := e.ConfList(conf("1.1.0", `,"isGateway":true,"ipMasq":true,"ipam":`+v4Only))
	e.BenchAddDel(b, list, rt(e, e.Pod("p")), bridge.SpoofTable())
}
