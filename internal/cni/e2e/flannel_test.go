package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/tripod-dev/tripod/internal/cni/cnitest"
)

// flannel builds bridge + host-local from flanneld's lease, and DEL still
// cleans up after the lease file is gone.
func TestFlannelDelegatesToBridge(t *testing.T) {
	cnitest.Root(t)
	tag := cnitest.Tag(t)
	host := cnitest.NewNetns(t, tag+"-host")
	pod := cnitest.NewNetns(t, tag+"-pod")
	dir := t.TempDir()
	subnet := filepath.Join(dir, "subnet.env")
	if err := os.WriteFile(subnet, []byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ipamDir := filepath.Join(dir, "ipam")
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"type":"flannel","subnetFile":%q,"dataDir":%q,
		"delegate":{"bridge":%q,"ipam":{"dataDir":%q}}}`, tag, subnet, filepath.Join(dir, "flannel"), tag+"fl", ipamDir)
	list := cnitest.ConfList(t, conf)
	r := cnitest.NewRunner(t)
	rt := cnitest.RuntimeConf(tag, pod.Path, "eth0")
	ctx := context.Background()
	t.Cleanup(func() { _ = host.Try(func() error { cnitest.DeleteLinks(tag); return nil }) })

	var res *types100.Result
	hostDo(t, host, func() error {
		raw, err := r.CNI.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(raw)
		return err
	})
	_, lease, _ := net.ParseCIDR("10.244.3.0/24")
	if len(res.IPs) != 1 || !lease.Contains(res.IPs[0].Address.IP) {
		t.Fatalf("pod address %v is not in the node's lease %v", res.IPs, lease)
	}
	if gw := res.IPs[0].Gateway; !gw.Equal(net.ParseIP("10.244.3.1")) {
		t.Errorf("gateway %v, want 10.244.3.1", gw)
	}
	eth0 := pod.Link(t, "eth0")
	if eth0.Attrs().MTU != 1400 {
		t.Errorf("pod MTU %d, want FLANNEL_MTU 1400", eth0.Attrs().MTU)
	}
	pod.Do(t, func() error {
		_, cluster, _ := net.ParseCIDR("10.244.0.0/16")
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: cluster}, netlink.RT_FILTER_DST)
		if err != nil {
			return err
		}
		if len(routes) != 1 || !routes[0].Gw.Equal(net.ParseIP("10.244.3.1")) {
			return fmt.Errorf("route to the cluster network: %+v", routes)
		}
		return nil
	})
	pod.Ping(t, "10.244.3.1")
	hostDo(t, host, func() error { return r.CNI.CheckNetworkList(ctx, list, rt) })

	// flanneld gone: DEL works from the saved delegate config.
	if err := os.Remove(subnet); err != nil {
		t.Fatal(err)
	}
	hostDo(t, host, func() error { return r.CNI.DelNetworkList(ctx, list, rt) })
	hostDo(t, host, func() error { return r.CNI.DelNetworkList(ctx, list, rt) })
	hostDo(t, host, func() error {
		if err := cnitest.NoNetworkChains(tag); err != nil {
			return err
		}
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Type() == "veth" {
				return fmt.Errorf("leaked veth %s", l.Attrs().Name)
			}
		}
		return nil
	})
	cnitest.EmptyDir(t, filepath.Join(dir, "flannel"))
	cnitest.EmptyDir(t, filepath.Join(ipamDir, tag), "lock", "last_reserved_ip.0")
	if err := host.Try(func() error { return r.CNI.GetStatusNetworkList(ctx, list) }); err == nil || !strings.Contains(err.Error(), "flannel") {
		t.Errorf("STATUS without a lease: %v, want a not-available error naming flannel", err)
	}
}
