package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Unlimited is what a limit read as "max" (v2) or as the v1 "no limit"
// value (near 2^63, rounded to a page) becomes.
const Unlimited = math.MaxUint64

// readString reads a cgroup file; ok is false when the kernel does not
// provide it (no such controller or file on this host).
func readString(dir, name string) (string, bool, error) {
	if dir == "" {
		return "", false, nil
	}
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("cgroup %s: %w", filepath.Join(dir, name), err)
	}
	return strings.TrimSpace(string(b)), true, nil
}

// parseUint parses a single-value file: a number, or "max".
func parseUint(s string) (uint64, error) {
	if s == "max" {
		return Unlimited, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		// A v1 limit file may hold -1 for "no limit".
		if n, err2 := strconv.ParseInt(s, 10, 64); err2 == nil && n < 0 {
			return Unlimited, nil
		}
		return 0, fmt.Errorf("not a number: %q", s)
	}
	// v1 reports "no limit" as PAGE_COUNTER_MAX pages in bytes.
	if v >= 1<<62 {
		return Unlimited, nil
	}
	return v, nil
}

func readUint(dir, name string) (uint64, bool, error) {
	s, ok, err := readString(dir, name)
	if !ok || err != nil {
		return 0, ok, err
	}
	v, err := parseUint(s)
	if err != nil {
		return 0, false, fmt.Errorf("cgroup %s: %w", filepath.Join(dir, name), err)
	}
	return v, true, nil
}

// readKeyed reads a flat keyed file ("key value" per line: memory.stat,
// cpu.stat, memory.events, memory.oom_control, cpuacct.stat).
func readKeyed(dir, name string) (map[string]uint64, error) {
	s, ok, err := readString(dir, name)
	if !ok || err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		out[k] = n
	}
	return out, nil
}

// readInts reads a file of integers (cgroup.procs, cpuacct.usage_percpu).
func readInts(dir, name string) ([]uint64, bool, error) {
	s, ok, err := readString(dir, name)
	if !ok || err != nil {
		return nil, ok, err
	}
	var out []uint64
	for _, f := range strings.Fields(s) {
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return nil, false, fmt.Errorf("cgroup %s: %q is not a number", filepath.Join(dir, name), f)
		}
		out = append(out, n)
	}
	return out, true, nil
}

func writeFile(dir, name, value string) error {
	if dir == "" {
		return fmt.Errorf("%s: the controller is not mounted: %w", name, fs.ErrNotExist)
	}
	p := filepath.Join(dir, name)
	// One value per write(2); O_TRUNC is a no-op on cgroupfs and keeps
	// regular files (tests) exact.
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", p, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, p, err)
	}
	return nil
}
