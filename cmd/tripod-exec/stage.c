// The exec stage of tripod-exec: see main.go. It runs from a constructor,
// before the Go runtime, so the process is still single-threaded when it
// joins the container's namespaces.
//
// Stage protocol (tripod-monitor writes the spec, reads the status):
//   fd 0-2  the process's stdio (ignored with a TTY)
//   fd 3    the spec: NUL-terminated "key=value" records, then EOF
//   fd 4    status: "P <pid>\n" once the process is forked, "E <msg>\n" on
//           an error, "F <msg>\n" when the stage cannot do this exec exactly
//           (the monitor then uses the OCI runtime); EOF once the process
//           has exec'd (every descriptor but stdio is close-on-exec)
//   fd 5    a pidfd of the container's init
//   fd 6    with tty=1: a unix socket the pty master is sent on
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_RAISE 2
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

#define SPEC_FD 3
#define STATUS_FD 4
#define PIDFD 5
#define CONSOLE_FD 6

#define MAX_LIST 4096

struct spec {
	int pid;
	const char *id;
	const char *cg[64];
	int ncg;
	int has_oom;
	int oom;
	struct {
		int res;
		unsigned long long soft, hard;
	} rl[32];
	int nrl;
	uid_t uid;
	gid_t gid;
	gid_t groups[MAX_LIST];
	int ngroups;
	int has_umask;
	mode_t umask;
	const char *cwd;
	int has_caps;
	uint64_t capb, cape, capp, capi, capa;
	int nnp;
	unsigned scflags;
	unsigned char *bpf;
	size_t bpflen;
	const char *env[MAX_LIST];
	int nenv;
	const char *arg[MAX_LIST];
	int narg;
	int tty;
};

// status writes one status line; errors end the stage.
static void status(char kind, const char *fmt, ...)
{
	char buf[4096];
	int n = snprintf(buf, sizeof(buf), "%c ", kind);
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	ssize_t w = write(STATUS_FD, buf, n);
	(void)w;
}

#define fail(...)                                                                                                     \
	do {                                                                                                          \
		status('E', __VA_ARGS__);                                                                             \
		_exit(1);                                                                                             \
	} while (0)
#define fallback(...)                                                                                                 \
	do {                                                                                                          \
		status('F', __VA_ARGS__);                                                                             \
		_exit(1);                                                                                             \
	} while (0)

