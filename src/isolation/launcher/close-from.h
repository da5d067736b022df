/* Shared by captrap-launch.c and captrap-spawn.c: close every descriptor from lowfd up, before an exec. */
#ifndef CAPTRAP_CLOSE_FROM_H
#define CAPTRAP_CLOSE_FROM_H

#include <sys/syscall.h>
#include <unistd.h>

static void close_from(int lowfd)
{
#ifdef SYS_close_range
	if (syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0) == 0)
		return;
#endif
	{
		long max = sysconf(_SC_OPEN_MAX);
		if (max < 0 || max > 1 << 20)
			max = 1 << 20;
		for (long fd = lowfd; fd < max; fd++)
			close((int)fd);
	}
}

#endif
