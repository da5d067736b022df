// captrap-deathwatch: tells captrap that a watched process has died, before the kernel has torn
// it down.
//
// Why: a process's exit is visible to its parent (and through pipes and sockets) only after the
// kernel has unmapped its memory and closed its files; for a Node agent of ~100 MB that takes
// 5-10 ms, and capabilities bound to the process stay live for that long. The kernel's taskstats
// interface sends one message per exiting task from the start of do_exit(), before exit_mm(), and
// flags the last task of a thread group (AGROUP, taskstats version >= 12, which also carries the
// thread group id and its wall time). A process is dead for us when that message arrived, or the
// message of any of its threads ending by a signal (a fatal signal ends the whole thread group).
// Either way it can never run user code again.
//
// Protocol (lines, ASCII):
//   stdout, once:  "ready <taskstats version>"  or  "unavailable <reason>" (then exit 0)
//   stdin:         "+<tgid>" watch, "-<tgid>" stop watching
//   stdout:        "dead <tgid> <start>" for a watched tgid, <start> = the process's start time
//                  in clock ticks since boot (as field 22 of /proc/<pid>/stat), derived from the
//                  message; captrap compares it with the start time it knows, so a message about
//                  an earlier process that held the same pid is never taken for the watched one.
// It exits on stdin EOF and dies with its parent (PR_SET_PDEATHSIG, checked against the pid given
// as argv[1] after arming, like captrap-launch).
//
// It reports "unavailable" when taskstats is missing, when this process is not in the initial pid
// namespace (taskstats reports init-namespace pids; a self test with a child of its own checks
// that the numbers agree) and when the kernel is older than taskstats version 12. captrap then
// relies on the exit notice alone, as before.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/taskstats.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef AGROUP
#define AGROUP 0x20
#endif

#define MAX_WATCHED 65536
#define BUF_BYTES (64 * 1024)

static int nl = -1;
static uint32_t nl_port;
static int family = -1;
static long ticks_per_sec;

// Watched tgids: open addressing, 0 = empty, UINT32_MAX = removed.
static uint32_t table[MAX_WATCHED * 2];
static unsigned watched;

static unsigned slot_of(uint32_t v) { return (v * 2654435761u) & (MAX_WATCHED * 2 - 1); }

static int find(uint32_t v) {
	for (unsigned i = slot_of(v), n = 0; n < MAX_WATCHED * 2; i = (i + 1) & (MAX_WATCHED * 2 - 1), n++) {
		if (table[i] == v) return (int)i;
		if (table[i] == 0) return -1;
	}
	return -1;
}

static void watch(uint32_t v) {
	if (v == 0 || v == UINT32_MAX || find(v) >= 0 || watched >= MAX_WATCHED) return;
	for (unsigned i = slot_of(v);; i = (i + 1) & (MAX_WATCHED * 2 - 1)) {
		if (table[i] == 0 || table[i] == UINT32_MAX) {
			table[i] = v;
			watched++;
			return;
		}
	}
}

static void unwatch(uint32_t v) {
	int i = find(v);
	if (i < 0) return;
	table[i] = UINT32_MAX;
	watched--;
}

static void say(const char *line) {
	size_t n = strlen(line), off = 0;
	while (off < n) {
		ssize_t w = write(1, line + off, n - off);
		if (w < 0 && errno == EINTR) continue;
		if (w <= 0) exit(0); // captrap is gone
		off += (size_t)w;
	}
}

static void unavailable(const char *why) {
	char line[256];
	snprintf(line, sizeof line, "unavailable %s\n", why);
	say(line);
	exit(0);
}