static char *read_all(int fd, size_t *len)
{
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap + 1);
	if (!buf)
		fail("out of memory");
	for (;;) {
		if (n == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
			if (!buf)
				fail("out of memory");
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			fail("read spec: %m");
		if (r == 0)
			break;
		n += r;
	}
	buf[n] = 0;
	*len = n;
	return buf;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static void parse(struct spec *s, char *buf, size_t len)
{
	memset(s, 0, sizeof(*s));
	for (char *p = buf, *next; p < buf + len; p = next) {
		next = p + strlen(p) + 1;
		char *v = strchr(p, '=');
		if (!v)
			fail("bad spec record %.40s", p);
		*v++ = 0;
		const char *k = p;
#define IS(x) (strcmp(k, x) == 0)
		if (IS("pid"))
			s->pid = atoi(v);
		else if (IS("id"))
			s->id = v;
		else if (IS("cg")) {
			if (s->ncg == 64)
				fallback("more than 64 cgroups");
			s->cg[s->ncg++] = v;
		} else if (IS("oom")) {
			s->has_oom = 1;
			s->oom = atoi(v);
		} else if (IS("rlimit")) {
			if (s->nrl == 32)
				fallback("more than 32 rlimits");
			if (sscanf(v, "%d %llu %llu", &s->rl[s->nrl].res, &s->rl[s->nrl].soft, &s->rl[s->nrl].hard) != 3)
				fail("bad rlimit %s", v);
			s->nrl++;
		} else if (IS("uid"))
			s->uid = strtoul(v, NULL, 10);
		else if (IS("gid"))
			s->gid = strtoul(v, NULL, 10);
		else if (IS("group")) {
			if (s->ngroups == MAX_LIST)
				fallback("more than %d groups", MAX_LIST);
			s->groups[s->ngroups++] = strtoul(v, NULL, 10);
		} else if (IS("umask")) {
			s->has_umask = 1;
			s->umask = strtoul(v, NULL, 10);
		} else if (IS("cwd"))
			s->cwd = v;
		else if (IS("caps"))
			s->has_caps = 1;
		else if (IS("capb"))
			s->capb = strtoull(v, NULL, 16);
		else if (IS("cape"))
			s->cape = strtoull(v, NULL, 16);
		else if (IS("capp"))
			s->capp = strtoull(v, NULL, 16);
		else if (IS("capi"))
			s->capi = strtoull(v, NULL, 16);
		else if (IS("capa"))
			s->capa = strtoull(v, NULL, 16);
		else if (IS("nnp"))
			s->nnp = 1;
		else if (IS("scflags"))
			s->scflags = strtoul(v, NULL, 10);
		else if (IS("bpf")) {
			size_t n = strlen(v) / 2;
			s->bpf = malloc(n ? n : 1);
			for (size_t i = 0; i < n; i++) {
				int hi = hexval(v[2 * i]), lo = hexval(v[2 * i + 1]);
				if (hi < 0 || lo < 0)
					fail("bad bpf in spec");
				s->bpf[i] = hi << 4 | lo;
			}
			s->bpflen = n;
		} else if (IS("env")) {
			if (s->nenv == MAX_LIST - 2) // room for HOME and the NULL
				fallback("more than %d environment variables", MAX_LIST - 2);
			s->env[s->nenv++] = v;
		} else if (IS("arg")) {
			if (s->narg == MAX_LIST - 1)
				fallback("more than %d arguments", MAX_LIST - 1);
			s->arg[s->narg++] = v;
		} else if (IS("tty"))
			s->tty = 1;
		else
			fail("unknown spec record %s (tripod-exec older than tripod-monitor?)", k);
#undef IS
	}
	if (s->pid <= 0 || s->narg == 0 || !s->id)
		fail("spec without pid, id or args");
}

static void write_file(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		fail("open %s: %m", path);
	if (write(fd, val, strlen(val)) < 0)
		fail("write %s to %s: %m", val, path);
	close(fd);
}

static const struct {
	const char *name;
	int flag;
} nstypes[] = {
	{"user", CLONE_NEWUSER}, {"mnt", CLONE_NEWNS},	      {"pid", CLONE_NEWPID},	{"net", CLONE_NEWNET},
	{"ipc", CLONE_NEWIPC},	 {"uts", CLONE_NEWUTS},	      {"cgroup", CLONE_NEWCGROUP}, {"time", CLONE_NEWTIME},
};

// nsflags returns the namespaces of pid that differ from this process's:
// joining one's own user namespace is EINVAL, the others are no-ops.
static int nsflags(int pid)
{
	int flags = 0;
	char path[64];
	for (size_t i = 0; i < sizeof(nstypes) / sizeof(nstypes[0]); i++) {
		struct stat self, other;
		snprintf(path, sizeof(path), "/proc/self/ns/%s", nstypes[i].name);
		if (stat(path, &self) < 0) {
			if (errno == ENOENT)
				continue; // a kind this kernel lacks
			fail("stat %s: %m", path);
		}
		snprintf(path, sizeof(path), "/proc/%d/ns/%s", pid, nstypes[i].name);
		if (stat(path, &other) < 0)
			fail("stat %s: %m (has the container's init exited?)", path);
		if (self.st_ino != other.st_ino || self.st_dev != other.st_dev)
			flags |= nstypes[i].flag;
	}
	return flags;
}

static void send_fd(int sock, int fd)
{
	char name[] = "/dev/ptmx";
	struct iovec iov = {.iov_base = name, .iov_len = sizeof(name) - 1};
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &msg, 0) < 0)
		fail("send the pty master: %m");
}

// console gives the process a new pty of the container's devpts, the
// master going to the monitor.
static void console(struct spec *s)
{
	int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (master < 0)
		fail("open /dev/ptmx in the container: %m");
	int unlock = 0, n;
	if (ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &n) < 0)
		fail("pty: %m");
	char path[64];
	snprintf(path, sizeof(path), "/dev/pts/%d", n);
	int slave = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (slave < 0)
		fail("open %s in the container: %m", path);
	// The terminal belongs to the process's user, as the runtime makes it.
	if (fchown(slave, s->uid, -1) < 0)
		fail("chown %s: %m", path);
	send_fd(CONSOLE_FD, master);
	close(master);
	close(CONSOLE_FD);
	if (ioctl(slave, TIOCSCTTY, 0) < 0)
		fail("set the controlling terminal: %m");
	for (int i = 0; i < 3; i++)
		if (dup3(slave, i, 0) < 0)
			fail("dup the pty: %m");
	close(slave);
}

