// tripod is the node's command line. The node stack:
//
//	tripod up [flags]              start tripodd and tripod-csi as daemons, install the CNI
//	                               plugins and a default bridge network, wait until both are ready
//	tripod down [--pods] [flags]   stop them (containers keep running unless --pods)
//	tripod status [flags]
//	tripod cni install [flags]     the CNI plugins and default network alone (deploy/cni, make install)
//
// Pods from Kubernetes manifests (a one-node kubelet, internal/play):
//
//	tripod play [-d] FILE...       run v1 Pods; in the foreground until Ctrl-C (which deletes them)
//	tripod ps [-o json]            played pods, their containers and claims
//	tripod logs [-f] [-p] [-c C] POD
//	tripod exec [-c C] POD -- CMD...
//	tripod delete [--claims] POD... | -f FILE | --all
//	tripod supervise               the background supervisor play -d starts
//
// Image commands:
//
//	tripod images pull [--creds USER:PASS] REF     pull through the CRI, showing progress
//	tripod images ls                               list images (CRI)
//	tripod images import FILE|DIR|-                import an OCI layout (dir or tar) or a docker-archive
//	tripod images export [--format oci|docker] -o FILE REF...
//
// Pulls and listings go over the CRI socket like kubelet's calls; import,
// export and pull progress use tripodd's admin socket (HTTP, root only),
// since the CRI has no call for them. Both need a running tripodd.
package main

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/adminapi"
	"github.com/tripod-dev/tripod/internal/image/pull"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		os.Exit(ec.ExitCode()) // tripod exec: the command's status
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tripod:", err)
		os.Exit(1)
	}
}

type cli struct {
	endpoint string // CRI socket
	admin    string // admin socket
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tripod", flag.ContinueOnError)
	c := &cli{}
	fs.StringVar(&c.endpoint, "endpoint", "unix:///run/tripod/tripod.sock", "tripodd's CRI endpoint")
	fs.StringVar(&c.admin, "admin", "/run/tripod/"+adminapi.Socket, "tripodd's admin socket")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return errUsage
	}
	switch {
	case rest[0] == "up":
		return c.up(ctx, rest[1:])
	case rest[0] == "down":
		return c.down(ctx, rest[1:])
	case rest[0] == "status":
		return c.status(ctx, rest[1:])
	case rest[0] == "play":
		return c.playCmd(ctx, rest[1:])
	case rest[0] == "supervise":
		return c.supervise(ctx, rest[1:])
	case rest[0] == "ps":
		return c.ps(ctx, rest[1:])
	case rest[0] == "logs":
		return c.logs(ctx, rest[1:])
	case rest[0] == "exec":
		return c.execCmd(ctx, rest[1:])
	case rest[0] == "delete":
		return c.deleteCmd(ctx, rest[1:])
	case rest[0] == "cni" && len(rest) > 1 && rest[1] == "install":
		return c.cniInstall(ctx, rest[2:])
	case rest[0] != "images" || len(rest) < 2:
		return errUsage
	}
	switch rest[1] {
	case "pull":
		return c.pull(ctx, rest[2:])
	case "ls", "list":
		return c.list(ctx)
	case "import":
		return c.importArchive(ctx, rest[2:])
	case "export":
		return c.export(ctx, rest[2:])
	}
	return fmt.Errorf("images %s: unknown command (want pull, ls, import or export)", rest[1])
}

func (c *cli) criClient() (runtimeapi.ImageServiceClient, func(), error) {
	conn, err := grpc.NewClient(c.endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return runtimeapi.NewImageServiceClient(conn), func() { conn.Close() }, nil
}

func (c *cli) http() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", c.admin)
	}}}
}

func (c *cli) pull(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("pull", flag.ContinueOnError)
	creds := fs.String("creds", "", "USER:PASSWORD for the registry")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: tripod images pull [--creds USER:PASS] REF")
	}
	ref := fs.Arg(0)
	want := ref
	if r, err := pull.ParseRef(ref); err == nil {
		want = r.String()
	}
	client, closeFn, err := c.criClient()
	if err != nil {
		return err
	}
	defer closeFn()
	req := &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}
	if *creds != "" {
		u, p, _ := strings.Cut(*creds, ":")
		req.Auth = &runtimeapi.AuthConfig{Username: u, Password: p}
	}
	start := time.Now()
	resp, err := pullShowing(ctx, c.admin, client, req, want)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "pulled %s in %.1fs\n", ref, time.Since(start).Seconds())
	fmt.Println(resp.ImageRef)
	return nil
}

// pullShowing runs a CRI PullImage and, meanwhile, a progress bar fed by
// tripodd's admin socket (the CRI reports no progress). want is the image
// as tripodd names it in its progress list. Without the admin socket (not
// root, say) the pull runs without a bar.
func pullShowing(ctx context.Context, admin string, client runtimeapi.ImageServiceClient, req *runtimeapi.PullImageRequest, want string) (*runtimeapi.PullImageResponse, error) {
	done := make(chan struct{})
	bar := newBar(os.Stderr)
	c := &cli{admin: admin}
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		hc := c.http()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			ps, err := c.pulls(ctx, hc)
			if err != nil {
				continue
			}
			for _, p := range ps {
				if p.Image == want {
					bar.show(fmt.Sprintf("%s %d/%d layers", want, p.DoneLayers, p.TotalLayers), p.DoneBytes, p.TotalBytes, p.Started)
				}
			}
		}
	}()
	resp, err := client.PullImage(ctx, req)
	close(done)
	bar.clear()
	return resp, err
}

func (c *cli) pulls(ctx context.Context, hc *http.Client) ([]adminapi.Progress, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://tripodd/v1/pulls", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var ps []adminapi.Progress
	return ps, json.NewDecoder(resp.Body).Decode(&ps)
}

