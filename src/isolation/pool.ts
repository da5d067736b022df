// Warm launchers: sandboxes started before they are asked for.
//
// A cold launch pays, on its critical path, Node's fork of the launcher, the first write to a
// cgroup.procs file (which can block for 5-25 ms in the kernel after an idle spell) and the
// creation of the namespaces. A warm launcher has done all of that already: it was spawned
// (captrap-launch --pool, see the launcher's header comment) into a fresh sandbox cgroup
// created without limits, armed its parent-death signal, joined the cgroup, made its namespaces
// (with pid: forked its init, which made the rest), and now waits on fd 3 for the request. A
// hand-over writes the request's final limits to the cgroup, then sends the complete cold
// command line, the environment and the working directory; the launcher checks they fit what
// it made ahead, builds the view, switches identity and execs, exactly as cold.
//
// One pool per shape (backend, cgroup base, the namespaces made ahead, launcher binary). Each
// holds up to `target` launchers; `target` starts at 1, grows by one on every miss (a request
// found none ready) up to maxSize, and shrinks by one per idle period without a hand-over.
// Refills run after a hand-over, off the request's path. Pool cgroups are ordinary sandbox
// cgroups (<ownerPid>.<ownerStart>.<seq> under the base), so the owner watchdog and stale
// cleanup take them like any other; idle launchers die with captrap by their parent-death signal.
// Refills go through captrap-spawn where it runs (spawner.ts), so they do not fork captrap.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { log } from '../log.js';
import { newCgroupName, type CgroupBackend, type Counters, type SandboxCgroup } from './cgroup.js';
import { SandboxOptionError } from './errors.js';
import type { HostInfo } from './host.js';
import type { BackendName } from './limits.js';
import { seatInGroup, type GroupSeat, type SandboxGroup } from './group.js';
import { getSpawner, type LeaderProcess, type SpawnedProcess } from './spawner.js';
import { ensureOwnerWatchdog } from './watchdog.js';

/** What a warm launcher is made for; a request of another shape starts cold. */
export interface WarmShape {
  host: HostInfo;
  backendName: BackendName;
  backend: CgroupBackend;
  base: string;
  /** Namespaces the launcher makes ahead (its --unshare list); empty when unconfined. */
  namespaces: readonly string[];
  /** The view's system part it builds ahead (launcher --ro/--symlink/--hide arguments; every request names them again). */
  view: readonly string[];
  /** Every request drops all capabilities (confined): the launcher empties its bounding set ahead. */
  dropCaps: boolean;
  launcherPath: string;
  /**
   * The group the launchers wait in (a sidecar agent's: every tool call of the agent runs there).
   * Each idle launcher holds a seat in it, so its limits count the launcher's two processes and
   * the group cannot be removed under it; a group's killAll retires the group's whole pool.
   */
  group?: SandboxGroup;
}

export interface WarmPoolOptions {
  /** Most warm launchers kept per shape; 0 turns the pool off (every launch is cold). */
  maxSize: number;
  /** A pool with no hand-over for this long gives back one launcher (default 30 s). */
  idleMs?: number;
}

export interface WarmPoolStats {
  maxSize: number;
  /** Hand-overs to a warm launcher. */
  hits: number;
  /** Requests that fit a pool but found no launcher ready (they started cold). */
  misses: number;
  pools: { key: string; target: number; ready: number; starting: number; disabled: boolean }[];
}

/** A launcher taken from the pool, not yet started. */
export interface WarmLauncher {
  readonly cg: SandboxCgroup;
  readonly child: LeaderProcess;
  /** The launcher's parent, which its request must name as --ppid: captrap, or captrap-spawn. */
  readonly ppid: number;
  /**
   * The cgroup's counters read when the launcher became ready, off the request's path: an idle
   * launcher forks nothing and allocates nothing, so they still hold at the hand-over. Undefined
   * when they include a group's counter (siblings move that one) or could not be read.
   */
  readonly counters: Counters | undefined;
  /** Sends the request; the command starts at once. */
  start(argv: readonly string[], env: Readonly<Record<string, string>>, cwd: string | undefined): void;
  /** Gives up on this launcher (e.g. its limits could not be set): kills it and removes its cgroup. */
  discard(): void;
  /** The sandbox's result is out: the pool refills now (after the caller's own continuation). */
  ended(): void;
}

