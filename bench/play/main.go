// Command play times `tripod play -d examples/web.yaml` to the first
// successful HTTP response on the pod's hostPort, the way a person tries
// tripod: a node stack brought up by `tripod up`, the example unchanged.
// Everything runs in a network namespace of its own (so hostPort 8080 is
// this run's alone), with docker.io mirrored through hosts.toml to a
// registry on that namespace's 127.0.0.1 serving a busybox-static image as
// docker.io/library/busybox:1.37. It reports the cold start (image pulled,
// claim's volume created), then, after `tripod delete` (claims kept), the
// warm one. With TRIPOD_BENCH_OUT set it writes play.json there.
//
//	TRIPOD_BIN=bin/tripod go run ./bench/play [-example examples/web.yaml]
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"github.com/tripod-dev/tripod/internal/mountinfo"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/bench/internal/benchutil"
	"github.com/tripod-dev/tripod/internal/cni/nsutil"
	"github.com/tripod-dev/tripod/internal/critestimg"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
	"github.com/tripod-dev/tripod/internal/netns"
)

func main() {
	example := flag.String("example", "examples/web.yaml", "the pod manifest to play")
	addr := flag.String("addr", "127.0.0.1:8080", "where its hostPort answers (inside the bench's namespace)")
	timeout := flag.Duration("timeout", 3*time.Minute, "how long to wait for the first HTTP 200")
	flag.Parse()
	if err := run(*example, *addr, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "bench-play:", err)
		os.Exit(1)
	}
}

// stack is a node stack (tripodd, tripod-csi) that `tripod up` started
// under dir, inside the network namespace ns.
type stack struct {
	tripod string
	dir    string
	tag    string
	ns     *os.File
	nsPath string
}

func (s *stack) p(rel string) string { return filepath.Join(s.dir, rel) }

func (s *stack) cgroup() string { return "/" + s.tag + "-pods" }

// playArgs are the flags that reach this stack.
func (s *stack) playArgs() []string {
	return []string{"--config", s.p("tripod.toml"), "--root", s.p("root"), "--state", s.p("state"), "--csi-endpoint", "unix://" + s.p("state/csi.sock")}
}

// cli runs the tripod CLI inside the namespace.
func (s *stack) cli(ctx context.Context, args ...string) (string, error) {
	var out []byte
	err := nsutil.DoFile(s.ns, func() error {
		var err error
		out, err = exec.CommandContext(ctx, s.tripod, args...).CombinedOutput()
		return err
	})
	if err != nil {
		return string(out), fmt.Errorf("tripod %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func run(example, addr string, timeout time.Duration) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (tripod up: namespaces, mounts, cgroups)")
	}
	tripod, err := filepath.Abs(envOr("TRIPOD_BIN", "bin/tripod"))
	if err != nil {
		return err
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return fmt.Errorf("runc: %w", err)
	}
	manifest, err := filepath.Abs(example)
	if err != nil {
		return err
	}
	b := make([]byte, 3)
	rand.Read(b)
	tag := "tpbp" + hex.EncodeToString(b)[:5]
	// Short: the stack's sockets live below it.
	dir, err := os.MkdirTemp("", tag)
	if err != nil {
		return err
	}
	s := &stack{tripod: tripod, dir: dir, tag: tag, nsPath: filepath.Join("/run/netns", tag)}
	defer os.RemoveAll(dir)
	if err := netns.PinNet(s.nsPath); err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	defer netns.Unpin(map[netns.Kind]string{netns.Net: s.nsPath})
	if s.ns, err = os.Open(s.nsPath); err != nil {
		return err
	}
	defer s.ns.Close()
	ctx := context.Background()
	defer s.teardown(ctx)

	if err := nsutil.DoFile(s.ns, benchutil.UpLoopback); err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	var reg *imagetest.Registry
	if err := nsutil.DoFile(s.ns, func() error {
		var err error
		reg, err = imagetest.Serve(imagetest.Options{}) // listens in the namespace
		return err
	}); err != nil {
		return err
	}
	defer reg.Close()
	if err := s.pushBusybox(reg.Host); err != nil {
		return err
	}
	if err := critestimg.WriteHosts(s.p("certs.d"), reg.Host); err != nil {
		return err
	}
	conf := fmt.Sprintf("[image]\nregistry_hosts_dir = %q\n\n[runtime]\ncgroup_parent = %q\n\n[nri]\nenable = false\n\n[csi]\nregistration_dir = \"\"\n", s.p("certs.d"), s.cgroup())
	if err := os.WriteFile(s.p("tripod.toml"), []byte(conf), 0o644); err != nil {
		return err
	}
	t0 := time.Now()
	if _, err := s.cli(ctx, "up", "--config", s.p("tripod.toml"), "--root", s.p("root"), "--state", s.p("state"),
		"--csi-endpoint", "unix://"+s.p("state/csi.sock"), "--cni-bin-dir", s.p("cni/bin"), "--cni-conf-dir", s.p("cni/net.d"),
		"--log-dir", s.p("log"), "--crictl-config", "", "--bridge", tag+"br", "--ipam-dir", s.p("ipam")); err != nil {
		return err
	}
	up := time.Since(t0)
	fmt.Printf("tripod up: %.2fs\n", up.Seconds())

	cold, coldRet, err := s.playToHTTP(ctx, manifest, addr, timeout)
	if err != nil {
		return fmt.Errorf("cold: %w", err)
	}
	fmt.Printf("cold: tripod play -d returned after %.2fs, first HTTP 200 after %.2fs\n", coldRet.Seconds(), cold.Seconds())
	out, err := s.cli(ctx, append(append([]string{"delete"}, s.playArgs()...), "--all")...)
	if err != nil {
		return err
	}
	fmt.Print(out)
	warm, warmRet, err := s.playToHTTP(ctx, manifest, addr, timeout)
	if err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	fmt.Printf("warm: tripod play -d returned after %.2fs, first HTTP 200 after %.2fs\n", warmRet.Seconds(), warm.Seconds())

	res := benchutil.Result{Bench: "play", Columns: []string{"tripod"},
		Title: fmt.Sprintf("`tripod play -d %s` on a stack started by `tripod up`, in a network namespace of its own, the image from a registry on its 127.0.0.1", example),
		Rows: []benchutil.Row{
			{Metric: "tripod play → first HTTP 200 on the hostPort, cold (image pulled, claim's volume created)", Unit: "s", Values: []benchutil.Value{benchutil.Num(cold.Seconds())}},
			{Metric: "tripod play -d returns, cold", Unit: "s", Values: []benchutil.Value{benchutil.Num(coldRet.Seconds())}},
			{Metric: "tripod play → first HTTP 200, warm (after tripod delete; image and claim kept)", Unit: "s", Values: []benchutil.Value{benchutil.Num(warm.Seconds())}},
			{Metric: "tripod up (tripodd + tripod-csi ready)", Unit: "s", Values: []benchutil.Value{benchutil.Num(up.Seconds())}},
		},
		Notes: []string{"No anchor runs here: the example is timed as a person would see it, from the command to the page."}}
	if err := res.WriteTable(os.Stdout); err != nil {
		return err
	}
	return res.Save()
}

