// What `captrap doctor` prints: the host facts and, per guarantee, whether it holds here and by
// which mechanism. Derived from the same probe and backend checks the sandbox uses, so doctor
// and a real run can never disagree.
import { autoBackend, cgroupBackend, unifiedHomeInfo } from './cgroup.js';
import type { HostInfo } from './host.js';
import type { BackendName } from './limits.js';
import { chooseLauncher, type LauncherKind } from './launcher/launcher.js';

export type GuaranteeName = 'join-before-exec' | 'tree-kill' | 'die-with-parent' | 'stale-cleanup' | 'memory' | 'swap' | 'pids' | 'cpu' | 'exit-reasons' | 'namespaces';
export const GUARANTEE_NAMES: readonly GuaranteeName[] = ['join-before-exec', 'tree-kill', 'die-with-parent', 'stale-cleanup', 'memory', 'swap', 'pids', 'cpu', 'exit-reasons', 'namespaces'];

export interface GuaranteeStatus {
  name: GuaranteeName;
  holds: boolean;
  mechanism: string;
  /** Why not, and how to fix (when it does not hold). */
  note?: string;
}

export interface HostReport {
  backend: BackendName;
  layout: HostInfo['layout'];
  unifiedRoot: string | null;
  /** Where captrap's cgroup2 bases go (`<home>/<base>`), and why there. */
  cgroupHome: { dir: string; why: string } | null;
  unifiedControllers: string[];
  v1Controllers: Record<string, string>;
  cgroupKill: boolean;
  tools: HostInfo['tools'];
  namespaces: HostInfo['namespaces'];
  systemdRun: { available: boolean; reason: string };
  /** What starts each sandbox (doctor's `launcher` line); kind null if CAPTRAP_LAUNCHER makes every start fail. */
  launcher: { kind: LauncherKind | null; path: string | null; why: string };
  guarantees: GuaranteeStatus[];
}

export function hostReport(host: HostInfo, forced?: BackendName): HostReport {
  const home = unifiedHomeInfo(host);
  const backend = forced ?? autoBackend(host);
  const systemdProblem = cgroupBackend('systemd-run', host).check({ swapBytes: 0 })[0];
  const systemdRun = systemdProblem
    ? { available: false, reason: systemdProblem.reason }
    : { available: true, reason: 'systemd is PID 1 and captrap is root on cgroup v2: each sandbox can be a transient scope (backend systemd-run)' };
  const degraded = cgroupBackend(backend, host).check({ memoryBytes: 1 << 30, swapBytes: 0, pids: 100, cpu: 1 });
  let launcher: HostReport['launcher'];
  try {
    const l = chooseLauncher(host.tools.setpriv !== undefined);
    launcher = { kind: l.kind, path: l.path ?? null, why: l.why };
  } catch (e) {
    launcher = { kind: null, path: null, why: (e as Error).message };
  }
  const off = (limit: string) => degraded.find((d) => d.limit === limit);
  const g: GuaranteeStatus[] = [];
  const add = (name: GuaranteeName, holds: boolean, mechanism: string, note?: string) => g.push(note && !holds ? { name, holds, mechanism, note } : { name, holds, mechanism });
  const cg = backend === 'cgroup-v1' || backend === 'cgroup-v2';
  const joiner = launcher.kind === 'captrap-launch' ? 'captrap-launch' : 'sh trampoline';
  add('join-before-exec', cg, cg ? `${joiner} writes its pid to cgroup.procs, then execs the command` : 'no cgroup to join', 'needs a cgroup backend');
  const tk = off('tree-kill');
  const killMech = backend === 'cgroup-v2' ? 'cgroup.kill' : backend === 'cgroup-v1' ? (host.layout === 'hybrid' && host.cgroupKill ? 'cgroup.kill in the hybrid cgroup2 tree' : 'v1 freezer: freeze, SIGKILL, thaw') : 'process group SIGKILL';
  add('tree-kill', !tk, killMech, tk ? `${tk.reason}. Fix: ${tk.fix}` : undefined);
  const pdeath = launcher.kind === 'captrap-launch' ? 'captrap-launch: PR_SET_PDEATHSIG' : launcher.kind === 'setpriv+sh' ? 'setpriv --pdeathsig KILL' : undefined;
  // The leader dies by its parent-death signal; what it forked is killed by the owner watchdog
  // (one sh per captrap process and base, woken by EOF on a pipe only captrap's death closes),
  // which needs the sandbox's cgroups to find it.
  const descendants = cg
    ? 'descendants (setsid, double-fork): owner watchdog kills and removes the dead owner\'s cgroups'
    : 'descendants: not covered without a cgroup (only with namespaces: [pid])';
  add('die-with-parent', pdeath !== undefined, pdeath ? `${pdeath} on the leader (+ pid-namespace init with namespaces: [pid]); ${descendants}` : 'none', "install util-linux (setpriv), or build captrap-launch ('npm run build' with a C compiler)");
  add('stale-cleanup', cg, cg ? 'cgroups named <base>/<ownerPid>.<ownerStartTime>.<n>; owner dead => killed and removed' : 'no cgroups', 'needs a cgroup backend');
  for (const limit of ['memory', 'swap', 'pids', 'cpu'] as const) {
    const d = off(limit);
    const mech =
      backend === 'cgroup-v2'
        ? { memory: 'memory.max (+ memory.oom.group)', swap: 'memory.swap.max', pids: 'pids.max', cpu: 'cpu.max' }[limit]
        : backend === 'cgroup-v1'
          ? { memory: 'v1 memory.limit_in_bytes', swap: host.v1Memsw ? 'v1 memory.memsw.limit_in_bytes' : 'no swap accounting', pids: 'v1 pids.max', cpu: 'v1 cpu.cfs_quota_us' }[limit]
          : { memory: 'RLIMIT_AS per process (approximation)', swap: 'none', pids: 'RLIMIT_NPROC (per user)', cpu: 'none' }[limit];
    add(limit, !d, mech, d ? `${d.reason}. Fix: ${d.fix}` : undefined);
  }
  const counters = backend === 'cgroup-v2' ? 'memory.events oom_kill, pids.events max' : backend === 'cgroup-v1' ? 'memory.oom_control oom_kill, pids.events max' : 'exit status only';
  add('exit-reasons', cg && !off('memory') && !off('pids'), counters, 'oom and pids-limit need the memory and pids controllers');
  const ns = Object.entries(host.namespaces).filter(([, v]) => v).map(([k]) => k);
  add('namespaces', host.namespaces.pid && host.namespaces.mount && host.namespaces.net, `unshare: ${ns.join(', ') || 'none'}`, 'run as root or allow unprivileged user namespaces');
  return {
    backend,
    layout: host.layout,
    unifiedRoot: host.unifiedRoot ?? null,
    cgroupHome: home ? { dir: home.home, why: home.why } : null,
    unifiedControllers: host.unifiedControllers,
    v1Controllers: { ...host.v1 } as Record<string, string>,
    cgroupKill: host.cgroupKill,
    tools: host.tools,
    namespaces: host.namespaces,
    systemdRun,
    launcher,
    guarantees: g,
  };
}
