// Command cri benchmarks tripodd's runtime service against containerd's
// CRI plugin: the current release (2.4, built by `make bench-deps`, with
// its runc shim) and Debian's 1.6, all on the same runc (the first on
// PATH), each on its own root, socket and bridge network (tripod's CNI
// plugins for tripodd, the reference plugins on the same conflist for
// containerd), the same busybox image from the same registry on
// 127.0.0.1. It reports pod start (RunPodSandbox with network +
// CreateContainer + StartContainer) for sequential and concurrent pods,
// StopPodSandbox, the memory each runtime adds per running pod (RSS and PSS
// of its monitors/shims and pause processes at 20 pods), the daemons' RSS,
// the stats calls over 50 running pods, ExecSync latency and throughput,
// the memory of an idle interactive exec session (CRI Exec and its SPDY
// stream), and `critest -benchmark`'s figures, with tripod/containerd
// ratios. With TRIPOD_BENCH_OUT set it also writes cri.json there.
//
//	TRIPODD=bin/tripodd TRIPOD_CNI_BIN=bin/cni TRIPOD_REFERENCE_BIN=.tools/bin/reference \
//	TRIPOD_CONTAINERD2_DIR=.tools/bin/containerd2 go run ./bench/cri
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/tripod-dev/tripod/internal/mountinfo"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/bench/internal/benchutil"
	"github.com/tripod-dev/tripod/internal/daemonctl"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

func main() {
	seq := flag.Int("seq", 50, "sequential pods")
	conc := flag.Int("concurrent", 10, "concurrent pods")
	held := flag.Int("held", 20, "running pods for the memory figures")
	var o execOpts
	flag.IntVar(&o.n, "exec", 200, "sequential ExecSync calls into one container")
	flag.IntVar(&o.containers, "exec-containers", 10, "containers (one caller each) for exec sessions per second")
	flag.DurationVar(&o.dur, "exec-time", 10*time.Second, "how long the concurrent ExecSync callers run")
	flag.IntVar(&o.sessions, "sessions", 30, "idle interactive exec sessions held open for the memory figure (enough that their cost outweighs the daemons' heap noise)")
	flag.IntVar(&o.statsCalls, "stats-calls", 20, "calls of each stats RPC")
	only := flag.String("only", "", "run only the runtimes whose column name contains this (tripod is always run)")
	withCritest := flag.Bool("critest", true, "run critest -benchmark too")
	flag.Parse()
	if err := run(*seq, *conc, *held, o, *only, *withCritest); err != nil {
		fmt.Fprintln(os.Stderr, "bench-cri:", err)
		os.Exit(1)
	}
}

type results struct {
	name                     string
	seq, conc, stop          []time.Duration
	daemonIdleKB, daemonKB   int64
	perPodRSSKB, perPodPSSKB float64
	helperRSSKB, helperPSSKB int64
	critest                  map[string][]time.Duration
	x                        execResults
}

// runtimeUnderTest is one column of the report.
type runtimeUnderTest struct {
	name  string
	kind  string // "tripod" or "containerd": how to find its helper processes
	start func(dir, regHost string) (*daemon, error)
}

// mirrored are the registries critest's images come from; each runtime
// is pointed at the local registry for them.
var mirrored = []string{"registry.k8s.io", "public.ecr.aws"}