struct cap_header {
	uint32_t version;
	int pid;
};
struct cap_data {
	uint32_t effective, permitted, inheritable;
};

static int last_cap(void)
{
	char buf[16] = {0};
	int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) <= 0)
		fail("read /proc/sys/kernel/cap_last_cap: %m");
	close(fd);
	return atoi(buf);
}

static void load_seccomp(struct spec *s)
{
	if (!s->bpf)
		return;
	struct sock_fprog prog = {.len = s->bpflen / sizeof(struct sock_filter), .filter = (struct sock_filter *)s->bpf};
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, s->scflags, &prog) < 0)
		fail("load the seccomp filter: %m");
}

static const char *getenv_in(struct spec *s, const char *key)
{
	size_t kl = strlen(key);
	for (int i = s->nenv - 1; i >= 0; i--)
		if (strncmp(s->env[i], key, kl) == 0 && s->env[i][kl] == '=')
			return s->env[i] + kl + 1;
	return NULL;
}

// home is the user's home directory from the container's /etc/passwd, or
// "/" (HOME is set when the environment has none).
static char *home(uid_t uid)
{
	// The container's file: not a FIFO that would hold the exec forever.
	int fd = open("/etc/passwd", O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	struct stat st;
	if (fd < 0)
		return "/";
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return "/";
	}
	FILE *f = fdopen(fd, "r");
	static char line[4096];
	if (!f) {
		close(fd);
		return "/";
	}
	while (fgets(line, sizeof(line), f)) {
		char *fld[7];
		int n = 0;
		char *p = line;
		line[strcspn(line, "\n")] = 0;
		while (n < 7) {
			fld[n++] = p;
			p = strchr(p, ':');
			if (!p)
				break;
			*p++ = 0;
		}
		if (n >= 6 && fld[2][0] && strtoul(fld[2], NULL, 10) == uid) {
			fclose(f);
			return fld[5];
		}
	}
	fclose(f);
	return "/";
}

// errstr is strerror as Go spells it (lower case), for messages that
// must read as the OCI runtime's.
static const char *errstr(int e)
{
	static char buf[128];
	snprintf(buf, sizeof(buf), "%s", strerror(e));
	if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
		buf[0] += 'a' - 'A';
	return buf;
}

// executable returns why path cannot be exec'd, or NULL when it can.
static const char *executable(const char *path)
{
	static char why[PATH_MAX + 160];
	struct stat st;
	if (stat(path, &st) < 0) {
		snprintf(why, sizeof(why), "stat %s: %s", path, errstr(errno));
		return why;
	}
	if (S_ISDIR(st.st_mode))
		return errstr(EISDIR);
	if (faccessat(AT_FDCWD, path, X_OK, AT_EACCESS) == 0)
		return NULL;
	if (errno != ENOSYS && errno != EPERM)
		return errstr(errno);
	return st.st_mode & 0111 ? NULL : errstr(EACCES);
}

// lookpath finds args[0] on the container's PATH, as the OCI runtime
// does, with its error messages.
static const char *lookpath(struct spec *s)
{
	const char *name = s->arg[0];
	if (strchr(name, '/')) {
		const char *why = executable(name);
		if (why)
			fail("exec: \"%s\": %s", name, why);
		return name;
	}
	// Every entry of a non-empty PATH, an empty one meaning ".".
	const char *path = getenv_in(s, "PATH");
	if (path && !*path)
		path = NULL;
	while (path) {
		const char *end = strchr(path, ':');
		size_t n = end ? (size_t)(end - path) : strlen(path);
		static char buf[PATH_MAX];
		if (n == 0)
			snprintf(buf, sizeof(buf), "./%s", name);
		else
			snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, path, name);
		if (!executable(buf)) {
			// Found through a relative entry: refused, as the runtime
			// (Go's LookPath) refuses it, rather than run whatever the
			// working directory holds.
			if (n == 0 || path[0] != '/')
				fail("exec: \"%s\": cannot run executable found relative to current directory", name);
			return buf;
		}
		path = end ? end + 1 : NULL;
	}
	fail("exec: \"%s\": executable file not found in $PATH", name);
}

