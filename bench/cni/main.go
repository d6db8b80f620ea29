// Command cni benchmarks tripod's CNI plugins side by side with the
// reference plugins: the same configurations, driven the same way through
// libcni, on the same machine in one run. Each implementation runs in a
// private "host" network namespace, so its bridges, NAT rules and
// iptables/nftables state never meet the other's or the real host's.
//
// With TRIPOD_BENCH_OUT set it also writes cni.json there.
//
//	TRIPOD_CNI_BIN=bin/cni TRIPOD_REFERENCE_BIN=.tools/reference go run ./bench/cni
package main

import (
	"context"
	"debug/buildinfo"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/tripod-dev/tripod/bench/internal/benchutil"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
	"github.com/tripod-dev/tripod/internal/netns"
)

type impl struct {
	name string
	bin  string
}

type scenario struct {
	name string
	// conf returns the conflist; dataDir is private to one impl and run.
	conf func(dataDir string) string
	// caps are the capability args for attachment i.
	caps func(i int) map[string]any
}

const subnet = "10.99.0.0/16"

func hostLocal(dataDir string) string {
	return fmt.Sprintf(`"ipam":{"type":"host-local","ranges":[[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":%q}`, subnet, dataDir)
}

func scenarios() []scenario {
	return []scenario{
		{name: "loopback", conf: func(string) string {
			return `{"cniVersion":"1.0.0","name":"bench","plugins":[{"type":"loopback"}]}`
		}},
		{name: "bridge+host-local (ipMasq)", conf: func(d string) string {
			return `{"cniVersion":"1.0.0","name":"bench","plugins":[{"type":"bridge","bridge":"tpbench0","isGateway":true,"ipMasq":true,` + hostLocal(d) + `}]}`
		}},
		{name: "ptp+host-local (ipMasq)", conf: func(d string) string {
			return `{"cniVersion":"1.0.0","name":"bench","plugins":[{"type":"ptp","ipMasq":true,` + hostLocal(d) + `}]}`
		}},
		{name: "chain bridge+host-local+portmap+tuning+bandwidth+firewall", conf: func(d string) string {
			return `{"cniVersion":"1.0.0","name":"bench","plugins":[` +
				`{"type":"bridge","bridge":"tpbench0","isGateway":true,"ipMasq":true,` + hostLocal(d) + `},` +
				`{"type":"portmap","capabilities":{"portMappings":true},"snat":true},` +
				`{"type":"tuning","sysctl":{"net.core.somaxconn":"1024"}},` +
				`{"type":"bandwidth","capabilities":{"bandwidth":true}},` +
				`{"type":"firewall"}]}`
		}, caps: func(i int) map[string]any {
			return map[string]any{
				"portMappings": []map[string]any{{"hostPort": 20000 + i%40000, "containerPort": 80, "protocol": "tcp"}},
				"bandwidth":    map[string]any{"ingressRate": 100_000_000, "ingressBurst": 1_000_000, "egressRate": 100_000_000, "egressBurst": 1_000_000},
			}
		}},
	}
}

// newNetns pins a fresh network namespace at /run/netns/name.
func newNetns(name string) (string, error) {
	path := filepath.Join("/run/netns", name)
	return path, netns.PinNet(path)
}

func removeNetns(path string) { _ = netns.Unpin(map[netns.Kind]string{netns.Net: path}) }

// env is one implementation's private world: a host netns and a scratch dir.
type env struct {
	impl    impl
	host    *os.File
	hostNS  string
	scratch string
	prefix  string
	cni     *libcni.CNIConfig
	seq     int
}

func newEnv(im impl, prefix string) (*env, error) {
	hostNS, err := newNetns(prefix + "-host")
	if err != nil {
		return nil, fmt.Errorf("host netns: %w", err)
	}
	host, err := os.Open(hostNS)
	if err != nil {
		return nil, err
	}
	scratch, err := os.MkdirTemp("", prefix+"-")
	if err != nil {
		return nil, err
	}
	e := &env{impl: im, host: host, hostNS: hostNS, scratch: scratch, prefix: prefix}
	e.cni = libcni.NewCNIConfigWithCacheDir([]string{im.bin}, filepath.Join(scratch, "cache"), nil)
	// lo up in the host namespace, as on a real host (portmap's localhost
	// path needs it).
	if err := nsutil.DoFile(host, func() error { return benchutil.UpLoopback() }); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *env) close() {
	e.host.Close()
	removeNetns(e.hostNS)
	os.RemoveAll(e.scratch)
}

