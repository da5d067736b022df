// Runs one command in a sandbox: cgroup(s) with limits, a trampoline that joins them before the
// command's first instruction, a parent-death signal, a scrubbed environment, capped output, a
// timeout, a whole-tree kill, an exit reason read from the kernel's counters, and cleanup.
//
// The launch chain (every step execs the next, so the pid stays the same), with the compiled
// launcher (build/captrap-launch, see launcher/captrap-launch.c for its argument protocol):
//   captrap-launch --ppid <captrap pid> [--no-new-privs] [--keep-pwd] [--join <cgroup.procs>]... --
//     [unshare ... --] [setpriv --reuid/--regid ... --] [prlimit ... --] command args
// or, when it is not built or CAPTRAP_LAUNCHER=sh, the portable fallback (one exec more):
//   setpriv --pdeathsig KILL [--no-new-privs] -- sh -c TRAMPOLINE <captrap pid> <cgroup.procs...> --
//     keep-pwd|drop-pwd [unshare ... --] [setpriv --reuid/--regid ... --] [prlimit ... --] command args
// Either launcher arms the parent-death signal, checks its parent is still captrap (closing the
// window before the signal was armed; a warm launcher's parent is captrap-spawn, which dies with
// captrap the same way: spawner.ts), writes its own pid into every cgroup.procs, then execs:
// the command is in its cgroups before it runs anything, and everything it forks is born inside.
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';
import type { Readable, Writable } from 'node:stream';
import { log } from '../log.js';
import { autoBackend, cgroupBackend, newCgroupName, type CgroupBackend, type CgroupUsage, type Counters, type Degradation, type SandboxCgroup } from './cgroup.js';
import { LimitUnenforceableError, SandboxOptionError, SandboxSpawnError } from './errors.js';
import { probeHost, which, type HostInfo } from './host.js';
import { normalizeOptions, type BackendName, type NormalizedOptions, type SandboxOptions } from './limits.js';
import { cgroupsOf, descendants, processRef, readStat, type ProcessRef } from './proc.js';
import { NOBODY, pidsInNamespace, planConfinement, sandboxPidNamespace, type ConfinementReport } from './confine.js';
import { chooseLauncher, launchArgv, type LauncherChoice, type LauncherKind } from './launcher/launcher.js';
import { ensureOwnerWatchdog, ownerWatchdogPending } from './watchdog.js';
import { renewCgroupMigrationPrime } from './migration-prime.js';
import { takeWarmLauncher, type WarmLauncher, type WarmShape } from './pool.js';
import type { LeaderProcess } from './spawner.js';
import type { SystemdScopeCgroup } from './systemd-run.js';
import { seatInGroup, type GroupSeat, type KillReason, type SandboxGroup } from './group.js';

export type { KillReason } from './group.js';
export { configureWarmPool, drainWarmPool, warmPoolStats, type WarmPoolOptions, type WarmPoolStats } from './pool.js';
export { createSandboxGroup, prioritiseSelf, type GroupLimitOptions, type PrioritiseResult, type SandboxGroup, type SandboxGroupOptions } from './group.js';

/** Options of one sandbox, plus the group it is created in. */
export interface RunOptions extends SandboxOptions {
  /**
   * Create the sandbox's cgroup inside this group (made by createSandboxGroup): its own limits
   * still apply, and the group's (and every enclosing group's) bound it together with everything
   * else inside. The sandbox uses the group's backend and cgroupBase.
   */
  group?: SandboxGroup;
  /**
   * Start through a warm launcher from the pool when one fits (default true; the pool is off
   * until configureWarmPool sets a size). false always starts cold.
   */
  warm?: boolean;
}
export type ExitReason =
  | { kind: 'exited'; code: number }
  | { kind: 'signaled'; signal: NodeJS.Signals }
  | { kind: 'oom' }
  | { kind: 'timeout' }
  | { kind: 'pids-limit' }
  | { kind: KillReason };

export interface SandboxUsage {
  cgroup: CgroupUsage;
  processes: { pid: number; cpuPercent: number; memoryBytes: number; elapsedMs: number }[];
}

export interface SandboxResult {
  reason: ExitReason;
  /** The leader's raw exit status. */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  pid: number;
  durationMs: number;
  backend: BackendName;
  killMechanism: string;
  /** The program that put the command in its cgroups and armed its parent-death signal. */
  launcher: LauncherKind;
  /** Requested limits or guarantees that did not hold (only with allowDegraded). */
  degraded: Degradation[];
  /** Counter deltas over the sandbox's life. */
  counters: Counters;
  /** Final cgroup figures (peak memory, total CPU time). */
  usage: CgroupUsage;
  /** False if a cgroup directory could not be removed (stale cleanup will retry). */
  cleanedUp: boolean;
  /** What confined the command (namespaces, view, identity, network). */
  confinement: ConfinementReport;
  /** Started through a warm launcher from the pool (see pool.ts) rather than spawned for it. */
  warm: boolean;
  /**
   * Pids of the sandbox found alive outside its cgroup when it was stopped (a process that left
   * its cgroup); each was SIGKILLed. Non-empty means an escape was attempted and caught.
   */
  escaped: number[];
}

