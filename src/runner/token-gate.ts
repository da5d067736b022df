// ct2 tokens in the sidecar: the issuer keys (<stateDir>/token-keys) and the trusted key sets,
// the validation cache, the revocation source (a file here, or a NATS KV bucket shared by every
// host), and the three things the sidecar does with tokens: authorise a tool call presented with
// one, export a ct1 capability as one, and revoke them. ct1 calls never pass through here.
//
// An exported token is tied to the ct1 capability it came from: when that capability is revoked
// (by its holder, an administrator, or the cascade at its holder's death), the token's block-0
// id is revoked through the revocation source, so every host sharing the set refuses it. Until
// that revocation is durable, this sidecar already refuses the token (isRevoked asks the kernel).
// ct1 capabilities do not outlive the sidecar run that issued them, so neither may their tokens:
// each export is written to <stateDir>/token-exports.jsonl before it is handed out, and a start
// that finds entries there (the last run was killed before it could revoke them) revokes them.
import { closeSync, fdatasyncSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { KeyObject } from 'node:crypto';
import type { Capability, ProcessRef, ResourceType } from '../kernel/capability.js';
import type { Constraints } from '../kernel/constraints.js';
import { AccessDeniedError, InvalidRequestError } from '../kernel/errors.js';
import type { AuditSink } from '../kernel/events.js';
import type { SecurityKernel } from '../kernel/kernel.js';
import { effectiveLimits, type ToolArgs, type ToolPolicy } from '../kernel/policy.js';
import { decodeEnvelope, revocationId } from '../kernel/tokens/format.js';
import {
  inspectToken,
  issueToken,
  publicKeysFromJwks,
  TokenError,
  TokenKeyStore,
  tokenKeyDir,
  TokenVerifier,
  type PublicKeySet,
  type TokenRequest,
  type TokenVerifierStats,
  type VerifiedToken,
} from '../kernel/tokens/index.js';
import { CaptrapError } from '../errors.js';
import { log } from '../log.js';
import { ConfigError, revocationsConfig, type SidecarConfig } from './config.js';
import { RPC_ERROR, RpcError } from './jsonrpc.js';
import type { SidecarMetrics } from './metrics.js';
import type { TokenGrant } from './runner.js';
import { checkOwnedPath } from './statedir.js';
import { MirroredRevocations } from './token-revocations-mirror.js';
import { FileTokenRevocations, REVOCATION_ID } from './token-revocations-file.js';
import type { RevocationEntry, RevocationStatus, RevocationsConfig, TokenRevocations } from './token-revocations.js';

/** An exported token's lifetime when the agent names none (never beyond its capability's). */
export const DEFAULT_EXPORT_TTL_MS = 3_600_000;
/** Live ct2 tokens one capability may have been exported as (capabilities.export beyond it: E_TOO_MANY_EXPORTS). */
export const MAX_EXPORTS_PER_CAPABILITY = 64;

export interface TokenGateOptions {
  config: SidecarConfig;
  audit: AuditSink;
  kernel: SecurityKernel;
  policy: ToolPolicy;
  metrics?: SidecarMetrics;
  /** A revocation source of the embedder's own; default: the one config.revocations names. */
  revocations?: TokenRevocations;
}

export interface IssuedToken {
  token: string;
  tokenId: string;
  keyId: string;
  /** Block 0's id: revoking it revokes the token and everything attenuated from it. */
  revocationIds: string[];
  expiresAt: number;
  principal: string | null;
}

export interface TokenIssueRequest {
  resourceType: ResourceType;
  resource: string;
  operations: string[];
  ttlMs: number;
  principal?: string;
  constraints?: unknown;
  when?: string;
}

export interface TokenGateStats {
  /** Tool calls a ct2 token allowed. */
  verified: number;
  /** Tool calls with a ct2 token refused (any E_TOKEN_* code, or the call's own errors). */
  denied: number;
  cache: TokenVerifierStats;
}

/** Opens the source config.revocations names. The nats module is loaded only when it is used. */
export async function openRevocations(cfg: RevocationsConfig, stateDir: string): Promise<TokenRevocations> {
  if (cfg.backend === 'file') {
    checkOwnedPath(`${stateDir}/token-revocations.jsonl`, 'file', { role: 'token revocation list' });
    return FileTokenRevocations.open(stateDir, cfg.host);
  }
  // Loaded only for this backend: no NATS client in a sidecar that does not use one.
  const { openNatsRevocations } = await import('./nats-revocations.js');
  checkOwnedPath(`${stateDir}/token-revocations.jsonl`, 'file', { role: 'token revocation list (local copy)' });
  const local = await FileTokenRevocations.open(stateDir, cfg.host);
  let remote: TokenRevocations;
  try {
    remote = await openNatsRevocations(cfg, { log });
  } catch (err) {
    await local.close();
    throw err;
  }
  try {
    return await MirroredRevocations.open(remote, local, log);
  } catch (err) {
    await remote.close();
    await local.close();
    throw err;
  }
}

function readTrusted(files: readonly string[], own: ReadonlySet<string>): Map<string, KeyObject> {
  const out = new Map<string, KeyObject>();
  for (const file of files) {
    let value: unknown;
    try {
      value = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      throw new ConfigError(`tokens.trust: ${file}: ${(err as Error).message}`, { field: 'tokens.trust', file }, err);
    }
    let keys: PublicKeySet;
    try {
      keys = publicKeysFromJwks(value, file);
    } catch (err) {
      throw new ConfigError(`tokens.trust: ${(err as Error).message}`, { field: 'tokens.trust', file }, err);
    }
    for (const [kid, key] of keys) {
      // One id, two keys: which one signed a token would be a guess. Refuse to start instead.
      if (own.has(kid) || out.has(kid)) throw new ConfigError(`tokens.trust: ${file}: key id '${kid}' is already trusted (the sidecar's own keys or an earlier file)`, { field: 'tokens.trust', file, kid });
      out.set(kid, key);
    }
  }
  return out;
}

const REFRESH_MIN_INTERVAL_MS = 1000;
export const TOKEN_EXPORTS_FILE = 'token-exports.jsonl';

/**
 * The block-0 ids of tokens an earlier run exported and may not have revoked, still unexpired.
 * A torn last line was never acknowledged (the export answers after fdatasync); any other line
 * that does not parse stops the start: those tokens could otherwise outlive their capabilities.
 */
function readExports(path: string, now: number): string[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new TokenExportsFileError(`cannot read ${path}: ${(err as Error).message}`, { path }, err);
  }
  const lines = text.split('\n');
  lines.pop(); // '' after the last newline, or a torn tail
  const out: string[] = [];
  for (const [i, line] of lines.entries()) {
    const v = parseJsonLine(line) as { id?: unknown; expiresAt?: unknown } | null;
    if (!v || typeof v.id !== 'string' || !REVOCATION_ID.test(v.id) || typeof v.expiresAt !== 'number') {
      throw new TokenExportsFileError(`${path}: line ${i + 1} is not an export record ({"id":"<64 hex>","expiresAt"}); refusing to start without revoking the tokens an earlier run exported`, { path, line: i + 1 });
    }
    if (v.expiresAt > now) out.push(v.id);
  }
  return out;
}