static int nl_send(uint16_t type, uint8_t cmd, uint16_t attr, const void *data, uint16_t len) {
	struct {
		struct nlmsghdr n;
		struct genlmsghdr g;
		char buf[256];
	} req;
	memset(&req, 0, sizeof req);
	struct nlattr *na = (struct nlattr *)req.buf;
	na->nla_type = attr;
	na->nla_len = (uint16_t)(NLA_HDRLEN + len);
	memcpy((char *)na + NLA_HDRLEN, data, len);
	req.n.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN) + NLA_ALIGN(na->nla_len);
	req.n.nlmsg_type = type;
	req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	req.n.nlmsg_seq = 1;
	req.g.cmd = cmd;
	req.g.version = 1;
	struct sockaddr_nl to = {.nl_family = AF_NETLINK};
	return sendto(nl, &req, req.n.nlmsg_len, 0, (struct sockaddr *)&to, sizeof to) < 0 ? -1 : 0;
}

// Reads one datagram from the kernel; 0 for none (non-blocking), -1 on error. Anything not sent
// by the kernel (port 0) is dropped: only the kernel may declare a process dead.
static ssize_t nl_recv(char *buf, size_t size) {
	for (;;) {
		struct sockaddr_nl from;
		socklen_t fl = sizeof from;
		ssize_t n = recvfrom(nl, buf, size, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
		if (n < 0) {
			if (errno == EINTR) continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
			if (errno == ENOBUFS) continue; // messages lost in an exit storm: the exit notice still comes
			return -1;
		}
		if (fl != sizeof from || from.nl_family != AF_NETLINK || from.nl_pid != 0) continue;
		return n;
	}
}

// The next datagram from the kernel within about 5 s; 0 if none came.
static ssize_t nl_next(char *buf, size_t size) {
	struct pollfd p = {.fd = nl, .events = POLLIN};
	for (int rounds = 0; rounds < 50; rounds++) {
		if (poll(&p, 1, 100) <= 0) continue;
		ssize_t n = nl_recv(buf, size);
		if (n > 0) return n;
	}
	return 0;
}

// Waits for the ack of the last request; returns the error number it carries (0 = ok).
static int nl_ack(char *buf, size_t size) {
	ssize_t n;
	while ((n = nl_next(buf, size)) > 0) {
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			// Exit messages may already arrive ahead of the ack: only the ack answers.
			if (h->nlmsg_type == NLMSG_ERROR) return -((struct nlmsgerr *)NLMSG_DATA(h))->error;
		}
	}
	return ETIMEDOUT;
}

static int resolve_family(char *buf, size_t size) {
	if (nl_send(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_NAME, TASKSTATS_GENL_NAME, sizeof TASKSTATS_GENL_NAME) < 0) return -1;
	ssize_t n;
	while ((n = nl_next(buf, size)) > 0) {
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_ERROR) {
				if (((struct nlmsgerr *)NLMSG_DATA(h))->error != 0) return -1;
				continue;
			}
			if (h->nlmsg_type != GENL_ID_CTRL) continue;
			char *a = (char *)NLMSG_DATA(h) + GENL_HDRLEN;
			int left = (int)h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
			while (left >= NLA_HDRLEN) {
				struct nlattr *na = (struct nlattr *)a;
				if (na->nla_len < NLA_HDRLEN || na->nla_len > left) break;
				if (na->nla_type == CTRL_ATTR_FAMILY_ID && na->nla_len >= NLA_HDRLEN + 2) {
					uint16_t id;
					memcpy(&id, a + NLA_HDRLEN, 2);
					return id;
				}
				left -= NLA_ALIGN(na->nla_len);
				a += NLA_ALIGN(na->nla_len);
			}
		}
	}
	return -1;
}