export interface Sandbox extends Promise<SandboxResult> {
  readonly pid: number;
  readonly ref: ProcessRef | undefined;
  readonly child: LeaderProcess;
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
  readonly stdin: Writable | null;
  readonly backend: BackendName;
  readonly launcher: LauncherKind;
  readonly cgroupName: string;
  readonly degraded: readonly Degradation[];
  readonly confinement: ConfinementReport;
  /** Started through a warm launcher from the pool. */
  readonly warm: boolean;
  /** Stops the sandbox: SIGTERM to the leader, killGrace, then the whole tree. The reason is recorded before any signal. */
  kill(reason?: KillReason): void;
  usage(): Promise<SandboxUsage>;
}

const TRAMPOLINE = [
  'p=$1; shift',
  // Parent-death was armed by setpriv before this shell started: if captrap is already gone
  // ($PPID is no longer it), the signal would never come, so do not run the command at all.
  '[ "$PPID" = "$p" ] || exit 125',
  'while [ "$1" != -- ]; do echo $$ > "$1" || { echo "captrap: cannot join cgroup $1" >&2; exit 125; }; shift; done',
  'shift',
  // The shell sets PWD itself; the command's environment is exactly what captrap passed.
  '[ "$1" = keep-pwd ] || unset PWD',
  'shift',
  'exec "$@"',
].join('\n');

const SIGNUMS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGBUS: 7, SIGFPE: 8, SIGKILL: 9, SIGUSR1: 10, SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15, SIGXCPU: 24, SIGXFSZ: 25 };

/** The shell-style exit status of a result: the code, or 128 + signal number. */
export function exitStatusOf(r: Pick<SandboxResult, 'exitCode' | 'signal'>): number {
  if (r.exitCode !== null) return r.exitCode;
  return 128 + (r.signal ? (SIGNUMS[r.signal] ?? 1) : 1);
}

export function describeExitReason(r: ExitReason): string {
  switch (r.kind) {
    case 'exited':
      return `exited(${r.code})`;
    case 'signaled':
      return `signaled(${r.signal})`;
    default:
      return r.kind;
  }
}

const live = new Set<SandboxCgroup>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // A normal captrap exit: kill every live tree synchronously (cgroup.kill is one write). The
  // directories are left for stale cleanup; a SIGKILLed captrap relies on parent-death instead.
  process.once('exit', () => {
    for (const cg of live) {
      try {
        cg.killAll();
      } catch {
        // best effort on the way out
      }
    }
  });
}

function resolveCommand(command: string, env: Record<string, string>, cwd: string | undefined): string {
  if (typeof command !== 'string' || command === '') throw new SandboxOptionError('command must be a non-empty string');
  const found = command.includes('/') ? which(command.startsWith('/') || !cwd ? command : `${cwd}/${command}`) : which(command, env.PATH ?? '');
  if (!found) throw new SandboxSpawnError('E_COMMAND_NOT_FOUND', `command '${command}' not found or not executable (PATH=${env.PATH ?? ''})`, { command });
  return found;
}

function checkCwd(cwd: string | undefined): void {
  if (cwd === undefined) return;
  let ok = false;
  try {
    ok = statSync(cwd).isDirectory();
  } catch {
    ok = false;
  }
  if (!ok) throw new SandboxSpawnError('E_CWD', `working directory '${cwd}' does not exist or is not a directory`, { cwd });
}

/**
 * Nobody runs as root by accident: with captrap as root and no uid given, the command runs as
 * 65534; uid or gid 0 must be asked for with allowRoot. A uid without a gid gets the same number
 * as its gid, so a switched user never keeps root's group.
 */
function chooseIds(o: NormalizedOptions, host: HostInfo): void {
  if (!host.isRoot) return;
  if (o.uid === undefined && !o.allowRoot) {
    o.uid = NOBODY;
    if (o.gid === undefined) o.gid = NOBODY;
  } else if (o.uid !== undefined && o.gid === undefined && o.uid !== 0) {
    o.gid = o.uid;
  }
  if (!o.allowRoot && (o.uid === 0 || o.gid === 0)) {
    throw new SandboxSpawnError('E_UID', `running a sandbox as ${o.uid === 0 ? 'uid' : 'gid'} 0 needs allowRoot (captrap run --allow-root, or allowRoot in the config)`, { uid: o.uid, gid: o.gid });
  }
}

