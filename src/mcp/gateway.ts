// What every front of the gateway (stdio, HTTP) shares: a kernel whose audit events carry the
// gateway's context, the capability each client acts under, and the sandbox an upstream
// server runs in (its roots bound into its view, its command and script visible read-only).
import { existsSync, mkdtempSync, realpathSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { entryMatches, parseDomainEntry, type DomainEntry } from '../kernel/domains.js';
import { startEgressProxy, type EgressDecision, type EgressProxy } from '../runner/egress.js';
import type { Capability } from '../kernel/capability.js';
import type { Constraints, Limits } from '../kernel/constraints.js';
import type { AuditSink } from '../kernel/events.js';
import { SecurityKernel } from '../kernel/kernel.js';
import type { Keyring } from '../kernel/keyring.js';
import type { RunOptions } from '../isolation/sandbox.js';
import type { NamespaceName } from '../isolation/limits.js';
import { ContextualAuditSink } from './audit-context.js';
import { McpGate } from './gate.js';
import type { ArgumentKind, ToolOverride } from './kinds.js';
import { GatewaySession } from './session.js';
import type { UpstreamEvent, UpstreamSpec } from './upstream.js';

/** One upstream server as the gateway runs it (from the quick form's flags or a config entry). */
export interface McpServerSpec {
  name: string;
  command: string;
  args: string[];
  env?: Record<string, string>;
  cwd?: string;
  /** Limits of the server's one long-lived sandbox (never a timeout: the server lives on). */
  limits?: Pick<Limits, 'memoryBytes' | 'pids' | 'cpu'>;
  view?: { readOnly?: string[]; readWrite?: string[]; hide?: string[] };
  uid?: number;
  gid?: number;
  allowRoot?: boolean;
  namespaces?: NamespaceName[];
  confine?: boolean;
  cgroupBase?: string;
  allowDegraded?: boolean;
  tools?: Record<string, { arguments?: Record<string, ArgumentKind>; operation?: ToolOverride['operation']; secret?: string[] }>;
}

/** What one client may do: the capability it is issued when its session starts. */
export interface McpClientSpec {
  principal: string;
  operations: string[];
  constraints: Constraints;
}

/** Ten years: in practice the session's life, which ends in revocation. */
const SESSION_TTL_MS = 10 * 365 * 24 * 3_600_000;

export class McpGateway {
  readonly kernel: SecurityKernel;
  readonly audit: ContextualAuditSink;

  constructor(keys: Keyring, sink: AuditSink) {
    this.audit = new ContextualAuditSink(sink);
    // Revocations of gateway sessions live as long as the session: no state dir of its own, so it
    // never competes with the sidecar's kernel for the revocation file.
    this.kernel = new SecurityKernel({ keys, audit: this.audit });
  }

  /**
   * The capability a client's session acts under; the kernel audits the grant. It lasts as long
   * as the session (revoked when it closes), not the kernel's default hour: a client connected
   * all day must not find every call refused with E_EXPIRED.
   */
  issue(client: McpClientSpec, server: string): Capability {
    return this.audit.with({ mcpServer: server }, () =>
      this.kernel.requestCapability(client.principal, { type: 'tool', pattern: '*' }, client.operations, client.constraints, { ttlMs: SESSION_TTL_MS }),
    );
  }

  /**
   * A session of `client` with a fresh instance of `server`. When the capability names domains,
   * the server's only way out of its network namespace is an egress proxy of its own that lets
   * through exactly those (and stops with the session).
   */
  async session(server: McpServerSpec, client: McpClientSpec, hooks: { stderr?: (chunk: Buffer) => void; onEvent?: (e: UpstreamEvent) => void; onClose?: () => void } = {}): Promise<GatewaySession> {
    const capability = this.issue(client, server.name);
    const gate = new McpGate({ kernel: this.kernel, audit: this.audit, server: server.name, capability, ...(server.tools ? { tools: server.tools } : {}) });
    const sandbox = sandboxOptions(server, capability.constraints);
    const egress = server.confine === false ? undefined : await this.egressFor(server.name, capability);
    if (egress) sandbox.egress = { proxySocket: egress.proxy.socketPath };
    const upstream: UpstreamSpec = {
      name: server.name,
      command: server.command,
      args: server.args,
      sandbox,
      onEvent: (e) => {
        this.recordUpstream(server.name, client.principal, capability.id, e);
        hooks.onEvent?.(e);
      },
      ...(hooks.stderr ? { stderr: hooks.stderr } : {}),
    };
    return new GatewaySession({
      gate,
      upstream,
      onClose: () => {
        void egress?.close();
        // The session's capability dies with it.
        try {
          this.audit.with({ mcpServer: server.name }, () => this.kernel.revokeCapability(capability.id, 'mcp session closed'));
        } catch {
          // already revoked
        }
        hooks.onClose?.();
      },
    });
  }

  private async egressFor(server: string, cap: Capability): Promise<{ proxy: EgressProxy; close(): Promise<void> } | undefined> {
    const domains = cap.constraints.allowedDomains;
    if (!domains || domains.length === 0) return undefined;
    const entries = domains.map(parseDomainEntry).filter((e): e is DomainEntry => e !== null);
    const dir = mkdtempSync(join(tmpdir(), 'captrap-mcp-egress-'));
    const authorize = (host: string, port: number): EgressDecision => {
      if (this.kernel.isRevoked(cap.id)) return { allowed: false, code: 'E_REVOKED', reason: 'the session capability was revoked' };
      if (Date.now() >= cap.expiresAt) return { allowed: false, code: 'E_EXPIRED', reason: 'the session capability expired' };
      if (entries.some((e) => entryMatches(e, { host, port }))) return { allowed: true };
      return { allowed: false, code: 'E_DOMAIN_NOT_ALLOWED', reason: `${host}:${port} is not in allowedDomains` };
    };
    const proxy = await startEgressProxy({
      socketPath: join(dir, 'egress.sock'),
      authorize,
      onEvent: (e) =>
        this.audit.record({
          type: 'egress',
          principal: cap.principal,
          capabilityId: cap.id,
          details: { mcpServer: server, host: e.host, port: e.port, method: e.method, allowed: e.allowed, ...(e.code ? { code: e.code } : {}), bytesUp: e.bytesUp, bytesDown: e.bytesDown, durationMs: Math.round(e.durationMs), ...(e.error ? { error: e.error } : {}) },
        }),
    });
    return {
      proxy,
      async close() {
        await proxy.close().catch(() => undefined);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }

  private recordUpstream(server: string, principal: string, capabilityId: string, e: UpstreamEvent): void {
    const details: Record<string, unknown> = { mcpServer: server, ...e };
    delete details['type'];
    if (e.type === 'started') this.audit.record({ type: 'sandbox_started', principal, capabilityId, details });
    else this.audit.record({ type: 'sandbox_exited', principal, capabilityId, details: { ...details, event: e.type } });
  }

  close(): void {
    this.kernel.close();
  }
}

function realOrNull(p: string): string | null {
  try {
    return realpathSync(p);
  } catch {
    return null;
  }
}

/**
 * The upstream's sandbox: the capability's roots bound writable (the gate decides which calls
 * reach them), the operator's view, and every absolute argument that names an existing file or
 * directory (the server's script, its root) read-only, so `node /path/server.js /data` runs
 * without naming them twice.
 */
export function sandboxOptions(server: McpServerSpec, constraints: Constraints): RunOptions {
  const readOnly = new Set<string>();
  const readWrite = new Set<string>();
  for (const p of server.view?.readOnly ?? []) {
    const r = realOrNull(p);
    if (r) readOnly.add(r);
  }
  for (const p of [...(server.view?.readWrite ?? []), ...(constraints.paths ?? [])]) {
    const r = realOrNull(p);
    if (r) readWrite.add(r);
  }
  for (const a of server.args) {
    if (!isAbsolute(a) || !existsSync(a)) continue;
    const r = realOrNull(a);
    // A directory argument is usually the server's own root: visible, read-only unless a capability root makes part of it writable.
    if (r && r !== '/' && (statSync(r).isFile() || statSync(r).isDirectory())) readOnly.add(r);
  }
  const o: RunOptions = {
    stdin: 'pipe',
    env: server.env ?? {},
    view: { readOnly: [...readOnly], readWrite: [...readWrite], ...(server.view?.hide ? { hide: server.view.hide } : {}) },
  };
  if (server.cwd !== undefined) o.cwd = server.cwd;
  if (server.limits?.memoryBytes !== undefined) o.memory = server.limits.memoryBytes;
  if (server.limits?.pids !== undefined) o.pids = server.limits.pids;
  if (server.limits?.cpu !== undefined) o.cpu = server.limits.cpu;
  if (server.uid !== undefined) o.uid = server.uid;
  if (server.gid !== undefined) o.gid = server.gid;
  if (server.allowRoot !== undefined) o.allowRoot = server.allowRoot;
  if (server.namespaces !== undefined) o.namespaces = server.namespaces;
  if (server.confine !== undefined) o.confine = server.confine;
  if (server.cgroupBase !== undefined) o.cgroupBase = server.cgroupBase;
  if (server.allowDegraded !== undefined) o.allowDegraded = server.allowDegraded;
  return o;
}
