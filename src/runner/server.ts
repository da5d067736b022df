// The agent channel's methods. Each handler is bound to one agent: the caller's principal and
// process ref come from the channel the request arrived on, never from params. Params are
// validated with zod (INVALID_PARAMS names the path); kernel denials keep the kernel's code.
import { z } from 'zod';
import { CaptrapError } from '../errors.js';
import { isToken, parseToken, RESOURCE_TYPES, type Capability } from '../kernel/capability.js';
import { checkNarrowing, ConstraintsSchema, intersectConstraints, normalizeConstraints, type Constraints, type Limits } from '../kernel/constraints.js';
import { AccessDeniedError, DelegationError, InvalidRequestError } from '../kernel/errors.js';
import { isTokenV2, TokenError } from '../kernel/tokens/index.js';
import type { AuditSink } from '../kernel/events.js';
import type { Caller, SecurityKernel } from '../kernel/kernel.js';
import { compilePattern, matchPattern, patternCovers } from '../kernel/pattern.js';
import type { ToolPolicy } from '../kernel/policy.js';
import { log } from '../log.js';
import { LimitsInput, toLimits, type CapabilityTemplate, type SidecarConfig } from './config.js';
import { RPC_ERROR, RpcError, type RpcHandler } from './jsonrpc.js';
import type { SidecarMetrics } from './metrics.js';
import { AgentRateLimiter, DEFAULT_RATE_LIMIT } from './ratelimit.js';
import type { ToolRunner } from './runner.js';
import type { TokenGate } from './token-gate.js';
import { SandboxSpawnError } from '../isolation/errors.js';
import { resolveAgentCommand, type AgentHandle, type CapabilityBook, type CapView, type Supervisor } from './supervisor.js';

export interface SidecarContext {
  kernel: SecurityKernel;
  policy: ToolPolicy;
  book: CapabilityBook;
  runner: ToolRunner;
  supervisor: Supervisor;
  audit: AuditSink;
  config: SidecarConfig;
  metrics?: SidecarMetrics;
  isStopping(): boolean;
  /** Why `principal` (or an ancestor) is quarantined by the monitor, or undefined if it is not. */
  quarantineOf?(principal: string): string | undefined;
  /** ct2 tokens (keys, validation cache, revocations); absent: ct2 tokens are refused. */
  tokens?: TokenGate;
}

const ISOLATION_CODES = new Set(['E_SANDBOX_OPTION', 'E_COMMAND_NOT_FOUND', 'E_CWD', 'E_UID', 'E_SPAWN', 'E_LIMIT_UNENFORCEABLE', 'E_CGROUP']);
const NOT_FOUND_CODES = new Set(['E_UNKNOWN_CAPABILITY', 'E_UNKNOWN_TOOL']);

/** Maps anything a handler throws to the JSON-RPC error the peer sees. */
export function toAnswerError(err: unknown): RpcError {
  if (err instanceof RpcError) return err;
  if (err instanceof InvalidRequestError) {
    const path = (err.details?.['path'] as unknown[] | undefined) ?? [];
    return new RpcError(RPC_ERROR.INVALID_PARAMS, err.message, { code: err.code, path, expected: err.message });
  }
  if (err instanceof TokenError) {
    // A ct2 refusal: its code, and what the token error says (which block refused; `cause` is
    // that block's own check, e.g. E_TOOL_NOT_ALLOWED, kept apart from `reason`, the message).
    const { reason: cause, ...details } = err.details ?? {};
    const data: Record<string, unknown> = { ...details, code: err.code, reason: err.message };
    if (cause !== undefined) data['cause'] = cause;
    return new RpcError(RPC_ERROR.ACCESS_DENIED, err.message, data);
  }
  if (err instanceof AccessDeniedError || err instanceof DelegationError) {
    const data: Record<string, unknown> = { code: err.code, reason: err.message };
    const dimension = err.details?.['dimension'];
    if (dimension !== undefined) data['dimension'] = dimension;
    return new RpcError(NOT_FOUND_CODES.has(err.code) ? RPC_ERROR.NOT_FOUND : RPC_ERROR.ACCESS_DENIED, err.message, data);
  }
  if (err instanceof CaptrapError) {
    if (ISOLATION_CODES.has(err.code)) return new RpcError(RPC_ERROR.SANDBOX_ERROR, err.message, { code: err.code, reason: err.message });
    return new RpcError(RPC_ERROR.INTERNAL_ERROR, err.message, { code: err.code });
  }
  log.error({ err }, 'internal error answering a request');
  return new RpcError(RPC_ERROR.INTERNAL_ERROR, 'internal error');
}

