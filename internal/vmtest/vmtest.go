// Package vmtest runs tests inside a throwaway QEMU virtual machine, for
// behaviour the host's own kernel cannot show: link types it lacks, cgroup
// versions it does not mount. The VM boots a distribution kernel with an
// initramfs built on the fly (busybox, the chosen modules, the caller's
// files), runs one command, prints its exit status after a marker and
// powers off. QEMU emulates the CPU in software: nested guests under KVM
// hang on some hosts, and a test must never depend on /dev/kvm.
package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// GuestEnv is set (to "1") in the environment of the command run inside
// the VM, so that a test binary knows where it runs.
const GuestEnv = "TRIPOD_VMTEST_GUEST"

// marker precedes the command's exit status on the console.
const marker = "VMTEST-EXIT="

// bootMarker is the first thing /init prints.
const bootMarker = "VMTEST-BOOTED"

// InGuest reports whether the process runs inside a vmtest VM.
func InGuest() bool { return os.Getenv(GuestEnv) == "1" }

// Guest skips the test unless it runs inside a vmtest VM.
func Guest(t testing.TB) {
	t.Helper()
	if !InGuest() {
		t.Skipf("skipped: runs only inside the QEMU VM that this package's host test boots (%s unset)", GuestEnv)
	}
}

// Host skips the test when it runs inside a vmtest VM.
func Host(t testing.TB) {
	t.Helper()
	if InGuest() {
		t.Skip("skipped: a host-only test, and this is the vmtest VM")
	}
}

// File is one file put into the VM's root file system.
type File struct {
	Path string      // absolute path inside the VM
	Src  string      // host file to copy (symbolic links followed), or
	Data []byte      // the contents
	Link string      // or, when set, the target of a symbolic link
	Mode fs.FileMode // permission bits; 0644 when zero (0755 with Exec)
	Exec bool
}

// VM describes one boot.
type VM struct {
	// Kernel is the kernel image; empty means the newest /boot/vmlinuz-*.
	// Its modules are read from /lib/modules/<version>, the version being
	// the image's name after "vmlinuz-".
	Kernel string
	// Modules are loaded, dependencies first, before Command runs.
	Modules []string
	Files   []File
	// Command is run by /init with Env added to the environment (besides
	// PATH, HOME and GuestEnv); its output goes to the console.
	Command []string
	Env     map[string]string
	// MemoryMB defaults to 512.
	MemoryMB int
	// TmpfsRoot makes /init copy the initramfs into a tmpfs and switch
	// root to it first. pivot_root(2), which OCI runtimes use, cannot
	// leave the initramfs's rootfs (it has no parent mount).
	TmpfsRoot bool
	// BootTimeout bounds the wait for /init to start (2 minutes when
	// zero); a boot that stalls is retried, up to three boots in all.
	BootTimeout time.Duration
	// Console, when set, receives the console output as it comes.
	Console io.Writer
}

// Result is what a boot produced.
type Result struct {
	// Console is the whole console output.
	Console string
	// Exit is the command's exit status, or -1 when the VM ended before
	// printing it (kernel panic, timeout, a hung command).
	Exit int
}

// KernelImage returns the newest kernel image under /boot, or an error
// that says how to get one.
func KernelImage() (string, error) {
	imgs, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(imgs) == 0 {
		return "", errors.New("no kernel image /boot/vmlinuz-*: install the Debian kernel (apt-get install linux-image-amd64; `make deps` does)")
	}
	sort.Slice(imgs, func(i, j int) bool { return versionLess(imgs[i], imgs[j]) })
	return imgs[len(imgs)-1], nil
}

// versionLess orders kernel image names by their numeric fields.
func versionLess(a, b string) bool {
	num := regexp.MustCompile(`\d+`)
	na, nb := num.FindAllString(a, -1), num.FindAllString(b, -1)
	for i := 0; i < len(na) && i < len(nb); i++ {
		x, _ := strconv.Atoi(na[i])
		y, _ := strconv.Atoi(nb[i])
		if x != y {
			return x < y
		}
	}
	return len(na) < len(nb)
}

