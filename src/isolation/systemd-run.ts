// The systemd-run backend, for hosts where cgroupfs is not writable by captrap but a systemd
// manager is reachable: the command runs in a transient scope whose limits systemd enforces.
// Only the argument list lives here (it is what can be tested without a systemd host); the
// sandbox wraps the trampoline in it.
import type { Limits } from './limits.js';

export interface SystemdRunPlan {
  unit: string;
  /** Arguments for systemd-run, ending with '--'; the command follows. */
  args: string[];
}

/** systemd-run --scope arguments enforcing `limits`; `--user` when captrap is not root. */
export function buildSystemdRunArgs(unitName: string, limits: Limits, opts: { timeoutMs?: number; user: boolean }): SystemdRunPlan {
  if (!/^[A-Za-z0-9:_.\\-]+$/.test(unitName)) throw new Error(`invalid systemd unit name '${unitName}'`);
  const unit = `${unitName}.scope`;
  const args = ['--scope', '--quiet', '--collect', `--unit=${unit}`];
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
