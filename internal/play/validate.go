package play

import (
	"fmt"
	"path"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// checker collects a pod's problems, each naming its field.
type checker struct{ errs []string }

func (c *checker) add(field, format string, args ...any) {
	c.errs = append(c.errs, field+": "+fmt.Sprintf(format, args...))
}

func (c *checker) unsupported(field, why string) {
	c.add(field, "not supported by tripod play (%s)", why)
}

// validate checks what the API server would and what tripod play can run.
// Fields that only matter to a scheduler or to cluster services (node
// selection, priorities, service accounts) are ignored; fields that would
// change what runs on the node and that play cannot honour are errors.
func validate(p *corev1.Pod) []string {
	c := &checker{}
	for _, m := range validation.IsDNS1123Subdomain(p.Name) {
		c.add("metadata.name", "%s", m)
	}
	for _, m := range validation.IsDNS1123Label(p.Namespace) {
		c.add("metadata.namespace", "%s", m)
	}
	s := &p.Spec
	if len(s.Containers) == 0 {
		c.add("spec.containers", "at least one container is required")
	}
	switch s.RestartPolicy {
	case corev1.RestartPolicyAlways, corev1.RestartPolicyOnFailure, corev1.RestartPolicyNever:
	default:
		c.add("spec.restartPolicy", "%q: want Always, OnFailure or Never", s.RestartPolicy)
	}
	switch s.DNSPolicy {
	case corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet, corev1.DNSDefault:
	case corev1.DNSNone:
		if s.DNSConfig == nil || len(s.DNSConfig.Nameservers) == 0 {
			c.add("spec.dnsConfig.nameservers", "required with dnsPolicy None")
		}
	default:
		c.add("spec.dnsPolicy", "%q: want ClusterFirst, ClusterFirstWithHostNet, Default or None", s.DNSPolicy)
	}
	if g := s.TerminationGracePeriodSeconds; g != nil && *g < 0 {
		c.add("spec.terminationGracePeriodSeconds", "must not be negative")
	}
	if len(s.EphemeralContainers) > 0 {
		c.unsupported("spec.ephemeralContainers", "they are added through the API server")
	}
	if s.ActiveDeadlineSeconds != nil {
		c.unsupported("spec.activeDeadlineSeconds", "no deadline is enforced")
	}
	if len(s.ImagePullSecrets) > 0 {
		c.unsupported("spec.imagePullSecrets", "there are no Secrets without an API server; put the registry's credentials in tripod.toml's [image.auths]")
	}
	if len(s.ResourceClaims) > 0 {
		c.unsupported("spec.resourceClaims", "dynamic resource allocation needs the API server")
	}
	if s.Resources != nil {
		c.unsupported("spec.resources", "pod-level resources")
	}
	if s.HostUsers != nil && !*s.HostUsers {
		c.unsupported("spec.hostUsers", "user namespaces need ID ranges allocated by kubelet")
	}
	if s.OS != nil && s.OS.Name != corev1.Linux {
		c.add("spec.os.name", "%q: this node runs linux", s.OS.Name)
	}
	if sc := s.SecurityContext; sc != nil {
		checkSeccomp(c, "spec.securityContext.seccompProfile", sc.SeccompProfile)
		checkAppArmor(c, "spec.securityContext.appArmorProfile", sc.AppArmorProfile)
		if p := sc.SupplementalGroupsPolicy; p != nil && *p != corev1.SupplementalGroupsPolicyMerge && *p != corev1.SupplementalGroupsPolicyStrict {
			c.add("spec.securityContext.supplementalGroupsPolicy", "%q: want Merge or Strict", *p)
		}
		for i, sy := range sc.Sysctls {
			if sy.Name == "" {
				c.add(fmt.Sprintf("spec.securityContext.sysctls[%d].name", i), "required")
			}
		}
	}
	for i, h := range s.HostAliases {
		if h.IP == "" {
			c.add(fmt.Sprintf("spec.hostAliases[%d].ip", i), "required")
		}
	}

	vols := map[string]*corev1.Volume{}
	for i := range s.Volumes {
		v := &s.Volumes[i]
		f := fmt.Sprintf("spec.volumes[%d]", i)
		for _, m := range validation.IsDNS1123Label(v.Name) {
			c.add(f+".name", "%s", m)
		}
		if _, dup := vols[v.Name]; dup {
			c.add(f+".name", "%q is used twice", v.Name)
		}
		vols[v.Name] = v
		checkVolume(c, f, v)
	}

	names := map[string]bool{}
	ports := map[string]string{}
	for i := range s.InitContainers {
		checkContainer(c, p, fmt.Sprintf("spec.initContainers[%d]", i), &s.InitContainers[i], true, vols, names, ports)
	}
	for i := range s.Containers {
		checkContainer(c, p, fmt.Sprintf("spec.containers[%d]", i), &s.Containers[i], false, vols, names, ports)
	}
	return c.errs
}

// supportedVolumes names the volume types play runs, for error messages.
const supportedVolumes = "emptyDir, hostPath, csi, persistentVolumeClaim, image"

func checkVolume(c *checker, f string, v *corev1.Volume) {
	kinds := volumeKinds(&v.VolumeSource)
	if len(kinds) != 1 {
		c.add(f, "exactly one volume type is required, found %d", len(kinds))
		return
	}
	src := &v.VolumeSource
	switch {
	case src.EmptyDir != nil:
		if m := src.EmptyDir.Medium; m != corev1.StorageMediumDefault && m != corev1.StorageMediumMemory {
			c.add(f+".emptyDir.medium", "%q: want \"\" (disk) or Memory", m)
		}
		if q := src.EmptyDir.SizeLimit; q != nil && q.Sign() < 0 {
			c.add(f+".emptyDir.sizeLimit", "must not be negative")
		}
		if m := src.EmptyDir.Mode; m != nil && (*m < 0 || *m > 0o7777) {
			c.add(f+".emptyDir.mode", "%o: want a mode between 0 and 07777", *m)
		}
	case src.HostPath != nil:
		if !filepath.IsAbs(src.HostPath.Path) {
			c.add(f+".hostPath.path", "%q: must be absolute", src.HostPath.Path)
		}
		if t := src.HostPath.Type; t != nil {
			switch *t {
			case corev1.HostPathUnset, corev1.HostPathDirectoryOrCreate, corev1.HostPathDirectory, corev1.HostPathFileOrCreate,
				corev1.HostPathFile, corev1.HostPathSocket, corev1.HostPathCharDev, corev1.HostPathBlockDev:
			default:
				c.add(f+".hostPath.type", "%q is not a hostPath type", *t)
			}
		}
	case src.CSI != nil:
		if src.CSI.Driver == "" {
			c.add(f+".csi.driver", "required")
		}
		if src.CSI.NodePublishSecretRef != nil {
			c.unsupported(f+".csi.nodePublishSecretRef", "there are no Secrets without an API server")
		}
	case src.PersistentVolumeClaim != nil:
		for _, m := range validation.IsDNS1123Subdomain(src.PersistentVolumeClaim.ClaimName) {
			c.add(f+".persistentVolumeClaim.claimName", "%s", m)
		}
	case src.Image != nil:
		if src.Image.Reference == "" {
			c.add(f+".image.reference", "required")
		}
	default:
		c.add(f+"."+kinds[0], "volume type not supported by tripod play (supported: %s)", supportedVolumes)
	}
}

// volumeKinds lists the JSON names of the sources set in src.
func volumeKinds(src *corev1.VolumeSource) []string {
	var out []string
	for name, set := range map[string]bool{
		"hostPath": src.HostPath != nil, "emptyDir": src.EmptyDir != nil, "gcePersistentDisk": src.GCEPersistentDisk != nil,
		"awsElasticBlockStore": src.AWSElasticBlockStore != nil, "gitRepo": src.GitRepo != nil, "secret": src.Secret != nil,
		"nfs": src.NFS != nil, "iscsi": src.ISCSI != nil, "glusterfs": src.Glusterfs != nil,
		"persistentVolumeClaim": src.PersistentVolumeClaim != nil, "rbd": src.RBD != nil, "flexVolume": src.FlexVolume != nil,
		"cinder": src.Cinder != nil, "cephfs": src.CephFS != nil, "flocker": src.Flocker != nil, "downwardAPI": src.DownwardAPI != nil,
		"fc": src.FC != nil, "azureFile": src.AzureFile != nil, "configMap": src.ConfigMap != nil, "vsphereVolume": src.VsphereVolume != nil,
		"quobyte": src.Quobyte != nil, "azureDisk": src.AzureDisk != nil, "photonPersistentDisk": src.PhotonPersistentDisk != nil,
		"projected": src.Projected != nil, "portworxVolume": src.PortworxVolume != nil, "scaleIO": src.ScaleIO != nil,
		"storageos": src.StorageOS != nil, "csi": src.CSI != nil, "ephemeral": src.Ephemeral != nil, "image": src.Image != nil,
	} {
		if set {
			out = append(out, name)
		}
	}
	return out
}

func checkContainer(c *checker, p *corev1.Pod, f string, ct *corev1.Container, init bool, vols map[string]*corev1.Volume, names map[string]bool, ports map[string]string) {
	for _, m := range validation.IsDNS1123Label(ct.Name) {
		c.add(f+".name", "%s", m)
	}
	if names[ct.Name] {
		c.add(f+".name", "%q is used by another container of the pod", ct.Name)
	}
	names[ct.Name] = true
	if ct.Image == "" {
		c.add(f+".image", "required")
	}
	switch ct.ImagePullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		c.add(f+".imagePullPolicy", "%q: want Always, IfNotPresent or Never", ct.ImagePullPolicy)
	}
	if ct.RestartPolicy != nil {
		c.unsupported(f+".restartPolicy", "sidecar containers")
	}
	if len(ct.RestartPolicyRules) > 0 {
		c.unsupported(f+".restartPolicyRules", "per-container restart rules")
	}
	if len(ct.EnvFrom) > 0 {
		c.unsupported(f+".envFrom", "there are no ConfigMaps or Secrets without an API server")
	}
	if len(ct.VolumeDevices) > 0 {
		c.unsupported(f+".volumeDevices", "raw block volumes")
	}
	if l := ct.Lifecycle; l != nil && (l.PostStart != nil || l.PreStop != nil) {
		c.unsupported(f+".lifecycle", "postStart and preStop hooks; stopSignal is supported")
	}
	if l := ct.Lifecycle; l != nil && l.StopSignal != nil {
		if _, ok := stopSignal(*l.StopSignal); !ok {
			c.add(f+".lifecycle.stopSignal", "%q is not a signal", *l.StopSignal)
		}
	}
	if init && (ct.ReadinessProbe != nil || ct.LivenessProbe != nil || ct.StartupProbe != nil) {
		c.add(f, "init containers may not have probes")
	}
	for i, pt := range ct.Ports {
		pf := fmt.Sprintf("%s.ports[%d]", f, i)
		if pt.ContainerPort < 1 || pt.ContainerPort > 65535 {
			c.add(pf+".containerPort", "%d: want 1-65535", pt.ContainerPort)
		}
		if pt.HostPort < 0 || pt.HostPort > 65535 {
			c.add(pf+".hostPort", "%d: want 0-65535", pt.HostPort)
		}
		switch pt.Protocol {
		case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		default:
			c.add(pf+".protocol", "%q: want TCP, UDP or SCTP", pt.Protocol)
		}
		if pt.HostPort > 0 {
			key := fmt.Sprintf("%s/%d/%s", pt.HostIP, pt.HostPort, pt.Protocol)
			if other, dup := ports[key]; dup {
				c.add(pf+".hostPort", "%d/%s is also %s", pt.HostPort, pt.Protocol, other)
			}
			ports[key] = pf + ".hostPort"
		}
	}
	for i, e := range ct.Env {
		ef := fmt.Sprintf("%s.env[%d]", f, i)
		if e.Name == "" {
			c.add(ef+".name", "required")
		}
		if e.ValueFrom == nil {
			continue
		}
		vf := e.ValueFrom
		switch {
		case e.Value != "":
			c.add(ef+".valueFrom", "may not be set with value")
		case vf.FieldRef != nil:
			if _, err := fieldValue(p, vf.FieldRef.FieldPath, nil); err != nil {
				c.add(ef+".valueFrom.fieldRef.fieldPath", "%v", err)
			}
		case vf.ConfigMapKeyRef != nil:
			c.unsupported(ef+".valueFrom.configMapKeyRef", "there are no ConfigMaps without an API server")
		case vf.SecretKeyRef != nil:
			c.unsupported(ef+".valueFrom.secretKeyRef", "there are no Secrets without an API server")
		case vf.ResourceFieldRef != nil:
			c.unsupported(ef+".valueFrom.resourceFieldRef", "use a literal value")
		case vf.FileKeyRef != nil:
			c.unsupported(ef+".valueFrom.fileKeyRef", "use a literal value")
		default:
			c.add(ef+".valueFrom", "names no source")
		}
	}
	checkResources(c, f+".resources", &ct.Resources)
	mounts := map[string]bool{}
	for i, m := range ct.VolumeMounts {
		mf := fmt.Sprintf("%s.volumeMounts[%d]", f, i)
		v, ok := vols[m.Name]
		if !ok {
			c.add(mf+".name", "%q names no volume of the pod", m.Name)
		}
		if !path.IsAbs(m.MountPath) {
			c.add(mf+".mountPath", "%q: must be absolute", m.MountPath)
		}
		if mounts[path.Clean(m.MountPath)] {
			c.add(mf+".mountPath", "%q is mounted twice", m.MountPath)
		}
		mounts[path.Clean(m.MountPath)] = true
		if m.SubPath != "" {
			if path.IsAbs(m.SubPath) || strings.Contains("/"+m.SubPath+"/", "/../") {
				c.add(mf+".subPath", "%q: must be relative, without ..", m.SubPath)
			}
			if ok && (v.Image != nil) {
				c.unsupported(mf+".subPath", "subPath of an image volume")
			}
		}
		if m.SubPathExpr != "" {
			c.unsupported(mf+".subPathExpr", "use subPath")
		}
		if len(m.BindMountOptions) > 0 {
			c.unsupported(mf+".bindMountOptions", "extra bind mount options")
		}
		if mp := m.MountPropagation; mp != nil {
			switch *mp {
			case corev1.MountPropagationNone, corev1.MountPropagationHostToContainer:
			case corev1.MountPropagationBidirectional:
				if !privileged(ct) {
					c.add(mf+".mountPropagation", "Bidirectional needs a privileged container")
				}
			default:
				c.add(mf+".mountPropagation", "%q: want None, HostToContainer or Bidirectional", *mp)
			}
		}
		if r := m.RecursiveReadOnly; r != nil {
			switch *r {
			case corev1.RecursiveReadOnlyDisabled:
			case corev1.RecursiveReadOnlyEnabled, corev1.RecursiveReadOnlyIfPossible:
				if !m.ReadOnly {
					c.add(mf+".recursiveReadOnly", "needs readOnly: true")
				}
			default:
				c.add(mf+".recursiveReadOnly", "%q: want Disabled, IfPossible or Enabled", *r)
			}
		}
	}
	for _, pr := range []struct {
		name string
		p    *corev1.Probe
	}{{"livenessProbe", ct.LivenessProbe}, {"readinessProbe", ct.ReadinessProbe}, {"startupProbe", ct.StartupProbe}} {
		if pr.p != nil {
			checkProbe(c, f+"."+pr.name, pr.p, ct)
		}
	}
	if sc := ct.SecurityContext; sc != nil {
		checkSeccomp(c, f+".securityContext.seccompProfile", sc.SeccompProfile)
		checkAppArmor(c, f+".securityContext.appArmorProfile", sc.AppArmorProfile)
		if pm := sc.ProcMount; pm != nil && *pm != corev1.DefaultProcMount && *pm != corev1.UnmaskedProcMount {
			c.add(f+".securityContext.procMount", "%q: want Default or Unmasked", *pm)
		}
		if sc.Privileged != nil && *sc.Privileged && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
			c.add(f+".securityContext.allowPrivilegeEscalation", "cannot be false for a privileged container")
		}
	}
}

