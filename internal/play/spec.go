package play

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Labels kubelet puts on sandboxes and containers; play sets the same, so
// crictl and log collectors see familiar names. LabelPlayed marks play's.
const (
	labelPodName       = "io.kubernetes.pod.name"
	labelPodNamespace  = "io.kubernetes.pod.namespace"
	labelPodUID        = "io.kubernetes.pod.uid"
	labelContainerName = "io.kubernetes.container.name"
	LabelPlayed        = "tripod.dev/played"
	annoRestartCount   = "io.kubernetes.container.restartCount"
)

func timeNow() time.Time { return time.Now().UTC() }

// ctrRef is a container of the pod with its field path.
type ctrRef struct {
	c     *corev1.Container
	field string
	init  bool
}

func allContainers(p *Pod) []ctrRef {
	var out []ctrRef
	for i := range p.Spec.InitContainers {
		out = append(out, ctrRef{&p.Spec.InitContainers[i], fmt.Sprintf("spec.initContainers[%d]", i), true})
	}
	for i := range p.Spec.Containers {
		out = append(out, ctrRef{&p.Spec.Containers[i], fmt.Sprintf("spec.containers[%d]", i), false})
	}
	return out
}

// hostname is the pod's host name as kubelet derives it.
func hostname(p *Pod) string {
	h := p.Name
	if p.Spec.HostnameOverride != nil && *p.Spec.HostnameOverride != "" {
		return *p.Spec.HostnameOverride
	}
	if p.Spec.Hostname != "" {
		h = p.Spec.Hostname
	}
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}

func nsOptions(p *Pod) *runtimeapi.NamespaceOption {
	o := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}
	s := &p.Spec
	if s.HostNetwork {
		o.Network = runtimeapi.NamespaceMode_NODE
	}
	if s.HostPID {
		o.Pid = runtimeapi.NamespaceMode_NODE
	} else if s.ShareProcessNamespace != nil && *s.ShareProcessNamespace {
		o.Pid = runtimeapi.NamespaceMode_POD
	}
	if s.HostIPC {
		o.Ipc = runtimeapi.NamespaceMode_NODE
	}
	return o
}

// hostPorts are the pod's port mappings (app containers' ports with a
// hostPort), each with its field path.
type hostPort struct {
	field string
	pm    *runtimeapi.PortMapping
}

func hostPorts(p *Pod) []hostPort {
	var out []hostPort
	for _, ct := range allContainers(p) {
		if ct.init {
			continue
		}
		for i, pt := range ct.c.Ports {
			if pt.HostPort == 0 {
				continue
			}
			proto := runtimeapi.Protocol_TCP
			switch pt.Protocol {
			case corev1.ProtocolUDP:
				proto = runtimeapi.Protocol_UDP
			case corev1.ProtocolSCTP:
				proto = runtimeapi.Protocol_SCTP
			}
			out = append(out, hostPort{fmt.Sprintf("%s.ports[%d].hostPort", ct.field, i),
				&runtimeapi.PortMapping{Protocol: proto, ContainerPort: pt.ContainerPort, HostPort: pt.HostPort, HostIp: pt.HostIP}})
		}
	}
	return out
}

func supplementalGroups(psc *corev1.PodSecurityContext) []int64 {
	if psc == nil {
		return nil
	}
	out := append([]int64(nil), psc.SupplementalGroups...)
	if psc.FSGroup != nil {
		dup := false
		for _, g := range out {
			dup = dup || g == *psc.FSGroup
		}
		if !dup {
			out = append(out, *psc.FSGroup)
		}
	}
	return out
}

func groupsPolicy(psc *corev1.PodSecurityContext) runtimeapi.SupplementalGroupsPolicy {
	if psc != nil && psc.SupplementalGroupsPolicy != nil && *psc.SupplementalGroupsPolicy == corev1.SupplementalGroupsPolicyStrict {
		return runtimeapi.SupplementalGroupsPolicy_Strict
	}
	return runtimeapi.SupplementalGroupsPolicy_Merge
}

func int64Value(v *int64) *runtimeapi.Int64Value {
	if v == nil {
		return nil
	}
	return &runtimeapi.Int64Value{Value: *v}
}

func selinux(o *corev1.SELinuxOptions) *runtimeapi.SELinuxOption {
	if o == nil {
		return nil
	}
	return &runtimeapi.SELinuxOption{User: o.User, Role: o.Role, Type: o.Type, Level: o.Level}
}

