// The first write to a cgroup.procs file after an idle spell blocks for a grace period of the
// kernel's RCU (about 5-25 ms: the cgroup migration lock is a per-cpu rwsem that has to switch
// its readers to the slow path first). The later ones, for about another grace period, take tens
// of microseconds. A one-shot `captrap run` pays that wait inside its launcher's cgroup join,
// on its critical path, every time.
//
// So it can start the wait early and off the main thread: move this process into the cgroup
// it is already in (a migration that changes nothing), on libuv's thread pool, while the main
// thread loads and plans the sandbox. The launcher's join then finds the lock
// already switched. Only a v1 hierarchy is used: captrap never moves itself there (in the
// cgroup2 tree it may move itself into a leaf, see enableSubtreeControllers), and the lock is
// one for all hierarchies. Nothing depends on it: any failure is ignored.
//
// The `captrap` executable starts this wait before it even loads `run` (src/runner/captrap.cts),
// so it passes during the load. But the fast mode lasts only about one more grace period after
// the last migration ends, and the launcher joins some 25 ms after that first prime. So the
// prime is renewed twice on the way, each within a grace period of the one before: when `run`
// starts planning (primeCgroupMigration again) and right before the launcher's spawn
// (renewCgroupMigrationPrime). A renewal that finds the lock still fast keeps it so; one that
// finds it slow again starts the wait ahead of the join instead of in it. Measured with perf
// trace, 20 runs each, the join waited in 12 with the early prime alone, in 3 with only the
// renewal before the spawn, and in none with both.
import { close, openSync, readFileSync, write } from 'node:fs';
import type { HostInfo, V1Controller } from './host.js';

// Hierarchies whose charge does not move with a process come first.
const PREFERRED: readonly V1Controller[] = ['pids', 'freezer', 'cpuacct', 'cpu', 'memory'];

/** This process's cgroup in the v1 hierarchy of `controller`, from /proc/self/cgroup. */
function ownV1Path(text: string, controller: V1Controller): string | undefined {
  for (const line of text.split('\n')) {
    const m = /^\d+:([^:]+):(\/.*)$/.exec(line);
    if (m && m[1]!.split(',').includes(controller)) return m[2];
  }
  return undefined;
}

// Set by a prime, cleared by the renewal that uses it: only a process that primed renews, once.
let renewable = false;

/** Starts the no-op self-migration described above and returns at once; never throws. */
export function primeCgroupMigration(host: HostInfo): void {
  renewable = true;
  selfMigrate(host);
}

/**
 * Right before the launcher's spawn: primes again, if this process primed and has not renewed
 * since (a one-shot `captrap run`; the sidecar never primes). Returns at once; never throws.
 */
export function renewCgroupMigrationPrime(host: HostInfo): void {
  if (!renewable) return;
  renewable = false;
  selfMigrate(host);
}

function selfMigrate(host: HostInfo): void {
  try {
    const text = readFileSync('/proc/self/cgroup', 'utf8');
    for (const c of PREFERRED) {
      const mount = host.v1[c];
      const path = mount ? ownV1Path(text, c) : undefined;
      if (!mount || path === undefined) continue;
      // Opened here, written on the pool: an async open would wait for the main thread to be
      // free before the write could even be queued.
      const fd = openSync(`${mount}${path === '/' ? '' : path}/cgroup.procs`, 'w');
      write(fd, `${process.pid}\n`, () => close(fd, () => undefined));
      return;
    }
  } catch {
    // A hint only: the launcher's join works the same without it, just later.
  }
}