function checkIds(o: NormalizedOptions, host: HostInfo, viaLauncher: boolean): void {
  if (o.uid === undefined && o.gid === undefined) return;
  const myUid = process.getuid?.();
  const myGid = process.getgid?.();
  const switching = (o.uid !== undefined && o.uid !== myUid) || (o.gid !== undefined && o.gid !== myGid);
  if (switching && !host.isRoot) {
    throw new SandboxSpawnError('E_UID', `cannot switch to uid ${o.uid ?? myUid} / gid ${o.gid ?? myGid}: captrap runs as uid ${myUid} without CAP_SETUID; run captrap as root or drop the uid/gid option`, { uid: o.uid, gid: o.gid });
  }
  if (switching && !viaLauncher && !host.tools.setpriv) throw new SandboxSpawnError('E_UID', 'cannot switch uid/gid: setpriv (util-linux) is not installed', { uid: o.uid, gid: o.gid });
}

interface Plan {
  options: NormalizedOptions;
  host: HostInfo;
  backend: BackendName;
  degraded: Degradation[];
  file: string;
  launcher: LauncherChoice;
  /** Launcher arguments that confine the command (empty when unconfined). */
  confineArgs: string[];
  /** The view's system part within confineArgs: what a warm launcher builds ahead. */
  systemViewArgs: string[];
  confinement: ConfinementReport;
}

/** Everything that can be refused is refused here, before any cgroup or process exists. */
function plan(command: string, args: readonly string[], input: RunOptions | undefined): Plan {
  if (!isMainThread) {
    throw new SandboxOptionError('sandboxes must be started from the main thread: a parent-death signal fires when the spawning thread exits');
  }
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string')) throw new SandboxOptionError('args must be an array of strings');
  const { group, warm: _warm, ...rest } = input ?? {};
  const options = normalizeOptions(rest);
  if (group) fitGroup(options, rest, group);
  const host = probeHost();
  checkCwd(options.cwd);
  const file = resolveCommand(command, options.env, options.cwd);
  const launcher = chooseLauncher(host.tools.setpriv !== undefined);
  chooseIds(options, host);
  const confined = options.confine && launcher.kind === 'captrap-launch';
  // Unconfined, the launcher switches ids itself only when no unshare(1) follows it (see buildArgv).
  const unshares = !confined && options.namespaces.some((n) => host.namespaces[n] && n !== 'cgroup');
  checkIds(options, host, launcher.kind === 'captrap-launch' && !unshares);
  let backend = options.backend === 'auto' ? autoBackend(host) : options.backend;
  const degraded: Degradation[] = [];
  if (backend === 'systemd-run') {
    const why = cgroupBackend(backend, host).check(options.limits)[0];
    if (why !== undefined) {
      if (!options.allowDegraded || options.backend === 'systemd-run') {
        throw new LimitUnenforceableError(`backend 'systemd-run' cannot be used: ${why.reason}`, { limit: why.limit, reason: why.reason, fix: why.fix, backend });
      }
      degraded.push(why);
      backend = 'none';
    }
  }
  degraded.push(...cgroupBackend(backend, host).check(options.limits));
  if (launcher.kind === 'sh') {
    degraded.push({ limit: 'parent-death', reason: 'setpriv (util-linux) is not installed and captrap-launch is not in use, so the command gets no parent-death signal', fix: "install util-linux, or run 'npm run build' with a C compiler (unset CAPTRAP_LAUNCHER=sh)" });
  }
  const confinement = planConfinement(
    {
      confine: options.confine,
      namespaces: options.namespaces,
      view: options.view,
      ...(options.egress ? { egress: options.egress } : {}),
      ...(options.uid !== undefined ? { uid: options.uid } : {}),
      ...(options.gid !== undefined ? { gid: options.gid } : {}),
      noNewPrivs: options.noNewPrivs,
      file,
      ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
    },
    host,
    launcher,
  );
  degraded.push(...confinement.degraded);
  Object.assign(options.env, confinement.env);
  if (!options.confine) {
    const missingNs = options.namespaces.filter((n) => !host.namespaces[n]);
    if (missingNs.length > 0) degraded.push({ limit: 'namespaces', reason: `this host cannot create ${missingNs.join(', ')} namespace(s)`, fix: 'run captrap as root, or allow unprivileged user namespaces' });
  }
  if (degraded.length > 0 && !options.allowDegraded) {
    const d = degraded[0]!;
    const all = degraded.map((x) => `${x.limit} (${x.reason})`).join('; ');
    throw new LimitUnenforceableError(
      `refusing to start: ${all}. Fix: ${d.fix}. Pass allowDegraded to run anyway.`,
      { limit: d.limit, reason: d.reason, fix: d.fix, backend },
    );
  }
  if (degraded.length > 0) log.warn({ backend, degraded }, 'sandbox runs degraded');
  return { options, host, backend, degraded, file, launcher, confineArgs: confined ? confinement.launcherArgs : [], systemViewArgs: confined ? confinement.systemViewArgs : [], confinement: confinement.report };
}

