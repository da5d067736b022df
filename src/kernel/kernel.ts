// SecurityKernel: issues, delegates, validates and revokes capabilities, tracks the
// delegation tree and process bindings, persists revocations, and audits every decision.
// It never spawns or inspects processes: callers pass process refs in.
import {
  isCapabilityId,
  isToken,
  newCapabilityId,
  parseCapability,
  parseToken,
  permits,
  signCapability,
  toToken,
  verifySignature,
  type Capability,
  type ProcessRef,
  type ResourceType,
  RESOURCE_TYPES,
} from './capability.js';
import { checkNarrowing, checkTool, intersectConstraints, normalizeConstraints, type AccessArguments, type Constraints, type Limits } from './constraints.js';
import { AccessDeniedError, DelegationError, InvalidRequestError, type DenyCode } from './errors.js';
import { nullAuditSink, type AuditEvent, type AuditSink, type AuditStats } from './events.js';
import type { Keyring } from './keyring.js';
import { compilePattern, patternCovers } from './pattern.js';
import { IssuanceGate, type IssuancePolicy } from './issuance.js';
import { filePatternFromSpelling } from './paths.js';
import { effectiveLimits, TOOL_OPERATIONS, type Tool, type ToolArgs, type ToolPolicy } from './policy.js';
import { RevocationStore, type Durability } from './revocations.js';

/** A capability given by id (`cap_...`), as a token (`ct1....`) or as the signed object. */
export type CapabilityRef = string | Capability;

export interface KernelOptions {
  keys: Keyring;
  /** Where revocations persist. Without it they last only as long as this kernel. */
  stateDir?: string;
  audit?: AuditSink;
  policy?: ToolPolicy;
  /** Milliseconds since the epoch; injectable for expiry tests. */
  clock?: () => number;
  /** Lifetime of a root capability when the request names none. Default one hour. */
  defaultTtlMs?: number;
  /** Kernel-wide ceiling on delegation depth (root = 0). Default 8. */
  maxDelegationDepth?: number;
  /** Remember signatures already verified for frozen capability objects and tokens. Default true. */
  verificationCache?: boolean;
  /** Which root capabilities may be granted to whom; without it every well-formed request is granted. */
  issuance?: IssuancePolicy;
}

/** Who is asking: the principal and, when known, its process. Nothing the caller claims about itself belongs here. */
export interface Caller {
  principal: string;
  process?: ProcessRef;
}

export interface ValidationContext extends Caller, AccessArguments {}

/** What checkPermission may be told about the action besides the principal. */
export type PermissionContext = Omit<ValidationContext, 'principal'>;

export interface ListOptions {
  includeRevoked?: boolean;
  includeExpired?: boolean;
}

export interface RevokeOptions {
  /**
   * The id names a capability issued elsewhere (a token this kernel never saw): record it
   * anyway. Without it an id this kernel does not know is refused, so a typo is not persisted.
   */
  external?: boolean;
}

export interface ResourceSpec {
  type: ResourceType;
  /** Resource pattern (pattern.ts). */
  pattern: string;
}

export interface RequestOptions {
  ttlMs?: number;
  expiresAt?: number;
  holder?: ProcessRef;
}

export interface DelegationRequest {
  resourceType?: ResourceType;
  resource?: string;
  operations?: string[];
  constraints?: Constraints;
  ttlMs?: number;
  expiresAt?: number;
  holder?: ProcessRef;
}

export interface Validated {
  capability: Capability;
  /** Real paths of file arguments, by argument name: pass these to the tool, not the spelling given. */
  realPaths: Record<string, string>;
  /** Canonical hrefs of URL arguments, by argument name: pass these to the tool, not the spelling given. */
  canonicalUrls: Record<string, string>;
}

export interface ToolAuthorization extends Validated {
  tool: Tool;
  args: ToolArgs;
  argv: string[];
  /** The tighter of the tool's defaults and the capability's limits. */
  limits: Limits;
}

export interface KernelStats {
  issued: number;
  delegated: number;
  revoked: number;
  validations: number;
  denials: number;
  live: number;
  bound: number;
  verifyCacheHits: number;
  auditFailures: number;
  audit?: AuditStats;
  /** The last background fdatasync of the revocation file failed (a holder death's cascade may not be on disk). */
  revocationSyncError?: string;
}

const refKey = (r: ProcessRef): string => `${r.pid}:${r.startTime}`;

/** An operations list from an untrusted caller: a string would otherwise spread into letters. */
function checkOperations(operations: unknown): asserts operations is string[] {
  if (!Array.isArray(operations) || !operations.every((o) => typeof o === 'string' && o.length > 0)) {
    throw new InvalidRequestError('operations: expected an array of non-empty operation names', { path: ['operations'] });
  }
}

const TOOL_OPERATION_SET: ReadonlySet<string> = new Set(TOOL_OPERATIONS);

/**
 * Ids per `capability_revoked` record, in bytes of their JSON: well below the audit log's
 * MAX_RECORD_BYTES (64 KiB), beyond which a record's details are replaced by a digest.
 */
const REVOKED_IDS_BYTES = 48 * 1024;

