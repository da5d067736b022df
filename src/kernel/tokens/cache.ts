// A validation cache for ct2 tokens. verifyToken spends most of its time in Ed25519 checks whose
// outcome depends only on the token's bytes and the public keys, so a long-lived verifier can keep
// it. Two levels, each a bounded LRU:
//   1. chain: token -> what its signatures establish (blocks, revocation ids). Only successes are
//      kept; a token that fails is verified in full every time. Cleared when the keys change.
//   2. decision: (token, request) -> the allowed result, for requests whose answer is a pure
//      function of the token and the request (see decisionKey). Denials are never kept.
// Revocation, expiry and delegation depth are checked on every call, hit or miss, exactly as
// verifyToken checks them, so a cached entry never outlives a revocation or the token's expiry.
import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { quoteJson } from '../json-quote.js';
import { TokenError } from './errors.js';
import { checkNotExpired, checkNotRevoked, checkVerifiedChain, verifyTokenChain, type PublicKeySet, type TokenRequest, type VerifiedChain, type VerifiedToken, type VerifyTokenOptions } from './verify.js';

export const DEFAULT_CACHE_ENTRIES = 10_000;

export interface TokenVerifierOptions {
  publicKeys: PublicKeySet;
  /** Asked on every call, cached or not; a throw refuses the token (as in verifyToken). */
  isRevoked: VerifyTokenOptions['isRevoked'];
  /** Entries per level; default 10 000. */
  maxEntries?: number;
  /** The clock, in ms since the epoch; default Date.now. Read on every call. */
  now?: () => number;
}

export interface CacheLevelStats {
  hits: number;
  misses: number;
  /** hits / (hits + misses), 0 before any lookup. */
  hitRatio: number;
  size: number;
  maxEntries: number;
}

export interface TokenVerifierStats {
  chain: CacheLevelStats;
  /** `uncacheable` counts requests that went past this level by rule (file access, `now` in a `when`), not counted as misses. */
  decision: CacheLevelStats & { uncacheable: number };
}

/**
 * A bounded cache evicting roughly the least recently used (CLOCK, "second chance"): a hit only
 * sets a flag, so the hot path never reorders the Map; when full, the oldest entries that were
 * used since they last came round move to the back with the flag cleared, and the oldest unused
 * one goes. Each entry moves at most once per eviction round, so eviction is O(1) amortised.
 */
class Lru<V> {
  private readonly map = new Map<string, { v: V; used: boolean }>();
  hits = 0;
  misses = 0;
  constructor(readonly maxEntries: number) {}

