/*
 * captrap-launch: the first exec of every captrap sandbox, and (when asked) its confinement.
 *
 * Always, before anything else runs:
 *   1. arm a parent-death SIGKILL, then check the parent is still captrap (if captrap died
 *      before the signal was armed it would never come, so the command must not run at all);
 *   2. close every descriptor above 2 (one inherited without CLOEXEC must not reach a tool);
 *   3. write its own pid into every given cgroup.procs, so the command and everything it forks
 *      are inside their cgroups before its first instruction;
 * then, without namespaces, drop identity (uid, gid, groups, capabilities, no_new_privs) and
 * exec the command in place (one exec, the pid stays the same).
 *
 * With --unshare pid,... it becomes three processes, so a hostile command can neither reach
 * captrap nor outlive its sandbox:
 *   P0 (this pid, host namespaces): the sandbox's leader as captrap sees it. Forwards signals to
 *      P1, relays the egress port (--net-proxy) to captrap's proxy socket, and exits with the
 *      command's status (re-raising its signal).
 *   P1 (pid 1 of a new pid namespace): unshares the other namespaces, builds the mount view,
 *      forks the command, forwards signals to it, reaps orphans, and exits when the command
 *      exits; the kernel then kills everything left in the namespace (setsid escapees too).
 *   P2: drops identity and execs the command.
 *
 * Argument protocol (every option spelled out; nothing is guessed):
 *   captrap-launch --ppid PID [options] -- COMMAND [ARG]...
 *     --ppid PID             required: the pid of the captrap process that spawned us
 *     --join PATH            a cgroup.procs file to write our pid to (repeatable)
 *     --keep-pwd             leave PWD in the environment (default: unset it)
 *     --no-new-privs         prctl(PR_SET_NO_NEW_PRIVS, 1)
 *     --uid N / --gid N      switch to this uid / gid (supplementary groups cleared)
 *     --drop-caps            empty the bounding, ambient, inheritable, permitted and effective sets
 *     --unshare LIST         comma list of pid,mount,net,ipc,uts,cgroup
 *     --view                 build a new root (needs mount): only what --ro/--rw/--symlink name,
 *                            plus a fresh /proc, a minimal /dev and a private /tmp
 *     --ro PATH / --rw PATH  bind PATH (absolute, no symlink in it) at the same path, read-only or
 *                            writable; later entries win, so order parents before children
 *     --symlink TARGET LINK  create the symlink LINK -> TARGET in the view (e.g. /bin -> usr/bin)
 *     --hide PATH            cover PATH in the view with an empty, unreadable file or directory
 *     --no-tmp               no private /tmp
 *     --chdir DIR            working directory inside the view (default: the inherited one)
 *     --hostname NAME        with uts
 *     --net-proxy PORT PATH  with net and pid: listen on 127.0.0.1:PORT inside the namespace and
 *                            relay each connection to the Unix socket PATH (captrap's proxy)
 *     --                     end of options; COMMAND is looked up like execvp does
 *
 * Warm mode (a launcher waiting in captrap's pool, see src/isolation/pool.ts):
 *   captrap-launch --ppid PID --pool [--join PATH]... [--unshare LIST] [--drop-caps] [--ro PATH | --symlink T L | --hide PATH]...
 * does steps 1-3 above and creates the namespaces (with pid: forks the init, which creates the
 * others and brings up loopback) ahead of time, with a mount namespace also the view's /dev, /proc
 * and the system part given here (read-only binds, links, and the hides inside them; every
 * request must name each of them again, exactly), then writes one byte 'R' on fd 3 (a socket to
 * captrap) and waits there for the request: a 16-byte header ("CTS1", then little-endian
 * uint32 argc, envc and payload length) and a payload of NUL-terminated strings: the working
 * directory, argc arguments (a complete cold command line: argv[0], --ppid PID, options, --,
 * COMMAND...), and envc NAME=VALUE entries, the command's whole environment. The request must
 * name the same --ppid and --unshare and no --join (those are done); anything else about it is
 * exactly what the same command line would do cold. EOF instead of a request: exit 0 quietly.
 * With a mount namespace, a request that finds the host's mount table changed since the launcher
 * copied it gets a fresh copy and a view built whole, as cold (renew_view_if_mounts_changed).
 * With --drop-caps the bounding set is emptied ahead (effective capabilities stay until the
 * request is done with them); the request must then drop capabilities too.
 * With --split-ctl fd 3 is a pipe the request arrives on and 'R' goes to fd 4, another pipe
 * (started by captrap-spawn, which cannot hand captrap a socket).
 *
 * Exit status when the command never runs: 125 for a launch failure (bad arguments, parent
 * already gone, cgroup join refused, a namespace or mount refused), 127 if COMMAND does not
 * exist, 126 if it cannot be executed (the same convention as the shell trampoline). A warm
 * launcher exits 75 without joining when a cgroup it would join, or one above it, has no room
 * under pids.max for its tasks (itself, and with pid its init).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "close-from.h"

#define LAUNCH_FAILED 125
#define MAX_PAIRS 64
#define RELAY_BUF 65536

#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#define MOUNT_ATTR_NOSUID 0x00000002
#define MOUNT_ATTR_NODEV 0x00000004
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
struct mount_attr_compat {
	uint64_t attr_set, attr_clr, propagation, userns_fd;
};

static const char *stage = "captrap-launch";

static void fail(const char *what, const char *arg, int err)
{
	if (err != 0)
		fprintf(stderr, "%s: %s%s%s: %s\n", stage, what, arg ? " " : "", arg ? arg : "", strerror(err));
	else
		fprintf(stderr, "%s: %s%s%s\n", stage, what, arg ? " " : "", arg ? arg : "");
	_exit(LAUNCH_FAILED);
}

static long parse_num(const char *opt, const char *s, long min, long max)
{
	char *end = NULL;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
		fail(opt, "needs a number in range", 0);
	return v;
}

/* ------------------------------------------------------------------------------------------ */
/* Options */

enum entry_kind { E_RO, E_RW, E_SYMLINK, E_HIDE };
struct entry {
	enum entry_kind kind;
	const char *path;   /* where in the view */
	const char *target; /* symlink target */
};

struct opts {
	long ppid;
	int keep_pwd, no_new_privs, drop_caps, view, no_tmp, pool, split_ctl;
	long uid, gid; /* -1: unchanged */
	int ns;        /* CLONE_NEW* flags */
	const char **joins;
	int njoin;
	struct entry *entries;
	int nentries;
	const char *chdir_to, *hostname, *proxy_path;
	int proxy_port;
	char **command;
	/* The contiguous argument strings, to wipe where a sandboxed process could read them. */
	char *argv_start, *argv_end;
};

static int ns_flag(const char *name)
{
	if (strcmp(name, "pid") == 0) return CLONE_NEWPID;
	if (strcmp(name, "mount") == 0) return CLONE_NEWNS;
	if (strcmp(name, "net") == 0) return CLONE_NEWNET;
	if (strcmp(name, "ipc") == 0) return CLONE_NEWIPC;
	if (strcmp(name, "uts") == 0) return CLONE_NEWUTS;
	if (strcmp(name, "cgroup") == 0) return CLONE_NEWCGROUP;
	fail("--unshare: unknown namespace", name, 0);
	return 0;
}

