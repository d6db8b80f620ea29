package oci

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/seccomp"
)

// Profile kinds of seccomp and AppArmor, as the CRI names them.
const (
	ProfileUnconfined     = "unconfined" // also the meaning of ""
	ProfileRuntimeDefault = "runtime/default"
	ProfileLocalhost      = "localhost"
)

// Profile selects a seccomp or AppArmor profile.
type Profile struct {
	Kind string `json:"kind,omitempty"`
	// Ref is the profile file's absolute path (seccomp) or the loaded
	// profile's name (AppArmor), for ProfileLocalhost.
	Ref string `json:"ref,omitempty"`
}

// Security is a container's security context beyond its user and the
// privileged and read-only flags.
type Security struct {
	SupplementalGroups []int64 `json:"supplementalGroups,omitempty"`
	// StrictGroups leaves out the groups the image's /etc/group gives the
	// user (SupplementalGroupsPolicy Strict).
	StrictGroups bool `json:"strictGroups,omitempty"`
	NoNewPrivs   bool `json:"noNewPrivs,omitempty"`
	// Capabilities added to and dropped from the default set ("ALL" or
	// names with or without CAP_); ambient ones are also added.
	CapAdd     []string `json:"capAdd,omitempty"`
	CapDrop    []string `json:"capDrop,omitempty"`
	CapAmbient []string `json:"capAmbient,omitempty"`
	// MaskedPaths and ReadonlyPaths replace the defaults unless nil; an
	// empty, non-nil list masks nothing.
	MaskedPaths   []string `json:"maskedPaths"`
	ReadonlyPaths []string `json:"readonlyPaths"`
	Seccomp       Profile  `json:"seccomp,omitzero"`
	AppArmor      Profile  `json:"apparmor,omitzero"`
}

// IDMap is a user namespace's mappings.
type IDMap struct {
	UIDs []specs.LinuxIDMapping `json:"uids"`
	GIDs []specs.LinuxIDMapping `json:"gids"`
}

// defaultCaps is the capability set kubelet expects containers to have
// unless told otherwise (the Docker set).
var defaultCaps = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}

