package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cniinstall"
	"github.com/tripod-dev/tripod/internal/csi/registration"
	"github.com/tripod-dev/tripod/internal/daemonctl"
)

// upOptions are `tripod up`'s own flags.
type upOptions struct {
	logDir, binDir, crictlConfig string
	subnet, bridge, network      string
	ipamDir                      string
	timeout                      time.Duration
}

func (c *cli) up(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	var sf stackFlags
	sf.register(fs, true)
	var o upOptions
	fs.StringVar(&o.logDir, "log-dir", "/var/log/tripod", "where tripodd.log and tripod-csi.log go")
	fs.StringVar(&o.binDir, "bin-dir", "", "directory holding tripodd, tripod-csi, tripod-monitor and tripod-cni (default: beside this tripod, else PATH)")
	fs.StringVar(&o.crictlConfig, "crictl-config", "/etc/crictl.yaml", "crictl's config, written when missing so that plain crictl reaches tripodd (empty: never written)")
	fs.StringVar(&o.subnet, "subnet", "", "pod range of the default network (default: the first private range no route or address of this host overlaps, from 10.88.0.0/16)")
	fs.StringVar(&o.bridge, "bridge", "tripod0", "bridge of the default network")
	fs.StringVar(&o.network, "network", "tripod", "name of the default network")
	fs.StringVar(&o.ipamDir, "ipam-dir", "", "host-local's data directory for the default network (default /var/lib/cni/networks)")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "how long to wait for tripodd and tripod-csi to report ready")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("up: unexpected arguments %q", fs.Args())
	}
	if os.Geteuid() != 0 {
		return errors.New("tripod up needs root: it runs the container runtime and writes /opt/cni/bin and /etc/cni/net.d")
	}
	s, err := sf.load()
	if err != nil {
		return err
	}
	if s.cri.TLS.Enabled() {
		return fmt.Errorf("listen %s is served over [tls]: tripod up checks readiness as a plain CRI client; run tripodd under systemd (make install) for a TLS endpoint", s.cri.Listen)
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := s.up(ctx, o); err != nil {
		return err
	}
	return c.resumePlayed(ctx, s, sf)
}

// daemon is one of the two daemons of the stack, as configured.
type daemon struct {
	name     string
	endpoint string
	sockets  []string // unix sockets it binds
}

func (s *stack) daemons() (cri, csiD daemon) {
	cri = s.criDaemon(s.cri.Listen)
	csiD = s.csiDaemon(s.csiEndpoint, s.csiRegDir)
	return cri, csiD
}

func (s *stack) criDaemon(listen string) daemon {
	d := daemon{name: "tripodd", endpoint: listen, sockets: []string{s.adminSocket()}}
	if p, ok := strings.CutPrefix(listen, "unix://"); ok {
		d.sockets = append([]string{p}, d.sockets...)
	}
	return d
}

func (s *stack) csiDaemon(endpoint, regDir string) daemon {
	d := daemon{name: "tripod-csi", endpoint: endpoint, sockets: []string{strings.TrimPrefix(endpoint, "unix://")}}
	if regDir != "" {
		d.sockets = append(d.sockets, registration.SocketPath(regDir, csiDriverName))
	}
	return d
}

// find returns the running daemon named by its PID file in the state
// directory, described by its own command line (which the configuration
// given to this command may not match), or nil.
func (s *stack) find(name string) (*daemonctl.Proc, daemon) {
	p, err := daemonctl.Find(s.pidFile(name), name)
	if err != nil {
		return nil, daemon{}
	}
	if name == "tripodd" {
		listen, _ := daemonctl.Flag(p.Args, "listen")
		return p, s.criDaemon(listen)
	}
	endpoint, _ := daemonctl.Flag(p.Args, "endpoint")
	regDir, _ := daemonctl.Flag(p.Args, "registration-dir")
	return p, s.csiDaemon(endpoint, regDir)
}