func run(seq, conc, held int, o execOpts, only string, withCritest bool) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root")
	}
	// Both runtimes' bridge plugins (isGateway) turn on forwarding: put
	// the host's setting back afterwards.
	const fwd = "/proc/sys/net/ipv4/ip_forward"
	if b, err := os.ReadFile(fwd); err == nil {
		defer os.WriteFile(fwd, b, 0o644)
	}
	reg, err := imagetest.Serve(imagetest.Options{})
	if err != nil {
		return err
	}
	defer reg.Close()
	if err := pushImages(reg); err != nil {
		return err
	}
	runtimes := []runtimeUnderTest{{name: "tripod", kind: "tripod", start: startTripod}}
	ctd2Dir, _ := filepath.Abs(envOr("TRIPOD_CONTAINERD2_DIR", ".tools/bin/containerd2"))
	if v, err := version(filepath.Join(ctd2Dir, "containerd")); err == nil {
		runtimes = append(runtimes, runtimeUnderTest{name: "containerd " + v, kind: "containerd",
			start: func(dir, regHost string) (*daemon, error) { return startContainerd(dir, regHost, ctd2Dir, 2) }})
	} else {
		fmt.Printf("containerd 2 not found in %s (make bench-deps builds it): %v\n", ctd2Dir, err)
	}
	if bin, err := exec.LookPath("containerd"); err == nil {
		if v, err := version(bin); err == nil {
			runtimes = append(runtimes, runtimeUnderTest{name: "containerd " + v, kind: "containerd",
				start: func(dir, regHost string) (*daemon, error) { return startContainerd(dir, regHost, filepath.Dir(bin), 1) }})
		}
	} else {
		fmt.Println("Debian's containerd is not installed: no containerd 1.6 column")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return fmt.Errorf("runc: %w", err)
	}
	fmt.Printf("runc for every runtime: %s\n", runcVersion())
	critest, err := exec.LookPath("critest")
	if err != nil {
		fmt.Println("critest not on PATH (make go-tools builds it): no critest -benchmark rows")
		critest = ""
	}
	if !withCritest {
		critest = ""
	}
	var all []results
	for _, rt := range runtimes {
		if only != "" && rt.kind != "tripod" && !strings.Contains(rt.name, only) {
			continue
		}
		r, err := bench(rt, reg.Host, critest, seq, conc, held, o)
		if err != nil {
			return fmt.Errorf("%s: %w", rt.name, err)
		}
		all = append(all, r)
	}
	res := report(all, seq, conc, held, o)
	if err := res.WriteTable(os.Stdout); err != nil {
		return err
	}
	return res.Save()
}

func pushImages(reg *imagetest.Registry) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("busybox-static: %w", err)
	}
	es := []imagetest.Entry{{Name: "bin/", Type: '5'}, {Name: "bin/busybox", Body: string(bb), Mode: 0o755},
		{Name: "bin/sh", Type: '2', Linkname: "busybox"}, {Name: "bin/sleep", Type: '2', Linkname: "busybox"},
		{Name: "bin/true", Type: '2', Linkname: "busybox"}}
	img := imagetest.Image(runtime.GOARCH, "", imagetest.Layer(es...))
	if _, err := reg.PushImage("bench/busybox:1", img); err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Config.Entrypoint, cf.Config.Cmd = []string{"/bin/sleep", "infinity"}, nil
	pause, err := mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	if _, err = reg.PushImage("bench/pause:3.10", v1.Image(pause)); err != nil {
		return err
	}
	// Look-alikes of what critest -benchmark pulls: busybox-static with
	// the applets its containers run (top).
	es = append(es, imagetest.Entry{Name: "bin/top", Type: '2', Linkname: "busybox"})
	bb2 := imagetest.Image(runtime.GOARCH, "", imagetest.Layer(es...))
	for _, ref := range []string{"e2e-test-images/busybox:1.29-2", "docker/library/busybox:1.35.0-glibc", "docker/library/busybox:1-uclibc",
		"docker/library/busybox:1", "docker/library/busybox:1-glibc", "docker/library/busybox:1-musl"} {
		if _, err := reg.PushImage(ref, bb2); err != nil {
			return err
		}
	}
	return nil
}

// version is a containerd binary's version ("2.4.2", "1.6.20").
func version(bin string) (string, error) {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(out))
	if len(f) < 3 {
		return "", fmt.Errorf("%s --version: %q", bin, out)
	}
	v := strings.TrimPrefix(f[2], "v")
	v, _, _ = strings.Cut(v, "~")
	v, _, _ = strings.Cut(v, "+")
	return v, nil
}

// daemon is a runtime under test.
type daemon struct {
	cmd  *exec.Cmd
	sock string
	dir  string
	stop func()
}