// playToHTTP runs `tripod play -d manifest` and polls addr until it
// answers 200; it returns the time to that answer and the time the
// command took to return.
func (s *stack) playToHTTP(ctx context.Context, manifest, addr string, timeout time.Duration) (toHTTP, returned time.Duration, err error) {
	t0 := time.Now()
	if _, err := s.cli(ctx, append(append([]string{"play", "-d"}, s.playArgs()...), manifest)...); err != nil {
		return 0, 0, err
	}
	returned = time.Since(t0)
	deadline := t0.Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		var page string
		if page, last = s.get(addr); last == nil {
			toHTTP = time.Since(t0)
			fmt.Printf("the page: %s\n", strings.TrimSpace(page))
			return toHTTP, returned, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, 0, fmt.Errorf("no HTTP 200 from %s in %s: %v", addr, timeout, last)
}

// get asks addr for / from inside the namespace and returns the page of
// a 200 answer.
func (s *stack) get(addr string) (string, error) {
	var page string
	err := nsutil.DoFile(s.ns, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr)
		b, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		status, _, _ := strings.Cut(string(b), "\r\n")
		if !strings.HasPrefix(status, "HTTP/1.") || !strings.Contains(status, " 200 ") {
			return fmt.Errorf("answer %q", status)
		}
		_, page, _ = strings.Cut(string(b), "\r\n\r\n")
		return nil
	})
	return page, err
}

// pushBusybox stores busybox-static as docker.io/library/busybox:1.37
// (through the mirror), dialing from inside the namespace.
func (s *stack) pushBusybox(host string) error {
	entries, err := imagetest.Busybox()
	if err != nil {
		return err
	}
	ref, err := name.ParseReference(host+"/library/busybox:1.37", name.Insecure)
	if err != nil {
		return err
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := nsutil.DoFile(s.ns, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	if err := remote.Write(ref, imagetest.Image(runtime.GOARCH, "", imagetest.Layer(entries...)), remote.WithTransport(tr)); err != nil {
		return fmt.Errorf("push busybox: %w", err)
	}
	return nil
}

// teardown deletes the played pods and their claims, stops the stack, and
// removes whatever is left of it: processes naming its directory (by
// PID), the pods' processes, mounts under it, its cgroups.
func (s *stack) teardown(ctx context.Context) {
	if s.ns == nil {
		return
	}
	if _, err := os.Stat(s.p("state")); err == nil {
		if out, err := s.cli(ctx, append(append([]string{"delete"}, s.playArgs()...), "--all", "--claims")...); err != nil {
			fmt.Fprintf(os.Stderr, "bench-play: cleanup: %v\n%s", err, out)
		}
		if out, err := s.cli(ctx, "down", "--pods", "--timeout", "5s", "--config", s.p("tripod.toml"), "--state", s.p("state")); err != nil {
			fmt.Fprintf(os.Stderr, "bench-play: cleanup: %v\n%s", err, out)
		}
	}
	for _, pid := range s.procs() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	var podProcs []int
	files, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/pids", s.cgroup(), "*", "cgroup.procs"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				podProcs = append(podProcs, pid)
			}
		}
	}
	for _, pid := range podProcs {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	time.Sleep(200 * time.Millisecond)
	mps, _ := mountinfo.Under(s.dir)
	for _, mp := range mps {
		if mp != s.dir {
			unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hierarchies {
		kids, _ := filepath.Glob(filepath.Join(h, s.cgroup(), "*", "cgroup.procs"))
		for _, k := range kids {
			os.Remove(filepath.Dir(k))
		}
		os.Remove(filepath.Join(h, s.cgroup()))
	}
}

// procs lists the live processes whose command line names the stack's
// directory: tripodd, tripod-csi, tripod-monitor, the supervisor.
func (s *stack) procs() []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(b), s.dir) {
			out = append(out, pid)
		}
	}
	return out
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
