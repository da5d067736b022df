// One interface over the ways a host can hold a sandbox's process tree:
//   cgroup-v2  pure unified hierarchy (limits, kill and events in one tree)
//   cgroup-v1  v1 controllers for limits; on a hybrid host the controller-less cgroup2 tree
//              tracks the tree and kills it with cgroup.kill, else the v1 freezer does
//   none       no writable cgroup: the trampoline applies rlimits, kill goes to the process
//              group (setsid escapees are NOT contained)
// systemd-run lives in systemd-run.ts. Every cgroup captrap creates is named
// <base>/<ownerPid>.<ownerStartTime>.<seq> in each hierarchy, so a later captrap can tell its
// own stale cgroups (owner no longer alive) from live ones and from anything else on the host.
import { mkdirSync, readFileSync, readdirSync, rmdirSync, watch, writeFileSync, existsSync } from 'node:fs';
import { CgroupError, LimitUnenforceableError } from './errors.js';
import type { HostInfo, V1Controller } from './host.js';
import type { BackendName, Limits } from './limits.js';
import { cgroupsOf, isSameProcess, listPids, processRef, readStat } from './proc.js';

export interface Degradation {
  /** What is not enforced: 'memory', 'swap', 'pids', 'cpu', 'tree-kill'. */
  limit: string;
  reason: string;
  fix: string;
}

export interface Counters {
  oomKills: number;
  pidsMax: number;
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
}

export interface CgroupBackend {
  readonly name: BackendName;
  /** The limits this backend cannot enforce here (empty: all of them hold). Creates nothing. */
  check(limits: Limits): Degradation[];
  create(base: string, name: string, limits: Limits, leaderPgid?: () => number | undefined): SandboxCgroup;
}

// ---------------------------------------------------------------- small file helpers

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function readNumber(path: string): number | undefined {
  const t = readText(path);
  if (t === undefined) return undefined;
  const n = Number(t.trim());
  return Number.isFinite(n) ? n : undefined;
}

/** Value of `key` in a flat-keyed file such as memory.events or cpu.stat. */
export function readKeyed(path: string, key: string): number | undefined {
  const t = readText(path);
  if (t === undefined) return undefined;
  for (const line of t.split('\n')) {
    const [k, v] = line.split(/\s+/);
    if (k === key) return Number(v);
  }
  return undefined;
}

function write(path: string, value: string): void {
  try {
    writeFileSync(path, value);
  } catch (err) {
    throw new CgroupError(`cannot write '${value}' to ${path}: ${(err as Error).message}`, { path, value }, err);
  }
}

function readPids(dir: string): number[] {
  const t = readText(`${dir}/cgroup.procs`);
  if (t === undefined) return [];
  return t.split('\n').filter(Boolean).map(Number);
}

function mkdirOwned(dir: string): void {
  try {
    mkdirSync(dir);
  } catch (err) {
    throw new CgroupError(`cannot create cgroup ${dir}: ${(err as Error).message}`, { dir }, err);
  }
}

function ensureDir(dir: string): void {
  try {
    mkdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new CgroupError(`cannot create cgroup base ${dir}: ${(err as Error).message}`, { dir }, err);
  }
}

function rmdirAll(dirs: readonly string[]): void {
  const busy: string[] = [];
  for (const d of [...dirs].reverse()) {
    try {
      rmdirSync(d);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') busy.push(`${d} (${code})`);
    }
  }
  if (busy.length > 0) throw new CgroupError(`cannot remove cgroup(s): ${busy.join(', ')}`, { dirs: busy });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Waits for `populated 0` in a cgroup2 cgroup.events, watched with inotify, with a slow poll as a safety net. */
export function waitUnifiedEmpty(dir: string, timeoutMs: number): Promise<boolean> {
  const events = `${dir}/cgroup.events`;
  const isEmpty = () => readKeyed(events, 'populated') !== 1;
  if (isEmpty()) return Promise.resolve(true);
  return new Promise<boolean>((resolve) => {
    let done = false;
    let watcher: ReturnType<typeof watch> | undefined;
    const finish = (v: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearInterval(poll);
      watcher?.close();
      resolve(v);
    };
    const check = () => {
      if (isEmpty()) finish(true);
    };
    try {
      watcher = watch(events, check);
      watcher.on('error', () => undefined);
    } catch {
      watcher = undefined;
    }
    // Only called after a kill, so the wait is short: a 5 ms poll backs up inotify, which a
    // busy 2-core host was seen to deliver late.
    const poll = setInterval(check, watcher ? 5 : 2);
    const timer = setTimeout(() => finish(isEmpty()), timeoutMs);
    check();
  });
}

async function pollUntil(cond: () => boolean, timeoutMs: number, everyMs = 2): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() >= deadline) return cond();
    await sleep(everyMs);
  }
  return true;
}

