// invokeTool: the gate between an agent's request and a process. The kernel decides first and
// nothing is spawned on a denial; an allowed call runs in a fresh sandbox whose limits are the
// tightest of the sidecar's defaults, the tool's and the capability's. Every call is tracked by
// the agent that started it, so the agent's exit (or a revocation) can stop it.
import type { SecurityKernel } from '../kernel/kernel.js';
import type { AuditSink } from '../kernel/events.js';
import type { Capability, ProcessRef } from '../kernel/capability.js';
import { effectiveLimits } from '../kernel/policy.js';
import type { Limits } from '../kernel/constraints.js';
import { runSandboxed, type KillReason, type Sandbox, type SandboxResult } from '../isolation/sandbox.js';
import type { SandboxOptions } from '../isolation/limits.js';
import type { SandboxDefaults } from './config.js';
import type { SidecarMetrics } from './metrics.js';

export type ToolExitReason = 'exited' | 'signaled' | 'oom' | 'timeout' | 'pids-limit' | 'killed' | 'revoked' | 'owner-exited';

export interface ToolResult {
  reason: ToolExitReason;
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  durationMs: number;
  usage: { memoryPeakBytes: number | null; cpuUsageUs: number | null };
}

/** Who calls: known from the channel, never from params. */
export interface ToolCaller {
  principal: string;
  process: ProcessRef;
  /** The agent whose channel carried the call (owner of the sandbox). */
  agentId: string;
  /**
   * The caller's own ceilings: a tool acting for an agent gets no more memory, tasks or CPU than
   * the agent itself has (its wall-clock limit is not carried over: tools have their own).
   */
  budget?: Limits;
}

export interface InvokeRequest {
  tool: string;
  args: unknown;
  capability: string;
}

/** Counters every sandbox the sidecar starts (agents and tools) adds to. */
export class SandboxCounters {
  running = 0;
  started = 0;
  exited = 0;
  readonly byReason: Record<string, number> = {};
  start(): void {
    this.running++;
    this.started++;
  }
  end(reason: string): void {
    this.running--;
    this.exited++;
    this.byReason[reason] = (this.byReason[reason] ?? 0) + 1;
  }
}

export interface ToolRunnerOptions {
  kernel: SecurityKernel;
  audit: AuditSink;
  sandbox: SandboxDefaults;
  cgroupBase: string;
  counters: SandboxCounters;
  metrics?: SidecarMetrics;
}

interface InFlight {
  sandbox: Sandbox;
  agentId: string;
  capability: Capability;
  tool: string;
}

/** Tighter of two limit sets, field by field. */
export function tightest(...sets: (Limits | undefined)[]): Limits {
  return sets.reduce<Limits>((acc, s) => effectiveLimits(acc, s), {});
}

export function sandboxLimits(l: Limits): Pick<SandboxOptions, 'memory' | 'pids' | 'cpu' | 'timeout'> {
  const o: Pick<SandboxOptions, 'memory' | 'pids' | 'cpu' | 'timeout'> = {};
  if (l.memoryBytes !== undefined) o.memory = l.memoryBytes;
  if (l.pids !== undefined) o.pids = l.pids;
  if (l.cpu !== undefined) o.cpu = l.cpu;
  if (l.timeoutMs !== undefined) o.timeout = l.timeoutMs;
  return o;
}

export class ToolRunner {
  private readonly inFlight = new Set<InFlight>();
  private readonly idleWaiters: (() => void)[] = [];

  constructor(private readonly o: ToolRunnerOptions) {}

