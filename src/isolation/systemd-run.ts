// The systemd-run backend, for hosts where systemd is PID 1 and owns the cgroup tree: each
// sandbox is a transient scope (`systemd-run --scope`) whose limits systemd sets (MemoryMax,
// TasksMax, CPUQuota) and whose OOM takes the whole scope (OOMPolicy=kill). systemd-run moves
// itself into the new scope and then execs the launcher in place, so the leader is still
// captrap's direct child (parent-death signal, exit status) and is in its scope before the
// command's first instruction. The scope's cgroup is a plain cgroup2 directory: its counters
// (memory.events, pids.events) classify the exit, and cgroup.kill takes the whole tree.
//
// The OOM counter lives in the scope's cgroup, which systemd removes as soon as the scope is
// empty; when it is gone by the time the exit is classified, the scope's Result (oom-kill) says.
//
// Every scope of a base lives in one slice, `<base with - and . as _>.slice`, named
// `<ownerPid>.<ownerStartTime>.<seq>.scope`, so the owner watchdog and stale cleanup find a dead
// captrap's scopes the way they find its cgroups.
import { spawnSync } from 'node:child_process';
import { existsSync, watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';
import { readKeyed, readNumber, readPids, rmdirTrees, waitUnifiedEmpty, write } from './cgroupfs.js';
import type { CgroupBackend, CgroupUsage, Counters, Degradation, SandboxCgroup } from './cgroup.js';
import { CgroupError } from './errors.js';
import { which, type HostInfo } from './host.js';
import type { Limits } from './limits.js';

export interface SystemdRunPlan {
  unit: string;
  /** Arguments for systemd-run, ending with '--'; the command follows. */
  args: string[];
}

/** systemd-run --scope arguments enforcing `limits`; `--user` when captrap is not root. */
export function buildSystemdRunArgs(unitName: string, limits: Limits, opts: { timeoutMs?: number; user: boolean; slice?: string }): SystemdRunPlan {
  if (!/^[A-Za-z0-9:_.\\-]+$/.test(unitName)) throw new Error(`invalid systemd unit name '${unitName}'`);
  if (opts.slice !== undefined && !/^[A-Za-z0-9:_.\\-]+\.slice$/.test(opts.slice)) throw new Error(`invalid systemd slice name '${opts.slice}'`);
  const unit = `${unitName}.scope`;
  // No --collect: a scope that failed (an OOM) must stay loaded until captrap has read its
  // Result, because systemd removes its cgroup, and the counters in it, as soon as it is empty.
  const args = ['--scope', '--quiet', `--unit=${unit}`];
  if (opts.slice !== undefined) args.push(`--slice=${opts.slice}`);
  if (opts.user) args.push('--user');
  if (limits.memoryBytes !== undefined) {
    args.push('-p', `MemoryMax=${limits.memoryBytes}`, '-p', `MemorySwapMax=${limits.swapBytes}`);
  }
  if (limits.pids !== undefined) args.push('-p', `TasksMax=${limits.pids}`);
  // CPUQuota is a percentage of one CPU; systemd accepts > 100% for more than one core.
  if (limits.cpu !== undefined) args.push('-p', `CPUQuota=${Math.round(limits.cpu * 100)}%`);
  if (opts.timeoutMs !== undefined) args.push('-p', `RuntimeMaxSec=${Math.max(1, Math.ceil(opts.timeoutMs / 1000))}`);
  // Kill the whole scope on stop, and let an OOM take the whole scope.
  args.push('-p', 'KillMode=control-group', '-p', 'OOMPolicy=kill', '--');
  return { unit, args };
}

/** The slice holding every scope of cgroup base `base` (a slice name's '-' means nesting, so none is kept). */
export function sliceFor(base: string): string {
  return `${base.replace(/[-.]/g, '_')}.slice`;
}

/** A sandbox cgroup that systemd creates when the leader starts: the argv prefix that asks for it. */
export interface SystemdScopeCgroup extends SandboxCgroup {
  /** `systemd-run ... --` to put in front of the launcher. */
  readonly prefix: readonly string[];
}

/**
 * What systemd says about a scope whose cgroup is gone: its counters went with it, but a scope
 * that systemd stopped for an OOM (OOMPolicy=kill) is left failed with Result=oom-kill. Reads it,
 * then unloads the failed unit (reset-failed).
 */
function scopeOutcome(systemctl: string, unit: string): { oom: boolean } {
  const r = spawnSync(systemctl, ['show', '--property=Result', '--value', '--', unit], { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] });
  const result = r.status === 0 ? r.stdout.trim() : '';
  if (result !== '' && result !== 'success') spawnSync(systemctl, ['reset-failed', '--', unit], { timeout: 5000, stdio: 'ignore' });
  return { oom: result === 'oom-kill' };
}

