// One interface over the ways a host can hold a sandbox's process tree:
//   cgroup-v2  pure unified hierarchy (limits, kill and events in one tree)
//   cgroup-v1  v1 controllers for limits; on a hybrid host the controller-less cgroup2 tree
//              tracks the tree and kills it with cgroup.kill, else the v1 freezer does
//   none       no writable cgroup: the trampoline applies rlimits, kill goes to the process
//              group (setsid escapees are NOT contained)
// systemd-run lives in systemd-run.ts. Every cgroup captrap creates is named
// <base>/<ownerPid>.<ownerStartTime>.<seq> in each hierarchy, so a later captrap can tell its
// own stale cgroups (owner no longer alive) from live ones and from anything else on the host.
import { spawnSync } from 'node:child_process';
import { readdirSync, rmdirSync, existsSync } from 'node:fs';
import {
  ensureDir, freezerKill, killIfMember, killSubtreeMembers, mkdirOwned, pollUntil, readKeyed, readNumber, readPids, readText,
  rmdirTrees, subtreeDeepestFirst, subtreePids, unifiedFreezeKill, waitUnifiedEmpty, write,
} from './cgroupfs.js';
import { CgroupError } from './errors.js';
import { which, type HostInfo, type V1Controller } from './host.js';
import type { BackendName, Limits } from './limits.js';
import { isSameProcess, listPids, processRef, readStat } from './proc.js';
import { sliceFor, systemdRunBackend } from './systemd-run.js';

export { readKeyed, waitUnifiedEmpty } from './cgroupfs.js';

export interface Degradation {
  /** What is not enforced: 'memory', 'swap', 'pids', 'cpu', 'tree-kill'. */
  limit: string;
  reason: string;
  fix: string;
}

export interface Counters {
  oomKills: number;
  pidsMax: number;
  /**
   * cgroup v2 in a group only: `max` of the outermost group's pids.events. v2 counts a refused
   * fork in the cgroup whose limit was hit (and its ancestors), not in the forking leaf, so a
   * fork refused by a group's limit never shows in the leaf's own counter (see sandbox.ts).
   */
  groupPidsMax?: number;
}

export interface CgroupUsage {
  memoryCurrentBytes?: number;
  memoryPeakBytes?: number;
  cpuUsageUs?: number;
}

/** The cgroup(s) of one sandbox, already created with its limits set. */
export interface SandboxCgroup {
  readonly backend: BackendName;
  readonly name: string;
  /** Directories created, one per hierarchy. */
  readonly dirs: readonly string[];
  /** cgroup.procs files the trampoline writes its own pid to before exec. */
  readonly joinFiles: readonly string[];
  /** How the whole tree is killed, for results and doctor. */
  readonly killMechanism: string;
  counters(): Counters;
  usage(): CgroupUsage;
  /** Pids currently in the sandbox. */
  pids(): number[];
  populated(): boolean;
  /** SIGKILL every process in the sandbox. */
  killAll(): void;
  /** Resolves true once the sandbox is empty, false if `timeoutMs` passed first. */
  waitEmpty(timeoutMs: number): Promise<boolean>;
  /** rmdir every directory; throws CgroupError if one is still busy. */
  remove(): void;
  /**
   * Writes `limits` to a cgroup that was created without any (a warm launcher's, see pool.ts),
   * exactly as create() would have; throws if one of them cannot be set here.
   */
  setLimits?(limits: Limits): void;
}

/** Where a cgroup is created when it is not directly under `<base>`: inside a group. */
export interface CgroupParent {
  /** The group's path below every hierarchy root: `<base>/<group>[/<group>...]`. */
  readonly rel: string;
  /** The hierarchies the group exists in (v1 controller names, '' for the cgroup2 tree); a child joins exactly these. */
  readonly keys: readonly string[];
  /** The tightest cpu limit from the group up: v1 refuses (EINVAL) a child quota above an ancestor's. */
  readonly cpuCeiling?: number;
}

/** A group's cgroup(s): limits for everything below it, never a process of its own. */
export interface GroupCgroup extends Omit<SandboxCgroup, 'joinFiles' | 'counters'> {
  /** What a sandbox or group created inside this one is placed under. */
  readonly placement: CgroupParent;
  /** Pids anywhere below the group. */
  pids(): number[];
  /** SIGKILL every process below the group, at any depth. */
  killAll(): void;
  /** rmdir the group and any empty cgroups left below it, deepest first; CgroupError if busy. */
  remove(): void;
}

export interface CgroupBackend {
  readonly name: BackendName;
  /** The limits this backend cannot enforce here (empty: all of them hold). Creates nothing. */
  check(limits: Limits): Degradation[];
  create(base: string, name: string, limits: Limits, leaderPgid?: () => number | undefined, parent?: CgroupParent): SandboxCgroup;
  createGroup(base: string, name: string, limits: Limits, parent?: CgroupParent): GroupCgroup;
}

// ---------------------------------------------------------------- enabling controllers (v2)

/**
 * Pids of helper processes this captrap started that live in its own cgroup (the owner
 * watchdog): they move with captrap into its leaf (see enableSubtreeControllers).
 */