/** A sandbox in a group lives under the group's base and uses its backend (one cgroup tree). */
function fitGroup(options: NormalizedOptions, input: SandboxOptions, group: SandboxGroup): void {
  if (group.removed) throw new SandboxOptionError(`option 'group': group ${group.path} was removed`, { option: 'group' });
  if (input.cgroupBase !== undefined && input.cgroupBase !== group.cgroupBase) {
    throw new SandboxOptionError(`option 'cgroupBase': a sandbox in a group lives under the group's base '${group.cgroupBase}'`, { option: 'cgroupBase' });
  }
  if (options.backend !== 'auto' && options.backend !== group.backend) {
    throw new SandboxOptionError(`option 'backend': a sandbox in a group uses the group's backend '${group.backend}'`, { option: 'backend' });
  }
  options.cgroupBase = group.cgroupBase;
  options.backend = group.backend;
}

/**
 * Descendants of the leader get no parent-death signal; the owner watchdog kills them (and
 * removes the cgroups) when captrap dies. Started once per process and base, before the first
 * cgroup exists. Fails closed unless the caller allowed degradation.
 *
 * Except for a sandbox that dies whole with its leader ('deferred'): a cgroup sandbox started
 * by captrap-launch in its own pid namespace. The launcher arms its parent-death signal before
 * anything else and then checks captrap is still its parent; its init dies with it, and the
 * kernel kills every member of the namespace with its init, wherever they setsid or fork to.
 * So a SIGKILLed captrap leaves no process of it behind with or without a watchdog, only empty
 * cgroups, which the next stale cleanup removes (the watchdog would remove them at once). Its
 * watchdog is started WATCHDOG_DEFER_MS after the launch, if the sandbox still runs: a short
 * command (a `captrap run` of most tools) never pays the watchdog's fork and exec, which would
 * otherwise come before the launcher or compete with it for the CPU. Whatever can refuse the
 * watchdog (a bad base, no shell) is still checked now, before anything exists. Without a pid
 * namespace a setsid grandchild would outlive captrap: there the watchdog comes first.
 */
function armWatchdog(p: Plan): 'armed' | 'deferred' {
  if (p.backend === 'none') return 'armed';
  try {
    if (diesWithLeader(p)) return ownerWatchdogPending(p.host, p.options.cgroupBase) ? 'deferred' : 'armed';
    ensureOwnerWatchdog(p.host, p.options.cgroupBase);
  } catch (err) {
    watchdogDegraded(p, err);
  }
  return 'armed';
}

/** How long a sandbox that dies whole with its leader runs before its owner watchdog is started (see armWatchdog). */
export const WATCHDOG_DEFER_MS = 100;

/** Whether nothing of the sandbox can outlive its leader (see armWatchdog). */
function diesWithLeader(p: Plan): boolean {
  return (p.backend === 'cgroup-v1' || p.backend === 'cgroup-v2') && p.launcher.kind === 'captrap-launch' && p.confineArgs.length > 0 && p.confinement.namespaces.includes('pid');
}

function watchdogDegraded(p: Plan, err: unknown): void {
  if (!p.options.allowDegraded) throw err;
  const d: Degradation = { limit: 'die-with-parent', reason: `the owner watchdog cannot start (${(err as Error).message}), so the leader's descendants survive a SIGKILLed captrap until the next stale cleanup`, fix: 'make /bin/sh runnable for captrap' };
  p.degraded.push(d);
  log.warn({ degraded: d }, 'sandbox runs degraded');
}

/**
 * The warm launcher shape this sandbox can use, or undefined when it starts cold: the compiled
 * launcher (in the sandbox's group, if any: one pool per group), stdin 'ignore' (the launcher was spawned with
 * it), nothing degraded, on v1 no cpu limit (a sandbox joins the cpu hierarchy only with one),
 * and no view root at or below /dev or /proc.
 */
function warmShape(p: Plan, input: RunOptions | undefined, backend: CgroupBackend): WarmShape | undefined {
  const o = p.options;
  if (input?.warm === false || p.launcher.kind !== 'captrap-launch' || o.stdin !== 'ignore' || p.degraded.length > 0) return undefined;
  if (p.backend !== 'cgroup-v2' && p.backend !== 'cgroup-v1') return undefined;
  if (p.backend === 'cgroup-v1' && o.limits.cpu !== undefined) return undefined;
  const confined = p.confineArgs.length > 0;
  // A warm launcher has /dev and /proc of its view built already (captrap-launch.c, warm view).
  if (confined && p.confineArgs.some((a, i) => (a === '--ro' || a === '--rw') && /^\/(dev|proc)(\/|$)/.test(p.confineArgs[i + 1] ?? ''))) return undefined;
  // A root below a path the launcher hid ahead would land inside the hiding mount (cold, the hide covers it afterwards).
  const hiddenAhead = p.systemViewArgs.flatMap((a, i) => (a === '--hide' ? [p.systemViewArgs[i + 1]!] : []));
  if (hiddenAhead.length > 0 && p.confineArgs.some((a, i) => (a === '--ro' || a === '--rw') && hiddenAhead.some((h) => isBelow(p.confineArgs[i + 1] ?? '', h)))) return undefined;
  return {
    host: p.host,
    backendName: p.backend,
    backend,
    base: o.cgroupBase,
    namespaces: confined ? p.confinement.namespaces : [],
    launcherPath: p.launcher.path!,
    view: p.systemViewArgs,
    dropCaps: p.confineArgs.includes('--drop-caps'),
    ...(input?.group ? { group: input.group } : {}),
  };
}