const MAX_POOL = 64;
/** Launchers of one shape that die before they are ready, in a row, before the shape stops being pooled. */
const MAX_FAILURES = 3;
/** How long a hand-over waits for its sandbox to end before refilling anyway. */
const REFILL_DELAY_MS = 20;

let maxSize = 0;
let idleMs = 30_000;
let hits = 0;
let misses = 0;
const pools = new Map<string, ShapePool>();

/** Sets the pool size bound (and idle period). 0 turns warm launches off and retires every idle launcher. */
export function configureWarmPool(o: WarmPoolOptions): void {
  if (typeof o !== 'object' || o === null || !Number.isInteger(o.maxSize) || o.maxSize < 0 || o.maxSize > MAX_POOL) {
    throw new SandboxOptionError(`warm pool: maxSize must be a whole number from 0 to ${MAX_POOL}`, { option: 'maxSize', value: o?.maxSize });
  }
  if (o.idleMs !== undefined && (!Number.isFinite(o.idleMs) || o.idleMs < 100)) {
    throw new SandboxOptionError('warm pool: idleMs must be at least 100', { option: 'idleMs', value: o.idleMs });
  }
  maxSize = o.maxSize;
  if (o.idleMs !== undefined) idleMs = o.idleMs;
  // Off: every pool ends (and gives up its seat in its group), not only its launchers.
  if (maxSize === 0) void drainWarmPool();
  else for (const p of pools.values()) p.bound();
}

export function warmPoolStats(): WarmPoolStats {
  return {
    maxSize,
    hits,
    misses,
    pools: [...pools.entries()].map(([key, p]) => ({ key, target: p.target, ready: p.readyCount(), starting: p.startingCount(), disabled: p.disabled })),
  };
}

/** Retires every idle launcher, waits until their cgroups are empty and removes them. The pool refills on the next request unless maxSize is 0. */
export async function drainWarmPool(): Promise<void> {
  const all = [...pools.values()];
  pools.clear();
  await Promise.all(all.map((p) => p.drain()));
}

const keyOf = (s: WarmShape) => `${s.backendName}|${s.base}|${s.group?.path ?? ''}|${s.namespaces.join(',')}|${s.dropCaps ? 'drop-caps' : ''}|${s.launcherPath}|${s.view.join('\0')}`;

/**
 * A ready launcher of this shape, or undefined (the caller starts cold). The pool of this shape
 * is refilled off the caller's path: after a miss REFILL_DELAY_MS later, after a hand-over once
 * the sandbox's result is out (WarmLauncher.ended) or REFILL_DELAY_MS later.
 */
export function takeWarmLauncher(shape: WarmShape): WarmLauncher | undefined {
  if (maxSize === 0 || shape.group?.removed) return undefined;
  const key = keyOf(shape);
  let pool = pools.get(key);
  if (!pool) {
    pool = new ShapePool(shape, () => {
      if (pools.get(key) === pool) pools.delete(key);
    });
    pools.set(key, pool);
  }
  const w = pool.take();
  if (w) hits++;
  else if (!pool.disabled) {
    misses++;
    // Not at once: the request that missed starts cold now, and its first moments (a tool that
    // forks up to its group's pids limit) should find the group as it will be, not a launcher
    // squeezing in beside it (see roomFor).
    const t = setTimeout(() => pool!.refillSoon(), REFILL_DELAY_MS);
    t.unref();
  }
  return w;
}

interface Entry {
  cg: SandboxCgroup;
  child: LeaderProcess;
  ppid: number;
  /** Where the request goes; undefined until captrap-spawn's launcher has its pipes open. */
  ctl: Socket | undefined;
  ready: boolean;
  /** Handed over or retired: no longer the pool's. */
  gone: boolean;
  /** Its place in the shape's group, given up once its cgroup is gone or handed over. */
  seat: GroupSeat | undefined;
  /** See WarmLauncher.counters. */
  counters?: Counters;
}

/** Sockets and the process itself must not keep captrap's event loop alive while idle. */
function setRef(e: Entry, on: boolean): void {
  for (const s of [e.child.stdout, e.child.stderr, e.ctl] as (Socket | null | undefined)[]) {
    if (on) s?.ref();
    else s?.unref();
  }
  if (on) e.child.ref();
  else e.child.unref();
}