const ownHelpers = new Set<number>();
export function registerOwnHelper(pid: number): void {
  ownHelpers.add(pid);
}
export function unregisterOwnHelper(pid: number): void {
  ownHelpers.delete(pid);
}

/** The leaf captrap moves itself into when it must delegate controllers from its own cgroup. */
export const SELF_LEAF = 'captrap-sidecar';

/** This process's cgroup2 path relative to the cgroup2 mount (the `0::` line of /proc/self/cgroup). */
function ownUnifiedRel(): string | undefined {
  const line = readText('/proc/self/cgroup')?.split('\n').find((l) => l.startsWith('0::'));
  return line === undefined ? undefined : line.slice(3);
}

/** This process's cgroup2 directory under the cgroup2 mount `mount`. */
function ownUnifiedDir(mount: string): string | undefined {
  const rel = ownUnifiedRel();
  if (rel === undefined) return undefined;
  return rel === '/' ? mount : `${mount}${rel}`;
}

let homeCache: { mount: string; home: string; why: string } | undefined;

/**
 * The cgroup2 directory captrap's bases (`<home>/<base>`) live in. Normally the root of the
 * cgroup2 tree captrap sees: the real root, or a container's cgroup namespace root. Under
 * systemd, a unit with Delegate=yes owns its cgroup and nothing above it: systemd manages the
 * root's children, so a captrap started as such a service (without a cgroup namespace of its
 * own) keeps everything below its unit's cgroup, and moves itself into a leaf there before it
 * enables controllers (see enableSubtreeControllers). The answer is fixed for the life of the
 * process (captrap's later move into its leaf does not change it). Anywhere else (a login
 * session's scope, a service without Delegate=yes) captrap may not create cgroups below its own,
 * so the root is used, as before.
 */
export function unifiedHome(host: HostInfo): string | undefined {
  return unifiedHomeInfo(host)?.home;
}

/** unifiedHome, with why it is there (doctor prints it). */
export function unifiedHomeInfo(host: HostInfo): { home: string; why: string } | undefined {
  const mount = host.unifiedRoot;
  if (mount === undefined) return undefined;
  if (homeCache?.mount === mount) return homeCache;
  let home = mount;
  let why = 'the root of the cgroup2 tree captrap sees';
  let rel = ownUnifiedRel();
  if (rel !== undefined && rel.endsWith(`/${SELF_LEAF}`)) rel = rel.slice(0, -SELF_LEAF.length - 1) || '/';
  if (host.layout === 'v2' && host.systemdManager && rel !== undefined && rel !== '/') {
    const d = delegatedBySystemd(rel);
    if (d.delegated) {
      home = `${mount}${rel}`;
      why = `systemd delegates ${d.unit} (Delegate=yes) to captrap`;
    } else {
      why = `captrap's cgroup ${rel} is not delegated to it (${d.why}): the root of the cgroup2 tree`;
    }
  }
  homeCache = { mount, home, why };
  return homeCache;
}

