// invokeTool: the gate between an agent's request and a process. The kernel decides first and
// nothing is spawned on a denial; an allowed call runs in a fresh sandbox whose limits are the
// tightest of the sidecar's defaults, the tool's and the capability's. Every call is tracked by
// the agent that started it, so the agent's exit (or a revocation) can stop it.
import type { SecurityKernel } from '../kernel/kernel.js';
import type { AuditSink } from '../kernel/events.js';
import type { Capability, ProcessRef } from '../kernel/capability.js';
import { mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { effectiveLimits, redactArgs, type Tool, type ToolArgs } from '../kernel/policy.js';
import { entryMatches, parseDomainEntry, type DomainEntry } from '../kernel/domains.js';
import { startEgressProxy, type EgressDecision, type EgressProxy } from './egress.js';
import type { Identity } from './identity.js';
import { log } from '../log.js';
import type { Constraints, Limits } from '../kernel/constraints.js';
import { runSandboxed, type KillReason, type Sandbox, type SandboxResult } from '../isolation/sandbox.js';
import type { SandboxOptions } from '../isolation/limits.js';
import type { SandboxGroup } from '../isolation/group.js';
import type { SandboxDefaults } from './config.js';
import { RPC_ERROR, RpcError } from './jsonrpc.js';
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
  /** The calling agent's identity: its tools run as its uid (or as root only where it may). */
  identity?: Identity;
  /** The calling agent's group: the call's sandbox is created inside it (else found with `groupFor`). */
  group?: SandboxGroup;
}

export interface InvokeRequest {
  tool: string;
  args: unknown;
  capability: string;
}

/** What the gate needs of the audit log (AuditLog has all of it). */
export interface GateableAudit {
  readonly available: boolean;
  /** Writes everything recorded so far; rejects while the log cannot write. */
  flush(): Promise<void>;
  /** Why the log is unavailable now. */
  unavailableError(cause?: unknown): Error & { details?: Record<string, unknown> | undefined };
}

export interface AuditGateOptions {
  audit: GateableAudit;
  /** deny (default): refuse while the log cannot write; continue: run unaudited and count it. */
  onFailure?: 'deny' | 'continue';
  metrics?: SidecarMetrics;
  /** How long a write-ahead flush may take before the call is refused (default 5000 ms). */
  flushTimeoutMs?: number;
}

/** The typed refusal: UNAVAILABLE with data.code E_AUDIT_UNAVAILABLE. */
export const AUDIT_UNAVAILABLE = 'E_AUDIT_UNAVAILABLE';

/**
 * Fail closed on a log that cannot write (issue: "Audit disk full"). check() is the cheap,
 * synchronous guard every state-changing request passes first; writeAhead() is what a tool call
 * passes before its process exists: the records of its authorisation are on disk (flushed and,
 * per the log's policy, fsynced), so the first call after the disk fills is refused too, not only
 * the ones after the log noticed. With onFailure 'continue' neither refuses: the call runs, is
 * counted as unaudited, and stats, metrics and stderr still say the log is down.
 */
export class AuditGate {
  readonly onFailure: 'deny' | 'continue';
  /** Requests refused because the log could not write. */
  refused = 0;
  /** Requests run while the log could not write (onFailure: continue). */
  unaudited = 0;
  private readonly flushTimeoutMs: number;

  constructor(private readonly o: AuditGateOptions) {
    this.onFailure = o.onFailure ?? 'deny';
    this.flushTimeoutMs = o.flushTimeoutMs ?? 5000;
  }

  get available(): boolean {
    return this.o.audit.available;
  }

  /** Throws (deny) or counts (continue) unless the log is writing. `method`: the RPC method, for the metrics. */
  check(method: string): void {
    if (this.o.audit.available) return;
    if (this.onFailure === 'continue') {
      this.unaudited++;
      this.o.metrics?.auditUnaudited.inc({ method });
      return;
    }
    throw this.refuse(method);
  }

