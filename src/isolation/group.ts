// Groups: a cgroup that holds no process itself and whose limits bound the sum of everything
// created inside it, so a tree of cgroups can mirror a tree of agents. Without them each sandbox
// is a flat sibling under <base> and an agent limited to cpu 0.25 could run sixty tools at 0.25
// each; inside a group the kernel enforces the tighter of each sandbox's own limits and every
// ancestor group's, for memory, swap, pids and cpu alike.
//
//   <base>/<group>/<sandbox>                 an agent's group, its own leaf and its tools' leaves
//   <base>/<group>/<sub-group>/<sandbox>     a sub-agent's group nested inside it
//
// Every directory is named <ownerPid>.<ownerStartTime>.<seq> like a flat sandbox's, so the owner
// watchdog and stale cleanup recognise the top one and take its whole subtree. This module knows
// nothing of agents or capabilities; the runner decides which group a sandbox goes in.
import { autoBackend, cgroupBackend, enableSubtreeControllers, newCgroupName, unifiedHome, type CgroupParent, type CgroupUsage, type Degradation, type GroupCgroup } from './cgroup.js';
import { ensureDir, readText, sleep, write } from './cgroupfs.js';
import { CgroupError, LimitUnenforceableError, SandboxOptionError } from './errors.js';
import { probeHost, type HostInfo } from './host.js';
import { normalizeOptions, type BackendName, type Limits, type SandboxOptions } from './limits.js';
import { ensureOwnerWatchdog } from './watchdog.js';
import { log } from '../log.js';

export type KillReason = 'killed' | 'revoked' | 'owner-exited';

/** Limits on the sum of everything inside a group, in a sandbox's units ('64M', 0.25, '25%'). */
export type GroupLimitOptions = Pick<SandboxOptions, 'memory' | 'swap' | 'pids' | 'cpu'>;

export interface SandboxGroupOptions {
  limits?: GroupLimitOptions;
  /** Base name under each hierarchy (default 'captrap'; a nested group inherits its parent's). */
  cgroupBase?: string;
  /** 'auto' (default) picks the host's best backend; a nested group always uses its parent's. */
  backend?: BackendName | 'auto';
  /** Create the group even if a limit cannot be enforced; `degraded` says which. */
  allowDegraded?: boolean;
  /** Nest inside this group: its limits bound this one's too. */
  parent?: SandboxGroup;
}

export interface SandboxGroup {
  /** The group's own cgroup name: <ownerPid>.<ownerStartTime>.<seq>. */
  readonly name: string;
  /** Path below every hierarchy root: '<base>/<name>', or '<base>/<parent name>/.../<name>'. */
  readonly path: string;
  readonly cgroupBase: string;
  readonly backend: BackendName;
  readonly limits: Readonly<Limits>;
  readonly parent: SandboxGroup | undefined;
  /** The directories created, one per hierarchy. */
  readonly dirs: readonly string[];
  readonly killMechanism: string;
  /** Limits or guarantees that do not hold (only with allowDegraded). */
  readonly degraded: readonly Degradation[];
  /** True once remove() succeeded; nothing more can be created inside. */
  readonly removed: boolean;
  /** Memory and CPU time of everything inside the group (counted by the kernel over the subtree). */
  usage(): CgroupUsage;
  /** Pids anywhere inside the group. */
  pids(): number[];
  populated(): boolean;
  /**
   * SIGKILLs everything inside the group at any depth (setsid escapees included: by cgroup, not
   * by process). Each sandbox inside records `reason` before the kill, so it ends with that
   * reason rather than as signaled(SIGKILL).
   */
  killAll(reason?: KillReason): void;
  /** Resolves true once nothing runs inside the group, false if `timeoutMs` passed first. */
  waitEmpty(timeoutMs: number): Promise<boolean>;
  /**
   * rmdir the group in every hierarchy. Refuses (CgroupError) while a sandbox or group created
   * inside it is still live, or if a directory is busy; call again later, or use destroy().
   */
  remove(): void;
  /** Destroys nested groups, kills everything inside, waits for the sandboxes to finish, then removes the group. */
  destroy(reason?: KillReason, timeoutMs?: number): Promise<void>;
}

/** What a sandbox registers with its group: killAll calls it to record the reason, then kill the sandbox. */
export interface GroupMember {
  noteKill(reason: KillReason): void;
}

export interface GroupSeat {
  /** Where the sandbox's cgroup is created. */
  readonly placement: CgroupParent;
  /** The sandbox's cgroup is gone (or given up on): the group may be removed. */
  leave(): void;
}

const GROUP_KEYS = new Set(['limits', 'cgroupBase', 'backend', 'allowDegraded', 'parent']);
const LIMIT_KEYS = new Set(['memory', 'swap', 'pids', 'cpu']);

class Group implements SandboxGroup {
  readonly path: string;
  removed = false;
  readonly members = new Set<GroupMember>();
  readonly children = new Set<Group>();

