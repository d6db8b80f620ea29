package monitor

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The direct exec path: instead of `<runtime> exec`, which re-execs the
// runtime, runs its own init and compiles the seccomp profile on every
// call, the monitor starts tripod-exec (ExecStage, beside the monitor's
// binary), a small C stage that joins the init's cgroups and namespaces,
// applies the container's process settings and execs the command. What
// it needs from config.json is prepared once per container (the seccomp
// profile compiled to BPF by the same binary, through libseccomp); what
// it does not do exactly as the runtime would, the runtime does (see
// directPrep.fallback).

// ExecStage is the name of the exec stage binary, beside tripod-monitor.
const ExecStage = "tripod-exec"

// directPrep is a container's part of every direct exec's spec.
type directPrep struct {
	fallback string   // why execs go through the runtime; "" for direct
	records  []byte   // spec records (see cmd/tripod-exec/stage.c)
	env      []string // the container's environment
	freezer  string   // the file telling whether the container is frozen
}

func specRecord(b *bytes.Buffer, key, value string) {
	b.WriteString(key)
	b.WriteByte('=')
	b.WriteString(value)
	b.WriteByte(0)
}

// prepDirect reads a container's config.json and the init's cgroups into
// a directPrep; an error means execs should use the runtime.
func (s *Server) prepDirect(id, bundle string, pid int) *directPrep {
	p := &directPrep{}
	if err := s.prepDirectInto(p, id, bundle, pid); err != nil {
		p.fallback = err.Error()
	}
	return p
}

var rlimits = map[string]int{
	"RLIMIT_AS": unix.RLIMIT_AS, "RLIMIT_CORE": unix.RLIMIT_CORE, "RLIMIT_CPU": unix.RLIMIT_CPU, "RLIMIT_DATA": unix.RLIMIT_DATA,
	"RLIMIT_FSIZE": unix.RLIMIT_FSIZE, "RLIMIT_LOCKS": unix.RLIMIT_LOCKS, "RLIMIT_MEMLOCK": unix.RLIMIT_MEMLOCK,
	"RLIMIT_MSGQUEUE": unix.RLIMIT_MSGQUEUE, "RLIMIT_NICE": unix.RLIMIT_NICE, "RLIMIT_NOFILE": unix.RLIMIT_NOFILE,
	"RLIMIT_NPROC": unix.RLIMIT_NPROC, "RLIMIT_RSS": unix.RLIMIT_RSS, "RLIMIT_RTPRIO": unix.RLIMIT_RTPRIO,
	"RLIMIT_RTTIME": unix.RLIMIT_RTTIME, "RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING, "RLIMIT_STACK": unix.RLIMIT_STACK,
}

// seccompFlags are the flags the filter is loaded with, as the runtime
// loads it: TSYNC is moot for a single-threaded process and
// WAIT_KILLABLE_RECV only applies to a listener (which goes to the
// runtime), so both are accepted and not passed.
var seccompFlags = map[specs.LinuxSeccompFlag]uint{
	"SECCOMP_FILTER_FLAG_TSYNC": 0, "SECCOMP_FILTER_FLAG_LOG": 2, "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
	"SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 0,
}