// The death of a whole thread group in one TASKSTATS_CMD_NEW message: the AGGR_PID stats of its
// last task (AGROUP set) or of a task ending by a signal. Returns 1 with the tgid and its start
// (clock ticks since boot).
static int group_death(struct nlmsghdr *h, uint32_t *tgid, unsigned long long *start) {
	char *a = (char *)NLMSG_DATA(h) + GENL_HDRLEN;
	int left = (int)h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
	while (left >= NLA_HDRLEN) {
		struct nlattr *na = (struct nlattr *)a;
		if (na->nla_len < NLA_HDRLEN || na->nla_len > left) return 0;
		if ((na->nla_type & NLA_TYPE_MASK) == TASKSTATS_TYPE_AGGR_PID) {
			char *b = a + NLA_HDRLEN;
			int in = na->nla_len - NLA_HDRLEN;
			while (in >= NLA_HDRLEN) {
				struct nlattr *nb = (struct nlattr *)b;
				if (nb->nla_len < NLA_HDRLEN || nb->nla_len > in) return 0;
				if (nb->nla_type == TASKSTATS_TYPE_STATS) {
					size_t len = (size_t)nb->nla_len - NLA_HDRLEN;
					struct taskstats ts;
					memset(&ts, 0, sizeof ts);
					memcpy(&ts, b + NLA_HDRLEN, len < sizeof ts ? len : sizeof ts);
					if (ts.version < 12 || len < offsetof(struct taskstats, ac_tgetime) + sizeof ts.ac_tgetime) return 0;
					// The last thread of the process (AGROUP), or any thread of it ending by a
					// signal: a fatal signal takes every thread (a thread alone can only end with a
					// plain exit status, whose low 7 bits are 0), and the first thread reaches its
					// exit milliseconds before the last one of a busy multi-threaded process.
					if ((!(ts.ac_flag & AGROUP) && (ts.ac_exitcode & 0x7f) == 0) || ts.ac_tgid == 0) return 0;
					// ac_tgetime: the group's wall time (µs, monotonic clock) up to the exit; the
					// start, in the boot-time clock /proc/<pid>/stat uses, is now minus that (a
					// little late by however long this message took to arrive).
					struct timespec now;
					clock_gettime(CLOCK_BOOTTIME, &now);
					long double ns = (long double)now.tv_sec * 1e9L + now.tv_nsec - (long double)ts.ac_tgetime * 1000.0L;
					if (ns < 0) ns = 0;
					*tgid = ts.ac_tgid;
					*start = (unsigned long long)(ns * ticks_per_sec / 1e9L);
					return 1;
				}
				in -= NLA_ALIGN(nb->nla_len);
				b += NLA_ALIGN(nb->nla_len);
			}
		}
		left -= NLA_ALIGN(na->nla_len);
		a += NLA_ALIGN(na->nla_len);
	}
	return 0;
}

// The tgids of every group death in one datagram (up to max).
static int deaths(char *buf, ssize_t n, uint32_t *out, unsigned long long *starts, int max) {
	int k = 0;
	for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n) && k < max; h = NLMSG_NEXT(h, n)) {
		if (h->nlmsg_type != (uint16_t)family) continue;
		if (((struct genlmsghdr *)NLMSG_DATA(h))->cmd != TASKSTATS_CMD_NEW) continue;
		if (group_death(h, &out[k], &starts[k])) k++;
	}
	return k;
}

// A child of our own exits: its death must arrive under the pid fork() returned. If captrap runs
// in a pid namespace of its own, taskstats' (initial namespace) numbers would not match ours.
static void self_test(char *buf, size_t size) {
	pid_t c = fork();
	if (c < 0) unavailable("fork failed");
	if (c == 0) _exit(0);
	waitpid(c, NULL, 0);
	struct pollfd p = {.fd = nl, .events = POLLIN};
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		long ms = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
		if (ms > 2000) unavailable("self test: no taskstats message with our pid numbers (captrap is not in the initial pid namespace, or the kernel is older than taskstats version 12)");
		if (poll(&p, 1, 100) <= 0) continue;
		ssize_t n;
		while ((n = nl_recv(buf, size)) > 0) {
			uint32_t ids[64];
			unsigned long long starts[64];
			int k = deaths(buf, n, ids, starts, 64);
			for (int i = 0; i < k; i++)
				if (ids[i] == (uint32_t)c) return;
		}
		if (n < 0) unavailable("reading the taskstats socket failed");
	}
}

