// captrap-spawn: starts processes for captrap (its warm launchers), so that captrap's own
// process is not forked for each of them.
//
// Why: a spawn from Node forks the whole Node process, and a fork copies its page tables: the
// caller's thread is held for time that grows with its resident memory (on the 2-core VM this was
// measured on, 1.7 ms at 45 MB, 12 ms at 145 MB, 39 ms at 545 MB). A sidecar refills its warm
// launchers after every tool call; through this small resident process a refill costs captrap a
// pipe write and four open()s instead.
//
// Usage: captrap-spawn PPID. It dies with its parent (PR_SET_PDEATHSIG, checked against PPID after
// arming, like captrap-launch), and exits on stdin EOF. What it started dies with it in turn: each
// child arms a parent-death signal (SIGKILL) before its exec.
//
// Protocol, little-endian, on stdin (requests, from captrap) and stdout (replies):
//   request:  16-byte header: 4-byte type, uint32 id, uint32 a, uint32 b
//     "SPWN" a = count of strings, b = payload length; the payload follows: NUL-terminated
//            strings, the program's path and then its argv (argv[0] first). The child gets
//            fd 0 /dev/null, fd 1 and 2 pipes it writes, fd 3 a pipe it reads, fd 4 a pipe it
//            writes, nothing else; an empty environment; working directory /; every signal at
//            its default and none blocked.
//     "CLOS" captrap has opened its ends of id's pipes: this process closes its copies.
//     "KILL" a = signal: sent to id's process if it has not been reaped yet (never to a reused pid).
//   reply:    32 bytes: 4-byte type, uint32 id, int32 v[6]
//     "PIPE" v[0] = pid, v[1..4] = this process's descriptors of captrap's ends, in the child's
//            order: fd 1's read end, fd 2's read end, fd 3's write end, fd 4's read end. captrap
//            opens them as /proc/<this pid>/fd/<n> and then sends CLOS.
//     "EXIT" v[0] = the wait status of id's process (always after its PIPE).
//     "FAIL" v[0] = errno: id was not started (no PIPE or EXIT follows).
// A malformed request is fatal: the only writer is captrap, and it is gone or broken.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "close-from.h"

#define MAX_CHILDREN 4096
#define MAX_PAYLOAD (1u << 20)
#define CHILD_FDS 4

struct child {
	uint32_t id;
	pid_t pid;            /* 0 once reaped */
	int ends[CHILD_FDS];  /* captrap's ends, -1 once closed */
	int used;
};

static struct child children[MAX_CHILDREN];

static void die(const char *what, int err)
{
	fprintf(stderr, "captrap-spawn: %s%s%s\n", what, err ? ": " : "", err ? strerror(err) : "");
	_exit(1);
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void reply(const char *type, uint32_t id, const int32_t *v, int n)
{
	unsigned char r[32];
	size_t off = 0;

	memset(r, 0, sizeof r);
	memcpy(r, type, 4);
	put32(r + 4, id);
	for (int i = 0; i < n && i < 6; i++)
		put32(r + 8 + 4 * i, (uint32_t)v[i]);
	while (off < sizeof r) {
		ssize_t w = write(1, r + off, sizeof r - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			_exit(0); /* captrap is gone */
		off += (size_t)w;
	}
}

static struct child *find(uint32_t id)
{
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i].used && children[i].id == id)
			return &children[i];
	return NULL;
}

static void release_if_done(struct child *c)
{
	if (c->pid != 0)
		return;
	for (int i = 0; i < CHILD_FDS; i++)
		if (c->ends[i] >= 0)
			return;
	c->used = 0;
}

static void close_ends(struct child *c)
{
	for (int i = 0; i < CHILD_FDS; i++) {
		if (c->ends[i] >= 0)
			close(c->ends[i]);
		c->ends[i] = -1;
	}
}

/* In the child, before exec: a process as a plain fork + exec from captrap would give it. */
static void __attribute__((noreturn)) child_exec(const char *path, char **argv, const int fds[5], pid_t helper)
{
	sigset_t none;
	char *envp[] = { NULL };
	const char *msg = "captrap-spawn: cannot execute ";

	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL); /* fails harmlessly for SIGKILL, SIGSTOP and the real-time ones libc keeps */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* Whatever is started dies with this process (and so with captrap): kept across the exec. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != helper)
		_exit(125);
	/* Moved above every target first, so no dup2 below overwrites a source still needed. */
	int high[5];
	for (int i = 0; i < 5; i++) {
		high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 16);
		if (high[i] < 0)
			_exit(125);
	}
	for (int i = 0; i < 5; i++)
		if (dup2(high[i], i) < 0)
			_exit(125);
	close_from(5);
	if (chdir("/") != 0)
		_exit(125);
	execve(path, argv, envp);
	int err = errno;
	if (write(2, msg, strlen(msg)) < 0 || write(2, path, strlen(path)) < 0 || write(2, "\n", 1) < 0) {
		/* nothing more to say */
	}
	_exit(err == ENOENT ? 127 : 126);
}

