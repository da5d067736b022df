// The admin socket: a Unix socket (mode 0600, owner only) speaking the same NDJSON JSON-RPC as
// the agent channels. The CLI (ps, caps, revoke, kill, stats) talks to it.
import { chmodSync, existsSync, lstatSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { z } from 'zod';
import { CaptrapError } from '../errors.js';
import type { AuditStats } from '../kernel/events.js';
import type { KernelStats } from '../kernel/kernel.js';
import { RESOURCE_TYPES } from '../kernel/capability.js';
import { ConstraintsSchema } from '../kernel/constraints.js';
import { InvalidRequestError } from '../kernel/errors.js';
import { isTokenV2 } from '../kernel/tokens/index.js';
import { TokenGate, type TokenGateStats } from './token-gate.js';
import type { RevocationStatus } from './token-revocations.js';
import { RPC_ERROR, RpcConnection, RpcError, type RpcHandler } from './jsonrpc.js';
import type { SandboxCounters } from './runner.js';
import { paginate, parseParams, toAnswerError, type SidecarContext } from './server.js';

export class AdminSocketError extends CaptrapError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('E_ADMIN_SOCKET', message, details);
  }
}

/** The audit log's own figures plus what the sidecar's gate did with them (audit.onFailure). */
export type SidecarAuditStats = AuditStats & {
  /** deny: requests are refused while `available` is false; continue: they run unaudited. */
  onFailure?: 'deny' | 'continue';
  /** Requests refused with E_AUDIT_UNAVAILABLE since start. */
  refusedCalls?: number;
  /** Requests run while the log could not write (onFailure: continue) since start. */
  unauditedCalls?: number;
};

export interface AdminContext extends SidecarContext {
  counters: SandboxCounters;
  /** The violation monitor's quarantine, once monitoring has started (`captrap release`). */
  quarantine?: { release(principal: string, by: string): boolean; quarantined(): { principal: string; since: string; type: string }[] };
  startedAt: number;
  auditStats(): SidecarAuditStats | null;
  metricsText(): Promise<string>;
  /** With revocations.shipAudit: the shipper's counters. */
  auditShipping?(): Record<string, unknown> | undefined;
}

export interface AgentRow {
  id: string;
  parent: string | null;
  pid: number;
  startTime: number;
  state: 'running' | 'exited';
  exitReason: string | null;
  limits: Record<string, number>;
  usage: { memoryBytes: number | null; memoryPeakBytes: number | null; cpuUsageUs: number | null };
  /** The agent's group (its limits bound the agent, its tools and its sub-agents): path and usage of the whole subtree. */
  group: { path: string; usage: { memoryBytes: number | null; cpuUsageUs: number | null; processes: number } } | null;
  capabilities: number;
  toolsRunning: number;
}

export interface SidecarStats {
  kernel: KernelStats;
  audit: SidecarAuditStats | null;
  sandboxes: { running: number; started: number; exited: number; byReason: Record<string, number> };
  agents: { running: number; exited: number };
  uptimeMs: number;
  rssBytes: number;
  /** ct2 tool calls allowed and refused, and the validation cache's figures. */
  tokens?: TokenGateStats;
  /** The ct2 revocation source: backend, ids known, whether it can be trusted now. */
  revocations?: RevocationStatus;
  /** With revocations.shipAudit: records shipped, duplicates, queued, dropped, connected. */
  auditShipping?: Record<string, unknown>;
}

const Empty = z.object({}).strict().or(z.null()).or(z.undefined());
const CapsParams = z
  .object({ principal: z.string().min(1).max(256).optional(), limit: z.number().int().min(1).max(1000).optional(), cursor: z.string().min(1).max(64).optional() })
  .strict()
  .or(z.null())
  .or(z.undefined());
const RevokeParams = z.union([z.object({ id: z.string().min(1).max(64 * 1024) }).strict(), z.object({ principal: z.string().min(1).max(256) }).strict()]);
const KillParams = z.object({ id: z.string().min(1).max(256) }).strict();
const ReleaseParams = z.object({ principal: z.string().min(1).max(256) }).strict();
const Ops = z.array(z.string().min(1).max(256)).min(1).max(64);
/** The options of `captrap token issue`, with the ttl in ms. */
const TokenIssueParams = z
  .object({
    resourceType: z.enum(RESOURCE_TYPES),
    resource: z.string().min(1).max(4096),
    operations: Ops,
    ttlMs: z.number().int().positive().max(10 * 365 * 24 * 3_600_000),
    principal: z.string().min(1).max(512).optional(),
    constraints: ConstraintsSchema.optional(),
    when: z.string().min(1).max(4096).optional(),
  })
  .strict();