export class SecurityKernel {
  private readonly keys: Keyring;
  private readonly audit: AuditSink;
  /** False with no sink: the hot path then builds no event objects. */
  private readonly auditing: boolean;
  private readonly clock: () => number;
  private readonly defaultTtlMs: number;
  private readonly maxDepth: number;
  private readonly useCache: boolean;
  private readonly revocations: RevocationStore;
  private policy: ToolPolicy | undefined;

  private readonly store = new Map<string, Capability>();
  private readonly byPrincipal = new Map<string, Set<string>>();
  /** Ids (and expiries) of capabilities this kernel verified as tokens or objects but does not store. */
  private readonly foreign = new Map<string, number>();
  private readonly issuance: IssuanceGate | undefined;
  private readonly children = new Map<string, Set<string>>();
  private readonly bindings = new Map<string, Set<string>>();
  /** Objects this kernel built or schema-checked (frozen, so they cannot change afterwards). */
  private readonly wellFormed = new WeakSet<Capability>();
  /** Frozen objects whose signature verified; never skips expiry, revocation or holder checks. */
  private readonly verified = new WeakSet<Capability>();
  private readonly tokenCache = new Map<string, Capability>();
  /** Issue order of stored capabilities (a re-binding keeps its place): a position that survives pruning. */
  private readonly issueSeqs = new Map<string, number>();
  private lastIssueSeq = 0;

  private readonly counters = { issued: 0, delegated: 0, validations: 0, denials: 0, verifyCacheHits: 0, auditFailures: 0 };

  constructor(opts: KernelOptions) {
    this.keys = opts.keys;
    this.audit = opts.audit ?? nullAuditSink;
    this.auditing = this.audit !== nullAuditSink;
    this.clock = opts.clock ?? Date.now;
    this.defaultTtlMs = opts.defaultTtlMs ?? 3_600_000;
    this.maxDepth = opts.maxDelegationDepth ?? 8;
    this.useCache = opts.verificationCache ?? true;
    this.policy = opts.policy;
    this.issuance = opts.issuance ? new IssuanceGate(opts.issuance) : undefined;
    this.revocations = new RevocationStore(opts.stateDir);
  }

  setPolicy(policy: ToolPolicy): void {
    this.policy = policy;
  }

  private emit(event: AuditEvent): void {
    try {
      this.audit.record(event);
    } catch {
      // The sink promised not to throw; if it does anyway, a decision must not flip because of it.
      this.counters.auditFailures++;
    }
  }

  private remember(c: Capability): Capability {
    this.store.set(c.id, c);
    if (!this.issueSeqs.has(c.id)) this.issueSeqs.set(c.id, ++this.lastIssueSeq);
    let mine = this.byPrincipal.get(c.principal);
    if (!mine) this.byPrincipal.set(c.principal, (mine = new Set()));
    mine.add(c.id);
    this.foreign.delete(c.id);
    this.wellFormed.add(c);
    this.verified.add(c);
    return c;
  }

  // -------------------------------------------------------------------------------------------
  // Issuing

  requestCapability(principal: string, resource: ResourceSpec, operations: string[], constraints: Constraints = {}, opts: RequestOptions = {}): Capability {
    this.emit({ type: 'capability_requested', principal, details: { resourceType: resource?.type, resource: resource?.pattern, operations } });
    try {
      if (typeof principal !== 'string' || principal.length === 0) throw new InvalidRequestError('principal: expected a non-empty string');
      if (typeof resource !== 'object' || resource === null) throw new InvalidRequestError('resource: expected { type, pattern }');
      if (!RESOURCE_TYPES.includes(resource.type)) throw new InvalidRequestError(`resource.type: expected one of ${RESOURCE_TYPES.join(', ')}`);
      if (typeof resource.pattern !== 'string') throw new InvalidRequestError('resource.pattern: expected a string');
      checkOperations(operations);
      const pattern = resource.type === 'file' ? filePatternFromSpelling(resource.pattern) : resource.pattern;
      compilePattern(pattern);
      const now = this.clock();
      const normalized = normalizeConstraints(constraints);
      const expiresAt = opts.expiresAt ?? now + (opts.ttlMs ?? this.defaultTtlMs);
      this.issuance?.check({ principal, resourceType: resource.type, resource: pattern, operations, constraints: normalized, ttlMs: expiresAt - now });
      const cap = signCapability(
        {
          v: 1,
          id: newCapabilityId(),
          principal,
          resourceType: resource.type,
          resource: pattern,
          operations: [...operations],
          constraints: normalized,
          parentId: null,
          ancestors: [],
          depth: 0,
          issuedAt: now,
          expiresAt,
          holder: opts.holder ?? null,
        },
        this.keys,
      );
      const checked = parseCapability(cap); // the same schema tokens go through
      this.remember(checked);
      if (checked.holder) this.index(checked);
      this.counters.issued++;
      this.emit({ type: 'capability_granted', principal, capabilityId: checked.id, details: { resourceType: resource.type, resource: resource.pattern, expiresAt: checked.expiresAt } });
      return checked;
    } catch (err) {
      this.emit({ type: 'capability_denied', principal, details: { code: (err as { code?: string }).code ?? 'E_INVALID_REQUEST', message: (err as Error).message } });
      if (err instanceof AccessDeniedError && err.code !== 'E_ISSUANCE_DENIED') throw new InvalidRequestError(err.message, err.details);
      throw err;
    }
  }

