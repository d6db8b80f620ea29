package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/tripod-dev/tripod/internal/cniinstall"
)

// cniInstall installs the plugins and, unless told otherwise, the default
// network config. It is what deploy/cni's DaemonSet runs on every node and
// what make install runs (with --destdir and --manifest).
func (c *cli) cniInstall(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("cni install", flag.ContinueOnError)
	from := fs.String("from", "", "directory holding tripod-cni (default: beside this tripod, else PATH)")
	binDir := fs.String("bin-dir", "/opt/cni/bin", "CNI plugin directory")
	confDir := fs.String("conf-dir", "/etc/cni/net.d", "CNI configuration directory")
	noConfig := fs.Bool("no-config", false, "install the plugins only")
	conflist := fs.String("conflist", "", "write this config file instead of the default network (still only when the directory has none)")
	subnet := fs.String("subnet", "", "pod range of the default network (default: the first private range free on this host, from 10.88.0.0/16)")
	bridge := fs.String("bridge", "tripod0", "bridge of the default network")
	network := fs.String("network", "tripod", "name of the default network")
	ipamDir := fs.String("ipam-dir", "", "host-local's data directory (default /var/lib/cni/networks)")
	force := fs.Bool("force", false, "replace plugins of the same names that are not tripod's")
	destDir := fs.String("destdir", "", "stage under this directory (packaging): paths are written below it, recorded without it")
	manifest := fs.String("manifest", "", "append what was installed to this file, one \"KIND PATH\" per line (d directory, f file, l link)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("cni install: unexpected arguments %q", fs.Args())
	}
	dir := *from
	bin, err := findBinary(dir, cniinstall.Binary)
	if err != nil {
		return err
	}
	record := func(byte, string) {}
	if *manifest != "" {
		f, err := os.OpenFile(*manifest, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		w := bufio.NewWriter(f)
		defer func() { w.Flush(); f.Close() }()
		record = func(kind byte, path string) { fmt.Fprintf(w, "%c %s\n", kind, path) }
	}
	inst, err := cniinstall.Plugins{From: bin, BinDir: *binDir, DestDir: *destDir, Force: *force, Record: record}.Install(ctx)
	if err != nil {
		return err
	}
	state := "up to date"
	if inst.Changed {
		state = "installed"
	}
	fmt.Printf("CNI plugins %s in %s: %d types served by %s\n", state, filepath.Join(*destDir, *binDir), len(inst.Types), cniinstall.Binary)
	for _, k := range inst.Kept {
		fmt.Printf("kept %s: not tripod's (--force replaces it)\n", k)
	}
	if *noConfig {
		return nil
	}
	var conf []byte
	name := cniinstall.ConfFile
	if *conflist != "" {
		if conf, err = os.ReadFile(*conflist); err != nil {
			return err
		}
		var probe struct {
			Name    string            `json:"name"`
			Plugins []json.RawMessage `json:"plugins"`
			Type    string            `json:"type"`
		}
		if err := json.Unmarshal(conf, &probe); err != nil || probe.Name == "" || (len(probe.Plugins) == 0 && probe.Type == "") {
			return fmt.Errorf("--conflist %s: not a CNI network config (want JSON with a name and plugins or a type)", *conflist)
		}
		name = filepath.Base(*conflist)
	} else {
		n := cniinstall.Network{Name: *network, Bridge: *bridge, IPAMDir: *ipamDir}
		if *subnet != "" {
			if n.Subnet, err = netip.ParsePrefix(*subnet); err != nil {
				return fmt.Errorf("--subnet: %w", err)
			}
		} else {
			taken, err := cniinstall.HostPrefixes(*bridge)
			if err != nil {
				return err
			}
			if n.Subnet, err = cniinstall.FreeSubnet(taken); err != nil {
				return err
			}
		}
		if conf, err = n.Conflist(); err != nil {
			return err
		}
	}
	path, written, _, err := cniinstall.Write(*destDir, *confDir, name, conf, record)
	if err != nil {
		return err
	}
	if !written {
		fmt.Printf("kept the existing network config %s\n", path)
		return nil
	}
	fmt.Printf("network config written: %s\n", path)
	return nil
}

// errUsage is returned for a command line that names no known command.
var errUsage = errors.New(`usage: tripod [--endpoint unix:///run/tripod/tripod.sock] [--admin /run/tripod/admin.sock] COMMAND
  up [flags]                 start tripodd and tripod-csi, install the CNI plugins and a default network, wait until ready
  down [--pods] [flags]      stop them (containers keep running unless --pods)
  status [flags]             say what is running
  cni install [flags]        install the CNI plugins and a default network config
  images pull|ls|import|export ARGS
  play [-d] FILE...          run Kubernetes v1 Pod manifests (foreground until Ctrl-C; -d: in the background)
  ps | logs [-f] POD | exec POD -- CMD | delete [--claims] POD...
Run tripod COMMAND -h for a command's flags`)
