// Package seccomp builds the seccomp filters of tripod's containers: the
// RuntimeDefault profile (an allow-list written for tripod) and Localhost
// profiles read from JSON files, both as OCI LinuxSeccomp sections.
package seccomp

import (
	"runtime"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Namespace-creating clone flags. CLONE_NEWTIME shares its bit with the
// exit signal in clone(2), so it is only checked for unshare(2).
const (
	nsFlagsClone   = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
	nsFlagsUnshare = nsFlagsClone | 0x00000080
	afVsock        = 40
	errnoENOSYS    = 38
)

// allowed is what an ordinary container process does: file and socket I/O,
// memory, processes and threads, signals, time, System V and POSIX IPC.
// Anything not here (and not granted by a capability below) fails with
// EPERM: kernel keyrings (not namespaced), kexec, module loading, swap,
// io_uring (a frequent source of kernel exploits), userfaultfd, BPF and
// perf, mount and namespace creation, reboot, clock setting, and obsolete
// calls such as uselib, sysfs, ustat and _sysctl.
var allowed = []string{
	// files and directories
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
	"open", "openat", "openat2", "creat", "close", "close_range", "lseek", "_llseek",
	"dup", "dup2", "dup3", "pipe", "pipe2", "fcntl", "fcntl64", "ioctl", "flock",
	"fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "sync_file_range2", "arm_sync_file_range",
	"truncate", "truncate64", "ftruncate", "ftruncate64", "fallocate", "fadvise64", "fadvise64_64", "arm_fadvise64_64",
	"readahead", "sendfile", "sendfile64", "splice", "tee", "vmsplice", "copy_file_range",
	"stat", "stat64", "fstat", "fstat64", "lstat", "lstat64", "newfstatat", "fstatat64", "statx",
	"statfs", "statfs64", "fstatfs", "fstatfs64", "access", "faccessat", "faccessat2",
	"readlink", "readlinkat", "getdents", "getdents64", "getcwd", "chdir", "fchdir",
	"mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat",
	"unlink", "unlinkat", "mknod", "mknodat", "chmod", "fchmod", "fchmodat", "fchmodat2",
	"chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32",
	"utime", "utimes", "utimensat", "utimensat_time64", "futimesat", "umask",
	"getxattr", "lgetxattr", "fgetxattr", "getxattrat", "setxattr", "lsetxattr", "fsetxattr", "setxattrat",
	"listxattr", "llistxattr", "flistxattr", "listxattrat", "removexattr", "lremovexattr", "fremovexattr", "removexattrat",
	"name_to_handle_at", "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "fanotify_mark",
	"memfd_create", "memfd_secret", "statmount", "listmount", "file_getattr", "file_setattr",
	// asynchronous I/O and event notification
	"io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
	"epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_wait", "epoll_wait_old", "epoll_pwait", "epoll_pwait2",
	"poll", "ppoll", "ppoll_time64", "select", "_newselect", "pselect6", "pselect6_time64",
	"eventfd", "eventfd2", "signalfd", "signalfd4",
	"timerfd_create", "timerfd_settime", "timerfd_settime64", "timerfd_gettime", "timerfd_gettime64",
	// memory
	"brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "pkey_mprotect", "pkey_alloc", "pkey_free",
	"madvise", "process_madvise", "mlock", "mlock2", "munlock", "mlockall", "munlockall", "mincore", "msync",
	"membarrier", "remap_file_pages", "map_shadow_stack", "mseal", "cachestat", "get_mempolicy",
	// processes, threads and credentials
	"execve", "execveat", "exit", "exit_group", "wait4", "waitid", "waitpid", "fork", "vfork",
	"set_tid_address", "set_robust_list", "get_robust_list", "futex", "futex_time64", "futex_waitv",
	"futex_wake", "futex_wait", "futex_requeue", "rseq", "arch_prctl", "prctl", "set_thread_area", "get_thread_area",
	"getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid", "setsid",
	"getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid", "getegid32",
	"getresuid", "getresuid32", "getresgid", "getresgid32", "setuid", "setuid32", "setgid", "setgid32",
	"setreuid", "setreuid32", "setregid", "setregid32", "setresuid", "setresuid32", "setresgid", "setresgid32",
	"setfsuid", "setfsuid32", "setfsgid", "setfsgid32", "getgroups", "getgroups32", "setgroups", "setgroups32",
	"capget", "capset", "getrlimit", "ugetrlimit", "setrlimit", "prlimit64", "getrusage", "times",
	"getpriority", "setpriority", "ioprio_get", "ioprio_set", "sched_yield", "sched_getaffinity", "sched_setaffinity",
	"sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler", "sched_getattr", "sched_setattr",
	"sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval", "sched_rr_get_interval_time64",
	"pidfd_open", "pidfd_send_signal", "pidfd_getfd", "process_mrelease", "kcmp",
	"ptrace", "process_vm_readv", "process_vm_writev", "seccomp", "restart_syscall",
	"landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
	"lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules",
	"uname", "sysinfo", "getrandom", "getcpu", "adjtimex",
	// signals
	"kill", "tkill", "tgkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
	"rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack",
	"signal", "sigaction", "sigpending", "sigprocmask", "sigreturn", "sigsuspend", "pause",
	// time and timers
	"alarm", "getitimer", "setitimer", "nanosleep", "clock_nanosleep", "clock_nanosleep_time64",
	"clock_gettime", "clock_gettime64", "clock_getres", "clock_getres_time64", "gettimeofday", "time",
	"timer_create", "timer_settime", "timer_settime64", "timer_gettime", "timer_gettime64", "timer_getoverrun", "timer_delete",
	// sockets
	"socketpair", "bind", "connect", "listen", "accept", "accept4", "getsockname", "getpeername",
	"sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "recvmmsg_time64", "shutdown",
	"setsockopt", "getsockopt", "socketcall",
	// System V and POSIX IPC (namespaced with the pod's IPC namespace)
	"shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semtimedop_time64", "semctl",
	"msgget", "msgsnd", "msgrcv", "msgctl", "ipc", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedsend_time64",
	"mq_timedreceive", "mq_timedreceive_time64", "mq_notify", "mq_getsetattr",
}

// byCap lists the calls a capability opens: the kernel checks the same
// capability, so these add nothing to a container that lacks it.
var byCap = map[string][]string{
	"CAP_SYS_ADMIN": {"mount", "umount", "umount2", "pivot_root", "setns", "fsopen", "fsconfig", "fsmount", "fspick",
		"move_mount", "open_tree", "open_tree_attr", "mount_setattr", "quotactl", "quotactl_fd", "fanotify_init",
		"sethostname", "setdomainname", "syslog", "bpf", "perf_event_open"},
	"CAP_SYS_CHROOT":      {"chroot"},
	"CAP_SYS_MODULE":      {"init_module", "finit_module", "delete_module"},
	"CAP_SYS_BOOT":        {"reboot"},
	"CAP_SYS_TIME":        {"settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64"},
	"CAP_SYS_PACCT":       {"acct"},
	"CAP_SYS_RAWIO":       {"iopl", "ioperm"},
	"CAP_SYS_NICE":        {"mbind", "set_mempolicy", "set_mempolicy_home_node", "migrate_pages", "move_pages"},
	"CAP_SYSLOG":          {"syslog"},
	"CAP_SYS_TTY_CONFIG":  {"vhangup"},
	"CAP_DAC_READ_SEARCH": {"open_by_handle_at"},
	"CAP_BPF":             {"bpf"},
	"CAP_PERFMON":         {"perf_event_open"},
}

// Default is tripod's RuntimeDefault profile for a container with the given
// capabilities (CAP_ names): calls outside the allow-list fail with EPERM
// (runc answers ENOSYS for calls newer than the profile, so libraries fall
// back as they do on older kernels).
func Default(caps []string) *specs.LinuxSeccomp {
	has := func(c string) bool { return slices.Contains(caps, c) }
	allow := func(names ...string) specs.LinuxSyscall {
		return specs.LinuxSyscall{Names: names, Action: specs.ActAllow}
	}
	s := &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, Architectures: nativeArches(runtime.GOARCH)}
	s.Syscalls = append(s.Syscalls, allow(allowed...))
	// personality(2): only the plain Linux personalities and the query;
	// others turn on READ_IMPLIES_EXEC or disable address randomisation.
	for _, p := range []uint64{0x0, 0x8, 0x20000, 0x20008, 0xffffffff} {
		s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: []string{"personality"}, Action: specs.ActAllow,
			Args: []specs.LinuxSeccompArg{{Index: 0, Value: p, Op: specs.OpEqualTo}}})
	}
	// socket(2) for every family but AF_VSOCK, which reaches the
	// hypervisor and is not namespaced.
	s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: []string{"socket"}, Action: specs.ActAllow,
		Args: []specs.LinuxSeccompArg{{Index: 0, Value: afVsock, Op: specs.OpNotEqual}}})
	var granted []string
	for _, c := range caps {
		granted = append(granted, byCap[c]...)
	}
	if has("CAP_SYS_ADMIN") {
		// Namespaces of any kind, and clone3, whose flags sit behind a
		// pointer seccomp cannot follow.
		granted = append(granted, "clone", "clone3", "unshare")
	} else {
		// No new namespaces: the kernel lets anyone create a user
		// namespace, and with it the capabilities inside it that open
		// much of the kernel's attack surface.
		cloneArg := uint(0)
		if runtime.GOARCH == "s390x" {
			cloneArg = 1 // s390 swaps clone's first two arguments
		}
		s.Syscalls = append(s.Syscalls,
			specs.LinuxSyscall{Names: []string{"clone"}, Action: specs.ActAllow,
				Args: []specs.LinuxSeccompArg{{Index: cloneArg, Value: nsFlagsClone, ValueTwo: 0, Op: specs.OpMaskedEqual}}},
			specs.LinuxSyscall{Names: []string{"unshare"}, Action: specs.ActAllow,
				Args: []specs.LinuxSeccompArg{{Index: 0, Value: nsFlagsUnshare, ValueTwo: 0, Op: specs.OpMaskedEqual}}})
		// ENOSYS, not EPERM: C libraries then fall back to clone(2).
		enosys := uint(errnoENOSYS)
		s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys})
	}
	if len(granted) > 0 {
		slices.Sort(granted)
		s.Syscalls = append(s.Syscalls, allow(slices.Compact(granted)...))
	}
	return s
}

// nativeArches lists the seccomp architectures a process of this machine
// may use (64-bit kernels also run their 32-bit ABIs). Each one multiplies
// the filter the runtime compiles for every container (measured here: the
// x32 ABI, which distributions' kernels leave out and no image uses, added
// about 10 ms to each container start); calls of an architecture not
// listed kill the caller.
func nativeArches(goarch string) []specs.Arch {
	switch goarch {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	case "386":
		return []specs.Arch{specs.ArchX86}
	case "arm":
		return []specs.Arch{specs.ArchARM}
	case "ppc64le":
		return []specs.Arch{specs.ArchPPC64LE}
	case "s390x":
		return []specs.Arch{specs.ArchS390X, specs.ArchS390}
	case "riscv64":
		return []specs.Arch{specs.ArchRISCV64}
	case "loong64":
		return []specs.Arch{specs.ArchLOONGARCH64}
	case "mips64le":
		return []specs.Arch{specs.ArchMIPSEL64, specs.ArchMIPSEL64N32, specs.ArchMIPSEL}
	}
	return nil // runc then filters the native architecture only
}
