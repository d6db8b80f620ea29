// Package cnirun drives CNI plugins through libcni for pods: it picks the
// node's network configuration, attaches and detaches pods with the
// capability args and K8S_POD_* arguments kubelet's runtimes pass, and
// records what each ADD used so the DEL does not depend on the
// configuration still being there.
package cnirun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// IfName is the pod's interface.
const IfName = "eth0"

// Runner attaches pods to the network configured in a directory.
type Runner struct {
	ConfDir  string
	cacheDir string
	cni      *libcni.CNIConfig
}

// New returns a runner for configs in confDir and plugins in binDirs;
// libcni's result cache goes in cacheDir (it feeds GC).
func New(confDir string, binDirs []string, cacheDir string) *Runner {
	return &Runner{ConfDir: confDir, cacheDir: cacheDir, cni: libcni.NewCNIConfigWithCacheDir(binDirs, cacheDir, nil)}
}

// PortMapping is one hostPort mapping.
type PortMapping struct {
	HostPort      int32  `json:"hostPort"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// Bandwidth is the traffic shaping a pod asks for, in bits per second.
type Bandwidth struct {
	IngressRate  uint64 `json:"ingressRate,omitempty"`
	IngressBurst uint64 `json:"ingressBurst,omitempty"`
	EgressRate   uint64 `json:"egressRate,omitempty"`
	EgressBurst  uint64 `json:"egressBurst,omitempty"`
}

// DNS is the dns capability arg.
type DNS struct {
	Servers  []string `json:"servers,omitempty"`
	Searches []string `json:"searches,omitempty"`
	Options  []string `json:"options,omitempty"`
}

// Pod is what one ADD or DEL says about the pod.
type Pod struct {
	ID, Name, Namespace, UID string
	NetNS                    string
	Ports                    []PortMapping
	Bandwidth                *Bandwidth
	DNS                      *DNS
	PodCIDR                  string
}

// Attachment is what an ADD created: the exact config list it used and the
// result, kept with the pod for DEL and GC.
type Attachment struct {
	ConfList []byte   `json:"confList"`
	Result   []byte   `json:"result,omitempty"`
	IPs      []string `json:"ips,omitempty"`
}

// Load reads the first network configuration in the directory (by file
// name, as kubelet's runtimes do).
func (r *Runner) Load() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(r.ConfDir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("cni config dir %s: %w", r.ConfDir, err)
	}
	sort.Strings(files)
	var errs []error
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		l, err := parse(b, filepath.Ext(f) == ".conflist")
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
			continue
		}
		return l, nil
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return nil, fmt.Errorf("no network configuration in %s", r.ConfDir)
}

func parse(b []byte, isList bool) (*libcni.NetworkConfigList, error) {
	if !isList {
		var probe map[string]any
		if json.Unmarshal(b, &probe) == nil {
			_, isList = probe["plugins"]
		}
	}
	if isList {
		return libcni.NetworkConfFromBytes(b)
	}
	// A single-plugin .conf becomes a list of one.
	var one struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
	}
	if err := json.Unmarshal(b, &one); err != nil {
		return nil, err
	}
	wrapped, err := json.Marshal(map[string]any{"cniVersion": one.CNIVersion, "name": one.Name, "plugins": []json.RawMessage{b}})
	if err != nil {
		return nil, err
	}
	return libcni.NetworkConfFromBytes(wrapped)
}

func (r *Runner) rt(p Pod) *libcni.RuntimeConf {
	caps := map[string]any{}
	if len(p.Ports) > 0 {
		caps["portMappings"] = p.Ports
	}
	if p.Bandwidth != nil {
		caps["bandwidth"] = p.Bandwidth
	}
	if p.DNS != nil {
		caps["dns"] = p.DNS
	}
	if p.PodCIDR != "" {
		caps["ipRanges"] = [][]map[string]string{{{"subnet": p.PodCIDR}}}
	}
	return &libcni.RuntimeConf{
		ContainerID: p.ID,
		NetNS:       p.NetNS,
		IfName:      IfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ID},
			{"K8S_POD_UID", p.UID},
		},
		CapabilityArgs: caps,
	}
}

// Add attaches the pod with list. On error the plugins have been asked to
// undo (DEL) what they may have done.
func (r *Runner) Add(ctx context.Context, list *libcni.NetworkConfigList, p Pod) (Attachment, error) {
	a := Attachment{ConfList: list.Bytes}
	res, err := r.cni.AddNetworkList(ctx, list, r.rt(p))
	if err != nil {
		// DEL must follow a failed ADD: the chain may be half done.
		if derr := r.cni.DelNetworkList(context.WithoutCancel(ctx), list, r.rt(p)); derr != nil {
			err = fmt.Errorf("%w (and DEL after it: %v)", err, derr)
		}
		return a, fmt.Errorf("cni add %s: %w", list.Name, err)
	}
	cr, err := current.NewResultFromResult(res)
	if err != nil {
		return a, fmt.Errorf("cni result: %w", err)
	}
	a.Result, _ = json.Marshal(cr)
	a.IPs = podIPs(cr)
	return a, nil
}

// podIPs lists the addresses on the pod's interface, IPv4 first.
func podIPs(r *current.Result) []string {
	var v4, v6 []string
	for _, ip := range r.IPs {
		if ip.Interface != nil && *ip.Interface >= 0 && *ip.Interface < len(r.Interfaces) && r.Interfaces[*ip.Interface].Sandbox == "" {
			continue // a host-side address, not the pod's
		}
		if ip.Address.IP.To4() != nil {
			v4 = append(v4, ip.Address.IP.String())
		} else {
			v6 = append(v6, ip.Address.IP.String())
		}
	}
	return append(v4, v6...)
}

// Del detaches the pod with the config list its ADD used. A plugin that has
// since been removed from the node is not an error: the pod's netns goes
// away with its links, and GC frees what the plugin's state still holds.
func (r *Runner) Del(ctx context.Context, a Attachment, p Pod) error {
	if len(a.ConfList) == 0 {
		return nil
	}
	list, err := libcni.NetworkConfFromBytes(a.ConfList)
	if err != nil {
		return fmt.Errorf("recorded cni config: %w", err)
	}
	if err := r.cni.DelNetworkList(ctx, list, r.rt(p)); err != nil {
		if strings.Contains(err.Error(), "failed to find plugin") {
			return nil
		}
		return fmt.Errorf("cni del %s: %w", list.Name, err)
	}
	return nil
}

// Status asks the configured network whether it is ready for ADDs.
func (r *Runner) Status(ctx context.Context) error {
	list, err := r.Load()
	if err != nil {
		return err
	}
	if err := r.cni.GetStatusNetworkList(ctx, list); err != nil {
		return fmt.Errorf("cni status %s: %w", list.Name, err)
	}
	return nil
}

// GC asks the configured network (and every network a live pod was added
// with) to free attachments other than the live ones.
func (r *Runner) GC(ctx context.Context, live []string, recorded [][]byte) error {
	lists := map[string]*libcni.NetworkConfigList{}
	if l, err := r.Load(); err == nil {
		lists[l.Name] = l
	}
	for _, b := range recorded {
		if l, err := libcni.NetworkConfFromBytes(b); err == nil {
			if _, ok := lists[l.Name]; !ok {
				lists[l.Name] = l
			}
		}
	}
	args := &libcni.GCArgs{}
	for _, id := range live {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: id, IfName: IfName})
	}
	var errs []error
	for _, l := range lists {
		if err := r.cni.GCNetworkList(ctx, l, args); err != nil {
			errs = append(errs, fmt.Errorf("cni gc %s: %w", l.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Used reports whether this runner ever attached a pod (libcni's cache
// exists): GC is only for networks this runtime used.
func (r *Runner) Used() bool {
	_, err := os.Stat(r.cacheDir)
	return err == nil
}
