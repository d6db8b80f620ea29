package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/cnirun"
	"github.com/tripod-dev/tripod/internal/oci"
	"github.com/tripod-dev/tripod/internal/pod"
)

// RuntimeServer serves the CRI RuntimeService over the pod core.
type RuntimeServer struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	m       *pod.Manager
	version string
	streams Streams // exec, attach and port-forward URLs; see SetStreams
}

// NewRuntimeServer serves m; version is tripodd's.
func NewRuntimeServer(m *pod.Manager, version string) *RuntimeServer {
	return &RuntimeServer{m: m, version: version}
}

var _ runtimeapi.RuntimeServiceServer = (*RuntimeServer)(nil)

// Version names the runtime.
func (s *RuntimeServer) Version(ctx context.Context, req *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "tripod", RuntimeVersion: s.version, RuntimeApiVersion: "v1"}, nil
}

// Status reports runtime and network readiness.
func (s *RuntimeServer) Status(ctx context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	netCond := &runtimeapi.RuntimeCondition{Type: runtimeapi.NetworkReady, Status: true}
	if err := s.m.NetworkStatus(ctx); err != nil {
		netCond.Status, netCond.Reason, netCond.Message = false, "NetworkPluginNotReady", err.Error()
	}
	resp := &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true}, netCond}}}
	for _, h := range s.m.Handlers() {
		resp.RuntimeHandlers = append(resp.RuntimeHandlers, &runtimeapi.RuntimeHandler{Name: h,
			Features: s.handlerFeatures(ctx, h)})
	}
	resp.RuntimeHandlers = append(resp.RuntimeHandlers, defaultHandler(ctx, s))
	resp.Features = runtimeFeatures()
	if req.Verbose {
		resp.Info = map[string]string{"handlers": strings.Join(s.m.Handlers(), ","), "cgroupDriver": s.m.CgroupDriver()}
	}
	return resp, nil
}

// RuntimeConfig reports the cgroup driver.
func (s *RuntimeServer) RuntimeConfig(ctx context.Context, req *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	d := runtimeapi.CgroupDriver_CGROUPFS
	if s.m.CgroupDriver() == "systemd" {
		d = runtimeapi.CgroupDriver_SYSTEMD
	}
	return &runtimeapi.RuntimeConfigResponse{Linux: &runtimeapi.LinuxRuntimeConfiguration{CgroupDriver: d}}, nil
}

// UpdateRuntimeConfig takes the node's pod CIDR.
func (s *RuntimeServer) UpdateRuntimeConfig(ctx context.Context, req *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	if c := req.GetRuntimeConfig().GetNetworkConfig().GetPodCidr(); c != "" {
		s.m.SetPodCIDR(strings.Split(c, ",")[0])
	}
	return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
}

// RunPodSandbox creates and starts a pod.
func (s *RuntimeServer) RunPodSandbox(ctx context.Context, req *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	c := req.GetConfig()
	if c == nil || c.Metadata == nil {
		return nil, status.Error(codes.InvalidArgument, "config.metadata: required")
	}
	cfg := pod.PodConfig{
		Meta:     pod.Meta{Name: c.Metadata.Name, UID: c.Metadata.Uid, Namespace: c.Metadata.Namespace, Attempt: c.Metadata.Attempt},
		Hostname: c.Hostname, LogDir: c.LogDirectory, Labels: c.Labels, Annotations: c.Annotations, Handler: req.RuntimeHandler,
	}
	if d := c.DnsConfig; d != nil {
		cfg.DNS = &pod.DNS{Servers: d.Servers, Searches: d.Searches, Options: d.Options}
	}
	for _, pm := range c.PortMappings {
		proto := "tcp"
		switch pm.Protocol {
		case runtimeapi.Protocol_UDP:
			proto = "udp"
		case runtimeapi.Protocol_SCTP:
			proto = "sctp"
		}
		cfg.Ports = append(cfg.Ports, cnirun.PortMapping{HostPort: pm.HostPort, ContainerPort: pm.ContainerPort, Protocol: proto, HostIP: pm.HostIp})
	}
	if bw, err := bandwidth(c.Annotations); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	} else {
		cfg.Bandwidth = bw
	}
	if l := c.Linux; l != nil {
		cfg.CgroupParent = l.CgroupParent
		cfg.Sysctls = l.Sysctls
		if ns := l.GetSecurityContext().GetNamespaceOptions(); ns != nil {
			cfg.HostNetwork = ns.Network == runtimeapi.NamespaceMode_NODE
			cfg.HostPID = ns.Pid == runtimeapi.NamespaceMode_NODE
			cfg.SharePID = ns.Pid == runtimeapi.NamespaceMode_POD
			cfg.HostIPC = ns.Ipc == runtimeapi.NamespaceMode_NODE
		}
	}
	if err := podSecurity(c.GetLinux().GetSecurityContext(), &cfg); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	p, err := s.m.RunPod(ctx, cfg)
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: p.ID}, nil
}