// sandboxConfig is RunPodSandbox's config, as kubelet builds it.
func (n *Node) sandboxConfig(p *Pod, uid string, attempt uint32, logDir string) (*runtimeapi.PodSandboxConfig, error) {
	labels := map[string]string{}
	for k, v := range p.Labels {
		labels[k] = v
	}
	labels[labelPodName], labels[labelPodNamespace], labels[labelPodUID], labels[LabelPlayed] = p.Name, p.Namespace, uid, "true"
	annotations := map[string]string{}
	for k, v := range p.Annotations {
		annotations[k] = v
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: p.Name, Namespace: p.Namespace, Uid: uid, Attempt: attempt},
		LogDirectory: logDir, Labels: labels, Annotations: annotations,
	}
	s := &p.Spec
	if !s.HostNetwork {
		cfg.Hostname = hostname(p)
	}
	for _, hp := range hostPorts(p) {
		if !s.HostNetwork {
			cfg.PortMappings = append(cfg.PortMappings, hp.pm)
		}
	}
	dns, err := dnsConfig(p)
	if err != nil {
		return nil, err
	}
	cfg.DnsConfig = dns
	psc := s.SecurityContext
	sc := &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: nsOptions(p), SupplementalGroups: supplementalGroups(psc), SupplementalGroupsPolicy: groupsPolicy(psc)}
	linux := &runtimeapi.LinuxPodSandboxConfig{SecurityContext: sc}
	if psc != nil {
		sc.RunAsUser, sc.RunAsGroup = int64Value(psc.RunAsUser), int64Value(psc.RunAsGroup)
		sc.SelinuxOptions = selinux(psc.SELinuxOptions)
		sc.Seccomp = n.seccomp(psc.SeccompProfile)
		sc.Apparmor = apparmor(psc.AppArmorProfile)
		if len(psc.Sysctls) > 0 {
			linux.Sysctls = map[string]string{}
			for _, sy := range psc.Sysctls {
				linux.Sysctls[sy.Name] = sy.Value
			}
		}
	}
	for _, ct := range allContainers(p) {
		sc.Privileged = sc.Privileged || privileged(ct.c)
	}
	cfg.Linux = linux
	return cfg, nil
}

// dnsConfig follows the pod's dnsPolicy. There is no cluster DNS on a
// played node: ClusterFirst falls back to the host's resolv.conf as kubelet
// does without --cluster-dns. dnsConfig is merged on top, or is everything
// with None.
func dnsConfig(p *Pod) (*runtimeapi.DNSConfig, error) {
	s := &p.Spec
	d := &runtimeapi.DNSConfig{}
	if s.DNSPolicy != corev1.DNSNone {
		if s.DNSConfig == nil {
			return nil, nil // the runtime uses the host's
		}
		host, err := hostResolv("/etc/resolv.conf")
		if err != nil {
			return nil, err
		}
		d = host
	}
	if c := s.DNSConfig; c != nil {
		d.Servers = append(d.Servers, c.Nameservers...)
		d.Searches = append(c.Searches, d.Searches...)
		for _, o := range c.Options {
			opt := o.Name
			if o.Value != nil {
				opt += ":" + *o.Value
			}
			d.Options = append(d.Options, opt)
		}
	}
	return d, nil
}

func hostResolv(path string) (*runtimeapi.DNSConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("dnsConfig: %w", err)
	}
	defer f.Close()
	d := &runtimeapi.DNSConfig{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 || strings.HasPrefix(fs[0], "#") {
			continue
		}
		switch fs[0] {
		case "nameserver":
			d.Servers = append(d.Servers, fs[1])
		case "search":
			d.Searches = fs[1:]
		case "options":
			d.Options = append(d.Options, fs[1:]...)
		}
	}
	return d, sc.Err()
}

func (n *Node) seccomp(p *corev1.SeccompProfile) *runtimeapi.SecurityProfile {
	if p == nil {
		return nil
	}
	switch p.Type {
	case corev1.SeccompProfileTypeRuntimeDefault:
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	case corev1.SeccompProfileTypeLocalhost:
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: filepath.Join(n.opts.SeccompDir, *p.LocalhostProfile)}
	}
	return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
}

func apparmor(p *corev1.AppArmorProfile) *runtimeapi.SecurityProfile {
	if p == nil {
		return nil
	}
	switch p.Type {
	case corev1.AppArmorProfileTypeRuntimeDefault:
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	case corev1.AppArmorProfileTypeLocalhost:
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: *p.LocalhostProfile}
	}
	return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
}

