package vmtest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// moduleDeps reads modules.dep of a kernel's module tree: for each module
// file (relative path) the module files it needs.
func moduleDeps(modDir string) (map[string][]string, error) {
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("reading the module dependency list: %w (is the kernel's package installed?)", err)
	}
	defer f.Close()
	deps := map[string][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		mod, needs, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(needs)
	}
	return deps, sc.Err()
}

// moduleName is the name modprobe knows a module file by: its base name
// without the .ko suffix and compression extension, dashes as underscores.
func moduleName(file string) string {
	base := path.Base(file)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// resolveModules returns the module files to insert, dependencies first,
// for the named modules.
func resolveModules(deps map[string][]string, names []string) ([]string, error) {
	byName := map[string]string{}
	for file := range deps {
		byName[moduleName(file)] = file
	}
	var order []string
	seen := map[string]bool{}
	var visit func(file string)
	visit = func(file string) {
		if seen[file] {
			return
		}
		seen[file] = true
		// modules.dep lists a module's full dependency closure; visiting
		// each keeps the order right whatever the list's own order is.
		for _, d := range deps[file] {
			visit(d)
		}
		order = append(order, file)
	}
	for _, n := range names {
		file, ok := byName[strings.ReplaceAll(n, "-", "_")]
		if !ok {
			return nil, fmt.Errorf("kernel module %q is not in modules.dep (built in, or not built for this kernel?)", n)
		}
		visit(file)
	}
	return order, nil
}

// readModule returns a module file's contents uncompressed: busybox's
// insmod takes plain ELF objects only.
func readModule(ctx context.Context, file string) ([]byte, error) {
	switch {
	case strings.HasSuffix(file, ".ko"):
		return os.ReadFile(file)
	case strings.HasSuffix(file, ".ko.gz"):
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(file, ".ko.xz"):
		return decompress(ctx, "xz", file)
	case strings.HasSuffix(file, ".ko.zst"):
		return decompress(ctx, "zstd", file)
	}
	return nil, fmt.Errorf("%s: unknown module file format", file)
}

func decompress(ctx context.Context, tool, file string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, "-dc", file)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -dc %s: %v: %s", tool, file, err, stderr.String())
	}
	return out, nil
}