// Run builds the initramfs in workDir and boots the VM until the command
// ends, the VM powers off or ctx is done. A command that fails is not an
// error: the caller reads Result.Exit. Errors are failures to build or to
// run QEMU.
func (vm *VM) Run(ctx context.Context, workDir string) (*Result, error) {
	kernel := vm.Kernel
	if kernel == "" {
		k, err := KernelImage()
		if err != nil {
			return nil, err
		}
		kernel = k
	}
	if _, err := os.Stat(kernel); err != nil {
		return nil, fmt.Errorf("kernel image: %w (install linux-image-amd64; `make deps` does)", err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return nil, fmt.Errorf("qemu-system-x86_64 not found (install qemu-system-x86; `make deps` does): %w", err)
	}
	initrd := filepath.Join(workDir, "initramfs.cpio")
	if err := vm.writeInitramfs(ctx, kernel, initrd); err != nil {
		return nil, err
	}
	// Should a boot still stall before /init (see tscParam), it is tried
	// again rather than waited on until ctx ends.
	var res *Result
	var err error
	for attempt := 1; ; attempt++ {
		var booted bool
		res, booted, err = vm.boot(ctx, kernel, initrd)
		if booted || ctx.Err() != nil || attempt == 3 {
			break
		}
		if vm.Console != nil {
			fmt.Fprintf(vm.Console, "vmtest: no sign of /init after %v, booting again\n", vm.bootTimeout())
		}
	}
	return res, err
}

func (vm *VM) bootTimeout() time.Duration {
	if vm.BootTimeout > 0 {
		return vm.BootTimeout
	}
	return 2 * time.Minute
}

// boot runs QEMU once. booted reports whether /init started.
func (vm *VM) boot(ctx context.Context, kernel, initrd string) (res *Result, booted bool, err error) {
	mem := vm.MemoryMB
	if mem == 0 {
		mem = 512
	}
	bootCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// microvm: no firmware tables or PCI to probe, so the kernel reaches
	// /init in seconds even under emulation.
	cmd := exec.CommandContext(bootCtx, "qemu-system-x86_64",
		"-M", "microvm,x-option-roms=off,rtc=on", "-accel", "tcg",
		"-cpu", "max", "-m", strconv.Itoa(mem),
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=4"+tscParam())
	started := make(chan struct{})
	console := &consoleBuf{watch: bootMarker, seen: started}
	var out io.Writer = console
	if vm.Console != nil {
		out = io.MultiWriter(console, vm.Console)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, false, fmt.Errorf("starting qemu: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(vm.bootTimeout())
	defer timer.Stop()
	var runErr error
	select {
	case runErr = <-done:
	case <-started:
		runErr = <-done
	case <-timer.C:
		cancel()
		runErr = <-done
	}
	text := console.String()
	booted = strings.Contains(text, bootMarker)
	res = &Result{Console: text, Exit: exitStatus(text)}
	if ctx.Err() != nil {
		return res, booted, fmt.Errorf("VM did not finish: %w", ctx.Err())
	}
	if !booted {
		return res, false, fmt.Errorf("VM did not reach /init within %v", vm.bootTimeout())
	}
	if runErr != nil && res.Exit < 0 {
		return res, booted, fmt.Errorf("qemu: %w", runErr)
	}
	return res, booted, nil
}

// tscParam tells the guest its TSC frequency, which under emulation is the
// host's. Left to calibrate against the emulated PIT, a guest on a busy
// host sometimes fails, finds no usable clock and hangs early in boot.
func tscParam() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil || mhz <= 0 {
				return ""
			}
			return fmt.Sprintf(" tsc_early_khz=%d", int(mhz*1000))
		}
	}
	return ""
}

// consoleBuf collects console output and closes seen once watch appears.
type consoleBuf struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	watch string
	seen  chan struct{}
	done  bool
}

func (c *consoleBuf) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if !c.done && bytes.Contains(c.buf.Bytes(), []byte(c.watch)) {
		c.done = true
		close(c.seen)
	}
	return len(p), nil
}

func (c *consoleBuf) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// exitStatus finds the marker line /init prints after the command.
func exitStatus(console string) int {
	sc := bufio.NewScanner(strings.NewReader(console))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	status := -1
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, marker); ok {
			if n, err := strconv.Atoi(rest); err == nil {
				status = n
			}
		}
	}
	return status
}