var (
	defaultMasked = []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"}
	defaultReadonly = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// applySecurity sets the process's capabilities, no_new_privs, seccomp and
// AppArmor profiles, the masked and read-only paths, and a privileged
// container's host devices.
func applySecurity(s *specs.Spec, in Input) error {
	sec := in.Security
	caps, ambient, err := capabilities(sec, in.Privileged)
	if err != nil {
		return err
	}
	s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
	if len(ambient) > 0 {
		s.Process.Capabilities.Inheritable = ambient
		s.Process.Capabilities.Ambient = ambient
	}
	s.Process.NoNewPrivileges = sec.NoNewPrivs
	if in.Privileged {
		// No seccomp, AppArmor or masking: the CRI's privileged mode.
		devs, err := hostDevices("/dev")
		if err != nil {
			return err
		}
		// Devices the container names itself win over the host's.
		devs = slices.DeleteFunc(devs, func(h specs.LinuxDevice) bool {
			return slices.ContainsFunc(in.Devices, func(d Device) bool { return d.ContainerPath == h.Path || d.ContainerPath == "" && d.HostPath == h.Path })
		})
		s.Linux.Devices = append(devs, s.Linux.Devices...)
		return nil
	}
	if s.Linux.Seccomp, err = seccompFor(sec.Seccomp, caps); err != nil {
		return err
	}
	if s.Process.ApparmorProfile, err = apparmorFor(sec.AppArmor, "/sys/kernel/security"); err != nil {
		return err
	}
	s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = defaultMasked, defaultReadonly
	if sec.MaskedPaths != nil {
		s.Linux.MaskedPaths = sec.MaskedPaths
	}
	if sec.ReadonlyPaths != nil {
		s.Linux.ReadonlyPaths = sec.ReadonlyPaths
	}
	return nil
}

// capabilities works out the container's capability set: all for a
// privileged container, else the default set with "ALL" adds and drops
// applied first and the named ones after (so ALL minus one, or none plus
// one, can be asked for). Everything is kept within tripodd's own bounding
// set.
func capabilities(sec Security, privileged bool) (caps, ambient []string, err error) {
	if privileged {
		return bounded(allCaps()), nil, nil
	}
	norm := func(field string, names []string) ([]string, bool, error) {
		var out []string
		all := false
		for _, n := range names {
			c := strings.ToUpper(strings.TrimSpace(n))
			if c == "ALL" {
				all = true
				continue
			}
			if !strings.HasPrefix(c, "CAP_") {
				c = "CAP_" + c
			}
			if !slices.Contains(allCaps(), c) {
				return nil, false, fmt.Errorf("capabilities.%s: %q is not a Linux capability", field, n)
			}
			out = append(out, c)
		}
		return out, all, nil
	}
	add, addAll, err := norm("add_capabilities", sec.CapAdd)
	if err != nil {
		return nil, nil, err
	}
	drop, dropAll, err := norm("drop_capabilities", sec.CapDrop)
	if err != nil {
		return nil, nil, err
	}
	amb, _, err := norm("add_ambient_capabilities", sec.CapAmbient)
	if err != nil {
		return nil, nil, err
	}
	caps = slices.Clone(defaultCaps)
	if addAll {
		caps = allCaps()
	}
	if dropAll {
		caps = nil
	}
	caps = append(caps, add...)
	caps = append(caps, amb...)
	caps = slices.DeleteFunc(caps, func(c string) bool { return slices.Contains(drop, c) })
	caps = bounded(dedup(caps))
	amb = slices.DeleteFunc(dedup(amb), func(c string) bool { return !slices.Contains(caps, c) })
	return caps, amb, nil
}

func dedup(l []string) []string {
	seen := map[string]bool{}
	return slices.DeleteFunc(l, func(s string) bool {
		d := seen[s]
		seen[s] = true
		return d
	})
}

// seccompFor builds the container's seccomp section: none when
// unconfined (the CRI's default for an empty profile), tripod's own
// RuntimeDefault, or a Localhost profile file.
func seccompFor(p Profile, caps []string) (*specs.LinuxSeccomp, error) {
	switch p.Kind {
	case "", ProfileUnconfined:
		return nil, nil
	case ProfileRuntimeDefault:
		return seccomp.Default(caps), nil
	case ProfileLocalhost:
		return seccomp.Load(p.Ref, caps)
	}
	return nil, fmt.Errorf("seccomp: unknown profile kind %q", p.Kind)
}

// apparmorFor names the AppArmor profile to apply. A Localhost profile
// must be loaded in the kernel; on a host without AppArmor asking for one
// is an error, while RuntimeDefault and Unconfined mean no profile (tripod
// ships no AppArmor profile of its own).
func apparmorFor(p Profile, securityfs string) (string, error) {
	switch p.Kind {
	case "", ProfileUnconfined, ProfileRuntimeDefault:
		return "", nil
	case ProfileLocalhost:
	default:
		return "", fmt.Errorf("apparmor: unknown profile kind %q", p.Kind)
	}
	name := strings.TrimPrefix(p.Ref, "localhost/")
	if name == "" {
		return "", fmt.Errorf("apparmor: a localhost profile needs a name")
	}
	f, err := os.Open(filepath.Join(securityfs, "apparmor", "profiles"))
	if err != nil {
		if _, serr := os.Stat(filepath.Join(securityfs, "apparmor")); serr != nil {
			return "", fmt.Errorf("apparmor: profile %q was asked for, but AppArmor is not enabled on this host (no %s)", name, filepath.Join(securityfs, "apparmor"))
		}
		return "", fmt.Errorf("apparmor: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Lines read "<name> (<mode>)".
		if loaded, _, _ := strings.Cut(sc.Text(), " ("); loaded == name {
			return name, nil
		}
	}
	return "", fmt.Errorf("apparmor: profile %q is not loaded", name)
}

// hostDevices lists the device nodes under dir (the host's /dev) for a
// privileged container, leaving out the pseudo-terminal and shared-memory
// trees and the nodes the runtime makes itself.
func hostDevices(dir string) ([]specs.LinuxDevice, error) {
	var out []specs.LinuxDevice
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == dir {
				return err
			}
			return nil // a node that vanished meanwhile
		}
		if d.IsDir() {
			switch d.Name() {
			case "pts", "shm", "mqueue", "fd", ".lxc", ".lxd-mounts", ".udev":
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type()&fs.ModeDevice == 0 || d.Name() == "console" || d.Name() == "ptmx" {
			return nil
		}
		var st unix.Stat_t
		if unix.Lstat(path, &st) != nil {
			return nil
		}
		typ := "c"
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			typ = "b"
		}
		mode := os.FileMode(st.Mode & 0o777)
		uid, gid := st.Uid, st.Gid
		out = append(out, specs.LinuxDevice{Path: path, Type: typ, Major: int64(unix.Major(st.Rdev)), Minor: int64(unix.Minor(st.Rdev)),
			FileMode: &mode, UID: &uid, GID: &gid})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("host devices: %w", err)
	}
	return out, nil
}