function parseJsonLine(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    return null;
  }
}

export class TokenExportsFileError extends CaptrapError {
  constructor(message: string, details: Record<string, unknown>, cause?: unknown) {
    super('E_TOKEN_EXPORTS_FILE', message, details, cause === undefined ? undefined : { cause });
  }
}
const CLOSE_WAIT_MS = 5000;

export class TokenGate {
  readonly store: TokenKeyStore;
  readonly verifier: TokenVerifier;
  readonly revocations: TokenRevocations;
  readonly host: string;
  private verifiedCalls = 0;
  private deniedCalls = 0;
  /** Ids this sidecar revoked: refused at once, whatever the source's own latency. */
  private readonly revokedHere = new Set<string>();
  /** Block-0 id of an exported token -> the ct1 capability it came from. */
  private readonly exported = new Map<string, string>();
  /** ct1 capability id -> the block-0 ids of the tokens exported from it. */
  private readonly exportsOf = new Map<string, Set<string>>();
  private readonly killers = new Set<(ids: ReadonlySet<string>) => void>();
  private readonly unsubscribe: () => void;
  private keyIds: ReadonlySet<string>;
  private lastRefresh = 0;
  private closed = false;
  /** Revocations started by a ct1 revocation, awaited (bounded) at close. */
  private readonly pending = new Set<Promise<unknown>>();
  /** A revocation of exported tokens failed: the exports file is kept for the next start. */
  private exportRevocationFailed = false;
  private readonly exportsPath: string;
  private exportsFd: number | undefined;