static void parse_unshare(struct opts *o, char *list)
{
	for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
		o->ns |= ns_flag(t);
}

static void check_abs(const char *opt, const char *p)
{
	if (p[0] != '/' || strstr(p, "/../") || strstr(p, "/./") || strlen(p) >= PATH_MAX - 16)
		fail(opt, "needs a normalised absolute path, got", 0);
}

static void parse(struct opts *o, int argc, char **argv)
{
	int i = 1;

	memset(o, 0, sizeof *o);
	o->uid = o->gid = -1;
	/* Measured before strtok_r below cuts the --unshare list short. */
	o->argv_start = argv[0];
	o->argv_end = argv[argc - 1] + strlen(argv[argc - 1]) + 1;
	o->joins = calloc((size_t)argc, sizeof *o->joins);
	o->entries = calloc((size_t)argc, sizeof *o->entries);
	if (!o->joins || !o->entries)
		fail("out of memory", NULL, ENOMEM);
	if (i + 1 < argc && strcmp(argv[i], "--ppid") == 0) {
		o->ppid = parse_num("--ppid", argv[i + 1], 1, INT_MAX);
		i += 2;
	} else {
		fail("usage: captrap-launch --ppid PID [options] -- COMMAND [ARG]...", NULL, 0);
	}
	for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
		const char *a = argv[i];
		int has1 = i + 1 < argc, has2 = i + 2 < argc;
		if (strcmp(a, "--no-new-privs") == 0) o->no_new_privs = 1;
		else if (strcmp(a, "--keep-pwd") == 0) o->keep_pwd = 1;
		else if (strcmp(a, "--drop-caps") == 0) o->drop_caps = 1;
		else if (strcmp(a, "--view") == 0) o->view = 1;
		else if (strcmp(a, "--no-tmp") == 0) o->no_tmp = 1;
		else if (strcmp(a, "--pool") == 0) o->pool = 1;
		else if (strcmp(a, "--split-ctl") == 0) o->split_ctl = 1;
		else if (strcmp(a, "--join") == 0 && has1) o->joins[o->njoin++] = argv[++i];
		else if (strcmp(a, "--uid") == 0 && has1) o->uid = parse_num("--uid", argv[++i], 0, 0x7fffffff);
		else if (strcmp(a, "--gid") == 0 && has1) o->gid = parse_num("--gid", argv[++i], 0, 0x7fffffff);
		else if (strcmp(a, "--unshare") == 0 && has1) parse_unshare(o, argv[++i]);
		else if (strcmp(a, "--chdir") == 0 && has1) o->chdir_to = argv[++i];
		else if (strcmp(a, "--hostname") == 0 && has1) o->hostname = argv[++i];
		else if ((strcmp(a, "--ro") == 0 || strcmp(a, "--rw") == 0 || strcmp(a, "--hide") == 0) && has1) {
			struct entry *e = &o->entries[o->nentries++];
			e->kind = a[2] == 'r' ? (a[3] == 'o' ? E_RO : E_RW) : E_HIDE;
			e->path = argv[++i];
			check_abs(a, e->path);
		} else if (strcmp(a, "--symlink") == 0 && has2) {
			struct entry *e = &o->entries[o->nentries++];
			e->kind = E_SYMLINK;
			e->target = argv[++i];
			e->path = argv[++i];
			check_abs(a, e->path);
		} else if (strcmp(a, "--net-proxy") == 0 && has2) {
			o->proxy_port = (int)parse_num("--net-proxy", argv[++i], 1, 65535);
			o->proxy_path = argv[++i];
		} else {
			fail("unknown argument", a, 0);
		}
	}
	if (o->pool) {
		/* Only what is done before the request arrives may be given here. */
		if (i < argc || o->view || o->uid >= 0 || o->gid >= 0 || o->no_new_privs || o->keep_pwd ||
		    o->chdir_to || o->hostname || o->proxy_path)
			fail("--pool takes only --join, --unshare, --drop-caps and the view's system part; the request brings the rest", NULL, 0);
		for (int k = 0; k < o->nentries; k++)
			if (o->entries[k].kind == E_RW)
				fail("--pool: the view's system part is read-only", o->entries[k].path, 0);
		if (o->nentries && !(o->ns & CLONE_NEWNS))
			fail("--pool: a view needs --unshare mount", NULL, 0);
		return;
	}
	if (o->split_ctl)
		fail("--split-ctl is a warm launcher's option (with --pool)", NULL, 0);
	if (i + 1 >= argc)
		fail("missing '-- COMMAND'", NULL, 0);
	o->command = &argv[i + 1];
	if (o->view && !(o->ns & CLONE_NEWNS))
		fail("--view needs --unshare mount", NULL, 0);
	if (o->proxy_path && (!(o->ns & CLONE_NEWNET) || !(o->ns & CLONE_NEWPID)))
		fail("--net-proxy needs --unshare net,pid", NULL, 0);
	if (o->hostname && !(o->ns & CLONE_NEWUTS))
		fail("--hostname needs --unshare uts", NULL, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Small helpers */

/* One write of "<pid>\n", checked: a short or refused write means we are not in the cgroup. */
static void join_cgroup(const char *procs, const char *line, size_t len)
{
	int fd = open(procs, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		fail("cannot join cgroup", procs, errno);
	n = write(fd, line, len);
	if (n < 0 || (size_t)n != len) {
		int err = n < 0 ? errno : EIO;
		close(fd);
		fail("cannot join cgroup", procs, err);
	}
	if (close(fd) != 0)
		fail("cannot join cgroup", procs, errno);
}

/* Exit status of a warm launcher that found no room under a pids.max before joining: not a failure. */
#define POOL_NO_ROOM 75

/* The first line of a small file (at most len-1 bytes), or -1. */
static int read_small(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	return 0;
}

/*
 * Whether the cgroup of `procs` and every cgroup above it have room under pids.max for `tasks`
 * more. Joining is a migration, which pids.max does not refuse (only forks are), so a warm
 * launcher (captrap's own, started ahead) checks right before it joins that it would not take a
 * group its tools have filled over its limit. The walk goes up to the hierarchy's root (the last
 * directory with a cgroup.procs); a cgroup without pids.max (another hierarchy, or on cgroup2 one
 * whose parent does not enable pids) is passed over.
 */
static int pids_room(const char *procs, long tasks)
{
	char dir[PATH_MAX], f[PATH_MAX + 16], buf[32];
	size_t n = strlen(procs);
	long max, cur;

	if (n >= sizeof dir)
		return 1;
	memcpy(dir, procs, n + 1);
	for (;;) {
		char *slash = strrchr(dir, '/');
		if (!slash || slash == dir)
			return 1;
		*slash = '\0';
		snprintf(f, sizeof f, "%s/cgroup.procs", dir);
		if (access(f, F_OK) != 0)
			return 1;
		snprintf(f, sizeof f, "%s/pids.max", dir);
		if (read_small(f, buf, sizeof buf) != 0 || strncmp(buf, "max", 3) == 0)
			continue;
		max = strtol(buf, NULL, 10);
		snprintf(f, sizeof f, "%s/pids.current", dir);
		if (read_small(f, buf, sizeof buf) != 0)
			return 1;
		cur = strtol(buf, NULL, 10);
		if (cur + tasks > max)
			return 0;
	}
}

static int write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* mkdir -p inside the view being built; components are created 0755. */
static void mkdirs(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	size_t len = strlen(path);

	if (len >= sizeof buf)
		fail("path too long", path, 0);
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) != 0 && errno != EEXIST)
			fail("cannot create directory in the view", buf, errno);
		*p = '/';
	}
	if (mkdir(buf, mode) != 0 && errno != EEXIST)
		fail("cannot create directory in the view", buf, errno);
}

