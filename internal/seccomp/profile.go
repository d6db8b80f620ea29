package seccomp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// profile is a seccomp profile file: the OCI LinuxSeccomp fields plus the
// conditions Docker-style profiles carry (archMap, per-rule includes and
// excludes on capabilities, architectures and kernel version), which are
// resolved here for one container.
type profile struct {
	DefaultAction    specs.LinuxSeccompAction `json:"defaultAction"`
	DefaultErrnoRet  *uint                    `json:"defaultErrnoRet"`
	Architectures    []specs.Arch             `json:"architectures"`
	ArchMap          []archMap                `json:"archMap"`
	Flags            []specs.LinuxSeccompFlag `json:"flags"`
	ListenerPath     string                   `json:"listenerPath"`
	ListenerMetadata string                   `json:"listenerMetadata"`
	Syscalls         []rule                   `json:"syscalls"`
}

type archMap struct {
	Arch specs.Arch   `json:"architecture"`
	Sub  []specs.Arch `json:"subArchitectures"`
}

type rule struct {
	Name     string                   `json:"name"`
	Names    []string                 `json:"names"`
	Action   specs.LinuxSeccompAction `json:"action"`
	ErrnoRet *uint                    `json:"errnoRet"`
	Args     []specs.LinuxSeccompArg  `json:"args"`
	Includes *cond                    `json:"includes"`
	Excludes *cond                    `json:"excludes"`
}

type cond struct {
	Caps      []string `json:"caps"`
	Arches    []string `json:"arches"`
	MinKernel string   `json:"minKernel"`
}

// env is what a profile's conditions are decided on.
type env struct {
	caps   []string
	goarch string
	kernel [2]int
}

// Load reads the Localhost profile at path for a container with the given
// capabilities. The path must be absolute; a missing, unreadable or
// malformed file is an error that names it.
func Load(path string, caps []string) (*specs.LinuxSeccomp, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("seccomp profile %q: the path must be absolute", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("seccomp profile: %w", err)
	}
	s, err := parse(b, env{caps: caps, goarch: runtime.GOARCH, kernel: kernelVersion()})
	if err != nil {
		return nil, fmt.Errorf("seccomp profile %s: %w", path, err)
	}
	return s, nil
}

func parse(b []byte, e env) (*specs.LinuxSeccomp, error) {
	var p profile
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("not a JSON seccomp profile: %w", err)
	}
	if dec.More() {
		return nil, errors.New("not a JSON seccomp profile: data after the object")
	}
	if !validAction(p.DefaultAction) {
		return nil, fmt.Errorf("defaultAction %q is not a seccomp action", p.DefaultAction)
	}
	s := &specs.LinuxSeccomp{DefaultAction: p.DefaultAction, DefaultErrnoRet: p.DefaultErrnoRet, Flags: p.Flags,
		ListenerPath: p.ListenerPath, ListenerMetadata: p.ListenerMetadata, Architectures: p.Architectures}
	for _, f := range p.Flags {
		if !slices.Contains(knownFlags, f) {
			return nil, fmt.Errorf("flag %q is not a seccomp filter flag", f)
		}
	}
	if len(s.Architectures) == 0 {
		native := nativeArches(e.goarch)
		for _, m := range p.ArchMap {
			if len(native) > 0 && m.Arch == native[0] {
				s.Architectures = append([]specs.Arch{m.Arch}, m.Sub...)
			}
		}
	}
	for _, a := range s.Architectures {
		if !strings.HasPrefix(string(a), "SCMP_ARCH_") {
			return nil, fmt.Errorf("architecture %q is not a seccomp architecture", a)
		}
	}
	for i, r := range p.Syscalls {
		names := r.Names
		if r.Name != "" {
			names = append([]string{r.Name}, names...)
		}
		if len(names) == 0 {
			return nil, fmt.Errorf("syscalls[%d]: no syscall names", i)
		}
		if !validAction(r.Action) {
			return nil, fmt.Errorf("syscalls[%d]: action %q is not a seccomp action", i, r.Action)
		}
		for _, a := range r.Args {
			if !slices.Contains(knownOps, a.Op) {
				return nil, fmt.Errorf("syscalls[%d]: operator %q is not a seccomp comparison", i, a.Op)
			}
		}
		if r.Includes != nil && !r.Includes.holds(e, true) || r.Excludes != nil && r.Excludes.holds(e, false) {
			continue
		}
		s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: names, Action: r.Action, ErrnoRet: r.ErrnoRet, Args: r.Args})
	}
	return s, nil
}

// holds reports whether c is met: for includes, every condition given; for
// excludes (all false), any one of them.
func (c *cond) holds(e env, all bool) bool {
	var results []bool
	if len(c.Caps) > 0 {
		if all {
			ok := true
			for _, cp := range c.Caps {
				ok = ok && slices.Contains(e.caps, capName(cp))
			}
			results = append(results, ok)
		} else {
			results = append(results, slices.ContainsFunc(c.Caps, func(cp string) bool { return slices.Contains(e.caps, capName(cp)) }))
		}
	}
	if len(c.Arches) > 0 {
		results = append(results, slices.Contains(c.Arches, e.goarch))
	}
	if c.MinKernel != "" {
		v, ok := parseKernel(c.MinKernel)
		results = append(results, ok && (e.kernel[0] > v[0] || e.kernel[0] == v[0] && e.kernel[1] >= v[1]))
	}
	if all {
		return !slices.Contains(results, false)
	}
	return slices.Contains(results, true)
}

func capName(c string) string {
	c = strings.ToUpper(c)
	if !strings.HasPrefix(c, "CAP_") {
		c = "CAP_" + c
	}
	return c
}

var knownActions = []specs.LinuxSeccompAction{specs.ActKill, specs.ActKillProcess, specs.ActKillThread, specs.ActTrap,
	specs.ActErrno, specs.ActTrace, specs.ActAllow, specs.ActLog, specs.ActNotify}

func validAction(a specs.LinuxSeccompAction) bool { return slices.Contains(knownActions, a) }

var knownOps = []specs.LinuxSeccompOperator{specs.OpNotEqual, specs.OpLessThan, specs.OpLessEqual, specs.OpEqualTo,
	specs.OpGreaterEqual, specs.OpGreaterThan, specs.OpMaskedEqual}

var knownFlags = []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagLog, specs.LinuxSeccompFlagSpecAllow,
	specs.LinuxSeccompFlagWaitKillableRecv, "SECCOMP_FILTER_FLAG_TSYNC"}

func kernelVersion() [2]int {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return [2]int{}
	}
	v, _ := parseKernel(unix.ByteSliceToString(u.Release[:]))
	return v
}

// parseKernel reads "major.minor" from a kernel release string.
func parseKernel(s string) ([2]int, bool) {
	parts := strings.SplitN(s, ".", 3)
	if len(parts) < 2 {
		return [2]int{}, false
	}
	minor := parts[1]
	if i := strings.IndexFunc(minor, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minor = minor[:i]
	}
	a, err1 := strconv.Atoi(parts[0])
	b, err2 := strconv.Atoi(minor)
	return [2]int{a, b}, err1 == nil && err2 == nil
}