/** Whether `path` lies strictly below `dir`. */
function isBelow(path: string, dir: string): boolean {
  return path.length > dir.length && path.startsWith(dir) && path.charCodeAt(dir.length) === 47 /* '/' */;
}

/** A warm launcher with the request's final limits written, or undefined (start cold). */
function takeWarm(p: Plan, input: RunOptions | undefined, backend: CgroupBackend): WarmLauncher | undefined {
  const shape = warmShape(p, input, backend);
  const warm = shape ? takeWarmLauncher(shape) : undefined;
  if (!warm) return undefined;
  try {
    if (!warm.cg.setLimits) throw new Error(`backend ${p.backend} cannot set limits on an existing cgroup`);
    warm.cg.setLimits(p.options.limits);
    return warm;
  } catch (err) {
    log.debug({ err, cgroup: warm.cg.name }, 'warm launcher cannot take these limits; starting cold');
    warm.discard();
    return undefined;
  }
}

/** `ownerPid`: the launcher's parent (a warm launcher's is captrap-spawn when that started it). */
function buildArgv(p: Plan, cg: SandboxCgroup, args: readonly string[], ownerPid = process.pid): string[] {
  const { options: o, host } = p;
  const tail: string[] = [];
  const confined = p.confineArgs.length > 0;
  // Confined, the launcher makes the namespaces and switches the ids itself.
  const ns = confined ? [] : o.namespaces.filter((n) => host.namespaces[n] && n !== 'cgroup');
  if (ns.length > 0) {
    tail.push(host.tools.unshare!);
    if (ns.includes('pid')) tail.push('--pid', '--fork', '--kill-child');
    if (ns.includes('mount')) tail.push('--mount', ...(ns.includes('pid') ? ['--mount-proc'] : []));
    for (const n of ['net', 'ipc', 'uts'] as const) if (ns.includes(n)) tail.push(`--${n}`);
    tail.push('--');
  }
  const switchIds = !confined && (o.uid !== undefined || o.gid !== undefined);
  // The launcher switches ids in place before it execs the chain, so unshare(1) after it would
  // run unprivileged and fail: with unshare in the chain, setpriv switches after it instead.
  const launcherSwitches = switchIds && p.launcher.kind === 'captrap-launch' && ns.length === 0;
  if (launcherSwitches) {
    // The launcher switches ids in place (and re-arms the parent-death signal after).
  } else if (switchIds && host.tools.setpriv) {
    // A credential change clears the parent-death signal, so this setpriv re-arms it after switching.
    tail.push(host.tools.setpriv, '--pdeathsig', 'KILL');
    if (o.uid !== undefined) tail.push('--reuid', String(o.uid));
    if (o.gid !== undefined) tail.push('--regid', String(o.gid));
    tail.push('--clear-groups');
    if (o.noNewPrivs) tail.push('--no-new-privs');
    tail.push('--');
  }
  if (p.backend === 'none' && host.tools.prlimit && (o.limits.memoryBytes !== undefined || o.limits.pids !== undefined)) {
    tail.push(host.tools.prlimit);
    if (o.limits.memoryBytes !== undefined) tail.push(`--as=${o.limits.memoryBytes}`);
    if (o.limits.pids !== undefined) tail.push(`--nproc=${o.limits.pids}`);
    tail.push('--');
  }
  tail.push(p.file, ...args);
  // systemd-run --scope moves itself into the sandbox's scope, then execs the launcher in place.
  const scope = (cg as Partial<SystemdScopeCgroup>).prefix ?? [];
  if (p.launcher.kind === 'captrap-launch') {
    const extra = confined ? p.confineArgs : launcherSwitches ? [...(o.uid !== undefined ? ['--uid', String(o.uid)] : []), ...(o.gid !== undefined ? ['--gid', String(o.gid)] : [])] : [];
    return [...scope, ...launchArgv(p.launcher.path!, { ownerPid, noNewPrivs: o.noNewPrivs, keepPwd: o.env.PWD !== undefined, joinFiles: cg.joinFiles, extra }, tail)];
  }
  const sh = host.tools.sh ?? '/bin/sh';
  const trampoline = [sh, '-c', TRAMPOLINE, 'captrap-trampoline', String(process.pid), ...cg.joinFiles, '--', o.env.PWD !== undefined ? 'keep-pwd' : 'drop-pwd', ...tail];
  if (!host.tools.setpriv) return [...scope, ...trampoline];
  return [...scope, host.tools.setpriv, '--pdeathsig', 'KILL', ...(o.noNewPrivs && !switchIds ? ['--no-new-privs'] : []), '--', ...trampoline];
}