  private constructor(
    private readonly o: TokenGateOptions,
    store: TokenKeyStore,
    revocations: TokenRevocations,
    host: string,
  ) {
    this.store = store;
    this.revocations = revocations;
    this.host = host;
    this.exportsPath = join(o.config.stateDir, TOKEN_EXPORTS_FILE);
    const keys = this.loadKeys();
    this.keyIds = new Set(keys.keys());
    this.verifier = new TokenVerifier({
      publicKeys: keys,
      isRevoked: (ids) => this.isRevoked(ids),
      maxEntries: o.config.tokens?.cacheEntries ?? 10_000,
    });
    this.unsubscribe = revocations.onRevoked((entries) => this.revoked(entries, 'remote'));
  }

  /** Opens the key store (creating a first key, as `captrap keys rotate` would), the trusted sets and the revocation source. */
  static async open(o: TokenGateOptions): Promise<TokenGate> {
    const { config } = o;
    const dir = tokenKeyDir(config.stateDir);
    checkOwnedPath(dir, 'dir', { create: true, role: 'token key directory' });
    const store = TokenKeyStore.open(dir, { create: true });
    const rc = config.revocations ?? revocationsConfig();
    const exportsPath = join(config.stateDir, TOKEN_EXPORTS_FILE);
    checkOwnedPath(exportsPath, 'file', { role: 'token export list' });
    const leftover = readExports(exportsPath, Date.now());
    const revocations = o.revocations ?? (await openRevocations(rc, config.stateDir));
    try {
      const gate = new TokenGate(o, store, revocations, rc.host);
      if (leftover.length > 0) {
        // Before the first call is served: the ct1 capabilities these came from died with that run.
        await gate.revoke(leftover, 'exported by an earlier run of this sidecar, which stopped without revoking it');
      }
      gate.exportsFd = openSync(exportsPath, 'a', 0o600);
      ftruncateSync(gate.exportsFd, 0);
      return gate;
    } catch (err) {
      await revocations.close();
      throw err;
    }
  }

  /** The sidecar's own keys and every trusted set, as one key set. */
  private loadKeys(): PublicKeySet {
    const own = this.store.publicKeys();
    const trusted = readTrusted(this.o.config.tokens?.trust ?? [], new Set(own.keys()));
    return new Map([...own, ...trusted]);
  }

  /**
   * Re-reads the keys after a `captrap keys rotate` (a key this sidecar did not know signs) or an
   * edited trust file; at most once a second, since a forger can name unknown keys at will.
   */
  private refreshKeys(force = false): boolean {
    const now = Date.now();
    if (!force && now - this.lastRefresh < REFRESH_MIN_INTERVAL_MS) return false;
    this.lastRefresh = now;
    let keys: PublicKeySet;
    try {
      keys = this.loadKeys();
    } catch (err) {
      log.error({ err }, 'reloading the ct2 token keys failed; keeping the ones loaded');
      return false;
    }
    const ids = new Set(keys.keys());
    if (ids.size === this.keyIds.size && [...ids].every((k) => this.keyIds.has(k))) return false;
    this.keyIds = ids;
    this.verifier.setPublicKeys(keys);
    return true;
  }

