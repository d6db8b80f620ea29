package ptp_test

import (
	"testing"

	"github.com/tripod-dev/tripod/internal/cni/vethtest"
)

// BenchmarkAddDel times ADD and DEL through libcni with host-local and
// masquerade, reporting each verb's mean.
func BenchmarkAddDel(b *testing.B) {
	e := vethtest.New(b)
	list := e.ConfList(conf("1.1.0", `,"ipMasq":true,"ipam":`+v4Only))
	e.BenchAddDel(b, list, rt(e.Pod("p")))
}