  /** Deny mode: resolves once everything recorded so far is on disk; throws the refusal if it cannot be written. */
  async writeAhead(method: string): Promise<void> {
    if (this.onFailure === 'continue') return this.check(method);
    this.check(method);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.o.audit.flush(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`the audit log did not write within ${this.flushTimeoutMs} ms`)), this.flushTimeoutMs);
        }),
      ]);
    } catch (err) {
      throw this.refuse(method, err);
    } finally {
      clearTimeout(timer);
    }
  }

  private refuse(method: string, cause?: unknown): RpcError {
    this.refused++;
    this.o.metrics?.auditRefused.inc({ method });
    const why = this.o.audit.available && cause instanceof Error ? cause : this.o.audit.unavailableError(cause);
    const d = (why as { details?: Record<string, unknown> }).details ?? {};
    const message = `${AUDIT_UNAVAILABLE}: ${method} refused: ${why.message}`;
    return new RpcError(RPC_ERROR.UNAVAILABLE, message, {
      code: AUDIT_UNAVAILABLE,
      reason: message,
      since: d['since'] ?? null,
      retrying: d['permanent'] !== true,
    });
  }
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
  /** The sidecar's own files (state dir, keys, sockets): hidden in every tool's view. */
  secrets?: string[];
  /** Fail closed while the audit log cannot write (tool calls, and whatever else calls auditGate()). */
  gate?: AuditGate;
  /**
   * The group a caller's tool calls run in (the supervisor's agent group). When set, a caller it
   * finds no live group for is refused: a call never runs outside its agent's limits.
   */
  groupFor?: (caller: ToolCaller) => SandboxGroup | undefined;
}

/**
 * What a ct2 token established for one call (token-gate.ts builds it after verifying the token
 * against the call): the tool, its arguments as checked, and what the sandbox needs.
 */
export interface TokenGrant {
  tokenId: string;
  keyId: string;
  /** One per block, root first: revoking any of them stops the call. */
  revocationIds: readonly string[];
  expiresAt: number;
  /** The intersection of every block's constraints (roots for the view, domains for egress). */
  constraints: Constraints;
  tool: Tool;
  args: ToolArgs;
  argv: string[];
  /** The tighter of the tool's defaults and the token's limits. */
  limits: Limits;
  realPaths: Record<string, string>;
  /** True once any of the token's ids is known revoked (asked after the awaits before the start, and by egress). */
  revoked(): boolean;
}

/** A call ready to run: authorised by a ct1 capability or by a ct2 token. */
type Grant =
  | { kind: 'ct1'; capability: Capability; tool: Tool; argv: string[]; limits: Limits; realPaths: Record<string, string> }
  | ({ kind: 'ct2' } & TokenGrant);

interface InFlight {
  sandbox: Sandbox;
  agentId: string;
  /** ct1: stopped when it or an ancestor is revoked. */
  capability: Capability | undefined;
  /** ct2: stopped when any of these revocation ids is revoked. */
  tokenIds: readonly string[] | undefined;
  tool: string;
  group: SandboxGroup | undefined;
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
  private readonly groupWaiters = new Map<SandboxGroup, (() => void)[]>();
  private egressDir: string | undefined;
  private egressSeq = 0;

  constructor(private readonly o: ToolRunnerOptions) {}

  /**
   * The guard of every request that acts or changes a capability: throws RpcError UNAVAILABLE
   * with data.code E_AUDIT_UNAVAILABLE while the audit log cannot write (audit.onFailure: deny),
   * or lets it through and counts it as unaudited (continue). `method` names the request in the
   * metrics. A no-op without a gate.
   */
  auditGate(method: string): void {
    this.o.gate?.check(method);
  }

  /** The filesystem a tool sees: the capability's roots (writable if the tool writes), or just the files it was given. */
  private viewFor(auth: { tool: Tool; realPaths: Record<string, string> }, roots: readonly string[] | undefined): SandboxOptions['view'] {
    const { sandbox: defaults } = this.o;
    const files = auth.tool.spec.resources.filter((r) => r.kind === 'file');
    const writes = files.some((r) => r.kind === 'file' && r.access === 'write');
    // The capability's roots and the kernel's realPaths are real paths already; only the
    // operator's configured paths are resolved here.
    const real = (p: string) => {
      try {
        return realpathSync(p);
      } catch {
        return p;
      }
    };
    const readOnly = (defaults.view?.readOnly ?? []).map(real);
    const readWrite = (defaults.view?.readWrite ?? []).map(real);
    if (roots) (writes ? readWrite : readOnly).push(...roots);
    else {
      for (const r of files) {
        const p = auth.realPaths[r.arg];
        if (p === undefined) continue;
        if (r.kind === 'file' && r.access === 'write') readWrite.push(dirname(p));
        else readOnly.push(p);
      }
    }
    return { readOnly, readWrite, hide: [...(this.o.secrets ?? []), ...(defaults.view?.hide ?? [])] };
  }

