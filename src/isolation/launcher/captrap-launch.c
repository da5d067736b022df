/*
 * captrap-launch: the first (and only extra) exec of every captrap sandbox.
 *
 * It does in one exec what `setpriv --pdeathsig KILL -- sh -c TRAMPOLINE` does in two, so a
 * sandboxed command starts about as fast as a plain spawn while keeping the same guarantees:
 *   1. arm a parent-death SIGKILL, then check the parent is still captrap (if captrap died
 *      before the signal was armed it would never come, so the command must not run at all);
 *   2. optionally set no_new_privs;
 *   3. write its own pid into every given cgroup.procs, so the command is inside its cgroups
 *      before its first instruction and everything it forks is born there;
 *   4. optionally drop PWD (captrap passes the exact environment it wants, and a caller that
 *      did not ask for PWD must not get one);
 *   5. exec the rest of argv (the pid stays the same).
 *
 * Argument protocol (fixed order, every option spelled out; nothing is guessed):
 *   captrap-launch --ppid PID [--no-new-privs] [--keep-pwd] [--join PATH]... -- COMMAND [ARG]...
 *     --ppid PID       required: the pid of the captrap process that spawned us
 *     --no-new-privs   prctl(PR_SET_NO_NEW_PRIVS, 1)
 *     --keep-pwd       leave PWD in the environment (default: unset it)
 *     --join PATH      a cgroup.procs file to write our pid to (repeatable)
 *     --               end of options; COMMAND is looked up like execvp does
 *
 * Exit status when the command never runs: 125 for a launch failure (bad arguments, parent
 * already gone, cgroup join refused, prctl refused), 127 if COMMAND does not exist, 126 if it
 * cannot be executed (the same convention as the shell trampoline it replaces).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define LAUNCH_FAILED 125

static void fail(const char *what, const char *arg, int err)
{
	if (err != 0)
		fprintf(stderr, "captrap-launch: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(err));
	else
		fprintf(stderr, "captrap-launch: %s%s%s\n", what, arg ? " " : "", arg ? arg : "");
	exit(LAUNCH_FAILED);
}

static long parse_pid(const char *s)
{
	char *end = NULL;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v <= 0)
		fail("--ppid needs a positive pid, got", s, 0);
	return v;
}

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

int main(int argc, char **argv)
{
	long ppid = 0;
	int no_new_privs = 0, keep_pwd = 0, i = 1, njoin = 0;
	const char **joins = calloc((size_t)argc, sizeof *joins);
	char line[32];
	int len;

	if (joins == NULL)
		fail("out of memory", NULL, ENOMEM);

	/* Armed before anything else so the window before the getppid() check below is the only one. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
		fail("cannot set the parent-death signal", NULL, errno);

	if (i + 1 < argc && strcmp(argv[i], "--ppid") == 0) {
		ppid = parse_pid(argv[i + 1]);
		i += 2;
	} else {
		fail("usage: captrap-launch --ppid PID [--no-new-privs] [--keep-pwd] [--join PATH]... -- COMMAND [ARG]...", NULL, 0);
	}
	for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
		if (strcmp(argv[i], "--no-new-privs") == 0) {
			no_new_privs = 1;
		} else if (strcmp(argv[i], "--keep-pwd") == 0) {
			keep_pwd = 1;
		} else if (strcmp(argv[i], "--join") == 0 && i + 1 < argc) {
			joins[njoin++] = argv[++i];
		} else {
			fail("unknown argument", argv[i], 0);
		}
	}
	if (i + 1 >= argc)
		fail("missing '-- COMMAND'", NULL, 0);

	/* If captrap died before the signal was armed, we were reparented and nobody will kill us. */
	if ((long)getppid() != ppid)
		fail("captrap (the parent) is already gone; not starting the command", NULL, 0);

	if (no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		fail("cannot set no_new_privs", NULL, errno);

	len = snprintf(line, sizeof line, "%ld\n", (long)getpid());
	for (int j = 0; j < njoin; j++)
		join_cgroup(joins[j], line, (size_t)len);
	free(joins);

	if (!keep_pwd)
		unsetenv("PWD");

	execvp(argv[i + 1], &argv[i + 1]);
	{
		int err = errno;
		fprintf(stderr, "captrap-launch: cannot execute %s: %s\n", argv[i + 1], strerror(err));
		return err == ENOENT || err == ENOTDIR ? 127 : 126;
	}
}