static void touch(const char *path, mode_t mode)
{
	char parent[PATH_MAX];
	char *slash;
	int fd;

	snprintf(parent, sizeof parent, "%s", path);
	slash = strrchr(parent, '/');
	if (slash && slash != parent) {
		*slash = '\0';
		mkdirs(parent, 0755);
	}
	fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0 && errno != EEXIST)
		fail("cannot create mount point in the view", path, errno);
	if (fd >= 0)
		close(fd);
}

/* Read-only (or not), nosuid, nodev on a mount and everything below it. */
static void set_attrs(const char *path, int readonly, int nodev)
{
	struct mount_attr_compat attr = { 0, 0, 0, 0 };
	unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID;

	attr.attr_set = MOUNT_ATTR_NOSUID | (readonly ? MOUNT_ATTR_RDONLY : 0) | (nodev ? MOUNT_ATTR_NODEV : 0);
#ifdef SYS_mount_setattr
	if (syscall(SYS_mount_setattr, AT_FDCWD, path, AT_RECURSIVE, &attr, sizeof attr) == 0)
		return;
	if (errno != ENOSYS)
		fail("cannot set mount attributes on", path, errno);
#endif
	/* Before Linux 5.12 only the top mount can be changed; submounts keep their flags. */
	if (readonly)
		flags |= MS_RDONLY;
	if (nodev)
		flags |= MS_NODEV;
	if (mount(NULL, path, NULL, flags, NULL) != 0)
		fail("cannot remount", path, errno);
}

/*
 * Opens a host path to bind, before anything is covered. It is opened without following a final
 * symlink and its resolved name must equal the name asked for: a path that a hostile process
 * turned into a symlink since captrap checked it is refused, not followed. -1: it is gone.
 */
static int open_source(const char *src)
{
	char fdpath[64], seen[PATH_MAX];
	struct stat st;
	ssize_t n;
	int fd = open(src, O_PATH | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0) {
		if (errno == ENOENT)
			return -1; /* gone since captrap looked: nothing to show */
		fail("cannot open", src, errno);
	}
	snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", fd);
	n = readlink(fdpath, seen, sizeof seen - 1);
	if (n < 0)
		fail("cannot resolve", src, errno);
	seen[n] = '\0';
	if (strcmp(seen, src) != 0)
		fail("refusing to bind a path that resolves elsewhere (a symlink in it?)", src, 0);
	if (fstat(fd, &st) != 0)
		fail("cannot stat", src, errno);
	if (S_ISLNK(st.st_mode))
		fail("refusing to bind a symlink", src, 0);
	return fd;
}

/* Binds an opened source at DST (through its descriptor, so what was checked is what is bound). */
static void bind_fd(int fd, const char *dst, int readonly)
{
	char fdpath[64];
	struct stat st;

	if (fstat(fd, &st) != 0)
		fail("cannot stat bind source for", dst, errno);
	if (S_ISDIR(st.st_mode))
		mkdirs(dst, 0755);
	else
		touch(dst, 0644);
	snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", fd);
	if (mount(fdpath, dst, NULL, MS_BIND | MS_REC, NULL) != 0)
		fail("cannot bind", dst, errno);
	set_attrs(dst, readonly, 1);
}

static void mount_tmpfs(const char *dst, const char *data, unsigned long flags)
{
	mkdirs(dst, 0755);
	if (mount("tmpfs", dst, "tmpfs", flags, data) != 0)
		fail("cannot mount tmpfs on", dst, errno);
}

static char hidden_file[PATH_MAX];