  private index(c: Capability): void {
    if (!c.holder) return;
    const k = refKey(c.holder);
    let s = this.bindings.get(k);
    if (!s) this.bindings.set(k, (s = new Set()));
    s.add(c.id);
  }

  // -------------------------------------------------------------------------------------------
  // Resolving and checking integrity

  /** Turns a reference into a capability whose signature has verified; the stored record wins for known ids. */
  private resolve(ref: CapabilityRef): Capability {
    if (typeof ref === 'string') {
      if (isToken(ref)) {
        const hit = this.useCache ? this.tokenCache.get(ref) : undefined;
        // A cached token stops counting as verified the moment its key is retired.
        if (hit && this.keys.get(hit.keyId)) {
          this.counters.verifyCacheHits++;
          return this.store.get(hit.id) ?? hit;
        }
        const parsed = parseToken(ref);
        this.wellFormed.add(parsed);
        this.checkSignature(parsed);
        this.noteForeign(parsed);
        if (this.useCache) {
          if (this.tokenCache.size >= 10_000) this.tokenCache.clear();
          this.tokenCache.set(ref, parsed);
        }
        return this.store.get(parsed.id) ?? parsed;
      }
      const stored = this.store.get(ref);
      if (!stored) throw new AccessDeniedError('E_UNKNOWN_CAPABILITY', `no capability with id ${ref} is known to this kernel; present it as a token`, { id: ref });
      this.checkSignature(stored);
      return stored;
    }
    const cap = this.wellFormed.has(ref) ? ref : parseCapability(ref);
    this.wellFormed.add(cap);
    this.checkSignature(cap);
    this.noteForeign(cap);
    // A binding made after this object was handed out lives in the stored record.
    return this.store.get(cap.id) ?? cap;
  }

  /** A verified capability issued elsewhere: its id may be revoked here without `external`. */
  private noteForeign(c: Capability): void {
    if (this.store.has(c.id) || this.foreign.has(c.id)) return;
    if (this.foreign.size >= 100_000) this.foreign.clear();
    this.foreign.set(c.id, c.expiresAt);
  }

  /** The expiry of a capability this kernel has seen, if it has. */
  private expiryOf(id: string): number | undefined {
    return this.store.get(id)?.expiresAt ?? this.foreign.get(id);
  }

  private checkSignature(c: Capability): void {
    if (this.useCache && this.verified.has(c) && this.keys.get(c.keyId)) {
      this.counters.verifyCacheHits++;
      return;
    }
    const v = verifySignature(c, this.keys);
    if (v === 'E_UNKNOWN_KEY') throw new AccessDeniedError('E_UNKNOWN_KEY', `capability ${c.id} is signed with key '${c.keyId}', which this kernel does not hold (unknown or retired)`, { keyId: c.keyId });
    if (v === 'E_BAD_SIGNATURE') throw new AccessDeniedError('E_BAD_SIGNATURE', `capability ${c.id} has a bad signature: it was altered or forged`, { id: c.id });
    if (this.useCache) this.verified.add(c);
  }

  /** Revocation (own and ancestors') and expiry: everything about a capability that changes with time. */
  private checkLive(c: Capability, now: number): void {
    if (this.revocations.has(c.id)) throw new AccessDeniedError('E_REVOKED', `capability ${c.id} was revoked`, { id: c.id });
    for (const a of c.ancestors) {
      if (this.revocations.has(a)) throw new AccessDeniedError('E_ANCESTOR_REVOKED', `capability ${c.id} descends from revoked capability ${a}`, { id: c.id, ancestor: a });
    }
    if (now >= c.expiresAt) throw new AccessDeniedError('E_EXPIRED', `capability ${c.id} expired at ${new Date(c.expiresAt).toISOString()}`, { id: c.id, expiresAt: c.expiresAt });
  }

  private checkCaller(c: Capability, caller: Caller): void {
    if (caller.principal !== c.principal) {
      throw new AccessDeniedError('E_WRONG_PRINCIPAL', `capability ${c.id} belongs to '${c.principal}', not '${caller.principal}'`, { id: c.id, principal: caller.principal });
    }
    if (c.holder) {
      const p = caller.process;
      if (!p || p.pid !== c.holder.pid || p.startTime !== c.holder.startTime) {
        throw new AccessDeniedError('E_WRONG_HOLDER', `capability ${c.id} is bound to process ${c.holder.pid} (start ${c.holder.startTime}); the caller is ${p ? `${p.pid} (start ${p.startTime})` : 'not a known process'}`, {
          id: c.id,
          holder: c.holder,
          process: p,
        });
      }
    }
  }