  /** Revoked here, revoked in the shared set, or exported from a ct1 capability that is no longer live. Throws when the set cannot be trusted. */
  private isRevoked(ids: readonly string[]): boolean {
    for (const id of ids) if (this.revokedHere.has(id)) return true;
    const from = ids.length > 0 ? this.exported.get(ids[0]!) : undefined;
    if (from !== undefined && !this.capabilityLive(from)) return true;
    return this.revocations.isRevoked(ids);
  }

  private capabilityLive(id: string): boolean {
    const { kernel } = this.o;
    const c = kernel.getCapability(id);
    return c !== undefined && !kernel.isRevoked(id) && !c.ancestors.some((a) => kernel.isRevoked(a));
  }

  /** `fn` hears every batch of ids revoked (here or elsewhere): the runner stops the calls they launched. */
  onRevoked(fn: (ids: ReadonlySet<string>) => void): () => void {
    this.killers.add(fn);
    return () => this.killers.delete(fn);
  }

  // -------------------------------------------------------------------------------------------
  // Tool calls

  /**
   * Verifies `token` for this call: the caller as the channel identified it, operation invoke
   * (or the tool's own operation when the token grants that instead, as for ct1), the tool, and
   * the arguments mapped through the catalogue. Allowed: the grant the runner needs, audited as
   * capability_validated. Refused: access_denied with the token's code and block, then thrown.
   */
  authorize(principal: string, process: ProcessRef, toolName: string, rawArgs: Readonly<Record<string, unknown>>, token: string): TokenGrant {
    try {
      const tool = this.o.policy.tool(toolName);
      if (!tool) {
        // A forged, revoked or expired token says so first, whatever the tool.
        this.verifier.verify(token);
        throw new AccessDeniedError('E_UNKNOWN_TOOL', `no tool named '${toolName}' in the catalogue`, { tool: toolName });
      }
      let args: ToolArgs;
      try {
        args = tool.parseArgs(rawArgs);
      } catch (err) {
        this.verifier.verify(token);
        throw err;
      }
      const request: TokenRequest = { principal, operation: 'invoke', resource: toolName, tool: toolName, args, access: tool.accessOf(args), host: this.host };
      let v: VerifiedToken;
      try {
        v = this.verify(token, request);
      } catch (err) {
        // `invoke` grants every tool; a token granting the tool's own operation (read, write...) does too.
        if (!(err instanceof TokenError && err.code === 'E_TOKEN_DENIED' && err.details?.['reason'] === 'E_OPERATION_NOT_PERMITTED')) throw err;
        v = this.verify(token, { ...request, operation: tool.operation });
      }
      if (v.resourceType !== 'tool') {
        throw new TokenError('E_TOKEN_DENIED', `block 0: the token grants ${v.resourceType} access, not tool calls`, { block: 0, reason: 'E_RESOURCE_NOT_PERMITTED' });
      }
      const checked = v.checked ?? { realPaths: {}, canonicalUrls: {} };
      const argv = tool.argv(args, checked.realPaths, checked.canonicalUrls);
      const constraints: Constraints = v.constraints;
      const revocationIds = v.revocationIds;
      this.verifiedCalls++;
      this.o.audit.record({
        type: 'capability_validated',
        principal,
        details: { operation: request.operation, tool: toolName, tokenId: v.tokenId, keyId: v.rootKeyId, revocationIds },
      });
      return {
        tokenId: v.tokenId,
        keyId: v.rootKeyId,
        revocationIds,
        expiresAt: v.expiresAt,
        constraints,
        tool,
        args,
        argv,
        limits: effectiveLimits(tool.spec.limits, constraints.limits),
        realPaths: checked.realPaths,
        revoked: () => {
          try {
            return this.isRevoked(revocationIds);
          } catch {
            // A source that cannot vouch for its set stops new calls; it does not kill running ones.
            return false;
          }
        },
      };
    } catch (err) {
      this.deniedCalls++;
      this.o.metrics?.toolDenials.inc({ code: (err as { code?: string }).code ?? 'E_INTERNAL' });
      this.o.audit.record({ type: 'access_denied', principal, process, details: denialDetails(err, token, toolName) });
      throw err;
    }
  }