// Tail returns the last n lines of the console output.
func (r *Result) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(r.Console, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Failures returns the "--- FAIL:" lines a Go test binary printed with -v.
func (r *Result) Failures() []string {
	var f []string
	for _, l := range strings.Split(r.Console, "\n") {
		if strings.Contains(l, "--- FAIL:") {
			f = append(f, strings.TrimSpace(l))
		}
	}
	return f
}

func (vm *VM) writeInitramfs(ctx context.Context, kernel, dst string) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox not found (install busybox-static; `make deps` does): %w", err)
	}
	bbData, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	var entries []entry
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "proc", "sys", "dev", "tmp", "run", "root", "lib/modules"} {
		entries = append(entries, entry{name: d, mode: fs.ModeDir | 0o755})
	}
	entries = append(entries, entry{name: "bin/busybox", mode: 0o755, data: bbData})

	version := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	var order []string
	if len(vm.Modules) > 0 {
		modDir := filepath.Join("/lib/modules", version)
		deps, err := moduleDeps(modDir)
		if err != nil {
			return err
		}
		files, err := resolveModules(deps, vm.Modules)
		if err != nil {
			return err
		}
		for _, f := range files {
			data, err := readModule(ctx, filepath.Join(modDir, f))
			if err != nil {
				return err
			}
			name := moduleName(f) + ".ko"
			entries = append(entries, entry{name: "lib/modules/" + name, mode: 0o644, data: data})
			order = append(order, name)
		}
	}
	for _, f := range vm.Files {
		e, err := f.entry()
		if err != nil {
			return err
		}
		entries = append(entries, e)
	}
	entries = append(entries, entry{name: "init", mode: 0o755, data: []byte(vm.initScript(order))})

	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(out, 1<<20)
	if err := writeCpio(w, entries); err != nil {
		out.Close()
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	if err := w.Flush(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (f File) entry() (entry, error) {
	if !filepath.IsAbs(f.Path) {
		return entry{}, fmt.Errorf("vmtest file %q: path must be absolute", f.Path)
	}
	if f.Link != "" {
		return entry{name: f.Path, mode: fs.ModeSymlink | 0o777, data: []byte(f.Link)}, nil
	}
	mode := f.Mode.Perm()
	if mode == 0 {
		mode = 0o644
		if f.Exec {
			mode = 0o755
		}
	}
	data := f.Data
	if f.Src != "" {
		d, err := os.ReadFile(f.Src)
		if err != nil {
			return entry{}, fmt.Errorf("vmtest file %s: %w", f.Path, err)
		}
		data = d
	}
	return entry{name: f.Path, mode: mode, data: data}, nil
}

// shellQuote quotes s for the busybox shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// initScript is the VM's /init: mount the pseudo file systems, load the
// modules, run the command, report its status, power off. If poweroff
// fails, init exits, the kernel panics, and panic=-1 with -no-reboot ends
// QEMU all the same.
func (vm *VM) initScript(modules []string) string {
	var b strings.Builder
	b.WriteString(`#!/bin/busybox sh
/bin/busybox echo ` + bootMarker + "\n")
	if vm.TmpfsRoot {
		// The copy doubles the memory the files take until switch_root
		// deletes the originals.
		b.WriteString(`if [ ! -e /.vmtest-tmpfs ]; then
	/bin/busybox mkdir /newroot
	/bin/busybox mount -t tmpfs -o size=90% tmpfs /newroot
	for f in /*; do
		case $f in /newroot|/proc|/sys|/dev) ;; *) /bin/busybox cp -a "$f" /newroot/ ;; esac
	done
	/bin/busybox mkdir -p /newroot/proc /newroot/sys /newroot/dev
	/bin/busybox touch /newroot/.vmtest-tmpfs
	exec /bin/busybox switch_root /newroot /init
fi
`)
	}
	b.WriteString(`/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/netns
ip link set lo up
`)
	for _, m := range modules {
		fmt.Fprintf(&b, "insmod /lib/modules/%s || echo 'vmtest: insmod %s failed'\n", m, m)
	}
	keys := make([]string, 0, len(vm.Env))
	for k := range vm.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(&b, "export %s=1\n", GuestEnv)
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(vm.Env[k]))
	}
	quoted := make([]string, len(vm.Command))
	for i, a := range vm.Command {
		quoted[i] = shellQuote(a)
	}
	fmt.Fprintf(&b, "cd /root\n%s\nrc=$?\necho\necho %s$rc\npoweroff -f\n", strings.Join(quoted, " "), marker)
	return b.String()
}