  private denied(err: unknown, ref: CapabilityRef | undefined, caller: Caller | undefined, details: Record<string, unknown>): never {
    this.counters.denials++;
    const code = (err as { code?: string }).code ?? 'E_INTERNAL';
    const capabilityId = typeof ref === 'object' ? ref.id : typeof ref === 'string' && !isToken(ref) ? ref : undefined;
    this.emit({
      type: 'access_denied',
      ...(caller ? { principal: caller.principal } : {}),
      ...(capabilityId ? { capabilityId } : {}),
      ...(caller?.process ? { process: caller.process } : {}),
      details: { code, message: (err as Error).message, ...details },
    });
    throw err;
  }

  // -------------------------------------------------------------------------------------------
  // Validation

  /**
   * Checks, in order: form, key, signature, revocation (own, then ancestors), expiry, principal,
   * holder process, operation, resource pattern, allowedTools, then each argument against the
   * constraints. Throws AccessDeniedError with the first failing reason (audited as access_denied).
   */
  validateCapability(ref: CapabilityRef, operation: string, resource: string, context: ValidationContext): Validated {
    this.counters.validations++;
    let cap: Capability | undefined;
    try {
      cap = this.resolve(ref);
      this.checkLive(cap, this.clock());
      this.checkCaller(cap, context);
      const { realPaths, canonicalUrls } = permits(cap, operation, resource, context);
      if (this.auditing) this.emit({ type: 'capability_validated', principal: context.principal, capabilityId: cap.id, details: { operation, resource } });
      return { capability: cap, realPaths, canonicalUrls };
    } catch (err) {
      return this.denied(err, cap ?? ref, context, { operation, resource });
    }
  }

  /**
   * Decides a tool call before anything is spawned: capability integrity and liveness, the
   * caller, a known tool, allowedTools and the capability's pattern, the argument schema, then
   * every argument the policy maps to a resource against the constraints.
   */
  authorizeToolCall(ref: CapabilityRef, toolName: string, args: unknown, context: Caller): ToolAuthorization {
    this.counters.validations++;
    let cap: Capability | undefined;
    let operation = 'invoke';
    try {
      cap = this.resolve(ref);
      this.checkLive(cap, this.clock());
      this.checkCaller(cap, context);
      const tool = this.policy?.tool(toolName);
      if (!tool) throw new AccessDeniedError('E_UNKNOWN_TOOL', `no tool named '${toolName}' in the catalogue`, { tool: toolName });
      if (cap.resourceType !== 'tool') throw new AccessDeniedError('E_RESOURCE_NOT_PERMITTED', `capability ${cap.id} grants ${cap.resourceType} access, not tool calls`, { resourceType: cap.resourceType });
      checkTool(cap.constraints, toolName);
      const parsed = tool.parseArgs(args);
      // `invoke` grants every tool allowedTools names; otherwise the tool's own operation must be granted.
      operation = cap.operations.includes('invoke') ? 'invoke' : tool.operation;
      const { realPaths, canonicalUrls } = permits(cap, operation, toolName, tool.accessOf(parsed));
      const argv = tool.argv(parsed, realPaths, canonicalUrls);
      if (this.auditing) this.emit({ type: 'capability_validated', principal: context.principal, capabilityId: cap.id, details: { operation, tool: toolName } });
      return { capability: cap, realPaths, canonicalUrls, tool, args: parsed, argv, limits: effectiveLimits(tool.spec.limits, cap.constraints.limits) };
    } catch (err) {
      return this.denied(err, cap ?? ref, context, { operation, tool: toolName });
    }
  }

  // -------------------------------------------------------------------------------------------
  // Delegation