static void child(struct spec *s)
{
	// Root of the container's user namespace (the host's root is not
	// mapped there): what the runtime's process is from here on too, so
	// that what it finds and creates (the session keyring) is the same.
	if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
		fail("become root of the container's user namespace: %m");
	// A session keyring of the container's own, as the OCI runtime gives
	// every process it starts.
	char ring[256];
	snprintf(ring, sizeof(ring), "_ses.%s", s->id);
	if (syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, ring) < 0 && errno != ENOSYS)
		fail("join session keyring: %m");
	if (setsid() < 0)
		fail("setsid: %m");
	// Read as root, before the user changes, as the runtime does.
	if (!getenv_in(s, "HOME")) {
		static char h[4200];
		snprintf(h, sizeof(h), "HOME=%s", home(s->uid));
		s->env[s->nenv++] = h;
	}
	if (s->tty)
		console(s);
	if (s->nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		fail("set no_new_privs: %m");
	// Without no_new_privs loading a filter needs CAP_SYS_ADMIN: before
	// the capabilities go. With it, as late as possible.
	if (!s->nnp)
		load_seccomp(s);
	int chdir_done = 0;
	if (s->cwd) {
		if (chdir(s->cwd) == 0)
			chdir_done = 1;
		else if (errno != EACCES && errno != EPERM)
			fail("chdir to cwd (\"%s\") set in config.json failed: %m", s->cwd);
	}
	if (s->has_caps) {
		int last = last_cap();
		for (int c = 0; c <= last; c++)
			if (!(s->capb & (1ULL << c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
				fail("drop capability %d from the bounding set: %m", c);
		if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
			fail("keepcaps: %m");
	}
	if (setgroups(s->ngroups, s->groups) < 0)
		fail("setgroups: %m");
	if (setresgid(s->gid, s->gid, s->gid) < 0)
		fail("setgid %u: %m", s->gid);
	if (setresuid(s->uid, s->uid, s->uid) < 0)
		fail("setuid %u: %m", s->uid);
	if (s->cwd && !chdir_done && chdir(s->cwd) < 0)
		fail("chdir to cwd (\"%s\") set in config.json failed: %m", s->cwd);
	if (s->has_caps) {
		if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
			fail("keepcaps: %m");
		struct cap_header h = {.version = 0x20080522 /* _LINUX_CAPABILITY_VERSION_3 */};
		struct cap_data d[2] = {
			{(uint32_t)s->cape, (uint32_t)s->capp, (uint32_t)s->capi},
			{(uint32_t)(s->cape >> 32), (uint32_t)(s->capp >> 32), (uint32_t)(s->capi >> 32)},
		};
		if (syscall(SYS_capset, &h, d) < 0)
			fail("capset: %m");
		prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
		for (int c = 0; c < 64; c++)
			if (s->capa & (1ULL << c))
				prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0); // as the runtime: best effort
	}
	if (s->has_umask)
		umask(s->umask);
	s->env[s->nenv] = NULL;
	s->arg[s->narg] = NULL;
	const char *bin = lookpath(s);
	if (s->nnp)
		load_seccomp(s);
	// Everything but stdio ends with the exec, the status pipe too: its
	// EOF tells the monitor the exec happened.
	if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
		for (int fd = 3; fd < 1024; fd++)
			fcntl(fd, F_SETFD, FD_CLOEXEC);
	execve(bin, (char *const *)s->arg, (char *const *)s->env);
	fail("exec: \"%s\": %s", s->arg[0], errstr(errno));
}

static void stage(void)
{
	size_t len;
	char *buf = read_all(SPEC_FD, &len);
	close(SPEC_FD);
	struct spec s;
	parse(&s, buf, len);

	// The init's root, to check that joining its mount namespace lands
	// there (it would not after a chroot instead of pivot_root).
	char path[PATH_MAX];
	struct stat root;
	snprintf(path, sizeof(path), "/proc/%d/root", s.pid);
	if (stat(path, &root) < 0)
		fail("stat %s: %m (has the container's init exited?)", path);
	int flags = nsflags(s.pid);
	// The pid was read while the pidfd's process was alive: it was that
	// process's (only the monitor reaps it, so the pid is not reused
	// before this check fails).
	if (syscall(SYS_pidfd_send_signal, PIDFD, 0, NULL, 0) < 0)
		fail("the container's init has exited");

	// Host-side settings first, inherited by the process: cgroups (the
	// paths are the host mount namespace's), oom_score_adj, rlimits.
	char self[32];
	snprintf(self, sizeof(self), "%d", getpid());
	for (int i = 0; i < s.ncg; i++)
		write_file(s.cg[i], self);
	if (s.has_oom) {
		char v[32];
		snprintf(v, sizeof(v), "%d", s.oom);
		int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
		// Lowering it needs CAP_SYS_RESOURCE, which root may lack: keep
		// the inherited value then, as tripod does for containers.
		if (fd >= 0) {
			if (write(fd, v, strlen(v)) < 0 && errno != EACCES && errno != EPERM)
				fail("write oom_score_adj: %m");
			close(fd);
		}
	}
	for (int i = 0; i < s.nrl; i++) {
		struct rlimit r = {.rlim_cur = s.rl[i].soft, .rlim_max = s.rl[i].hard};
		if (setrlimit(s.rl[i].res, &r) < 0)
			fail("setrlimit %d: %m", s.rl[i].res);
	}

	if (flags && setns(PIDFD, flags) < 0) {
		if (errno == ESRCH)
			fail("the container's init has exited");
		fail("join the container's namespaces: %m");
	}
	close(PIDFD);
	struct stat now;
	if (stat("/", &now) < 0)
		fail("stat / in the container: %m");
	if (now.st_dev != root.st_dev || now.st_ino != root.st_ino)
		fallback("the container's mount namespace is not rooted at its root (no pivot_root)");

	// Fork into the pid namespace; the child is reparented to the monitor
	// (a child subreaper) when this process exits.
	pid_t pid = fork();
	if (pid < 0)
		fail("fork: %m");
	if (pid == 0)
		child(&s);
	status('P', "%d", pid);
	_exit(0);
}

// The -ENOSYS stub the OCI runtime puts before the filter when the
// default action denies: a syscall numbered above every syscall the
// profile names (for the caller's architecture) is one the profile could
// not know of, and gets ENOSYS so that callers fall back, rather than the
// default action's errno. x86_64 and x32 share an audit architecture and
// differ by bit 30 of the number.
#define X32_BIT 0x40000000u
struct archmax {
	uint32_t audit;
	int has64, has32;
	uint32_t max64, max32; // max64 serves every architecture but x32
};

static void emit(struct sock_filter *prog, int *n, struct sock_filter insn)
{
	if (*n >= 512) {
		fprintf(stderr, "seccomp: stub too long\n");
		exit(1);
	}
	prog[(*n)++] = insn;
}

// stub writes the stub for archs (nonempty) before a filter of flen
// instructions; returns its length.
static int stub(struct archmax *a, int na, struct sock_filter *prog)
{
	int n = 0, sec[16];
	// Section sizes, to place the architecture jumps.
	int size[16], total = 1 + na + 1;
	for (int i = 0; i < na; i++) {
		if (a[i].audit == AUDIT_ARCH_X86_64)
			size[i] = a[i].has64 && a[i].has32 ? 8 : 6;
		else
			size[i] = 4;
		sec[i] = total;
		total += size[i];
	}
	emit(prog, &n, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 4));
	for (int i = 0; i < na; i++)
		emit(prog, &n, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, a[i].audit, sec[i] - n - 1, 0));
#define TO_FILTER BPF_STMT(BPF_JMP | BPF_JA, total - n - 1)
	emit(prog, &n, (struct sock_filter)TO_FILTER);
	const struct sock_filter enosys = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS);
	for (int i = 0; i < na; i++) {
		emit(prog, &n, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0));
		if (a[i].audit == AUDIT_ARCH_X86_64 && a[i].has64 && a[i].has32) {
			emit(prog, &n, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, X32_BIT, 3, 0));
			emit(prog, &n, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, a[i].max64, 0, 1));
			emit(prog, &n, enosys);
			emit(prog, &n, (struct sock_filter)TO_FILTER);
			emit(prog, &n, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, a[i].max32, 0, 1));
			emit(prog, &n, enosys);
			emit(prog, &n, (struct sock_filter)TO_FILTER);
		} else if (a[i].audit == AUDIT_ARCH_X86_64) {
			// Only one of the two: the other mode goes to the filter.
			emit(prog, &n, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, X32_BIT, a[i].has32, !a[i].has32));
			emit(prog, &n, (struct sock_filter)TO_FILTER);
			emit(prog, &n, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, a[i].has32 ? a[i].max32 : a[i].max64, 0, 1));
			emit(prog, &n, enosys);
			emit(prog, &n, (struct sock_filter)TO_FILTER);
		} else {
			emit(prog, &n, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, a[i].max64, 0, 1));
			emit(prog, &n, enosys);
			emit(prog, &n, (struct sock_filter)TO_FILTER);
		}
	}