// bandwidth reads kubernetes.io/{ingress,egress}-bandwidth annotations.
func bandwidth(ann map[string]string) (*cnirun.Bandwidth, error) {
	var bw cnirun.Bandwidth
	set := false
	for key, dst := range map[string]*uint64{"kubernetes.io/ingress-bandwidth": &bw.IngressRate, "kubernetes.io/egress-bandwidth": &bw.EgressRate} {
		v, ok := ann[key]
		if !ok {
			continue
		}
		n, err := parseQuantity(v)
		if err != nil {
			return nil, fmt.Errorf("annotations[%s]: %v", key, err)
		}
		*dst, set = n, true
	}
	if !set {
		return nil, nil
	}
	// Burst as kubelet's runtimes set it: effectively unlimited.
	if bw.IngressRate > 0 {
		bw.IngressBurst = 1 << 31
	}
	if bw.EgressRate > 0 {
		bw.EgressBurst = 1 << 31
	}
	return &bw, nil
}

// parseQuantity parses a Kubernetes quantity such as 10M or 1Gi (bits/s).
func parseQuantity(s string) (uint64, error) {
	mult := uint64(1)
	for _, u := range []struct {
		suf string
		m   uint64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"k", 1e3}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}} {
		if strings.HasSuffix(s, u.suf) {
			s, mult = strings.TrimSuffix(s, u.suf), u.m
			break
		}
	}
	var n uint64
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a positive quantity", s)
	}
	return n * mult, nil
}

// StopPodSandbox stops a pod; unknown pods succeed.
func (s *RuntimeServer) StopPodSandbox(ctx context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	if req.PodSandboxId == "" {
		return nil, status.Error(codes.InvalidArgument, "pod_sandbox_id: required")
	}
	if err := s.m.StopPod(ctx, req.PodSandboxId); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

// RemovePodSandbox removes a pod; unknown pods succeed.
func (s *RuntimeServer) RemovePodSandbox(ctx context.Context, req *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	if req.PodSandboxId == "" {
		return nil, status.Error(codes.InvalidArgument, "pod_sandbox_id: required")
	}
	if err := s.m.RemovePod(ctx, req.PodSandboxId); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

func podState(st pod.State) runtimeapi.PodSandboxState {
	if st == pod.Ready {
		return runtimeapi.PodSandboxState_SANDBOX_READY
	}
	return runtimeapi.PodSandboxState_SANDBOX_NOTREADY
}

func nsMode(host bool) runtimeapi.NamespaceMode {
	if host {
		return runtimeapi.NamespaceMode_NODE
	}
	return runtimeapi.NamespaceMode_POD
}

func podMeta(p *pod.Pod) *runtimeapi.PodSandboxMetadata {
	return &runtimeapi.PodSandboxMetadata{Name: p.Meta.Name, Uid: p.Meta.UID, Namespace: p.Meta.Namespace, Attempt: p.Meta.Attempt}
}

// PodSandboxStatus describes a pod.
func (s *RuntimeServer) PodSandboxStatus(ctx context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	p, err := s.m.Pod(req.PodSandboxId)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: podStatus(p)}
	if req.Verbose {
		resp.Info = map[string]string{"namespaces": fmt.Sprint(p.Namespaces)}
	}
	return resp, nil
}

// podStatus is a pod's CRI status (PodSandboxStatus, container events).
func podStatus(p *pod.Pod) *runtimeapi.PodSandboxStatus {
	st := &runtimeapi.PodSandboxStatus{
		Id: p.ID, Metadata: podMeta(p), State: podState(p.State), CreatedAt: p.CreatedAt,
		Labels: p.Labels, Annotations: p.Annotations, RuntimeHandler: p.Handler,
		Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{Options: &runtimeapi.NamespaceOption{
			Network: nsMode(p.HostNetwork), Pid: nsMode(p.HostPID), Ipc: nsMode(p.HostIPC), UsernsOptions: usernsStatus(p)}}},
	}
	switch {
	case p.HostPID:
		st.Linux.Namespaces.Options.Pid = runtimeapi.NamespaceMode_NODE
	case p.SharePID:
		st.Linux.Namespaces.Options.Pid = runtimeapi.NamespaceMode_POD
	default:
		st.Linux.Namespaces.Options.Pid = runtimeapi.NamespaceMode_CONTAINER
	}
	if ips := p.IPs(); len(ips) > 0 {
		st.Network = &runtimeapi.PodSandboxNetworkStatus{Ip: ips[0]}
		for _, ip := range ips[1:] {
			st.Network.AdditionalIps = append(st.Network.AdditionalIps, &runtimeapi.PodIP{Ip: ip})
		}
	}
	return st
}

