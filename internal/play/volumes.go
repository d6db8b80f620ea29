package play

import (
	"context"
	"errors"
	"fmt"
	"github.com/tripod-dev/tripod/internal/mountinfo"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// ClaimSizeAnnotation, followed by a claim's name, is a pod annotation
// giving the size of the claim's volume when play creates it
// (claims.tripod.dev/data: 2Gi). Without it a claim gets DefaultClaimSize.
const ClaimSizeAnnotation = "claims.tripod.dev/"

// DefaultClaimSize is the size of a claim's volume when no annotation
// gives one.
const DefaultClaimSize = 1 << 30

// Paths under the play directory, after kubelet's layout.
func (n *Node) podDir(uid string) string { return n.st.podDir(uid) }
func (n *Node) volumeDir(uid, kind, name string) string {
	return filepath.Join(n.podDir(uid), "volumes", kind, name)
}
func (n *Node) claimStaging(key string) string {
	ns, name, _ := strings.Cut(key, "/")
	return filepath.Join(n.opts.Dir, "claims", ns, name, "globalmount")
}

// volumeError names the volume's field in the manifest.
func volumeError(p *Pod, name string, err error) error {
	for i, v := range p.Spec.Volumes {
		if v.Name == name {
			return fmt.Errorf("spec.volumes[%d] (%s): %w", i, name, err)
		}
	}
	return err
}

// preflightVolumes checks what can be known before anything is made: the
// CSI driver of inline volumes, hostPath types that must exist, claim sizes.
func (n *Node) preflightVolumes(ctx context.Context, p *Pod) error {
	for i, v := range p.Spec.Volumes {
		f := fmt.Sprintf("spec.volumes[%d]", i)
		switch {
		case v.CSI != nil:
			c, err := n.csiClient(ctx)
			if err != nil {
				return fmt.Errorf("%s.csi: %w", f, err)
			}
			if v.CSI.Driver != c.name {
				return fmt.Errorf("%s.csi.driver: unknown CSI driver %q (this node has %s)", f, v.CSI.Driver, c.name)
			}
		case v.PersistentVolumeClaim != nil:
			if _, err := n.csiClient(ctx); err != nil {
				return fmt.Errorf("%s.persistentVolumeClaim: %w", f, err)
			}
			if _, err := claimSize(p, v.PersistentVolumeClaim.ClaimName); err != nil {
				return err
			}
		case v.HostPath != nil:
			if err := checkHostPath(v.HostPath, false); err != nil {
				return fmt.Errorf("%s.hostPath: %w", f, err)
			}
		}
	}
	return nil
}

// claimSize is the size a pod asks for a claim (0: no annotation).
func claimSize(p *Pod, claim string) (int64, error) {
	s, ok := p.Annotations[ClaimSizeAnnotation+claim]
	if !ok {
		return 0, nil
	}
	q, err := resource.ParseQuantity(s)
	if err != nil || q.Sign() <= 0 {
		return 0, fmt.Errorf("metadata.annotations[%s%s]: %q is not a positive size such as 2Gi", ClaimSizeAnnotation, claim, s)
	}
	return q.Value(), nil
}

// checkHostPath checks a hostPath volume's type; with create, it makes
// what the *OrCreate types ask for.
func checkHostPath(h *corev1.HostPathVolumeSource, create bool) error {
	t := corev1.HostPathUnset
	if h.Type != nil {
		t = *h.Type
	}
	fi, err := os.Stat(h.Path)
	switch t {
	case corev1.HostPathUnset:
		return nil
	case corev1.HostPathDirectoryOrCreate:
		if errors.Is(err, os.ErrNotExist) {
			if !create {
				return nil
			}
			return os.MkdirAll(h.Path, 0o755)
		}
		if err == nil && !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", h.Path)
		}
	case corev1.HostPathFileOrCreate:
		if errors.Is(err, os.ErrNotExist) {
			if !create {
				return nil
			}
			if err := os.MkdirAll(filepath.Dir(h.Path), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(h.Path, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			return f.Close()
		}
		if err == nil && !fi.Mode().IsRegular() {
			return fmt.Errorf("%s exists and is not a file", h.Path)
		}
	default:
		if err != nil {
			return fmt.Errorf("type %s: %w", t, err)
		}
		want := map[corev1.HostPathType]struct {
			ok   bool
			what string
		}{
			corev1.HostPathDirectory: {fi.IsDir(), "a directory"},
			corev1.HostPathFile:      {fi.Mode().IsRegular(), "a file"},
			corev1.HostPathSocket:    {fi.Mode()&fs.ModeSocket != 0, "a socket"},
			corev1.HostPathCharDev:   {fi.Mode()&fs.ModeCharDevice != 0, "a character device"},
			corev1.HostPathBlockDev:  {fi.Mode()&fs.ModeDevice != 0 && fi.Mode()&fs.ModeCharDevice == 0, "a block device"},
		}[t]
		if !want.ok {
			return fmt.Errorf("type %s: %s is not %s", t, h.Path, want.what)
		}
	}
	return err
}

// recordVolume adds (or replaces) a volume's record before it is made, so
// that an interrupted setup is undone by whoever deletes the pod.
func (n *Node) recordVolume(ctx context.Context, key string, vr VolumeRecord) error {
	return n.st.Update(ctx, func(st *State) error {
		r := st.Pods[key]
		if r == nil {
			return fmt.Errorf("pod %s is no longer in the state (deleted meanwhile?)", key)
		}
		for i, old := range r.Volumes {
			if old.Name == vr.Name && old.Kind == vr.Kind && old.Path == vr.Path {
				r.Volumes[i] = vr
				return nil
			}
		}
		r.Volumes = append(r.Volumes, vr)
		return nil
	})
}

// setupVolumes makes every volume of the pod ready, in order. It is
// idempotent (staging and publishing are), so adoption runs it again: after
// a reboot it mounts again what is gone.
func (n *Node) setupVolumes(ctx context.Context, p *Pod, uid string) error {
	key := p.Key()
	var fsGroup *int64
	if sc := p.Spec.SecurityContext; sc != nil {
		fsGroup = sc.FSGroup
	}
	for _, v := range p.Spec.Volumes {
		var err error
		switch {
		case v.EmptyDir != nil:
			err = n.setupEmptyDir(ctx, key, uid, v.Name, v.EmptyDir, fsGroup)
		case v.HostPath != nil:
			if err = checkHostPath(v.HostPath, true); err == nil {
				err = n.recordVolume(ctx, key, VolumeRecord{Name: v.Name, Kind: volHostPath, Path: v.HostPath.Path})
			}
		case v.CSI != nil:
			err = n.publishInline(ctx, p, uid, v.Name, v.CSI, fsGroup)
		case v.PersistentVolumeClaim != nil:
			err = n.publishClaim(ctx, p, uid, v.Name, v.PersistentVolumeClaim, fsGroup)
		case v.Image != nil:
			if err = n.ensureImage(ctx, v.Image.Reference, v.Image.PullPolicy); err == nil {
				err = n.recordVolume(ctx, key, VolumeRecord{Name: v.Name, Kind: volImage, Image: v.Image.Reference, ReadOnly: true})
			}
		}
		if err != nil {
			return volumeError(p, v.Name, err)
		}
	}
	return n.setupSubPaths(ctx, p, uid)
}

func (n *Node) setupEmptyDir(ctx context.Context, key, uid, name string, e *corev1.EmptyDirVolumeSource, fsGroup *int64) error {
	dir := n.volumeDir(uid, "empty-dir", name)
	kind := volEmptyDir
	if e.Medium == corev1.StorageMediumMemory {
		kind = volMemory
	}
	if err := n.recordVolume(ctx, key, VolumeRecord{Name: name, Kind: kind, Path: dir}); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if kind == volMemory && !isMount(dir) {
		opts := "mode=0777"
		if e.SizeLimit != nil && e.SizeLimit.Sign() > 0 {
			opts += fmt.Sprintf(",size=%d", e.SizeLimit.Value())
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
			return fmt.Errorf("emptyDir.medium Memory: mount tmpfs at %s: %w", dir, err)
		}
	}
	mode := os.FileMode(0o777)
	if e.Mode != nil {
		mode = os.FileMode(*e.Mode & 0o777)
	}
	if err := os.Chmod(dir, mode); err != nil {
		return err
	}
	return applyFSGroup(dir, fsGroup)
}

func (n *Node) publishInline(ctx context.Context, p *Pod, uid, name string, src *corev1.CSIVolumeSource, fsGroup *int64) error {
	c, err := n.csiClient(ctx)
	if err != nil {
		return err
	}
	if src.Driver != c.name {
		return fmt.Errorf("csi.driver: unknown CSI driver %q (this node has %s)", src.Driver, c.name)
	}
	target := filepath.Join(n.volumeDir(uid, "csi", name), "mount")
	handle := inlineHandle(uid, name)
	ro := src.ReadOnly != nil && *src.ReadOnly
	if err := n.recordVolume(ctx, p.Key(), VolumeRecord{Name: name, Kind: volInline, Path: target, Handle: handle, ReadOnly: ro}); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return err
	}
	vc := podInfo(p, uid, true)
	for k, v := range src.VolumeAttributes {
		vc[k] = v
	}
	fsType := ""
	if src.FSType != nil {
		fsType = *src.FSType
	}
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	if _, err := c.node.NodePublishVolume(cctx, &csi.NodePublishVolumeRequest{
		VolumeId: handle, TargetPath: target, VolumeCapability: mountCap(fsType), Readonly: ro, VolumeContext: vc,
	}); err != nil {
		return fmt.Errorf("csi: NodePublishVolume: %w", err)
	}
	if !ro {
		return applyFSGroup(target, fsGroup)
	}
	return nil
}

// ensureClaim returns the claim's record, creating its volume on first
// use. created says this call made it.
func (n *Node) ensureClaim(ctx context.Context, p *Pod, claim string) (cr *ClaimRecord, created bool, err error) {
	key := p.Namespace + "/" + claim
	size, err := claimSize(p, claim)
	if err != nil {
		return nil, false, err
	}
	c, err := n.csiClient(ctx)
	if err != nil {
		return nil, false, err
	}
	// Recorded before CreateVolume: the name is derived from the claim, so
	// a process that dies in between leaves a record whose volume a retry
	// (or delete --claims) finds again.
	err = n.st.Update(ctx, func(st *State) error {
		if old := st.Claims[key]; old != nil {
			cr = old
			if size != 0 && old.VolumeID != "" && size != old.Size {
				return fmt.Errorf("metadata.annotations[%s%s]: claim %s exists with %s (tripod delete --claims removes it)",
					ClaimSizeAnnotation, claim, key, resource.NewQuantity(old.Size, resource.BinarySI))
			}
			return nil
		}
		if size == 0 {
			size = DefaultClaimSize
		}
		cr = &ClaimRecord{Namespace: p.Namespace, Name: claim, CSIName: claimCSIName(key), Size: size}
		st.Claims[key] = cr
		created = true
		return nil
	})
	if err != nil || cr.VolumeID != "" {
		return cr, created, err
	}
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	resp, err := c.ctrl.CreateVolume(cctx, &csi.CreateVolumeRequest{
		Name: cr.CSIName, CapacityRange: &csi.CapacityRange{RequiredBytes: cr.Size},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap("")},
	})
	if err != nil {
		return cr, created, fmt.Errorf("claim %s: CreateVolume: %w", key, err)
	}
	err = n.st.Update(ctx, func(st *State) error {
		r := st.Claims[key]
		if r == nil {
			return fmt.Errorf("claim %s was deleted meanwhile", key)
		}
		r.VolumeID, r.Size, r.Context = resp.Volume.VolumeId, resp.Volume.CapacityBytes, resp.Volume.VolumeContext
		r.Created = timeNow()
		cr = r
		return nil
	})
	if err == nil {
		n.event(p.Key(), "created claim %s (%s, CSI volume %s)", key, resource.NewQuantity(cr.Size, resource.BinarySI), cr.VolumeID)
	}
	return cr, created, err
}