type attachment struct {
	rt *libcni.RuntimeConf
}

func (e *env) attach(ctx context.Context, list *libcni.NetworkConfigList, s scenario) (attachment, time.Duration, error) {
	e.seq++
	id := fmt.Sprintf("%s-%d", e.prefix, e.seq)
	ns, err := newNetns(id)
	if err != nil {
		return attachment{}, 0, err
	}
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: ns, IfName: "eth0"}
	if s.name == "loopback" {
		rt.IfName = "lo"
	}
	if s.caps != nil {
		rt.CapabilityArgs = s.caps(e.seq)
	}
	var d time.Duration
	err = nsutil.DoFile(e.host, func() error {
		start := time.Now()
		_, err := e.cni.AddNetworkList(ctx, list, rt)
		d = time.Since(start)
		return err
	})
	if err != nil {
		removeNetns(ns)
		return attachment{}, 0, fmt.Errorf("%s ADD: %w", e.impl.name, err)
	}
	return attachment{rt: rt}, d, nil
}

func (e *env) detach(ctx context.Context, list *libcni.NetworkConfigList, a attachment) (time.Duration, error) {
	var d time.Duration
	err := nsutil.DoFile(e.host, func() error {
		start := time.Now()
		err := e.cni.DelNetworkList(ctx, list, a.rt)
		d = time.Since(start)
		return err
	})
	removeNetns(a.rt.NetNS)
	if err != nil {
		return 0, fmt.Errorf("%s DEL: %w", e.impl.name, err)
	}
	return d, nil
}

type stats struct {
	add, del []time.Duration
}

func ratio(a, b time.Duration) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", float64(a)/float64(b))
}

func sequential(ctx context.Context, e *env, s scenario, n int) (stats, error) {
	list, err := libcni.NetworkConfFromBytes([]byte(s.conf(filepath.Join(e.scratch, "ipam-seq"))))
	if err != nil {
		return stats{}, err
	}
	var st stats
	for i := 0; i < n+2; i++ {
		a, dAdd, err := e.attach(ctx, list, s)
		if err != nil {
			return st, err
		}
		dDel, err := e.detach(ctx, list, a)
		if err != nil {
			return st, err
		}
		if i >= 2 { // the first two warm the page cache
			st.add = append(st.add, dAdd)
			st.del = append(st.del, dDel)
		}
	}
	return st, nil
}

// concurrent starts k ADDs at once and returns their latencies and the
// wall time until all had finished.
func concurrent(ctx context.Context, e *env, s scenario, k int) ([]time.Duration, time.Duration, error) {
	list, err := libcni.NetworkConfFromBytes([]byte(s.conf(filepath.Join(e.scratch, "ipam-conc"))))
	if err != nil {
		return nil, 0, err
	}
	// Pin the namespaces first so that only ADDs overlap.
	rts := make([]*libcni.RuntimeConf, k)
	for i := range rts {
		e.seq++
		id := fmt.Sprintf("%s-%d", e.prefix, e.seq)
		ns, err := newNetns(id)
		if err != nil {
			return nil, 0, err
		}
		rts[i] = &libcni.RuntimeConf{ContainerID: id, NetNS: ns, IfName: "eth0"}
	}
	lat := make([]time.Duration, k)
	errs := make([]error, k)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range rts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = nsutil.DoFile(e.host, func() error {
				t0 := time.Now()
				_, err := e.cni.AddNetworkList(ctx, list, rts[i])
				lat[i] = time.Since(t0)
				return err
			})
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	for i, rt := range rts {
		if _, err := e.detach(ctx, list, attachment{rt: rt}); err != nil && errs[i] == nil {
			errs[i] = err
		}
	}
	for _, err := range errs {
		if err != nil {
			return nil, 0, fmt.Errorf("%s concurrent: %w", e.impl.name, err)
		}
	}
	return lat, wall, nil
}

