// Package daemon is the dhcp plugin's long-running half: it serves the
// plugin on a unix socket, runs the DHCP exchanges inside container
// network namespaces, keeps every lease renewed, and persists leases so
// that a restarted daemon still renews and releases them.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/dhcp/api"
)

// Config is how the daemon runs; flags of 'dhcp daemon' fill it.
type Config struct {
	Socket     string        // unix socket path
	StateDir   string        // lease files; default: the socket path with .leases instead of .sock
	PIDFile    string        // written once serving, removed at exit
	HostPrefix string        // prefix of the host's root when the daemon runs in a container
	Broadcast  bool          // ask servers to broadcast replies
	Timeout    time.Duration // default bound on acquiring a lease
	ResendMax  time.Duration // cap on the retransmission interval
}

// Main runs the daemon with command-line args (after "daemon") until
// SIGTERM or SIGINT, and returns the exit status. Stopping does not
// release leases: containers keep their addresses, and the next daemon
// picks the leases up from the state directory.
func Main(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("dhcp daemon", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Config
	fs.StringVar(&c.Socket, "socketpath", api.DefaultSocket, "unix socket the plugin connects to")
	fs.StringVar(&c.StateDir, "statedir", "", "directory for lease files (default: the socket path with .leases for .sock)")
	fs.StringVar(&c.PIDFile, "pidfile", "", "absolute path to write the daemon's PID to")
	fs.StringVar(&c.HostPrefix, "hostprefix", "", "prefix of the host root for the socket and netns paths, when running in a container")
	fs.BoolVar(&c.Broadcast, "broadcast", false, "ask DHCP servers to broadcast their replies")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "how long ADD waits for a lease when the config sets no ipam.timeout")
	fs.DurationVar(&c.ResendMax, "resendmax", 62*time.Second, "longest interval between retransmissions")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "dhcp daemon: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	logger := log.New(stderr, "dhcp daemon: ", log.LstdFlags|log.Lmicroseconds)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Run(ctx, c, logger); err != nil {
		logger.Print(err)
		return 1
	}
	return 0
}

// Run serves until ctx ends, then stops every goroutine and closes every
// socket before returning.
func Run(ctx context.Context, c Config, logger *log.Logger) error {
	if c.Timeout <= 0 || c.ResendMax <= 0 {
		return errors.New("-timeout and -resendmax must be positive")
	}
	if c.PIDFile != "" && !filepath.IsAbs(c.PIDFile) {
		return fmt.Errorf("-pidfile %q is not an absolute path", c.PIDFile)
	}
	socket := c.HostPrefix + c.Socket
	stateDir := c.StateDir
	if stateDir == "" {
		stateDir = strings.TrimSuffix(socket, ".sock") + ".leases"
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	ln, err := listen(socket)
	if err != nil {
		return err
	}
	defer ln.Close() // removes the socket file
	if c.PIDFile != "" {
		if err := os.WriteFile(c.PIDFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return fmt.Errorf("writing pidfile: %w", err)
		}
		defer os.Remove(c.PIDFile)
	}
	m := &manager{
		ctx:       ctx,
		log:       logger,
		store:     &store{dir: stateDir},
		prefix:    c.HostPrefix,
		timeout:   c.Timeout,
		resendMax: c.ResendMax,
		broadcast: c.Broadcast,
		leases:    map[api.Attachment]*lease{},
		locks:     map[api.Attachment]*keyLock{},
	}
	n := m.restore()
	logger.Printf("serving %s (protocol %d), state in %s, %d leases restored", ln.Addr(), api.Version, stateDir, n)
	serve(ctx, ln, m)
	m.wait()
	logger.Printf("stopped; leases are kept in %s", stateDir)
	return nil
}

// listen returns the socket passed by systemd socket activation, or a new
// one at path. A live daemon already on path is an error; a stale socket
// file is replaced.
func listen(path string) (net.Listener, error) {
	if os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) && os.Getenv("LISTEN_FDS") == "1" {
		f := os.NewFile(3, "systemd-socket")
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("using the socket passed by systemd: %w", err)
		}
		return ln, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another dhcp daemon is already serving %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// serve answers connections until ctx ends, then waits for the requests
// in progress (which ctx also ends).
func serve(ctx context.Context, ln net.Listener, m *manager) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Printf("accepting a connection: %v", err)
			if sleepUntil(ctx, time.Now().Add(100*time.Millisecond)) != nil {
				return
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			handle(ctx, conn, m)
		}()
	}
}

// requestReadTimeout bounds how long a client may take to send its
// request.
const requestReadTimeout = 10 * time.Second

func handle(ctx context.Context, conn net.Conn, m *manager) {
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(requestReadTimeout))
	var req api.Request
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		reply(conn, nil, cnierr.New(cnierr.DecodingFailure, "dhcp daemon: reading request: %v", err))
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	if req.Version != api.Version {
		reply(conn, nil, cnierr.New(cnierr.DHCPDaemon, "the dhcp daemon speaks protocol version %d, the plugin %d: run both from the same tripod-cni build", api.Version, req.Version))
		return
	}
	// The plugin closing its end (it timed out or was killed) abandons
	// the request.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		var b [64]byte
		for {
			if _, err := conn.Read(b[:]); err != nil {
				cancel()
				return
			}
		}
	}()
	lease, err := dispatch(rctx, m, &req)
	if werr := reply(conn, lease, err); werr != nil && req.Op == api.OpAdd && err == nil {
		m.log.Printf("%v: the plugin went away before it got lease %s; releasing it", req.Attachment, lease.Address.Addr())
		if derr := m.del(req.Attachment); derr != nil {
			m.log.Print(derr)
		}
	}
}

func dispatch(ctx context.Context, m *manager, req *api.Request) (*api.Lease, error) {
	switch req.Op {
	case api.OpAdd:
		if !filepath.IsAbs(req.Netns) {
			return nil, cnierr.New(cnierr.InvalidEnv, "network namespace path %q is not absolute", req.Netns)
		}
		return m.add(ctx, req)
	case api.OpDel:
		return nil, m.del(req.Attachment)
	case api.OpCheck:
		return m.check(req.Attachment)
	case api.OpGC:
		return nil, m.gc(req.Network, req.Valid)
	case api.OpStatus:
		return nil, nil
	}
	return nil, cnierr.New(cnierr.DHCPDaemon, "the dhcp daemon does not know operation %q", req.Op)
}

func reply(conn net.Conn, lease *api.Lease, err error) error {
	resp := api.Response{Version: api.Version, Lease: lease}
	if err != nil {
		var ce *types.Error
		if !errors.As(err, &ce) {
			ce = cnierr.New(cnierr.DHCPDaemon, "%v", err)
		}
		resp.Error, resp.Lease = ce, nil
	}
	_ = conn.SetWriteDeadline(time.Now().Add(requestReadTimeout))
	return json.NewEncoder(conn).Encode(&resp)
}