func (n *Node) publishClaim(ctx context.Context, p *Pod, uid, name string, src *corev1.PersistentVolumeClaimVolumeSource, fsGroup *int64) error {
	c, err := n.csiClient(ctx)
	if err != nil {
		return err
	}
	claimKey := p.Namespace + "/" + src.ClaimName
	cr, created, err := n.ensureClaim(ctx, p, src.ClaimName)
	if created {
		if uerr := n.st.pod(ctx, p.Key(), func(r *PodRecord) { r.ClaimsCreated = append(r.ClaimsCreated, claimKey) }); uerr != nil && err == nil {
			err = uerr
		}
	}
	if err != nil {
		return err
	}
	target := filepath.Join(n.volumeDir(uid, "csi", name), "mount")
	if err := n.recordVolume(ctx, p.Key(), VolumeRecord{Name: name, Kind: volClaim, Path: target, Handle: cr.VolumeID, Claim: claimKey, ReadOnly: src.ReadOnly}); err != nil {
		return err
	}
	staging := ""
	if c.stage {
		staging = n.claimStaging(claimKey)
		if err := n.st.Update(ctx, func(st *State) error {
			if r := st.Claims[claimKey]; r != nil {
				r.Staging = staging
			}
			return nil
		}); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(staging), 0o750); err != nil {
			return err
		}
		cctx, cancel := withTimeout(ctx)
		_, err := c.node.NodeStageVolume(cctx, &csi.NodeStageVolumeRequest{
			VolumeId: cr.VolumeID, StagingTargetPath: staging, VolumeCapability: mountCap(""), VolumeContext: cr.Context,
		})
		cancel()
		if err != nil {
			return fmt.Errorf("claim %s: NodeStageVolume: %w", claimKey, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return err
	}
	vc := podInfo(p, uid, false)
	for k, v := range cr.Context {
		vc[k] = v
	}
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	if _, err := c.node.NodePublishVolume(cctx, &csi.NodePublishVolumeRequest{
		VolumeId: cr.VolumeID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap(""),
		Readonly: src.ReadOnly, VolumeContext: vc,
	}); err != nil {
		return fmt.Errorf("claim %s: NodePublishVolume: %w", claimKey, err)
	}
	if !src.ReadOnly {
		return applyFSGroup(target, fsGroup)
	}
	return nil
}

// applyFSGroup gives a volume to the pod's fsGroup as kubelet does for
// emptyDir and for CSI drivers with fsGroupPolicy File: group-owned,
// group-writable, directories setgid. As fsGroupChangePolicy
// OnRootMismatch: a root already right is taken to mean the rest is.
func applyFSGroup(root string, gid *int64) error {
	if gid == nil {
		return nil
	}
	g := int(*gid)
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return err
	}
	if int(st.Gid) == g && st.Mode&unix.S_ISGID != 0 && st.Mode&0o070 == 0o070 {
		return nil
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return unix.Lchown(p, -1, g)
		}
		if err := os.Lchown(p, -1, g); err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		mode := fi.Mode()
		perm := mode.Perm() | 0o060
		if d.IsDir() {
			perm |= 0o010
			return os.Chmod(p, perm|os.ModeSetgid|(mode&os.ModeSticky))
		}
		return os.Chmod(p, perm|(mode&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)))
	})
}