  constructor(
    readonly cg: GroupCgroup,
    readonly cgroupBase: string,
    readonly backend: BackendName,
    readonly limits: Readonly<Limits>,
    readonly parent: Group | undefined,
    readonly degraded: readonly Degradation[],
  ) {
    this.path = cg.placement.rel;
  }

  get name(): string {
    return this.cg.name;
  }
  get dirs(): readonly string[] {
    return this.cg.dirs;
  }
  get killMechanism(): string {
    return this.cg.killMechanism;
  }
  usage(): CgroupUsage {
    return this.removed ? {} : this.cg.usage();
  }
  pids(): number[] {
    return this.removed ? [] : this.cg.pids();
  }
  populated(): boolean {
    return !this.removed && this.cg.populated();
  }

  private noteKill(reason: KillReason): void {
    for (const m of this.members) m.noteKill(reason);
    for (const c of this.children) c.noteKill(reason);
  }

  killAll(reason: KillReason = 'killed'): void {
    if (this.removed) return;
    // Each sandbox records the reason before it is signalled (DESIGN: exit reasons) and kills
    // its own tree; the group's cgroup kill then takes whatever else is inside.
    this.noteKill(reason);
    if (this.cg.populated()) this.cg.killAll();
  }

  waitEmpty(timeoutMs: number): Promise<boolean> {
    return this.removed ? Promise.resolve(true) : this.cg.waitEmpty(timeoutMs);
  }

  remove(): void {
    if (this.removed) return;
    if (this.members.size > 0 || this.children.size > 0) {
      throw new CgroupError(`group ${this.path} still holds ${this.members.size} live sandbox(es) and ${this.children.size} group(s); stop them first, or use destroy()`, {
        group: this.path,
        sandboxes: this.members.size,
        groups: this.children.size,
      });
    }
    this.cg.remove();
    this.removed = true;
    this.parent?.children.delete(this);
  }

  async destroy(reason: KillReason = 'killed', timeoutMs = 5000): Promise<void> {
    if (this.removed) return;
    const deadline = Date.now() + timeoutMs;
    await Promise.all([...this.children].map((c) => c.destroy(reason, timeoutMs)));
    this.killAll(reason);
    await this.cg.waitEmpty(Math.max(0, deadline - Date.now()));
    // Each sandbox removes its own cgroup and leaves once its result is settled.
    while (this.members.size > 0 && Date.now() < deadline) await sleep(5);
    for (let i = 0; ; i++) {
      try {
        this.remove();
        return;
      } catch (err) {
        if (Date.now() >= deadline) throw err;
        await sleep(5 + i);
      }
    }
  }

  seat(member: GroupMember): GroupSeat {
    if (this.removed) throw new SandboxOptionError(`group ${this.path} was removed; no sandbox can be created in it`, { group: this.path });
    this.members.add(member);
    return { placement: this.cg.placement, leave: () => this.members.delete(member) };
  }
}

function asGroup(g: SandboxGroup, what: string): Group {
  if (!(g instanceof Group)) throw new SandboxOptionError(`${what} must be a group made by createSandboxGroup`);
  return g;
}

/** For sandbox.ts: checks the sandbox fits the group and reserves its place in it. */
export function seatInGroup(group: SandboxGroup, member: GroupMember): GroupSeat {
  return asGroup(group, "option 'group'").seat(member);
}

function refuse(degraded: Degradation[], backend: BackendName): never {
  const d = degraded[0]!;
  const all = degraded.map((x) => `${x.limit} (${x.reason})`).join('; ');
  throw new LimitUnenforceableError(`refusing to create a sandbox group: ${all}. Fix: ${d.fix}. Pass allowDegraded to create it anyway.`, {
    limit: d.limit,
    reason: d.reason,
    fix: d.fix,
    backend,
  });
}

/**
 * Creates a group (in every hierarchy the backend uses) with limits on the sum of everything that
 * will run inside it. Fails closed like a sandbox: a limit this host cannot enforce is refused
 * unless allowDegraded. Starts the owner watchdog first, so a SIGKILLed captrap leaves no group.
 */
