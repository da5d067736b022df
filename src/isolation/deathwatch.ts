// Early death notices: a watched process is reported dead as soon as it starts to exit (a thread
// of it ends by a signal, or its last thread ends), milliseconds before its parent (or a pipe) can
// see it go.
//
// A process's exit becomes visible to its parent only after the kernel has unmapped its memory
// and closed its files: 5-10 ms for a Node agent, longer under load. Capabilities bound to it stay
// live until then. The compiled helper captrap-deathwatch (launcher/captrap-deathwatch.c) listens
// to the kernel's taskstats exit messages, which are sent from the start of the exit, and reports
// the death of a watched thread group. The exit notice still follows and stays the authority for
// everything else (results, cgroup cleanup); this only lets revocation start sooner.
//
// Unavailable (and then simply unused) without the built helper, without taskstats (kernel
// config, or captrap outside the initial network namespace), without CAP_NET_ADMIN, on kernels
// older than taskstats version 12 (Linux 5.19), and when captrap is not in the initial pid
// namespace. The helper checks these itself with a child of its own and says which one failed.
import { spawn, type ChildProcess } from 'node:child_process';
import { log } from '../log.js';
import { registerOwnHelper, unregisterOwnHelper } from './cgroup.js';
import { builtProgram, builtProgramPath } from './launcher/launcher.js';
import type { ProcessRef } from './proc.js';

const BUILT = builtProgram('captrap-deathwatch');

/**
 * How far the start time derived from an exit message may lie from the one captrap knows, in
 * clock ticks. The derived one is late by however long the message took to arrive (up to
 * LATE_TICKS, 0.5 s at 100 Hz) and may round one tick either way. A process that held the same
 * pid before could only have started long before: a pid is reused only after the whole pid space
 * has been cycled through.
 */
const EARLY_TICKS = 2;
const LATE_TICKS = 50;

export type DeathWatchStatus = { available: true; version: number } | { available: false; reason: string };

/** Path of the compiled helper if it is built and executable. */
export function builtDeathWatchPath(): string | undefined {
  return builtProgramPath('captrap-deathwatch');
}

interface Watcher {
  ref: ProcessRef;
  onDeath: () => void;
}

export class DeathWatch {
  /** Settles once the helper has said whether it works here (at most a few seconds after start). */
  readonly status: Promise<DeathWatchStatus>;
  private readonly child: ChildProcess | undefined;
  private readonly watchers = new Map<number, Set<Watcher>>();
  private state: 'starting' | 'ready' | 'unavailable' | 'closed' = 'starting';
  private settle!: (s: DeathWatchStatus) => void;
  private pending = '';

  private constructor(path: string | undefined) {
    this.status = new Promise((r) => (this.settle = r));
    if (!path) {
      this.fail(`${BUILT} is not built (npm run build, with a C compiler)`);
      return;
    }
    try {
      this.child = spawn(path, [String(process.pid)], { stdio: ['pipe', 'pipe', 'ignore'], cwd: '/', env: {} });
    } catch (err) {
      this.fail(`cannot start ${path}: ${(err as Error).message}`);
      return;
    }
    const child = this.child;
    child.on('error', (err) => this.fail(`cannot start ${path}: ${err.message}`));
    child.stdin!.on('error', () => undefined);
    // Like the owner watchdog: it must never keep captrap's event loop alive.
    child.unref();
    (child.stdin as unknown as { unref?: () => void }).unref?.();
    (child.stdout as unknown as { unref?: () => void }).unref?.();
    if (child.pid !== undefined) {
      const pid = child.pid;
      registerOwnHelper(pid);
      child.once('exit', () => unregisterOwnHelper(pid));
    }
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => this.onOutput(chunk));
    child.once('exit', (code, signal) => {
      if (this.state === 'closed') return;
      const was = this.state;
      this.fail(`the helper exited (${signal ?? `code ${code}`})`);
      if (was === 'ready') log.warn({ code, signal }, 'early death notices stopped: captrap-deathwatch exited; agents are revoked on their exit notice alone');
    });
  }

  /** Starts the helper (`path` overrides the built one, for tests). Never throws: see `status`. */
  static start(path: string | undefined = builtDeathWatchPath()): DeathWatch {
    return new DeathWatch(path);
  }

  get available(): boolean {
    return this.state === 'ready';
  }

  /**
   * Calls `onDeath` once, when `ref`'s process is seen dying. Returns the way to stop watching.
   * Watching while the helper is unavailable is a no-op: the caller's exit notice still comes.
   */
  watch(ref: ProcessRef, onDeath: () => void): () => void {
    if (this.state === 'closed' || this.state === 'unavailable') return () => undefined;
    const w: Watcher = { ref, onDeath };
    let set = this.watchers.get(ref.pid);
    if (!set) {
      this.watchers.set(ref.pid, (set = new Set()));
      if (this.state === 'ready') this.send(`+${ref.pid}\n`);
    }
    set.add(w);
    return () => this.unwatch(w);
  }

  close(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.watchers.clear();
    this.settle({ available: false, reason: 'closed' });
    this.child?.stdin?.end();
    this.child?.kill('SIGKILL');
  }

  private unwatch(w: Watcher): void {
    const set = this.watchers.get(w.ref.pid);
    if (!set?.delete(w) || set.size > 0) return;
    this.watchers.delete(w.ref.pid);
    if (this.state === 'ready') this.send(`-${w.ref.pid}\n`);
  }

  private send(line: string): void {
    this.child?.stdin?.write(line);
  }

  private fail(reason: string): void {
    if (this.state === 'closed' || this.state === 'unavailable') return;
    this.state = 'unavailable';
    this.watchers.clear();
    this.settle({ available: false, reason });
  }

  private onOutput(chunk: string): void {
    this.pending += chunk;
    let nl: number;
    while ((nl = this.pending.indexOf('\n')) >= 0) {
      const line = this.pending.slice(0, nl);
      this.pending = this.pending.slice(nl + 1);
      this.onLine(line);
    }
    if (this.pending.length > 4096) this.pending = '';
  }

  private onLine(line: string): void {
    if (this.state === 'starting') {
      const ready = /^ready (\d+)$/.exec(line);
      if (ready) {
        this.state = 'ready';
        // Watches taken while it started up.
        if (this.watchers.size > 0) this.send([...this.watchers.keys()].map((pid) => `+${pid}\n`).join(''));
        this.settle({ available: true, version: Number(ready[1]) });
        return;
      }
      this.fail(line.startsWith('unavailable ') ? line.slice('unavailable '.length) : `unexpected helper output: ${line.slice(0, 200)}`);
      this.child?.stdin?.end();
      return;
    }
    if (this.state !== 'ready') return;
    const m = /^dead (\d+) (\d+)$/.exec(line);
    if (!m) return;
    const pid = Number(m[1]);
    const start = Number(m[2]);
    const set = this.watchers.get(pid);
    if (!set) return;
    const dead: Watcher[] = [];
    for (const w of set) if (start >= w.ref.startTime - EARLY_TICKS && start <= w.ref.startTime + LATE_TICKS) dead.push(w);
    for (const w of dead) set.delete(w);
    if (set.size === 0) this.watchers.delete(pid);
    // The helper stops watching a pid it reported; a watcher it did not match (another process
    // that once held the pid) is still waiting for its own process.
    else this.send(`+${pid}\n`);
    for (const w of dead) {
      try {
        w.onDeath();
      } catch (err) {
        log.error({ err, pid }, 'an early death notice handler threw');
      }
    }
  }
}