  /** A proxy of this call's own, when its capability (or token) names domains: the only way out of its network namespace. */
  private async egressFor(caller: ToolCaller, grant: Grant): Promise<EgressProxy | undefined> {
    const ct1 = grant.kind === 'ct1';
    const domains = ct1 ? grant.capability.constraints.allowedDomains : grant.constraints.allowedDomains;
    if (!domains || domains.length === 0 || !this.o.sandbox.confine) return undefined;
    const entries = domains.map(parseDomainEntry).filter((e): e is DomainEntry => e !== null);
    const { kernel, audit } = this.o;
    this.egressDir ??= mkdtempSync(join(tmpdir(), 'captrap-egress-'));
    const revoked = (): boolean => (ct1 ? kernel.isRevoked(grant.capability.id) || grant.capability.ancestors.some((a) => kernel.isRevoked(a)) : grant.revoked());
    const expiresAt = ct1 ? grant.capability.expiresAt : grant.expiresAt;
    const what = ct1 ? 'capability' : 'token';
    const authorize = (host: string, port: number): EgressDecision => {
      if (revoked()) return { allowed: false, code: ct1 ? 'E_REVOKED' : 'E_TOKEN_REVOKED', reason: `the ${what} was revoked` };
      if (Date.now() >= expiresAt) return { allowed: false, code: ct1 ? 'E_EXPIRED' : 'E_TOKEN_EXPIRED', reason: `the ${what} expired` };
      if (entries.some((e) => entryMatches(e, { host, port }))) return { allowed: true };
      return { allowed: false, code: 'E_DOMAIN_NOT_ALLOWED', reason: `${host}:${port} is not in allowedDomains` };
    };
    return startEgressProxy({
      socketPath: join(this.egressDir, `${process.pid}-${++this.egressSeq}.sock`),
      authorize,
      onEvent: (e) =>
        audit.record({
          type: 'egress',
          principal: caller.principal,
          ...grantRef(grant),
          details: { ...grantDetails(grant), tool: grant.tool.name, agent: caller.agentId, host: e.host, port: e.port, method: e.method, allowed: e.allowed, ...(e.code ? { code: e.code } : {}), bytesUp: e.bytesUp, bytesDown: e.bytesDown, durationMs: Math.round(e.durationMs), ...(e.error ? { error: e.error } : {}) },
        }),
    });
  }

  /** Removes the directory of egress sockets (the sidecar's stop). */
  close(): void {
    if (this.egressDir) rmSync(this.egressDir, { recursive: true, force: true });
    this.egressDir = undefined;
  }

  /**
   * Authorises and runs one call. Throws the kernel's AccessDeniedError (audited, nothing
   * spawned), or an isolation error when the sandbox cannot start. Resolves with the result.
   */
  async invoke(caller: ToolCaller, req: InvokeRequest): Promise<ToolResult> {
    const { kernel, metrics, gate } = this.o;
    // Before the kernel is asked: a refused call leaves no record it could not write anyway.
    gate?.check('tools.invoke');
    const group = caller.group ?? this.o.groupFor?.(caller);
    if (this.o.groupFor && !group) throw new RpcError(RPC_ERROR.UNAVAILABLE, `agent ${caller.agentId} has exited`);
    let auth;
    try {
      auth = kernel.authorizeToolCall(req.capability, req.tool, req.args, { principal: caller.principal, process: caller.process });
    } catch (err) {
      metrics?.toolDenials.inc({ code: (err as { code?: string }).code ?? 'E_INTERNAL' });
      throw err;
    }
    return this.run(caller, group, { kind: 'ct1', capability: auth.capability, tool: auth.tool, argv: auth.argv, limits: auth.limits, realPaths: auth.realPaths });
  }