let exitHook = false;
function installExitHook(): void {
  if (exitHook) return;
  exitHook = true;
  // A normal exit: kill what waits (parent-death would too; this is one write per cgroup). The
  // directories are left to the owner watchdog and stale cleanup, as for live sandboxes.
  process.once('exit', () => {
    for (const p of pools.values()) p.killIdle();
  });
}

class ShapePool {
  target = 1;
  disabled = false;
  private readonly entries: Entry[] = [];
  private failures = 0;
  private refillQueued = false;
  private usedSinceTick = false;
  private idleTimer: NodeJS.Timeout | undefined;
  /**
   * The pool's own seat in its group, held while the pool may still start launchers there: the
   * group's killAll (its destroy starts with one) then ends the pool even while no launcher of it
   * exists yet, so no refill already scheduled can start one in a group being emptied.
   */
  private readonly groupSeat: GroupSeat | undefined;

  constructor(
    private readonly shape: WarmShape,
    /** Drops this pool from the registry (its group is being emptied). */
    private readonly forget: () => void,
  ) {
    this.groupSeat = shape.group ? seatInGroup(shape.group, { noteKill: () => this.groupEmptied(undefined) }) : undefined;
  }

  readyCount(): number {
    return this.entries.filter((e) => e.ready).length;
  }
  startingCount(): number {
    return this.entries.filter((e) => !e.ready).length;
  }

  take(): WarmLauncher | undefined {
    this.usedSinceTick = true;
    if (this.disabled) return undefined;
    const i = this.entries.findIndex((e) => e.ready && e.child.exitCode === null && e.child.signalCode === null);
    if (i < 0) {
      this.target = Math.min(maxSize, this.target + 1);
      return undefined;
    }
    const e = this.entries.splice(i, 1)[0]!;
    e.gone = true;
    // The sandbox took its own seat in the group before it asked for a launcher.
    e.seat?.leave();
    // The refill forks from this thread: run it once this sandbox's result is out (a short
    // command's result is then not delayed by it), or after REFILL_DELAY_MS if it runs longer.
    const t = setTimeout(() => this.refillSoon(), REFILL_DELAY_MS);
    t.unref();
    return {
      cg: e.cg,
      child: e.child,
      ppid: e.ppid,
      counters: e.counters,
      start: (argv, env, cwd) => {
        setRef(e, true);
        e.ctl!.end(encodeRequest(argv, env, cwd ?? ''));
      },
      discard: () => {
        clearTimeout(t);
        e.child.kill('SIGKILL');
        void removeWhenEmpty(e.cg);
        this.refillSoon();
      },
      ended: () => {
        clearTimeout(t);
        this.refillSoon();
      },
    };
  }

  /** Keeps target within the configured bound and retires what is over it. */
  bound(): void {
    this.target = Math.max(maxSize === 0 ? 0 : 1, Math.min(this.target, maxSize));
    while (this.entries.length > this.target) this.retire(this.entries[this.entries.length - 1]!);
  }

  refillSoon(): void {
    if (this.refillQueued || this.disabled) return;
    this.refillQueued = true;
    setImmediate(() => {
      this.refillQueued = false;
      this.refill();
    });
  }

  private refill(): void {
    this.bound();
    while (!this.disabled && this.entries.length < this.target) {
      if (!this.spawnOne()) break;
    }
    this.armIdleTimer();
  }

  private armIdleTimer(): void {
    if (this.idleTimer || this.entries.length === 0) return;
    this.idleTimer = setInterval(() => {
      if (!this.usedSinceTick && this.target > 1) {
        this.target--;
        this.bound();
      }
      this.usedSinceTick = false;
    }, idleMs);
    this.idleTimer.unref();
  }