func (s *Server) prepDirectInto(p *directPrep, id, bundle string, pid int) error {
	if s.stage == "" {
		return fmt.Errorf("%s not found beside tripod-monitor", ExecStage)
	}
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return err
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return fmt.Errorf("config.json: %w", err)
	}
	proc := spec.Process
	if proc == nil || spec.Linux == nil {
		return errors.New("config.json has no process or linux section")
	}
	l := spec.Linux
	switch {
	case proc.ApparmorProfile != "":
		return errors.New("an AppArmor profile")
	case proc.SelinuxLabel != "":
		return errors.New("an SELinux label")
	case proc.Scheduler != nil:
		return errors.New("a scheduler")
	case proc.IOPriority != nil:
		return errors.New("an I/O priority")
	case proc.ExecCPUAffinity != nil:
		return errors.New("an exec CPU affinity")
	case l.Personality != nil:
		return errors.New("a personality")
	case l.IntelRdt != nil:
		return errors.New("an Intel RDT group")
	}
	var r bytes.Buffer
	specRecord(&r, "id", id)
	cgs, freezer, err := initCgroups(pid)
	if err != nil {
		return err
	}
	for _, cg := range cgs {
		specRecord(&r, "cg", cg)
	}
	p.freezer = freezer
	if proc.OOMScoreAdj != nil {
		specRecord(&r, "oom", strconv.Itoa(*proc.OOMScoreAdj))
	}
	for _, rl := range proc.Rlimits {
		res, ok := rlimits[rl.Type]
		if !ok {
			return fmt.Errorf("rlimit %s", rl.Type)
		}
		specRecord(&r, "rlimit", fmt.Sprintf("%d %d %d", res, rl.Soft, rl.Hard))
	}
	specRecord(&r, "uid", strconv.FormatUint(uint64(proc.User.UID), 10))
	specRecord(&r, "gid", strconv.FormatUint(uint64(proc.User.GID), 10))
	for _, g := range proc.User.AdditionalGids {
		specRecord(&r, "group", strconv.FormatUint(uint64(g), 10))
	}
	if proc.User.Umask != nil {
		specRecord(&r, "umask", strconv.FormatUint(uint64(*proc.User.Umask), 10))
	}
	if proc.Cwd != "" {
		specRecord(&r, "cwd", proc.Cwd)
	}
	if c := proc.Capabilities; c != nil {
		specRecord(&r, "caps", "1")
		for _, set := range []struct {
			key   string
			names []string
		}{{"capb", c.Bounding}, {"cape", c.Effective}, {"capp", c.Permitted}, {"capi", c.Inheritable}, {"capa", c.Ambient}} {
			m, err := capMask(set.names)
			if err != nil {
				return err
			}
			specRecord(&r, set.key, strconv.FormatUint(m, 16))
		}
	}
	if proc.NoNewPrivileges {
		specRecord(&r, "nnp", "1")
	}
	if l.Seccomp != nil {
		flags, bpf, err := s.compileSeccomp(l.Seccomp)
		if err != nil {
			return err
		}
		specRecord(&r, "scflags", strconv.FormatUint(uint64(flags), 10))
		specRecord(&r, "bpf", hex.EncodeToString(bpf))
	}
	// NUL ends a spec record (see startDirect).
	if strings.ContainsRune(id+proc.Cwd+strings.Join(proc.Env, ""), 0) {
		return errors.New("a NUL byte in the process settings")
	}
	p.records = r.Bytes()
	p.env = proc.Env
	return nil
}

// capMask turns capability names into a bit mask.
func capMask(names []string) (uint64, error) {
	var m uint64
	for _, n := range names {
		bit, ok := capBits[strings.ToUpper(n)]
		if !ok {
			return 0, fmt.Errorf("capability %s", n)
		}
		m |= 1 << bit
	}
	return m, nil
}