  get(key: string): V | undefined {
    const e = this.map.get(key);
    if (e === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    e.used = true;
    return e.v;
  }

  /** The value under key whose `full` is `full` (a miss otherwise): a slot compared whole. */
  getFull(key: string, full: string): V | undefined {
    const e = this.map.get(key);
    if (e === undefined || (e.v as { full?: string }).full !== full) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    e.used = true;
    return e.v;
  }

  has(key: string): boolean {
    return this.map.has(key);
  }

  set(key: string, v: V): void {
    const had = this.map.get(key);
    if (had !== undefined) {
      had.v = v;
      had.used = true;
      return;
    }
    while (this.map.size >= this.maxEntries) this.evictOne();
    this.map.set(key, { v, used: false });
  }

  private evictOne(): void {
    for (const [k, e] of this.map) {
      this.map.delete(k);
      if (!e.used) return;
      e.used = false;
      this.map.set(k, e);
    }
  }

  /** Deletes the entry under key if `matches` accepts its value. */
  deleteIf(key: string, matches: (v: V) => boolean): void {
    const e = this.map.get(key);
    if (e !== undefined && matches(e.v)) this.map.delete(key);
  }

  clear(): void {
    this.map.clear();
  }

  stats(): CacheLevelStats {
    const total = this.hits + this.misses;
    return { hits: this.hits, misses: this.misses, hitRatio: total === 0 ? 0 : this.hits / total, size: this.map.size, maxEntries: this.maxEntries };
  }
}

interface ChainEntry {
  /**
   * Stands for the token in decision keys (cheaper than the token's characters). Never reused, so
   * decisions of an evicted entry are never served to a later one; they age out of the LRU.
   */
  id: number;
  /** The token (or its digest) this entry verified: a slot holds one token, compared whole on every hit. */
  full: string;
  chain: VerifiedChain;
  /** Level 2 is off for this token: some block's `when` may read the clock. */
  readsClock: boolean;
  hasWhen: boolean;
}

/**
 * Conservative: any `now` token in the text, even inside a string literal, counts. CEL has no way
 * to reach a variable other than by its name, so an expression without the word cannot read it.
 */
const READS_NOW = /(^|[^A-Za-z0-9_])now([^A-Za-z0-9_]|$)/;

/**
 * Deterministic JSON with object keys sorted, so `{a,b}` and `{b,a}` share a key; undefined for a
 * value JSON would spell like another (NaN like null, a Date or Map like {}): such a request is
 * not cached rather than risk two requests sharing a decision.
 */
function canonicalJson(v: unknown): string | undefined {
  switch (typeof v) {
    case 'string':
      return quoteJson(v);
    case 'boolean':
      return v ? 'true' : 'false';
    case 'number':
      return Number.isFinite(v) && !Object.is(v, -0) ? JSON.stringify(v) : undefined;
    case 'object': {
      if (v === null) return 'null';
      if (Array.isArray(v)) {
        let out = '[';
        for (let i = 0; i < v.length; i++) {
          const s = canonicalJson(v[i]);
          if (s === undefined) return undefined;
          out += (i > 0 ? ',' : '') + s;
        }
        return out + ']';
      }
      const proto = Object.getPrototypeOf(v) as unknown;
      if (proto !== Object.prototype && proto !== null) return undefined;
      const o = v as Record<string, unknown>;
      const keys = Object.keys(o);
      // Callers usually send keys in one order: sort only when they are not already sorted.
      for (let i = 1; i < keys.length; i++) {
        if (keys[i - 1]! > keys[i]!) {
          keys.sort();
          break;
        }
      }
      let out = '{';
      let first = true;
      for (const k of keys) {
        if (o[k] === undefined) continue;
        const s = canonicalJson(o[k]);
        if (s === undefined) return undefined;
        out += (first ? '' : ',') + quoteJson(k) + ':' + s;
        first = false;
      }
      return out + '}';
    }
    default:
      return undefined; // bigint, function, symbol, undefined inside an array
  }
}


/** Tokens up to this many characters are compared whole; longer ones by their SHA-256. */
const KEY_BY_VALUE_CHARS = 4096;
/** How many trailing characters of a token name its slot: the proof or seal, fresh random bytes per token. */
const SLOT_CHARS = 43;

/**
 * How the chain level finds a token (in verify): `full` stands for the token and is compared on
 * every hit; `slot` is the Map key. A short token is its own `full`, and its slot is its last
 * characters (hashing a ~1 KB string that arrived in a fresh message costs more than the rest of
 * a hit; comparing two is a memcmp). A long token is keyed by its SHA-256 (this function), so a
 * level holds at most maxEntries × 4 KiB of keys. The kinds cannot meet: a token's characters are
 * base64url, a digest starts with "#".
 */
function tokenDigest(token: string): string {
  return '#' + createHash('sha256').update(token).digest('base64');
}

/** Every later caller receives the same blocks: none may change them for the others. */
function deepFreeze<T>(v: T): T {
  if (v !== null && typeof v === 'object' && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

/**
 * Verifies ct2 tokens like verifyToken, with the same results and the same TokenErrors, caching
 * signature checks and allowed decisions. See docs/tokens.md, "Validation cache".
 */
export class TokenVerifier {
  private publicKeys: PublicKeySet;
  private readonly isRevoked: TokenVerifierOptions['isRevoked'];
  private readonly clock: () => number;
  private readonly chains: Lru<ChainEntry>;
  private readonly decisions: Lru<VerifiedToken>;
  private uncacheable = 0;
  private nextId = 0;

  constructor(o: TokenVerifierOptions) {
    const max = o.maxEntries ?? DEFAULT_CACHE_ENTRIES;
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`maxEntries must be a positive integer, not ${max}`);
    this.publicKeys = o.publicKeys;
    this.isRevoked = o.isRevoked;
    this.clock = o.now ?? Date.now;
    this.chains = new Lru(max);
    this.decisions = new Lru(max);
  }

  /** Installs a new key set (after a rotation or a retirement) and forgets everything verified under the old one. */
  setPublicKeys(publicKeys: PublicKeySet): void {
    this.publicKeys = publicKeys;
    this.clear();
  }

  /** Forgets every cached chain and decision; the counters keep running. */
  clear(): void {
    this.chains.clear();
    this.decisions.clear();
  }

  /** Same contract as verifyToken(token, { publicKeys, isRevoked, now, request }). */
  verify(token: string, request?: TokenRequest): VerifiedToken {
    if (typeof token !== 'string') return this.verifyFresh(token, request);
    const long = token.length > KEY_BY_VALUE_CHARS;
    const full = long ? tokenDigest(token) : token;
    const slot = long || token.length <= SLOT_CHARS ? full : token.slice(-SLOT_CHARS);
    const key = slot;
    let entry = this.chains.getFull(slot, full);
    if (entry === undefined) {
      // Throws for a malformed, unknown-key or badly signed token: nothing is cached for it.
      const chain = deepFreeze(verifyTokenChain(token, this.publicKeys));
      entry = { id: this.nextId++, full, chain, readsClock: chain.blocks.some((b) => b.when !== undefined && READS_NOW.test(b.when)), hasWhen: chain.blocks.some((b) => b.when !== undefined) };
      // A slot already holding another token (a holder can pick the last bytes of a token it
      // attenuates) keeps it: this one is verified in full each time rather than evict it.
      if (!this.chains.has(slot)) this.chains.set(slot, entry);
    }
    const now = this.clock();
    const dKey = request === undefined ? undefined : this.decisionKey(entry, request);
    if (dKey !== undefined) {
      const hit = this.decisions.get(dKey);
      if (hit !== undefined) {
        // The allowed answer is kept; revocation and expiry are not: they run here with
        // verifyToken's own checks, in its order (the depth check passed when this was cached
        // and depends on the blocks alone).
        try {
          checkNotRevoked(hit.revocationIds, this.isRevoked);
          checkNotExpired(hit.expiresAt, now);
        } catch (err) {
          this.forgetIfDead(key, entry, err);
          throw err;
        }
        return hit;
      }
    } else if (request !== undefined) this.uncacheable++;
    let result: VerifiedToken;
    try {
      result = checkVerifiedChain(entry.chain, { isRevoked: this.isRevoked, now, ...(request ? { request } : {}) });
    } catch (err) {
      this.forgetIfDead(key, entry, err);
      throw err;
    }
    if (dKey !== undefined) {
      // Served to every later caller with this request: frozen, so one caller cannot alter what the next is told.
      if (result.checked) {
        Object.freeze(result.checked.realPaths);
        Object.freeze(result.checked.canonicalUrls);
        Object.freeze(result.checked);
      }
      this.decisions.set(dKey, Object.freeze(result));
    }
    return result;
  }

  stats(): TokenVerifierStats {
    return { chain: this.chains.stats(), decision: { ...this.decisions.stats(), uncacheable: this.uncacheable } };
  }

  private verifyFresh(token: unknown, request?: TokenRequest): VerifiedToken {
    // Not a string: let verifyToken's decoder refuse it with its own error.
    return checkVerifiedChain(verifyTokenChain(token as string, this.publicKeys), { isRevoked: this.isRevoked, now: this.clock(), ...(request ? { request } : {}) });
  }

  /** A revoked or expired token cannot come back (expiry only moves forward), so its chain entry is dropped. */
  private forgetIfDead(key: string, entry: ChainEntry, err: unknown): void {
    // Only this token's own entry: a slot holding another token keeps it.
    if (err instanceof TokenError && (err.code === 'E_TOKEN_EXPIRED' || err.code === 'E_TOKEN_REVOKED')) this.chains.deleteIf(key, (e) => e === entry);
  }

  /**
   * The decision key, or undefined when the answer may depend on more than the token and the
   * request: a `when` that may read `now`, a file token (its resource is judged by real path) or
   * file arguments (real paths and sizes), since the filesystem can change between two calls.
   */
  private decisionKey(entry: ChainEntry, r: TokenRequest): string | undefined {
    if (entry.readsClock) return undefined;
    if ((entry.chain.blocks[0]?.resourceType ?? 'file') === 'file') return undefined;
    if (r.access?.files?.length) return undefined;
    // Everything verifyToken reads from the request, host included (a `when` may read it; the
    // default is this host's name, read now in case it changed).
    const host = r.host ?? (entry.hasWhen ? hostname() : undefined);
    if (typeof r.principal !== 'string' || typeof r.operation !== 'string' || typeof r.resource !== 'string') return undefined;
    if ((r.tool !== undefined && typeof r.tool !== 'string') || (host !== undefined && typeof host !== 'string')) return undefined;
    // The fields are strings (or absent) in a fixed order; only args and access need the sorted encoding.
    const args = canonicalJson(r.args ?? {});
    const access = r.access === undefined ? '' : canonicalJson(r.access);
    if (args === undefined || access === undefined) return undefined;
    const request =
      '[' + quoteJson(r.principal) + ',' + quoteJson(r.operation) + ',' + quoteJson(r.resource) + ',' + (r.tool === undefined ? 'null' : quoteJson(r.tool)) + ',' + (host === undefined ? 'null' : quoteJson(host)) + ']' + args + '\n' + access;
    // Large arguments are keyed by digest so that a level's memory stays bounded ('#' cannot start JSON).
    // Unambiguous: the array ends at its matching ']', args is one JSON value, access follows the newline.
    return entry.id + '\n' + (request.length <= KEY_BY_VALUE_CHARS ? request : '#' + createHash('sha256').update(request).digest('base64'));
  }
}