static void hide(const char *dst)
{
	struct stat st;

	if (lstat(dst, &st) != 0 || S_ISLNK(st.st_mode))
		return; /* not in the view, or a link whose target is judged on its own */
	if (S_ISDIR(st.st_mode)) {
		if (mount("tmpfs", dst, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=000,size=4k") != 0)
			fail("cannot hide", dst, errno);
	} else if (mount(hidden_file, dst, NULL, MS_BIND, NULL) != 0 ||
		   mount(NULL, dst, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) {
		fail("cannot hide", dst, errno);
	}
}

static char newroot[PATH_MAX];

static void dev_node(const char *name)
{
	char src[64], dst[PATH_MAX + 64];

	snprintf(src, sizeof src, "/dev/%s", name);
	snprintf(dst, sizeof dst, "%s/dev/%s", newroot, name);
	touch(dst, 0666);
	if (mount(src, dst, NULL, MS_BIND, NULL) != 0)
		fail("cannot bind device", src, errno);
}

static void proc_readonly(const char *rel)
{
	char p[PATH_MAX + 64];

	snprintf(p, sizeof p, "%s/proc/%s", newroot, rel);
	if (access(p, F_OK) != 0)
		return;
	if (mount(p, p, NULL, MS_BIND | MS_REC, NULL) != 0)
		fail("cannot protect", p, errno);
	set_attrs(p, 1, 1);
}

static void proc_mask(const char *rel)
{
	char p[PATH_MAX + 64];

	snprintf(p, sizeof p, "%s/proc/%s", newroot, rel);
	hide(p);
}

static void bring_up_loopback(void)
{
	struct ifreq ifr;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (s < 0)
		fail("cannot open a socket to configure loopback", NULL, errno);
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
	if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0)
		fail("cannot read loopback flags", NULL, errno);
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
		fail("cannot bring up loopback", NULL, errno);
	close(s);
}

/* Whether a bound root is BASE or one of its ancestors. */
static int covers_base(const struct opts *o, const char *base)
{
	size_t bl = strlen(base);

	for (int i = 0; i < o->nentries; i++) {
		const struct entry *e = &o->entries[i];
		size_t pl = strlen(e->path);
		if (e->kind != E_RO && e->kind != E_RW)
			continue;
		if (pl <= bl && strncmp(base, e->path, pl) == 0 && (base[pl] == '\0' || base[pl] == '/' || pl == 1))
			return 1;
	}
	return 0;
}

static void rootpath(char *buf, size_t size, const char *path)
{
	if ((size_t)snprintf(buf, size, "%s%s", newroot, path) >= size)
		fail("path too long", path, 0);
}

/* The scratch tmpfs is on `base`: the new root's mount point and the hiding file go inside it. */
static void view_scratch(const char *base)
{
	snprintf(newroot, sizeof newroot, "%s/newroot", base);
	snprintf(hidden_file, sizeof hidden_file, "%s/hidden", base);
	if (mkdir(newroot, 0755) != 0 || mount(newroot, newroot, NULL, MS_BIND | MS_REC, NULL) != 0)
		fail("cannot prepare the view", newroot, errno);
	{
		int fd = open(hidden_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0);
		if (fd < 0)
			fail("cannot create the hiding file", NULL, errno);
		close(fd);
	}
}

/* Opens every root to bind, while nothing is covered yet; -1 for entries that bind nothing. */
static int *open_sources(const struct opts *o)
{
	int *fds = calloc((size_t)o->nentries + 1, sizeof *fds);

	if (!fds)
		fail("out of memory", NULL, ENOMEM);
	for (int i = 0; i < o->nentries; i++)
		fds[i] = o->entries[i].kind == E_RO || o->entries[i].kind == E_RW ? open_source(o->entries[i].path) : -1;
	return fds;
}

/* What the request names: the private /tmp first (roots under /tmp land on top of it), then the roots and links. */
static void view_request(const struct opts *o, int *fds)
{
	char dst[PATH_MAX + 64];

	if (!o->no_tmp) {
		rootpath(dst, sizeof dst, "/tmp");
		mount_tmpfs(dst, "mode=1777", MS_NOSUID | MS_NODEV);
	}
	for (int i = 0; i < o->nentries; i++) {
		const struct entry *e = &o->entries[i];
		rootpath(dst, sizeof dst, e->path);
		if ((e->kind == E_RO || e->kind == E_RW) && fds[i] >= 0) {
			bind_fd(fds[i], dst, e->kind == E_RO);
			close(fds[i]);
		} else if (e->kind == E_SYMLINK) {
			char parent[PATH_MAX + 64];
			char *slash;
			snprintf(parent, sizeof parent, "%s", dst);
			slash = strrchr(parent, '/');
			if (slash && slash != parent) {
				*slash = '\0';
				mkdirs(parent, 0755);
			}
			if (symlink(e->target, dst) != 0 && errno != EEXIST)
				fail("cannot create symlink", dst, errno);
		}
	}
	free(fds);
}

/* What every view has and no request changes: a minimal /dev and a fresh /proc. */
static void view_system(int own_pidns)
{
	char dst[PATH_MAX + 64];

	rootpath(dst, sizeof dst, "/dev");
	mount_tmpfs(dst, "mode=0755,size=64k", MS_NOSUID | MS_NOEXEC);
	static const char *devs[] = { "null", "zero", "full", "random", "urandom", "tty" };
	for (size_t i = 0; i < sizeof devs / sizeof *devs; i++)
		dev_node(devs[i]);
	static const char *links[][2] = { { "/proc/self/fd", "/dev/fd" }, { "/proc/self/fd/0", "/dev/stdin" }, { "/proc/self/fd/1", "/dev/stdout" }, { "/proc/self/fd/2", "/dev/stderr" } };
	for (size_t i = 0; i < sizeof links / sizeof *links; i++) {
		rootpath(dst, sizeof dst, links[i][1]);
		if (symlink(links[i][0], dst) != 0)
			fail("cannot create /dev links", NULL, errno);
	}
	rootpath(dst, sizeof dst, "/dev/shm");
	mount_tmpfs(dst, "mode=1777", MS_NOSUID | MS_NODEV);
	rootpath(dst, sizeof dst, "/dev");
	set_attrs(dst, 1, 0);
	/* dev/shm was mounted below dev and became read-only with it: open it again. */
	rootpath(dst, sizeof dst, "/dev/shm");
	if (mount(NULL, dst, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, NULL) != 0)
		fail("cannot make /dev/shm writable", NULL, errno);

	rootpath(dst, sizeof dst, "/proc");
	mkdirs(dst, 0755);
	/* Without our own pid namespace, show only processes of our own uid. */
	if (mount("proc", dst, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, own_pidns ? NULL : "hidepid=invisible") != 0 &&
	    mount("proc", dst, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, own_pidns ? NULL : "hidepid=2") != 0)
		fail("cannot mount /proc", NULL, errno);
	static const char *proc_ro[] = { "sys", "sysrq-trigger", "irq", "bus", "fs" };
	for (size_t i = 0; i < sizeof proc_ro / sizeof *proc_ro; i++)
		proc_readonly(proc_ro[i]);
	static const char *proc_hidden[] = { "kcore", "keys", "timer_list", "sched_debug", "kallsyms" };
	for (size_t i = 0; i < sizeof proc_hidden / sizeof *proc_hidden; i++)
		proc_mask(proc_hidden[i]);
}

/* Hidden paths (last, so no bind can uncover them), then the view becomes the root. */
static void view_enter(const struct opts *o)
{
	char dst[PATH_MAX + 64];

	for (int i = 0; i < o->nentries; i++) {
		if (o->entries[i].kind != E_HIDE)
			continue;
		rootpath(dst, sizeof dst, o->entries[i].path);
		hide(dst);
	}

	if (chdir(newroot) != 0 || syscall(SYS_pivot_root, ".", ".") != 0)
		fail("pivot_root into the view failed", NULL, errno);
	if (umount2(".", MNT_DETACH) != 0)
		fail("cannot detach the host's tree", NULL, errno);
	if (chdir("/") != 0)
		fail("chdir / failed", NULL, errno);
	/* Nothing may be created at the top of the view. */
	if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0)
		fail("cannot make the view's root read-only", NULL, errno);
}

/*
 * The new root: a tmpfs holding only what the options name. Every source is opened first, while
 * nothing is covered; the scratch tmpfs then goes on the first usable base directory, the view is
 * built inside it (private /tmp first, so roots under /tmp land on top of it), and a pivot_root
 * makes it the root and detaches the host's tree.
 */
static void build_view(const struct opts *o, int own_pidns)
{
	const char *base = NULL;
	static const char *bases[] = { "/tmp", "/run", "/mnt", "/var/tmp" };
	int *fds;

	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		fail("cannot make mounts private", NULL, errno);
	fds = open_sources(o);
	for (size_t i = 0; i < sizeof bases / sizeof *bases && !base; i++) {
		struct stat st;
		/* A root at or above the scratch dir would carry the scratch tmpfs (and an unhidden copy of the view) in its recursive bind. */
		if (covers_base(o, bases[i]))
			continue;
		if (lstat(bases[i], &st) == 0 && S_ISDIR(st.st_mode) && mount("tmpfs", bases[i], "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") == 0)
			base = bases[i];
	}
	if (!base)
		fail("no directory to build the view in: /tmp, /run, /mnt and /var/tmp are each missing or inside a bound root", NULL, 0);
	view_scratch(base);
	view_request(o, fds);
	view_system(own_pidns);
	view_enter(o);
}

/*
 * A warm launcher builds what no request changes ahead (view_system), on a scratch tmpfs over
 * /dev/shm: nothing of the host's /dev/shm belongs in a view, so no request needs a source
 * below it. The request then adds its /tmp, roots and links on top. It must not bind anything
 * at or below /dev or /proc (they are built already) nor above /dev/shm (a recursive bind would
 * carry the scratch tmpfs); captrap starts such requests cold.
 */
#define WARM_VIEW_BASE "/dev/shm"
static int warm_view_ready;
/* The view's system part built ahead (--pool --ro/--symlink/--hide): every request must name it again. */
static const struct opts *prebuilt;

static int same_entry(const struct entry *a, const struct entry *b)
{
	return a->kind == b->kind && strcmp(a->path, b->path) == 0 && (a->kind != E_SYMLINK || strcmp(a->target, b->target) == 0);
}

static void warm_view_prepare(int own_pidns, const struct opts *pool)
{
	struct stat st;

	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		fail("cannot make mounts private", NULL, errno);
	if (pool->nentries && covers_base(pool, WARM_VIEW_BASE))
		fail("a warm launcher cannot bind a root above", WARM_VIEW_BASE, 0);
	if (lstat(WARM_VIEW_BASE, &st) != 0 || !S_ISDIR(st.st_mode) || mount("tmpfs", WARM_VIEW_BASE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") != 0) {
		if (pool->nentries)
			fail("no directory to build the view ahead in", WARM_VIEW_BASE, errno);
		return; /* built per request instead */
	}
	view_scratch(WARM_VIEW_BASE);
	view_system(own_pidns);
	if (pool->nentries) {
		char dst[PATH_MAX + 64];
		struct opts sys = *pool;
		sys.no_tmp = 1; /* the request's own /tmp comes with it */
		view_request(&sys, open_sources(&sys));
		for (int i = 0; i < pool->nentries; i++) {
			if (pool->entries[i].kind != E_HIDE)
				continue;
			rootpath(dst, sizeof dst, pool->entries[i].path);
			hide(dst);
		}
		prebuilt = pool;
	}
	warm_view_ready = 1;
}

/*
 * A warm launcher's mount namespace is a copy of the host's table from when it started, and the
 * host may mount or unmount something while it waits. It keeps the host's mountinfo open (poll
 * reports POLLPRI once anything was mounted or unmounted there since the open) and the host's
 * mount namespace: a request that finds the table changed gets a fresh copy and a view built
 * from it as a cold launch builds one, so a view always shows the host as it is at the request.
 */
static int host_mountinfo = -1, host_mntns = -1;

static void watch_host_mounts(void)
{
	host_mountinfo = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
	host_mntns = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
	if (host_mountinfo < 0 || host_mntns < 0)
		fail("cannot watch the host's mount table (/proc/self/mountinfo, /proc/self/ns/mnt)", NULL, errno);
}

static void renew_view_if_mounts_changed(void)
{
	struct pollfd p = { host_mountinfo, POLLPRI, 0 };

	if (host_mountinfo < 0)
		return;
	if (poll(&p, 1, 0) < 0)
		fail("cannot check the host's mount table", NULL, errno);
	if (p.revents & (POLLPRI | POLLERR | POLLNVAL)) {
		if (setns(host_mntns, CLONE_NEWNS) != 0 || unshare(CLONE_NEWNS) != 0)
			fail("cannot copy the host's changed mount table afresh", NULL, errno);
		warm_view_ready = 0;
		prebuilt = NULL;
	}
	close(host_mountinfo);
	close(host_mntns);
	host_mountinfo = host_mntns = -1;
}

static int under(const char *path, const char *dir)
{
	size_t n = strlen(dir);
	return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* Whether request entry `e` was built ahead. */
static int is_prebuilt(const struct entry *e)
{
	for (int i = 0; prebuilt && i < prebuilt->nentries; i++)
		if (same_entry(e, &prebuilt->entries[i]))
			return 1;
	return 0;
}

static void warm_view_finish(const struct opts *o)
{
	struct opts req = *o;
	int n = 0;

	for (int i = 0; i < o->nentries; i++) {
		const struct entry *e = &o->entries[i];
		if (e->kind == E_HIDE)
			continue;
		if (under(e->path, "/dev") || under(e->path, "/proc"))
			fail("a warm launcher cannot bind below /dev or /proc:", e->path, 0);
	}
	if (covers_base(o, WARM_VIEW_BASE))
		fail("a warm launcher cannot bind a root above", WARM_VIEW_BASE, 0);
	/* The request must ask for everything built ahead: a view never shows what was not asked for. */
	for (int i = 0; prebuilt && i < prebuilt->nentries; i++) {
		int found = 0;
		for (int k = 0; k < o->nentries && !found; k++)
			found = same_entry(&prebuilt->entries[i], &o->entries[k]);
		if (!found)
			fail("the request does not fit this warm launcher: its view lacks", prebuilt->entries[i].path, 0);
	}
	/* What is left to do: the request's own binds and links, then every hide a request bind could uncover (cold order: binds, then hides). */
	req.entries = calloc((size_t)o->nentries + 1, sizeof *req.entries);
	if (!req.entries)
		fail("out of memory", NULL, ENOMEM);
	for (int i = 0; i < o->nentries; i++)
		if (o->entries[i].kind != E_HIDE && !is_prebuilt(&o->entries[i]))
			req.entries[n++] = o->entries[i];
	for (int i = 0; i < o->nentries; i++) {
		const struct entry *h = &o->entries[i];
		int redo = !is_prebuilt(h);
		if (h->kind != E_HIDE)
			continue;
		for (int k = 0; k < n && !redo; k++) {
			const struct entry *b = &req.entries[k];
			if (b->kind != E_RO && b->kind != E_RW)
				continue;
			/* A bind below a hide built ahead would land inside the hiding mount: captrap starts such requests cold. */
			if (under(b->path, h->path) && strcmp(b->path, h->path) != 0)
				fail("a warm launcher cannot bind below a path hidden ahead:", b->path, 0);
			redo = under(h->path, b->path);
		}
		if (redo)
			req.entries[n++] = *h;
	}
	req.nentries = n;
	view_request(&req, open_sources(&req));
	view_enter(&req);
}

/* What does not depend on the request: the namespaces themselves and a live loopback. */
static void make_namespaces(int other_ns)
{
	if (other_ns && unshare(other_ns) != 0)
		fail("cannot create namespaces", NULL, errno);
	if (other_ns & CLONE_NEWNET)
		bring_up_loopback();
}

/* What the request decides, inside the namespaces: hostname, view, working directory. */
static void fill_namespaces(const struct opts *o)
{
	if (o->hostname && sethostname(o->hostname, strlen(o->hostname)) != 0)
		fail("cannot set hostname", NULL, errno);
	if (o->view && warm_view_ready)
		warm_view_finish(o);
	else if (warm_view_ready)
		fail("a warm launcher with a prepared view got a request without one", NULL, 0);
	else if (o->view)
		build_view(o, (o->ns & CLONE_NEWPID) != 0);
	if (o->chdir_to && chdir(o->chdir_to) != 0)
		fail("the working directory is not inside the sandbox's view:", o->chdir_to, errno);
}

/* Everything that happens in the namespaces before the command: unshare, view, hostname. */
static void enter_namespaces(const struct opts *o, int other_ns)
{
	make_namespaces(other_ns);
	fill_namespaces(o);
}

static int last_cap(void)
{
	FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "re");
	int n = -1;

	if (f) {
		if (fscanf(f, "%d", &n) != 1)
			n = -1;
		fclose(f);
	}
	return n > 0 && n < 64 ? n : 63;
}

/* Permitted and effective sets reduced to `keep` (a mask of capabilities below 32), the rest emptied. */
static void limit_caps(uint32_t keep)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];

	memset(d, 0, sizeof d);
	d[0].permitted = d[0].effective = keep;
	if (syscall(SYS_capset, &h, d) != 0)
		fail("cannot clear capabilities", NULL, errno);
}