  private spawnOne(): boolean {
    const { host, backend, base, namespaces, launcherPath, group } = this.shape;
    if (group?.removed) {
      void this.drain();
      return false;
    }
    // Not a failure: the next take or result tries again.
    if (group && !roomFor(group, LAUNCHER_TASKS)) return false;
    let cg: SandboxCgroup;
    let seat: GroupSeat | undefined;
    const entry: { e?: Entry } = {};
    try {
      // Its descendants must die with captrap like any sandbox's, before the cgroup exists.
      ensureOwnerWatchdog(host, base);
      // A group being emptied (killAll: the agent exited, was stopped or quarantined) retires
      // every idle launcher of it: none may outlive what its group was emptied for.
      seat = group ? seatInGroup(group, { noteKill: () => this.groupEmptied(entry.e) }) : undefined;
      cg = backend.create(base, newCgroupName(), { swapBytes: 0 }, undefined, seat?.placement);
    } catch (err) {
      seat?.leave();
      this.fail(`cannot create a warm sandbox cgroup: ${(err as Error).message}`);
      return false;
    }
    installExitHook();
    // Through captrap-spawn when it runs: no fork of this process on the refill.
    const helper = getSpawner();
    const ppid = helper?.pid ?? process.pid;
    const argv = [
      '--ppid',
      String(ppid),
      '--pool',
      ...(helper ? ['--split-ctl'] : []),
      ...cg.joinFiles.flatMap((f) => ['--join', f]),
      ...(namespaces.length > 0 ? ['--unshare', namespaces.join(',')] : []),
      ...(this.shape.dropCaps ? ['--drop-caps'] : []),
      ...this.shape.view,
    ];
    let child: LeaderProcess | undefined;
    try {
      child = helper ? helper.spawn(launcherPath, [launcherPath, ...argv]) : spawn(launcherPath, argv, { stdio: ['ignore', 'pipe', 'pipe', 'pipe'], env: {}, cwd: '/' });
    } catch (err) {
      void removeWhenEmpty(cg, seat);
      this.fail(`cannot start a warm launcher: ${(err as Error).message}`);
      return false;
    }
    child?.on('error', () => undefined);
    if (!child || (!helper && (child.pid === undefined || !(child as ChildProcess).stdio[3]))) {
      void removeWhenEmpty(cg, seat);
      this.fail('cannot start a warm launcher: spawn failed');
      return false;
    }
    const e: Entry = { cg, child, ppid, ctl: undefined, ready: false, gone: false, seat };
    entry.e = e;
    this.entries.push(e);
    setRef(e, false);
    const stderr: Buffer[] = [];
    const keepErr = (c: Buffer) => stderr.push(c);
    // `ctl` takes the request; 'R' arrives on `readyFrom` (the same socket when spawned here).
    const attach = (ctl: Socket, readyFrom: Socket) => {
      e.ctl = ctl;
      ctl.on('error', () => undefined);
      readyFrom.on('error', () => undefined);
      if (e.gone) {
        // Retired before its pipes were open: EOF instead of a request.
        ctl.destroy();
        readyFrom.destroy();
        return;
      }
      setRef(e, false);
      if (readyFrom !== ctl) readyFrom.unref();
      child.stderr?.on('data', keepErr);
      readyFrom.once('data', () => {
        if (readyFrom !== ctl) readyFrom.destroy();
        // Until the hand-over nothing else arrives here; what the command writes later is the sandbox's.
        child.stderr?.off('data', keepErr);
        try {
          const c = cg.counters();
          if (c.groupPidsMax === undefined) e.counters = c;
        } catch {
          // read at the hand-over instead
        }
        e.ready = true;
        this.failures = 0;
      });
    };
    if (helper) {
      const sp = child as SpawnedProcess;
      sp.once('spawn', () => attach(sp.request!, sp.ready!));
    } else {
      const ctl = (child as ChildProcess).stdio[3] as Socket;
      attach(ctl, ctl);
    }
    child.once('exit', (code, signal) => {
      const i = this.entries.indexOf(e);
      if (i >= 0) this.entries.splice(i, 1);
      if (e.gone) return; // handed over (the sandbox owns it now) or retired
      void removeWhenEmpty(cg, seat);
      if (!e.ready && code === LAUNCHER_NO_ROOM) log.debug({ shape: keyOf(this.shape) }, 'warm launcher: no room under its group\'s pids.max; not refilled');
      else if (!e.ready) this.fail(`a warm launcher exited before it was ready (${signal ?? `status ${code}`}): ${Buffer.concat(stderr).toString().trim()}`);
    });
    return true;
  }

