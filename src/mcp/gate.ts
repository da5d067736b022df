// The gate: what one MCP client may see and do on one upstream server. tools/list is filtered
// by the caller's capability, tools/call is decided by the kernel before anything is forwarded,
// resources/read is held to the capability's paths (file://) or schemes and domains (anything
// else). Every decision lands in the kernel's audit chain with the server's name.
import { permits, type Capability, type ProcessRef } from '../kernel/capability.js';
import { checkArguments, type AccessArguments } from '../kernel/constraints.js';
import { AccessDeniedError } from '../kernel/errors.js';
import type { SecurityKernel } from '../kernel/kernel.js';
import { redactArgs } from '../kernel/policy.js';
import type { ContextualAuditSink } from './audit-context.js';
import { accessOf, argumentKinds, rewriteArguments, secretArguments, toolOperation, type McpToolInfo, type ToolOverride } from './kinds.js';

export interface GateOptions {
  kernel: SecurityKernel;
  /** The sink the kernel writes to, so the gate's context reaches the kernel's own events. */
  audit: ContextualAuditSink;
  /** The upstream server's name (config key, or the quick form's --name). */
  server: string;
  /** The capability the client acts under (a `tool` capability issued by this kernel). */
  capability: Capability;
  /** The client's process, when the front knows it (never for stdio or HTTP today). */
  process?: ProcessRef;
  /** Per-tool corrections: argument kinds, operation, secret arguments. */
  tools?: Record<string, ToolOverride>;
}

export type GateDecision =
  | { allowed: true; arguments: Record<string, unknown> }
  | { allowed: false; code: string; message: string };

function denial(err: unknown): { allowed: false; code: string; message: string } {
  const code = (err as { code?: unknown }).code;
  return { allowed: false, code: typeof code === 'string' ? code : 'E_INTERNAL', message: (err as Error).message ?? String(err) };
}

export class McpGate {
  readonly server: string;
  readonly principal: string;
  private readonly kernel: SecurityKernel;
  private readonly audit: ContextualAuditSink;
  private readonly cap: Capability;
  private readonly process: ProcessRef | undefined;
  private readonly overrides: Record<string, ToolOverride>;

  constructor(o: GateOptions) {
    if (o.capability.resourceType !== 'tool') throw new AccessDeniedError('E_RESOURCE_NOT_PERMITTED', `the MCP gateway needs a tool capability; ${o.capability.id} grants ${o.capability.resourceType} access`, { resourceType: o.capability.resourceType });
    this.kernel = o.kernel;
    this.audit = o.audit;
    this.server = o.server;
    this.cap = o.capability;
    this.principal = o.capability.principal;
    this.process = o.process;
    this.overrides = o.tools ?? {};
  }

  get capabilityId(): string {
    return this.cap.id;
  }

  /** The per-call timeout the capability sets (limits.timeoutMs), if any. */
  get timeoutMs(): number | undefined {
    return this.cap.constraints.limits?.timeoutMs;
  }

  private context(method: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
    return { mcpServer: this.server, mcpMethod: method, ...extra };
  }

  /**
   * Signature, revocation (own and ancestors') and expiry: what the kernel checks before any
   * decision, for the requests the kernel has no entry point for (lists, resources).
   */
  private checkLive(): void {
    const c = this.cap;
    if (!this.kernel.isAuthentic(c)) throw new AccessDeniedError('E_BAD_SIGNATURE', `capability ${c.id} does not verify`, { id: c.id });
    if (this.kernel.isRevoked(c.id)) throw new AccessDeniedError('E_REVOKED', `capability ${c.id} was revoked`, { id: c.id });
    const gone = c.ancestors.find((a) => this.kernel.isRevoked(a));
    if (gone) throw new AccessDeniedError('E_ANCESTOR_REVOKED', `capability ${c.id} descends from revoked capability ${gone}`, { id: c.id, ancestor: gone });
    if (Date.now() >= c.expiresAt) throw new AccessDeniedError('E_EXPIRED', `capability ${c.id} expired at ${new Date(c.expiresAt).toISOString()}`, { id: c.id });
  }

  private operationFor(tool: McpToolInfo): string {
    // `invoke` grants every tool allowedTools names; otherwise the tool's own operation must be granted.
    return this.cap.operations.includes('invoke') ? 'invoke' : toolOperation(tool, this.overrides[tool.name]);
  }

  private record(type: 'capability_validated' | 'access_denied', details: Record<string, unknown>): void {
    this.audit.record({ type, principal: this.principal, capabilityId: this.cap.id, ...(this.process ? { process: this.process } : {}), details });
  }