static void spawn_one(uint32_t id, const char *path, char **argv)
{
	int p[CHILD_FDS][2];
	int made = 0, err = 0;
	struct child *c = NULL;

	if (find(id))
		die("a request reused a live id", 0);
	for (int i = 0; i < MAX_CHILDREN && !c; i++)
		if (!children[i].used)
			c = &children[i];
	if (!c) {
		int32_t e = EAGAIN;
		reply("FAIL", id, &e, 1);
		return;
	}
	for (; made < CHILD_FDS; made++) {
		if (pipe2(p[made], O_CLOEXEC) != 0) {
			err = errno;
			break;
		}
	}
	int devnull = err ? -1 : open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (!err && devnull < 0)
		err = errno;
	pid_t self = getpid();
	pid_t pid = err ? -1 : fork();
	if (pid == 0) {
		/* 0 /dev/null, 1 and 2 written, 3 read, 4 written. */
		int fds[5] = { devnull, p[0][1], p[1][1], p[2][0], p[3][1] };
		child_exec(path, argv, fds, self);
	}
	if (pid < 0 && !err)
		err = errno;
	if (devnull >= 0)
		close(devnull);
	/* The child's ends are the child's now; keep captrap's until it has opened them. */
	int mine[CHILD_FDS] = { p[0][0], p[1][0], p[2][1], p[3][0] };
	int theirs[CHILD_FDS] = { p[0][1], p[1][1], p[2][0], p[3][1] };
	for (int i = 0; i < made; i++) {
		close(theirs[i]);
		if (err)
			close(mine[i]);
	}
	if (err) {
		int32_t e = err;
		reply("FAIL", id, &e, 1);
		return;
	}
	c->used = 1;
	c->id = id;
	c->pid = pid;
	int32_t v[5] = { pid, mine[0], mine[1], mine[2], mine[3] };
	for (int i = 0; i < CHILD_FDS; i++)
		c->ends[i] = mine[i];
	reply("PIPE", id, v, 5);
}

static void reap(void)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < MAX_CHILDREN; i++) {
			struct child *c = &children[i];
			if (c->used && c->pid == pid) {
				int32_t v = status;
				c->pid = 0;
				reply("EXIT", c->id, &v, 1);
				release_if_done(c);
				break;
			}
		}
	}
}

/* Handles every whole request in buf[0..len); returns how many bytes it used. */
static size_t handle(unsigned char *buf, size_t len)
{
	size_t used = 0;

	while (len - used >= 16) {
		unsigned char *h = buf + used;
		uint32_t id = get32(h + 4), a = get32(h + 8), b = get32(h + 12);
		if (memcmp(h, "SPWN", 4) == 0) {
			if (b > MAX_PAYLOAD || a < 2 || a > b)
				die("malformed SPWN request", 0);
			if (len - used - 16 < b)
				break;
			char *p = (char *)h + 16, *end = p + b;
			/* a strings: the program's path, then its argv (a - 1 of them, NULL-terminated here). */
			char **argv = calloc((size_t)a, sizeof *argv);
			char *path = NULL;
			if (!argv)
				die("out of memory", ENOMEM);
			for (uint32_t i = 0; i < a; i++) {
				char *z = memchr(p, '\0', (size_t)(end - p));
				if (!z)
					die("malformed SPWN request: unterminated string", 0);
				if (i == 0)
					path = p;
				else
					argv[i - 1] = p;
				p = z + 1;
			}
			if (p != end)
				die("malformed SPWN request: trailing bytes", 0);
			spawn_one(id, path, argv);
			free(argv);
			used += 16 + b;
		} else if (memcmp(h, "CLOS", 4) == 0) {
			struct child *c = find(id);
			if (c) {
				close_ends(c);
				release_if_done(c);
			}
			used += 16;
		} else if (memcmp(h, "KILL", 4) == 0) {
			struct child *c = find(id);
			if (a == 0 || a >= NSIG)
				die("malformed KILL request", 0);
			if (c && c->pid > 0)
				kill(c->pid, (int)a);
			used += 16;
		} else {
			die("unknown request", 0);
		}
	}
	return used;
}

int main(int argc, char **argv)
{
	sigset_t chld;
	static unsigned char buf[MAX_PAYLOAD + 16];
	size_t len = 0;

	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
		die("cannot set the parent-death signal", errno);
	if (argc != 2 || (long)getppid() != strtol(argv[1], NULL, 10))
		die("usage: captrap-spawn PPID (and PPID must be the parent, still alive)", 0);
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &chld, NULL) != 0)
		die("cannot block SIGCHLD", errno);
	int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		die("cannot create a signalfd", errno);
	for (;;) {
		struct pollfd pf[2] = { { .fd = 0, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll", errno);
		}
		if (pf[1].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) > 0) {
			}
			reap();
		}
		if (pf[0].revents) {
			ssize_t n = read(0, buf + len, sizeof buf - len);
			if (n < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (n <= 0)
				_exit(0); /* captrap closed its end: what this process started dies with it */
			len += (size_t)n;
			size_t used = handle(buf, len);
			memmove(buf, buf + used, len - used);
			len -= used;
		}
	}
}
