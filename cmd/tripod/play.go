package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/term"
	"k8s.io/client-go/tools/remotecommand"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/daemonctl"
	"github.com/tripod-dev/tripod/internal/image/pull"
	"github.com/tripod-dev/tripod/internal/play"
)

// playFlags are the flags of every pod command: the node stack's, and
// where play keeps its state.
type playFlags struct {
	stackFlags
	dir string
}

func (f *playFlags) register(fs *flag.FlagSet, synopsis string) {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s\n", synopsis)
		fs.PrintDefaults()
	}
	f.stackFlags.register(fs, false)
	fs.StringVar(&f.dir, "play-dir", "", "tripod play's state: played pods, their volumes, claims' staging (default <root>/play)")
}

// args are the flags that reach the same node again (for the background
// supervisor).
func (f *playFlags) args() []string {
	var out []string
	for _, o := range []struct{ name, v string }{{"config", f.config}, {"root", f.root}, {"state", f.state},
		{"listen", f.listen}, {"csi-endpoint", f.csiEndpoint}, {"play-dir", f.dir}} {
		if o.v != "" {
			out = append(out, "--"+o.name, o.v)
		}
	}
	return out
}

// open connects to the node the flags name.
func (f *playFlags) open(ctx context.Context, out io.Writer) (*play.Node, string, error) {
	if os.Geteuid() != 0 {
		return nil, "", errors.New("tripod's pod commands need root: they mount volumes and reach tripodd's sockets")
	}
	s, err := f.load()
	if err != nil {
		return nil, "", err
	}
	dir := f.dir
	if dir == "" {
		dir = filepath.Join(s.cri.Root, "play")
	}
	admin := s.adminSocket()
	n, err := play.Open(ctx, play.Options{
		CRIEndpoint: s.cri.Listen, CSIEndpoint: s.csiEndpoint, Dir: dir, Out: out,
		Pull: func(ctx context.Context, img runtimeapi.ImageServiceClient, ref string) error {
			want := ref
			if r, err := pull.ParseRef(ref); err == nil {
				want = r.String()
			}
			start := time.Now()
			_, err := pullShowing(ctx, admin, img, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}, want)
			if err == nil {
				fmt.Fprintf(out, "%s pulled %s in %.1fs\n", time.Now().Format("15:04:05"), ref, time.Since(start).Seconds())
			}
			return err
		},
	})
	return n, dir, err
}

// loadManifests reads the pods of the files (- is stdin).
func loadManifests(files []string) ([]*play.Pod, string, error) {
	var pods []*play.Pod
	var sources []string
	for _, f := range files {
		var b []byte
		var err error
		if f == "-" {
			b, err = io.ReadAll(os.Stdin)
		} else {
			b, err = os.ReadFile(f)
			if abs, aerr := filepath.Abs(f); aerr == nil {
				f = abs
			}
		}
		if err != nil {
			return nil, "", err
		}
		ps, err := play.Load(b)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", f, err)
		}
		pods = append(pods, ps...)
		sources = append(sources, f)
	}
	return pods, strings.Join(sources, ", "), nil
}

