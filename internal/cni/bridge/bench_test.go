package bridge_test

import (
	"context"
	"testing"
	"time"

	"github.com/tripod-dev/tripod/internal/cni/bridge"
	"github.com/tripod-dev/tripod/internal/cni/vethtest"
)

// BenchmarkAddDel times ADD and DEL through libcni (the plugin exec'd, as
// a runtime does) with a typical pod network: host-local, gateway,
// masquerade. It reports each verb's mean.
func BenchmarkAddDel(b *testing.B) {
	e := vethtest.New(b)
	list := e.ConfList(conf("1.1.0", `,"isGateway":true,"ipMasq":true,"ipam":`+v4Only))
	pod := e.Pod("p")
	var add, del time.Duration
	e.In(func() {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			if _, err := e.Runner.CNI.AddNetworkList(context.Background(), list, rt(e, pod)); err != nil {
				b.Fatalf("ADD: %v", err)
			}
			t1 := time.Now()
			if err := e.Runner.CNI.DelNetworkList(context.Background(), list, rt(e, pod)); err != nil {
				b.Fatalf("DEL: %v", err)
			}
			add += t1.Sub(t0)
			del += time.Since(t1)
		}
		b.StopTimer()
		e.NoLeaks([]string{e.Tag}, bridge.SpoofTable())
	})
	b.ReportMetric(float64(add.Microseconds())/1000/float64(b.N), "add-ms")
	b.ReportMetric(float64(del.Microseconds())/1000/float64(b.N), "del-ms")
}
