package server

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tripod-dev/tripod/internal/oci"
	"github.com/tripod-dev/tripod/internal/pod"
)

// podSecurity takes a pod's privileged flag and user namespace from its
// security context.
func podSecurity(sc *runtimeapi.LinuxSandboxSecurityContext, cfg *pod.PodConfig) error {
	if sc == nil {
		return nil
	}
	// run_as_user, run_as_group, readonly_rootfs and the profiles are for
	// a sandbox process: tripod pods have none (kubelet passes the pod's
	// profiles on to each container).
	const field = "config.linux.security_context"
	cfg.Privileged = sc.Privileged
	ns := sc.GetNamespaceOptions().GetUsernsOptions()
	if ns == nil {
		return nil
	}
	switch ns.Mode {
	case runtimeapi.NamespaceMode_NODE:
		return nil
	case runtimeapi.NamespaceMode_POD:
		cfg.UserNS = &oci.IDMap{UIDs: idMaps(ns.Uids), GIDs: idMaps(ns.Gids)}
		return nil
	}
	return fmt.Errorf("%s.namespace_options.userns_options.mode: %s is not supported for user namespaces (POD or NODE)", field, ns.Mode)
}

func idMaps(l []*runtimeapi.IDMapping) []specs.LinuxIDMapping {
	var out []specs.LinuxIDMapping
	for _, m := range l {
		out = append(out, specs.LinuxIDMapping{ContainerID: m.ContainerId, HostID: m.HostId, Size: m.Length})
	}
	return out
}

// containerSecurity takes a container's user, privileges, capabilities,
// profiles and masks from its security context.
func containerSecurity(sc *runtimeapi.LinuxContainerSecurityContext, cfg *pod.ContainerConfig) error {
	if sc == nil {
		return nil
	}
	const field = "config.linux.security_context"
	switch {
	case sc.RunAsUser != nil && sc.RunAsUsername != "":
		return fmt.Errorf("%s: only one of run_as_user and run_as_username may be given", field)
	case sc.RunAsGroup != nil && sc.RunAsUser == nil && sc.RunAsUsername == "":
		return fmt.Errorf("%s.run_as_group: needs run_as_user or run_as_username", field)
	case sc.RunAsUser != nil && (sc.RunAsUser.Value < 0 || sc.RunAsUser.Value > 1<<32-2):
		return fmt.Errorf("%s.run_as_user: %d is not a valid uid", field, sc.RunAsUser.Value)
	case sc.RunAsGroup != nil && (sc.RunAsGroup.Value < 0 || sc.RunAsGroup.Value > 1<<32-2):
		return fmt.Errorf("%s.run_as_group: %d is not a valid gid", field, sc.RunAsGroup.Value)
	}
	if sc.RunAsUser != nil {
		v := sc.RunAsUser.Value
		cfg.RunAsUser = &v
	}
	if sc.RunAsGroup != nil {
		v := sc.RunAsGroup.Value
		cfg.RunAsGroup = &v
	}
	cfg.RunAsName = sc.RunAsUsername
	cfg.Privileged = sc.Privileged
	cfg.ReadOnly = sc.ReadonlyRootfs
	s := &cfg.Security
	s.SupplementalGroups = sc.SupplementalGroups
	s.StrictGroups = sc.SupplementalGroupsPolicy == runtimeapi.SupplementalGroupsPolicy_Strict
	s.NoNewPrivs = sc.NoNewPrivs
	if c := sc.Capabilities; c != nil {
		s.CapAdd, s.CapDrop, s.CapAmbient = c.AddCapabilities, c.DropCapabilities, c.AddAmbientCapabilities
	}
	// Empty lists are indistinguishable from unset ones on the wire: the
	// defaults apply (the core makes an exception for unmasked pods).
	if len(sc.MaskedPaths) > 0 {
		s.MaskedPaths = sc.MaskedPaths
	}
	if len(sc.ReadonlyPaths) > 0 {
		s.ReadonlyPaths = sc.ReadonlyPaths
	}
	// The deprecated string fields still come from older kubelets and
	// crictl; the structured fields win when both are set.
	//lint:ignore SA1019 read for compatibility, as the CRI asks
	seccompPath := sc.SeccompProfilePath
	//lint:ignore SA1019 read for compatibility, as the CRI asks
	apparmorName := sc.ApparmorProfile
	var err error
	if s.Seccomp, err = securityProfile(sc.Seccomp, seccompPath, field+".seccomp", true); err != nil {
		return err
	}
	if s.AppArmor, err = securityProfile(sc.Apparmor, apparmorName, field+".apparmor", false); err != nil {
		return err
	}
	if ns := sc.NamespaceOptions; ns != nil && ns.Pid == runtimeapi.NamespaceMode_TARGET {
		if ns.TargetId == "" {
			return fmt.Errorf("%s.namespace_options.target_id: required with PID namespace mode TARGET", field)
		}
		cfg.PIDTarget = ns.TargetId
	}
	return nil
}