// ListPodSandbox lists pods matching the filter.
func (s *RuntimeServer) ListPodSandbox(ctx context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f := pod.PodFilter{}
	if rf := req.Filter; rf != nil {
		f.ID, f.Labels = rf.Id, rf.LabelSelector
		if rf.State != nil {
			f.State = pod.NotReady
			if rf.State.State == runtimeapi.PodSandboxState_SANDBOX_READY {
				f.State = pod.Ready
			}
		}
	}
	resp := &runtimeapi.ListPodSandboxResponse{}
	for _, p := range s.m.Pods(f) {
		resp.Items = append(resp.Items, &runtimeapi.PodSandbox{Id: p.ID, Metadata: podMeta(p), State: podState(p.State),
			CreatedAt: p.CreatedAt, Labels: p.Labels, Annotations: p.Annotations, RuntimeHandler: p.Handler})
	}
	return resp, nil
}

// CreateContainer creates a container in a pod.
func (s *RuntimeServer) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	c := req.GetConfig()
	if req.PodSandboxId == "" {
		return nil, status.Error(codes.InvalidArgument, "pod_sandbox_id: required")
	}
	if c == nil || c.Metadata == nil {
		return nil, status.Error(codes.InvalidArgument, "config.metadata: required")
	}
	if c.Image == nil || c.Image.Image == "" {
		return nil, status.Error(codes.InvalidArgument, "config.image: required")
	}
	cfg := pod.ContainerConfig{
		Meta:  pod.Meta{Name: c.Metadata.Name, Attempt: c.Metadata.Attempt},
		Image: c.Image.Image, Command: c.Command, Args: c.Args, WorkingDir: c.WorkingDir,
		Labels: c.Labels, Annotations: c.Annotations, LogPath: c.LogPath, UserImage: c.Image.UserSpecifiedImage,
		Stdin: c.Stdin, StdinOnce: c.StdinOnce, TTY: c.Tty,
	}
	for _, kv := range c.Envs {
		cfg.Env = append(cfg.Env, kv.Key+"="+string(kv.Value))
	}
	for i, mt := range c.Mounts {
		if im, ok, err := imageMount(i, mt); ok {
			if err != nil {
				return nil, err
			}
			cfg.ImageMounts = append(cfg.ImageMounts, im)
			continue
		}
		if mt.ContainerPath == "" || mt.HostPath == "" {
			return nil, status.Error(codes.InvalidArgument, "config.mounts: host_path and container_path are required")
		}
		prop := "private"
		switch mt.Propagation {
		case runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER:
			prop = "rslave"
		case runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL:
			prop = "rshared"
		}
		// SELinux relabelling is ignored: this runtime has no SELinux support.
		cfg.Mounts = append(cfg.Mounts, oci.Mount{HostPath: mt.HostPath, ContainerPath: mt.ContainerPath, Readonly: mt.Readonly, Propagation: prop,
			RecursiveReadOnly: mt.RecursiveReadOnly, UIDMappings: idMaps(mt.UidMappings), GIDMappings: idMaps(mt.GidMappings)})
	}
	for _, d := range c.Devices {
		cfg.Devices = append(cfg.Devices, oci.Device{HostPath: d.HostPath, ContainerPath: d.ContainerPath, Permissions: d.Permissions})
	}
	for _, d := range c.CDIDevices {
		cfg.CDIDevices = append(cfg.CDIDevices, d.Name)
	}
	if l := c.Linux; l != nil {
		if r := l.Resources; r != nil {
			cfg.Resources = ociResources(r)
		}
		if err := containerSecurity(l.SecurityContext, &cfg); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	ctr, err := s.m.CreateContainer(ctx, req.PodSandboxId, cfg)
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.CreateContainerResponse{ContainerId: ctr.ID}, nil
}

// StartContainer starts a created container.
func (s *RuntimeServer) StartContainer(ctx context.Context, req *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	if err := s.m.StartContainer(ctx, req.ContainerId); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.StartContainerResponse{}, nil
}

// StopContainer stops a container; unknown containers succeed.
func (s *RuntimeServer) StopContainer(ctx context.Context, req *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	if req.ContainerId == "" {
		return nil, status.Error(codes.InvalidArgument, "container_id: required")
	}
	if err := s.m.StopContainer(ctx, req.ContainerId, req.Timeout); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.StopContainerResponse{}, nil
}