  private fail(why: string): void {
    this.failures++;
    if (this.failures >= MAX_FAILURES && !this.disabled) {
      this.disabled = true;
      log.warn({ shape: keyOf(this.shape), why }, 'warm launchers keep failing; this shape starts cold from now on');
    } else {
      log.debug({ shape: keyOf(this.shape), why }, 'warm launcher failed');
    }
  }

  private retire(e: Entry): Promise<void> {
    const i = this.entries.indexOf(e);
    if (i >= 0) this.entries.splice(i, 1);
    if (e.gone) return Promise.resolve();
    e.gone = true;
    // EOF instead of a request: the launcher exits 0 and its init dies with it; the kill is the backstop.
    if (e.ctl) e.ctl.destroy();
    else e.child.kill('SIGKILL'); // captrap-spawn has not opened its pipes yet
    try {
      e.cg.killAll();
    } catch {
      // already empty
    }
    return removeWhenEmpty(e.cg, e.seat);
  }

  /** The group kills everything in it: this pool ends (a later request in the group starts a new one). */
  private groupEmptied(e: Entry | undefined): void {
    this.forget();
    if (e && !e.gone) void this.retire(e);
    void this.drain();
  }

  killIdle(): void {
    for (const e of this.entries) {
      try {
        e.cg.killAll();
      } catch {
        // best effort on the way out
      }
    }
  }

  async drain(): Promise<void> {
    if (this.idleTimer) clearInterval(this.idleTimer);
    this.idleTimer = undefined;
    this.disabled = true;
    this.groupSeat?.leave();
    await Promise.all([...this.entries].map((e) => this.retire(e)));
  }
}

/** The launcher's exit status when it found no room under a pids.max right before joining (captrap-launch.c). */
const LAUNCHER_NO_ROOM = 75;

/** A waiting launcher's tasks: the leader and, with a pid namespace, its init. */
const LAUNCHER_TASKS = 2;

/**
 * Whether `group` and every group above it have room under pids.max for `tasks` more. A launcher
 * enters its cgroup by migration, which pids.max does not stop (only forks are refused): without
 * this check a refill could take a group full of its agent's processes one task over its limit.
 */
function roomFor(group: SandboxGroup, tasks: number): boolean {
  for (let g: SandboxGroup | undefined = group; g; g = g.parent) {
    for (const d of g.dirs) {
      let current: string;
      let max: string;
      try {
        max = readFileSync(`${d}/pids.max`, 'utf8').trim();
        if (max === 'max') continue;
        current = readFileSync(`${d}/pids.current`, 'utf8');
      } catch {
        continue; // not the pids hierarchy
      }
      if (Number(current) + tasks > Number(max)) return false;
    }
  }
  return true;
}

/** Removes a launcher's cgroup once empty, then gives up its seat in its group (the group may then be removed). */
async function removeWhenEmpty(cg: SandboxCgroup, seat?: GroupSeat): Promise<void> {
  try {
    await removeCgroupWhenEmpty(cg);
  } finally {
    seat?.leave();
  }
}

async function removeCgroupWhenEmpty(cg: SandboxCgroup): Promise<void> {
  try {
    if (cg.populated()) cg.killAll();
    await cg.waitEmpty(5000);
    for (let i = 0; i < 20; i++) {
      try {
        cg.remove();
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    log.error({ cgroup: cg.name }, 'cannot remove a warm launcher cgroup; stale cleanup will retry');
  } catch (err) {
    log.error({ err, cgroup: cg.name }, 'cannot remove a warm launcher cgroup; stale cleanup will retry');
  }
}

/** The request a warm launcher reads on fd 3 (format in captrap-launch.c). */
export function encodeRequest(argv: readonly string[], env: Readonly<Record<string, string>>, cwd: string): Buffer {
  const envList = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  const payload = Buffer.from([cwd, ...argv, ...envList].map((s) => `${s}\0`).join(''));
  const h = Buffer.alloc(16);
  h.write('CTS1', 0, 'latin1');
  h.writeUInt32LE(argv.length, 4);
  h.writeUInt32LE(envList.length, 8);
  h.writeUInt32LE(payload.length, 12);
  return Buffer.concat([h, payload]);
}
