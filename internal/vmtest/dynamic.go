package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// DynamicBinary is a dynamically linked host binary for the VM, at dst,
// with the shared libraries and the dynamic loader it needs at their host
// paths (the VM has none of its own). ldd resolves them, as the host's
// loader would, dependencies of dependencies included.
func DynamicBinary(ctx context.Context, src, dst string) ([]File, error) {
	out, err := exec.CommandContext(ctx, "ldd", src).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", src, err)
	}
	libs, err := parseLdd(out)
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", src, err)
	}
	files := []File{{Path: dst, Src: src, Exec: true}}
	for _, l := range libs {
		files = append(files, File{Path: l, Src: l, Exec: true})
	}
	return files, nil
}

// parseLdd reads ldd's output: "name => /path (addr)" for each library,
// "/path/to/ld.so (addr)" for the loader, and no path for the vDSO. A
// library ldd could not find is an error.
func parseLdd(out []byte) ([]string, error) {
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "linux-vdso") || strings.Contains(line, "statically linked") {
			continue
		}
		if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("missing library: %s", line)
		}
		p := line
		if _, after, ok := strings.Cut(line, "=>"); ok {
			p = strings.TrimSpace(after)
		}
		p, _, _ = strings.Cut(p, " (")
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("unexpected ldd line %q", line)
		}
		libs = append(libs, p)
	}
	return libs, nil
}