// RemoveContainer removes a container; unknown containers succeed.
func (s *RuntimeServer) RemoveContainer(ctx context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	if req.ContainerId == "" {
		return nil, status.Error(codes.InvalidArgument, "container_id: required")
	}
	if err := s.m.RemoveContainer(ctx, req.ContainerId); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.RemoveContainerResponse{}, nil
}

func ctrState(st pod.State) runtimeapi.ContainerState {
	switch st {
	case pod.Created:
		return runtimeapi.ContainerState_CONTAINER_CREATED
	case pod.Running:
		return runtimeapi.ContainerState_CONTAINER_RUNNING
	case pod.Exited:
		return runtimeapi.ContainerState_CONTAINER_EXITED
	}
	return runtimeapi.ContainerState_CONTAINER_UNKNOWN
}

func ctrMeta(c *pod.Container) *runtimeapi.ContainerMetadata {
	return &runtimeapi.ContainerMetadata{Name: c.Meta.Name, Attempt: c.Meta.Attempt}
}

// ContainerStatus describes a container.
func (s *RuntimeServer) ContainerStatus(ctx context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	c, err := s.m.Container(req.ContainerId)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: containerStatus(c)}
	if req.Verbose {
		resp.Info = map[string]string{"info": fmt.Sprintf(`{"pid":%d,"sandboxID":%q}`, c.Pid, c.PodID)}
	}
	return resp, nil
}

// containerStatus is a container's CRI status (ContainerStatus, container
// events).
func containerStatus(c *pod.Container) *runtimeapi.ContainerStatus {
	st := &runtimeapi.ContainerStatus{
		Id: c.ID, Metadata: ctrMeta(c), State: ctrState(c.State), CreatedAt: c.CreatedAt, StartedAt: c.StartedAt,
		FinishedAt: c.FinishedAt, ExitCode: c.ExitCode, Image: imageSpec(c), ImageRef: c.ImageID,
		ImageId: c.ImageID, Reason: c.Reason, Message: c.Message, Labels: c.Labels, Annotations: c.Annotations, LogPath: c.FullLog,
		Resources: criResources(c.Resources), User: containerUser(c),
	}
	for _, mt := range c.Mounts {
		prop := runtimeapi.MountPropagation_PROPAGATION_PRIVATE
		switch mt.Propagation {
		case "rslave":
			prop = runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER
		case "rshared":
			prop = runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL
		}
		st.Mounts = append(st.Mounts, &runtimeapi.Mount{HostPath: mt.HostPath, ContainerPath: mt.ContainerPath, Readonly: mt.Readonly, Propagation: prop,
			RecursiveReadOnly: mt.RecursiveReadOnly})
	}
	st.Mounts = append(st.Mounts, imageVolumeStatus(c)...)
	return st
}

// ListContainers lists containers matching the filter.
func (s *RuntimeServer) ListContainers(ctx context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f := pod.ContainerFilter{}
	if rf := req.Filter; rf != nil {
		f.ID, f.PodID, f.Labels = rf.Id, rf.PodSandboxId, rf.LabelSelector
		if rf.State != nil {
			switch rf.State.State {
			case runtimeapi.ContainerState_CONTAINER_CREATED:
				f.State = pod.Created
			case runtimeapi.ContainerState_CONTAINER_RUNNING:
				f.State = pod.Running
			case runtimeapi.ContainerState_CONTAINER_EXITED:
				f.State = pod.Exited
			default:
				f.State = "unknown"
			}
		}
	}
	resp := &runtimeapi.ListContainersResponse{}
	for _, c := range s.m.Containers(f) {
		resp.Containers = append(resp.Containers, &runtimeapi.Container{Id: c.ID, PodSandboxId: c.PodID, Metadata: ctrMeta(c),
			Image: imageSpec(c), ImageRef: c.ImageID, ImageId: c.ImageID, State: ctrState(c.State),
			CreatedAt: c.CreatedAt, Labels: c.Labels, Annotations: c.Annotations})
	}
	return resp, nil
}

// ReopenContainerLog reopens a running container's log after rotation.
func (s *RuntimeServer) ReopenContainerLog(ctx context.Context, req *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	if err := s.m.ReopenLog(ctx, req.ContainerId); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.ReopenContainerLogResponse{}, nil
}

// ExecSync runs a command in a container and returns its output.
func (s *RuntimeServer) ExecSync(ctx context.Context, req *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	if req.ContainerId == "" {
		return nil, status.Error(codes.InvalidArgument, "container_id: required")
	}
	out, errOut, code, err := s.m.ExecSync(ctx, req.ContainerId, req.Cmd, time.Duration(req.Timeout)*time.Second)
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.ExecSyncResponse{Stdout: out, Stderr: errOut, ExitCode: code}, nil
}