// Kubelet's default masked and read-only /proc and /sys paths for
// containers with procMount Default.
var (
	defaultMaskedPaths = []string{"/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"}
	defaultReadonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// containerSecurity merges the pod's and the container's security
// contexts (the container's fields win) as kubelet does.
func (n *Node) containerSecurity(p *Pod, ct *corev1.Container) *runtimeapi.LinuxContainerSecurityContext {
	psc := p.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	csc := ct.SecurityContext
	if csc == nil {
		csc = &corev1.SecurityContext{}
	}
	sc := &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions:         nsOptions(p),
		SupplementalGroups:       supplementalGroups(psc),
		SupplementalGroupsPolicy: groupsPolicy(psc),
		RunAsUser:                int64Value(psc.RunAsUser),
		RunAsGroup:               int64Value(psc.RunAsGroup),
		SelinuxOptions:           selinux(psc.SELinuxOptions),
		Seccomp:                  n.seccomp(psc.SeccompProfile),
		Apparmor:                 apparmor(psc.AppArmorProfile),
		Privileged:               privileged(ct),
	}
	if csc.RunAsUser != nil {
		sc.RunAsUser = int64Value(csc.RunAsUser)
	}
	if csc.RunAsGroup != nil {
		sc.RunAsGroup = int64Value(csc.RunAsGroup)
	}
	if csc.SELinuxOptions != nil {
		sc.SelinuxOptions = selinux(csc.SELinuxOptions)
	}
	if csc.SeccompProfile != nil {
		sc.Seccomp = n.seccomp(csc.SeccompProfile)
	}
	if sc.Seccomp == nil {
		// kubelet's default without seccompDefault.
		sc.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
	}
	if csc.AppArmorProfile != nil {
		sc.Apparmor = apparmor(csc.AppArmorProfile)
	}
	if c := csc.Capabilities; c != nil {
		sc.Capabilities = &runtimeapi.Capability{}
		for _, a := range c.Add {
			sc.Capabilities.AddCapabilities = append(sc.Capabilities.AddCapabilities, string(a))
		}
		for _, d := range c.Drop {
			sc.Capabilities.DropCapabilities = append(sc.Capabilities.DropCapabilities, string(d))
		}
	}
	sc.ReadonlyRootfs = csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem
	if ape := csc.AllowPrivilegeEscalation; ape != nil {
		sc.NoNewPrivs = !*ape
	}
	if !sc.Privileged {
		if pm := csc.ProcMount; pm == nil || *pm == corev1.DefaultProcMount {
			sc.MaskedPaths, sc.ReadonlyPaths = defaultMaskedPaths, defaultReadonlyPaths
		} else {
			sc.MaskedPaths, sc.ReadonlyPaths = []string{}, []string{}
		}
	}
	return sc
}

// qosClass is the pod's QoS class, from its containers' requests and
// limits of cpu and memory.
func qosClass(p *Pod) corev1.PodQOSClass {
	any, guaranteed := false, true
	for _, ct := range allContainers(p) {
		r := ct.c.Resources
		for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, hasReq := r.Requests[name]
			lim, hasLim := r.Limits[name]
			if (hasReq && !req.IsZero()) || (hasLim && !lim.IsZero()) {
				any = true
			}
			if !hasLim || !hasReq || req.Cmp(lim) != 0 {
				guaranteed = false
			}
		}
	}
	switch {
	case !any:
		return corev1.PodQOSBestEffort
	case guaranteed:
		return corev1.PodQOSGuaranteed
	}
	return corev1.PodQOSBurstable
}

// memCapacity is the node's memory, for Burstable OOM scores.
func memCapacity() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb int64
		if _, err := fmt.Sscanf(sc.Text(), "MemTotal: %d kB", &kb); err == nil {
			return kb << 10
		}
	}
	return 0
}

// resources are a container's CRI limits, as kubelet computes them.
func resources(p *Pod, ct *corev1.Container) *runtimeapi.LinuxContainerResources {
	r := &runtimeapi.LinuxContainerResources{CpuShares: 2}
	if q, ok := ct.Resources.Requests[corev1.ResourceCPU]; ok && !q.IsZero() {
		r.CpuShares = max(2, q.MilliValue()*1024/1000)
	}
	if q, ok := ct.Resources.Limits[corev1.ResourceCPU]; ok && !q.IsZero() {
		r.CpuPeriod = 100000
		r.CpuQuota = max(1000, q.MilliValue()*100000/1000)
	}
	if q, ok := ct.Resources.Limits[corev1.ResourceMemory]; ok {
		r.MemoryLimitInBytes = q.Value()
	}
	switch qosClass(p) {
	case corev1.PodQOSGuaranteed:
		r.OomScoreAdj = -997
	case corev1.PodQOSBestEffort:
		r.OomScoreAdj = 1000
	default:
		req := ct.Resources.Requests[corev1.ResourceMemory]
		adj := int64(1000)
		if c := memCapacity(); c > 0 {
			adj = 1000 - 1000*req.Value()/c
		}
		r.OomScoreAdj = min(max(adj, 2), 999)
	}
	return r
}