const TokenRevokeParams = z
  .object({
    ids: z.array(z.string().regex(/^[0-9a-f]{64}$/, 'a revocation id: 64 hex characters')).max(1024).optional(),
    token: z.string().max(64 * 1024).refine(isTokenV2, 'a ct2 token (ct2....)').optional(),
    reason: z.string().min(1).max(1024).optional(),
  })
  .strict()
  .refine((p) => (p.ids?.length ?? 0) > 0 || p.token !== undefined, 'give ids or a token');

export function adminHandlers(ctx: AdminContext): Record<string, RpcHandler> {
  const { kernel, book, runner, supervisor } = ctx;
  const wrap =
    <T>(schema: z.ZodType<T>, fn: (p: T) => unknown): RpcHandler =>
    async (params) => {
      try {
        return await fn(parseParams(schema, params));
      } catch (err) {
        const e = toAnswerError(err);
        ctx.metrics?.rpcErrors.inc({ channel: 'admin', code: String(e.rpcCode) });
        throw e;
      }
    };
  return {
    'agents.list': wrap(Empty, async () => {
      const agents: AgentRow[] = await Promise.all(
        supervisor.list().map(async (a) => {
          let usage: AgentRow['usage'] = { memoryBytes: null, memoryPeakBytes: null, cpuUsageUs: null };
          if (a.state === 'running') {
            try {
              const u = (await a.sandbox.usage()).cgroup;
              usage = { memoryBytes: u.memoryCurrentBytes ?? null, memoryPeakBytes: u.memoryPeakBytes ?? null, cpuUsageUs: u.cpuUsageUs ?? null };
            } catch {
              // exited while being read
            }
          }
          let group: AgentRow['group'] = null;
          if (!a.group.removed) {
            try {
              const u = a.group.usage();
              group = { path: a.group.path, usage: { memoryBytes: u.memoryCurrentBytes ?? null, cpuUsageUs: u.cpuUsageUs ?? null, processes: a.group.pids().length } };
            } catch {
              // removed while being read
            }
          }
          const now = Date.now();
          return {
            id: a.id,
            parent: a.parent,
            pid: a.ref.pid,
            startTime: a.ref.startTime,
            state: a.state,
            exitReason: a.exitReason,
            limits: { ...a.spec.limits },
            usage,
            group,
            capabilities: book.ofPrincipal(a.id).filter((c) => book.isLive(c, now)).length,
            toolsRunning: runner.runningFor(a.id),
          };
        }),
      );
      return { agents };
    }),
    'capabilities.list': wrap(CapsParams, (p) => {
      // Without limit/cursor: the whole tree, parents first (what `captrap caps` draws). With
      // them: pages in issue order (parents still first), each entry once across pages.
      if (p?.limit === undefined && p?.cursor === undefined) return { capabilities: book.tree(p?.principal).map((c) => book.view(c)) };
      const { page, nextCursor } = paginate(book.tree(p?.principal), p, (c) => kernel.issueSeq(c.id) ?? Number.MAX_SAFE_INTEGER);
      return { capabilities: page.map((c) => book.view(c)), nextCursor };
    }),
    'capabilities.revoke': wrap(RevokeParams, (p) => {
      let revoked: string[];
      if ('id' in p) {
        if (!book.has(p.id) && !kernel.getCapability(p.id)) throw new RpcError(RPC_ERROR.NOT_FOUND, `no capability ${p.id} is known to this sidecar`, { code: 'E_UNKNOWN_CAPABILITY', reason: 'unknown capability' });
        revoked = kernel.revokeCapability(p.id, 'revoked by the administrator');
      } else {
        revoked = kernel.revokeAllForPrincipal(p.principal, 'revoked by the administrator');
      }
      runner.killRevoked();
      return { revoked };
    }),
    'agents.kill': wrap(KillParams, (p) => {
      if (!supervisor.kill(p.id, 'killed')) throw new RpcError(RPC_ERROR.NOT_FOUND, `no running agent '${p.id}'`, { code: 'E_UNKNOWN_AGENT', reason: 'unknown agent' });
      return { killed: true };
    }),
    'principals.release': wrap(ReleaseParams, (p) => {
      const q = ctx.quarantine;
      if (!q?.release(p.principal, 'administrator')) {
        throw new RpcError(RPC_ERROR.NOT_FOUND, `principal '${p.principal}' is not quarantined${q ? ` (quarantined: ${q.quarantined().map((x) => x.principal).join(', ') || 'none'})` : ' (the monitor is not running)'}`, { code: 'E_NOT_QUARANTINED', reason: 'not quarantined' });
      }
      return { released: true };
    }),
    stats: wrap(Empty, (): SidecarStats => {
      const c = ctx.counters;
      const all = supervisor.list();
      const running = all.filter((a) => a.state === 'running').length;
      return {
        kernel: kernel.stats(),
        audit: ctx.auditStats(),
        sandboxes: { running: c.running, started: c.started, exited: c.exited, byReason: { ...c.byReason } },
        agents: { running, exited: all.length - running },
        uptimeMs: Date.now() - ctx.startedAt,
        rssBytes: process.memoryUsage.rss(),
        ...(ctx.tokens ? { tokens: ctx.tokens.stats(), revocations: ctx.tokens.revocationStatus() } : {}),
        ...(() => {
          const shipping = ctx.auditShipping?.();
          return shipping ? { auditShipping: shipping } : {};
        })(),
      };
    }),
    'tokens.issue': wrap(TokenIssueParams, (p) => {
      runner.auditGate('tokens.issue');
      return tokensOf(ctx).issue({
        resourceType: p.resourceType,
        resource: p.resource,
        operations: p.operations,
        ttlMs: p.ttlMs,
        ...(p.principal !== undefined ? { principal: p.principal } : {}),
        ...(p.constraints !== undefined ? { constraints: p.constraints } : {}),
        ...(p.when !== undefined ? { when: p.when } : {}),
      });
    }),
    'tokens.revoke': wrap(TokenRevokeParams, async (p) => {
      runner.auditGate('tokens.revoke');
      // A presented token is revoked by its last block's id: that copy and whatever is attenuated
      // from it, never its parent or siblings (revoke block 0's id, from --json, for the family).
      const ids = [...(p.ids ?? []), ...(p.token !== undefined ? [TokenGate.lastBlockId(p.token)] : [])];
      let revoked;
      try {
        revoked = await tokensOf(ctx).revoke([...new Set(ids)], p.reason ?? 'revoked by the administrator');
      } catch (err) {
        // Not durable (a file that cannot be written, a NATS server away): refused on this host
        // from now on, but say so; the E_* code tells which.
        if (err instanceof CaptrapError && !(err instanceof RpcError) && !(err instanceof InvalidRequestError)) {
          throw new RpcError(RPC_ERROR.UNAVAILABLE, `${err.message} (the ids are refused on this host)`, { code: err.code, reason: err.message, ids });
        }
        throw err;
      }
      return { revoked };
    }),
    metrics: wrap(Empty, async () => ({ text: await ctx.metricsText() })),
  };
}

