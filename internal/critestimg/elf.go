package critestimg

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
)

// multiarch is Debian's library directory name for a Go architecture.
func multiarch(goarch string) (string, error) {
	switch goarch {
	case "amd64":
		return "x86_64-linux-gnu", nil
	case "arm64":
		return "aarch64-linux-gnu", nil
	case "ppc64le":
		return "powerpc64le-linux-gnu", nil
	case "s390x":
		return "s390x-linux-gnu", nil
	case "riscv64":
		return "riscv64-linux-gnu", nil
	}
	return "", fmt.Errorf("no Debian multiarch directory known for %s", goarch)
}

// sharedLibs is what the dynamic ELF executables bins need at run time:
// the shared libraries (soname → file on this host, following DT_NEEDED
// transitively) and the program interpreters (path in the image → file).
// Libraries are looked for under each root's library directories, then
// the host's.
type sharedLibs struct {
	libs   map[string]string
	interp map[string]string
}

func resolveLibs(bins []string, roots []string, tuple string) (*sharedLibs, error) {
	var dirs []string
	for _, r := range append(roots, "/") {
		for _, d := range []string{"lib/" + tuple, "usr/lib/" + tuple, "lib64", "usr/lib64", "lib", "usr/lib"} {
			dirs = append(dirs, filepath.Join(r, d))
		}
	}
	s := &sharedLibs{libs: map[string]string{}, interp: map[string]string{}}
	queue := append([]string(nil), bins...)
	for len(queue) > 0 {
		path := queue[0]
		queue = queue[1:]
		f, err := elf.Open(path)
		if err != nil {
			return nil, fmt.Errorf("read ELF %s: %w", path, err)
		}
		for _, p := range f.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				f.Close()
				return nil, fmt.Errorf("read ELF %s interpreter: %w", path, err)
			}
			if n := len(b); n > 0 && b[n-1] == 0 {
				b = b[:n-1]
			}
			s.interp[string(b)] = string(b)
		}
		needed, err := f.ImportedLibraries()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read ELF %s DT_NEEDED: %w", path, err)
		}
		for _, so := range needed {
			if _, ok := s.libs[so]; ok {
				continue
			}
			found := ""
			for _, d := range dirs {
				if st, err := os.Stat(filepath.Join(d, so)); err == nil && st.Mode().IsRegular() {
					found = filepath.Join(d, so)
					break
				}
			}
			if found == "" {
				return nil, fmt.Errorf("%s needs %s, found in none of %v: install the Debian package that ships it", path, so, dirs)
			}
			s.libs[so] = found
			queue = append(queue, found)
		}
	}
	return s, nil
}