export function createSandboxGroup(options: SandboxGroupOptions = {}): SandboxGroup {
  if (typeof options !== 'object' || options === null) throw new SandboxOptionError('group options must be an object');
  for (const k of Object.keys(options)) if (!GROUP_KEYS.has(k)) throw new SandboxOptionError(`unknown group option '${k}' (known: ${[...GROUP_KEYS].join(', ')})`, { option: k });
  for (const k of Object.keys(options.limits ?? {})) if (!LIMIT_KEYS.has(k)) throw new SandboxOptionError(`unknown group limit '${k}' (known: ${[...LIMIT_KEYS].join(', ')})`, { option: k });
  const parent = options.parent ? asGroup(options.parent, "option 'parent'") : undefined;
  if (parent?.removed) throw new SandboxOptionError(`parent group ${parent.path} was removed`, { group: parent.path });
  if (parent && options.cgroupBase !== undefined && options.cgroupBase !== parent.cgroupBase) {
    throw new SandboxOptionError(`option 'cgroupBase': a nested group lives under its parent's base '${parent.cgroupBase}'`, { option: 'cgroupBase' });
  }
  const o = normalizeOptions({
    ...(options.limits ?? {}),
    cgroupBase: options.cgroupBase ?? parent?.cgroupBase ?? 'captrap',
    backend: options.backend ?? 'auto',
    allowDegraded: options.allowDegraded ?? false,
  });
  const host = probeHost();
  let backend: BackendName;
  const degraded: Degradation[] = [];
  if (parent) {
    if (o.backend !== 'auto' && o.backend !== parent.backend) throw new SandboxOptionError(`option 'backend': a nested group uses its parent's backend '${parent.backend}'`, { option: 'backend' });
    backend = parent.backend;
  } else {
    backend = o.backend === 'auto' ? autoBackend(host) : o.backend;
  }
  if (backend === 'systemd-run') {
    // Like a sandbox: systemd-run only builds arguments in this version.
    const d: Degradation = { limit: 'backend', reason: 'the systemd-run backend cannot hold groups in this version', fix: "use backend 'cgroup-v1' or 'cgroup-v2'" };
    if (!o.allowDegraded || o.backend === 'systemd-run') refuse([d], backend);
    degraded.push(d);
    backend = 'none';
  }
  const be = cgroupBackend(backend, host);
  degraded.push(...be.check(o.limits));
  if (degraded.length > 0 && !o.allowDegraded) refuse(degraded, backend);
  if (backend !== 'none') {
    try {
      ensureOwnerWatchdog(host, o.cgroupBase);
    } catch (err) {
      if (!o.allowDegraded) throw err;
      degraded.push({ limit: 'die-with-parent', reason: `the owner watchdog cannot start (${(err as Error).message})`, fix: 'make /bin/sh runnable for captrap' });
    }
  }
  if (degraded.length > 0) log.warn({ backend, degraded }, 'sandbox group runs degraded');
  const cg = be.createGroup(o.cgroupBase, newCgroupName(), o.limits, parent?.cg.placement);
  const g = new Group(cg, o.cgroupBase, backend, Object.freeze({ ...o.limits }), parent, degraded);
  parent?.children.add(g);
  return g;
}

export interface PrioritiseResult {
  /** What was written (empty when skipped). */
  applied: { file: string; value: string }[];
  /** Why nothing was written. */
  skipped?: string;
}

/** cpu.shares / cpu.weight given to `<base>`: a quarter of the default (1024 / 100). */
const SHARES = 256;
const WEIGHT = 25;

/**
 * Keeps the sidecar responsive under load: gives `<base>` (every group and every cgroup-placed
 * sandbox below it) a quarter of the default CPU weight. The kernel weighs `<base>` as ONE
 * entity against its siblings, the sidecar's own cgroup or (v1 root) each of its threads, so
 * when everything is busy the sidecar wins 4:1, and when it is idle the sandboxes still get all
 * the CPU (weights are work-conserving; quotas are what cap). Moves no process. On a v1/hybrid
 * host a flat sandbox without a cpu limit is not in the cpu hierarchy at all and is not affected.
 */
export function prioritiseSelf(cgroupBase = 'captrap', host: HostInfo = probeHost()): PrioritiseResult {
  if (!/^captrap[A-Za-z0-9_.-]*$/.test(cgroupBase)) throw new SandboxOptionError(`'${cgroupBase}' is not a captrap cgroup base name`, { option: 'cgroupBase' });
  const backend = autoBackend(host);
  if (backend === 'cgroup-v1' && host.v1.cpu) {
    const dir = `${host.v1.cpu}/${cgroupBase}`;
    ensureDir(dir);
    write(`${dir}/cpu.shares`, String(SHARES));
    return { applied: [{ file: `${dir}/cpu.shares`, value: String(SHARES) }] };
  }
  const home = unifiedHome(host);
  if (backend === 'cgroup-v2' && host.unifiedRoot && home && host.unifiedControllers.includes('cpu')) {
    const dir = `${home}/${cgroupBase}`;
    ensureDir(dir);
    const atBase = readText(`${dir}/cgroup.controllers`)?.trim().split(/\s+/) ?? [];
    // The home may be a container's or a Delegate=yes unit's cgroup holding captrap: see enableSubtreeControllers.
    if (!atBase.includes('cpu')) enableSubtreeControllers(host.unifiedRoot, home, ['cpu']);
    write(`${dir}/cpu.weight`, String(WEIGHT));
    return { applied: [{ file: `${dir}/cpu.weight`, value: String(WEIGHT) }] };
  }
  return { applied: [], skipped: `no writable cpu controller for the ${backend} backend on this host` };
}