/** Whether the systemd unit owning cgroup `rel` (its innermost .service or .scope) has Delegate=yes. */
function delegatedBySystemd(rel: string): { delegated: boolean; unit?: string; why: string } {
  const unit = rel.split('/').reverse().find((c) => /^[A-Za-z0-9:_.\\@-]+\.(service|scope)$/.test(c));
  if (unit === undefined) return { delegated: false, why: 'no .service or .scope unit owns it' };
  const systemctl = which('systemctl', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin');
  if (systemctl === undefined) return { delegated: false, unit, why: 'systemctl is not installed' };
  // Asked once per process; a busy manager may take a while to answer.
  const r = spawnSync(systemctl, ['show', '--property=Delegate', '--value', '--', unit], { encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status !== 0) return { delegated: false, unit, why: `systemctl show ${unit} failed: ${r.error?.message ?? r.stderr?.trim() ?? `exit ${r.status}`}` };
  const v = r.stdout.trim();
  return v === 'yes' ? { delegated: true, unit, why: 'Delegate=yes' } : { delegated: false, unit, why: `${unit} has Delegate=${v || 'no'}` };
}

/**
 * Writes `+c ...` for `ctrls` to `<dir>/cgroup.subtree_control` in the cgroup2 tree at `root`.
 *
 * cgroup v2's "no internal processes" rule: a non-root cgroup that enables controllers for its
 * children may hold no process itself (EBUSY otherwise). The real root is exempt, but a
 * container's cgroup namespace root is not: there captrap typically runs IN the cgroup it has to
 * delegate from (Docker/Kubernetes put the container's processes in the namespace root). So when
 * `dir` is captrap's own cgroup and not the real root (only non-root cgroups have cgroup.type),
 * captrap first moves itself (all threads: a cgroup.procs write moves the whole thread group)
 * and its own helpers (the owner watchdog) into the leaf `<dir>/captrap-sidecar`. Any other
 * process in `dir` is not captrap's to move: then this fails closed, naming them and the fix.
 */
export function enableSubtreeControllers(mount: string, dir: string, ctrls: readonly string[]): void {
  const value = ctrls.map((c) => `+${c}`).join(' ');
  const file = `${dir}/cgroup.subtree_control`;
  const rule = `cgroup v2 allows no process in a non-root cgroup that enables controllers for its children ("no internal processes")`;
  const own = ownUnifiedDir(mount);
  if (own === dir && existsSync(`${dir}/cgroup.type`)) {
    const mine = new Set([process.pid, ...ownHelpers]);
    const others = readPids(dir).filter((p) => !mine.has(p));
    if (others.length > 0) {
      throw new CgroupError(
        `cannot write '${value}' to ${file}: captrap runs in ${dir} together with processes that are not captrap's (pids ${others.join(' ')}), and ${rule}; ` +
          `fix: move those processes into a leaf cgroup (e.g. mkdir ${dir}/init; echo <pid> > ${dir}/init/cgroup.procs) or start captrap in a leaf cgroup of its own`,
        { path: file, value, others },
      );
    }
    const leaf = `${dir}/${SELF_LEAF}`;
    try {
      ensureDir(leaf);
      // captrap first: if this is refused nothing has moved.
      for (const pid of [process.pid, ...ownHelpers].filter((p) => readPids(dir).includes(p))) write(`${leaf}/cgroup.procs`, String(pid));
    } catch (err) {
      throw new CgroupError(
        `cannot write '${value}' to ${file}: captrap runs in ${dir} and ${rule}, but captrap cannot move itself into the leaf ${leaf}: ${(err as Error).message}; ` +
          `fix: start captrap in a leaf cgroup below the delegated one, or give it write access to ${dir}`,
        { path: file, value, leaf },
        err,
      );
    }
  }
  try {
    write(file, value);
  } catch (err) {
    if ((err as { cause?: NodeJS.ErrnoException }).cause?.code !== 'EBUSY') throw err;
    const pids = readPids(dir);
    throw new CgroupError(
      `cannot write '${value}' to ${file}: EBUSY: ${dir} holds processes (pids ${pids.join(' ') || 'none listed'}) and ${rule}; fix: move them into a leaf cgroup below ${dir}`,
      { path: file, value, pids },
      err,
    );
  }
}

const minCpu = (a: number | undefined, b: number | undefined) => (a === undefined ? b : b === undefined ? a : Math.min(a, b));

/** cgroup2 CPU time of a cgroup and everything below it (rstat: present even without the cpu controller). */
const unifiedCpuUs = (dir: string) => readKeyed(`${dir}/cpu.stat`, 'usage_usec');

// ---------------------------------------------------------------- cgroup v2

export function cgroupV2Backend(host: HostInfo, root = unifiedHome(host)): CgroupBackend {
  const mount = host.unifiedRoot;
  const controllers = new Set(root === host.unifiedRoot ? host.unifiedControllers : readText(`${root}/cgroup.controllers`)?.trim().split(/\s+/) ?? []);
  const fix = `use a host with cgroup v2 controllers delegated to captrap (e.g. echo '+memory +pids +cpu' > ${root ?? '/sys/fs/cgroup'}/cgroup.subtree_control), or run as root`;
  const wanted = ['memory', 'pids', 'cpu'].filter((c) => controllers.has(c));
  const killMechanism = host.cgroupKill ? 'cgroup.kill (cgroup v2)' : 'freezer loop (cgroup v2 cgroup.freeze)';

  /** The directory a new cgroup goes in: a group's, or <root>/<base> with the controllers delegated to it. */
  const parentDir = (base: string, parent: CgroupParent | undefined): string => {
    if (!root) throw new CgroupError('no cgroup2 tree is mounted');
    // Inside a group nothing is created on the way: a removed group must fail the mkdir below,
    // never be silently re-created without its limits.
    if (parent) return `${root}/${parent.rel}`;
    const baseDir = `${root}/${base}`;
    ensureDir(baseDir);
    if (wanted.length > 0) {
      // A controller reaches <base> only if the root enables it for its children.
      const atBase = new Set(readText(`${baseDir}/cgroup.controllers`)?.trim().split(/\s+/) ?? []);
      const notDelegated = wanted.filter((c) => !atBase.has(c));
      // In a container that root is the cgroup namespace's root, usually holding captrap itself:
      // enableSubtreeControllers moves captrap into a leaf first (see there).
      if (notDelegated.length > 0) enableSubtreeControllers(mount ?? root, root, notDelegated);
      const enabled = new Set(readText(`${baseDir}/cgroup.subtree_control`)?.trim().split(/\s+/) ?? []);
      const missing = wanted.filter((c) => !enabled.has(c));
      if (missing.length > 0) enableSubtreeControllers(mount ?? root, baseDir, missing);
    }
    return baseDir;
  };

  const writeLimits = (dir: string, limits: Limits, kind: 'sandbox' | 'group'): void => {
    if (limits.memoryBytes !== undefined && controllers.has('memory')) {
      write(`${dir}/memory.max`, String(limits.memoryBytes));
      if (existsSync(`${dir}/memory.swap.max`)) write(`${dir}/memory.swap.max`, String(limits.swapBytes));
      // An OOM kill takes the whole sandbox, not one arbitrary member of it. Not on a group:
      // there the kernel picks the highest oom.group cgroup up to the one over its limit, so a
      // group's OOM takes one whole sandbox, not every sandbox of the agent.
      if (kind === 'sandbox') write(`${dir}/memory.oom.group`, '1');
    }
    if (limits.pids !== undefined && controllers.has('pids')) write(`${dir}/pids.max`, String(limits.pids));
    if (limits.cpu !== undefined && controllers.has('cpu')) write(`${dir}/cpu.max`, `${Math.round(limits.cpu * 100_000)} 100000`);
  };

  const makeDir = (dir: string, limits: Limits, kind: 'sandbox' | 'group'): void => {
    mkdirOwned(dir);
    try {
      writeLimits(dir, limits, kind);
      // "No internal processes": a cgroup with controllers enabled for its children may hold no
      // process. A group never does (its agent runs in a sandbox inside it), so this is allowed,
      // and it must happen before the first sandbox is created below it.
      if (kind === 'group' && wanted.length > 0) write(`${dir}/cgroup.subtree_control`, wanted.map((c) => `+${c}`).join(' '));
    } catch (err) {
      rmdirTrees([dir]);
      throw err;
    }
  };

  // Membership, populated, cgroup.kill, cgroup.freeze, memory and cpu.stat are all hierarchical
  // in cgroup2: the same code serves a sandbox and a whole group.
  const handle = (dir: string) => ({
    usage: () => {
      const u: CgroupUsage = {};
      const cur = readNumber(`${dir}/memory.current`);
      const peak = readNumber(`${dir}/memory.peak`);
      const cpu = unifiedCpuUs(dir);
      if (cur !== undefined) u.memoryCurrentBytes = cur;
      if (peak !== undefined) u.memoryPeakBytes = peak;
      if (cpu !== undefined) u.cpuUsageUs = cpu;
      return u;
    },
    populated: () => readKeyed(`${dir}/cgroup.events`, 'populated') === 1,
    killAll: () => {
      if (host.cgroupKill) write(`${dir}/cgroup.kill`, '1');
      else unifiedFreezeKill(dir, mount ?? root!);
    },
    waitEmpty: (ms: number) => waitUnifiedEmpty(dir, ms),
    remove: () => rmdirTrees([dir]),
  });

  return {
    name: 'cgroup-v2',
    check(limits) {
      const out: Degradation[] = [];
      if (!root) return [{ limit: 'tree-kill', reason: 'no cgroup2 tree is mounted', fix }];
      if (!host.cgroupKill) out.push({ limit: 'tree-kill', reason: 'cgroup.kill is missing (Linux < 5.14)', fix: 'upgrade the kernel to >= 5.14' });
      const need: [string, string, boolean][] = [
        ['memory', 'memory', limits.memoryBytes !== undefined],
        ['swap', 'memory', limits.memoryBytes !== undefined],
        ['pids', 'pids', limits.pids !== undefined],
        ['cpu', 'cpu', limits.cpu !== undefined],
      ];
      for (const [limit, ctrl, wanted] of need) {
        if (wanted && !controllers.has(ctrl)) out.push({ limit, reason: `the '${ctrl}' controller is not available in ${root}`, fix });
      }
      return out;
    },
    create(base, name, limits, _leaderPgid, parent) {
      const dir = `${parentDir(base, parent)}/${name}`;
      makeDir(dir, limits, 'sandbox');
      // The outermost group counts every fork refused anywhere inside it (see Counters).
      const topGroup = parent ? `${root}/${parent.rel.split('/').slice(0, 2).join('/')}` : undefined;
      return {
        backend: 'cgroup-v2',
        name,
        dirs: [dir],
        joinFiles: [`${dir}/cgroup.procs`],
        killMechanism,
        ...handle(dir),
        counters: () => ({
          // memory.events oom_kill is charged to the victim's cgroup and its ancestors, so the
          // leaf counts its own members killed by its limit or by any group's limit.
          oomKills: readKeyed(`${dir}/memory.events`, 'oom_kill') ?? 0,
          pidsMax: readKeyed(`${dir}/pids.events`, 'max') ?? 0,
          ...(topGroup ? { groupPidsMax: readKeyed(`${topGroup}/pids.events`, 'max') ?? 0 } : {}),
        }),
        pids: () => readPids(dir),
        setLimits: (l) => writeLimits(dir, l, 'sandbox'),
      };
    },
    createGroup(base, name, limits, parent) {
      const dir = `${parentDir(base, parent)}/${name}`;
      makeDir(dir, limits, 'group');
      const ceiling = minCpu(parent?.cpuCeiling, limits.cpu);
      return {
        backend: 'cgroup-v2',
        name,
        dirs: [dir],
        killMechanism,
        placement: { rel: `${parent?.rel ?? base}/${name}`, keys: [''], ...(ceiling !== undefined ? { cpuCeiling: ceiling } : {}) },
        ...handle(dir),
        pids: () => subtreePids(dir),
      };
    },
  };
}

// ---------------------------------------------------------------- cgroup v1 (+ hybrid tracking)

type V1Key = V1Controller | 'unified';

export function cgroupV1Backend(host: HostInfo): CgroupBackend {
  const useUnified = host.layout === 'hybrid' && host.unifiedRoot !== undefined && host.cgroupKill;
  const fixFor = (ctrl: string) =>
    `mount the v1 '${ctrl}' controller writable for captrap (mount -t cgroup -o ${ctrl} cgroup /sys/fs/cgroup/${ctrl}) or run captrap as root`;
  const rootOf = (k: V1Key) => (k === 'unified' ? host.unifiedRoot! : host.v1[k]!);
  const keyOf = (k: V1Key) => (k === 'unified' ? '' : k);
  const killMechanism = useUnified ? 'cgroup.kill (hybrid: controller-less cgroup2 tree)' : 'freezer loop (cgroup v1 freezer)';

  /**
   * Which hierarchies: memory and pids always (usage, OOM and fork counters); cpu for a
   * sandbox only for a limit, for a group always (a sandbox inside must join every hierarchy
   * its group is in, or it would escape the group's limit there); cpuacct only when the
   * unified tree cannot report CPU time; freezer only when cgroup.kill is unavailable. Fewer
   * hierarchies = cheaper spawn.
   */
  const hierarchies = (limits: Limits, kind: 'sandbox' | 'group', parent: CgroupParent | undefined): V1Key[] => {
    if (parent) return parent.keys.map((k) => (k === '' ? 'unified' : (k as V1Controller)));
    const keys: V1Key[] = [];
    if (host.v1.memory) keys.push('memory');
    if (host.v1.pids) keys.push('pids');
    if ((kind === 'group' || limits.cpu !== undefined) && host.v1.cpu) keys.push('cpu');
    if (!useUnified && host.v1.cpuacct) keys.push('cpuacct');
    if (!useUnified && host.v1.freezer) keys.push('freezer');
    if (useUnified) keys.push('unified');
    return keys;
  };

  const writeLimits = (dirOf: Partial<Record<V1Key, string>>, limits: Limits, parent: CgroupParent | undefined): void => {
    if (limits.memoryBytes !== undefined && dirOf.memory) {
      write(`${dirOf.memory}/memory.limit_in_bytes`, String(limits.memoryBytes));
      if (host.v1Memsw) write(`${dirOf.memory}/memory.memsw.limit_in_bytes`, String(limits.memoryBytes + limits.swapBytes));
    }
    if (limits.pids !== undefined && dirOf.pids) write(`${dirOf.pids}/pids.max`, String(limits.pids));
    // v1 refuses a quota above an ancestor's (EINVAL) where v2 takes the smaller: clamp, the
    // effective limit is the same.
    const cpu = limits.cpu === undefined ? undefined : minCpu(limits.cpu, parent?.cpuCeiling);
    if (cpu !== undefined && dirOf.cpu) {
      write(`${dirOf.cpu}/cpu.cfs_period_us`, '100000');
      write(`${dirOf.cpu}/cpu.cfs_quota_us`, String(Math.round(cpu * 100_000)));
    }
  };

  const makeDirs = (base: string, name: string, limits: Limits, keys: V1Key[], parent: CgroupParent | undefined) => {
    const dirOf: Partial<Record<V1Key, string>> = {};
    const created: string[] = [];
    try {
      for (const k of keys) {
        // Inside a group nothing is created on the way (a removed group must fail the mkdir).
        if (!parent) ensureDir(`${rootOf(k)}/${base}`);
        const d = `${rootOf(k)}/${parent?.rel ?? base}/${name}`;
        mkdirOwned(d);
        created.push(d);
        dirOf[k] = d;
      }
      writeLimits(dirOf, limits, parent);
    } catch (err) {
      rmdirTrees(created);
      throw err;
    }
    // The tree is tracked where kill works: the unified cgroup, else the freezer, else memory/pids.
    const track = dirOf.unified ?? dirOf.freezer ?? dirOf.pids ?? dirOf.memory ?? created[0]!;
    const trackKey: V1Key = dirOf.unified ? 'unified' : dirOf.freezer ? 'freezer' : dirOf.pids ? 'pids' : 'memory';
    const usage = (): CgroupUsage => {
      // usage_in_bytes, max_usage_in_bytes and cpuacct.usage count the whole subtree (v1
      // memory is always hierarchical since 5.x; cpuacct always was).
      const u: CgroupUsage = {};
      if (dirOf.memory) {
        const cur = readNumber(`${dirOf.memory}/memory.usage_in_bytes`);
        const peak = readNumber(`${dirOf.memory}/memory.max_usage_in_bytes`);
        if (cur !== undefined) u.memoryCurrentBytes = cur;
        if (peak !== undefined) u.memoryPeakBytes = peak;
      }
      const cpu = dirOf.unified ? unifiedCpuUs(dirOf.unified) : dirOf.cpuacct ? (readNumber(`${dirOf.cpuacct}/cpuacct.usage`) ?? 0) / 1000 : undefined;
      if (cpu !== undefined) u.cpuUsageUs = cpu;
      return u;
    };
    return { dirOf, created, track, trackKey, usage };
  };

  return {
    name: 'cgroup-v1',
    check(limits) {
      const out: Degradation[] = [];
      if (limits.memoryBytes !== undefined && !host.v1.memory) out.push({ limit: 'memory', reason: "no writable v1 'memory' controller", fix: fixFor('memory') });
      if (limits.memoryBytes !== undefined && host.v1.memory && !host.v1Memsw && swapInUse()) {
        out.push({ limit: 'swap', reason: 'memory.memsw.* is missing (swap accounting off), so swap use cannot be capped', fix: 'boot with swapaccount=1, or disable swap' });
      }
      if (limits.pids !== undefined && !host.v1.pids) out.push({ limit: 'pids', reason: "no writable v1 'pids' controller", fix: fixFor('pids') });
      if (limits.cpu !== undefined && !host.v1.cpu) out.push({ limit: 'cpu', reason: "no writable v1 'cpu' controller", fix: fixFor('cpu') });
      if (!useUnified && !host.v1.freezer) {
        out.push({ limit: 'tree-kill', reason: 'neither cgroup.kill (cgroup2) nor a writable v1 freezer is available', fix: fixFor('freezer') });
      }
      return out;
    },
    create(base, name, limits, _leaderPgid, parent) {
      const { dirOf, created, track, trackKey, usage } = makeDirs(base, name, limits, hierarchies(limits, 'sandbox', parent), parent);
      const empty = () => readPids(track).length === 0;
      return {
        backend: 'cgroup-v1',
        name,
        dirs: created,
        joinFiles: created.map((d) => `${d}/cgroup.procs`),
        killMechanism,
        // v1 counts both in the sandbox's own cgroup even when a group's limit was the one hit
        // (checked on this kernel): memory.oom_control oom_kill is charged to the victim's
        // cgroup only (v1 does not propagate memory events), and pids.events max to the cgroup
        // that tried to fork, not the one over its limit.
        counters: () => ({
          oomKills: dirOf.memory ? (readKeyed(`${dirOf.memory}/memory.oom_control`, 'oom_kill') ?? 0) : 0,
          pidsMax: dirOf.pids ? (readKeyed(`${dirOf.pids}/pids.events`, 'max') ?? 0) : 0,
        }),
        usage,
        pids: () => readPids(track),
        setLimits: (l) => {
          // A sandbox is in the cpu hierarchy only when created with a cpu limit.
          if (l.cpu !== undefined && !dirOf.cpu) throw new CgroupError(`sandbox cgroup ${name} was created without the v1 cpu hierarchy`, { name });
          writeLimits(dirOf, l, parent);
        },
        populated: () => (dirOf.unified ? readKeyed(`${dirOf.unified}/cgroup.events`, 'populated') === 1 : !empty()),
        killAll: () => {
          if (dirOf.unified) write(`${dirOf.unified}/cgroup.kill`, '1');
          else if (dirOf.freezer) void freezerKill(dirOf.freezer, host.v1.freezer!);
          else for (const pid of readPids(track)) killIfMember(pid, track, trackKey, rootOf(trackKey));
        },
        waitEmpty: async (ms) => {
          if (dirOf.unified) return waitUnifiedEmpty(dirOf.unified, ms);
          const ok = await pollUntil(empty, ms);
          // Every v1 hierarchy must be empty before rmdir; they drain at the same moment in practice.
          return ok && (await pollUntil(() => created.every((d) => readPids(d).length === 0), 200));
        },
        remove: () => rmdirTrees(created),
      };
    },
    createGroup(base, name, limits, parent) {
      const keys = hierarchies(limits, 'group', parent);
      const { dirOf, created, track, trackKey, usage } = makeDirs(base, name, limits, keys, parent);
      const ceiling = minCpu(parent?.cpuCeiling, limits.cpu);
      const subtreeEmpty = () => created.every((d) => subtreePids(d).length === 0);
      return {
        backend: 'cgroup-v1',
        name,
        dirs: created,
        killMechanism,
        placement: { rel: `${parent?.rel ?? base}/${name}`, keys: keys.map(keyOf), ...(ceiling !== undefined ? { cpuCeiling: ceiling } : {}) },
        usage,
        pids: () => subtreePids(track),
        populated: () => (dirOf.unified ? readKeyed(`${dirOf.unified}/cgroup.events`, 'populated') === 1 : subtreePids(track).length > 0),
        killAll: () => {
          // cgroup.kill and the freezer both act on the whole subtree; the checked per-pid kill
          // (no tree mechanism at all) walks it.
          if (dirOf.unified) write(`${dirOf.unified}/cgroup.kill`, '1');
          else if (dirOf.freezer) void freezerKill(dirOf.freezer, host.v1.freezer!);
          else killSubtreeMembers(track, keyOf(trackKey), rootOf(trackKey));
        },
        waitEmpty: async (ms) => {
          if (dirOf.unified) return (await waitUnifiedEmpty(dirOf.unified, ms)) && (await pollUntil(subtreeEmpty, 200));
          return pollUntil(subtreeEmpty, ms);
        },
        remove: () => rmdirTrees(created),
      };
    },
  };
}

function swapInUse(): boolean {
  const t = readText('/proc/swaps');
  return t !== undefined && t.trim().split('\n').length > 1;
}

// ---------------------------------------------------------------- no cgroup: rlimits + process group

export function noCgroupBackend(host: HostInfo): CgroupBackend {
  const fix = 'give captrap a writable cgroup hierarchy (cgroup v2, or v1 memory/pids/cpu/freezer), or run it as root';
  return {
    name: 'none',
    check(limits) {
      const out: Degradation[] = [
        { limit: 'tree-kill', reason: 'no cgroup: the tree is killed by process group, so a setsid/double-fork escapee is not contained', fix },
      ];
      if (limits.memoryBytes !== undefined) {
        out.push({ limit: 'memory', reason: host.tools.prlimit ? 'only RLIMIT_AS per process (address space, not resident memory of the tree)' : 'no cgroup and no prlimit', fix });
      }
      if (limits.pids !== undefined) out.push({ limit: 'pids', reason: 'only RLIMIT_NPROC (per user, not per sandbox; ignored for root)', fix });
      if (limits.cpu !== undefined) out.push({ limit: 'cpu', reason: 'a CPU share cannot be enforced without the cpu controller', fix });
      return out;
    },
    create(_base, name, _limits, leaderPgid) {
      const members = () => {
        const pg = leaderPgid?.();
        if (pg === undefined) return [];
        return listPids().filter((p) => {
          const st = readStat(p);
          return st !== undefined && st.pgrp === pg && st.state !== 'Z';
        });
      };
      return {
        backend: 'none',
        name,
        dirs: [],
        joinFiles: [],
        killMechanism: 'process group SIGKILL (setsid escapees are not contained)',
        counters: () => ({ oomKills: 0, pidsMax: 0 }),
        usage: () => ({}),
        pids: members,
        populated: () => members().length > 0,
        killAll: () => {
          const pg = leaderPgid?.();
          if (pg === undefined) return;
          try {
            process.kill(-pg, 'SIGKILL');
          } catch {
            // group already empty
          }
        },
        waitEmpty: (ms) => pollUntil(() => members().length === 0, ms, 5),
        remove: () => undefined,
      };
    },
    // Without cgroups a group is only a name: its limits are reported as degraded by check()
    // and its sandboxes are each their own process group.
    createGroup(base, name, _limits, parent) {
      return {
        backend: 'none',
        name,
        dirs: [],
        killMechanism: 'none (no cgroup: each sandbox is killed by its own process group)',
        placement: { rel: `${parent?.rel ?? base}/${name}`, keys: [] },
        usage: () => ({}),
        pids: () => [],
        populated: () => false,
        killAll: () => undefined,
        waitEmpty: async () => true,
        remove: () => undefined,
      };
    },
  };
}

// ---------------------------------------------------------------- names and stale cleanup

let seq = 0;
let selfRef: { pid: number; startTime: number } | undefined;

/** `<ownerPid>.<ownerStartTime>.`: what every sandbox cgroup name of this process starts with. */
export function ownerPrefix(): string {
  selfRef ??= processRef(process.pid);
  return `${process.pid}.${selfRef?.startTime ?? 0}.`;
}

/** A fresh sandbox cgroup name: <ownerPid>.<ownerStartTime>.<seq>. */
export function newCgroupName(): string {
  return `${ownerPrefix()}${++seq}`;
}

export function parseCgroupName(name: string): { pid: number; startTime: number; seq: number } | undefined {
  const m = /^(\d+)\.(\d+)\.(\d+)$/.exec(name);
  return m ? { pid: Number(m[1]), startTime: Number(m[2]), seq: Number(m[3]) } : undefined;
}

/**
 * Every hierarchy where captrap may have created `<root>/<base>`: `root` is the directory the
 * bases live in (for the cgroup2 tree, unifiedHome), `mount` the hierarchy's mount point (what
 * /proc/<pid>/cgroup paths are relative to).
 */
export function hierarchyRoots(host: HostInfo): { key: string; root: string; mount: string }[] {
  const out: { key: string; root: string; mount: string }[] = [];
  for (const [c, root] of Object.entries(host.v1)) out.push({ key: c, root, mount: root });
  const home = unifiedHome(host);
  if (host.unifiedRoot && home) out.push({ key: '', root: home, mount: host.unifiedRoot });
  return out;
}

export interface StaleCleanupResult {
  removed: string[];
  killed: number;
  failed: { dir: string; error: string }[];
}

/**
 * Finds captrap cgroups under `base` whose owner captrap process is gone, kills whatever is
 * still inside them and removes them. Cgroups of a live owner are left alone. Call this when
 * captrap starts (run, serve).
 */
export async function cleanupStaleCgroups(host: HostInfo, base: string): Promise<StaleCleanupResult> {
  // Only ever look inside a captrap base: this function kills what it finds.
  if (!/^captrap[A-Za-z0-9_.-]*$/.test(base)) throw new CgroupError(`'${base}' is not a captrap cgroup base name`, { base });
  const result: StaleCleanupResult = { removed: [], killed: 0, failed: [] };
  const stale = new Map<string, { key: string; root: string; mount: string; dir: string }[]>();
  for (const h of hierarchyRoots(host)) {
    let names: string[];
    try {
      names = readdirSync(`${h.root}/${base}`);
    } catch {
      continue;
    }
    for (const n of names) {
      const owner = parseCgroupName(n);
      if (!owner || isSameProcess(owner)) continue;
      const dir = `${h.root}/${base}/${n}`;
      if (!existsSync(`${dir}/cgroup.procs`)) continue;
      const list = stale.get(n) ?? [];
      list.push({ ...h, dir });
      stale.set(n, list);
    }
  }
  // A stale name may be a group: its sandboxes and sub-groups are directories below it, so
  // every step works on the subtree (cgroup.kill and the freezer are hierarchical already).
  for (const [, dirs] of stale) {
    const unified = dirs.find((d) => d.key === '');
    const freezer = dirs.find((d) => d.key === 'freezer');
    const before = new Set(dirs.flatMap((d) => subtreePids(d.dir)));
    result.killed += before.size;
    if (unified && host.cgroupKill) {
      if (readKeyed(`${unified.dir}/cgroup.events`, 'populated') === 1) write(`${unified.dir}/cgroup.kill`, '1');
      await waitUnifiedEmpty(unified.dir, 2000);
    } else if (freezer) {
      await freezerKill(freezer.dir, freezer.mount);
    }
    // Whatever is left (a hierarchy not covered by the kill above): per-pid, checked kill.
    for (const d of dirs) killSubtreeMembers(d.dir, d.key, d.mount);
    await pollUntil(() => dirs.every((d) => subtreePids(d.dir).length === 0), 2000);
    try {
      rmdirTrees(dirs.map((d) => d.dir));
      result.removed.push(...dirs.map((d) => d.dir));
    } catch (err) {
      result.failed.push({ dir: dirs.map((d) => d.dir).join(', '), error: (err as Error).message });
    }
  }
  await cleanupStaleScopes(host, base, result);
  return result;
}

/** A dead owner's systemd-run scopes (`<slice>/<owner>.<seq>.scope`): killed; systemd collects them, else they are removed. */
async function cleanupStaleScopes(host: HostInfo, base: string, result: StaleCleanupResult): Promise<void> {
  if (!host.systemdManager || host.layout !== 'v2' || !host.unifiedRoot) return;
  const slice = `${host.unifiedRoot}/${sliceFor(base)}`;
  let names: string[];
  try {
    names = readdirSync(slice);
  } catch {
    return;
  }
  for (const n of names) {
    const owner = n.endsWith('.scope') ? parseCgroupName(n.slice(0, -'.scope'.length)) : undefined;
    if (!owner || isSameProcess(owner)) continue;
    const dir = `${slice}/${n}`;
    result.killed += subtreePids(dir).length;
    try {
      if (readKeyed(`${dir}/cgroup.events`, 'populated') === 1) write(`${dir}/cgroup.kill`, '1');
      await waitUnifiedEmpty(dir, 2000);
      rmdirTrees([dir]);
      result.removed.push(dir);
    } catch (err) {
      result.failed.push({ dir, error: (err as Error).message });
    }
  }
}

/**
 * Removes `<root>/<base>` in every hierarchy (tests, uninstall). Empty cgroups left below it by
 * a dead owner (a group's leftover sandbox directories, say) are removed deepest first; a live
 * owner's cgroups and anything populated stay, and so does the base then. Kills nothing (that
 * is cleanupStaleCgroups). Returns what is left.
 */
export function removeCgroupBase(host: HostInfo, base: string): string[] {
  const left: string[] = [];
  for (const h of hierarchyRoots(host)) {
    const d = `${h.root}/${base}`;
    if (!existsSync(d)) continue;
    for (const n of readdirSync(d, { withFileTypes: true })) {
      const owner = n.isDirectory() ? parseCgroupName(n.name) : undefined;
      if (!owner || isSameProcess(owner)) continue;
      for (const sub of subtreeDeepestFirst(`${d}/${n.name}`)) {
        try {
          rmdirSync(sub);
        } catch {
          // populated: left for cleanupStaleCgroups
        }
      }
    }
    try {
      rmdirSync(d);
    } catch {
      left.push(d);
    }
  }
  return left;
}

export function cgroupBackend(name: BackendName, host: HostInfo): CgroupBackend {
  switch (name) {
    case 'cgroup-v2':
      return cgroupV2Backend(host);
    case 'cgroup-v1':
      return cgroupV1Backend(host);
    case 'none':
      return noCgroupBackend(host);
    case 'systemd-run':
      return systemdRunBackend(host);
  }
}

/** The best backend this host offers, in order: cgroup v2 with controllers, v1/hybrid, systemd-run, none. */
export function autoBackend(host: HostInfo): BackendName {
  if (host.layout === 'v2' && host.unifiedControllers.length > 0) return 'cgroup-v2';
  if ((host.layout === 'hybrid' || host.layout === 'v1') && Object.keys(host.v1).length > 0) return 'cgroup-v1';
  if (host.systemdManager) return 'systemd-run';
  if (host.layout === 'v2') return 'cgroup-v2';
  return 'none';
}