/** Parses params or throws INVALID_PARAMS with the first failing path and what was expected. */
export function parseParams<T>(schema: z.ZodType<T>, params: unknown): T {
  const r = schema.safeParse(params ?? {});
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const path = issue.path.map((p) => (typeof p === 'number' ? p : String(p)));
  throw new RpcError(RPC_ERROR.INVALID_PARAMS, `invalid params at ${path.join('.') || '(params)'}: ${issue.message}`, { path, expected: issue.message });
}

// ---------------------------------------------------------------------------------------------
// Param schemas. Strings are bounded: an agent is untrusted.

const Id = z.string().min(1).max(64 * 1024);
const AGENT_ID = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;
const AgentId = z.string().regex(AGENT_ID, 'an agent id of letters, digits, _ . - starting with a letter');
/** A principal: a configured agent's id, or a sub-agent's `<parent principal>/<id>`. */
export const MAX_PRINCIPAL_LENGTH = 512;
const PRINCIPAL = /^[A-Za-z][A-Za-z0-9_.-]{0,63}(\/[A-Za-z][A-Za-z0-9_.-]{0,63})*$/;
const Principal = z.string().max(MAX_PRINCIPAL_LENGTH).regex(PRINCIPAL, "a principal: an agent id, or '<parent>/<id>' for a sub-agent");
const Ops = z.array(z.string().min(1).max(256)).min(1).max(64);
const Ttl = z.number().int().positive().max(10 * 365 * 24 * 3_600_000);

const Empty = z.object({}).strict().or(z.null()).or(z.undefined());
export const DEFAULT_PAGE = 100;
export const MAX_PAGE = 1000;
const ListParams = z
  .object({ limit: z.number().int().min(1).max(MAX_PAGE).optional(), cursor: z.string().min(1).max(1024).optional() })
  .strict()
  .or(z.null())
  .or(z.undefined());
const RequestParams = z
  .object({
    resource: z.object({ type: z.enum(RESOURCE_TYPES), pattern: z.string().min(1).max(4096) }).strict(),
    operations: Ops,
    constraints: ConstraintsSchema.optional(),
    ttlMs: Ttl.optional(),
  })
  .strict();
const DelegateParams = z
  .object({ capability: Id, to: Principal, operations: Ops.optional(), constraints: ConstraintsSchema.optional(), ttlMs: Ttl.optional() })
  .strict();
const RevokeParams = z.object({ capability: Id }).strict();
const InvokeParams = z.object({ tool: z.string().min(1).max(256), args: z.record(z.string(), z.unknown()).default({}), capability: Id }).strict();
const ExportParams = z.object({ capability: Id, ttlMs: Ttl.optional() }).strict();
const SpawnParams = z
  .object({
    id: AgentId,
    /** A process capability (operation `spawn`) whose pattern covers the command's resolved path. */
    capability: Id.optional(),
    command: z.string().min(1).max(4096),
    args: z.array(z.string().max(64 * 1024)).max(1024).default([]),
    env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string().max(64 * 1024)).default({}),
    limits: LimitsInput.optional(),
    capabilities: z
      .array(z.object({ capability: Id, operations: Ops.optional(), constraints: ConstraintsSchema.optional(), ttlMs: Ttl.optional() }).strict())
      .max(256)
      .default([]),
  })
  .strict();

// ---------------------------------------------------------------------------------------------

/** The capability's id whether given as an id or a token (a token's id is only trusted once the kernel verifies it). */
function capabilityId(ref: string): string {
  if (!isToken(ref)) return ref;
  try {
    return parseToken(ref).id;
  } catch (err) {
    throw toAnswerError(err);
  }
}