  /**
   * The tools this caller may call, in the upstream's order. A capability that is no longer live
   * shows nothing and throws (the front turns that into a JSON-RPC error).
   */
  filterTools<T extends McpToolInfo>(tools: readonly T[]): T[] {
    try {
      this.checkLive();
    } catch (err) {
      this.record('access_denied', this.context('tools/list', { code: (err as AccessDeniedError).code, message: (err as Error).message }));
      throw err;
    }
    const shown: T[] = [];
    const hidden: string[] = [];
    const allowed = this.cap.constraints.allowedTools;
    for (const t of tools) {
      // The refusals permits() would throw, without building an error per hidden tool (a
      // thrown denial costs ~70 µs; a list of 100 tools would pay it 50 times).
      if ((allowed && !allowed.includes(t.name)) || !this.cap.operations.includes(this.operationFor(t))) {
        hidden.push(t.name);
        continue;
      }
      try {
        permits(this.cap, this.operationFor(t), t.name, { tool: t.name });
        shown.push(t);
      } catch {
        hidden.push(t.name);
      }
    }
    this.record('capability_validated', this.context('tools/list', { offered: tools.length, shown: shown.length, hidden: hidden.slice(0, 64) }));
    return shown;
  }

  /**
   * Decides one tools/call. `tool` is the upstream's description of it (undefined when the
   * upstream does not list such a tool). Allowed: the arguments to forward, paths and URLs
   * replaced by what the kernel checked.
   */
  checkCall(name: string, args: Record<string, unknown>, tool: McpToolInfo | undefined): GateDecision {
    const override = this.overrides[name];
    const secrets = tool ? secretArguments(tool, override) : new Set(override?.secret ?? []);
    const logged = redactArgs(undefined, Object.fromEntries(Object.entries(args).map(([k, v]) => [k, secrets.has(k) ? '[redacted]' : v])));
    return this.audit.with(this.context('tools/call', { tool: name, arguments: logged }), () => {
      if (!tool) {
        const err = new AccessDeniedError('E_UNKNOWN_TOOL', `server ${this.server} lists no tool named '${name}'`, { tool: name });
        this.record('access_denied', { code: err.code, message: err.message });
        return denial(err);
      }
      let access: AccessArguments;
      const operation = this.operationFor(tool);
      try {
        access = accessOf(name, args, argumentKinds(tool, override), toolOperation(tool, override));
      } catch (err) {
        this.record('access_denied', { code: (err as AccessDeniedError).code, message: (err as Error).message });
        return denial(err);
      }
      try {
        const v = this.kernel.validateCapability(this.cap, operation, name, { principal: this.principal, ...(this.process ? { process: this.process } : {}), ...access });
        return { allowed: true, arguments: rewriteArguments(args, v.realPaths, v.canonicalUrls) };
      } catch (err) {
        return denial(err); // the kernel audited it
      }
    });
  }

  /**
   * Decides one resources/read: a file:// URI must resolve inside the capability's paths, any
   * other URI must use a scheme in allowedSchemes (http and https when it names none) and, when
   * the capability names domains, a host among them.
   */
  checkResourceRead(uri: unknown): GateDecision {
    const ctx = this.context('resources/read', { uri: typeof uri === 'string' ? redactArgs(undefined, { uri })['uri'] : String(uri) });
    try {
      this.checkLive();
      if (typeof uri !== 'string' || uri.length === 0) throw new AccessDeniedError('E_INVALID_ARGUMENTS', 'resources/read: uri: expected a non-empty string', { path: ['uri'] });
      const access: AccessArguments = /^file:/i.test(uri) ? { files: [{ path: uri, access: 'read', arg: 'uri' }] } : { urls: [{ url: uri, arg: 'uri' }] };
      const operation = this.cap.operations.includes('invoke') ? 'invoke' : 'read';
      if (!this.cap.operations.includes(operation)) throw new AccessDeniedError('E_OPERATION_NOT_PERMITTED', `operation 'read' is not among [${this.cap.operations.join(', ')}]`, { operation });
      checkArguments(this.cap.constraints, access);
      this.record('capability_validated', { ...ctx, operation });
      return { allowed: true, arguments: { uri } };
    } catch (err) {
      this.record('access_denied', { ...ctx, code: (err as AccessDeniedError).code ?? 'E_INTERNAL', message: (err as Error).message });
      return denial(err);
    }
  }
}