// setupSubPaths bind-mounts every volumeMount's subPath, resolved inside
// its volume without following symlinks out of it, at a path of the pod's
// that the container then mounts (kubelet's volume-subpaths).
func (n *Node) setupSubPaths(ctx context.Context, p *Pod, uid string) error {
	st, err := n.st.Load(ctx)
	if err != nil {
		return err
	}
	r := st.Pods[p.Key()]
	if r == nil {
		return fmt.Errorf("pod %s is no longer in the state", p.Key())
	}
	paths := map[string]string{}
	for _, v := range r.Volumes {
		if v.Kind != volSubPath && v.Kind != volImage {
			paths[v.Name] = v.Path
		}
	}
	for _, ct := range allContainers(p) {
		for i, m := range ct.c.VolumeMounts {
			if m.SubPath == "" {
				continue
			}
			src, ok := paths[m.Name]
			if !ok {
				continue
			}
			dst := filepath.Join(n.podDir(uid), "volume-subpaths", m.Name, ct.c.Name, fmt.Sprint(i))
			if err := n.recordVolume(ctx, p.Key(), VolumeRecord{Name: m.Name, Kind: volSubPath, Path: dst}); err != nil {
				return err
			}
			if isMount(dst) {
				continue
			}
			if err := bindSubPath(src, m.SubPath, dst); err != nil {
				return fmt.Errorf("%s.volumeMounts[%d].subPath: %w", ct.field, i, err)
			}
		}
	}
	return nil
}

