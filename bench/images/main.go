// Command images benchmarks tripodd's image pull against containerd's CRI
// plugin (Debian's containerd package, and containerd 2 when
// TRIPOD_CONTAINERD2_DIR holds it): the same multi-layer image from the
// same registry on 127.0.0.1, pulled and unpacked through the CRI
// PullImage call into an empty store, rotating which daemon goes first.
// It reports wall time and the daemon's peak RSS (VmHWM), and the
// tripod/containerd ratios; with TRIPOD_BENCH_OUT set it also writes
// images.json there.
//
//	TRIPODD=bin/tripodd go run ./bench/images [-rounds 5] [-mb 200] [-layers 6]
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/bench/internal/benchutil"
	"github.com/tripod-dev/tripod/internal/image/imagetest"
)

func main() {
	rounds := flag.Int("rounds", 5, "rounds per daemon")
	mb := flag.Int("mb", 200, "uncompressed image size in MB")
	nlayers := flag.Int("layers", 6, "layers")
	flag.Parse()
	if err := run(*rounds, *mb, *nlayers); err != nil {
		fmt.Fprintln(os.Stderr, "bench-images:", err)
		os.Exit(1)
	}
}

type result struct {
	seconds float64
	peakKB  int64
	// anonKB and fileKB split the RSS at the end of the pull: heap and
	// stacks versus the binary's and libraries' pages.
	anonKB, fileKB int64
}

func run(rounds, mb, nlayers int) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: both daemons unpack layers with their owners and whiteout devices")
	}
	tripodd := os.Getenv("TRIPODD")
	if tripodd == "" {
		tripodd = "bin/tripodd"
	}
	// The daemons to compare, tripod first.
	type daemon struct {
		name string
		pull func(host, ref string) (result, error)
	}
	daemons := []daemon{{"tripod", func(_, ref string) (result, error) { return pullTripod(tripodd, ref) }}}
	ctd2 := filepath.Join(os.Getenv("TRIPOD_CONTAINERD2_DIR"), "containerd")
	if v := ctdVersion(ctd2); os.Getenv("TRIPOD_CONTAINERD2_DIR") != "" && v != "" {
		daemons = append(daemons, daemon{"containerd " + v, func(host, ref string) (result, error) { return pullContainerd(ctd2, 2, host, ref) }})
	} else {
		fmt.Println("no containerd 2 (TRIPOD_CONTAINERD2_DIR; make bench-deps builds it): no containerd 2 column")
	}
	containerd, err := exec.LookPath("containerd")
	if err != nil {
		return fmt.Errorf("containerd not installed (apt-get install containerd): %w", err)
	}
	daemons = append(daemons, daemon{"containerd " + ctdVersion(containerd), func(host, ref string) (result, error) { return pullContainerd(containerd, 1, host, ref) }})
	reg, err := imagetest.Serve(imagetest.Options{})
	if err != nil {
		return err
	}
	defer reg.Close()
	fmt.Printf("building a %d MB image in %d layers...\n", mb, nlayers)
	img, compressed, err := buildImage(mb, nlayers)
	if err != nil {
		return err
	}
	if _, err := reg.PushImage("bench/app:1", img); err != nil {
		return err
	}
	ref := reg.Host + "/bench/app:1"
	fmt.Printf("image %s: %d layers, %.1f MB compressed, %d MB unpacked\n\n", ref, nlayers, float64(compressed)/1e6, mb)

	all := make([][]result, len(daemons))
	for i := range rounds {
		// Rotate who goes first: the page cache and the disk's state
		// favour no one.
		for k := range daemons {
			j := (i + k) % len(daemons)
			r, err := daemons[j].pull(reg.Host, ref)
			if err != nil {
				return fmt.Errorf("round %d %s: %w", i+1, daemons[j].name, err)
			}
			all[j] = append(all[j], r)
			fmt.Printf("round %d  %-18s  %6.2fs  peak RSS %6.1f MB  (after: anon %5.1f MB, file %5.1f MB)\n", i+1, daemons[j].name, r.seconds,
				float64(r.peakKB)/1024, float64(r.anonKB)/1024, float64(r.fileKB)/1024)
		}
	}
	res := benchutil.Result{Bench: "images", Title: fmt.Sprintf("Image pull + unpack through CRI PullImage, a %d MB image in %d layers (%.1f MB compressed) from a registry on 127.0.0.1, median of %d rounds", mb, nlayers, float64(compressed)/1e6, rounds)}
	wall := benchutil.Row{Metric: "pull+unpack wall time", Unit: "s", Target: 0.7}
	peak := benchutil.Row{Metric: "daemon peak RSS", Unit: "MB", Target: 0.5}
	for j, d := range daemons {
		res.Columns = append(res.Columns, d.name)
		sec, kb := medians(all[j])
		wall.Values = append(wall.Values, benchutil.Num(sec))
		peak.Values = append(peak.Values, benchutil.Num(kb/1024))
	}
	res.Rows = []benchutil.Row{wall, peak}
	fmt.Println()
	if err := res.WriteTable(os.Stdout); err != nil {
		return err
	}
	return res.Save()
}

func medians(rs []result) (sec, kb float64) {
	var s, m []float64
	for _, r := range rs {
		s = append(s, r.seconds)
		m = append(m, float64(r.peakKB))
	}
	slices.Sort(s)
	slices.Sort(m)
	return s[len(s)/2], m[len(m)/2]
}