// Applies complete "+N" / "-N" lines from captrap; returns 0 at EOF.
static int read_commands(void) {
	static char in[8192];
	static size_t have;
	ssize_t n = read(0, in + have, sizeof in - have);
	if (n < 0) return errno == EINTR || errno == EAGAIN;
	if (n == 0) return 0;
	have += (size_t)n;
	size_t start = 0;
	for (size_t i = 0; i < have; i++) {
		if (in[i] != '\n') continue;
		in[i] = 0;
		char *line = in + start;
		char *end;
		unsigned long v = strtoul(line + 1, &end, 10);
		if (end != line + 1 && *end == 0 && v > 0 && v < UINT32_MAX) {
			if (line[0] == '+') watch((uint32_t)v);
			else if (line[0] == '-') unwatch((uint32_t)v);
		}
		start = i + 1;
	}
	if (start == 0 && have == sizeof in) have = 0; // a line too long to be ours: drop it
	memmove(in, in + start, have - start);
	have -= start;
	return 1;
}

int main(int argc, char **argv) {
	signal(SIGPIPE, SIG_IGN);
	if (argc != 2) {
		fprintf(stderr, "usage: captrap-deathwatch <parent pid>\n");
		return 2;
	}
	pid_t parent = (pid_t)strtol(argv[1], NULL, 10);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) return 1;
	if (getppid() != parent) return 1; // the parent died before the signal was armed
	ticks_per_sec = sysconf(_SC_CLK_TCK);
	if (ticks_per_sec <= 0) ticks_per_sec = 100;

	static char buf[BUF_BYTES];
	nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
	if (nl < 0) unavailable("no generic netlink socket");
	int rcv = 4 * 1024 * 1024;
	// Room for an exit storm; if even the plain size is refused, lost messages only mean the exit notice decides.
	if (setsockopt(nl, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) != 0) (void)setsockopt(nl, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
	struct sockaddr_nl me = {.nl_family = AF_NETLINK};
	if (bind(nl, (struct sockaddr *)&me, sizeof me) < 0) unavailable("binding the netlink socket failed");
	socklen_t ml = sizeof me;
	getsockname(nl, (struct sockaddr *)&me, &ml);
	nl_port = me.nl_pid;

	family = resolve_family(buf, sizeof buf);
	if (family < 0) unavailable("no taskstats in this kernel or network namespace");

	// Every possible CPU: a task's exit is reported to the listeners of the CPU it exits on.
	char mask[64] = "0";
	FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
	if (f) {
		if (!fgets(mask, sizeof mask, f)) strcpy(mask, "0");
		fclose(f);
		mask[strcspn(mask, "\n")] = 0;
	}
	if (nl_send((uint16_t)family, TASKSTATS_CMD_GET, TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, mask, (uint16_t)(strlen(mask) + 1)) < 0) unavailable("registering for exit messages failed");
	int err = nl_ack(buf, sizeof buf);
	if (err != 0) unavailable(err == EPERM ? "registering for exit messages needs CAP_NET_ADMIN" : "registering for exit messages failed");
	self_test(buf, sizeof buf);

	char ready[64];
	snprintf(ready, sizeof ready, "ready %d\n", TASKSTATS_VERSION);
	say(ready);

	struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = nl, .events = POLLIN}};
	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR) continue;
			return 1;
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			if (!read_commands()) return 0;
		}
		if (p[1].revents & POLLIN) {
			ssize_t n;
			while ((n = nl_recv(buf, sizeof buf)) > 0) {
				if (watched == 0) continue;
				uint32_t ids[256];
				unsigned long long starts[256];
				int k = deaths(buf, n, ids, starts, 256);
				for (int i = 0; i < k; i++) {
					if (find(ids[i]) < 0) continue;
					unwatch(ids[i]);
					char line[64];
					snprintf(line, sizeof line, "dead %u %llu\n", ids[i], starts[i]);
					say(line);
				}
			}
			if (n < 0) return 1;
		}
	}
}