/** SIGKILL a pid only if it is still the process we read and still in `dir` (never a recycled PID). */
function killIfMember(pid: number, dir: string, hierarchyKey: string, hierarchyRoot: string): void {
  const ref = processRef(pid);
  if (!ref) return;
  const cg = cgroupsOf(pid)?.get(hierarchyKey);
  if (cg === undefined || `${hierarchyRoot}${cg}` !== dir) return;
  if (!isSameProcess(ref)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** Freeze, SIGKILL every member, thaw, until the cgroup is empty (v1 hosts without cgroup.kill). */
async function freezerKill(freezerDir: string, freezerRoot: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (readPids(freezerDir).length > 0 && Date.now() < deadline) {
    write(`${freezerDir}/freezer.state`, 'FROZEN');
    // A frozen task cannot fork or exit, so the list read now is exact and no PID in it can be recycled.
    await pollUntil(() => readText(`${freezerDir}/freezer.state`)?.trim() === 'FROZEN', 200, 1);
    for (const pid of readPids(freezerDir)) killIfMember(pid, freezerDir, 'freezer', freezerRoot);
    write(`${freezerDir}/freezer.state`, 'THAWED');
    await pollUntil(() => readPids(freezerDir).length === 0, 50, 1);
  }
}

// ---------------------------------------------------------------- cgroup v2

export function cgroupV2Backend(host: HostInfo, root = host.unifiedRoot): CgroupBackend {
  const controllers = new Set(root === host.unifiedRoot ? host.unifiedControllers : readText(`${root}/cgroup.controllers`)?.trim().split(/\s+/) ?? []);
  const fix = `use a host with cgroup v2 controllers delegated to captrap (e.g. echo '+memory +pids +cpu' > ${root ?? '/sys/fs/cgroup'}/cgroup.subtree_control), or run as root`;
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
    create(base, name, limits) {
      if (!root) throw new CgroupError('no cgroup2 tree is mounted');
      const baseDir = `${root}/${base}`;
      ensureDir(baseDir);
      const wanted = ['memory', 'pids', 'cpu'].filter((c) => controllers.has(c));
      if (wanted.length > 0) {
        // A controller reaches <base> only if the root enables it for its children.
        const atBase = new Set(readText(`${baseDir}/cgroup.controllers`)?.trim().split(/\s+/) ?? []);
        const notDelegated = wanted.filter((c) => !atBase.has(c));
        if (notDelegated.length > 0) write(`${root}/cgroup.subtree_control`, notDelegated.map((c) => `+${c}`).join(' '));
        const enabled = new Set(readText(`${baseDir}/cgroup.subtree_control`)?.trim().split(/\s+/) ?? []);
        const missing = wanted.filter((c) => !enabled.has(c));
        if (missing.length > 0) write(`${baseDir}/cgroup.subtree_control`, missing.map((c) => `+${c}`).join(' '));
      }
      const dir = `${baseDir}/${name}`;
      mkdirOwned(dir);
      try {
        if (limits.memoryBytes !== undefined && controllers.has('memory')) {
          write(`${dir}/memory.max`, String(limits.memoryBytes));
          if (existsSync(`${dir}/memory.swap.max`)) write(`${dir}/memory.swap.max`, String(limits.swapBytes));
          // An OOM kill takes the whole sandbox, not one arbitrary member of it.
          write(`${dir}/memory.oom.group`, '1');
        }
        if (limits.pids !== undefined && controllers.has('pids')) write(`${dir}/pids.max`, String(limits.pids));
        if (limits.cpu !== undefined && controllers.has('cpu')) write(`${dir}/cpu.max`, `${Math.round(limits.cpu * 100_000)} 100000`);
      } catch (err) {
        rmdirAll([dir]);
        throw err;
      }
      return {
        backend: 'cgroup-v2',
        name,
        dirs: [dir],
        joinFiles: [`${dir}/cgroup.procs`],
        killMechanism: host.cgroupKill ? 'cgroup.kill (cgroup v2)' : 'freezer loop (cgroup v2 cgroup.freeze)',
        counters: () => ({ oomKills: readKeyed(`${dir}/memory.events`, 'oom_kill') ?? 0, pidsMax: readKeyed(`${dir}/pids.events`, 'max') ?? 0 }),
        usage: () => {
          const u: CgroupUsage = {};
          const cur = readNumber(`${dir}/memory.current`);
          const peak = readNumber(`${dir}/memory.peak`);
          const cpu = readKeyed(`${dir}/cpu.stat`, 'usage_usec');
          if (cur !== undefined) u.memoryCurrentBytes = cur;
          if (peak !== undefined) u.memoryPeakBytes = peak;
          if (cpu !== undefined) u.cpuUsageUs = cpu;
          return u;
        },
        pids: () => readPids(dir),
        populated: () => readKeyed(`${dir}/cgroup.events`, 'populated') === 1,
        killAll: () => {
          if (host.cgroupKill) write(`${dir}/cgroup.kill`, '1');
          else unifiedFreezeKill(dir, root);
        },
        waitEmpty: (ms) => waitUnifiedEmpty(dir, ms),
        remove: () => rmdirAll([dir]),
      };
    },
  };
}

/** Pre-5.14 cgroup2: freeze, SIGKILL each member, thaw (a frozen cgroup's member list is stable). */
function unifiedFreezeKill(dir: string, root: string): void {
  try {
    write(`${dir}/cgroup.freeze`, '1');
    for (const pid of readPids(dir)) killIfMember(pid, dir, '', root);
  } finally {
    write(`${dir}/cgroup.freeze`, '0');
  }
}

// ---------------------------------------------------------------- cgroup v1 (+ hybrid tracking)

export function cgroupV1Backend(host: HostInfo): CgroupBackend {
  const useUnified = host.layout === 'hybrid' && host.unifiedRoot !== undefined && host.cgroupKill;
  const fixFor = (ctrl: string) =>
    `mount the v1 '${ctrl}' controller writable for captrap (mount -t cgroup -o ${ctrl} cgroup /sys/fs/cgroup/${ctrl}) or run captrap as root`;
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
    create(base, name, limits) {
      // Which hierarchies: memory and pids always (usage, OOM and fork counters), cpu only for a
      // limit, cpuacct only when the unified tree cannot report CPU time, freezer only when
      // cgroup.kill is unavailable. Fewer hierarchies = cheaper spawn.
      const ctrls: V1Controller[] = [];
      if (host.v1.memory) ctrls.push('memory');
      if (host.v1.pids) ctrls.push('pids');
      if (limits.cpu !== undefined && host.v1.cpu) ctrls.push('cpu');
      if (!useUnified && host.v1.cpuacct) ctrls.push('cpuacct');
      if (!useUnified && host.v1.freezer) ctrls.push('freezer');
      const dirOf: Partial<Record<V1Controller | 'unified', string>> = {};
      const created: string[] = [];
      try {
        for (const c of ctrls) {
          const root = host.v1[c]!;
          ensureDir(`${root}/${base}`);
          const d = `${root}/${base}/${name}`;
          mkdirOwned(d);
          created.push(d);
          dirOf[c] = d;
        }
        if (useUnified) {
          ensureDir(`${host.unifiedRoot}/${base}`);
          const d = `${host.unifiedRoot}/${base}/${name}`;
          mkdirOwned(d);
          created.push(d);
          dirOf.unified = d;
        }
        if (limits.memoryBytes !== undefined && dirOf.memory) {
          write(`${dirOf.memory}/memory.limit_in_bytes`, String(limits.memoryBytes));
          if (host.v1Memsw) write(`${dirOf.memory}/memory.memsw.limit_in_bytes`, String(limits.memoryBytes + limits.swapBytes));
        }
        if (limits.pids !== undefined && dirOf.pids) write(`${dirOf.pids}/pids.max`, String(limits.pids));
        if (limits.cpu !== undefined && dirOf.cpu) {
          write(`${dirOf.cpu}/cpu.cfs_period_us`, '100000');
          write(`${dirOf.cpu}/cpu.cfs_quota_us`, String(Math.round(limits.cpu * 100_000)));
        }
      } catch (err) {
        rmdirAll(created);
        throw err;
      }
      // The tree is tracked where kill works: the unified cgroup, else the freezer, else memory/pids.
      const track = dirOf.unified ?? dirOf.freezer ?? dirOf.pids ?? dirOf.memory ?? created[0]!;
      const empty = () => readPids(track).length === 0;
      return {
        backend: 'cgroup-v1',
        name,
        dirs: created,
        joinFiles: created.map((d) => `${d}/cgroup.procs`),
        killMechanism: dirOf.unified ? 'cgroup.kill (hybrid: controller-less cgroup2 tree)' : 'freezer loop (cgroup v1 freezer)',
        counters: () => ({
          oomKills: dirOf.memory ? (readKeyed(`${dirOf.memory}/memory.oom_control`, 'oom_kill') ?? 0) : 0,
          pidsMax: dirOf.pids ? (readKeyed(`${dirOf.pids}/pids.events`, 'max') ?? 0) : 0,
        }),
        usage: () => {
          const u: CgroupUsage = {};
          if (dirOf.memory) {
            const cur = readNumber(`${dirOf.memory}/memory.usage_in_bytes`);
            const peak = readNumber(`${dirOf.memory}/memory.max_usage_in_bytes`);
            if (cur !== undefined) u.memoryCurrentBytes = cur;
            if (peak !== undefined) u.memoryPeakBytes = peak;
          }
          const cpu = dirOf.unified
            ? readKeyed(`${dirOf.unified}/cpu.stat`, 'usage_usec')
            : dirOf.cpuacct
              ? (readNumber(`${dirOf.cpuacct}/cpuacct.usage`) ?? 0) / 1000
              : undefined;
          if (cpu !== undefined) u.cpuUsageUs = cpu;
          return u;
        },
        pids: () => readPids(track),
        populated: () => (dirOf.unified ? readKeyed(`${dirOf.unified}/cgroup.events`, 'populated') === 1 : !empty()),
        killAll: () => {
          if (dirOf.unified) write(`${dirOf.unified}/cgroup.kill`, '1');
          else if (dirOf.freezer) void freezerKill(dirOf.freezer, host.v1.freezer!);
          else for (const pid of readPids(track)) killIfMember(pid, track, ctrls.includes('pids') ? 'pids' : 'memory', host.v1[ctrls.includes('pids') ? 'pids' : 'memory']!);
        },
        waitEmpty: async (ms) => {
          if (dirOf.unified) return waitUnifiedEmpty(dirOf.unified, ms);
          const ok = await pollUntil(empty, ms);
          // Every v1 hierarchy must be empty before rmdir; they drain at the same moment in practice.
          return ok && (await pollUntil(() => created.every((d) => readPids(d).length === 0), 200));
        },
        remove: () => rmdirAll(created),
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

/** Every hierarchy root where captrap may have created `<root>/<base>`. */
export function hierarchyRoots(host: HostInfo): { key: string; root: string }[] {
  const out: { key: string; root: string }[] = [];
  for (const [c, root] of Object.entries(host.v1)) out.push({ key: c, root });
  if (host.unifiedRoot) out.push({ key: '', root: host.unifiedRoot });
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
  const stale = new Map<string, { key: string; root: string; dir: string }[]>();
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
  for (const [, dirs] of stale) {
    const unified = dirs.find((d) => d.key === '');
    const freezer = dirs.find((d) => d.key === 'freezer');
    const before = new Set(dirs.flatMap((d) => readPids(d.dir)));
    result.killed += before.size;
    if (unified && host.cgroupKill) {
      if (readKeyed(`${unified.dir}/cgroup.events`, 'populated') === 1) write(`${unified.dir}/cgroup.kill`, '1');
      await waitUnifiedEmpty(unified.dir, 2000);
    } else if (freezer) {
      await freezerKill(freezer.dir, freezer.root);
    }
    // Whatever is left (a hierarchy not covered by the kill above): per-pid, checked kill.
    for (const d of dirs) for (const pid of readPids(d.dir)) killIfMember(pid, d.dir, d.key, d.root);
    await pollUntil(() => dirs.every((d) => readPids(d.dir).length === 0), 2000);
    try {
      rmdirAll(dirs.map((d) => d.dir));
      result.removed.push(...dirs.map((d) => d.dir));
    } catch (err) {
      result.failed.push({ dir: dirs.map((d) => d.dir).join(', '), error: (err as Error).message });
    }
  }
  return result;
}

/** Removes `<root>/<base>` in every hierarchy if it is empty (tests, uninstall). Returns what is left. */
export function removeCgroupBase(host: HostInfo, base: string): string[] {
  const left: string[] = [];
  for (const h of hierarchyRoots(host)) {
    const d = `${h.root}/${base}`;
    if (!existsSync(d)) continue;
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
      throw new LimitUnenforceableError('the systemd-run backend is chosen in sandbox.ts, not here', {
        limit: 'backend',
        reason: 'internal',
        fix: '',
        backend: name,
      });
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