func (c *cli) list(ctx context.Context) error {
	client, closeFn, err := c.criClient()
	if err != nil {
		return err
	}
	defer closeFn()
	resp, err := client.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tID\tSIZE\tPINNED")
	for _, img := range resp.Images {
		names := img.RepoTags
		if len(names) == 0 {
			names = img.RepoDigests
		}
		if len(names) == 0 {
			names = []string{"<none>"}
		}
		for _, n := range names {
			fmt.Fprintf(tw, "%s\t%.19s\t%s\t%v\n", n, img.Id, human(int64(img.Size)), img.Pinned)
		}
	}
	return tw.Flush()
}

func (c *cli) importArchive(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return errors.New("usage: tripod images import FILE|DIR|-")
	}
	var (
		body  io.Reader
		total int64 = -1
	)
	switch src := args[0]; {
	case src == "-":
		body = os.Stdin
	default:
		fi, err := os.Stat(src)
		if err != nil {
			return err
		}
		if fi.IsDir() {
			// An OCI layout directory goes over as a tar.
			pr, pw := io.Pipe()
			go func() { pw.CloseWithError(tarDir(src, pw)) }()
			body = pr
		} else {
			f, err := os.Open(src)
			if err != nil {
				return err
			}
			defer f.Close()
			body, total = f, fi.Size()
		}
	}
	bar := newBar(os.Stderr)
	start := time.Now()
	body = &countingReader{r: body, fn: func(n int64) { bar.show("sent", n, total, start) }}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://tripodd/v1/images/import", body)
	if err != nil {
		return err
	}
	resp, err := c.http().Do(req)
	bar.clear()
	if err != nil {
		return fmt.Errorf("import: %w (is tripodd running, and are you root?)", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return apiError(resp)
	}
	var imgs []adminapi.ImportedImage
	if err := json.NewDecoder(resp.Body).Decode(&imgs); err != nil {
		return err
	}
	for _, img := range imgs {
		fmt.Printf("%s\t%s\n", img.ID, strings.Join(img.RepoTags, ","))
	}
	return nil
}

func (c *cli) export(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	format := fs.String("format", "oci", "oci (a tar of an OCI image layout) or docker (docker-archive)")
	out := fs.String("o", "", "output file (- for stdout)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() == 0 {
		return errors.New("usage: tripod images export [--format oci|docker] -o FILE REF [REF...]")
	}
	q := url.Values{"format": {*format}, "ref": fs.Args()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://tripodd/v1/images/export?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return fmt.Errorf("export: %w (is tripodd running, and are you root?)", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return apiError(resp)
	}
	var w io.Writer = os.Stdout
	var f *os.File
	if *out != "-" {
		// Written beside the target and renamed, so a failed export
		// leaves no truncated archive under the name.
		f, err = os.CreateTemp(filepath.Dir(*out), ".tripod-export-*")
		if err != nil {
			return err
		}
		defer os.Remove(f.Name())
		w = f
	}
	bar := newBar(os.Stderr)
	start := time.Now()
	n, err := io.Copy(w, &countingReader{r: resp.Body, fn: func(n int64) { bar.show("written", n, -1, start) }})
	bar.clear()
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if f != nil {
		if err := f.Close(); err != nil {
			return err
		}
		if err := os.Rename(f.Name(), *out); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "exported %s (%s)\n", strings.Join(fs.Args(), ", "), human(n))
	return nil
}

func apiError(resp *http.Response) error {
	var e adminapi.Error
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Error == "" {
		return fmt.Errorf("tripodd: %s", resp.Status)
	}
	return fmt.Errorf("%s (%s)", e.Error, e.Kind)
}

type countingReader struct {
	r  io.Reader
	n  int64
	fn func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.fn(c.n)
	return n, err
}

// bar shows progress: a one-line bar redrawn in place on a terminal, or a
// plain line every few seconds otherwise (logs, CI).
type bar struct {
	w    *os.File
	tty  bool
	last time.Time
}

func newBar(w *os.File) *bar {
	_, err := unix.IoctlGetTermios(int(w.Fd()), unix.TCGETS)
	return &bar{w: w, tty: err == nil}
}

func (b *bar) show(what string, done, total int64, since time.Time) {
	every := 100 * time.Millisecond
	if !b.tty {
		every = 2 * time.Second
	}
	if time.Since(b.last) < every {
		return
	}
	b.last = time.Now()
	rate := human(int64(float64(done)/time.Since(since).Seconds())) + "/s"
	if !b.tty {
		if total > 0 {
			fmt.Fprintf(b.w, "%s/%s %s %s\n", human(done), human(total), what, rate)
		} else {
			fmt.Fprintf(b.w, "%s %s %s\n", what, human(done), rate)
		}
		return
	}
	if total <= 0 {
		fmt.Fprintf(b.w, "\r\033[K%s %s  %s", what, human(done), rate)
		return
	}
	const width = 30
	fill := int(float64(width) * float64(done) / float64(total))
	fill = min(max(fill, 0), width)
	fmt.Fprintf(b.w, "\r\033[K[%s%s] %3.0f%% %s/%s %s  %s", strings.Repeat("=", fill), strings.Repeat(" ", width-fill),
		100*float64(done)/float64(total), human(done), human(total), what, rate)
}

func (b *bar) clear() {
	if b.tty {
		fmt.Fprint(b.w, "\r\033[K")
	}
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// tarDir streams an OCI layout directory as a tar.
func tarDir(dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." || (!fi.IsDir() && !fi.Mode().IsRegular()) {
			return err
		}
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil || fi.IsDir() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
