// Command csi benchmarks tripod-csi through its gRPC socket, the way
// kubelet and the external-provisioner drive it: p50/p99 latency of
// CreateVolume, NodeStage+NodePublish, NodeUnpublish+NodeUnstage and
// DeleteVolume over N filesystem volumes, of CreateSnapshot of a volume
// holding 64 MiB of random data, and the driver's RSS idle and with N
// volumes live. Everything lives under one temporary directory, removed
// (unmounted, detached) at the end. With TRIPOD_BENCH_OUT set it also
// writes csi.json there: there is no anchor to run here (the hostpath
// driver is not to be had from the module proxy), so its figures as
// recorded in docs/csi.md stand beside tripod's, for reading, not as
// ratios.
//
//	TRIPOD_CSI_BIN=bin/tripod-csi go run ./bench/csi
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"github.com/tripod-dev/tripod/internal/mountinfo"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tripod-dev/tripod/bench/internal/benchutil"
	"github.com/tripod-dev/tripod/internal/csi/loop"
	"github.com/tripod-dev/tripod/internal/csi/mount"
)

const mib = int64(1) << 20

func main() {
	n := flag.Int("n", 100, "filesystem volumes")
	snaps := flag.Int("snapshots", 10, "CreateSnapshot repetitions")
	fs := flag.String("fstype", "ext4", "filesystem of the volumes")
	logLevel := flag.String("log-level", "warn", "the driver's log level (debug logs every call's duration)")
	xfsRoot := flag.Bool("xfs-root", false, "put the driver's root on an xfs filesystem (of its own, on a loop device), where snapshots are reflinks")
	flag.Parse()
	if err := run(*n, *snaps, *fs, *logLevel, *xfsRoot); err != nil {
		fmt.Fprintln(os.Stderr, "bench-csi:", err)
		os.Exit(1)
	}
}

type driver struct {
	cmd  *exec.Cmd
	dir  string
	ctrl csi.ControllerClient
	node csi.NodeClient
	conn *grpc.ClientConn
}