func privileged(ct *corev1.Container) bool {
	return ct.SecurityContext != nil && ct.SecurityContext.Privileged != nil && *ct.SecurityContext.Privileged
}

func checkResources(c *checker, f string, r *corev1.ResourceRequirements) {
	for _, l := range []struct {
		name string
		list corev1.ResourceList
	}{{"limits", r.Limits}, {"requests", r.Requests}} {
		for name, q := range l.list {
			switch name {
			case corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourceEphemeralStorage:
			default:
				c.unsupported(fmt.Sprintf("%s.%s[%s]", f, l.name, name), "only cpu, memory and ephemeral-storage")
				continue
			}
			if q.Sign() < 0 {
				c.add(fmt.Sprintf("%s.%s[%s]", f, l.name, name), "must not be negative")
			}
		}
	}
	for name, lim := range r.Limits {
		if req, ok := r.Requests[name]; ok && req.Cmp(lim) > 0 {
			c.add(fmt.Sprintf("%s.requests[%s]", f, name), "%s is more than the limit %s", req.String(), lim.String())
		}
	}
	if len(r.Claims) > 0 {
		c.unsupported(f+".claims", "dynamic resource allocation needs the API server")
	}
}

func checkProbe(c *checker, f string, p *corev1.Probe, ct *corev1.Container) {
	n := 0
	h := &p.ProbeHandler
	if h.Exec != nil {
		n++
		if len(h.Exec.Command) == 0 {
			c.add(f+".exec.command", "required")
		}
	}
	if h.HTTPGet != nil {
		n++
		checkProbePort(c, f+".httpGet.port", h.HTTPGet.Port, ct)
		if h.HTTPGet.Scheme != corev1.URISchemeHTTP && h.HTTPGet.Scheme != corev1.URISchemeHTTPS {
			c.add(f+".httpGet.scheme", "%q: want HTTP or HTTPS", h.HTTPGet.Scheme)
		}
	}
	if h.TCPSocket != nil {
		n++
		checkProbePort(c, f+".tcpSocket.port", h.TCPSocket.Port, ct)
	}
	if h.GRPC != nil {
		n++
		if h.GRPC.Port < 1 || h.GRPC.Port > 65535 {
			c.add(f+".grpc.port", "%d: want 1-65535", h.GRPC.Port)
		}
	}
	if n != 1 {
		c.add(f, "exactly one of exec, httpGet, tcpSocket or grpc is required, found %d", n)
	}
	for _, v := range []struct {
		name string
		v    int32
		min  int32
	}{{"initialDelaySeconds", p.InitialDelaySeconds, 0}, {"timeoutSeconds", p.TimeoutSeconds, 1},
		{"periodSeconds", p.PeriodSeconds, 1}, {"successThreshold", p.SuccessThreshold, 1}, {"failureThreshold", p.FailureThreshold, 1}} {
		if v.v < v.min {
			c.add(f+"."+v.name, "%d: must be at least %d", v.v, v.min)
		}
	}
	if strings.HasSuffix(f, "livenessProbe") || strings.HasSuffix(f, "startupProbe") {
		if p.SuccessThreshold != 1 {
			c.add(f+".successThreshold", "must be 1")
		}
	}
}