func conflist(name, bridge, subnet, dataDir string) string {
	return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"%s","plugins":[
 {"type":"bridge","bridge":"%s","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":"%s"}]],"dataDir":"%s"}},
 {"type":"portmap","capabilities":{"portMappings":true}}]}`, name, bridge, subnet, dataDir)
}

func startTripod(dir, regHost string) (*daemon, error) {
	bin := envOr("TRIPODD", "bin/tripodd")
	cniBin, _ := filepath.Abs(envOr("TRIPOD_CNI_BIN", "bin/cni"))
	conf := filepath.Join(dir, "cni-conf")
	os.MkdirAll(conf, 0o755)
	os.WriteFile(filepath.Join(conf, "10-bench.conflist"), []byte(conflist("tpbench", "tpbenchbr0", "10.231.0.0/16", filepath.Join(dir, "ipam"))), 0o644)
	os.WriteFile(filepath.Join(dir, "tripod.toml"), []byte("[runtime]\ncgroup_parent = \"/tpbench\"\n"), 0o644)
	hosts := filepath.Join(dir, "hosts")
	for _, h := range mirrored {
		os.MkdirAll(filepath.Join(hosts, h), 0o755)
		os.WriteFile(filepath.Join(hosts, h, "hosts.toml"), fmt.Appendf(nil, "server = \"http://%s\"\n", regHost), 0o644)
	}
	sock := filepath.Join(dir, "tripod.sock")
	cmd := exec.Command(bin, "--config", filepath.Join(dir, "tripod.toml"), "--root", filepath.Join(dir, "root"), "--state", filepath.Join(dir, "state"),
		"--listen", "unix://"+sock, "--cni-conf-dir", conf, "--cni-bin-dir", cniBin, "--registry-hosts-dir", hosts, "--log-level", "warn")
	d := &daemon{cmd: cmd, sock: sock, dir: dir}
	d.stop = func() {
		if pid, err := daemonctl.ReadPIDFile(filepath.Join(dir, "state", "runtime", "monitor.pid")); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		exec.Command("ip", "link", "del", "tpbenchbr0").Run()
	}
	return d, start(d)
}

// startContainerd runs the containerd in binDir (whose runc shim is found
// there first) with a config of its major version's format.
func startContainerd(dir, regHost, binDir string, major int) (*daemon, error) {
	ref, _ := filepath.Abs(envOr("TRIPOD_REFERENCE_BIN", ".tools/bin/reference"))
	bridge := fmt.Sprintf("tpctd%dbr0", major)
	conf := filepath.Join(dir, "cni-conf")
	os.MkdirAll(conf, 0o755)
	os.WriteFile(filepath.Join(conf, "10-bench.conflist"), []byte(conflist("ctdbench", bridge, fmt.Sprintf("10.%d.0.0/16", 231+major), filepath.Join(dir, "ipam"))), 0o644)
	for _, h := range append([]string{regHost}, mirrored...) {
		certs := filepath.Join(dir, "certs.d", h)
		os.MkdirAll(certs, 0o755)
		os.WriteFile(filepath.Join(certs, "hosts.toml"), []byte(benchutil.HostsTOML(regHost)), 0o644)
	}
	sock := filepath.Join(dir, "containerd.sock")
	cfg := benchutil.ContainerdConfig{
		Root: filepath.Join(dir, "root"), State: filepath.Join(dir, "state"), Socket: sock,
		SandboxImage: regHost + "/bench/pause:3.10", CertsDir: filepath.Join(dir, "certs.d"),
		CNIBinDir: ref, CNIConfDir: conf,
	}
	text := cfg.TOML()
	if major >= 2 {
		text = cfg.TOML2()
	}
	os.WriteFile(filepath.Join(dir, "config.toml"), []byte(text), 0o644)
	cmd := exec.Command(filepath.Join(binDir, "containerd"), "--config", filepath.Join(dir, "config.toml"))
	cmd.Env = append(os.Environ(), "PATH="+binDir+string(filepath.ListSeparator)+os.Getenv("PATH"))
	d := &daemon{cmd: cmd, sock: sock, dir: dir}
	d.stop = func() { exec.Command("ip", "link", "del", bridge).Run() }
	return d, start(d)
}

func start(d *daemon) error {
	logf, err := os.Create(filepath.Join(d.dir, "daemon.log"))
	if err != nil {
		return err
	}
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		return err
	}
	for range 300 {
		if _, err := os.Stat(d.sock); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not create its socket", d.cmd.Path)
}

func bench(under runtimeUnderTest, regHost, critest string, seq, conc, held int, o execOpts) (results, error) {
	res := results{name: under.name}
	dir, err := os.MkdirTemp("", "tpbench-"+under.kind)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	d, err := under.start(dir, regHost)
	if d != nil {
		defer func() {
			d.cmd.Process.Signal(syscall.SIGKILL)
			d.cmd.Wait()
			d.stop()
			unmountUnder(dir)
			removeCgroups("tpbench")
		}()
	}
	if err != nil {
		return res, err
	}
	conn, err := grpc.NewClient("unix://"+d.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return res, err
	}
	defer conn.Close()
	rt, ic := runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
	ctx := context.Background()
	image := regHost + "/bench/busybox:1"
	if _, err := ic.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: image}}); err != nil {
		return res, err
	}
	logDir := filepath.Join(dir, "logs")
	n := 0
	startPod := func() (string, string, time.Duration, error) {
		n++
		name := fmt.Sprintf("bench-%d-%d", n, time.Now().UnixNano())
		pc := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Uid: name, Namespace: "bench"},
			LogDirectory: filepath.Join(logDir, name), Linux: &runtimeapi.LinuxPodSandboxConfig{CgroupParent: "/tpbench"}}
		t0 := time.Now()
		p, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pc})
		if err != nil {
			return "", "", 0, err
		}
		c, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: p.PodSandboxId, SandboxConfig: pc,
			Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c"}, Image: &runtimeapi.ImageSpec{Image: image},
				Command: []string{"/bin/sleep", "3600"}, LogPath: "c.log"}})
		if err != nil {
			return p.PodSandboxId, "", 0, err
		}
		if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			return p.PodSandboxId, "", 0, err
		}
		return p.PodSandboxId, c.ContainerId, time.Since(t0), nil
	}
	removeAll := func(pods []string, timeStop bool) error {
		for _, p := range pods {
			t0 := time.Now()
			if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p}); err != nil {
				return err
			}
			if timeStop {
				res.stop = append(res.stop, time.Since(t0))
			}
			if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p}); err != nil {
				return err
			}
		}
		return nil
	}
	// Warm-up: the first pod pays for the first CNI plugin execs and,
	// for containerd, the pause image pull.
	p, _, _, err := startPod()
	if err != nil {
		return res, fmt.Errorf("warm-up pod: %w", err)
	}
	removeAll([]string{p}, false)
	time.Sleep(time.Second)
	res.daemonIdleKB = rss(d.cmd.Process.Pid)
	base := helperMemory(under.kind, d.sock)

	var pods, ctrs []string
	for range seq {
		p, c, dt, err := startPod()
		if p != "" {
			pods = append(pods, p)
		}
		if err != nil {
			return res, err
		}
		ctrs = append(ctrs, c)
		res.seq = append(res.seq, dt)
		if len(pods) == held {
			time.Sleep(time.Second)
			res.daemonKB = rss(d.cmd.Process.Pid)
			m := helperMemory(under.kind, d.sock)
			res.perPodRSSKB = float64(m.rss-base.rss) / float64(held)
			res.perPodPSSKB = float64(m.pss-base.pss) / float64(held)
			res.helperRSSKB, res.helperPSSKB = m.rss, m.pss
		}
	}
	// With every sequential pod running: stats, exec.
	if res.x, err = benchExec(ctx, rt, under.kind, d, ctrs, o); err != nil {
		removeAll(pods, false)
		return res, err
	}
	if err := removeAll(pods, true); err != nil {
		return res, err
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	pods = nil
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mu.Lock()
			n++
			mu.Unlock()
			p, _, dt, err := startPod()
			mu.Lock()
			defer mu.Unlock()
			if p != "" {
				pods = append(pods, p)
			}
			if err != nil {
				errs = append(errs, err)
				return
			}
			res.conc = append(res.conc, dt)
		}()
	}
	wg.Wait()
	if err := removeAll(pods, false); err != nil {
		return res, err
	}
	if len(errs) > 0 {
		return res, errs[0]
	}
	if critest != "" {
		if res.critest, err = runCritest(ctx, critest, d.sock, dir); err != nil {
			return res, err
		}
	}
	return res, nil
}

type mem struct {
	rss, pss  int64
	daemonRSS int64 // runtimeMemory: the daemon's share of rss
}

type proc struct {
	pid, ppid int
	args      []string
}

// processes lists every process with its parent and command line.
func processes() []proc {
	var procs []proc
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		ppid := 0
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 {
			if f := strings.Fields(string(stat[i+1:])); len(f) > 1 {
				ppid, _ = strconv.Atoi(f[1])
			}
		}
		procs = append(procs, proc{pid, ppid, strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")})
	}
	return procs
}

// isHelper says whether p is one of the processes a runtime runs besides
// its daemon: tripod-monitor for tripod, the shims for containerd. Only
// this daemon's (its socket is on their command line): other runtimes on
// the node are not counted.
func isHelper(kind, sock string, p proc) bool {
	switch kind {
	case "tripod":
		return filepath.Base(p.args[0]) == "tripod-monitor" && slices.Contains(p.args, filepath.Join(filepath.Dir(sock), "state", "runtime", "monitor.sock"))
	case "containerd":
		return strings.Contains(p.args[0], "containerd-shim") && slices.Contains(p.args, sock)
	}
	return false
}

// helperMemory sums RSS and PSS of the helpers (isHelper) and, for
// containerd, the pause processes (its shims' children).
func helperMemory(kind, sock string) mem {
	procs := processes()
	helpers := map[int]bool{}
	for _, p := range procs {
		helpers[p.pid] = isHelper(kind, sock, p)
	}
	var m mem
	for _, p := range procs {
		pause := kind == "containerd" && helpers[p.ppid] && len(p.args) == 2 && p.args[0] == "/bin/sleep" && p.args[1] == "infinity"
		if !helpers[p.pid] && !pause {
			continue
		}
		r, ps := smaps(p.pid)
		m.rss += r
		m.pss += ps
	}
	return m
}

func smaps(pid int) (rss, pss int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "Rss:":
			rss = v
		case "Pss:":
			pss = v
		}
	}
	return rss, pss
}

func rss(pid int) int64 {
	r, _ := smaps(pid)
	return r
}

func unmountUnder(dir string) {
	mps, _ := mountinfo.Under(dir)
	for _, mp := range mps {
		syscall.Unmount(mp, syscall.MNT_DETACH)
	}
}

// removeCgroups removes the (empty) cgroup parent the pods used, in every
// hierarchy, children first.
func removeCgroups(parent string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent))
	if d, err := os.Stat(filepath.Join("/sys/fs/cgroup", parent)); err == nil && d.IsDir() {
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", parent))
	}
	for _, d := range dirs {
		kids, _ := filepath.Glob(filepath.Join(d, "*", "cgroup.procs"))
		for _, k := range kids {
			os.Remove(filepath.Dir(k))
		}
		os.Remove(d)
	}
}

// ms is the p-th percentile of ds in milliseconds, or why there is none.
func ms(ds []time.Duration, p float64, none string) benchutil.Value {
	if len(ds) == 0 {
		return benchutil.NA(none)
	}
	return benchutil.Num(benchutil.Millis(benchutil.Pct(ds, p)))
}

func report(all []results, seq, conc, held int, o execOpts) benchutil.Result {
	res := benchutil.Result{Bench: "cri", Title: "CRI runtime: tripodd vs containerd's CRI plugin", Time: time.Now().UTC()}
	for _, r := range all {
		res.Columns = append(res.Columns, r.name)
	}
	row := func(metric, unit string, target, goal float64, f func(r results) benchutil.Value) {
		rw := benchutil.Row{Metric: metric, Unit: unit, Target: target, Goal: goal}
		for _, r := range all {
			rw.Values = append(rw.Values, f(r))
		}
		res.Rows = append(res.Rows, rw)
	}
	num := benchutil.Num
	row(fmt.Sprintf("pod start p50 (%d sequential)", seq), "ms", 0.5, 0, func(r results) benchutil.Value { return ms(r.seq, 50, "-") })
	row(fmt.Sprintf("pod start p99 (%d sequential)", seq), "ms", 0, 0, func(r results) benchutil.Value { return ms(r.seq, 99, "-") })
	row(fmt.Sprintf("pod start p50 (%d concurrent)", conc), "ms", 0, 0, func(r results) benchutil.Value { return ms(r.conc, 50, "-") })
	row(fmt.Sprintf("pod start p99 (%d concurrent)", conc), "ms", 0, 0, func(r results) benchutil.Value { return ms(r.conc, 99, "-") })
	row("StopPodSandbox p50", "ms", 0.3, 0, func(r results) benchutil.Value { return ms(r.stop, 50, "-") })
	row(fmt.Sprintf("RSS added per pod (%d pods)", held), "kB", 0, 1536, func(r results) benchutil.Value { return num(r.perPodRSSKB) })
	row(fmt.Sprintf("PSS added per pod (%d pods)", held), "kB", 0, 1024, func(r results) benchutil.Value { return num(r.perPodPSSKB) })
	row(fmt.Sprintf("monitors/shims+pause RSS total (%d pods)", held), "MB", 0, 0, func(r results) benchutil.Value { return num(float64(r.helperRSSKB) / 1024) })
	row(fmt.Sprintf("monitors/shims+pause PSS total (%d pods)", held), "MB", 0, 0, func(r results) benchutil.Value { return num(float64(r.helperPSSKB) / 1024) })
	row("daemon RSS idle", "MB", 0, 0, func(r results) benchutil.Value { return num(float64(r.daemonIdleKB) / 1024) })
	row(fmt.Sprintf("daemon RSS at %d pods", held), "MB", 0.5, 0, func(r results) benchutil.Value { return num(float64(r.daemonKB) / 1024) })
	row(fmt.Sprintf("ListContainerStats p50 (%d running pods)", seq), "ms", 0, 0, func(r results) benchutil.Value { return ms(r.x.ctrStats, 50, r.x.ctrStatsNote) })
	row(fmt.Sprintf("ListPodSandboxStats p50 (%d running pods)", seq), "ms", 0, 0, func(r results) benchutil.Value { return ms(r.x.podStats, 50, r.x.podStatsNote) })
	row(fmt.Sprintf("ExecSync p50 (%d × true, one container)", o.n), "ms", 0.5, 0, func(r results) benchutil.Value { return ms(r.x.execSync, 50, r.x.execSyncNote) })
	row(fmt.Sprintf("ExecSync p99 (%d × true, one container)", o.n), "ms", 0, 0, func(r results) benchutil.Value { return ms(r.x.execSync, 99, r.x.execSyncNote) })
	row(fmt.Sprintf("exec sessions/s (ExecSync true, %d containers at once, %s)", o.containers, o.dur), "/s", 0, 0, func(r results) benchutil.Value {
		if r.x.execPerSec == 0 {
			return benchutil.NA(r.x.execSyncNote)
		}
		return num(r.x.execPerSec)
	})
	res.Rows[len(res.Rows)-1].HigherIsBetter = true
	row(fmt.Sprintf("idle exec session: RSS added (daemon + monitor/shim; mean of %d)", o.sessions), "kB", 0, 0, func(r results) benchutil.Value {
		if r.x.sessionNote != "" {
			return benchutil.NA(r.x.sessionNote)
		}
		return num(r.x.sessionRSSKB)
	})
	row(fmt.Sprintf("idle exec session: PSS added (daemon + monitor/shim; mean of %d)", o.sessions), "kB", 0, 0, func(r results) benchutil.Value {
		if r.x.sessionNote != "" {
			return benchutil.NA(r.x.sessionNote)
		}
		return num(r.x.sessionPSSKB)
	})
	row("idle exec session: RSS added, of which the daemon's", "kB", 0, 0, func(r results) benchutil.Value {
		if r.x.sessionNote != "" {
			return benchutil.NA(r.x.sessionNote)
		}
		return num(r.x.sessionDaemonKB)
	})
	if all[0].critest != nil {
		for _, op := range append(critestOps, struct{ file, op string }{"", podContainerOp}) {
			label := "critest -benchmark " + op.op + " p50"
			if op.op == podContainerOp {
				label = "critest -benchmark " + op.op + " (1 run)"
			}
			row(label, "ms", 0, 0, func(r results) benchutil.Value { return ms(r.critest[op.op], 50, "-") })
		}
	}
	res.Notes = append(res.Notes, "runc for every runtime: "+runcVersion(),
		"ratios are tripod/containerd: below 1 tripod is faster or smaller, except for exec sessions/s, where above 1 is better")
	return res
}

// runcVersion names the runc every runtime uses: the first on PATH.
func runcVersion() string {
	runc, err := exec.LookPath("runc")
	if err != nil {
		return "none on PATH"
	}
	rv, _ := exec.Command(runc, "--version").Output()
	return fmt.Sprintf("%s (%s)", runc, strings.SplitN(strings.TrimSpace(string(rv)), "\n", 2)[0])
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