  /** The verifier's answer; a key this sidecar does not know yet may be one `captrap keys rotate` just made. */
  private verify(token: string, request: TokenRequest): VerifiedToken {
    try {
      return this.verifier.verify(token, request);
    } catch (err) {
      if (err instanceof TokenError && err.code === 'E_TOKEN_UNKNOWN_KEY' && this.refreshKeys()) return this.verifier.verify(token, request);
      throw err;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Issuing

  private signingKey() {
    const key = this.store.signingKey();
    // Rotated since start: verify what we sign.
    if (!this.keyIds.has(key.id)) this.refreshKeys(true);
    return key;
  }

  private describe(token: string): IssuedToken {
    const env = decodeEnvelope(token);
    const body = inspectToken(token).blocks[0]!;
    return {
      token,
      tokenId: body.tokenId!,
      keyId: env.key,
      revocationIds: [revocationId(env.blocks[0]!.sig)],
      expiresAt: body.expiresAt!,
      principal: body.principal ?? null,
    };
  }

  /**
   * A ct2 token for what ct1 capability `cap` grants, for `principal` (its holder, as the channel
   * identified it): same resource, operations and constraints, expiring at the earliest of the
   * capability's expiry and now + ttlMs (default 1 h). Revoked when the capability is.
   */
  exportCapability(cap: Capability, principal: string, ttlMs?: number): IssuedToken & { capability: string } {
    const now = Date.now();
    const expiresAt = Math.min(cap.expiresAt, now + (ttlMs ?? DEFAULT_EXPORT_TTL_MS));
    if (expiresAt <= now) throw new AccessDeniedError('E_EXPIRED', `capability ${cap.id} has expired`, { id: cap.id });
    // Each export costs a line on disk and memory until its capability goes: bounded per capability.
    const live = this.exportsOf.get(cap.id)?.size ?? 0;
    if (live >= MAX_EXPORTS_PER_CAPABILITY) {
      const reason = `capability ${cap.id} has ${live} live exported tokens; the limit is ${MAX_EXPORTS_PER_CAPABILITY} (reuse or attenuate one)`;
      this.o.audit.record({ type: 'capability_denied', principal, capabilityId: cap.id, details: { code: 'E_TOO_MANY_EXPORTS', message: reason, operation: 'export', live, max: MAX_EXPORTS_PER_CAPABILITY } });
      throw new RpcError(RPC_ERROR.ACCESS_DENIED, reason, { code: 'E_TOO_MANY_EXPORTS', reason });
    }
    const constraints: Constraints = { ...cap.constraints };
    // ct1 counts depth from the root; a token counts the blocks after block 0.
    if (constraints.maxDelegationDepth !== undefined) constraints.maxDelegationDepth = Math.max(0, constraints.maxDelegationDepth - cap.depth);
    const token = issueToken({ key: this.signingKey(), resourceType: cap.resourceType, resource: cap.resource, operations: [...cap.operations], principal, constraints, expiresAt, now });
    const out = this.describe(token);
    const rid = out.revocationIds[0]!;
    // On disk before it is handed out: a run killed before it can revoke this token, the next start does.
    if (this.exportsFd === undefined) throw new TokenExportsFileError(`${this.exportsPath} is closed`, { path: this.exportsPath });
    writeSync(this.exportsFd, JSON.stringify({ id: rid, expiresAt, capability: cap.id }) + '\n');
    fdatasyncSync(this.exportsFd);
    this.exported.set(rid, cap.id);
    let set = this.exportsOf.get(cap.id);
    if (!set) this.exportsOf.set(cap.id, (set = new Set()));
    set.add(rid);
    this.o.audit.record({
      type: 'capability_granted',
      principal,
      capabilityId: cap.id,
      details: { kind: 'ct2', exportedFrom: cap.id, tokenId: out.tokenId, keyId: out.keyId, revocationIds: out.revocationIds, expiresAt },
    });
    // Revoked between the caller's check and now (nothing awaited, but cheap to be sure).
    if (!this.capabilityLive(cap.id)) this.capabilitiesRevoked([cap.id]);
    return { ...out, capability: cap.id };
  }

  /** `captrap token issue` through the admin socket: signed by the sidecar's active key. */
  issue(r: TokenIssueRequest): IssuedToken {
    const token = issueToken({
      key: this.signingKey(),
      resourceType: r.resourceType,
      resource: r.resource,
      operations: r.operations,
      ttlMs: r.ttlMs,
      ...(r.principal !== undefined ? { principal: r.principal } : {}),
      ...(r.constraints !== undefined ? { constraints: r.constraints } : {}),
      ...(r.when !== undefined ? { when: r.when } : {}),
    });
    const out = this.describe(token);
    this.o.audit.record({
      type: 'capability_granted',
      ...(out.principal !== null ? { principal: out.principal } : {}),
      details: { kind: 'ct2', by: 'administrator', tokenId: out.tokenId, keyId: out.keyId, revocationIds: out.revocationIds, expiresAt: out.expiresAt, resourceType: r.resourceType, resource: r.resource, operations: r.operations },
    });
    return out;
  }

  // -------------------------------------------------------------------------------------------
  // Revoking

  /**
   * Revokes ids through the revocation source (every host sharing it refuses them), stops the
   * calls they launched here at once, and audits `token_revoked` once the source says it is durable.
   */
  async revoke(ids: readonly string[], reason: string): Promise<RevocationEntry[]> {
    for (const id of ids) {
      if (typeof id !== 'string' || !REVOCATION_ID.test(id)) throw new InvalidRequestError(`ids: '${String(id).slice(0, 80)}' is not a revocation id (64 hex characters)`, { path: ['ids'] });
    }
    if (ids.length === 0) return [];
    for (const id of ids) this.revokedHere.add(id);
    this.kill(new Set(ids));
    const entries = await this.revocations.revoke(ids, reason);
    this.audited(entries, 'local');
    return entries;
  }

  /** The id a presented token is revoked by: its last block's (that copy and whatever is attenuated from it). */
  static lastBlockId(token: string): string {
    const env = decodeEnvelope(token);
    return revocationId(env.blocks[env.blocks.length - 1]!.sig);
  }

  /** ct1 capabilities were revoked (any cause, cascades included): revoke the tokens exported from them. */
  capabilitiesRevoked(capabilityIds: readonly string[]): void {
    const rids: string[] = [];
    for (const id of capabilityIds) {
      const set = this.exportsOf.get(id);
      if (!set) continue;
      this.exportsOf.delete(id);
      for (const rid of set) {
        this.exported.delete(rid);
        rids.push(rid);
      }
    }
    if (rids.length === 0 || this.closed) return;
    const p = this.revoke(rids, 'the ct1 capability it was exported from was revoked')
      .catch((err: unknown) => {
        // Still refused here (revokedHere); other hosts learn it only once the source takes it,
        // at the latest at this sidecar's next start (the exports file is kept).
        this.exportRevocationFailed = true;
        log.error({ err, ids: rids }, 'revoking exported ct2 tokens failed');
      })
      .finally(() => this.pending.delete(p));
    this.pending.add(p);
  }

  /** Expired ct1 capabilities the kernel forgot: their tokens have expired too. */
  capabilitiesForgotten(capabilityIds: readonly string[]): void {
    for (const id of capabilityIds) {
      const set = this.exportsOf.get(id);
      if (!set) continue;
      this.exportsOf.delete(id);
      for (const rid of set) this.exported.delete(rid);
    }
  }

  private revoked(entries: RevocationEntry[], origin: 'local' | 'remote'): void {
    if (entries.length === 0) return;
    this.kill(new Set(entries.map((e) => e.id)));
    this.audited(entries, origin);
  }

  private kill(ids: ReadonlySet<string>): void {
    for (const fn of this.killers) {
      try {
        fn(ids);
      } catch (err) {
        log.error({ err }, 'stopping calls of revoked ct2 tokens failed');
      }
    }
  }

  /** One token_revoked record per (host, reason) of the batch. */
  private audited(entries: readonly RevocationEntry[], origin: 'local' | 'remote'): void {
    const groups = new Map<string, RevocationEntry[]>();
    for (const e of entries) {
      const k = JSON.stringify([e.host, e.reason]);
      const g = groups.get(k);
      if (g) g.push(e);
      else groups.set(k, [e]);
    }
    for (const g of groups.values()) {
      this.o.audit.record({ type: 'token_revoked', details: { ids: g.map((e) => e.id), host: g[0]!.host, reason: g[0]!.reason, origin, at: g[0]!.at } });
    }
  }

  // -------------------------------------------------------------------------------------------

  stats(): TokenGateStats {
    return { verified: this.verifiedCalls, denied: this.deniedCalls, cache: this.verifier.stats() };
  }

  revocationStatus(): RevocationStatus {
    return this.revocations.status();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe();
    this.killers.clear();
    // The shutdown's own cascade revokes every exported token: let those land (a source that
    // cannot take them, a NATS server gone, gets a few seconds, not the whole shutdown).
    let timer: NodeJS.Timeout | undefined;
    const settled = await Promise.race([Promise.allSettled([...this.pending]).then(() => true), new Promise<false>((r) => (timer = setTimeout(() => r(false), CLOSE_WAIT_MS)))]);
    clearTimeout(timer);
    if (this.exportsFd !== undefined) {
      // Every exported token's capability was revoked by the shutdown and the revocations landed:
      // nothing for the next start to do. Otherwise the list stays, and the next start revokes them.
      if (settled && !this.exportRevocationFailed && this.exported.size === 0) ftruncateSync(this.exportsFd, 0);
      closeSync(this.exportsFd);
      this.exportsFd = undefined;
    }
    await this.revocations.close();
  }
}

/** What an access_denied record says about a refused ct2 call: the code, which block and why, and the token's ids when it decodes. */
function denialDetails(err: unknown, token: string, tool: string): Record<string, unknown> {
  const code = (err as { code?: string }).code ?? 'E_INTERNAL';
  const d: Record<string, unknown> = { code, message: (err as Error).message, operation: 'invoke', tool };
  if (err instanceof TokenError) {
    const block = err.details?.['block'];
    const reason = err.details?.['reason'];
    if (block !== undefined) d['block'] = block;
    if (reason !== undefined) d['reason'] = reason;
    // The source could not vouch for its set: refused, but not the caller's doing.
    if (code === 'E_TOKEN_REVOKED' && err.cause !== undefined) d['revocationCheckFailed'] = true;
  }
  try {
    // Unverified for a forged token (the record says which code refused it).
    const env = decodeEnvelope(token);
    const b0 = inspectToken(token).blocks[0];
    if (b0?.tokenId !== undefined) d['tokenId'] = b0.tokenId;
    d['keyId'] = env.key;
    d['revocationIds'] = env.blocks.map((b) => revocationId(b.sig));
  } catch {
    // malformed: nothing more to say
  }
  return d;
}