// playCmd: tripod play [-d] FILE...
//
// In the foreground, play is the pods' supervisor (restarts, probes) and
// prints their events until Ctrl-C, which deletes the pods it holds (claims
// are kept), as `docker compose up` does; it also returns when every pod
// has completed (exit status 1 if one failed), leaving them for tripod logs.
// With -d it starts the pods, hands them to the background supervisor
// (`tripod supervise`, started when none runs) and returns.
func (c *cli) playCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("play", flag.ContinueOnError)
	var pf playFlags
	pf.register(fs, "tripod play [-d] [flags] FILE...\n\nRuns the Kubernetes v1 Pods of the manifests (- is stdin). In the foreground it supervises\nthem (restarts, probes) until Ctrl-C, which deletes them (claims are kept), or until they all\ncomplete. With -d it starts them, leaves them to the background supervisor, and returns.")
	detach := fs.Bool("d", false, "start the pods, leave them to the background supervisor, and return")
	if err := fs.Parse(reorder(fs, args)); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("usage: tripod play [-d] [flags] FILE... (Kubernetes v1 Pod manifests; - reads stdin)")
	}
	pods, source, err := loadManifests(fs.Args())
	if err != nil {
		return err
	}
	n, dir, err := pf.open(ctx, os.Stdout)
	if err != nil {
		return err
	}
	defer n.Close()
	start := time.Now()
	sess, err := n.Play(ctx, pods, source)
	if err != nil {
		return err
	}
	for key, pid := range sess.Held {
		fmt.Printf("pod %s is already running, supervised by pid %d\n", key, pid)
	}
	for _, key := range sess.Done {
		fmt.Printf("pod %s has already completed: tripod delete it to run it again\n", key)
	}
	if *detach {
		if len(sess.Keys()) == 0 {
			return nil
		}
		sess.Release()
		pid, err := c.ensureSupervisor(pf, dir)
		if err != nil {
			return err
		}
		if pid > 0 {
			fmt.Printf("started in %.1fs; supervised by pid %d (log %s)\n", time.Since(start).Seconds(), pid, filepath.Join(dir, "supervisor.log"))
		}
		fmt.Println("next: tripod ps, tripod logs -f POD, tripod exec POD -- CMD, tripod delete POD")
		return nil
	}
	if len(sess.Keys()) == 0 {
		if len(sess.Held) > 0 {
			return errors.New("nothing to supervise here: follow those pods with tripod logs -f, stop them with tripod delete")
		}
		return nil
	}
	fmt.Printf("started in %.1fs; supervising %s until Ctrl-C, which deletes them (claims are kept)\n",
		time.Since(start).Seconds(), strings.Join(sess.Keys(), ", "))
	failed := sess.Supervise(ctx)
	if ctx.Err() != nil {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		fmt.Println("deleting the pods (Ctrl-C again is ignored; kill -9 leaves the rest to tripod delete)")
		return sess.Delete(dctx)
	}
	sess.Release()
	if len(failed) > 0 {
		return fmt.Errorf("pod(s) failed: %s (tripod logs shows why)", strings.Join(failed, ", "))
	}
	return nil
}