func (s *stack) up(ctx context.Context, o upOptions) error {
	criD, csiD := s.daemons()
	running := map[string]*daemonctl.Proc{}
	for _, d := range []daemon{criD, csiD} {
		if p, _ := s.find(d.name); p != nil {
			defer p.Close()
			running[d.name] = p
		}
	}
	if len(running) == 2 {
		fmt.Printf("tripod is already running (tripodd pid %d, tripod-csi pid %d).\n", running["tripodd"].PID, running["tripod-csi"].PID)
		return s.report(o, nil, "")
	}

	// Everything that can be checked before starting anything.
	bins := map[string]string{}
	for _, name := range []string{"tripodd", "tripod-csi", "tripod-cni"} {
		p, err := findBinary(o.binDir, name)
		if err != nil {
			return err
		}
		bins[name] = p
	}
	var toStart []daemon
	for _, d := range []daemon{csiD, criD} {
		if running[d.name] == nil {
			toStart = append(toStart, d)
		}
	}
	if running["tripodd"] == nil {
		if err := s.checkRuntime(bins["tripodd"]); err != nil {
			return err
		}
	}
	for _, d := range toStart {
		for _, sock := range d.sockets {
			if err := socketFree(sock); err != nil {
				return err
			}
		}
	}

	// From here on, what this run creates is undone if it fails.
	var undo []string
	ok := false
	defer func() {
		if !ok {
			for i := len(undo) - 1; i >= 0; i-- {
				os.Remove(undo[i])
			}
		}
	}()
	netNote := ""
	if running["tripodd"] == nil {
		made, note, err := s.installCNI(ctx, bins["tripod-cni"], o)
		undo = append(undo, made...)
		if err != nil {
			return err
		}
		netNote = note
	}
	var started []*daemonctl.Started
	stopStarted := func() {
		for _, p := range started {
			p.Stop(10 * time.Second)
		}
	}
	for _, d := range toStart {
		p, err := daemonctl.Start(daemonctl.Spec{Name: d.name, Path: bins[d.name], Args: s.args(d.name),
			PIDFile: s.pidFile(d.name), LogFile: filepath.Join(o.logDir, d.name+".log")})
		if err != nil {
			stopStarted()
			return err
		}
		started = append(started, p)
	}
	names := make([]string, len(started))
	for i, p := range started {
		names[i] = fmt.Sprintf("%s (pid %d)", p.Name, p.PID)
	}
	fmt.Fprintf(os.Stderr, "started %s; waiting for them to report ready...\n", strings.Join(names, " and "))
	wctx, cancel := context.WithTimeout(ctx, o.timeout)
	err := s.waitReady(wctx, started)
	cancel()
	if err != nil {
		stopStarted()
		return fmt.Errorf("%w\nstopped what this run started (%s)", err, strings.Join(names, ", "))
	}
	ok = true
	fmt.Println("tripod is up.")
	return s.report(o, started, netNote)
}

// args are the command line a daemon is started with: everything explicit,
// so the process names its endpoint (how find tells it apart).
func (s *stack) args(name string) []string {
	var a []string
	if s.configFile != "" {
		a = append(a, "--config", s.configFile)
	}
	if name == "tripodd" {
		return append(a, "--root", s.cri.Root, "--state", s.cri.State, "--listen", s.cri.Listen,
			"--cni-conf-dir", s.cri.Runtime.CNIConfDir, "--cni-bin-dir", s.cri.Runtime.CNIBinDir)
	}
	return append(a, "--endpoint", s.csiEndpoint, "--root", s.csiRoot, "--registration-dir", s.csiRegDir)
}

