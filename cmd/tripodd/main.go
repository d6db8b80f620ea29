// tripodd is tripod's CRI daemon. It serves the CRI ImageService and RuntimeService.
//
//	tripodd [--config FILE] [--root DIR] [--state DIR] [--listen unix:///path.sock] [--registry-hosts-dir DIR] [--cni-conf-dir DIR] [--cni-bin-dir DIR] [--nri-socket PATH]
//	tripodd config default     print the full default configuration
//	tripodd config check       validate the configuration (with the flags applied) and print it
//	tripodd version
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/tripod-dev/tripod/internal/config"
	"github.com/tripod-dev/tripod/internal/daemon"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tripodd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("tripodd", flag.ContinueOnError)
	cfgPath := fs.String("config", config.DefaultPath, "configuration file (TOML)")
	root := fs.String("root", "", "persistent data directory (overrides the file's root)")
	state := fs.String("state", "", "volatile state directory (overrides the file's state)")
	listen := fs.String("listen", "", "CRI endpoint, unix:///path.sock (overrides the file's listen)")
	hosts := fs.String("registry-hosts-dir", "", "directory of <registry>/hosts.toml files (overrides image.registry_hosts_dir)")
	cniConf := fs.String("cni-conf-dir", "", "CNI configuration directory (overrides runtime.cni_conf_dir)")
	cniBin := fs.String("cni-bin-dir", "", "CNI plugin directories, ':'-separated (overrides runtime.cni_bin_dir)")
	nriSocket := fs.String("nri-socket", "", "NRI plugin socket (overrides nri.socket_path)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "config" {
			explicit = true
		}
	})
	rest := fs.Args()
	if len(rest) == 1 && rest[0] == "version" {
		fmt.Println("tripodd", daemon.Version)
		return nil
	}
	if len(rest) == 2 && rest[0] == "config" && rest[1] == "default" {
		out, err := config.Default().Encode()
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(out)
		return err
	}
	cfg, err := config.Load(*cfgPath, explicit)
	if err != nil {
		return err
	}
	for _, o := range []struct {
		flag string
		dst  *string
	}{{*root, &cfg.Root}, {*state, &cfg.State}, {*listen, &cfg.Listen}, {*hosts, &cfg.Image.RegistryHostsDir},
		{*cniConf, &cfg.Runtime.CNIConfDir}, {*cniBin, &cfg.Runtime.CNIBinDir}, {*nriSocket, &cfg.NRI.SocketPath}} {
		if o.flag != "" {
			*o.dst = o.flag
		}
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config %s:\n%w", *cfgPath, err)
	}
	switch {
	case len(rest) == 2 && rest[0] == "config" && rest[1] == "check":
		out, err := cfg.Encode()
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(out)
		return err
	case len(rest) > 0:
		return fmt.Errorf("unknown command %q (want: config default | config check | version)", rest)
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d, err := daemon.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	return d.Serve(ctx)
}