// growth performs n sequential ADDs that all stay attached and returns
// the median ADD time of the first and of the last growthWindow(n).
func growth(ctx context.Context, e *env, s scenario, n int) (time.Duration, time.Duration, error) {
	list, err := libcni.NetworkConfFromBytes([]byte(s.conf(filepath.Join(e.scratch, "ipam-growth"))))
	if err != nil {
		return 0, 0, err
	}
	var lat []time.Duration
	var held []attachment
	defer func() {
		for _, a := range held {
			_, _ = e.detach(ctx, list, a)
		}
	}()
	for i := 0; i < n; i++ {
		a, d, err := e.attach(ctx, list, s)
		if err != nil {
			return 0, 0, err
		}
		held = append(held, a)
		lat = append(lat, d)
	}
	w := growthWindow(n)
	return benchutil.Pct(lat[:w], 50), benchutil.Pct(lat[n-w:], 50), nil
}

// growthWindow is how many ADDs at each end of a growth run are compared.
func growthWindow(n int) int { return min(50, n/2) }

func main() {
	n := flag.Int("n", 50, "sequential ADD+DEL iterations per configuration")
	conc := flag.Int("concurrent", 16, "concurrent ADDs")
	grow := flag.Int("growth", 500, "sequential ADDs kept attached on one /16")
	only := flag.String("only", "", "run only configurations whose name contains this")
	flag.Parse()
	if err := run(*n, *conc, *grow, *only); err != nil {
		fmt.Fprintln(os.Stderr, "bench-cni:", err)
		os.Exit(1)
	}
}