var capBits = map[string]uint{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
	"CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10,
	"CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
	"CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20,
	"CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23, "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25,
	"CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30,
	"CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
	"CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}

// compileSeccomp turns an OCI seccomp profile into BPF through the exec
// stage's libseccomp. The profile is written in the stage's compact form
// (see compile in cmd/tripod-exec/stage.c).
func (s *Server) compileSeccomp(sc *specs.LinuxSeccomp) (uint, []byte, error) {
	if sc.ListenerPath != "" {
		return 0, nil, errors.New("a seccomp listener")
	}
	var flags uint
	for _, f := range sc.Flags {
		v, ok := seccompFlags[f]
		if !ok {
			return 0, nil, fmt.Errorf("seccomp flag %s", f)
		}
		flags |= v
	}
	errnoOf := func(ret *uint) uint {
		if ret == nil {
			return uint(unix.EPERM)
		}
		return *ret
	}
	action := func(a specs.LinuxSeccompAction) (string, error) {
		switch a {
		case specs.ActAllow, specs.ActErrno, specs.ActTrace, specs.ActKill, specs.ActKillThread, specs.ActKillProcess, specs.ActTrap, specs.ActLog:
			return string(a), nil
		}
		return "", fmt.Errorf("seccomp action %s", a)
	}
	var in bytes.Buffer
	def, err := action(sc.DefaultAction)
	if err != nil {
		return 0, nil, err
	}
	defErrno := errnoOf(sc.DefaultErrnoRet)
	fmt.Fprintf(&in, "default %s %d\n", def, defErrno)
	for _, a := range sc.Architectures {
		fmt.Fprintf(&in, "arch %s\n", strings.ToLower(strings.TrimPrefix(string(a), "SCMP_ARCH_")))
	}
	// The runtime's -ENOSYS stub (see stub in stage.c), unless the
	// default lets syscalls through or already says ENOSYS.
	if def != string(specs.ActAllow) && def != string(specs.ActLog) && def != string(specs.ActTrace) &&
		(sc.DefaultErrnoRet == nil || *sc.DefaultErrnoRet != uint(unix.ENOSYS)) {
		in.WriteString("enosys\n")
	}
	for _, sys := range sc.Syscalls {
		for _, name := range sys.Names {
			fmt.Fprintf(&in, "name %s\n", name)
		}
	}
	for _, sys := range sc.Syscalls {
		act, err := action(sys.Action)
		if err != nil {
			return 0, nil, err
		}
		e := errnoOf(sys.ErrnoRet)
		// A rule doing what the default does is left out, as the
		// runtime does (libseccomp refuses it).
		if act == def && (e == defErrno || (act != string(specs.ActErrno) && act != string(specs.ActTrace))) {
			continue
		}
		if len(sys.Args) > 6 {
			return 0, nil, fmt.Errorf("seccomp rule with %d arguments", len(sys.Args))
		}
		var args strings.Builder
		for _, a := range sys.Args {
			fmt.Fprintf(&args, " %d %s %d %d", a.Index, a.Op, a.Value, a.ValueTwo)
		}
		for _, name := range sys.Names {
			fmt.Fprintf(&in, "rule %s %s %d %d%s\n", name, act, e, len(sys.Args), args.String())
		}
	}
	out, err := s.runHelper([]string{s.stage, "seccomp"}, in.Bytes())
	if err != nil {
		return 0, nil, fmt.Errorf("compile the seccomp profile: %w", err)
	}
	if len(out) == 0 || len(out)%8 != 0 {
		return 0, nil, fmt.Errorf("compile the seccomp profile: %d bytes of BPF", len(out))
	}
	return flags, out, nil
}

// runHelper runs a short command with stdin and returns its stdout; the
// monitor's reaper waits for it.
func (s *Server) runHelper(args []string, stdin []byte) ([]byte, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		closeAll([]*os.File{inR, inW, outR, outW})
		return nil, err
	}
	_, done, err := s.startRuntime(args[0], args, "/", []*os.File{inR, outW, errW})
	closeAll([]*os.File{inR, outW, errW})
	if err != nil {
		closeAll([]*os.File{inW, outR, errR})
		return nil, err
	}
	go func() { inW.Write(stdin); inW.Close() }()
	var out, msg []byte
	got := make(chan struct{})
	go func() { msg, _ = io.ReadAll(io.LimitReader(errR, 4096)); errR.Close(); close(got) }()
	out, _ = io.ReadAll(outR)
	outR.Close()
	<-got
	ws := <-done
	if !ws.Exited() || ws.ExitStatus() != 0 {
		return nil, fmt.Errorf("%s: %s", describe(ws), strings.TrimSpace(string(msg)))
	}
	return out, nil
}

