package tuning

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tripod-dev/tripod/internal/cni/cnierr"
)

const procSys = "/proc/sys"

// sysctlMap is the "sysctl" object of the config. It remembers keys given
// twice (which a plain map would silently merge) so that the config can be
// refused as the reference plugin does.
type sysctlMap struct {
	m    map[string]string
	dups []string
}

func (s *sysctlMap) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return &json.UnmarshalTypeError{Value: jsonKind(b), Type: reflect.TypeOf(map[string]string(nil)), Field: "sysctl"}
	}
	s.m = map[string]string{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		k := t.(string)
		var v string
		if err := dec.Decode(&v); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) {
				te.Field = "sysctl." + k
			}
			return err
		}
		if _, ok := s.m[k]; ok {
			s.dups = append(s.dups, k)
		}
		s.m[k] = v
	}
	return nil
}

func jsonKind(b []byte) string {
	switch b[0] {
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "bool"
	}
	return "number"
}

// sysctl is one validated key: the name as configured and its path under
// /proc/sys with IFNAME resolved.
type sysctl struct {
	Key   string
	Path  string // relative to /proc/sys, e.g. net/ipv4/conf/eth0/forwarding
	Value string
}

// parseKey turns a configured key into a path under /proc/sys. Keys use
// dots, or slashes when a component (an interface name such as eth0.100)
// itself holds dots, as sysctl(8) does. A component that is exactly IFNAME
// stands for CNI_IFNAME. Only the network subsystem is reachable: the
// first component must be "net" and no component may be empty, "." or "..".
func parseKey(key, ifName string) (string, error) {
	sep := "."
	if strings.Contains(key, "/") {
		sep = "/"
	}
	parts := strings.Split(key, sep)
	for i, p := range parts {
		if p == "IFNAME" {
			parts[i] = ifName
			p = ifName
		}
		if p == "" || p == "." || p == ".." || strings.ContainsAny(p, "/\x00") {
			return "", fmt.Errorf("component %q is not allowed", p)
		}
	}
	if parts[0] != "net" || len(parts) < 2 {
		return "", errors.New("only network sysctls (net.*) can be set")
	}
	return strings.Join(parts, "/"), nil
}

// parseSysctls validates every key and value, returning them sorted by key
// so that writes and error messages are deterministic.
func parseSysctls(s sysctlMap, ifName string) ([]sysctl, error) {
	if len(s.dups) > 0 {
		return nil, cnierr.New(cnierr.InvalidConfig, "sysctl key %q is given more than once", s.dups[0])
	}
	out := make([]sysctl, 0, len(s.m))
	for k, v := range s.m {
		p, err := parseKey(k, ifName)
		if err != nil {
			return nil, cnierr.New(cnierr.InvalidConfig, "sysctl key %q: %v", k, err)
		}
		if strings.ContainsAny(v, "\n\x00") {
			return nil, cnierr.New(cnierr.InvalidConfig, "sysctl %q: value %q holds a newline or NUL", k, v)
		}
		out = append(out, sysctl{Key: k, Path: p, Value: v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// checkAllowlist enforces the administrator's allowlist (one regular
// expression a line, matched against the key as configured) when the file
// exists, as the reference plugin does.
func checkAllowlist(path string, ss []sysctl) error {
	if len(ss) == 0 {
		return nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return cnierr.New(cnierr.IOFailure, "reading sysctl allowlist %s: %v", path, err)
	}
	var res []*regexp.Regexp
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		re, err := regexp.Compile(line)
		if err != nil {
			return cnierr.New(cnierr.InvalidConfig, "sysctl allowlist %s: bad pattern %q: %v", path, line, err)
		}
		res = append(res, re)
	}
next:
	for _, s := range ss {
		for _, re := range res {
			if re.MatchString(s.Key) {
				continue next
			}
		}
		return cnierr.New(cnierr.InvalidConfig, "sysctl %q is not allowed by %s", s.Key, path)
	}
	return nil
}

// readSysctl reads a sysctl of the current thread's network namespace.
func readSysctl(s sysctl) (string, error) {
	b, err := os.ReadFile(filepath.Join(procSys, s.Path))
	if err != nil {
		return "", sysctlErr(s, "reading", err)
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// writeSysctl writes a sysctl of the current thread's network namespace.
func writeSysctl(s sysctl, value string) error {
	f, err := os.OpenFile(filepath.Join(procSys, s.Path), os.O_WRONLY, 0)
	if err != nil {
		return sysctlErr(s, "writing", err)
	}
	_, err = f.Write([]byte(value))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ERANGE) {
			return cnierr.New(cnierr.InvalidConfig, "sysctl %q: the kernel refused value %q (%v)", s.Key, value, unwrapErrno(err))
		}
		return sysctlErr(s, "writing", err)
	}
	return nil
}

func sysctlErr(s sysctl, op string, err error) error {
	p := filepath.Join(procSys, s.Path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return cnierr.New(cnierr.InvalidConfig, "sysctl %q: %s does not exist in the container's network namespace (unknown key, or not a per-namespace sysctl)", s.Key, p)
	case errors.Is(err, unix.EROFS):
		return cnierr.New(cnierr.IOFailure, "sysctl %q: %s is on a read-only file system", s.Key, p)
	case errors.Is(err, os.ErrPermission):
		return cnierr.New(cnierr.InvalidConfig, "sysctl %q: %s is read-only", s.Key, p)
	}
	return cnierr.New(cnierr.IOFailure, "sysctl %q: %s %s: %v", s.Key, op, p, err)
}

func unwrapErrno(err error) error {
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	return err
}

// sameValue compares sysctl values the way the kernel prints them: vector
// values come back tab-separated whatever the separator written.
func sameValue(a, b string) bool {
	return strings.Join(strings.Fields(a), " ") == strings.Join(strings.Fields(b), " ")
}