func run(n, conc, grow int, only string) error {
	impls := []impl{{"tripod", os.Getenv("TRIPOD_CNI_BIN")}, {"reference", os.Getenv("TRIPOD_REFERENCE_BIN")}}
	for _, im := range impls {
		if im.bin == "" {
			return fmt.Errorf("set TRIPOD_CNI_BIN and TRIPOD_REFERENCE_BIN (make bench-cni does)")
		}
		if _, err := os.Stat(filepath.Join(im.bin, "bridge")); err != nil {
			return fmt.Errorf("%s plugins: %w", im.name, err)
		}
	}
	// A run that was interrupted leaves its namespaces; they carry our prefix.
	if old, _ := filepath.Glob("/run/netns/tpbench*"); len(old) > 0 {
		for _, p := range old {
			removeNetns(p)
		}
	}
	ctx := context.Background()
	refName := "reference plugins"
	if bi, err := buildinfo.ReadFile(filepath.Join(impls[1].bin, "bridge")); err == nil && bi.Main.Version != "" {
		refName += " " + bi.Main.Version
	}
	res := benchutil.Result{Bench: "cni", Columns: []string{"tripod", refName},
		Title: fmt.Sprintf("CNI plugins through libcni, the same conflists, each implementation in its own host netns; %d ADD+DEL per configuration", n)}
	// pair is a row of tripod's and the reference's figure, in ms.
	pair := func(metric string, target float64, t, r time.Duration) {
		res.Rows = append(res.Rows, benchutil.Row{Metric: metric, Unit: "ms", Target: target,
			Values: []benchutil.Value{benchutil.Num(benchutil.Millis(t)), benchutil.Num(benchutil.Millis(r))}})
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "configuration\timpl\tADD p50 ms\tADD p99 ms\tDEL p50 ms\tDEL p99 ms\t\n")
	var summary []string
	for _, s := range scenarios() {
		if only != "" && !strings.Contains(s.name, only) {
			continue
		}
		byImpl := map[string]stats{}
		for i, im := range impls {
			e, err := newEnv(im, fmt.Sprintf("tpbench%d", i))
			if err != nil {
				return err
			}
			st, err := sequential(ctx, e, s, n)
			e.close()
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			byImpl[im.name] = st
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", s.name, im.name, benchutil.MS(benchutil.Pct(st.add, 50)), benchutil.MS(benchutil.Pct(st.add, 99)), benchutil.MS(benchutil.Pct(st.del, 50)), benchutil.MS(benchutil.Pct(st.del, 99)))
		}
		t, r := byImpl["tripod"], byImpl["reference"]
		pair(s.name+": ADD p50", 0.5, benchutil.Pct(t.add, 50), benchutil.Pct(r.add, 50))
		pair(s.name+": ADD p99", 0, benchutil.Pct(t.add, 99), benchutil.Pct(r.add, 99))
		pair(s.name+": DEL p50", 0.25, benchutil.Pct(t.del, 50), benchutil.Pct(r.del, 50))
		pair(s.name+": DEL p99", 0, benchutil.Pct(t.del, 99), benchutil.Pct(r.del, 99))
		summary = append(summary, fmt.Sprintf("%-60s ADD p50 %s  p99 %s   DEL p50 %s  p99 %s",
			s.name, ratio(benchutil.Pct(t.add, 50), benchutil.Pct(r.add, 50)), ratio(benchutil.Pct(t.add, 99), benchutil.Pct(r.add, 99)),
			ratio(benchutil.Pct(t.del, 50), benchutil.Pct(r.del, 50)), ratio(benchutil.Pct(t.del, 99), benchutil.Pct(r.del, 99))))
	}
	tw.Flush()

	bridge := scenarios()[1]
	if only == "" || strings.Contains(bridge.name, only) {
		fmt.Printf("\n%d concurrent ADDs, %s\n", conc, bridge.name)
		walls := map[string]time.Duration{}
		p50s := map[string]time.Duration{}
		for i, im := range impls {
			e, err := newEnv(im, fmt.Sprintf("tpbench%d", i))
			if err != nil {
				return err
			}
			lat, wall, err := concurrent(ctx, e, bridge, conc)
			e.close()
			if err != nil {
				return err
			}
			walls[im.name], p50s[im.name] = wall, benchutil.Pct(lat, 50)
			fmt.Printf("  %-10s wall %8s ms   ADD p50 %8s ms   p99 %8s ms\n", im.name, benchutil.MS(wall), benchutil.MS(benchutil.Pct(lat, 50)), benchutil.MS(benchutil.Pct(lat, 99)))
		}
		pair(fmt.Sprintf("%d concurrent ADDs (bridge): wall", conc), 0, walls["tripod"], walls["reference"])
		pair(fmt.Sprintf("%d concurrent ADDs (bridge): ADD p50", conc), 0, p50s["tripod"], p50s["reference"])
		summary = append(summary, fmt.Sprintf("%-60s wall %s  ADD p50 %s", fmt.Sprintf("%d concurrent ADDs", conc),
			ratio(walls["tripod"], walls["reference"]), ratio(p50s["tripod"], p50s["reference"])))

		fmt.Printf("\n%d sequential ADDs kept on one /16, %s\n", grow, bridge.name)
		window := growthWindow(grow)
		var firsts, lasts []time.Duration
		for i, im := range impls {
			e, err := newEnv(im, fmt.Sprintf("tpbench%d", i))
			if err != nil {
				return err
			}
			first, last, err := growth(ctx, e, bridge, grow)
			e.close()
			if err != nil {
				return err
			}
			firsts, lasts = append(firsts, first), append(lasts, last)
			fmt.Printf("  %-10s median ADD first %d %8s ms   last %d %8s ms   last/first %s\n", im.name, window, benchutil.MS(first), window, benchutil.MS(last), ratio(last, first))
		}
		pair(fmt.Sprintf("%d ADDs kept on one /16 (bridge): median of the first %d", grow, window), 0, firsts[0], firsts[1])
		pair(fmt.Sprintf("%d ADDs kept on one /16 (bridge): median of the last %d", grow, window), 0, lasts[0], lasts[1])
		summary = append(summary, fmt.Sprintf("%-60s first %d %s  last %d %s", fmt.Sprintf("%d ADDs on one /16", grow),
			window, ratio(firsts[0], firsts[1]), window, ratio(lasts[0], lasts[1])))
	}
	fmt.Println("\ntripod / reference (lower is better; targets: ADD p50 <= 0.50, DEL p50 <= 0.25)")
	for _, s := range summary {
		fmt.Println("  " + s)
	}
	return res.Save()
}