  /**
   * Runs one call a ct2 token authorised (token-gate.ts verified it against this very call), in
   * a sandbox built exactly as for a ct1 capability: the token's roots are the view, its limits
   * join the tightest set, the checked real paths and URLs are in `argv`.
   */
  async invokeWithToken(caller: ToolCaller, grant: TokenGrant): Promise<ToolResult> {
    this.o.gate?.check('tools.invoke');
    const group = caller.group ?? this.o.groupFor?.(caller);
    if (this.o.groupFor && !group) throw new RpcError(RPC_ERROR.UNAVAILABLE, `agent ${caller.agentId} has exited`);
    return this.run(caller, group, { kind: 'ct2', ...grant });
  }

  private async run(caller: ToolCaller, group: SandboxGroup | undefined, grant: Grant): Promise<ToolResult> {
    const { kernel, audit, sandbox: defaults, metrics, gate } = this.o;
    const auth = grant;
    // ct1 records name the capability; ct2 records name the token in their details.
    const ref = grantRef(grant);
    const tokenDetails = grantDetails(grant);
    if (gate) {
      try {
        // The authorisation is on disk before the process exists (deny mode).
        await gate.writeAhead('tools.invoke');
      } catch (err) {
        metrics?.toolDenials.inc({ code: AUDIT_UNAVAILABLE });
        // Buffered: written with the rest once the log writes again.
        audit.record({
          type: 'access_denied',
          principal: caller.principal,
          ...ref,
          process: caller.process,
          details: { code: AUDIT_UNAVAILABLE, message: (err as Error).message, operation: 'invoke', tool: auth.tool.name, ...tokenDetails },
        });
        throw err;
      }
    }
    const budget: Limits = { ...caller.budget };
    delete budget.timeoutMs;
    const limits = tightest(defaults.limits, auth.limits, budget);
    const opts: SandboxOptions & { group?: SandboxGroup } = {
      ...sandboxLimits(limits),
      ...(group ? { group } : {}),
      cgroupBase: this.o.cgroupBase,
      allowDegraded: defaults.allowDegraded,
      backend: defaults.backend,
      cwd: '/',
      env: {},
      confine: defaults.confine,
      allowRoot: caller.identity?.allowRoot ?? defaults.allowRoot,
      view: this.viewFor(auth, grant.kind === 'ct1' ? grant.capability.constraints.paths : grant.constraints.paths),
    };
    const id = caller.identity;
    if (id?.uid !== undefined) opts.uid = id.uid;
    if (id?.gid !== undefined) opts.gid = id.gid;
    if (defaults.maxOutputBytes !== undefined) opts.maxOutputBytes = defaults.maxOutputBytes;
    if (defaults.killGraceMs !== undefined) opts.killGrace = defaults.killGraceMs;
    if (defaults.namespaces !== undefined) opts.namespaces = defaults.namespaces;
    if (defaults.uid !== undefined) opts.uid = defaults.uid;
    if (defaults.gid !== undefined) opts.gid = defaults.gid;
    const [command, ...args] = auth.argv;
    const egress = await this.egressFor(caller, grant);
    if (egress) opts.egress = { proxySocket: egress.socketPath };
    let sb: Sandbox;
    try {
      sb = runSandboxed(command!, args, opts); // throws before creating anything if it cannot start
    } catch (err) {
      await egress?.close();
      throw err;
    }
    this.o.counters.start();
    const entry: InFlight = {
      sandbox: sb,
      agentId: caller.agentId,
      capability: grant.kind === 'ct1' ? grant.capability : undefined,
      tokenIds: grant.kind === 'ct2' ? grant.revocationIds : undefined,
      tool: auth.tool.name,
      group,
    };
    this.inFlight.add(entry);
    // Revoked (its agent exited, an administrator revoked it) while the write-ahead or the egress
    // proxy was awaited: the revocation's kill has already run, so stop this one here.
    if (grant.kind === 'ct1' ? kernel.isRevoked(grant.capability.id) || grant.capability.ancestors.some((a) => kernel.isRevoked(a)) : grant.revoked()) sb.kill('revoked');
    audit.record({
      type: 'sandbox_started',
      principal: caller.principal,
      ...ref,
      ...(sb.ref ? { process: { pid: sb.ref.pid, startTime: sb.ref.startTime } } : {}),
      details: { kind: 'tool', tool: auth.tool.name, agent: caller.agentId, cgroup: sb.cgroupName, limits, argv: redactArgs(auth.tool, auth.argv), confinement: sb.confinement, ...tokenDetails },
    });
    // The call stays in flight until its exit is audited: whenIdle() (the sidecar's stop, which
    // then closes the audit log) must not resolve before the sandbox_exited record is written.
    const settle = () => {
      this.inFlight.delete(entry);
      if (this.inFlight.size === 0) for (const w of this.idleWaiters.splice(0)) w();
      if (group && this.runningIn(group) === 0) {
        const ws = this.groupWaiters.get(group);
        this.groupWaiters.delete(group);
        for (const w of ws ?? []) w();
      }
    };
    let r: SandboxResult;
    try {
      r = await sb;
    } catch (err) {
      settle();
      throw err;
    } finally {
      await egress?.close().catch((err: unknown) => log.error({ err }, 'closing an egress proxy failed'));
    }
    if (r.escaped.length > 0) {
      audit.record({
        type: 'sandbox_escape',
        principal: caller.principal,
        ...ref,
        details: { kind: 'tool', tool: auth.tool.name, agent: caller.agentId, cgroup: sb.cgroupName, pids: r.escaped, ...tokenDetails },
      });
    }
    this.o.counters.end(r.reason.kind);
    metrics?.toolCalls.inc({ tool: auth.tool.name, reason: r.reason.kind });
    metrics?.toolDuration.observe({ tool: auth.tool.name }, r.durationMs / 1000);
    audit.record({
      type: 'sandbox_exited',
      principal: caller.principal,
      ...ref,
      process: { pid: r.pid, startTime: sb.ref?.startTime ?? 0 },
      details: { kind: 'tool', tool: auth.tool.name, agent: caller.agentId, reason: r.reason.kind, exitCode: r.exitCode, signal: r.signal, durationMs: Math.round(r.durationMs), memoryPeakBytes: r.usage.memoryPeakBytes ?? null, cleanedUp: r.cleanedUp, warm: r.warm, ...tokenDetails },
    });
    settle();
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

  /** Calls running in `group` (an agent's). */
  runningIn(group: SandboxGroup): number {
    let n = 0;
    for (const f of this.inFlight) if (f.group === group) n++;
    return n;
  }

  /** Resolves once no call runs in `group` (the agent's group may then be destroyed). */
  whenIdleIn(group: SandboxGroup): Promise<void> {
    if (this.runningIn(group) === 0) return Promise.resolve();
    return new Promise((r) => {
      const ws = this.groupWaiters.get(group) ?? [];
      ws.push(r);
      this.groupWaiters.set(group, ws);
    });
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
      if (c === undefined) continue;
      if (kernel.isRevoked(c.id) || c.ancestors.some((a) => kernel.isRevoked(a))) {
        f.sandbox.kill('revoked');
        n++;
      }
    }
    return n;
  }

  /** Stops every ct2 call whose token carries one of `ids` (revoked here or learned from another host). */
  killRevokedTokens(ids: ReadonlySet<string>): number {
    let n = 0;
    for (const f of this.inFlight) {
      if (f.tokenIds?.some((id) => ids.has(id))) {
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

/** The audit record's capabilityId for a ct1 call; ct2 calls name their token in the details. */
function grantRef(g: Grant): { capabilityId?: string } {
  return g.kind === 'ct1' ? { capabilityId: g.capability.id } : {};
}

const NO_DETAILS: Record<string, unknown> = Object.freeze({});

/** What a ct2 call's records carry about its token (nothing for ct1). */
function grantDetails(g: Grant): Record<string, unknown> {
  return g.kind === 'ct2' ? { tokenId: g.tokenId, keyId: g.keyId, revocationIds: g.revocationIds } : NO_DETAILS;
}