func checkProbePort(c *checker, f string, port intstr.IntOrString, ct *corev1.Container) {
	if _, err := probePort(port, ct); err != nil {
		c.add(f, "%v", err)
	}
}

// probePort resolves a probe's port, by number or by the name of one of
// the container's ports.
func probePort(port intstr.IntOrString, ct *corev1.Container) (int, error) {
	if port.Type == intstr.Int {
		if port.IntVal < 1 || port.IntVal > 65535 {
			return 0, fmt.Errorf("%d: want 1-65535", port.IntVal)
		}
		return int(port.IntVal), nil
	}
	for _, p := range ct.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("%q names no port of the container", port.StrVal)
}

func checkSeccomp(c *checker, f string, p *corev1.SeccompProfile) {
	if p == nil {
		return
	}
	switch p.Type {
	case corev1.SeccompProfileTypeRuntimeDefault, corev1.SeccompProfileTypeUnconfined:
	case corev1.SeccompProfileTypeLocalhost:
		if p.LocalhostProfile == nil || *p.LocalhostProfile == "" {
			c.add(f+".localhostProfile", "required for Localhost")
		} else if lp := *p.LocalhostProfile; path.IsAbs(lp) || strings.Contains("/"+lp+"/", "/../") {
			c.add(f+".localhostProfile", "%q: must be relative, without ..", lp)
		}
	default:
		c.add(f+".type", "%q: want RuntimeDefault, Unconfined or Localhost", p.Type)
	}
}

func checkAppArmor(c *checker, f string, p *corev1.AppArmorProfile) {
	if p == nil {
		return
	}
	switch p.Type {
	case corev1.AppArmorProfileTypeRuntimeDefault, corev1.AppArmorProfileTypeUnconfined:
	case corev1.AppArmorProfileTypeLocalhost:
		if p.LocalhostProfile == nil || *p.LocalhostProfile == "" {
			c.add(f+".localhostProfile", "required for Localhost")
		}
	default:
		c.add(f+".type", "%q: want RuntimeDefault, Unconfined or Localhost", p.Type)
	}
}