  /**
   * Authorises and runs one call. Throws the kernel's AccessDeniedError (audited, nothing
   * spawned), or an isolation error when the sandbox cannot start. Resolves with the result.
   */
  async invoke(caller: ToolCaller, req: InvokeRequest): Promise<ToolResult> {
    const { kernel, audit, sandbox: defaults, metrics } = this.o;
    let auth;
    try {
      auth = kernel.authorizeToolCall(req.capability, req.tool, req.args, { principal: caller.principal, process: caller.process });
    } catch (err) {
      metrics?.toolDenials.inc({ code: (err as { code?: string }).code ?? 'E_INTERNAL' });
      throw err;
    }
    const budget: Limits = { ...caller.budget };
    delete budget.timeoutMs;
    const limits = tightest(defaults.limits, auth.limits, budget);
    const opts: SandboxOptions = {
      ...sandboxLimits(limits),
      cgroupBase: this.o.cgroupBase,
      allowDegraded: defaults.allowDegraded,
      backend: defaults.backend,
      cwd: '/',
      env: {},
    };
    if (defaults.maxOutputBytes !== undefined) opts.maxOutputBytes = defaults.maxOutputBytes;
    if (defaults.killGraceMs !== undefined) opts.killGrace = defaults.killGraceMs;
    if (defaults.namespaces !== undefined) opts.namespaces = defaults.namespaces;
    if (defaults.uid !== undefined) opts.uid = defaults.uid;
    if (defaults.gid !== undefined) opts.gid = defaults.gid;
    const [command, ...args] = auth.argv;
    const sb = runSandboxed(command!, args, opts); // throws before creating anything if it cannot start
    this.o.counters.start();
    const entry: InFlight = { sandbox: sb, agentId: caller.agentId, capability: auth.capability, tool: auth.tool.name };
    this.inFlight.add(entry);
    audit.record({
      type: 'sandbox_started',
      principal: caller.principal,
      capabilityId: auth.capability.id,
      ...(sb.ref ? { process: { pid: sb.ref.pid, startTime: sb.ref.startTime } } : {}),
      details: { kind: 'tool', tool: auth.tool.name, agent: caller.agentId, cgroup: sb.cgroupName, limits, argv: auth.argv },
    });
    let r: SandboxResult;
    try {
      r = await sb;
    } finally {
      this.inFlight.delete(entry);
      if (this.inFlight.size === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
    this.o.counters.end(r.reason.kind);
    metrics?.toolCalls.inc({ tool: auth.tool.name, reason: r.reason.kind });
    metrics?.toolDuration.observe({ tool: auth.tool.name }, r.durationMs / 1000);
    audit.record({
      type: 'sandbox_exited',
      principal: caller.principal,
      capabilityId: auth.capability.id,
      process: { pid: r.pid, startTime: sb.ref?.startTime ?? 0 },
      details: { kind: 'tool', tool: auth.tool.name, agent: caller.agentId, reason: r.reason.kind, exitCode: r.exitCode, signal: r.signal, durationMs: Math.round(r.durationMs), memoryPeakBytes: r.usage.memoryPeakBytes ?? null, cleanedUp: r.cleanedUp },
    });
    return {
      reason: r.reason.kind,
      exitCode: r.exitCode,
      signal: r.signal,
      stdout: r.stdout,
      stderr: r.stderr,
      stdoutTruncated: r.stdoutTruncated,
      stderrTruncated: r.stderrTruncated,
      durationMs: r.durationMs,
      usage: { memoryPeakBytes: r.usage.memoryPeakBytes ?? null, cpuUsageUs: r.usage.cpuUsageUs ?? null },
    };
  }

  get running(): number {
    return this.inFlight.size;
  }

  runningFor(agentId: string): number {
    let n = 0;
    for (const f of this.inFlight) if (f.agentId === agentId) n++;
    return n;
  }

  /** Stops every call the agent started (its exit, with onAgentExit: kill). */
  killOwnedBy(agentId: string, reason: KillReason): number {
    let n = 0;
    for (const f of this.inFlight) {
      if (f.agentId === agentId) {
        f.sandbox.kill(reason);
        n++;
      }
    }
    return n;
  }

  /**
   * Stops every call whose capability (or one of its ancestors) has been revoked. Call after any
   * revocation. `sparedAgent`'s calls are left to finish (onAgentExit: finish).
   */
  killRevoked(sparedAgent?: string): number {
    let n = 0;
    const { kernel } = this.o;
    for (const f of this.inFlight) {
      if (f.agentId === sparedAgent) continue;
      const c = f.capability;
      if (kernel.isRevoked(c.id) || c.ancestors.some((a) => kernel.isRevoked(a))) {
        f.sandbox.kill('revoked');
        n++;
      }
    }
    return n;
  }

  killAll(reason: KillReason): void {
    for (const f of this.inFlight) f.sandbox.kill(reason);
  }

  /** Resolves once no call is in flight. */
  whenIdle(): Promise<void> {
    if (this.inFlight.size === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }
}