/* Set once this process's bounding set is empty: what it forks inherits that, so nobody drops it again. */
static int bset_empty;

static void drop_bounding_set(int capmax)
{
	for (int c = 0; c <= capmax; c++)
		if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL)
			fail("cannot drop the capability bounding set", NULL, errno);
	bset_empty = 1;
}

/* The command's identity: no groups, the given ids, no capabilities at all, no_new_privs. */
static void drop_identity(const struct opts *o, int capmax)
{
	if (o->drop_caps) {
		if (!bset_empty)
			drop_bounding_set(capmax);
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
			fail("cannot clear ambient capabilities", NULL, errno);
	}
	if (o->uid >= 0 || o->gid >= 0 || o->drop_caps) {
		if (getuid() == 0 && setgroups(0, NULL) != 0)
			fail("cannot clear supplementary groups", NULL, errno);
	}
	if (o->gid >= 0 && setresgid((gid_t)o->gid, (gid_t)o->gid, (gid_t)o->gid) != 0)
		fail("cannot switch gid", NULL, errno);
	if (o->uid >= 0 && setresuid((uid_t)o->uid, (uid_t)o->uid, (uid_t)o->uid) != 0)
		fail("cannot switch uid", NULL, errno);
	if (o->drop_caps)
		limit_caps(0);
	if ((o->no_new_privs || o->drop_caps) && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		fail("cannot set no_new_privs", NULL, errno);
}

static void exec_command(const struct opts *o)
{
	int err;

	if (!o->keep_pwd)
		unsetenv("PWD");
	execvp(o->command[0], o->command);
	err = errno;
	fprintf(stderr, "captrap-launch: cannot execute %s: %s\n", o->command[0], strerror(err));
	_exit(err == ENOENT || err == ENOTDIR ? 127 : 126);
}

/* ------------------------------------------------------------------------------------------ */
/* P1 and P2: the namespace's init and the command */

static volatile sig_atomic_t fwd_target = 0;

static void forward_signal(int sig)
{
	if (fwd_target > 0)
		kill((pid_t)fwd_target, sig);
}

static const int forwarded[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGCONT };

static void install_forwarding(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = forward_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
		sigaction(forwarded[i], &sa, NULL);
}

/* One byte plus room for one descriptor: the message that carries the egress port from P1 to P0. */
struct fd_msg {
	char byte;
	struct iovec iov;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg;
};

static void fd_msg_init(struct fd_msg *m)
{
	memset(m, 0, sizeof *m);
	m->byte = 'L';
	m->iov.iov_base = &m->byte;
	m->iov.iov_len = 1;
	m->msg.msg_iov = &m->iov;
	m->msg.msg_iovlen = 1;
	m->msg.msg_control = m->u.buf;
	m->msg.msg_controllen = sizeof m->u.buf;
}

static void send_fd(int sock, int fd)
{
	struct fd_msg m;
	struct cmsghdr *c;

	fd_msg_init(&m);
	c = CMSG_FIRSTHDR(&m.msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &m.msg, 0) != 1)
		fail("cannot hand the egress port to the relay", NULL, errno);
}

