// Command tripod-csi is tripod's local-storage CSI driver: one process per
// node serving the Identity, Controller, GroupController and Node services
// on a unix socket.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"

	"github.com/tripod-dev/tripod/internal/csi/driver"
	"github.com/tripod-dev/tripod/internal/csi/registration"
)

// version is set at build time (-X main.version=...).
var version = "dev"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tripod-csi:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("tripod-csi", flag.ContinueOnError)
	configPath := fs.String("config", "", "config file (TOML, [csi] table); flags given on the command line override it")
	printConfig := fs.Bool("print-config", false, "print the effective configuration as TOML and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	cfg := defaultConfig()
	fs.StringVar(&cfg.Endpoint, "endpoint", cfg.Endpoint, "CSI endpoint, unix:///path/csi.sock")
	fs.StringVar(&cfg.NodeID, "node-id", cfg.NodeID, "this node's ID (default: the host name)")
	fs.StringVar(&cfg.Root, "root", cfg.Root, "directory holding every volume image, snapshot and state file")
	fs.StringVar(&cfg.Name, "name", cfg.Name, "driver name")
	fs.StringVar(&cfg.Capacity, "capacity", cfg.Capacity, "cap on provisioned bytes, e.g. 100Gi (empty: the root filesystem's free space)")
	fs.Int64Var(&cfg.MaxVolumes, "max-volumes", cfg.MaxVolumes, "volumes this node may have attached (0: no limit)")
	fs.StringVar(&cfg.DefaultFsType, "default-fstype", cfg.DefaultFsType, "filesystem for mount volumes that name none (ext4 or xfs)")
	fs.StringVar(&cfg.RegistrationDir, "registration-dir", cfg.RegistrationDir, "kubelet plugin registration directory; empty: do not register")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Println(version)
		return nil
	}
	if *configPath != "" {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		fileCfg := defaultConfig()
		if err := loadConfig(*configPath, &fileCfg); err != nil {
			return err
		}
		cfg = merge(fileCfg, cfg, set)
	}
	if *printConfig {
		fmt.Print(cfg.TOML())
		return nil
	}
	dcfg, err := cfg.driverConfig()
	if err != nil {
		return err
	}
	dcfg.Version = version
	dcfg.OnIdle = func() {
		debug.FreeOSMemory()
		dropStartupPages()
	}
	// Crash-recovery tests only: see driver.Config.FailPoint.
	dcfg.FailPoint = os.Getenv("TRIPOD_CSI_FAILPOINT")

	// The driver idles between calls and holds little: trade a little CPU
	// in the collector for a small resident set, unless told otherwise.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(25)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(8 << 20)
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	d, err := driver.New(ctx, dcfg)
	if err != nil {
		return err
	}
	sock, err := driver.SocketPath(cfg.Endpoint)
	if err != nil {
		return err
	}
	l, err := driver.Listen(sock)
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- d.Serve(ctx, l) }()
	if cfg.RegistrationDir != "" {
		reg := &registration.Server{Name: dcfg.Name, Endpoint: sock, Log: dcfg.Log}
		go func() { errc <- reg.Serve(ctx, cfg.RegistrationDir) }()
	}
	err = <-errc
	cancel()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// parseSize reads "1073741824", "100Gi", "512Mi", "2Ti".
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}} {
		if n, ok := strings.CutSuffix(s, u.suf); ok {
			s, mult = n, u.m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want bytes or a number with Ki, Mi, Gi or Ti", s)
	}
	return n * mult, nil
}

func logger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