class OutputCapture {
  private chunks: Buffer[] = [];
  private size = 0;
  truncated = false;
  constructor(private readonly cap: number) {}
  add(chunk: Buffer): void {
    if (this.size >= this.cap) {
      this.truncated = true;
      return;
    }
    const room = this.cap - this.size;
    const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
    if (part.length < chunk.length) this.truncated = true;
    this.chunks.push(part);
    this.size += part.length;
  }
  text(): string {
    const s = Buffer.concat(this.chunks).toString('utf8');
    return this.truncated ? `${s}\n[captrap: output truncated at ${this.cap} bytes]\n` : s;
  }
}

function streamDone(s: Readable | null, ms: number): Promise<void> {
  if (!s || s.destroyed || s.readableEnded) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      s.destroy();
      resolve();
    }, ms);
    s.once('close', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// setTimeout fires at once for delays over 2^31-1 ms; longer ones are waited in steps.
const MAX_TIMER_MS = 2 ** 31 - 1;
function longTimeout(fn: () => void, ms: number): { clear(): void } {
  let t: NodeJS.Timeout;
  const due = Date.now() + ms;
  const arm = () => {
    const left = due - Date.now();
    t = left > MAX_TIMER_MS ? setTimeout(arm, MAX_TIMER_MS) : setTimeout(fn, Math.max(0, left));
  };
  arm();
  return { clear: () => clearTimeout(t) };
}

/**
 * The sandbox's processes that are alive outside its cgroup: the leader, and the members of its
 * pid namespace or, without one, the leader's descendants. Listed before anything is killed,
 * while the leader still holds its descendants.
 */
function outsideCgroup(leader: number | undefined, pidNs: string | undefined, inCgroup: ReadonlySet<number>): number[] {
  if (leader === undefined) return [];
  const members = [leader, ...(pidNs ? pidsInNamespace(pidNs) : descendants(leader).map((r) => r.pid))];
  return [...new Set(members)].filter((pid) => !inCgroup.has(pid));
}

/**
 * Starts `command args` in a sandbox. Throws a typed error synchronously (before creating
 * anything) for bad options, a missing command or cwd, an unswitchable uid, or a limit this host
 * cannot enforce. The returned object is a promise for the result and exposes the live child.
 */
export function runSandboxed(command: string, args: readonly string[] = [], options?: RunOptions): Sandbox {
  const p = plan(command, args, options);
  const o = p.options;
  const backend = cgroupBackend(p.backend, p.host);
  let child: LeaderProcess | undefined;
  const watchdog = armWatchdog(p);
  // Set once the sandbox exists; a group's killAll records its reason here before it kills.
  let groupKill: ((reason: KillReason) => void) | undefined;
  const seat: GroupSeat | undefined = options?.group ? seatInGroup(options.group, { noteKill: (r) => groupKill?.(r) }) : undefined;
  // A warm launcher already sits in its cgroup (now with the final limits) and namespaces.
  const warm = takeWarm(p, options, backend);
  let cg: SandboxCgroup;
  try {
    cg = warm ? warm.cg : backend.create(o.cgroupBase, newCgroupName(), o.limits, () => child?.pid, seat?.placement);
  } catch (err) {
    seat?.leave();
    throw err;
  }
  installExitHook();
  log.debug({ backend: p.backend, cgroup: cg.name, command }, 'sandbox starting');
  live.add(cg);
  // A warm launcher's were read when it became ready (an idle launcher's stay as they were), or
  // are read at the hand-over: they start from the request either way, not from the pool.
  const start = warm?.counters ?? cg.counters();
  // hrtime, not performance.now(): the first use of `performance` loads perf_hooks (about 1 ms of a CLI start).
  const t0 = process.hrtime.bigint();
  try {
    if (warm) {
      // The same command line as cold, less the cgroup joins it has done already.
      // Without a cwd option a spawned command starts in captrap's own directory: so does this one.
      warm.start(buildArgv(p, { ...cg, joinFiles: [] }, args, warm.ppid), o.env, o.cwd ?? process.cwd());
      child = warm.child;
    } else {
      const argv = buildArgv(p, cg, args);
      // Keeps a CLI's prime (migration-prime.ts) good for the launcher's cgroup join.
      if (p.backend === 'cgroup-v1' || p.backend === 'cgroup-v2') renewCgroupMigrationPrime(p.host);
      child = spawn(argv[0]!, argv.slice(1), {
        cwd: o.cwd,
        env: o.env,
        stdio: [o.stdin, 'pipe', 'pipe'],
        // Without a cgroup the process group is the only handle on the tree.
        detached: p.backend === 'none',
      });
    }
  } catch (err) {
    live.delete(cg);
    if (warm) warm.discard();
    else cg.remove();
    seat?.leave();
    throw new SandboxSpawnError('E_SPAWN', `cannot start '${command}': ${(err as Error).message}`, { command });
  }
  if (watchdog === 'deferred') {
    const t = setTimeout(() => {
      if (finished || leaderExit !== undefined) return;
      try {
        ensureOwnerWatchdog(p.host, o.cgroupBase);
      } catch (e) {
        try {
          watchdogDegraded(p, e);
        } catch {
          // Fail closed, as a refusal would have: the command does not go on without it.
          log.error({ err: e, cgroup: cg.name }, 'owner watchdog cannot start: stopping the sandbox');
          stop('killed');
        }
      }
    }, WATCHDOG_DEFER_MS);
    // Neither keeps captrap alive nor outlives the sandbox's interest in it.
    t.unref();
  }
  const proc = child;
  const ref = proc.pid !== undefined ? processRef(proc.pid) : undefined;
  const out = new OutputCapture(o.maxOutputBytes);
  const err = new OutputCapture(o.maxOutputBytes);
  proc.stdout?.on('data', (c: Buffer) => out.add(c));
  proc.stderr?.on('data', (c: Buffer) => err.add(c));

  let ownKill: 'timeout' | KillReason | undefined;
  let leaderExit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  let graceTimer: NodeJS.Timeout | undefined;
  let finished = false;
  let spawnError: Error | undefined;
  const escaped: number[] = [];
  // Known while the leader lives; the namespace outlives a member that left the cgroup.
  let pidNs: string | undefined;
  const notePidNs = () => {
    if (pidNs === undefined && p.confinement.namespaces.includes('pid') && proc.pid !== undefined) pidNs = sandboxPidNamespace(proc.pid);
  };

  /** Kills the cgroup's tree; false when it was found empty (nothing was left to kill). */
  const killTree = (): boolean => {
    try {
      if (!cg.populated()) return false;
      cg.killAll();
    } catch (e) {
      log.error({ err: e, cgroup: cg.name }, 'whole-tree kill failed');
    }
    return true;
  };
  // What no hostile command can dodge: the cgroup, the leader through its handle even if it left
  // the cgroup, and every process of the sandbox found outside it.
  // Only a command running as root can write a cgroup.procs file (and, confined, not even that:
  // it has no cgroupfs and no capabilities), so the /proc scans for escapees are paid only then.
  const mayEscape = (o.uid ?? process.getuid?.() ?? 0) === 0;
  // Absent from a snapshot is not proof: a process may have exited or been born since. Only a
  // live process whose /proc/<pid>/cgroup names none of ours has left.
  const hasLeft = (pid: number): boolean => {
    const st = readStat(pid);
    const cgs = st && st.state !== 'Z' ? cgroupsOf(pid) : undefined;
    return cgs !== undefined && ![...cgs.values()].some((path) => path.includes(cg.name));
  };
  const killEverything = () => {
    const leaderAlive = proc.exitCode === null && proc.signalCode === null;
    const inCgroup = new Set(cg.pids());
    const leaderLeft = leaderAlive && proc.pid !== undefined && !inCgroup.has(proc.pid) && hasLeft(proc.pid);
    // Without a pid namespace descendants are found through the leader: list them before it dies.
    const descendantsOutside = leaderAlive && mayEscape && !pidNs ? outsideCgroup(proc.pid, undefined, inCgroup).filter((pid) => pid !== proc.pid && hasLeft(pid)) : [];
    killTree();
    if (leaderAlive) proc.kill('SIGKILL');
    // Namespace members outside the cgroup are listed after the kill, so it is not delayed.
    const others = pidNs && mayEscape ? outsideCgroup(proc.pid, pidNs, inCgroup).filter((pid) => pid !== proc.pid && hasLeft(pid)) : descendantsOutside;
    const outside = leaderLeft ? [proc.pid!, ...others] : others;
    for (const pid of outside) {
      if (pid === proc.pid) continue;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // exited on its own
      }
    }
    if (outside.length > 0) {
      escaped.push(...outside);
      log.warn({ cgroup: cg.name, escaped: outside }, 'killed sandbox processes found outside their cgroup');
    }
  };

  const stop = (reason: 'timeout' | KillReason) => {
    // After the leader's exit the ending is already decided; a late kill() must not relabel it.
    if (finished || ownKill !== undefined || leaderExit !== undefined) return;
    // Recorded before any signal, so the exit is classified as ours and not as a crash.
    ownKill = reason;
    notePidNs();
    if (!leaderExit && proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    if (o.killGraceMs === 0) killEverything();
    else graceTimer = setTimeout(killEverything, o.killGraceMs);
  };
  const timer = o.timeoutMs !== undefined ? longTimeout(() => stop('timeout'), o.timeoutMs) : undefined;
  groupKill = (reason) => {
    if (finished) return;
    // Like stop(), the reason is recorded before any signal and a decided ending is never
    // relabelled; unlike it there is no grace: the group is going down as a whole. Killing
    // through the sandbox (not only by the group's cgroup) also reaches a leader or member that
    // left its cgroup.
    if (ownKill === undefined && leaderExit === undefined) {
      ownKill = reason;
      notePidNs();
    }
    killEverything();
  };

  const done = new Promise<SandboxResult>((resolve, reject) => {
    const finish = async () => {
      timer?.clear();
      if (graceTimer) clearTimeout(graceTimer);
      // The leader is gone: nothing of its tree may outlive it.
      // Usually the leader was the last to go (its init reaped everything first): then there is nothing to wait for.
      let empty = !killTree();
      if (!empty) empty = await cg.waitEmpty(5000);
      if (!empty) {
        killTree();
        empty = await cg.waitEmpty(5000);
      }
      await Promise.all([streamDone(proc.stdout, 1000), streamDone(proc.stderr, 1000)]);
      const end = cg.counters();
      const usage = cg.usage();
      let cleanedUp = false;
      for (let i = 0; i < 20 && !cleanedUp; i++) {
        try {
          cg.remove();
          cleanedUp = true;
        } catch (e) {
          if (i === 19) log.error({ err: e, cgroup: cg.name }, 'cannot remove sandbox cgroup; stale cleanup will retry');
          else await sleep(5);
        }
      }
      finished = true;
      live.delete(cg);
      seat?.leave();
      if (spawnError) {
        reject(new SandboxSpawnError('E_SPAWN', `cannot start '${command}': ${spawnError.message}`, { command }));
        return;
      }
      const counters: Counters = { oomKills: end.oomKills - start.oomKills, pidsMax: end.pidsMax - start.pidsMax };
      if (end.groupPidsMax !== undefined) counters.groupPidsMax = end.groupPidsMax - (start.groupPidsMax ?? 0);
      const exitCode = leaderExit?.code ?? null;
      const signal = leaderExit?.signal ?? null;
      // In a group: oomKills is the sandbox's own cgroup's counter, which counts its members
      // killed whether its own limit or a group's was hit (v1: charged to the victim's cgroup
      // only; v2: to the victim's cgroup and up), so a sibling's OOM is never ours. pidsMax is
      // exact on v1 (charged to the cgroup that forked); on v2 a fork refused by a group's limit
      // only shows in the groups' counters, which siblings share: it counts as ours only if the
      // command also failed.
      const failed = signal !== null || (exitCode ?? 0) !== 0;
      let reason: ExitReason;
      if (ownKill === 'killed' || ownKill === 'revoked' || ownKill === 'owner-exited') reason = { kind: ownKill };
      else if (counters.oomKills > 0) reason = { kind: 'oom' };
      // A refused fork is the sandbox hitting its limit even if the command coped and exited 0;
      // the raw status stays in exitCode.
      else if (counters.pidsMax > 0 || ((counters.groupPidsMax ?? 0) > 0 && failed)) reason = { kind: 'pids-limit' };
      else if (ownKill === 'timeout') reason = { kind: 'timeout' };
      else if (signal) reason = { kind: 'signaled', signal };
      else reason = { kind: 'exited', code: exitCode ?? 0 };
      resolve({
        reason,
        exitCode,
        signal,
        stdout: out.text(),
        stderr: err.text(),
        stdoutTruncated: out.truncated,
        stderrTruncated: err.truncated,
        pid: proc.pid ?? -1,
        durationMs: Number(process.hrtime.bigint() - t0) / 1e6,
        backend: p.backend,
        killMechanism: cg.killMechanism,
        launcher: p.launcher.kind,
        degraded: p.degraded,
        counters,
        usage,
        cleanedUp,
        confinement: p.confinement,
        warm: warm !== undefined,
        escaped,
      });
      warm?.ended();
    };
    proc.once('error', (e) => {
      spawnError = e;
      if (!leaderExit) {
        leaderExit = { code: null, signal: null };
        void finish();
      }
    });
    proc.once('exit', (code, signal) => {
      if (leaderExit) return;
      leaderExit = { code, signal };
      void finish();
    });
  });

  const sandbox = Object.assign(done, {
    pid: proc.pid ?? -1,
    ref,
    child: proc,
    stdout: proc.stdout,
    stderr: proc.stderr,
    stdin: proc.stdin,
    backend: p.backend,
    launcher: p.launcher.kind,
    cgroupName: cg.name,
    degraded: p.degraded,
    confinement: p.confinement,
    warm: warm !== undefined,
    kill: (reason: KillReason = 'killed') => stop(reason),
    usage: async (): Promise<SandboxUsage> => {
      const pids = finished ? [] : cg.pids();
      const processes: SandboxUsage['processes'] = [];
      // Loaded on first use: most sandboxes never ask, and the module costs CLI start-up time.
      const { default: pidusage } = await import('pidusage');
      await Promise.all(
        pids.map(async (pid) => {
          try {
            const s = await pidusage(pid);
            processes.push({ pid, cpuPercent: s.cpu, memoryBytes: s.memory, elapsedMs: s.elapsed });
          } catch {
            // exited between listing and reading
          }
        }),
      );
      return { cgroup: finished ? {} : cg.usage(), processes };
    },
  });
  return sandbox as Sandbox;
}

export type { SandboxOptions } from './limits.js';