static int egress_listener(int port)
{
	struct sockaddr_in a;
	int one = 1, s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (s < 0)
		fail("cannot create the egress port", NULL, errno);
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 64) != 0)
		fail("cannot listen on the egress port", NULL, errno);
	return s;
}

static void wipe_argv(const struct opts *o)
{
	static const char name[] = "captrap-init";
	size_t len = (size_t)(o->argv_end - o->argv_start);

	if (!o->argv_start || o->argv_end <= o->argv_start)
		return;
	memset(o->argv_start, 0, len);
	memcpy(o->argv_start, name, len > sizeof name ? sizeof name : len - 1);
}

static void init_arm(int status_sock)
{
	stage = "captrap-launch (sandbox init)";
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
		fail("cannot set the parent-death signal", NULL, errno);
	{
		/* If P0 died before the signal was armed, its end of the socket is closed. */
		struct pollfd p = { status_sock, POLLOUT, 0 };
		if (poll(&p, 1, 0) < 0 || (p.revents & (POLLHUP | POLLERR)))
			_exit(LAUNCH_FAILED);
	}
}

/* P1 once its namespaces are complete: the egress port, the command, then reaping until it exits. */
static void __attribute__((noreturn)) init_command(const struct opts *o, int status_sock)
{
	int capmax, status = 0;
	pid_t cmd;

	if (o->proxy_path) {
		int l = egress_listener(o->proxy_port);
		send_fd(status_sock, l);
		close(l);
	}
	capmax = last_cap();
	install_forwarding();
	cmd = fork();
	if (cmd < 0)
		fail("cannot fork the command", NULL, errno);
	if (cmd == 0) {
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = SIG_DFL;
		for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
			sigaction(forwarded[i], &sa, NULL);
		close(status_sock);
		stage = "captrap-launch";
		drop_identity(o, capmax);
		/* A credential change cleared the parent-death signal; arm it again. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
			fail("cannot set the parent-death signal", NULL, errno);
		if (getppid() != 1)
			_exit(LAUNCH_FAILED);
		close_from(3);
		exec_command(o);
	}
	fwd_target = cmd;
	/* Our command line (paths of the sidecar's state, cgroups, its pid) is readable as /proc/1/cmdline inside. */
	wipe_argv(o);
	/* Nothing in the sandbox may read this process's memory or signal it with effect. */
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	if (!bset_empty)
		for (int c = 0; c <= capmax; c++)
			prctl(PR_CAPBSET_DROP, c, 0, 0, 0);
	/* Only what forwarding a signal to a command of another uid takes. */
	limit_caps(1u << CAP_KILL);
	for (;;) {
		int st;
		pid_t p = waitpid(-1, &st, 0);
		if (p < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p == cmd) {
			status = st;
			break;
		}
	}
	write_full(status_sock, &status, sizeof status);
	_exit(0);
}

static void __attribute__((noreturn)) run_init(const struct opts *o, int status_sock)
{
	init_arm(status_sock);
	enter_namespaces(o, o->ns & ~CLONE_NEWPID);
	init_command(o, status_sock);
}

/* ------------------------------------------------------------------------------------------ */
/* P0: leader on the host side */

struct pair {
	int fd[2];              /* 0: inside (tool), 1: captrap's proxy */
	char *buf[2];           /* buf[i]: bytes read from fd[i], waiting for fd[1 - i] */
	size_t len[2], off[2];
	int eof[2];             /* fd[i] said EOF */
	int shut[2];            /* fd[i] was shut down for writing */
};

static struct pair *pairs[MAX_PAIRS];

static void pair_free(int i)
{
	struct pair *p = pairs[i];
	close(p->fd[0]);
	close(p->fd[1]);
	free(p->buf[0]);
	free(p->buf[1]);
	free(p);
	pairs[i] = NULL;
}

static void relay_accept(int listener, const char *path)
{
	struct sockaddr_un a;
	int in = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), out, slot = -1;

	if (in < 0)
		return;
	for (int i = 0; i < MAX_PAIRS && slot < 0; i++)
		if (!pairs[i])
			slot = i;
	out = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	memset(&a, 0, sizeof a);
	a.sun_family = AF_UNIX;
	snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
	if (slot < 0 || out < 0 || connect(out, (struct sockaddr *)&a, sizeof a) != 0) {
		close(in);
		if (out >= 0)
			close(out);
		return;
	}
	pairs[slot] = calloc(1, sizeof(struct pair));
	if (!pairs[slot] || !(pairs[slot]->buf[0] = malloc(RELAY_BUF)) || !(pairs[slot]->buf[1] = malloc(RELAY_BUF))) {
		close(in);
		close(out);
		if (pairs[slot]) {
			free(pairs[slot]->buf[0]);
			free(pairs[slot]);
			pairs[slot] = NULL;
		}
		return;
	}
	pairs[slot]->fd[0] = in;
	pairs[slot]->fd[1] = out;
}