// ctdVersion is a containerd binary's version ("2.4.2", "1.6.20"), "" if
// it does not run.
func ctdVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	f := strings.Fields(string(out))
	if err != nil || len(f) < 3 {
		return ""
	}
	v := strings.TrimPrefix(f[2], "v")
	v, _, _ = strings.Cut(v, "~")
	v, _, _ = strings.Cut(v, "+")
	return v
}

// buildImage makes nlayers layers of files whose content compresses about
// as well as binaries and text do (base64 of random bytes: ~75%).
func buildImage(mb, nlayers int) (v1.Image, int64, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	weights := 0
	for i := range nlayers {
		weights += nlayers - i
	}
	var layers []v1.Layer
	var compressed int64
	for i := range nlayers {
		size := int64(mb) << 20 * int64(nlayers-i) / int64(weights)
		var entries []imagetest.Entry
		entries = append(entries, imagetest.Entry{Name: fmt.Sprintf("layer%d/", i), Type: tar.TypeDir})
		for n, f := int64(0), 0; n < size; f++ {
			fsz := min(int64(4<<10)<<rng.IntN(10), size-n) // 4 KB .. 2 MB
			raw := make([]byte, fsz*3/4+3)
			for j := range raw {
				raw[j] = byte(rng.Uint32())
			}
			body := base64.StdEncoding.EncodeToString(raw)[:fsz]
			entries = append(entries, imagetest.Entry{Name: fmt.Sprintf("layer%d/f%05d", i, f), Body: body})
			n += fsz
		}
		l := imagetest.Layer(entries...)
		s, err := l.Size()
		if err != nil {
			return nil, 0, err
		}
		compressed += s
		layers = append(layers, l)
	}
	return imagetest.Image("amd64", "", layers...), compressed, nil
}

// measure starts a daemon and times one pull through its CRI socket; the
// daemon is killed (by its PID) afterwards.
func measure(cmd *exec.Cmd, sock, ref string) (result, error) {
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	pid := cmd.Process.Pid
	defer func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return result{}, fmt.Errorf("no socket %s:\n%s", sock, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	client := runtimeapi.NewImageServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// The CRI server may take a moment after the socket opens.
	for {
		if _, err := client.ListImages(ctx, &runtimeapi.ListImagesRequest{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return result{}, fmt.Errorf("CRI not ready:\n%s", log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	start := time.Now()
	if _, err := client.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		return result{}, fmt.Errorf("pull: %w\n%s", err, log.String())
	}
	r := result{seconds: time.Since(start).Seconds()}
	st, err := procStatus(pid)
	r.peakKB, r.anonKB, r.fileKB = st["VmHWM"], st["RssAnon"], st["RssFile"]
	if r.peakKB == 0 {
		return r, fmt.Errorf("no VmHWM for %d", pid)
	}
	return r, err
}

// procStatus reads the kB fields of /proc/PID/status.
func procStatus(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if f := strings.Fields(v); ok && len(f) == 2 && f[1] == "kB" {
			out[k], _ = strconv.ParseInt(f[0], 10, 64)
		}
	}
	return out, nil
}

func freshDir() (string, func(), error) {
	dir, err := os.MkdirTemp("/var/tmp", "bench-images-")
	if err != nil {
		return "", nil, err
	}
	return dir, func() {
		// Both daemons leave overlay lower dirs only (no mounts): a plain
		// removal, then a sync so the next run starts with no writeback.
		os.RemoveAll(dir)
		syscall.Sync()
	}, nil
}

func pullTripod(bin, ref string) (result, error) {
	dir, cleanup, err := freshDir()
	if err != nil {
		return result{}, err
	}
	defer cleanup()
	sock := filepath.Join(dir, "tripod.sock")
	os.WriteFile(filepath.Join(dir, "tripod.toml"), nil, 0o644)
	cmd := exec.Command(bin, "--config", filepath.Join(dir, "tripod.toml"), "--root", filepath.Join(dir, "root"),
		"--state", filepath.Join(dir, "state"), "--listen", "unix://"+sock, "--registry-hosts-dir", filepath.Join(dir, "certs.d"))
	return measure(cmd, sock, ref)
}

// pullContainerd pulls with the containerd binary bin, of major version
// major (which config format it reads).
func pullContainerd(bin string, major int, host, ref string) (result, error) {
	dir, cleanup, err := freshDir()
	if err != nil {
		return result{}, err
	}
	defer cleanup()
	sock := filepath.Join(dir, "containerd.sock")
	certs := filepath.Join(dir, "certs.d")
	if err := os.MkdirAll(filepath.Join(certs, host), 0o755); err != nil {
		return result{}, err
	}
	hosts := benchutil.HostsTOML(host)
	if err := os.WriteFile(filepath.Join(certs, host, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		return result{}, err
	}
	c := benchutil.ContainerdConfig{
		Root: filepath.Join(dir, "root"), State: filepath.Join(dir, "state"), Socket: sock,
		SandboxImage: "registry.k8s.io/pause:3.10", CertsDir: certs,
		CNIBinDir: filepath.Join(dir, "cni-bin"), CNIConfDir: filepath.Join(dir, "cni-conf"),
	}
	cfg := c.TOML()
	if major >= 2 {
		cfg = c.TOML2()
	}
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return result{}, err
	}
	return measure(exec.Command(bin, "--config", cfgPath), sock, ref)
}