// securityProfile reads a seccomp or AppArmor profile from the structured
// field, else from the deprecated string ("runtime/default",
// "docker/default", "unconfined", "localhost/<ref>"; "" is unconfined).
// Seccomp's localhost references are absolute paths.
func securityProfile(p *runtimeapi.SecurityProfile, deprecated, field string, seccomp bool) (oci.Profile, error) {
	var out oci.Profile
	if p != nil {
		switch p.ProfileType {
		case runtimeapi.SecurityProfile_RuntimeDefault:
			out.Kind = oci.ProfileRuntimeDefault
		case runtimeapi.SecurityProfile_Unconfined:
			out.Kind = oci.ProfileUnconfined
		case runtimeapi.SecurityProfile_Localhost:
			out = oci.Profile{Kind: oci.ProfileLocalhost, Ref: p.LocalhostRef}
		default:
			return out, fmt.Errorf("%s.profile_type: unknown type %d", field, p.ProfileType)
		}
	} else {
		switch {
		case deprecated == "" || deprecated == "unconfined":
			out.Kind = oci.ProfileUnconfined
		case deprecated == "runtime/default" || deprecated == "docker/default":
			out.Kind = oci.ProfileRuntimeDefault
		case strings.HasPrefix(deprecated, "localhost/"):
			out = oci.Profile{Kind: oci.ProfileLocalhost, Ref: strings.TrimPrefix(deprecated, "localhost/")}
		default:
			return out, fmt.Errorf("%s: %q is not a profile (runtime/default, unconfined or localhost/<ref>)", field, deprecated)
		}
	}
	if out.Kind == oci.ProfileLocalhost {
		if out.Ref == "" {
			return out, fmt.Errorf("%s.localhost_ref: required for a Localhost profile", field)
		}
		if seccomp && !filepath.IsAbs(out.Ref) {
			return out, fmt.Errorf("%s.localhost_ref: %q is not an absolute path", field, out.Ref)
		}
	}
	return out, nil
}

// handlerFeatures reports what a runtime handler supports.
func (s *RuntimeServer) handlerFeatures(ctx context.Context, name string) *runtimeapi.RuntimeHandlerFeatures {
	f := s.m.HandlerFeatures(ctx, name)
	return &runtimeapi.RuntimeHandlerFeatures{RecursiveReadOnlyMounts: f.RecursiveReadOnly, UserNamespaces: f.UserNamespaces}
}

// defaultHandler is the entry for the default handler, which the CRI
// names "" (clients that name no handler, critest among them, look it up
// so).
func defaultHandler(ctx context.Context, s *RuntimeServer) *runtimeapi.RuntimeHandler {
	return &runtimeapi.RuntimeHandler{Name: "", Features: s.handlerFeatures(ctx, s.m.DefaultHandler())}
}

// runtimeFeatures are the runtime's own, whatever the handler.
func runtimeFeatures() *runtimeapi.RuntimeFeatures {
	return &runtimeapi.RuntimeFeatures{SupplementalGroupsPolicy: true}
}

// containerUser reports the identity a container's first process got.
func containerUser(c *pod.Container) *runtimeapi.ContainerUser {
	if c.User == nil {
		return nil
	}
	u := &runtimeapi.LinuxContainerUser{Uid: int64(c.User.UID), Gid: int64(c.User.GID)}
	for _, g := range c.User.AdditionalGids {
		u.SupplementalGroups = append(u.SupplementalGroups, int64(g))
	}
	return &runtimeapi.ContainerUser{Linux: u}
}

// imageSpec is the container's image as CreateContainer named it, with
// the name the user gave.
func imageSpec(c *pod.Container) *runtimeapi.ImageSpec {
	return &runtimeapi.ImageSpec{Image: c.Image, UserSpecifiedImage: c.UserImage}
}

// usernsStatus describes a pod's user namespace.
func usernsStatus(p *pod.Pod) *runtimeapi.UserNamespace {
	if p.UserNS == nil {
		return &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE}
	}
	conv := func(l []specs.LinuxIDMapping) []*runtimeapi.IDMapping {
		var out []*runtimeapi.IDMapping
		for _, m := range l {
			out = append(out, &runtimeapi.IDMapping{ContainerId: m.ContainerID, HostId: m.HostID, Length: m.Size})
		}
		return out
	}
	return &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: conv(p.UserNS.UIDs), Gids: conv(p.UserNS.GIDs)}
}