// containerConfig is CreateContainer's config for one start of ct.
func (n *Node) containerConfig(p *Pod, ref ctrRef, uid string, attempt uint32, facts *podFacts, vols []VolumeRecord, hostsFile string) (*runtimeapi.ContainerConfig, error) {
	ct := ref.c
	env, vars, err := containerEnv(p.Pod, ct, facts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref.field, err)
	}
	cfg := &runtimeapi.ContainerConfig{
		Metadata:   &runtimeapi.ContainerMetadata{Name: ct.Name, Attempt: attempt},
		Image:      &runtimeapi.ImageSpec{Image: ct.Image, UserSpecifiedImage: ct.Image},
		Command:    expandAll(ct.Command, vars),
		Args:       expandAll(ct.Args, vars),
		WorkingDir: ct.WorkingDir,
		Envs:       env,
		Labels: map[string]string{labelContainerName: ct.Name, labelPodName: p.Name, labelPodNamespace: p.Namespace,
			labelPodUID: uid, LabelPlayed: "true"},
		Annotations: map[string]string{annoRestartCount: fmt.Sprint(attempt)},
		LogPath:     filepath.Join(ct.Name, fmt.Sprintf("%d.log", attempt)),
		Stdin:       ct.Stdin, StdinOnce: ct.StdinOnce, Tty: ct.TTY,
		Linux: &runtimeapi.LinuxContainerConfig{Resources: resources(p, ct), SecurityContext: n.containerSecurity(p, ct)},
	}
	if l := ct.Lifecycle; l != nil && l.StopSignal != nil {
		cfg.StopSignal, _ = stopSignal(*l.StopSignal)
	}
	byName := map[string]VolumeRecord{}
	subPaths := map[string][]VolumeRecord{}
	for _, v := range vols {
		if v.Kind == volSubPath {
			subPaths[v.Name] = append(subPaths[v.Name], v)
		} else {
			byName[v.Name] = v
		}
	}
	for i, m := range ct.VolumeMounts {
		v, ok := byName[m.Name]
		if !ok {
			return nil, fmt.Errorf("%s.volumeMounts[%d]: volume %s is not set up", ref.field, i, m.Name)
		}
		mt := &runtimeapi.Mount{ContainerPath: m.MountPath, HostPath: v.Path, Readonly: m.ReadOnly || v.ReadOnly}
		if v.Kind == volImage {
			mt.HostPath, mt.Image, mt.Readonly = "", &runtimeapi.ImageSpec{Image: v.Image}, true
		}
		if m.SubPath != "" {
			want := filepath.Join(n.podDir(uid), "volume-subpaths", m.Name, ct.Name, fmt.Sprint(i))
			found := false
			for _, sp := range subPaths[m.Name] {
				found = found || sp.Path == want
			}
			if !found {
				return nil, fmt.Errorf("%s.volumeMounts[%d].subPath: not set up", ref.field, i)
			}
			mt.HostPath = want
		}
		if mp := m.MountPropagation; mp != nil {
			switch *mp {
			case corev1.MountPropagationHostToContainer:
				mt.Propagation = runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER
			case corev1.MountPropagationBidirectional:
				mt.Propagation = runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL
			}
		}
		if r := m.RecursiveReadOnly; r != nil && *r != corev1.RecursiveReadOnlyDisabled {
			mt.RecursiveReadOnly = true
		}
		cfg.Mounts = append(cfg.Mounts, mt)
	}
	if hostsFile != "" {
		cfg.Mounts = append(cfg.Mounts, &runtimeapi.Mount{ContainerPath: "/etc/hosts", HostPath: hostsFile})
	}
	return cfg, nil
}

// writeHosts writes the pod's /etc/hosts with its hostAliases, as kubelet
// manages it for pods that have them.
func (n *Node) writeHosts(p *Pod, uid, podIP string) (string, error) {
	if len(p.Spec.HostAliases) == 0 || p.Spec.HostNetwork {
		return "", nil
	}
	var b strings.Builder
	b.WriteString("# Kubernetes-managed hosts file (tripod play).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	b.WriteString("fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n")
	if podIP != "" {
		fmt.Fprintf(&b, "%s\t%s\n", podIP, hostname(p))
	}
	b.WriteString("\n# Entries added by HostAliases.\n")
	for _, h := range p.Spec.HostAliases {
		fmt.Fprintf(&b, "%s\t%s\n", h.IP, strings.Join(h.Hostnames, "\t"))
	}
	path := filepath.Join(n.podDir(uid), "etc-hosts")
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}