// NetnsExecShim is an "ip" command for the VM that runs `ip netns exec NS
// CMD...` through nsenter (busybox's ip has no netns subcommand) and hands
// everything else to busybox.
func NetnsExecShim() File {
	return File{Path: "/usr/local/bin/ip", Exec: true, Data: []byte(`#!/bin/sh
if [ "$1" = netns ] && [ "$2" = exec ]; then
	ns=$3
	shift 3
	exec nsenter --net=/run/netns/"$ns" "$@"
fi
exec busybox ip "$@"
`)}
}

// GoTestBinary compiles the Go test binary of package pkg (a path relative
// to the module root, like "./internal/foo") into dir, statically
// (CGO_ENABLED=0), and returns its path.
func GoTestBinary(ctx context.Context, dir, pkg string) (string, error) {
	return goBuild(ctx, dir, "test", "-c", pkg)
}

// GoBinary compiles a main package statically into dir.
func GoBinary(ctx context.Context, dir, pkg string) (string, error) {
	return goBuild(ctx, dir, "build", pkg)
}

// GoCgoBinary is GoBinary for a package with C in it (cgo), linked
// static as the guest needs.
func GoCgoBinary(ctx context.Context, dir, pkg string) (string, error) {
	return goBuildEnv(ctx, dir, []string{"CGO_ENABLED=1"}, "build", "-ldflags", "-extldflags -static", pkg)
}

func goBuild(ctx context.Context, dir string, args ...string) (string, error) {
	return goBuildEnv(ctx, dir, []string{"CGO_ENABLED=0"}, args...)
}

func goBuildEnv(ctx context.Context, dir string, env []string, args ...string) (string, error) {
	root, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	pkg := args[len(args)-1]
	out := filepath.Join(dir, filepath.Base(pkg))
	if args[0] == "test" {
		out += ".test"
	}
	args = append(append([]string{}, args[:len(args)-1]...), "-o", out, pkg)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	cmd.Env = append(os.Environ(), env...)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	return out, nil
}

// DirFiles mirrors a host directory into the VM at dst: each file that a
// symbolic link resolves to is copied once (under its own name), and the
// links become links to it, so a multi-call binary with a link per name
// stays one copy.
func DirFiles(srcDir, dst string) ([]File, error) {
	entries, err := os.ReadDir(srcDir)
	if err != nil {
		return nil, err
	}
	var files []File
	added := map[string]string{}
	for _, e := range entries {
		real, err := filepath.EvalSymlinks(filepath.Join(srcDir, e.Name()))
		if err != nil {
			return nil, err
		}
		if _, ok := added[real]; !ok {
			name := filepath.Base(real)
			added[real] = name
			files = append(files, File{Path: dst + "/" + name, Src: real, Exec: true})
		}
		if added[real] != e.Name() {
			files = append(files, File{Path: dst + "/" + e.Name(), Link: added[real]})
		}
	}
	return files, nil
}

// RunTests boots vm (its Console, when nil, goes to t's log line by line),
// fails t if the guest's tests did not all pass, and requires each of
// names to have passed: a guest that silently ran nothing, or skipped, is
// a failure too.
func (vm *VM) RunTests(ctx context.Context, t testing.TB, workDir string, names ...string) *Result {
	t.Helper()
	if vm.Console == nil {
		vm.Console = &lineLog{t: t}
	}
	res, err := vm.Run(ctx, workDir)
	if err != nil {
		tail := ""
		if res != nil {
			tail = res.Tail(60)
		}
		t.Fatalf("%v\nconsole tail:\n%s", err, tail)
	}
	if res.Exit != 0 {
		t.Fatalf("in-VM tests failed (exit status %d): %v\nconsole tail:\n%s", res.Exit, res.Failures(), res.Tail(80))
	}
	for _, name := range names {
		if !strings.Contains(res.Console, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass in the VM (skipped or missing)", name)
		}
	}
	return res
}

// lineLog logs the console line by line as it arrives.
type lineLog struct {
	t   testing.TB
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		line, err := l.buf.ReadString('\n')
		if err != nil {
			l.buf.WriteString(line)
			break
		}
		l.t.Log("vm: " + strings.TrimRight(line, "\r\n"))
	}
	return len(p), nil
}