export function systemdRunBackend(host: HostInfo): CgroupBackend & { create(base: string, name: string, limits: Limits, leaderPid?: () => number | undefined): SystemdScopeCgroup } {
  const mount = host.unifiedRoot;
  const reasons = (): Degradation[] => {
    const fix = "use backend 'auto', 'cgroup-v2' or 'cgroup-v1'";
    if (!host.systemdManager) return [{ limit: 'backend', reason: host.tools.systemdRun ? 'systemd is not running on this host (/run/systemd/system is missing)' : 'systemd-run is not installed', fix }];
    if (!host.isRoot) return [{ limit: 'backend', reason: "captrap is not root: a user manager's scopes get no memory or pids controller unless it is delegated, and captrap cannot confine", fix }];
    if (host.layout !== 'v2' || !mount) return [{ limit: 'backend', reason: `the systemd-run backend needs a pure cgroup v2 host (this one is ${host.layout})`, fix }];
    if (!host.cgroupKill) return [{ limit: 'tree-kill', reason: 'cgroup.kill is missing (Linux < 5.14)', fix: 'upgrade the kernel to >= 5.14' }];
    return [];
  };
  return {
    name: 'systemd-run',
    check: () => reasons(),
    create(base, name, limits, leaderPid) {
      const problems = reasons();
      if (problems.length > 0) throw new CgroupError(`the systemd-run backend cannot be used: ${problems[0]!.reason}`, { backend: 'systemd-run' });
      const slice = sliceFor(base);
      const plan = buildSystemdRunArgs(name, limits, { user: false, slice });
      const dir = `${mount}/${slice}/${plan.unit}`;
      // A scope left by an earlier captrap with this pid and start time cannot exist (the name
      // carries both), so an existing directory means something else made it: refuse.
      if (existsSync(dir)) throw new CgroupError(`systemd scope cgroup ${dir} already exists`, { path: dir });
      const systemctl = which('systemctl', dirname(host.tools.systemdRun!)) ?? 'systemctl';
      // The highest counters seen while the cgroup existed; once it is gone (systemd removed it),
      // what systemd recorded about the scope.
      const seen: Counters = { oomKills: 0, pidsMax: 0 };
      let outcome: { oom: boolean } | undefined;
      const refresh = (): boolean => {
        if (!existsSync(dir)) return false;
        seen.oomKills = Math.max(seen.oomKills, readKeyed(`${dir}/memory.events`, 'oom_kill') ?? 0);
        seen.pidsMax = Math.max(seen.pidsMax, readKeyed(`${dir}/pids.events`, 'max') ?? 0);
        return true;
      };
      const counters = (): Counters => {
        if (!refresh() && leaderPid?.() !== undefined) {
          outcome ??= scopeOutcome(systemctl, plan.unit);
          if (outcome.oom) seen.oomKills = Math.max(seen.oomKills, 1);
        }
        return { ...seen };
      };
      // A sandbox that hits its pids limit and exits on its own is not failed, so systemd keeps
      // no record of it: the counters are watched while the scope exists (kernfs notifies a
      // change of memory.events and pids.events), from the moment systemd-run has made it.
      const watchers: FSWatcher[] = [];
      const attach = setInterval(() => {
        if (!refresh()) return;
        clearInterval(attach);
        for (const f of ['memory.events', 'pids.events']) {
          try {
            const w = watch(`${dir}/${f}`, () => void refresh());
            w.on('error', () => undefined);
            watchers.push(w);
          } catch {
            // the scope is already gone: its Result, or what was read, stands
          }
        }
      }, 1);
      attach.unref();
      const detach = () => {
        clearInterval(attach);
        for (const w of watchers.splice(0)) w.close();
      };
      return {
        backend: 'systemd-run',
        name,
        dirs: [dir],
        // systemd-run moves the leader into the scope before it execs the launcher.
        joinFiles: [],
        prefix: [host.tools.systemdRun!, ...plan.args],
        killMechanism: 'cgroup.kill of the systemd scope (KillMode=control-group, OOMPolicy=kill)',
        counters,
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
          if (existsSync(dir)) write(`${dir}/cgroup.kill`, '1');
        },
        // Before systemd made it, or after it collected the empty scope, there is no directory: empty.
        waitEmpty: (ms) => waitUnifiedEmpty(dir, ms),
        remove: () => {
          refresh();
          detach();
          rmdirTrees([dir]);
        },
      };
    },
    createGroup() {
      throw new CgroupError("the systemd-run backend holds single sandboxes, not groups: use backend 'cgroup-v2' for groups", { backend: 'systemd-run' });
    },
  };
}
