// Command images benchmarks tripodd's image pull against containerd's CRI
// plugin (Debian's containerd package): the same multi-layer image from the
// same registry on 127.0.0.1, pulled and unpacked through the CRI
// PullImage call into an empty store, alternating which daemon goes first.
// It reports wall time and the daemon's peak RSS (VmHWM), and the
// tripod/containerd ratios.
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
	"text/tabwriter"
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
	containerd, err := exec.LookPath("containerd")
	if err != nil {
		return fmt.Errorf("containerd not installed (apt-get install containerd): %w", err)
	}
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

	var tri, ctd []result
	for i := range rounds {
		order := []string{"tripod", "containerd"}
		if i%2 == 1 {
			order = []string{"containerd", "tripod"}
		}
		for _, who := range order {
			var r result
			var err error
			if who == "tripod" {
				r, err = pullTripod(tripodd, reg.Host, ref)
				tri = append(tri, r)
			} else {
				r, err = pullContainerd(containerd, reg.Host, ref)
				ctd = append(ctd, r)
			}
			if err != nil {
				return fmt.Errorf("round %d %s: %w", i+1, who, err)
			}
			fmt.Printf("round %d  %-10s  %6.2fs  peak RSS %6.1f MB  (after: anon %5.1f MB, file %5.1f MB)\n", i+1, who, r.seconds,
				float64(r.peakKB)/1024, float64(r.anonKB)/1024, float64(r.fileKB)/1024)
		}
	}
	tt, tm := medians(tri)
	ct, cm := medians(ctd)
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "median of "+strconv.Itoa(rounds)+"\ttripod\tcontainerd "+ctdVersion(containerd)+"\ttripod/containerd\ttarget")
	fmt.Fprintf(tw, "pull+unpack wall time\t%.2fs\t%.2fs\t%.2f\t<= 0.7\n", tt, ct, tt/ct)
	fmt.Fprintf(tw, "daemon peak RSS\t%.1f MB\t%.1f MB\t%.2f\t<= 0.5\n", tm/1024, cm/1024, tm/cm)
	return tw.Flush()
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

func ctdVersion(bin string) string {
	out, _ := exec.Command(bin, "--version").Output()
	f := strings.Fields(string(out))
	if len(f) >= 3 {
		return f[2]
	}
	return ""
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

func pullTripod(bin, _ string, ref string) (result, error) {
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

func pullContainerd(bin, host, ref string) (result, error) {
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
	cfg := benchutil.ContainerdConfig{
		Root: filepath.Join(dir, "root"), State: filepath.Join(dir, "state"), Socket: sock,
		SandboxImage: "registry.k8s.io/pause:3.10", CertsDir: certs,
		CNIBinDir: filepath.Join(dir, "cni-bin"), CNIConfDir: filepath.Join(dir, "cni-conf"),
	}.TOML()
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return result{}, err
	}
	return measure(exec.Command(bin, "--config", cfgPath), sock, ref)
}
