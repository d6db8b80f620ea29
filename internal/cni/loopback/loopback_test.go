package loopback_test

import (
	"context"
	"net"
	"os"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

func TestMain(m *testing.M) { os.Exit(cnitest.Main(m)) }

func TestLifecycleThroughLibcni(t *testing.T) {
	cnitest.Root(t)
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			tag := cnitest.Tag(t)
			ns := cnitest.NewNetns(t, tag)
			r := cnitest.NewRunner(t)
			list := cnitest.ConfList(t, `{"cniVersion":"`+v+`","name":"`+tag+`","plugins":[{"type":"loopback"}]}`)
			rt := cnitest.RuntimeConf(tag, ns.Path, "lo")
			ctx := context.Background()

			res, err := r.CNI.AddNetworkList(ctx, list, rt)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if res.Version() != v {
				t.Errorf("result version %s, want %s", res.Version(), v)
			}
			if ns.Link(t, "lo").Attrs().Flags&net.FlagUp == 0 {
				t.Fatal("lo is down after ADD")
			}
			cur, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatal(err)
			}
			if len(cur.IPs) == 0 || !cur.IPs[0].Address.IP.IsLoopback() {
				t.Errorf("result lacks the loopback address: %+v", cur)
			}
			if v != "0.3.1" {
				if err := r.CNI.CheckNetworkList(ctx, list, rt); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			if err := r.CNI.DelNetworkList(ctx, list, rt); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if ns.Link(t, "lo").Attrs().Flags&net.FlagUp != 0 {
				t.Error("lo is still up after DEL")
			}
			// DEL is idempotent and tolerates a namespace that is gone.
			ns.Remove(t)
			if err := r.CNI.DelNetworkList(ctx, list, rt); err != nil {
				t.Fatalf("DEL after the netns is gone: %v", err)
			}
		})
	}
}