  /**
   * Issues a child of `parentRef` for `toPrincipal`. The request may only narrow: any dimension
   * that would widen is refused with DelegationError('E_WIDENS', details.dimension). Dimensions
   * the request leaves out are inherited. When `caller` is given, it must be able to use the parent.
   */
  delegate(parentRef: CapabilityRef, toPrincipal: string, narrowing: DelegationRequest = {}, caller?: Caller): Capability {
    const now = this.clock();
    let parent: Capability;
    try {
      parent = this.resolve(parentRef);
      this.checkLive(parent, now);
      if (caller) this.checkCaller(parent, caller);
    } catch (err) {
      return this.denied(err, parentRef, caller, { operation: 'delegate' });
    }
    const details = { parentId: parent.id, to: toPrincipal };
    try {
      if (typeof toPrincipal !== 'string' || toPrincipal.length === 0) throw new InvalidRequestError('toPrincipal: expected a non-empty string');
      if (typeof narrowing !== 'object' || narrowing === null) throw new InvalidRequestError('narrowing: expected an object');
      if (narrowing.operations !== undefined) checkOperations(narrowing.operations);
      if (narrowing.resource !== undefined && typeof narrowing.resource !== 'string') throw new InvalidRequestError('resource: expected a string');
      const depth = parent.depth + 1;
      const limit = Math.min(this.maxDepth, parent.constraints.maxDelegationDepth ?? Infinity);
      if (depth > limit) {
        throw new DelegationError('E_DEPTH_EXCEEDED', `delegating ${parent.id} would reach depth ${depth}; the limit is ${limit}`, { depth, limit });
      }
      if (narrowing.resourceType !== undefined && narrowing.resourceType !== parent.resourceType) {
        throw new DelegationError('E_WIDENS', `delegation would widen resourceType: ${narrowing.resourceType} is not ${parent.resourceType}`, { dimension: 'resourceType' });
      }
      const resource = narrowing.resource === undefined ? parent.resource : parent.resourceType === 'file' ? filePatternFromSpelling(narrowing.resource) : narrowing.resource;
      compilePattern(resource);
      if (!patternCovers(parent.resource, resource)) {
        throw new DelegationError('E_WIDENS', `delegation would widen resource: '${resource}' is not within '${parent.resource}'`, { dimension: 'resource' });
      }
      const operations = narrowing.operations ?? [...parent.operations];
      const extra = operations.filter((o) => !parent.operations.includes(o));
      if (extra.length > 0 || operations.length === 0) {
        throw new DelegationError('E_WIDENS', `delegation would widen operations: ${extra.join(', ') || '(none requested)'} not granted by the parent`, { dimension: 'operations', extra });
      }
      const requested = normalizeConstraints(narrowing.constraints ?? {});
      checkNarrowing(parent.constraints, requested);
      const expiresAt = narrowing.expiresAt ?? (narrowing.ttlMs !== undefined ? now + narrowing.ttlMs : parent.expiresAt);
      if (expiresAt > parent.expiresAt) {
        throw new DelegationError('E_WIDENS', `delegation would widen expiresAt: ${new Date(expiresAt).toISOString()} is after the parent's ${new Date(parent.expiresAt).toISOString()}`, { dimension: 'expiresAt' });
      }
      const constraints = intersectConstraints(parent.constraints, requested);
      // A child may delegate no deeper than its ancestors allow.
      if (parent.constraints.maxDelegationDepth !== undefined) constraints.maxDelegationDepth = Math.min(constraints.maxDelegationDepth ?? Infinity, parent.constraints.maxDelegationDepth);
      const child = this.remember(
        parseCapability(
          signCapability(
            {
              v: 1,
              id: newCapabilityId(),
              principal: toPrincipal,
              resourceType: parent.resourceType,
              resource,
              operations: [...new Set(operations)],
              constraints,
              parentId: parent.id,
              ancestors: [...parent.ancestors, parent.id],
              depth,
              issuedAt: now,
              expiresAt,
              holder: narrowing.holder ?? null,
            },
            this.keys,
          ),
        ),
      );
      let kids = this.children.get(parent.id);
      if (!kids) this.children.set(parent.id, (kids = new Set()));
      kids.add(child.id);
      this.index(child);
      this.counters.delegated++;
      this.emit({ type: 'capability_delegated', principal: toPrincipal, capabilityId: child.id, details: { ...details, depth } });
      return child;
    } catch (err) {
      this.emit({ type: 'capability_denied', principal: toPrincipal, ...(caller?.process ? { process: caller.process } : {}), details: { ...details, code: (err as { code?: string }).code, message: (err as Error).message, dimension: (err as DelegationError).details?.['dimension'] } });
      // A child that fails the schema (a bad holder, an empty operation name) is a bad request, not a denial.
      if (err instanceof AccessDeniedError) throw new InvalidRequestError(err.message, err.details);
      throw err;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Revocation and process lifecycle

  /** The direct children of `id` this kernel issued and still stores. */
  childrenOf(id: string): string[] {
    return [...(this.children.get(id) ?? [])];
  }

  /** How many capabilities this kernel stores (live, revoked or expired but not yet pruned). */
  get size(): number {
    return this.store.size;
  }

  /** Every known descendant of `id` (not including it), depth-first. */
  descendants(id: string): string[] {
    const out: string[] = [];
    const stack = [...(this.children.get(id) ?? [])];
    while (stack.length > 0) {
      const c = stack.pop()!;
      out.push(c);
      for (const k of this.children.get(c) ?? []) stack.push(k);
    }
    return out;
  }

  /**
   * Revokes `id` and every descendant this kernel knows, persisting them before returning.
   * Descendants it does not know (tokens issued elsewhere) are refused anyway: they carry their
   * ancestors. Returns the ids newly revoked.
   */
  revokeCapability(id: string, reason = 'revoked', opts: RevokeOptions = {}): string[] {
    if (!isCapabilityId(id)) throw new InvalidRequestError(`id: expected a capability id (cap_ followed by 16-64 base64url characters), got ${JSON.stringify(String(id).slice(0, 80))}`, { id: String(id).slice(0, 80) });
    if (!opts.external && !this.store.has(id) && !this.foreign.has(id) && !this.revocations.has(id)) {
      throw new AccessDeniedError('E_UNKNOWN_CAPABILITY', `no capability with id ${id} is known to this kernel; pass { external: true } to revoke one issued elsewhere`, { id });
    }
    return this.revokeSubtrees([id], reason);
  }

  /** Revokes every capability held by `principal` and, through them, every descendant. */
  revokeAllForPrincipal(principal: string, reason = 'principal revoked'): string[] {
    return this.revokeSubtrees([...(this.byPrincipal.get(principal) ?? [])], reason);
  }

  /**
   * Revokes `roots` and all their descendants with one write and one fsync: revoke-on-death
   * latency must not grow with the number of capabilities a process held.
   */
  private revokeSubtrees(roots: readonly string[], reason: string, durable: Durability = 'now'): string[] {
    const rootSet = new Set(roots);
    const order = this.subtrees(rootSet);
    // One lookup in the store per capability, for both the revocation file's expiry and the audit
    // record's principal (a hit is cheap; what costs in a large map is a miss or an insert).
    const caps = new Array<Capability | undefined>(order.length);
    let allStored = true;
    for (let i = 0; i < order.length; i++) if ((caps[i] = this.store.get(order[i]!)) === undefined) allStored = false;
    const fresh = this.revocations.add(order, reason, this.clock(), (id, i) => caps[i]?.expiresAt ?? this.foreign.get(id), durable, allStored);
    if (fresh.length > 0 && this.auditing) {
      const principalOf =
        fresh.length === order.length ? (_id: string, i: number) => caps[i]?.principal : (id: string) => this.store.get(id)?.principal;
      this.auditRevoked(fresh, rootSet, reason, principalOf);
    }
    return fresh;
  }

  /**
   * Every capability in the subtrees of `roots`, roots first, breadth first. Every stored
   * capability has one parent, so one is reached twice only when it is a root below another
   * root: skipping roots is enough, with no set of everything seen (a cascade of 1000 spent a
   * tenth of its time in one).
   */
  private subtrees(roots: ReadonlySet<string>): string[] {
    const order = [...roots];
    const bound = this.store.size + order.length;
    for (let i = 0; i < order.length; i++) {
      const kids = this.children.get(order[i]!);
      if (kids === undefined) continue;
      for (const k of kids) if (!roots.has(k)) order.push(k);
      if (order.length > bound) break;
    }
    if (order.length <= bound) return order;
    // More than the store holds: the children do not form a forest (they cannot); walk it the careful way.
    const safe = [...roots];
    const seen = new Set(safe);
    for (let i = 0; i < safe.length; i++) {
      for (const k of this.children.get(safe[i]!) ?? []) {
        if (seen.has(k)) continue;
        seen.add(k);
        safe.push(k);
      }
    }
    return safe;
  }

  /**
   * One `capability_revoked` record per cascade, listing every id it revoked (a record per
   * capability was most of the cost of revoke-on-death). A cascade too long for one record
   * is split into parts of at most REVOKED_IDS_BYTES of ids each, numbered `part` of `parts`.
   * `fresh` lists the roots first (revokeSubtrees walks from them).
   */
  private auditRevoked(fresh: readonly string[], roots: ReadonlySet<string>, reason: string, principalOf: (id: string, index: number) => string | undefined): void {
    const parts: string[][] = [];
    let cur: string[] = [];
    let bytes = 0;
    for (const id of fresh) {
      if (bytes + id.length + 3 > REVOKED_IDS_BYTES && cur.length > 0) {
        parts.push(cur);
        cur = [];
        bytes = 0;
      }
      cur.push(id);
      bytes += id.length + 3;
    }
    parts.push(cur);
    let index = 0;
    for (let i = 0; i < parts.length; i++) {
      const ids = parts[i]!;
      const principals = new Set<string>();
      for (const id of ids) {
        const p = principalOf(id, index++);
        if (p !== undefined) principals.add(p);
      }
      // Roots come first in `fresh` (the walk starts from them): `direct` counts the leading ids
      // revoked because they were named (or held by the dead process), not because of an ancestor.
      let direct = 0;
      while (direct < ids.length && roots.has(ids[direct]!)) direct++;
      const details: Record<string, unknown> = { reason, count: ids.length, direct, principals: [...principals], ids };
      if (parts.length > 1) {
        details.part = i + 1;
        details.parts = parts.length;
        details.total = fresh.length;
      }
      this.emit({
        type: 'capability_revoked',
        // The single-capability and single-principal cases keep the top-level fields a per-capability record had.
        ...(principals.size === 1 ? { principal: principals.values().next().value! } : {}),
        ...(ids.length === 1 ? { capabilityId: ids[0]! } : {}),
        details,
      });
    }
  }

  /**
   * Binds a stored capability to a live process: from now on only that process (same pid AND
   * start time) can use it, and `processExited` revokes it. Returns the re-signed capability.
   */
  bindToProcess(id: string, ref: ProcessRef): Capability {
    const cap = this.store.get(id);
    if (!cap) throw new AccessDeniedError('E_UNKNOWN_CAPABILITY', `no capability with id ${id} is known to this kernel`, { id });
    this.checkLive(cap, this.clock());
    if (cap.holder) {
      if (cap.holder.pid === ref.pid && cap.holder.startTime === ref.startTime) return cap;
      throw new DelegationError('E_ALREADY_BOUND', `capability ${id} is already bound to process ${cap.holder.pid}`, { id, holder: cap.holder });
    }
    const { signature: _sig, keyId: _key, ...rest } = cap;
    const bound = this.remember(parseCapability(signCapability({ ...rest, holder: { pid: ref.pid, startTime: ref.startTime } }, this.keys)));
    this.index(bound);
    return bound;
  }

  /**
   * The process is gone: revoke everything bound to it and every descendant; audit the cleanup.
   * The revocation holds in memory and is in the revocation file when this returns; its
   * fdatasync runs in the background (whenRevocationsSynced), because a dead holder's own
   * capabilities can never be presented again anyway (its pid and start time never return) and
   * the event loop must go on killing its tools and answering the others. `noticedBy` says, in
   * the principal_cleanup record, how the death was noticed (the sidecar: 'exit' or 'death-notice').
   */
  processExited(ref: ProcessRef, reason = 'holder process exited', noticedBy?: string): string[] {
    const k = refKey(ref);
    const ids = [...(this.bindings.get(k) ?? [])];
    this.bindings.delete(k);
    const principals = [...new Set(ids.map((i) => this.store.get(i)?.principal).filter((p): p is string => p !== undefined))];
    const revoked = this.revokeSubtrees(ids, reason, 'soon');
    // The ids are in the cascade's capability_revoked record(s) just before: listing them again doubled the audit cost of a death.
    this.emit({ type: 'principal_cleanup', process: { pid: ref.pid, startTime: ref.startTime }, ...(principals.length === 1 ? { principal: principals[0]! } : {}), details: { principals, revoked: revoked.length, ...(noticedBy !== undefined ? { noticedBy } : {}) } });
    return revoked;
  }

  // -------------------------------------------------------------------------------------------
  // Questions about a principal rather than one capability

  private isLive(c: Capability, now: number): boolean {
    return now < c.expiresAt && !this.isRevokedOrAncestor(c);
  }

  private isRevokedOrAncestor(c: Capability): boolean {
    return this.revocations.has(c.id) || c.ancestors.some((a) => this.revocations.has(a));
  }

  /**
   * Whether `principal` may do `operation` on `resource` with any live capability it holds
   * here: the first that permits it (same checks as validateCapability) is returned. Otherwise
   * AccessDeniedError('E_PERMISSION_DENIED'), its details listing why each candidate refused.
   * On a tool capability granting `invoke`, the tool operations (read, write, list, execute) count as granted.
   */
  checkPermission(principal: string, resourceType: ResourceType, operation: string, resource: string, context: PermissionContext = {}): Capability {
    this.counters.validations++;
    const caller: ValidationContext = { ...context, principal };
    try {
      if (typeof principal !== 'string' || principal.length === 0) throw new InvalidRequestError('principal: expected a non-empty string');
      if (!RESOURCE_TYPES.includes(resourceType)) throw new InvalidRequestError(`resourceType: expected one of ${RESOURCE_TYPES.join(', ')}`);
      if (typeof operation !== 'string' || typeof resource !== 'string') throw new InvalidRequestError('operation and resource: expected strings');
      const now = this.clock();
      const refusals: { id: string; code: string }[] = [];
      for (const id of this.byPrincipal.get(principal) ?? []) {
        const c = this.store.get(id)!;
        if (c.resourceType !== resourceType) continue;
        try {
          this.checkSignature(c);
          this.checkLive(c, now);
          this.checkCaller(c, caller);
          const op = resourceType === 'tool' && TOOL_OPERATION_SET.has(operation) && !c.operations.includes(operation) && c.operations.includes('invoke') ? 'invoke' : operation;
          permits(c, op, resource, caller);
        } catch (err) {
          refusals.push({ id: c.id, code: (err as { code?: string }).code ?? 'E_INTERNAL' });
          continue;
        }
        if (this.auditing) this.emit({ type: 'capability_validated', principal, capabilityId: c.id, details: { operation, resource } });
        return c;
      }
      throw new AccessDeniedError(
        'E_PERMISSION_DENIED',
        `no live ${resourceType} capability of '${principal}' allows ${operation} on '${resource}'` + (refusals.length ? ` (${refusals.map((r) => `${r.id.slice(0, 8)}: ${r.code}`).join(', ')})` : ''),
        { principal, resourceType, operation, resource, refusals },
      );
    } catch (err) {
      return this.denied(err, undefined, caller, { operation, resource, resourceType });
    }
  }

  /** The capabilities this kernel stores for `principal`, in issue order: live ones unless asked for more. */
  listCapabilities(principal: string, opts: ListOptions = {}): Capability[] {
    const now = this.clock();
    const out: Capability[] = [];
    for (const id of this.byPrincipal.get(principal) ?? []) {
      const c = this.store.get(id)!;
      if (!opts.includeExpired && now >= c.expiresAt) continue;
      if (!opts.includeRevoked && this.isRevokedOrAncestor(c)) continue;
      out.push(c);
    }
    return out;
  }

  /**
   * Forgets every expired capability (revoked or not) and compacts the revocation file down to
   * ids whose capability has not expired yet (or whose expiry is unknown). Safe because nothing
   * expired can validate again, and a child never outlives its parent. Returns how many
   * capabilities were forgotten. The compaction replaces the file: run it only where this
   * kernel is the one writer of its state dir.
   */
  pruneExpired(): number {
    return this.pruneExpiredIds().length;
  }

  /** pruneExpired, returning the ids forgotten; every `onPruned` listener hears them. */
  pruneExpiredIds(): string[] {
    const now = this.clock();
    // Compact first: the expiries of old lines come from records about to be forgotten.
    this.revocations.compact(now, (id) => this.expiryOf(id));
    const forgotten: string[] = [];
    for (const c of [...this.store.values()]) {
      if (now < c.expiresAt) continue;
      this.forget(c);
      forgotten.push(c.id);
    }
    for (const [id, exp] of this.foreign) if (exp <= now) this.foreign.delete(id);
    for (const [token, c] of this.tokenCache) if (c.expiresAt <= now) this.tokenCache.delete(token);
    if (forgotten.length > 0) {
      for (const fn of this.pruneListeners) {
        try {
          fn(forgotten);
        } catch {
          // a listener's failure must not stop the others or the pruning
        }
      }
    }
    return forgotten;
  }

  private readonly pruneListeners = new Set<(ids: readonly string[]) => void>();
  private pruneTimer: NodeJS.Timeout | undefined;

  /** Calls `fn` with the ids of capabilities each prune forgot (whoever keeps its own index of them drops them too). Returns an unsubscribe. */
  onPruned(fn: (ids: readonly string[]) => void): () => void {
    this.pruneListeners.add(fn);
    return () => this.pruneListeners.delete(fn);
  }

  /**
   * Runs pruneExpired every `intervalMs` (an unref'd timer, stopped by close() or stopPruning()).
   * A failed prune (the state dir refusing the compacted file) is reported to `onError` and
   * retried at the next tick; nothing is forgotten by a compaction that failed. Idempotent:
   * a second call replaces the interval.
   */
  startPruning(intervalMs: number, onError?: (err: unknown) => void): void {
    if (!Number.isFinite(intervalMs) || intervalMs <= 0) throw new RangeError('startPruning: intervalMs must be a positive number');
    this.stopPruning();
    this.pruneTimer = setInterval(() => {
      try {
        this.pruneExpiredIds();
      } catch (err) {
        onError?.(err);
      }
    }, intervalMs);
    this.pruneTimer.unref();
  }

  stopPruning(): void {
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    this.pruneTimer = undefined;
  }

  get pruning(): boolean {
    return this.pruneTimer !== undefined;
  }

  private forget(c: Capability): void {
    this.store.delete(c.id);
    this.issueSeqs.delete(c.id);
    const mine = this.byPrincipal.get(c.principal);
    mine?.delete(c.id);
    if (mine?.size === 0) this.byPrincipal.delete(c.principal);
    if (c.parentId !== null) {
      const siblings = this.children.get(c.parentId);
      siblings?.delete(c.id);
      if (siblings?.size === 0) this.children.delete(c.parentId);
    }
    this.children.delete(c.id);
    if (c.holder) {
      const k = refKey(c.holder);
      const bound = this.bindings.get(k);
      bound?.delete(c.id);
      if (bound?.size === 0) this.bindings.delete(k);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Inspection

  /** The place of a stored capability in this kernel's issue order (1, 2, ...; a parent's is below its children's). */
  issueSeq(id: string): number | undefined {
    return this.issueSeqs.get(id);
  }

  getCapability(id: string): Capability | undefined {
    return this.store.get(id);
  }

  isRevoked(id: string): boolean {
    return this.revocations.has(id);
  }

  /**
   * Whether `ref` is a well-formed capability signed with a key this kernel holds (nothing
   * else: not expiry, revocation or holder). Audits nothing; for callers that must tell a
   * forgery (which validation will refuse and audit) from a genuine capability.
   */
  isAuthentic(ref: CapabilityRef): boolean {
    try {
      this.resolve(ref);
      return true;
    } catch {
      return false;
    }
  }

  /** The token for a stored capability (carries any binding). */
  token(id: string): string {
    const c = this.store.get(id);
    if (!c) throw new AccessDeniedError('E_UNKNOWN_CAPABILITY', `no capability with id ${id} is known to this kernel`, { id });
    return toToken(c);
  }

  stats(): KernelStats {
    const now = this.clock();
    let live = 0;
    let bound = 0;
    for (const c of this.store.values()) {
      if (now < c.expiresAt && !this.revocations.has(c.id) && !c.ancestors.some((a) => this.revocations.has(a))) {
        live++;
        if (c.holder) bound++;
      }
    }
    const s: KernelStats = { ...this.counters, revoked: this.revocations.size, live, bound };
    if (this.revocations.lastSyncError) s.revocationSyncError = this.revocations.lastSyncError.message;
    const audit = this.audit.stats?.();
    if (audit) s.audit = audit;
    return s;
  }

  /** Resolves once the revocations of holder deaths are fdatasync'd too (see processExited). */
  whenRevocationsSynced(): Promise<void> {
    return this.revocations.whenSynced();
  }

  /** Stops the prune timer and closes the revocation file (syncing what a death left unsynced). */
  close(): void {
    this.stopPruning();
    this.revocations.close();
  }
}