// findBinary looks for one of tripod's programs in dir, else beside this
// executable, else on PATH.
func findBinary(dir, name string) (string, error) {
	if dir != "" {
		p := filepath.Join(dir, name)
		if err := unix.Access(p, unix.X_OK); err != nil {
			return "", fmt.Errorf("%s not found in --bin-dir %s", name, dir)
		}
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			p := filepath.Join(filepath.Dir(exe), name)
			if unix.Access(p, unix.X_OK) == nil {
				return p, nil
			}
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found beside tripod nor on PATH: run make build (bin/) or make install", name)
	}
	return p, nil
}

// checkRuntime fails unless the default runtime handler's binary (runc)
// and tripod-monitor can be run; other handlers only warn.
func (s *stack) checkRuntime(tripodd string) error {
	monitor := s.cri.Runtime.MonitorPath
	if monitor == "" {
		monitor = filepath.Join(filepath.Dir(tripodd), "tripod-monitor")
	}
	if err := unix.Access(monitor, unix.X_OK); err != nil {
		return fmt.Errorf("tripod-monitor not found at %s (tripodd runs it from beside itself, or runtime.monitor_path)", monitor)
	}
	if stage := filepath.Join(filepath.Dir(monitor), "tripod-exec"); unix.Access(stage, unix.X_OK) != nil {
		fmt.Fprintf(os.Stderr, "warning: %s not found: execs into containers go through the OCI runtime (slower); make build makes it\n", stage)
	}
	def := s.cri.Runtime.DefaultHandler
	for name, h := range s.cri.Runtime.Handlers {
		_, err := exec.LookPath(h.Path)
		if err == nil {
			continue
		}
		msg := fmt.Sprintf("%s not found: runtime handler %q runs %q", filepath.Base(h.Path), name, h.Path)
		if !filepath.IsAbs(h.Path) {
			msg += fmt.Sprintf(", which is not on PATH (%s)", os.Getenv("PATH"))
		}
		if name != def {
			fmt.Fprintf(os.Stderr, "warning: %s; pods asking for that handler will fail\n", msg)
			continue
		}
		return fmt.Errorf("%s.\nInstall it (make deps builds runc v1.5.2 into .tools/bin and make install puts it in /usr/local/lib/tripod; Debian: apt-get install runc) or set [runtime.handlers.%s] path in %s",
			msg, name, s.configName())
	}
	return nil
}

func (s *stack) configName() string {
	if s.configFile != "" {
		return s.configFile
	}
	return "/etc/tripod/tripod.toml"
}

// socketFree fails when something already answers on a socket a daemon is
// about to bind, naming the process when it can be found.
func socketFree(path string) error {
	if !daemonctl.Answering(path) {
		return nil
	}
	who := "another process"
	if pid, comm := daemonctl.SocketHolder(path); pid != 0 {
		who = fmt.Sprintf("pid %d (%s)", pid, comm)
	}
	return fmt.Errorf("socket %s is already in use by %s, which tripod up did not start: stop it, or give tripod up another --state, --listen or --csi-endpoint", path, who)
}

// installCNI puts the plugins into the first CNI plugin directory and the
// default network config into the config directory when it has none. It
// returns the paths it created.
func (s *stack) installCNI(ctx context.Context, tripodCNI string, o upOptions) (made []string, note string, err error) {
	binDir := filepath.SplitList(s.cri.Runtime.CNIBinDir)[0]
	inst, err := cniinstall.Plugins{From: tripodCNI, BinDir: binDir}.Install(ctx)
	made = append(made, inst.New...)
	if err != nil {
		return made, "", fmt.Errorf("installing the CNI plugins into %s: %w", binDir, err)
	}
	for _, k := range inst.Kept {
		fmt.Fprintf(os.Stderr, "kept %s: it is not tripod's (tripod cni install --force replaces it)\n", k)
	}
	confDir := s.cri.Runtime.CNIConfDir
	existing, err := cniinstall.Existing(confDir)
	if err != nil {
		return made, "", err
	}
	if existing != "" {
		name, _ := cniinstall.NetworkName(existing)
		return made, fmt.Sprintf("network %q from %s; plugins in %s", name, existing, binDir), nil
	}
	n := cniinstall.Network{Name: o.network, Bridge: o.bridge, IPAMDir: o.ipamDir}
	if o.subnet != "" {
		if n.Subnet, err = netip.ParsePrefix(o.subnet); err != nil {
			return made, "", fmt.Errorf("--subnet: %w", err)
		}
	} else {
		taken, err := cniinstall.HostPrefixes(o.bridge)
		if err != nil {
			return made, "", err
		}
		if n.Subnet, err = cniinstall.FreeSubnet(taken); err != nil {
			return made, "", err
		}
	}
	conf, err := n.Conflist()
	if err != nil {
		return made, "", err
	}
	path, _, created, err := cniinstall.Write("", confDir, cniinstall.ConfFile, conf, nil)
	made = append(made, created...)
	if err != nil {
		return made, "", err
	}
	return made, fmt.Sprintf("network %q (bridge %s, %s) written to %s; plugins in %s", o.network, o.bridge, n.Subnet, path, binDir), nil
}