/* Moves what can move for one pair; returns 0 when the pair is finished. */
static int relay_step(struct pair *p, const struct pollfd *pf)
{
	for (int i = 0; i < 2; i++) {
		int from = p->fd[i], to = p->fd[1 - i];
		short rev = pf[i].revents;
		if (!p->eof[i] && p->len[i] == 0 && (rev & (POLLIN | POLLHUP | POLLERR))) {
			ssize_t n = read(from, p->buf[i], RELAY_BUF);
			if (n > 0) {
				p->len[i] = (size_t)n;
				p->off[i] = 0;
			} else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
				if (n < 0)
					return 0;
				p->eof[i] = 1;
			}
		}
		if (p->len[i] > 0) {
			ssize_t n = write(to, p->buf[i] + p->off[i], p->len[i]);
			if (n > 0) {
				p->off[i] += (size_t)n;
				p->len[i] -= (size_t)n;
			} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
				return 0;
			}
		}
		if (p->eof[i] && p->len[i] == 0 && !p->shut[1 - i]) {
			shutdown(to, SHUT_WR);
			p->shut[1 - i] = 1;
		}
	}
	return !(p->shut[0] && p->shut[1]);
}

static int recv_fd(int sock)
{
	struct fd_msg m;
	struct cmsghdr *c;
	int fd = -1;

	fd_msg_init(&m);
	if (recvmsg(sock, &m.msg, MSG_CMSG_CLOEXEC) != 1)
		return -1;
	c = CMSG_FIRSTHDR(&m.msg);
	if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

static void __attribute__((noreturn)) report(int status)
{
	if (WIFSIGNALED(status)) {
		int sig = WTERMSIG(status);
		struct rlimit no_core = { 0, 0 };
		struct sigaction sa;
		sigset_t all;
		setrlimit(RLIMIT_CORE, &no_core);
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = SIG_DFL;
		sigaction(sig, &sa, NULL);
		sigfillset(&all);
		sigprocmask(SIG_UNBLOCK, &all, NULL);
		kill(getpid(), sig);
		_exit(128 + sig);
	}
	_exit(WIFEXITED(status) ? WEXITSTATUS(status) : LAUNCH_FAILED);
}

static void __attribute__((noreturn)) run_leader(const struct opts *o, pid_t init, int status_sock)
{
	int listener = -1, status = 0, have_status = 0;

	fwd_target = init;
	install_forwarding();
	/* A relay write to a closed peer must not kill the leader. */
	signal(SIGPIPE, SIG_IGN);
	if (o->proxy_path) {
		listener = recv_fd(status_sock);
		if (listener < 0) {
			/* The init failed before it could open the port; its exit status says why. */
		} else {
			fcntl(listener, F_SETFL, O_NONBLOCK);
		}
	}
	while (!have_status) {
		struct pollfd pf[2 + 2 * MAX_PAIRS];
		int idx[MAX_PAIRS], n = 0;
		pf[n++] = (struct pollfd){ status_sock, POLLIN, 0 };
		pf[n++] = (struct pollfd){ listener, POLLIN, 0 };
		for (int i = 0; i < MAX_PAIRS; i++) {
			struct pair *p = pairs[i];
			idx[i] = -1;
			if (!p)
				continue;
			idx[i] = n;
			for (int k = 0; k < 2; k++) {
				short ev = 0;
				if (!p->eof[k] && p->len[k] == 0)
					ev |= POLLIN;
				if (p->len[1 - k] > 0)
					ev |= POLLOUT;
				pf[n++] = (struct pollfd){ p->fd[k], ev, 0 };
			}
		}
		if (poll(pf, (nfds_t)n, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[0].revents) {
			ssize_t r = read(status_sock, &status, sizeof status);
			if (r == (ssize_t)sizeof status) {
				have_status = 1;
				break;
			}
			if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
				break; /* the init died without a word: its own wait status tells */
		}
		if (listener >= 0 && (pf[1].revents & POLLIN))
			relay_accept(listener, o->proxy_path);
		for (int i = 0; i < MAX_PAIRS; i++)
			if (pairs[i] && idx[i] >= 0 && !relay_step(pairs[i], &pf[idx[i]]))
				pair_free(i);
	}
	for (;;) {
		int st;
		pid_t p = waitpid(init, &st, 0);
		if (p < 0 && errno == EINTR)
			continue;
		if (!have_status)
			status = p == init ? st : (LAUNCH_FAILED << 8);
		break;
	}
	report(status);
}

/* ------------------------------------------------------------------------------------------ */
/* Warm mode: made ahead, completed by a request (see the header comment) */

#define CTL_FD 3
/* Where 'R' goes: fd 3 itself (a socket), or with --split-ctl fd 4 (fd 3 is then a pipe we read). */
static int ready_fd = CTL_FD;

static void close_ctl(void)
{
	close(CTL_FD);
	if (ready_fd != CTL_FD)
		close(ready_fd);
}
#define SPEC_MAX (8u << 20)

struct spec {
	unsigned char *raw; /* header + payload, as received (forwarded to the init as is) */
	size_t rawlen;
	char *cwd;
	char **argv, **envp;
	int argc;
};

static uint32_t le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int read_full(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* 0: a whole, well-formed request is in *sp; -1: EOF before its first byte; fails on anything else. */
static int read_spec(int fd, struct spec *sp)
{
	unsigned char h[16];
	uint32_t argc, envc, len;
	char *p, *end;
	ssize_t n;

	do
		n = read(fd, h, 1);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		return -1;
	if (n < 0 || read_full(fd, h + 1, sizeof h - 1) != 0)
		fail("cannot read the request", NULL, n < 0 ? errno : EIO);
	argc = le32(h + 4);
	envc = le32(h + 8);
	len = le32(h + 12);
	if (memcmp(h, "CTS1", 4) != 0 || len > SPEC_MAX || argc < 2 || argc > len || envc > len)
		fail("malformed request header", NULL, 0);
	sp->rawlen = sizeof h + len;
	sp->raw = malloc(sp->rawlen + 1);
	sp->argv = calloc((size_t)argc + 1, sizeof *sp->argv);
	sp->envp = calloc((size_t)envc + 1, sizeof *sp->envp);
	if (!sp->raw || !sp->argv || !sp->envp)
		fail("out of memory", NULL, ENOMEM);
	memcpy(sp->raw, h, sizeof h);
	if (read_full(fd, sp->raw + sizeof h, len) != 0)
		fail("the request was cut short", NULL, 0);
	sp->raw[sp->rawlen] = '\0';
	p = (char *)sp->raw + sizeof h;
	end = p + len;
	/* Every string must end inside the payload, and nothing may follow the last one. */
	for (uint32_t i = 0; i < 1 + argc + envc; i++) {
		char *z = memchr(p, '\0', (size_t)(end - p));
		if (!z)
			fail("malformed request: unterminated string", NULL, 0);
		if (i == 0)
			sp->cwd = p;
		else if (i <= argc)
			sp->argv[i - 1] = p;
		else
			sp->envp[i - 1 - argc] = p;
		p = z + 1;
	}
	if (p != end)
		fail("malformed request: trailing bytes", NULL, 0);
	sp->argc = (int)argc;
	return 0;
}

/* The request, parsed like a cold command line, must fit what was made ahead. */
static void adopt_spec(struct opts *o, const struct opts *pool, struct spec *sp)
{
	extern char **environ;

	parse(o, sp->argc, sp->argv);
	if (o->pool || o->ppid != pool->ppid || o->ns != pool->ns || o->njoin != 0 || (pool->drop_caps && !o->drop_caps))
		fail("the request does not fit this warm launcher (--ppid, --unshare, --join or --drop-caps differ)", NULL, 0);
	/* What a sandbox can read as /proc/1/cmdline is our real command line. */
	o->argv_start = pool->argv_start;
	o->argv_end = pool->argv_end;
	if (sp->cwd[0] != '\0' && chdir(sp->cwd) != 0)
		fail("cannot enter the working directory", sp->cwd, errno);
	environ = sp->envp;
}

static void signal_ready(int fd)
{
	if (write_full(fd, "R", 1) != 0)
		fail("cannot tell captrap this launcher is ready", NULL, errno);
}

static void __attribute__((noreturn)) pool_init(const struct opts *pool, int status_sock)
{
	struct opts o;
	struct spec sp;
	char ready = 'R';

	init_arm(status_sock);
	make_namespaces(pool->ns & ~CLONE_NEWPID);
	if (pool->ns & CLONE_NEWNS)
		warm_view_prepare(1, pool);
	/* Ahead of the request: the mounts still to come need CAP_SYS_ADMIN in effect, not in the bounding set. */
	if (pool->drop_caps)
		drop_bounding_set(last_cap());
	if (write_full(status_sock, &ready, 1) != 0 || read_spec(status_sock, &sp) != 0)
		_exit(LAUNCH_FAILED); /* P0 is gone or retired us */
	adopt_spec(&o, pool, &sp);
	renew_view_if_mounts_changed();
	fill_namespaces(&o);
	init_command(&o, status_sock);
}

static void __attribute__((noreturn)) pool_main(const struct opts *pool)
{
	struct opts o;
	struct spec sp;
	int capmax;

	if (pool->ns & CLONE_NEWNS)
		watch_host_mounts();
	if (pool->ns & CLONE_NEWPID) {
		int sv[2];
		char ready = 0;
		pid_t init;
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
			fail("cannot create the status channel", NULL, errno);
		if (unshare(CLONE_NEWPID) != 0)
			fail("cannot create a pid namespace", NULL, errno);
		init = fork();
		if (init < 0)
			fail("cannot fork the sandbox init", NULL, errno);
		if (init == 0) {
			close(sv[0]);
			close_ctl();
			pool_init(pool, sv[1]);
		}
		close(sv[1]);
		if (host_mountinfo >= 0) {
			close(host_mountinfo);
			close(host_mntns);
		}
		if (read_full(sv[0], &ready, 1) != 0 || ready != 'R')
			fail("the sandbox init failed before it was ready", NULL, 0);
		signal_ready(ready_fd);
		if (read_spec(CTL_FD, &sp) != 0)
			_exit(0); /* retired by captrap; the init dies with us */
		/* Forwarded as received: parsing writes into the strings (the --unshare list). */
		if (write_full(sv[0], sp.raw, sp.rawlen) != 0)
			fail("cannot hand the request to the sandbox init", NULL, errno);
		adopt_spec(&o, pool, &sp);
		close_ctl();
		run_leader(&o, init, sv[0]);
	}
	capmax = last_cap();
	make_namespaces(pool->ns);
	if (pool->ns & CLONE_NEWNS)
		warm_view_prepare(0, pool);
	if (pool->drop_caps)
		drop_bounding_set(capmax);
	signal_ready(ready_fd);
	if (read_spec(CTL_FD, &sp) != 0)
		_exit(0);
	adopt_spec(&o, pool, &sp);
	close_ctl();
	renew_view_if_mounts_changed();
	fill_namespaces(&o);
	drop_identity(&o, capmax);
	if (o.uid >= 0 || o.gid >= 0 || o.drop_caps) {
		/* A credential change cleared the parent-death signal; arm it again and re-check. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
			fail("cannot set the parent-death signal", NULL, errno);
		if ((long)getppid() != o.ppid)
			fail("captrap (the parent) is already gone; not starting the command", NULL, 0);
	}
	exec_command(&o);
	_exit(LAUNCH_FAILED);
}

int main(int argc, char **argv)
{
	struct opts o;
	char line[32];
	int len, capmax;

	/* Armed before anything else so the window before the getppid() check below is the only one. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
		fail("cannot set the parent-death signal", NULL, errno);
	parse(&o, argc, argv);
	/* If captrap died before the signal was armed, we were reparented and nobody will kill us. */
	if ((long)getppid() != o.ppid)
		fail("captrap (the parent) is already gone; not starting the command", NULL, 0);
	/* A warm launcher keeps its request channel (fd 3, and with --split-ctl fd 4) until the request has been read. */
	if (o.split_ctl)
		ready_fd = CTL_FD + 1;
	close_from(o.pool ? ready_fd + 1 : 3);

	len = snprintf(line, sizeof line, "%ld\n", (long)getpid());
	for (int j = 0; j < o.njoin; j++) {
		if (o.pool && !pids_room(o.joins[j], (o.ns & CLONE_NEWPID) ? 2 : 1)) {
			fprintf(stderr, "captrap-launch: no room under pids.max above %s; not joining\n", o.joins[j]);
			_exit(POOL_NO_ROOM);
		}
		join_cgroup(o.joins[j], line, (size_t)len);
	}
	if (o.pool)
		pool_main(&o);

	if (o.ns & CLONE_NEWPID) {
		int sv[2];
		pid_t init;
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
			fail("cannot create the status channel", NULL, errno);
		if (unshare(CLONE_NEWPID) != 0)
			fail("cannot create a pid namespace", NULL, errno);
		init = fork();
		if (init < 0)
			fail("cannot fork the sandbox init", NULL, errno);
		if (init == 0) {
			close(sv[0]);
			run_init(&o, sv[1]);
		}
		close(sv[1]);
		run_leader(&o, init, sv[0]);
	}

	capmax = last_cap();
	enter_namespaces(&o, o.ns);
	drop_identity(&o, capmax);
	if (o.uid >= 0 || o.gid >= 0 || o.drop_caps) {
		/* A credential change cleared the parent-death signal; arm it again and re-check. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
			fail("cannot set the parent-death signal", NULL, errno);
		if ((long)getppid() != o.ppid)
			fail("captrap (the parent) is already gone; not starting the command", NULL, 0);
	}
	exec_command(&o);
	return LAUNCH_FAILED;
}