#undef TO_FILTER
	if (n != total) {
		fprintf(stderr, "seccomp: stub of %d instructions, planned %d\n", n, total);
		exit(1);
	}
	return n;
}

static int compile_action(const char *act, int errnoRet, uint32_t *out)
{
	if (strcmp(act, "SCMP_ACT_ALLOW") == 0)
		*out = SCMP_ACT_ALLOW;
	else if (strcmp(act, "SCMP_ACT_ERRNO") == 0)
		*out = SCMP_ACT_ERRNO(errnoRet);
	else if (strcmp(act, "SCMP_ACT_TRACE") == 0)
		*out = SCMP_ACT_TRACE(errnoRet);
	else if (strcmp(act, "SCMP_ACT_KILL") == 0 || strcmp(act, "SCMP_ACT_KILL_THREAD") == 0)
		*out = SCMP_ACT_KILL_THREAD;
	else if (strcmp(act, "SCMP_ACT_KILL_PROCESS") == 0)
		*out = SCMP_ACT_KILL_PROCESS;
	else if (strcmp(act, "SCMP_ACT_TRAP") == 0)
		*out = SCMP_ACT_TRAP;
	else if (strcmp(act, "SCMP_ACT_LOG") == 0)
		*out = SCMP_ACT_LOG;
	else
		return -1;
	return 0;
}