func start(bin, dir, logLevel string) (*driver, error) {
	sock := filepath.Join(dir, "csi.sock")
	cmd := exec.Command(bin, "--endpoint", "unix://"+sock, "--root", filepath.Join(dir, "root"), "--node-id", "bench", "--log-level", logLevel)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	d := &driver{cmd: cmd, dir: dir, conn: conn, ctrl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn)}
	id := csi.NewIdentityClient(conn)
	for i := 0; ; i++ {
		if _, err := id.Probe(context.Background(), &csi.ProbeRequest{}); err == nil {
			return d, nil
		} else if i > 500 {
			return nil, fmt.Errorf("driver did not come up: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rss reads the driver's resident set size in bytes.
func (d *driver) rss() (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// stop ends the driver (our child, by PID) and undoes anything left under
// dir: volume mounts, then loop devices backed by files under it, then
// the xfs root (whose own device autoclears).
func (d *driver) stop() {
	d.conn.Close()
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Wait()
	root := filepath.Join(d.dir, "root")
	mps, _ := mountinfo.Under(d.dir)
	for _, mp := range mps {
		if mp != d.dir && mp != root {
			unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	if devs, err := loop.List(); err == nil {
		for _, l := range devs {
			if strings.HasPrefix(l.Backing, d.dir+"/") && l.Backing != filepath.Join(d.dir, "root.img") {
				loop.Detach(l.Path)
			}
		}
	}
	unix.Unmount(root, 0)
}

// mountXFSRoot makes dir/root an xfs filesystem on a sparse image.
func mountXFSRoot(dir string) error {
	img := filepath.Join(dir, "root.img")
	f, err := os.Create(img)
	if err != nil {
		return err
	}
	err = f.Truncate(8 << 30)
	f.Close()
	if err != nil {
		return err
	}
	if err := mount.Format(context.Background(), img, "xfs"); err != nil {
		return err
	}
	dev, err := loop.Attach(img, loop.Options{Autoclear: true})
	if err != nil {
		return err
	}
	defer dev.Close()
	target, err := mount.OpenTarget(filepath.Join(dir, "root"), true)
	if err != nil {
		return err
	}
	defer target.Close()
	return mount.Mount(dev.Name(), target, "xfs", 0, "")
}

func timed(f func() error) (time.Duration, error) {
	t := time.Now()
	err := f()
	return time.Since(t), err
}

func run(n, snaps int, fstype, logLevel string, xfsRoot bool) error {
	bin := os.Getenv("TRIPOD_CSI_BIN")
	if bin == "" {
		bin = "bin/tripod-csi"
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (loop devices and mounts)")
	}
	tmp, err := os.MkdirTemp("", "bench-csi-")
	if err != nil {
		return err
	}
	if tmp, err = filepath.EvalSymlinks(tmp); err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	rootFS := "ext4 (the host's)"
	if xfsRoot {
		if err := mountXFSRoot(tmp); err != nil {
			unix.Unmount(filepath.Join(tmp, "root"), 0)
			return fmt.Errorf("xfs root: %w", err)
		}
		rootFS = "xfs with reflink"
	}
	d, err := start(bin, tmp, logLevel)
	if err != nil {
		unix.Unmount(filepath.Join(tmp, "root"), 0)
		return err
	}
	defer d.stop()
	ctx := context.Background()
	// Resident sizes are taken once the driver has been idle long enough
	// (2 s) to hand back memory, as it does between bursts of calls.
	settle := 3 * time.Second
	time.Sleep(settle)
	idle, err := d.rss()
	if err != nil {
		return err
	}

	c := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fstype}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	size := 64 * mib
	if fstype == "xfs" {
		size = 300 * mib
	}
	var create, pub, unpub, del []time.Duration
	ids := make([]string, n)
	for i := range n {
		dur, err := timed(func() error {
			r, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("bench-%d", i), CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{c}})
			ids[i] = r.GetVolume().GetVolumeId()
			return err
		})
		if err != nil {
			return fmt.Errorf("CreateVolume: %w", err)
		}
		create = append(create, dur)
	}
	paths := func(i int) (string, string) {
		return filepath.Join(tmp, "staging", ids[i]), filepath.Join(tmp, "pods", ids[i], "mount")
	}
	for i := range n {
		staging, target := paths(i)
		os.MkdirAll(staging, 0o750)
		os.MkdirAll(filepath.Dir(target), 0o750)
		dur, err := timed(func() error {
			if _, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: ids[i], StagingTargetPath: staging, VolumeCapability: c}); err != nil {
				return err
			}
			_, err := d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: ids[i], StagingTargetPath: staging, TargetPath: target, VolumeCapability: c})
			return err
		})
		if err != nil {
			return fmt.Errorf("stage+publish: %w", err)
		}
		pub = append(pub, dur)
	}
	busy, err := d.rss()
	if err != nil {
		return err
	}
	time.Sleep(settle)
	live, err := d.rss()
	if err != nil {
		return err
	}
	for i := range n {
		staging, target := paths(i)
		dur, err := timed(func() error {
			if _, err := d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: ids[i], TargetPath: target}); err != nil {
				return err
			}
			_, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: ids[i], StagingTargetPath: staging})
			return err
		})
		if err != nil {
			return fmt.Errorf("unpublish+unstage: %w", err)
		}
		unpub = append(unpub, dur)
	}
	for i := range n {
		dur, err := timed(func() error {
			_, err := d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: ids[i]})
			return err
		})
		if err != nil {
			return fmt.Errorf("DeleteVolume: %w", err)
		}
		del = append(del, dur)
	}

	// CreateSnapshot of a staged volume holding 64 MiB of random data.
	src, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "bench-snap-src", CapacityRange: &csi.CapacityRange{RequiredBytes: 300 * mib}, VolumeCapabilities: []*csi.VolumeCapability{c}})
	if err != nil {
		return err
	}
	sid := src.GetVolume().GetVolumeId()
	staging := filepath.Join(tmp, "staging", sid)
	os.MkdirAll(staging, 0o750)
	if _, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: sid, StagingTargetPath: staging, VolumeCapability: c}); err != nil {
		return err
	}
	data := make([]byte, 64*mib)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(staging, "random"), data, 0o644); err != nil {
		return err
	}
	unix.Sync()
	var snap []time.Duration
	for i := range snaps {
		var id string
		dur, err := timed(func() error {
			r, err := d.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: fmt.Sprintf("bench-snap-%d", i), SourceVolumeId: sid})
			id = r.GetSnapshot().GetSnapshotId()
			return err
		})
		if err != nil {
			return fmt.Errorf("CreateSnapshot: %w", err)
		}
		snap = append(snap, dur)
		if _, err := d.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
			return err
		}
	}
	if _, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: sid, StagingTargetPath: staging}); err != nil {
		return err
	}
	if _, err := d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: sid}); err != nil {
		return err
	}

	fmt.Printf("tripod-csi, %d %s volumes of %d MiB, root on %s, %s\n\n", n, fstype, size/mib, rootFS, time.Now().UTC().Format(time.RFC3339))
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "call\tp50 ms\tp99 ms\ttarget / reference hostpath p50\t")
	fmt.Fprintf(w, "CreateVolume\t%s\t%s\thostpath 0.63 (no filesystem)\t\n", benchutil.MS(benchutil.Pct(create, 50)), benchutil.MS(benchutil.Pct(create, 99)))
	fmt.Fprintf(w, "NodeStage+NodePublish\t%s\t%s\t< 10 (hostpath publish 7.2)\t\n", benchutil.MS(benchutil.Pct(pub, 50)), benchutil.MS(benchutil.Pct(pub, 99)))
	fmt.Fprintf(w, "NodeUnpublish+NodeUnstage\t%s\t%s\t< 10 (hostpath unpublish 9.0)\t\n", benchutil.MS(benchutil.Pct(unpub, 50)), benchutil.MS(benchutil.Pct(unpub, 99)))
	fmt.Fprintf(w, "DeleteVolume\t%s\t%s\thostpath 0.47\t\n", benchutil.MS(benchutil.Pct(del, 50)), benchutil.MS(benchutil.Pct(del, 99)))
	fmt.Fprintf(w, "CreateSnapshot (64 MiB data)\t%s\t%s\t< 300 (hostpath 1470)\t\n", benchutil.MS(benchutil.Pct(snap, 50)), benchutil.MS(benchutil.Pct(snap, 99)))
	w.Flush()
	fmt.Printf("\nRSS idle %.1f MiB; with %d volumes live %.1f MiB (right after the last publish: %.1f MiB)\n(target <= 10 MiB; hostpath 16 idle, 21.7 with 100 volumes)\n",
		float64(idle)/float64(mib), n, float64(live)/float64(mib), float64(busy)/float64(mib))

	res := benchutil.Result{Bench: "csi", Columns: []string{"tripod-csi", "hostpath v1.18.0 (recorded, not run here)"},
		Title: fmt.Sprintf("tripod-csi through its gRPC socket: %d %s volumes of %d MiB, root on %s", n, fstype, size/mib, rootFS),
		Notes: []string{"The hostpath driver is not installable here; its column is the figures recorded in docs/csi.md (directories, no size limit), for reading, not for ratios."}}
	ms := func(metric string, ds []time.Duration, p, goal float64, recorded string) {
		res.Rows = append(res.Rows, benchutil.Row{Metric: metric, Unit: "ms", Goal: goal,
			Values: []benchutil.Value{benchutil.Num(benchutil.Millis(benchutil.Pct(ds, p))), benchutil.NA(recorded)}})
	}
	ms("CreateVolume p50", create, 50, 0, "0.63 ms")
	ms("CreateVolume p99", create, 99, 0, "-")
	ms("NodeStage+NodePublish p50", pub, 50, 10, "7.2 ms (publish alone)")
	ms("NodeStage+NodePublish p99", pub, 99, 0, "-")
	ms("NodeUnpublish+NodeUnstage p50", unpub, 50, 10, "9.0 ms (unpublish alone)")
	ms("NodeUnpublish+NodeUnstage p99", unpub, 99, 0, "-")
	ms("DeleteVolume p50", del, 50, 0, "0.47 ms")
	ms("CreateSnapshot of 64 MiB of data p50", snap, 50, 300, "1470 ms")
	mb := func(metric string, b int64, recorded string) {
		res.Rows = append(res.Rows, benchutil.Row{Metric: metric, Unit: "MiB", Goal: 10,
			Values: []benchutil.Value{benchutil.Num(float64(b) / float64(mib)), benchutil.NA(recorded)}})
	}
	mb("RSS idle", idle, "16 MiB")
	mb(fmt.Sprintf("RSS with %d volumes live", n), live, "21.7 MiB (100 volumes)")
	return res.Save()
}
