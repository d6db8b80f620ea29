// Package flannel is the flannel CNI plugin: it reads the subnet lease
// that flanneld wrote (subnet.env) and delegates to bridge + host-local
// with a configuration built from it, as the original flannel plugin does.
// The delegate configuration is saved per attachment so that DEL, CHECK
// and GC work after flanneld changed or removed subnet.env.
package flannel

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
	"github.com/tripod-dev/tripod/internal/cni/delegate"
	"github.com/tripod-dev/tripod/internal/cni/plugin"
)

const (
	defaultSubnetFile = "/run/flannel/subnet.env"
	defaultDataDir    = "/var/lib/cni/flannel"
)

// Plugin returns the flannel plugin.
func Plugin() plugin.Plugin {
	return plugin.Plugin{Name: "flannel", Funcs: plugin.Funcs{Add: add, Del: del, Check: check, GC: gc, Status: status}}
}

type conf struct {
	types.PluginConf
	SubnetFile    string         `json:"subnetFile"`
	DataDir       string         `json:"dataDir"`
	Delegate      map[string]any `json:"delegate"`
	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`
}

func parse(stdin []byte) (*conf, error) {
	c := &conf{}
	if err := cnierr.Decode(stdin, c); err != nil {
		return nil, err
	}
	if c.SubnetFile == "" {
		c.SubnetFile = defaultSubnetFile
	}
	if c.DataDir == "" {
		c.DataDir = defaultDataDir
	}
	return c, nil
}

// subnetEnv is what flanneld leases to this node.
type subnetEnv struct {
	networks  []*net.IPNet // FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK
	subnets   []*net.IPNet // FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET
	mtu       int
	ipMasq    bool
	hasMTU    bool
	hasIPMasq bool
}

func readSubnetEnv(path string) (*subnetEnv, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, cnierr.New(cnierr.TryAgainLater, "flannel subnet file %s does not exist yet: is flanneld running?", path)
		}
		return nil, cnierr.New(cnierr.IOFailure, "reading flannel subnet file: %v", err)
	}
	defer f.Close()
	env := &subnetEnv{}
	var v4net, v4sub, v6net, v6sub string
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		k, v, ok := strings.Cut(text, "=")
		if !ok {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s line %d: expected KEY=VALUE, got %q", path, line, text)
		}
		switch k {
		case "FLANNEL_NETWORK":
			v4net = v
		case "FLANNEL_SUBNET":
			v4sub = v
		case "FLANNEL_IPV6_NETWORK":
			v6net = v
		case "FLANNEL_IPV6_SUBNET":
			v6sub = v
		case "FLANNEL_MTU":
			n, err := strconv.Atoi(v)
			if err != nil || n < 68 {
				return nil, cnierr.New(cnierr.InvalidConfig, "%s: FLANNEL_MTU=%q is not a valid MTU", path, v)
			}
			env.mtu, env.hasMTU = n, true
		case "FLANNEL_IPMASQ":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, cnierr.New(cnierr.InvalidConfig, "%s: FLANNEL_IPMASQ=%q is not a boolean", path, v)
			}
			env.ipMasq, env.hasIPMasq = b, true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, cnierr.New(cnierr.IOFailure, "reading %s: %v", path, err)
	}
	for _, p := range []struct {
		key, network, subnet string
	}{{"FLANNEL", v4net, v4sub}, {"FLANNEL_IPV6", v6net, v6sub}} {
		if p.network == "" && p.subnet == "" {
			continue
		}
		if p.network == "" || p.subnet == "" {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s: %s_NETWORK and %s_SUBNET must be given together", path, p.key, p.key)
		}
		_, n, err := net.ParseCIDR(p.network)
		if err != nil {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s: %s_NETWORK=%q: %v", path, p.key, p.network, err)
		}
		ip, s, err := net.ParseCIDR(p.subnet)
		if err != nil {
			return nil, cnierr.New(cnierr.InvalidConfig, "%s: %s_SUBNET=%q: %v", path, p.key, p.subnet, err)
		}
		// flanneld writes the gateway address with the subnet's prefix.
		s.IP = ip
		env.networks = append(env.networks, n)
		env.subnets = append(env.subnets, s)
	}
	if len(env.subnets) == 0 {
		return nil, cnierr.New(cnierr.InvalidConfig, "%s has neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET", path)
	}
	return env, nil
}

// delegateConf builds the delegate's network configuration from the
// flannel config and the node's lease. Values the operator set in
// "delegate" win over the derived ones.
func delegateConf(c *conf, env *subnetEnv) (map[string]any, error) {
	d := map[string]any{}
	for k, v := range c.Delegate {
		d[k] = v
	}
	d["name"] = c.Name
	d["cniVersion"] = c.CNIVersion
	if _, ok := d["type"]; !ok {
		d["type"] = "bridge"
	}
	typ, _ := d["type"].(string)
	if typ == "" {
		return nil, cnierr.New(cnierr.InvalidConfig, "delegate.type must be a plugin name")
	}
	if _, ok := d["ipMasq"]; !ok && env.hasIPMasq {
		// flanneld masquerades itself when FLANNEL_IPMASQ is true.
		d["ipMasq"] = !env.ipMasq
	}
	if _, ok := d["mtu"]; !ok && env.hasMTU {
		d["mtu"] = env.mtu
	}
	if typ == "bridge" {
		if _, ok := d["isGateway"]; !ok {
			d["isGateway"] = true
		}
	}
	ipam := map[string]any{}
	if m, ok := d["ipam"].(map[string]any); ok {
		for k, v := range m {
			ipam[k] = v
		}
	} else if d["ipam"] != nil {
		return nil, cnierr.New(cnierr.DecodingFailure, "delegate.ipam must be an object")
	}
	if _, ok := ipam["type"]; !ok {
		ipam["type"] = "host-local"
	}
	var ranges [][]map[string]string
	var routes []map[string]string
	for i, s := range env.subnets {
		ranges = append(ranges, []map[string]string{{"subnet": s.String()}})
		routes = append(routes, map[string]string{"dst": env.networks[i].String()})
	}
	ipam["ranges"] = ranges
	if existing, ok := ipam["routes"].([]any); ok {
		for _, r := range existing {
			if m, ok := r.(map[string]any); ok {
				if dst, ok := m["dst"].(string); ok {
					routes = append(routes, map[string]string{"dst": dst})
				}
			}
		}
	}
	ipam["routes"] = routes
	d["ipam"] = ipam
	if c.RuntimeConfig != nil {
		d["runtimeConfig"] = c.RuntimeConfig
	}
	return d, nil
}

// savedPath names the file holding an attachment's delegate config.
func savedPath(dataDir, containerID, ifName string) string {
	return filepath.Join(dataDir, containerID+"-"+ifName)
}

func save(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return cnierr.New(cnierr.IOFailure, "creating flannel data dir: %v", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return cnierr.New(cnierr.IOFailure, "saving delegate config: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return cnierr.New(cnierr.IOFailure, "saving delegate config: %v", err)
	}
	return nil
}

// loadSaved returns the saved delegate config of an attachment, also under
// the original plugin's name (the container ID alone), or nil.
func loadSaved(dataDir, containerID, ifName string) ([]byte, string, error) {
	for _, p := range []string{savedPath(dataDir, containerID, ifName), filepath.Join(dataDir, containerID)} {
		data, err := os.ReadFile(p)
		if err == nil {
			return data, p, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, "", cnierr.New(cnierr.IOFailure, "reading saved delegate config: %v", err)
		}
	}
	return nil, "", nil
}

func delegateType(data []byte) (string, error) {
	var t struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(data, &t); err != nil || t.Type == "" {
		return "", cnierr.New(cnierr.DecodingFailure, "saved delegate config has no plugin type")
	}
	return t.Type, nil
}

func add(ctx context.Context, args *skel.CmdArgs) (types.Result, error) {
	c, err := parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	env, err := readSubnetEnv(c.SubnetFile)
	if err != nil {
		return nil, err
	}
	d, err := delegateConf(c, env)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(d)
	if err != nil {
		return nil, cnierr.New(cnierr.IOFailure, "encoding delegate config: %v", err)
	}
	path := savedPath(c.DataDir, args.ContainerID, args.IfName)
	// Saved before the delegate runs, so a DEL after a crash mid-ADD still
	// finds what to undo.
	if err := save(path, data); err != nil {
		return nil, err
	}
	typ := d["type"].(string)
	r, err := delegate.Add(ctx, typ, data)
	if err != nil {
		// Undo whatever the delegate did before failing, then forget it.
		_ = delegate.Run(ctx, "DEL", typ, data)
		os.Remove(path)
		return nil, cnierr.Wrap(cnierr.Delegate, err, "delegate %s", typ)
	}
	return r, nil
}

func del(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	data, path, err := loadSaved(c.DataDir, args.ContainerID, args.IfName)
	if err != nil || data == nil {
		return err // nothing was added, or the DEL already ran
	}
	typ, err := delegateType(data)
	if err != nil {
		return err
	}
	if err := delegate.Run(ctx, "DEL", typ, data); err != nil {
		return cnierr.Wrap(cnierr.Delegate, err, "delegate %s", typ)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return cnierr.New(cnierr.IOFailure, "removing saved delegate config: %v", err)
	}
	return nil
}

func check(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	data, _, err := loadSaved(c.DataDir, args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	if data == nil {
		return cnierr.New(cnierr.InvalidConfig, "no flannel attachment for container %s interface %s", args.ContainerID, args.IfName)
	}
	var d map[string]any
	if err := json.Unmarshal(data, &d); err != nil {
		return cnierr.New(cnierr.DecodingFailure, "saved delegate config: %v", err)
	}
	if c.RawPrevResult != nil {
		d["prevResult"] = c.RawPrevResult
	}
	data, err = json.Marshal(d)
	if err != nil {
		return cnierr.New(cnierr.IOFailure, "encoding delegate config: %v", err)
	}
	typ, err := delegateType(data)
	if err != nil {
		return err
	}
	return cnierr.Wrap(cnierr.Delegate, delegate.Run(ctx, "CHECK", typ, data), "delegate %s", typ)
}

// gc passes GC to the delegate with the valid attachments, then forgets
// the saved configs of every attachment not in the list.
func gc(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[string]bool{}
	for _, a := range c.ValidAttachments {
		valid[filepath.Base(savedPath(c.DataDir, a.ContainerID, a.IfName))] = true
		valid[a.ContainerID] = true // the original plugin's file name
	}
	var d map[string]any
	if env, err := readSubnetEnv(c.SubnetFile); err == nil {
		if d, err = delegateConf(c, env); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(c.DataDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return cnierr.New(cnierr.IOFailure, "reading flannel data dir: %v", err)
	}
	if d == nil {
		// No lease now: any saved config tells the delegate type and IPAM.
		for _, e := range entries {
			if data, err := os.ReadFile(filepath.Join(c.DataDir, e.Name())); err == nil && json.Unmarshal(data, &d) == nil {
				break
			}
		}
	}
	if d != nil {
		d["cni.dev/valid-attachments"] = c.ValidAttachments
		delete(d, "runtimeConfig")
		data, err := json.Marshal(d)
		if err != nil {
			return cnierr.New(cnierr.IOFailure, "encoding delegate config: %v", err)
		}
		typ, _ := d["type"].(string)
		if err := delegate.Run(ctx, "GC", typ, data); err != nil {
			return cnierr.Wrap(cnierr.Delegate, err, "delegate %s", typ)
		}
	}
	for _, e := range entries {
		if e.IsDir() || valid[e.Name()] {
			continue
		}
		if err := os.Remove(filepath.Join(c.DataDir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return cnierr.New(cnierr.IOFailure, "removing saved delegate config: %v", err)
		}
	}
	return nil
}

func status(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	env, err := readSubnetEnv(c.SubnetFile)
	if err != nil {
		return cnierr.New(cnierr.NotAvailable, "flannel is not ready: %v", err)
	}
	d, err := delegateConf(c, env)
	if err != nil {
		return err
	}
	delete(d, "runtimeConfig")
	data, err := json.Marshal(d)
	if err != nil {
		return cnierr.New(cnierr.IOFailure, "encoding delegate config: %v", err)
	}
	typ := d["type"].(string)
	if err := delegate.Run(ctx, "STATUS", typ, data); err != nil {
		return cnierr.Wrap(cnierr.NotAvailable, err, "delegate %s", typ)
	}
	return nil
}