// grpcClient connects to a unix or tcp endpoint, retrying quickly: the
// daemons are just starting.
func grpcClient(endpoint string) (*grpc.ClientConn, error) {
	target := endpoint
	if rest, ok := strings.CutPrefix(endpoint, "tcp://"); ok {
		target = "passthrough:///" + rest
	}
	return grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.5, MaxDelay: 500 * time.Millisecond}}))
}

// waitReady waits for tripodd's CRI Status to report RuntimeReady and
// NetworkReady and for tripod-csi's CSI Probe to answer ready. A started
// daemon that exits meanwhile fails the wait at once, with its log's end.
func (s *stack) waitReady(ctx context.Context, started []*daemonctl.Started) error {
	criConn, err := grpcClient(s.cri.Listen)
	if err != nil {
		return err
	}
	defer criConn.Close()
	csiConn, err := grpcClient(s.csiEndpoint)
	if err != nil {
		return err
	}
	defer csiConn.Close()
	rt, id := runtimeapi.NewRuntimeServiceClient(criConn), csi.NewIdentityClient(csiConn)
	criWhy, csiWhy := "not answering yet", "not answering yet"
	criOK, csiOK := false, false
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, p := range started {
			select {
			case <-p.Exited():
				return fmt.Errorf("%s exited while starting (%v); the end of %s:\n%s", p.Name, p.Err(), p.LogFile, tail(p.LogFile, 15))
			default:
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if !criOK {
			criOK, criWhy = criReady(cctx, rt)
		}
		if !csiOK {
			csiOK, csiWhy = csiReady(cctx, id)
		}
		cancel()
		if criOK && csiOK {
			return nil
		}
		select {
		case <-ctx.Done():
			var why []string
			if !criOK {
				why = append(why, "tripodd: "+criWhy)
			}
			if !csiOK {
				why = append(why, "tripod-csi: "+csiWhy)
			}
			return fmt.Errorf("not ready: %s", strings.Join(why, "; "))
		case <-tick.C:
		}
	}
}

func criReady(ctx context.Context, rt runtimeapi.RuntimeServiceClient) (bool, string) {
	resp, err := rt.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		return false, "CRI Status: " + err.Error()
	}
	want := map[string]bool{runtimeapi.RuntimeReady: false, runtimeapi.NetworkReady: false}
	var why []string
	for _, c := range resp.GetStatus().GetConditions() {
		if _, ok := want[c.Type]; !ok {
			continue
		}
		want[c.Type] = c.Status
		if !c.Status {
			why = append(why, fmt.Sprintf("%s is false (%s: %s)", c.Type, c.Reason, c.Message))
		}
	}
	for t, ok := range want {
		if !ok && len(why) == 0 {
			why = append(why, t+" is not reported")
		}
	}
	return len(why) == 0, strings.Join(why, "; ")
}