static int compile_op(const char *op, enum scmp_compare *out)
{
	static const struct {
		const char *name;
		enum scmp_compare op;
	} ops[] = {{"SCMP_CMP_NE", SCMP_CMP_NE}, {"SCMP_CMP_LT", SCMP_CMP_LT}, {"SCMP_CMP_LE", SCMP_CMP_LE},
		   {"SCMP_CMP_EQ", SCMP_CMP_EQ}, {"SCMP_CMP_GE", SCMP_CMP_GE}, {"SCMP_CMP_GT", SCMP_CMP_GT},
		   {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ}};
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (strcmp(op, ops[i].name) == 0) {
			*out = ops[i].op;
			return 0;
		}
	return -1;
}

// compile reads a profile in the monitor's compact form on stdin and
// writes its BPF on stdout. Lines, fields separated by spaces:
//   default ACTION ERRNO
//   arch NAME
//   rule NAME ACTION ERRNO NARGS [INDEX OP VALUE VALUETWO]...
//   name NAME       every syscall the profile names (for the -ENOSYS stub)
//   enosys          put the -ENOSYS stub first
// Like the OCI runtime: unknown syscalls are skipped, rules whose action
// is the default are dropped, and arguments naming one index twice become
// one rule per argument.
static void compile(void)
{
	size_t len;
	char *buf = read_all(0, &len);
	scmp_filter_ctx ctx = NULL;
	char *save;
	uint32_t arches[16];
	int narches = 0, want_stub = 0;
	struct archmax am[16];
	int nam = 0;
	for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *f[6 + 4 * 6];
		int n = 0;
		char *s2;
		for (char *w = strtok_r(line, " ", &s2); w && n < (int)(sizeof(f) / sizeof(f[0])); w = strtok_r(NULL, " ", &s2))
			f[n++] = w;
		if (n == 0)
			continue;
		if (strcmp(f[0], "default") == 0 && n == 3) {
			uint32_t act;
			if (compile_action(f[1], atoi(f[2]), &act) < 0) {
				fprintf(stderr, "seccomp: unsupported default action %s\n", f[1]);
				exit(3);
			}
			ctx = seccomp_init(act);
			if (!ctx) {
				fprintf(stderr, "seccomp_init failed\n");
				exit(1);
			}
			// The stage sets no_new_privs itself, as the profile says.
			seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
			continue;
		}
		if (!ctx) {
			fprintf(stderr, "seccomp: no default line\n");
			exit(1);
		}
		if (strcmp(f[0], "arch") == 0 && n == 2) {
			uint32_t a = seccomp_arch_resolve_name(f[1]);
			if (a == 0) {
				fprintf(stderr, "seccomp: unknown architecture %s\n", f[1]);
				exit(1);
			}
			if (narches < 16)
				arches[narches++] = a;
			int r = seccomp_arch_add(ctx, a);
			if (r < 0 && r != -EEXIST) {
				fprintf(stderr, "seccomp: add architecture %s: %s\n", f[1], strerror(-r));
				exit(1);
			}
			continue;
		}
		if (strcmp(f[0], "enosys") == 0) {
			want_stub = 1;
			continue;
		}
		if (strcmp(f[0], "name") == 0 && n == 2) {
			for (int i = 0; i < narches; i++) {
				int nr = seccomp_syscall_resolve_name_arch(arches[i], f[1]);
				if (nr < 0)
					continue; // unknown, or multiplexed on this architecture
				uint32_t audit = arches[i] == SCMP_ARCH_X32 ? AUDIT_ARCH_X86_64 : arches[i];
				int k = 0;
				while (k < nam && am[k].audit != audit)
					k++;
				if (k == nam) {
					memset(&am[k], 0, sizeof(am[k]));
					am[k].audit = audit;
					nam++;
				}
				if (arches[i] == SCMP_ARCH_X32) {
					am[k].has32 = 1;
					if ((uint32_t)nr > am[k].max32)
						am[k].max32 = nr;
				} else {
					am[k].has64 = 1;
					if ((uint32_t)nr > am[k].max64)
						am[k].max64 = nr;
				}
			}
			continue;
		}
		if (strcmp(f[0], "rule") != 0 || n < 5) {
			fprintf(stderr, "seccomp: bad line\n");
			exit(1);
		}
		uint32_t act;
		if (compile_action(f[2], atoi(f[3]), &act) < 0) {
			fprintf(stderr, "seccomp: unsupported action %s\n", f[2]);
			exit(3);
		}
		int nr = seccomp_syscall_resolve_name(f[1]);
		if (nr == __NR_SCMP_ERROR)
			continue;
		int nargs = atoi(f[4]);
		if (n != 5 + 4 * nargs || nargs > 6) {
			fprintf(stderr, "seccomp: bad rule for %s\n", f[1]);
			exit(1);
		}
		struct scmp_arg_cmp cmp[6];
		int dup = 0;
		for (int i = 0; i < nargs; i++) {
			enum scmp_compare op;
			if (compile_op(f[5 + 4 * i + 1], &op) < 0) {
				fprintf(stderr, "seccomp: unknown operator %s\n", f[5 + 4 * i + 1]);
				exit(1);
			}
			cmp[i] = (struct scmp_arg_cmp){.arg = atoi(f[5 + 4 * i]),
						      .op = op,
						      .datum_a = strtoull(f[5 + 4 * i + 2], NULL, 10),
						      .datum_b = strtoull(f[5 + 4 * i + 3], NULL, 10)};
			for (int j = 0; j < i; j++)
				if (cmp[j].arg == cmp[i].arg)
					dup = 1;
		}
		int r = 0;
		if (dup) {
			for (int i = 0; i < nargs && r == 0; i++)
				r = seccomp_rule_add_array(ctx, act, nr, 1, &cmp[i]);
		} else {
			r = seccomp_rule_add_array(ctx, act, nr, nargs, cmp);
		}
		if (r < 0) {
			fprintf(stderr, "seccomp: add rule for %s: %s\n", f[1], strerror(-r));
			exit(1);
		}
	}
	if (!ctx) {
		fprintf(stderr, "seccomp: empty profile\n");
		exit(1);
	}
	int mem = memfd_create("bpf", MFD_CLOEXEC);
	if (mem < 0) {
		fprintf(stderr, "seccomp: memfd: %s\n", strerror(errno));
		exit(1);
	}
	int r = seccomp_export_bpf(ctx, mem);
	if (r < 0) {
		fprintf(stderr, "seccomp: export: %s\n", strerror(-r));
		exit(1);
	}
	size_t flen;
	lseek(mem, 0, SEEK_SET);
	char *filter = read_all(mem, &flen);
	struct sock_filter prog[512];
	int plen = 0;
	if (want_stub && nam > 0)
		plen = stub(am, nam, prog);
	if (write(1, prog, plen * sizeof(prog[0])) < 0 || write(1, filter, flen) < 0) {
		fprintf(stderr, "seccomp: write: %s\n", strerror(errno));
		exit(1);
	}
	exit(0);
}

__attribute__((constructor)) static void tripod_exec(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "stage") == 0)
		stage();
	if (argc == 2 && strcmp(argv[1], "seccomp") == 0)
		compile();
}