// initCgroups returns the cgroup.procs files of every cgroup the process
// is in (every v1 hierarchy mounted here, and the v2 one), and the file
// telling whether its cgroup is frozen.
func initCgroups(pid int) ([]string, string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, "", fmt.Errorf("the init's cgroups: %w", err)
	}
	type mount struct{ root, point, fstype string }
	opts := map[string]mount{} // by controller (v1), "" for cgroup2
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, "", err
	}
	defer mi.Close()
	sc := bufio.NewScanner(mi)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || len(f) < sep+4 || len(f) < 5 {
			continue
		}
		fstype := f[sep+1]
		m := mount{root: f[3], point: unescapeMount(f[4]), fstype: fstype}
		switch fstype {
		case "cgroup2":
			if _, ok := opts[""]; !ok {
				opts[""] = m
			}
		case "cgroup":
			for _, o := range strings.Split(f[sep+3], ",") {
				if _, ok := opts[o]; !ok {
					opts[o] = m
				}
			}
		}
	}
	var procs []string
	var freezer string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		key := ""
		if parts[1] != "" {
			key = strings.Split(parts[1], ",")[0]
		} else if parts[0] != "0" {
			continue
		}
		m, ok := opts[key]
		if !ok {
			continue // a hierarchy not mounted here
		}
		rel, err := filepath.Rel(m.root, parts[2])
		if err != nil || strings.HasPrefix(rel, "..") {
			continue // outside what this mount shows
		}
		dir := filepath.Join(m.point, rel)
		procs = append(procs, filepath.Join(dir, "cgroup.procs"))
		switch {
		case key == "freezer":
			freezer = filepath.Join(dir, "freezer.state")
		case key == "" && freezer == "":
			freezer = filepath.Join(dir, "cgroup.freeze")
		}
	}
	if len(procs) == 0 {
		return nil, "", fmt.Errorf("no cgroup of process %d found", pid)
	}
	return procs, freezer, nil
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// frozen reports whether a container's cgroup is frozen (paused): the
// runtime then decides what an exec does.
func frozen(file string) bool {
	if file == "" {
		return false
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	v := strings.TrimSpace(string(b))
	return v == "FROZEN" || v == "FREEZING" || v == "1"
}

// dedupEnv keeps the last of each variable, in the order of those.
func dedupEnv(env []string) []string {
	seen := map[string]bool{}
	out := make([]string, 0, len(env))
	for i := len(env) - 1; i >= 0; i-- {
		k, _, _ := strings.Cut(env[i], "=")
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, env[i])
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// startDirect starts req's process through the exec stage with stdio as
// its stdio. A non-empty reason means the stage cannot do this exec and
// the runtime should (nothing was started then).
func (s *Server) startDirect(req Request, stdio []*os.File) (pid int, master *os.File, reason string, err error) {
	s.mu.Lock()
	c := s.containers[req.ID]
	s.mu.Unlock()
	if c == nil {
		return 0, nil, "container not monitored", nil
	}
	c.directMu.Lock()
	if c.direct == nil {
		c.direct = s.prepDirect(c.id, c.bundle, c.pid)
	}
	p := c.direct
	c.directMu.Unlock()
	if p.fallback != "" {
		return 0, nil, p.fallback, nil
	}
	if frozen(p.freezer) {
		return 0, nil, "the container is paused", nil
	}
	// NUL ends a spec record: one in an argument must not smuggle in
	// records of its own (execve could not take it anyway).
	for _, e := range req.Env {
		if !strings.Contains(e, "=") {
			return 0, nil, "", fmt.Errorf("exec: environment variable %q has no '='", e)
		}
	}
	for _, a := range append(append([]string{}, req.Args...), req.Env...) {
		if strings.ContainsRune(a, 0) {
			return 0, nil, "", fmt.Errorf("exec: argument or environment variable %q contains a NUL byte", a)
		}
	}
	var spec bytes.Buffer
	specRecord(&spec, "pid", strconv.Itoa(c.pid))
	spec.Write(p.records)
	for _, e := range dedupEnv(append(append([]string{}, p.env...), req.Env...)) {
		specRecord(&spec, "env", e)
	}
	for _, a := range req.Args {
		specRecord(&spec, "arg", a)
	}
	if req.TTY {
		specRecord(&spec, "tty", "1")
	}

	var files []*os.File // the stage's fds 3 and up, closed once it runs
	defer func() { closeAll(files) }()
	specR, specW, err := os.Pipe()
	if err != nil {
		return 0, nil, "", err
	}
	files = append(files, specR)
	if spec.Len() > 60<<10 {
		unix.FcntlInt(specW.Fd(), unix.F_SETPIPE_SZ, spec.Len())
	}
	// The whole spec fits the pipe: written before the stage starts.
	_, werr := specW.Write(spec.Bytes())
	specW.Close()
	if werr != nil {
		return 0, nil, "", fmt.Errorf("exec spec: %w", werr)
	}
	statR, statW, err := os.Pipe()
	if err != nil {
		return 0, nil, "", err
	}
	defer statR.Close()
	files = append(files, statW)
	s.mu.Lock()
	pidfd := -1
	if c.pidfd >= 0 {
		pidfd, err = unix.FcntlInt(uintptr(c.pidfd), unix.F_DUPFD_CLOEXEC, 0)
	}
	s.mu.Unlock()
	if pidfd < 0 {
		if err != nil {
			return 0, nil, "", fmt.Errorf("exec: %w", err)
		}
		return 0, nil, "", errors.New("exec: the container's init has exited")
	}
	files = append(files, os.NewFile(uintptr(pidfd), "pidfd"))
	var console *net.UnixConn
	if req.TTY {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return 0, nil, "", fmt.Errorf("console socket: %w", err)
		}
		files = append(files, os.NewFile(uintptr(fds[1]), "console"))
		f := os.NewFile(uintptr(fds[0]), "console")
		fc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return 0, nil, "", fmt.Errorf("console socket: %w", err)
		}
		console = fc.(*net.UnixConn)
		defer console.Close()
	}
	_, done, err := s.startRuntime(s.stage, []string{s.stage, "stage"}, "/", append(append([]*os.File{}, stdio...), files...))
	closeAll(files)
	files = nil
	if err != nil {
		return 0, nil, "", err
	}
	type recv struct {
		f   *os.File
		err error
	}
	var consoleC chan recv
	if console != nil {
		consoleC = make(chan recv, 1)
		go func() {
			_, fs, err := recvFds(console, make([]byte, 64), 1)
			if err == nil && len(fs) != 1 {
				closeAll(fs)
				fs, err = nil, errors.New("no terminal received")
			}
			if err != nil {
				consoleC <- recv{nil, err}
				return
			}
			consoleC <- recv{fs[0], nil}
		}()
	}
	// Until EOF: the stage and the process (until its exec) hold it.
	st, _ := io.ReadAll(statR)
	ws := <-done
	var fail, fb string
	for _, line := range strings.Split(string(st), "\n") {
		switch {
		case strings.HasPrefix(line, "P "):
			pid, _ = strconv.Atoi(line[2:])
		case strings.HasPrefix(line, "E ") && fail == "":
			fail = line[2:]
		case strings.HasPrefix(line, "F "):
			fb = line[2:]
		}
	}
	if console != nil {
		console.CloseRead() // a stage that failed before sending wakes the receiver
		r := <-consoleC
		master = r.f
		if r.err != nil && fail == "" && fb == "" && pid > 0 {
			fail = "console: " + r.err.Error()
		}
	}
	if pid > 0 && (fail != "" || fb != "") {
		// The process failed before its exec and exits on its own; it
		// is this monitor's child now.
		unix.Kill(pid, unix.SIGKILL)
		<-s.watch(pid)
	}
	switch {
	case fb != "" && fail == "":
		if master != nil {
			master.Close()
		}
		return 0, nil, fb, nil
	case fail != "":
		if master != nil {
			master.Close()
		}
		return 0, nil, "", errors.New(fail)
	case ws.Exited() && ws.ExitStatus() == 3 && pid == 0:
		return 0, nil, ExecStage + " built without its C stage", nil
	case pid <= 0:
		if master != nil {
			master.Close()
		}
		return 0, nil, "", fmt.Errorf("%s: %s", ExecStage, describe(ws))
	}
	return pid, master, "", nil
}
