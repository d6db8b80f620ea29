package driver

import (
	"maps"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tripod-dev/tripod/internal/csi/mount"
	"github.com/tripod-dev/tripod/internal/csi/state"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
	gib = int64(1) << 30
	// defaultSize is used when CreateVolume names no capacity.
	defaultSize = gib
	// block is the unit volume sizes are rounded up to.
	block = 4 * kib
)

// minSize is the smallest volume of each kind: xfs refuses filesystems under
// 300 MiB; ext4 needs room for its journal.
func minSize(access, fsType string) int64 {
	if access == state.AccessBlock {
		return block
	}
	if fsType == "xfs" {
		return 300 * mib
	}
	return 8 * mib
}

// Keys of the mutable parameters (CreateVolume's mutable_parameters and
// ControllerModifyVolume), applied to the volume's loop device.
const (
	// ParamDirectIO ("true"/"false") makes the loop device bypass the
	// page cache of the backing file: no double caching of volume data.
	ParamDirectIO = "directIO"
	// ParamReadAheadKiB sets the device's read-ahead window.
	ParamReadAheadKiB = "readAheadKiB"
)

// checkMutable validates mutable parameters.
func checkMutable(p map[string]string) error {
	for k, v := range p {
		switch k {
		case ParamDirectIO:
			if _, err := strconv.ParseBool(v); err != nil {
				return status.Errorf(codes.InvalidArgument, "parameter %s=%q: want true or false", k, v)
			}
		case ParamReadAheadKiB:
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 || n > 16384 {
				return status.Errorf(codes.InvalidArgument, "parameter %s=%q: want an integer from 0 to 16384", k, v)
			}
		default:
			return status.Errorf(codes.InvalidArgument, "unknown mutable parameter %q (known: %s, %s)", k, ParamDirectIO, ParamReadAheadKiB)
		}
	}
	return nil
}

// checkParams validates CreateVolume and GetCapacity parameters. The
// mutable keys are accepted here too, so a StorageClass may set them;
// metadata the external-provisioner adds (csi.storage.k8s.io/...) is
// ignored.
func checkParams(p map[string]string) (map[string]string, error) {
	out := map[string]string{}
	mut := map[string]string{}
	for k, v := range p {
		if strings.HasPrefix(k, "csi.storage.k8s.io/") {
			continue
		}
		mut[k] = v
	}
	if err := checkMutable(mut); err != nil {
		return nil, err
	}
	maps.Copy(out, mut)
	return out, nil
}

// parseCaps checks volume capabilities and returns the access type and
// filesystem they ask for. Local volumes live on one node, so MULTI_NODE
// modes cannot be offered.
func (d *Driver) parseCaps(caps []*csi.VolumeCapability) (access, fsType string, err error) {
	if len(caps) == 0 {
		return "", "", status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	for _, c := range caps {
		a, fs, err := d.parseCap(c)
		if err != nil {
			return "", "", err
		}
		if access != "" && a != access {
			return "", "", status.Error(codes.InvalidArgument, "capabilities mix mount and block access")
		}
		if fs != "" && fsType != "" && fs != fsType {
			return "", "", status.Errorf(codes.InvalidArgument, "capabilities ask for two filesystems, %s and %s", fsType, fs)
		}
		access = a
		if fs != "" {
			fsType = fs
		}
	}
	if access == state.AccessMount && fsType == "" {
		fsType = d.cfg.DefaultFsType
	}
	return access, fsType, nil
}

// requireCap parses the capability a request must carry: a missing one is
// refused as required, where parseCap calls it empty.
func (d *Driver) requireCap(c *csi.VolumeCapability) (access, fsType string, err error) {
	if c == nil {
		return "", "", status.Error(codes.InvalidArgument, "volume capability is required")
	}
	return d.parseCap(c)
}

// capFits refuses a capability (as parseCap returns it) that asks for other
// than what v is; an empty fsType fits any filesystem.
func capFits(v *state.Volume, access, fsType string) error {
	if access != v.Access || (fsType != "" && fsType != v.FsType) {
		return status.Errorf(codes.InvalidArgument, "volume is %s %s, capability asks %s %s", v.Access, v.FsType, access, fsType)
	}
	return nil
}

func (d *Driver) parseCap(c *csi.VolumeCapability) (access, fsType string, err error) {
	if c == nil {
		return "", "", status.Error(codes.InvalidArgument, "empty volume capability")
	}
	if err := checkMode(c.GetAccessMode()); err != nil {
		return "", "", err
	}
	switch t := c.GetAccessType().(type) {
	case *csi.VolumeCapability_Mount:
		fs := strings.ToLower(t.Mount.GetFsType())
		if fs != "" && !mount.Supported(fs) {
			return "", "", status.Errorf(codes.InvalidArgument, "filesystem %q not supported (ext4, xfs)", fs)
		}
		if err := checkMountFlags(t.Mount.GetMountFlags()); err != nil {
			return "", "", err
		}
		return state.AccessMount, fs, nil
	case *csi.VolumeCapability_Block:
		return state.AccessBlock, "", nil
	}
	return "", "", status.Error(codes.InvalidArgument, "volume capability needs an access type (mount or block)")
}

func checkMode(m *csi.VolumeCapability_AccessMode) error {
	switch m.GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
		return nil
	case csi.VolumeCapability_AccessMode_UNKNOWN:
		return status.Error(codes.InvalidArgument, "volume capability needs an access mode")
	}
	return status.Errorf(codes.InvalidArgument, "access mode %s not supported: a local volume is reachable from one node only", m.GetMode())
}

func readOnlyMode(c *csi.VolumeCapability) bool {
	return c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
}

// sizeFor picks a volume size from a capacity range: the required bytes
// (or a default) rounded up to whole 4 KiB blocks and raised to the
// filesystem's minimum, all within the limit.
func sizeFor(cr *csi.CapacityRange, min int64) (int64, error) {
	req, lim := cr.GetRequiredBytes(), cr.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Error(codes.InvalidArgument, "capacity range must not be negative")
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.InvalidArgument, "required bytes %d exceed limit bytes %d", req, lim)
	}
	size := req
	if size == 0 {
		size = defaultSize
		if lim > 0 && lim < size {
			size = lim
		}
	}
	size = max(roundUp(size, block), min)
	if lim > 0 && size > lim {
		return 0, status.Errorf(codes.OutOfRange, "no volume size fits between %d and %d bytes (minimum %d, in %d-byte blocks)", req, lim, min, block)
	}
	return size, nil
}

func roundUp(n, unit int64) int64 { return (n + unit - 1) / unit * unit }

// Mount flags a CO may ask for. Anything naming a path or device (ext4's
// journal_path=, xfs's logdev=) is refused: it would reach outside the
// volume.
func checkMountFlags(flags []string) error {
	for _, f := range flags {
		for _, opt := range strings.Split(f, ",") {
			if opt == "" || strings.ContainsAny(opt, "/\x00 ") || strings.Contains(opt, "..") {
				return status.Errorf(codes.InvalidArgument, "mount flag %q not allowed", f)
			}
			name, _, _ := strings.Cut(opt, "=")
			switch name {
			case "journal_path", "journal_dev", "logdev", "rtdev", "source":
				return status.Errorf(codes.InvalidArgument, "mount flag %q not allowed: it names another device", f)
			}
		}
	}
	return nil
}

func sameMap(a, b map[string]string) bool {
	return len(a) == len(b) && maps.Equal(a, b)
}