func csiReady(ctx context.Context, id csi.IdentityClient) (bool, string) {
	resp, err := id.Probe(ctx, &csi.ProbeRequest{})
	if err != nil {
		return false, "CSI Probe: " + err.Error()
	}
	if r := resp.GetReady(); r != nil && !r.Value {
		return false, "CSI Probe: not ready"
	}
	return true, ""
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// report prints where everything is and what to do next.
func (s *stack) report(o upOptions, started []*daemonctl.Started, netNote string) error {
	logOf := map[string]string{}
	for _, p := range started {
		logOf[p.Name] = p.LogFile
	}
	listen := s.cri.Listen
	for _, kind := range []struct{ kind, name string }{{"CRI", "tripodd"}, {"CSI", "tripod-csi"}} {
		p, d := s.find(kind.name)
		if p == nil {
			continue
		}
		p.Close()
		if d.name == "tripodd" {
			listen = d.endpoint
		}
		line := fmt.Sprintf("  %s  %-58s %s pid %d", kind.kind, d.endpoint, d.name, p.PID)
		if l := logOf[d.name]; l != "" {
			line += ", log " + l
		}
		fmt.Println(line)
	}
	if netNote != "" {
		fmt.Println("  CNI  " + netNote)
	}
	crictl, note := crictlCommand(o.crictlConfig, listen)
	down := "tripod down"
	if f := s.downFlags(); f != "" {
		down += " " + f
	}
	fmt.Println("Next:")
	for _, l := range [][2]string{
		{crictl + " info", note},
		{crictl + " pull busybox", "then crictl runp/create/start, or kubelet:"},
		{"kubelet --container-runtime-endpoint=" + listen, "with cgroupDriver: " + s.cri.Runtime.CgroupDriver},
		{"tripod play examples/web.yaml", "or run Kubernetes Pod manifests here (tripod ps, logs, exec, delete)"},
		{down, "stops both; containers keep running (--pods stops and removes them first)"},
	} {
		if l[1] == "" {
			fmt.Println("  " + l[0])
			continue
		}
		fmt.Printf("  %-44s # %s\n", l[0], l[1])
	}
	return nil
}

// downFlags are the flags `tripod down` needs to find this stack again.
func (s *stack) downFlags() string {
	var f []string
	if s.configFile != "" && s.configFile != "/etc/tripod/tripod.toml" {
		f = append(f, "--config "+s.configFile)
	}
	if s.cri.State != "/run/tripod" {
		f = append(f, "--state "+s.cri.State)
	}
	return strings.Join(f, " ")
}

// crictlCommand returns a crictl invocation that reaches tripodd as is,
// writing crictl's config file when there is none.
func crictlCommand(path, listen string) (cmd, note string) {
	flags := fmt.Sprintf("crictl --runtime-endpoint %s --image-endpoint %s", listen, listen)
	plain := "crictl"
	if path != "/etc/crictl.yaml" {
		plain = "crictl --config " + path
	}
	if _, err := exec.LookPath("crictl"); err != nil {
		note = "crictl is not on PATH: make install puts it in /usr/local/bin"
	}
	if path == "" {
		return flags, note
	}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		body := fmt.Sprintf("# Written by tripod up: crictl talks to tripodd.\nruntime-endpoint: %s\nimage-endpoint: %s\ntimeout: 30\n", listen, listen)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			return flags, note
		}
		if note == "" {
			note = path + " (written now) points crictl at tripodd"
		}
		return plain, note
	case err != nil:
		return flags, note
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if strings.TrimSpace(k) == "runtime-endpoint" && strings.Trim(strings.TrimSpace(v), `"'`) == listen {
			return plain, note
		}
	}
	return flags, note
}

// lock serialises up and down on one state directory.
func (s *stack) lock() (func(), error) {
	if err := os.MkdirAll(s.cri.State, 0o711); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.cri.State, "up.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}