/** True if something answers on the socket path (another sidecar is running there). */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection(path);
    const done = (v: boolean) => {
      s.destroy();
      resolve(v);
    };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
    setTimeout(() => done(false), 1000).unref();
  });
}

export class AdminServer {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private listening = false;

  private constructor(
    readonly path: string,
    handlers: Record<string, RpcHandler>,
  ) {
    this.server = createServer((sock) => {
      this.sockets.add(sock);
      sock.on('error', () => {});
      sock.on('close', () => this.sockets.delete(sock));
      new RpcConnection(sock, sock, { handlers, maxLineBytes: 64 * 1024, maxInFlight: 16 });
    });
  }

  /** Listens on `path`, created 0600. A stale socket file is replaced; a live one is an error. */
  static async listen(path: string, handlers: Record<string, RpcHandler>): Promise<AdminServer> {
    if (existsSync(path)) {
      if (!lstatSync(path).isSocket()) throw new AdminSocketError(`${path} exists and is not a socket; refusing to replace it`, { path });
      if (await socketAnswers(path)) throw new AdminSocketError(`another sidecar is listening on ${path}`, { path });
      unlinkSync(path);
    }
    const s = new AdminServer(path, handlers);
    // The umask makes the socket owner-only from the moment it exists; chmod then states it.
    const old = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        s.server.once('error', reject);
        s.server.listen(path, () => {
          s.server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(old);
    }
    chmodSync(path, 0o600);
    s.listening = true;
    return s;
  }

  /** Stops accepting, drops open admin connections and removes the socket file. */
  async close(): Promise<void> {
    if (!this.listening) return;
    this.listening = false;
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    for (const s of this.sockets) s.destroy();
    await closed;
    try {
      unlinkSync(this.path);
    } catch {
      // already gone (server.close removes it on some platforms)
    }
  }
}

function tokensOf(ctx: AdminContext): TokenGate {
  if (!ctx.tokens) throw new RpcError(RPC_ERROR.UNAVAILABLE, 'ct2 tokens are not open on this sidecar', { code: 'E_TOKEN_UNSUPPORTED', reason: 'ct2 tokens are not open' });
  return ctx.tokens;
}