// bindSubPath opens sub inside root one component at a time without
// following symlinks (creating missing directories, as kubelet does), and
// bind-mounts what it opened at dst through its /proc/self/fd link.
func bindSubPath(root, sub, dst string) error {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	parts := strings.Split(filepath.Clean(sub), "/")
	for i, part := range parts {
		next, err := unix.Openat(fd, part, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			if err := unix.Mkdirat(fd, part, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				unix.Close(fd)
				return err
			}
			next, err = unix.Openat(fd, part, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("%s: %w", strings.Join(parts[:i+1], "/"), err)
		}
		fd = next
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			unix.Close(fd)
			return fmt.Errorf("%s is a symbolic link", strings.Join(parts[:i+1], "/"))
		}
		if i < len(parts)-1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			unix.Close(fd)
			return fmt.Errorf("%s is not a directory", strings.Join(parts[:i+1], "/"))
		}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := os.Mkdir(dst, 0o750); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	} else {
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o640)
		if err != nil {
			return err
		}
		f.Close()
	}
	return unix.Mount(fmt.Sprintf("/proc/self/fd/%d", fd), dst, "", unix.MS_BIND, "")
}

// teardownVolumes undoes the pod's volumes in reverse order, dropping each
// record once undone; with pods holding the remaining users of claims
// taken into account, a claim no pod publishes any more is unstaged.
func (n *Node) teardownVolumes(ctx context.Context, key string) error {
	st, err := n.st.Load(ctx)
	if err != nil {
		return err
	}
	r := st.Pods[key]
	if r == nil {
		return nil
	}
	var errs []error
	for i := len(r.Volumes) - 1; i >= 0; i-- {
		v := r.Volumes[i]
		if err := n.teardownVolume(ctx, key, v); err != nil {
			errs = append(errs, fmt.Errorf("volume %s (%s): %w", v.Name, v.Kind, err))
			continue
		}
		if err := n.st.pod(ctx, key, func(r *PodRecord) {
			for j, old := range r.Volumes {
				if old == v {
					r.Volumes = append(r.Volumes[:j], r.Volumes[j+1:]...)
					break
				}
			}
		}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (n *Node) teardownVolume(ctx context.Context, key string, v VolumeRecord) error {
	switch v.Kind {
	case volSubPath, volMemory:
		if isMount(v.Path) {
			if err := unix.Unmount(v.Path, 0); err != nil {
				return fmt.Errorf("unmount %s: %w", v.Path, err)
			}
		}
		if v.Kind == volSubPath {
			os.Remove(v.Path)
		}
		return nil
	case volInline, volClaim:
		c, err := n.csiClient(ctx)
		if err != nil {
			return err
		}
		if v.Handle != "" {
			cctx, cancel := withTimeout(ctx)
			_, err = c.node.NodeUnpublishVolume(cctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.Handle, TargetPath: v.Path})
			cancel()
			if err != nil && status.Code(err) != codes.NotFound {
				return fmt.Errorf("NodeUnpublishVolume: %w", err)
			}
		}
		if isMount(v.Path) {
			return fmt.Errorf("%s is still mounted after NodeUnpublishVolume", v.Path)
		}
		if v.Kind == volClaim {
			return n.unstageIfUnused(ctx, key, v.Claim)
		}
	}
	return nil
}

// unstageIfUnused unstages a claim that no pod other than except
// publishes.
func (n *Node) unstageIfUnused(ctx context.Context, except, claim string) error {
	st, err := n.st.Load(ctx)
	if err != nil {
		return err
	}
	cr := st.Claims[claim]
	if cr == nil || cr.Staging == "" || cr.VolumeID == "" {
		return nil
	}
	if users := claimUsers(st, claim, except); len(users) > 0 {
		return nil
	}
	c, err := n.csiClient(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := withTimeout(ctx)
	_, err = c.node.NodeUnstageVolume(cctx, &csi.NodeUnstageVolumeRequest{VolumeId: cr.VolumeID, StagingTargetPath: cr.Staging})
	cancel()
	if err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("claim %s: NodeUnstageVolume: %w", claim, err)
	}
	return n.st.Update(ctx, func(st *State) error {
		if r := st.Claims[claim]; r != nil {
			r.Staging = ""
		}
		return nil
	})
}

// claimUsers are the pods (other than except) with a volume on claim.
func claimUsers(st *State, claim, except string) []string {
	var out []string
	for k, r := range st.Pods {
		if k == except {
			continue
		}
		for _, v := range r.Volumes {
			if v.Kind == volClaim && v.Claim == claim {
				out = append(out, k)
				break
			}
		}
	}
	return out
}

// deleteClaim removes a claim's volume through the CSI controller. A
// record whose creation was interrupted (no volume ID yet) is created again
// by name, which finds the same volume, and then deleted.
func (n *Node) deleteClaim(ctx context.Context, claim string) error {
	st, err := n.st.Load(ctx)
	if err != nil {
		return err
	}
	cr := st.Claims[claim]
	if cr == nil {
		return nil
	}
	if users := claimUsers(st, claim, ""); len(users) > 0 {
		return fmt.Errorf("claim %s is used by %s", claim, strings.Join(users, ", "))
	}
	c, err := n.csiClient(ctx)
	if err != nil {
		return err
	}
	id := cr.VolumeID
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	if id == "" {
		resp, err := c.ctrl.CreateVolume(cctx, &csi.CreateVolumeRequest{
			Name: cr.CSIName, CapacityRange: &csi.CapacityRange{RequiredBytes: cr.Size}, VolumeCapabilities: []*csi.VolumeCapability{mountCap("")},
		})
		if err != nil {
			return fmt.Errorf("claim %s: find its volume: %w", claim, err)
		}
		id = resp.Volume.VolumeId
	}
	if cr.Staging != "" {
		if _, err := c.node.NodeUnstageVolume(cctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: cr.Staging}); err != nil && status.Code(err) != codes.NotFound {
			return fmt.Errorf("claim %s: NodeUnstageVolume: %w", claim, err)
		}
	}
	if _, err := c.ctrl.DeleteVolume(cctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("claim %s: DeleteVolume: %w", claim, err)
	}
	os.RemoveAll(filepath.Dir(n.claimStaging(claim)))
	ns := filepath.Dir(filepath.Dir(n.claimStaging(claim)))
	os.Remove(ns) // the namespace's directory, once empty
	return n.st.Update(ctx, func(st *State) error {
		delete(st.Claims, claim)
		return nil
	})
}

// isMount reports whether p is a mount point.
func isMount(p string) bool {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &stx); err != nil {
		return false
	}
	return stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
}

// removeTree removes a pod's directory, but never through a mount: a
// volume still mounted below it (an unpublish that failed) is reported,
// and its data kept.
func removeTree(dir string) error {
	m, err := mountinfo.Under(dir)
	if err != nil {
		return err
	}
	if len(m) > 0 {
		return fmt.Errorf("%s still holds mounts (%s): not removed", dir, strings.Join(m, ", "))
	}
	return os.RemoveAll(dir)
}