// ensureSupervisor starts the background supervisor unless one runs, and
// returns its PID.
func (c *cli) ensureSupervisor(pf playFlags, dir string) (int, error) {
	if pid := play.SupervisorPID(dir); pid > 0 {
		return pid, nil
	}
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	started, err := daemonctl.Start(daemonctl.Spec{Name: "tripod", Path: self, Args: append([]string{"supervise"}, pf.args()...),
		PIDFile: filepath.Join(dir, "supervisor.pid"), LogFile: filepath.Join(dir, "supervisor.log")})
	if err != nil {
		return 0, fmt.Errorf("start the supervisor: %w", err)
	}
	// It holds its lock within moments; one that exits at once says why in
	// its log.
	for i := 0; i < 100; i++ {
		if pid := play.SupervisorPID(dir); pid > 0 {
			return pid, nil
		}
		select {
		case <-started.Exited():
			if pid := play.SupervisorPID(dir); pid > 0 {
				return pid, nil // another one won the race
			}
			return 0, fmt.Errorf("the supervisor exited at once (%v); see %s", started.Err(), started.LogFile)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return started.PID, nil
}

// supervise: the background supervisor (tripod play -d starts it).
func (c *cli) supervise(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("supervise", flag.ContinueOnError)
	var pf playFlags
	pf.register(fs, "tripod supervise [flags]\n\nThe background supervisor of played pods (tripod play -d and tripod up start it).")
	if err := fs.Parse(args); err != nil {
		return err
	}
	n, dir, err := pf.open(ctx, os.Stdout)
	if err != nil {
		return err
	}
	defer n.Close()
	defer os.Remove(filepath.Join(dir, "supervisor.pid"))
	err = n.Supervisor(ctx)
	if errors.Is(err, play.ErrSupervisorRunning) {
		return fmt.Errorf("%w (pid %d)", err, play.SupervisorPID(dir))
	}
	return err
}

// ps: tripod ps [-o json]
func (c *cli) ps(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ps", flag.ContinueOnError)
	var pf playFlags
	pf.register(fs, "tripod ps [-o json] [flags]")
	format := fs.String("o", "", "json: print the status as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	n, dir, err := pf.open(ctx, os.Stderr)
	if err != nil {
		return err
	}
	defer n.Close()
	pods, claims, err := n.Status(ctx)
	if err != nil {
		return err
	}
	if *format == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Pods       []play.PodStatus   `json:"pods"`
			Claims     []play.ClaimStatus `json:"claims"`
			Supervisor int                `json:"supervisor,omitempty"`
		}{pods, claims, play.SupervisorPID(dir)})
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tPHASE\tREADY\tRESTARTS\tIP\tPORTS\tAGE\tSUPERVISED BY")
	for _, p := range pods {
		ready, total, restarts := 0, 0, uint32(0)
		for _, ct := range p.Containers {
			restarts += ct.Restarts
			if !ct.Init {
				total++
				if ct.Ready {
					ready++
				}
			}
		}
		sup := "-"
		if p.Supervisor > 0 {
			sup = fmt.Sprintf("pid %d", p.Supervisor)
		}
		phase := p.Phase
		if p.Message != "" && phase != "Running" {
			phase += " (" + p.Message + ")"
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%d/%d\t%d\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, phase, ready, total, restarts,
			dash(p.IP), dash(strings.Join(p.Ports, ",")), age(p.Created), sup)
		for _, ct := range p.Containers {
			name := ct.Name
			if ct.Init {
				name += " (init)"
			}
			state := ct.State
			switch {
			case ct.State == "Exited":
				state = fmt.Sprintf("Exited (%d", ct.ExitCode)
				if ct.Reason != "" {
					state += ", " + ct.Reason
				}
				state += ")"
			case ct.Reason != "":
				state += " (" + ct.Reason + ")"
			}
			ready := "-"
			if !ct.Init {
				ready = fmt.Sprint(ct.Ready)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\n", name, state, ready, ct.Restarts)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(claims) > 0 {
		tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nCLAIM\tSIZE\tVOLUME\tSTAGED\tUSED BY")
		for _, cl := range claims {
			fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%v\t%s\n", cl.Namespace, cl.Name, human(cl.Size), dash(cl.VolumeID), cl.Staged, dash(strings.Join(cl.Users, ",")))
		}
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(t time.Time) string {
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// logs: tripod logs [-f] [-p] [-c CONTAINER] POD
func (c *cli) logs(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	var pf playFlags
	pf.register(fs, "tripod logs [-f] [-p] [-c CONTAINER] [flags] POD")
	follow := fs.Bool("f", false, "follow the log until the container exits")
	previous := fs.Bool("p", false, "the previous instance of the container (before its last restart)")
	ctr := fs.String("c", "", "container (needed when the pod has several)")
	if err := fs.Parse(reorder(fs, args)); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: tripod logs [-f] [-p] [-c CONTAINER] POD")
	}
	n, _, err := pf.open(ctx, os.Stderr)
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Logs(ctx, play.ParseKey(fs.Arg(0)), *ctr, *follow, *previous, os.Stdout)
}

// exitError carries a command's exit status to main.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// ExitCode is the status tripod exits with.
func (e *exitError) ExitCode() int { return e.code }

// execCmd: tripod exec [-i] [-t] [-c CONTAINER] POD -- CMD [ARG...]
func (c *cli) execCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	var pf playFlags
	pf.register(fs, "tripod exec [-i] [-t] [-c CONTAINER] [flags] POD -- CMD [ARG...]")
	ctr := fs.String("c", "", "container (needed when the pod has several)")
	timeout := fs.Duration("timeout", 0, "end the session after this long (0: no limit)")
	interactive := fs.Bool("i", false, "pass stdin to the command")
	tty := fs.Bool("t", false, "run the command on a terminal (stdin in raw mode when it is one)")
	if err := fs.Parse(reorder(fs, args)); err != nil {
		return err
	}
	cmd := fs.Args()
	if len(cmd) > 1 && cmd[1] == "--" {
		cmd = append(cmd[:1:1], cmd[2:]...)
	}
	if len(cmd) < 2 {
		return errors.New("usage: tripod exec [-i] [-t] [-c CONTAINER] POD -- CMD [ARG...]")
	}
	n, _, err := pf.open(ctx, os.Stderr)
	if err != nil {
		return err
	}
	defer n.Close()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	o := play.ExecOptions{Stdout: os.Stdout, Stderr: os.Stderr, TTY: *tty}
	if *interactive {
		o.Stdin = os.Stdin
	}
	if fd := int(os.Stdin.Fd()); *tty && *interactive && term.IsTerminal(fd) {
		old, err := term.MakeRaw(fd)
		if err != nil {
			return err
		}
		defer term.Restore(fd, old)
		q := &sizeQueue{fd: fd, ch: make(chan *remotecommand.TerminalSize, 1)}
		stop := q.watch()
		defer stop()
		o.Sizes = q
	}
	code, err := n.Exec(ctx, play.ParseKey(cmd[0]), *ctr, cmd[1:], o)
	if err != nil {
		return err
	}
	if code != 0 {
		return &exitError{code}
	}
	return nil
}

// sizeQueue feeds the local terminal's size to the session: now, and on
// every SIGWINCH.
type sizeQueue struct {
	fd int
	ch chan *remotecommand.TerminalSize
}

func (q *sizeQueue) Next() *remotecommand.TerminalSize { return <-q.ch }

func (q *sizeQueue) watch() (stop func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGWINCH)
	done := make(chan struct{})
	send := func() {
		if w, h, err := term.GetSize(q.fd); err == nil {
			select {
			case q.ch <- &remotecommand.TerminalSize{Width: uint16(w), Height: uint16(h)}:
			default:
			}
		}
	}
	send()
	go func() {
		for {
			select {
			case <-done:
				return
			case <-sig:
				send()
			}
		}
	}()
	return func() {
		signal.Stop(sig)
		close(done)
	}
}

// deleteCmd: tripod delete [--claims] POD... | -f FILE | --all
func (c *cli) deleteCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("delete", flag.ContinueOnError)
	var pf playFlags
	pf.register(fs, "tripod delete [--claims] [flags] POD... | -f FILE | --all")
	claims := fs.Bool("claims", false, "also delete the pods' claims (their volumes and data), unless another pod uses them")
	file := fs.String("f", "", "delete the pods of this manifest (with --claims, its claims even when the pods are gone)")
	all := fs.Bool("all", false, "every played pod (with --claims, every claim)")
	if err := fs.Parse(reorder(fs, args)); err != nil {
		return err
	}
	if fs.NArg() == 0 && *file == "" && !*all {
		return errors.New("usage: tripod delete [--claims] POD... | -f FILE | --all")
	}
	n, _, err := pf.open(ctx, os.Stdout)
	if err != nil {
		return err
	}
	defer n.Close()
	pods, claimList, err := n.Status(ctx)
	if err != nil {
		return err
	}
	played := map[string]bool{}
	for _, p := range pods {
		played[p.Namespace+"/"+p.Name] = true
	}
	var keys, claimKeys []string
	for _, a := range fs.Args() {
		keys = append(keys, play.ParseKey(a))
	}
	if *file != "" {
		ps, _, err := loadManifests([]string{*file})
		if err != nil {
			return err
		}
		for _, p := range ps {
			if played[p.Key()] {
				keys = append(keys, p.Key())
			} else {
				fmt.Printf("pod %s is not running\n", p.Key())
			}
			for _, v := range p.Spec.Volumes {
				if v.PersistentVolumeClaim != nil {
					claimKeys = append(claimKeys, p.Namespace+"/"+v.PersistentVolumeClaim.ClaimName)
				}
			}
		}
	}
	if *all {
		for k := range played {
			keys = append(keys, k)
		}
		for _, cl := range claimList {
			claimKeys = append(claimKeys, cl.Namespace+"/"+cl.Name)
		}
	}
	var errs []error
	if len(keys) > 0 {
		errs = append(errs, n.Delete(ctx, keys, *claims))
	}
	if *claims && len(claimKeys) > 0 {
		// Claims of pods already gone (or of the ones just deleted, which
		// are then no longer known: skipped).
		_, now, err := n.Status(ctx)
		if err != nil {
			return err
		}
		known := map[string]bool{}
		for _, cl := range now {
			known[cl.Namespace+"/"+cl.Name] = true
		}
		var left []string
		for _, k := range claimKeys {
			if known[k] {
				left = append(left, k)
				known[k] = false
			}
		}
		if len(left) > 0 {
			errs = append(errs, n.DeleteClaims(ctx, left))
		}
	}
	return errors.Join(errs...)
}

// reorder moves flags found after positional arguments to the front, so
// `tripod logs POD -c C` works as `tripod logs -c C POD`; "--" ends the
// flags and stays, for exec.
func reorder(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := fs.Lookup(name)
		if f == nil || hasValue || i+1 == len(args) {
			continue
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		flags = append(flags, args[i+1])
		i++
	}
	return append(flags, pos...)
}

// deletePlayed removes the pods tripod play runs before `tripod down
// --pods` removes every sandbox through the CRI: play's deletion also
// unpublishes their volumes through CSI and drops them from its state
// (claims are kept), so neither mounts nor records of vanished pods stay.
func deletePlayed(ctx context.Context, s *stack) error {
	dir := filepath.Join(s.cri.Root, "play")
	if _, err := os.Stat(filepath.Join(dir, "state.json")); err != nil {
		return nil
	}
	n, err := play.Open(ctx, play.Options{CRIEndpoint: s.cri.Listen, CSIEndpoint: s.csiEndpoint, Dir: dir, Out: os.Stdout})
	if err != nil {
		return err
	}
	defer n.Close()
	pods, _, err := n.Status(ctx)
	if err != nil || len(pods) == 0 {
		return err
	}
	var keys []string
	for _, p := range pods {
		keys = append(keys, p.Namespace+"/"+p.Name)
	}
	if err := n.Delete(ctx, keys, false); err != nil {
		return fmt.Errorf("deleting the played pods: %w; tripodd and tripod-csi are left running", err)
	}
	return nil
}

// resumePlayed starts the background supervisor after tripod up when
// played pods are left without one (after a reboot, say): their restart
// policies and probes apply again, and sandboxes the reboot took are made
// anew.
func (c *cli) resumePlayed(ctx context.Context, s *stack, sf stackFlags) error {
	dir := filepath.Join(s.cri.Root, "play")
	if _, err := os.Stat(filepath.Join(dir, "state.json")); err != nil {
		return nil
	}
	live, err := play.Live(ctx, dir)
	if err != nil || live == 0 || play.SupervisorPID(dir) != 0 {
		return err
	}
	pid, err := c.ensureSupervisor(playFlags{stackFlags: sf}, dir)
	if err != nil {
		return err
	}
	fmt.Printf("resumed supervising %d played pod(s): pid %d (log %s)\n", live, pid, filepath.Join(dir, "supervisor.log"))
	return nil
}