function templateCovers(t: CapabilityTemplate, type: string, pattern: string, operations: string[], requested: Constraints, ttlMs: number | undefined): boolean {
  if (t.resource.type !== type) return false;
  if (operations.some((o) => !t.operations.includes(o))) return false;
  if (t.ttlMs !== undefined && ttlMs !== undefined && ttlMs > t.ttlMs) return false;
  try {
    if (!patternCovers(t.resource.pattern, pattern)) return false;
    checkNarrowing(normalizeConstraints(t.constraints), requested);
    return true;
  } catch {
    return false;
  }
}

/** Child limits: each one given must not exceed the parent's; each one left out is inherited. */
export function narrowLimits(parent: Limits, requested: Limits): Limits {
  const out: Limits = { ...parent };
  for (const k of ['memoryBytes', 'pids', 'cpu', 'timeoutMs'] as const) {
    const want = requested[k];
    if (want === undefined) continue;
    const have = parent[k];
    if (have !== undefined && want > have) {
      throw new DelegationError('E_WIDENS', `sub-agent limit ${k} ${want} exceeds the parent's ${have}`, { dimension: `limits.${k}` });
    }
    out[k] = want;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Pagination of capability lists

function encodeCursor(seq: number): string {
  return Buffer.from(JSON.stringify({ s: seq })).toString('base64url');
}

function decodeCursor(text: string): number {
  try {
    const v = JSON.parse(Buffer.from(text, 'base64url').toString('utf8')) as { s?: unknown };
    if (typeof v.s === 'number' && Number.isSafeInteger(v.s) && v.s >= 0) return v.s;
  } catch {
    // fall through
  }
  throw new RpcError(RPC_ERROR.INVALID_PARAMS, 'invalid params at cursor: not a cursor this sidecar returned', { path: ['cursor'], expected: 'a nextCursor from an earlier answer' });
}

/**
 * One page of `all` in issue order (`seq`: SecurityKernel.issueSeq, so parents come before
 * children): at most `limit` entries (default 100, max 1000) after `cursor`, and the cursor of
 * the next page (null on the last). The cursor is a place in issue order, not an index, so
 * entries pruned or issued between pages neither repeat nor hide the others; for a list that does
 * not change, every entry comes exactly once.
 */
export function paginate<T>(all: readonly T[], params: { limit?: number | undefined; cursor?: string | undefined } | null | undefined, seq: (x: T) => number): { page: T[]; nextCursor: string | null } {
  const limit = Math.min(params?.limit ?? DEFAULT_PAGE, MAX_PAGE);
  const after = params?.cursor !== undefined ? decodeCursor(params.cursor) : 0;
  const sorted = all.map((x) => [seq(x), x] as const).filter(([n]) => n > after);
  sorted.sort((a, b) => a[0] - b[0]);
  const page = sorted.slice(0, limit);
  return { page: page.map(([, x]) => x), nextCursor: page.length < sorted.length ? encodeCursor(page[page.length - 1]![0]) : null };
}

// ---------------------------------------------------------------------------------------------
// Upkeep that belongs to the kernel and the book: forgetting expired capabilities

const maintained = new WeakSet<SecurityKernel>();

/**
 * Prunes expired capabilities every `config.pruneIntervalMs` (default 60 s): the kernel forgets
 * them and compacts its revocation file, the book drops them. Idempotent per kernel; the timer
 * is unref'd and stops with kernel.close(). agentHandlers calls it, so serve prunes as soon as
 * an agent runs; the sidecar may call it at start.
 */
export function startMaintenance(ctx: Pick<SidecarContext, 'kernel' | 'book' | 'config'>): void {
  if (maintained.has(ctx.kernel)) return;
  maintained.add(ctx.kernel);
  ctx.kernel.onPruned((ids) => ctx.book.forget(ids));
  ctx.kernel.startPruning(ctx.config.pruneIntervalMs ?? 60_000, (err) => log.error({ err }, 'pruning expired capabilities failed'));
}

/** The configured agent at the root of a principal's tree (`planner/worker/x` -> `planner`). */
export function rootOf(principal: string): string {
  const i = principal.indexOf('/');
  return i < 0 ? principal : principal.slice(0, i);
}

export function agentHandlers(ctx: SidecarContext, agent: AgentHandle): Record<string, RpcHandler> {
  const { kernel, book, runner, supervisor, policy, audit } = ctx;
  const caller: Caller = { principal: agent.id, process: agent.ref };
  const now = () => Date.now();
  startMaintenance(ctx);
  const limiter = new AgentRateLimiter({
    limit: ctx.config.rateLimit ?? DEFAULT_RATE_LIMIT,
    audit,
    principal: agent.id,
    process: agent.ref,
    alive: () => agent.state === 'running' && !ctx.isStopping(),
  });

  /** Capabilities the caller can use right now: its principal's, live, unbound or bound to this very process. */
  const usable = (): Capability[] =>
    book.ofPrincipal(agent.id).filter((c) => book.isLive(c, now()) && (c.holder === null || (c.holder.pid === agent.ref.pid && c.holder.startTime === agent.ref.startTime)));

  /**
   * The kernel decides a sub-agent launch: a process capability held by the caller, operation
   * `spawn`, its pattern (and allowedCommands, if any) against the command's real absolute path.
   * Returns that path: it is what runs, so what was checked is what executes.
   */
  const authorizeSpawn = (ref: string | undefined, requested: string, env: Record<string, string>): string => {
    const deny = (code: string, message: string, details: Record<string, unknown>): never => {
      audit.record({ type: 'access_denied', principal: agent.id, ...(ref !== undefined && !isToken(ref) ? { capabilityId: ref } : {}), process: agent.ref, details: { code, message, operation: 'spawn', ...details } });
      throw new RpcError(RPC_ERROR.ACCESS_DENIED, message, { code, reason: message });
    };
    if (ref === undefined) return deny('E_CAPABILITY_REQUIRED', 'agents.spawn needs a process capability (operation spawn) covering the command', { command: requested });
    const resolved = resolveAgentCommand(requested, agent.spec.cwd, env.PATH);
    // An unresolvable command is checked as given: the kernel denies it unless the pattern names it.
    const resource = resolved ?? requested;
    const { capability } = kernel.validateCapability(ref, 'spawn', resource, { ...caller, commands: [{ command: resource, arg: 'command' }] });
    if (capability.resourceType !== 'process') {
      return deny('E_RESOURCE_NOT_PERMITTED', `capability ${capability.id} grants ${capability.resourceType} access, not process spawns`, { resourceType: capability.resourceType });
    }
    if (!resolved) throw new SandboxSpawnError('E_COMMAND_NOT_FOUND', `command '${requested}' not found or not executable`, { command: requested });
    return resolved;
  };

  const issued = (c: Capability): CapView => {
    book.add(c);
    return book.view(c);
  };

  const wrap =
    <T>(schema: z.ZodType<T>, fn: (p: T) => unknown): RpcHandler =>
    async (params, method) => {
      try {
        if (ctx.isStopping()) throw new RpcError(RPC_ERROR.UNAVAILABLE, 'the sidecar is shutting down');
        if (agent.state !== 'running') throw new RpcError(RPC_ERROR.UNAVAILABLE, 'this agent has exited');
        const quarantine = ctx.quarantineOf?.(agent.id);
        if (quarantine !== undefined) {
          const reason = `${agent.id} is quarantined by the monitor (${quarantine}); an operator lifts it with 'captrap release'`;
          throw new RpcError(RPC_ERROR.ACCESS_DENIED, reason, { code: 'E_QUARANTINED', reason });
        }
        if (!limiter.admit(method)) {
          // Refused before the kernel or the audit log sees it: a flood costs little. Audited once per episode (ratelimit.ts).
          const reason = `rate limited: more than ${limiter.limitPerSecond} requests/s on this channel; retry later`;
          throw new RpcError(RPC_ERROR.ACCESS_DENIED, reason, { code: 'E_RATE_LIMITED', reason, retryAfterMs: limiter.retryAfterMs() });
        }
        return await fn(parseParams(schema, params));
      } catch (err) {
        const e = toAnswerError(err);
        ctx.metrics?.rpcErrors.inc({ channel: 'agent', code: String(e.rpcCode) });
        log.debug({ agent: agent.id, method, code: e.rpcCode }, 'agent request failed');
        throw e;
      }
    };

  /**
   * Keeps what one agent can make the kernel hold bounded, charged to the one who asks: its own
   * live capabilities (configured, requested, or narrowed from what it holds) for a request, the
   * live capabilities it has given to others for a delegation. What others give an agent never
   * counts against its own requests, so nobody can fill another agent's quota.
   */
  const ownLive = (principal: string): number => {
    const t = now();
    return book.ofPrincipal(principal).filter((c) => book.isLive(c, t) && (c.parentId === null || book.get(c.parentId)?.principal === principal)).length;
  };
  const givenLive = (giver: string): number => {
    const t = now();
    let n = 0;
    for (const c of book.ofPrincipal(giver)) {
      for (const k of kernel.childrenOf(c.id)) {
        const child = book.get(k);
        if (child && child.principal !== giver && book.isLive(child, t)) n++;
      }
    }
    return n;
  };
  const checkQuota = (kind: 'own' | 'given', adding = 1): void => {
    const max = ctx.config.maxCapabilitiesPerAgent;
    const live = kind === 'own' ? ownLive(agent.id) : givenLive(agent.id);
    if (live + adding > max) {
      const what = kind === 'own' ? 'holds' : 'has delegated to others';
      denyRequest('E_TOO_MANY_CAPABILITIES', `'${agent.id}' ${what} ${live} live capabilities; the limit is ${max} (maxCapabilitiesPerAgent)`, { principal: agent.id, kind, live, adding, max });
    }
  };

  /**
   * A capability reference must name one this sidecar run issued: a token from an earlier run
   * (before a restart on the same state dir) is refused, so a capability that was never bound,
   * or bound to a principal's earlier process, cannot be picked up by a new process that got the
   * same principal. Tokens that do not parse or verify are left to the kernel (it says why).
   */
  const checkIssuedHere = (ref: string, operation: string): void => {
    if (!isToken(ref)) return;
    let id: string;
    try {
      id = parseToken(ref).id;
    } catch {
      return;
    }
    // A forgery is left to the kernel too: it refuses it with the precise code (bad signature, unknown key).
    if (book.has(id) || !kernel.isAuthentic(ref)) return;
    const message = `capability ${id} was not issued by this sidecar run (or has expired and been forgotten)`;
    audit.record({ type: 'access_denied', principal: agent.id, capabilityId: id, process: agent.ref, details: { code: 'E_NOT_ISSUED_HERE', message, operation } });
    throw new RpcError(RPC_ERROR.ACCESS_DENIED, message, { code: 'E_NOT_ISSUED_HERE', reason: message });
  };

  /** tools.invoke with a ct2 token: verified for this channel's principal, then run as a ct1 call would be. */
  const invokeWithToken = (tool: string, args: Record<string, unknown>, token: string) => {
    const tokens = ctx.tokens;
    if (!tokens) throw new RpcError(RPC_ERROR.ACCESS_DENIED, 'this sidecar does not accept ct2 tokens', { code: 'E_TOKEN_UNSUPPORTED', reason: 'this sidecar does not accept ct2 tokens' });
    // Before the token is checked, as for ct1: a refused call leaves no record it could not write.
    runner.auditGate('tools.invoke');
    if (runner.runningFor(agent.id) >= ctx.config.maxToolCallsPerAgent) {
      throw new RpcError(RPC_ERROR.UNAVAILABLE, `too many tool calls in flight for ${agent.id} (maxToolCallsPerAgent ${ctx.config.maxToolCallsPerAgent})`);
    }
    const grant = tokens.authorize(agent.id, agent.ref, tool, args, token);
    return runner.invokeWithToken({ principal: agent.id, process: agent.ref, agentId: agent.id, budget: agent.spec.limits, identity: agent.identity }, grant);
  };

  const denyRequest = (code: string, message: string, details: Record<string, unknown>): never => {
    audit.record({ type: 'capability_denied', principal: agent.id, process: agent.ref, details: { code, message, ...details } });
    throw new RpcError(RPC_ERROR.ACCESS_DENIED, message, { code, reason: message });
  };

  return {
    'capabilities.list': wrap(ListParams, (p) => {
      const { page, nextCursor } = paginate(book.ofPrincipal(agent.id), p, (c) => kernel.issueSeq(c.id) ?? Number.MAX_SAFE_INTEGER);
      return { capabilities: page.map((c) => book.view(c)), nextCursor };
    }),

    'capabilities.request': wrap(RequestParams, (p) => {
      runner.auditGate('capabilities.request');
      checkQuota('own');
      const requested = normalizeConstraints(p.constraints ?? {});
      // A configured template first: the result is a root capability bound to this process.
      for (const t of agent.spec.requestable) {
        if (!templateCovers(t, p.resource.type, p.resource.pattern, p.operations, requested, p.ttlMs)) continue;
        const ttlMs = p.ttlMs ?? t.ttlMs;
        const c = kernel.requestCapability(agent.id, p.resource, p.operations, intersectConstraints(normalizeConstraints(t.constraints), requested), {
          ...(ttlMs !== undefined ? { ttlMs } : {}),
          holder: agent.ref,
        });
        return issued(c);
      }
      // Otherwise a narrowing of something the agent already holds: a child of it, bound here.
      for (const held of usable()) {
        if (held.resourceType !== p.resource.type || p.operations.some((o) => !held.operations.includes(o))) continue;
        let covers = false;
        try {
          covers = patternCovers(held.resource, p.resource.pattern);
          checkNarrowing(held.constraints, requested);
        } catch {
          covers = false;
        }
        // A tool capability whose allowedTools exclude the one named would be granted but useless.
        if (covers && held.resourceType === 'tool' && held.constraints.allowedTools && compilePattern(p.resource.pattern).kind === 'exact') {
          covers = held.constraints.allowedTools.includes(p.resource.pattern);
        }
        if (!covers) continue;
        const c = kernel.delegate(held.id, agent.id, { resource: p.resource.pattern, operations: p.operations, constraints: requested, ...(p.ttlMs !== undefined ? { ttlMs: p.ttlMs } : {}), holder: agent.ref }, caller);
        return issued(c);
      }
      return denyRequest('E_NOT_REQUESTABLE', `no requestable template or held capability covers ${p.resource.type} '${p.resource.pattern}' with [${p.operations.join(', ')}]`, {
        resourceType: p.resource.type,
        resource: p.resource.pattern,
        operations: p.operations,
      });
    }),

    'capabilities.delegate': wrap(DelegateParams, (p) => {
      runner.auditGate('capabilities.delegate');
      checkIssuedHere(p.capability, 'delegate');
      // Delegating to a running agent binds the child to that agent's process: it dies with it.
      // Otherwise only to a sub-agent of the caller's own that is not running yet (`<caller>/<id>`):
      // it is bound to that sub-agent's process when the caller spawns it, and nobody else can
      // spawn a principal in the caller's namespace. Anything else could be squatted.
      const target = supervisor.runningAgent(p.to);
      if (!target) {
        const own = p.to.startsWith(`${agent.id}/`) && AGENT_ID.test(p.to.slice(agent.id.length + 1));
        if (!own) {
          denyRequest('E_UNKNOWN_AGENT', `'${p.to}' is not a running agent; a delegation goes to a running agent, or to a sub-agent of yours not yet spawned ('${agent.id}/<id>')`, {
            to: p.to,
            operation: 'delegate',
          });
        }
      }
      checkQuota('given');
      const c = kernel.delegate(
        p.capability,
        p.to,
        {
          ...(p.operations !== undefined ? { operations: p.operations } : {}),
          ...(p.constraints !== undefined ? { constraints: p.constraints } : {}),
          ...(p.ttlMs !== undefined ? { ttlMs: p.ttlMs } : {}),
          ...(target ? { holder: target.ref } : {}),
        },
        caller,
      );
      return issued(c);
    }),

    'capabilities.revoke': wrap(RevokeParams, (p) => {
      runner.auditGate('capabilities.revoke');
      const id = capabilityId(p.capability);
      const c = book.get(id);
      if (!c) throw new RpcError(RPC_ERROR.NOT_FOUND, `no capability ${id} is known to this sidecar`, { code: 'E_UNKNOWN_CAPABILITY', reason: 'unknown capability' });
      const mine = c.principal === agent.id || c.ancestors.some((a) => book.get(a)?.principal === agent.id);
      if (!mine) {
        const message = `capability ${id} is neither held by '${agent.id}' nor delegated from one it holds`;
        audit.record({ type: 'access_denied', principal: agent.id, capabilityId: id, process: agent.ref, details: { code: 'E_NOT_OWNER', message, operation: 'revoke' } });
        throw new RpcError(RPC_ERROR.ACCESS_DENIED, message, { code: 'E_NOT_OWNER', reason: message });
      }
      const revoked = kernel.revokeCapability(id, `revoked by agent ${agent.id}`);
      runner.killRevoked();
      return { revoked };
    }),

    'capabilities.export': wrap(ExportParams, (p) => {
      runner.auditGate('capabilities.export');
      const tokens = ctx.tokens;
      if (!tokens) throw new RpcError(RPC_ERROR.ACCESS_DENIED, 'this sidecar does not issue ct2 tokens', { code: 'E_TOKEN_UNSUPPORTED', reason: 'this sidecar does not issue ct2 tokens' });
      checkIssuedHere(p.capability, 'export');
      const id = capabilityId(p.capability);
      // A token given instead of an id must be genuine (the id alone would not need to be).
      if (isToken(p.capability) && !kernel.isAuthentic(p.capability)) {
        const message = `capability token for ${id} does not verify`;
        audit.record({ type: 'access_denied', principal: agent.id, capabilityId: id, process: agent.ref, details: { code: 'E_BAD_SIGNATURE', message, operation: 'export' } });
        throw new RpcError(RPC_ERROR.ACCESS_DENIED, message, { code: 'E_BAD_SIGNATURE', reason: message });
      }
      const c = usable().find((x) => x.id === id);
      if (!c) {
        const known = book.get(id);
        if (!known) throw new RpcError(RPC_ERROR.NOT_FOUND, `no capability ${id} is known to this sidecar`, { code: 'E_UNKNOWN_CAPABILITY', reason: 'unknown capability' });
        const code = known.principal !== agent.id ? 'E_WRONG_PRINCIPAL' : !book.isLive(known, now()) ? (now() >= known.expiresAt ? 'E_EXPIRED' : 'E_REVOKED') : 'E_WRONG_HOLDER';
        const message = `capability ${id} is not one '${agent.id}' can use now (${code})`;
        audit.record({ type: 'access_denied', principal: agent.id, capabilityId: id, process: agent.ref, details: { code, message, operation: 'export' } });
        throw new RpcError(RPC_ERROR.ACCESS_DENIED, message, { code, reason: message });
      }
      return tokens.exportCapability(c, agent.id, p.ttlMs);
    }),

    'tools.list': wrap(Empty, () => {
      const caps = usable().filter((c) => c.resourceType === 'tool' && c.operations.includes('invoke'));
      const tools = policy
        .names()
        .filter((name) => caps.some((c) => matchPattern(c.resource, name) && (c.constraints.allowedTools === undefined || c.constraints.allowedTools.includes(name))))
        .map((name) => {
          const t = policy.tool(name)!;
          return { name, ...(t.spec.description !== undefined ? { description: t.spec.description } : {}), args: t.spec.args };
        });
      return { tools };
    }),

    'tools.invoke': wrap(InvokeParams, async (p) => {
      if (isTokenV2(p.capability)) return invokeWithToken(p.tool, p.args, p.capability);
      checkIssuedHere(p.capability, 'invoke');
      if (runner.runningFor(agent.id) >= ctx.config.maxToolCallsPerAgent) {
        throw new RpcError(RPC_ERROR.UNAVAILABLE, `too many tool calls in flight for ${agent.id} (maxToolCallsPerAgent ${ctx.config.maxToolCallsPerAgent})`);
      }
      return runner.invoke({ principal: agent.id, process: agent.ref, agentId: agent.id, budget: agent.spec.limits, identity: agent.identity }, { tool: p.tool, args: p.args, capability: p.capability });
    }),

    'agents.spawn': wrap(SpawnParams, (p) => {
      runner.auditGate('agents.spawn');
      // Starting a process is gated like a tool call, before anything is spawned: fail closed.
      if (p.capability !== undefined) checkIssuedHere(p.capability, 'spawn');
      for (const d of p.capabilities) checkIssuedHere(d.capability, 'delegate');
      const command = authorizeSpawn(p.capability, p.command, p.env);
      // The sub-agent's principal lives in the caller's namespace: nobody else can spawn it.
      const principal = `${agent.id}/${p.id}`;
      if (principal.length > MAX_PRINCIPAL_LENGTH) throw new RpcError(RPC_ERROR.INVALID_PARAMS, `sub-agent principal '${principal.slice(0, 80)}…' is longer than ${MAX_PRINCIPAL_LENGTH} characters`, { path: ['id'], expected: 'a shorter id (or fewer levels of sub-agents)' });
      // Each configured agent's tree has its own sub-agent quota: no agent can use up another's.
      const root = rootOf(agent.id);
      const subs = supervisor.running().filter((a) => a.id.startsWith(`${root}/`)).length;
      const maxSubs = ctx.config.maxSubAgentsPerAgent ?? 16;
      if (subs >= maxSubs) {
        const message = `'${root}' and its sub-agents already run ${subs} sub-agents; the limit is ${maxSubs} (maxSubAgentsPerAgent)`;
        throw new RpcError(RPC_ERROR.UNAVAILABLE, message, { code: 'E_TOO_MANY_SUBAGENTS', reason: message });
      }
      checkQuota('given', p.capabilities.length);
      const limits = narrowLimits(agent.spec.limits, toLimits(p.limits));
      const granted: Capability[] = [];
      const sub = supervisor.launch(
        {
          id: principal,
          command,
          args: p.args,
          cwd: agent.spec.cwd,
          env: p.env,
          ...(agent.spec.namespaces !== undefined ? { namespaces: agent.spec.namespaces } : {}),
          ...(agent.spec.uid !== undefined ? { uid: agent.spec.uid } : {}),
          ...(agent.spec.gid !== undefined ? { gid: agent.spec.gid } : {}),
          ...(agent.spec.allowRoot !== undefined ? { allowRoot: agent.spec.allowRoot } : {}),
          ...(agent.spec.confine !== undefined ? { confine: agent.spec.confine } : {}),
          ...(agent.spec.view !== undefined ? { view: agent.spec.view } : {}),
          limits,
          requestable: [],
        },
        agent,
        (child) => {
          for (const d of p.capabilities) {
            const c = kernel.delegate(
              d.capability,
              child.id,
              {
                ...(d.operations !== undefined ? { operations: d.operations } : {}),
                ...(d.constraints !== undefined ? { constraints: d.constraints } : {}),
                ...(d.ttlMs !== undefined ? { ttlMs: d.ttlMs } : {}),
                holder: child.ref,
              },
              caller,
            );
            book.add(c);
            granted.push(c);
          }
          // What the caller delegated to this principal before spawning it: bound to this process now.
          for (const c of book.ofPrincipal(child.id)) {
            if (c.holder !== null || !book.isLive(c, now())) continue;
            try {
              const bound = kernel.bindToProcess(c.id, child.ref);
              granted.push(bound);
            } catch (err) {
              log.debug({ err, capability: c.id, agent: child.id }, 'binding a capability to a new sub-agent failed');
            }
          }
        },
      );
      return { id: sub.id, pid: sub.ref.pid, startTime: sub.ref.startTime, capabilities: granted.map((c) => book.view(c)) };
    }),
  };
}
