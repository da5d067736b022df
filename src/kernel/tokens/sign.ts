// Making ct2 tokens: issue (the issuer's root key signs block 0), attenuate (a holder appends a
// narrower block, signed with the key the token's proof carries; no secret of the issuer's is
// involved) and seal (the holder gives up the ability to append).
import { randomBytes, type KeyObject } from 'node:crypto';
import { isAbsolute, posix } from 'node:path';
import { compileWhen } from '../cel.js';
import { checkNarrowing, ConstraintsSchema, intersectConstraints, normalizeConstraints, type Constraints } from '../constraints.js';
import { parseDomainEntry } from '../domains.js';
import { DelegationError, InvalidRequestError } from '../errors.js';
import { compilePattern, patternCovers } from '../pattern.js';
import type { ResourceType } from '../capability.js';
import { ephemeralKeyPair, isEd25519, privateKeyFromSeed, rawPublicKey, signEd25519 } from './ed25519.js';
import { TokenError } from './errors.js';
import {
  blockMessage,
  checkBodyShape,
  decodeBody,
  decodeEnvelope,
  encodeBody,
  encodeEnvelope,
  MAX_BLOCKS,
  sealMessage,
  type AuthorityBody,
  type BlockBody,
  type Envelope,
} from './format.js';

/** An issuer's signing key: its id goes into every token so verifiers can pick the public key. */
export interface TokenSigningKey {
  id: string;
  privateKey: KeyObject;
}

export interface IssueOptions {
  key: TokenSigningKey;
  resourceType: ResourceType;
  resource: string;
  operations: string[];
  /** Absent: any principal may present the token (a bearer token, narrowed by later blocks). */
  principal?: string;
  constraints?: unknown;
  when?: string;
  /** Milliseconds since the epoch; or give ttlMs. */
  expiresAt?: number;
  ttlMs?: number;
  now?: number;
}

/** What a holder may add in a block; every field can only narrow. */
export interface TokenNarrowing {
  principal?: string;
  operations?: string[];
  resource?: string;
  constraints?: unknown;
  when?: string;
  expiresAt?: number;
  ttlMs?: number;
  now?: number;
}

function invalid(message: string, details?: Record<string, unknown>, cause?: unknown): never {
  throw new TokenError('E_TOKEN_INVALID_BLOCK', message, details, { cause });
}

function widens(dimension: string, message: string, details: Record<string, unknown> = {}): never {
  throw new TokenError('E_TOKEN_WIDENS', `attenuation would widen ${dimension}: ${message}`, { dimension, ...details });
}

function checkPattern(resource: string): void {
  try {
    compilePattern(resource);
  } catch (err) {
    invalid(`resource pattern '${resource}': ${(err as Error).message}`, { resource }, err);
  }
}

function expiryOf(o: { expiresAt?: number; ttlMs?: number; now?: number }, required: boolean): number | undefined {
  if (o.expiresAt !== undefined && o.ttlMs !== undefined) invalid('give expiresAt or ttlMs, not both');
  const v = o.expiresAt ?? (o.ttlMs !== undefined ? (o.now ?? Date.now()) + o.ttlMs : undefined);
  if (v === undefined) {
    if (required) invalid('a token needs an expiry (expiresAt or ttlMs)');
    return undefined;
  }
  if (!Number.isSafeInteger(v) || v < 0) invalid(`expiry ${v} is not a time in milliseconds since the epoch`);
  return v;
}

function wrapConstraintError(err: unknown): never {
  if (err instanceof InvalidRequestError) invalid(err.message, err.details, err);
  throw err;
}

/** Issues a token whose single block is signed by `key`. Constraints are normalised as the kernel does (roots become real paths on this host). */
export function issueToken(o: IssueOptions): string {
  if (!isEd25519(o.key.privateKey) || o.key.privateKey.type !== 'private') invalid('the issuer key must be an Ed25519 private key');
  checkPattern(o.resource);
  let constraints: Constraints | undefined;
  try {
    constraints = o.constraints === undefined ? undefined : normalizeConstraints(o.constraints);
  } catch (err) {
    wrapConstraintError(err);
  }
  if (o.when !== undefined) compileWhen(o.when); // refuse a bad expression now, with its position
  const now = o.now ?? Date.now();
  const body: AuthorityBody = {
    tokenId: 'tok_' + randomBytes(16).toString('base64url'),
    issuedAt: now,
    expiresAt: expiryOf({ ...o, now }, true)!,
    resourceType: o.resourceType,
    resource: o.resource,
    operations: [...o.operations],
    ...(o.principal !== undefined ? { principal: o.principal } : {}),
    ...(constraints !== undefined ? { constraints } : {}),
    ...(o.when !== undefined ? { when: o.when } : {}),
  };
  const payload = encodeBody(checked(body, 0));
  const eph = ephemeralKeyPair();
  const sig = signEd25519(o.key.privateKey, blockMessage(o.key.id, 0, null, payload, eph.publicKey));
  return encodeEnvelope({ key: o.key.id, blocks: [{ payload, next: eph.publicKey, sig }], proof: { secret: eph.seed } });
}

function checked(body: BlockBody, index: number): BlockBody {
  checkBodyShape(body, index, (m) => invalid(m));
  return body;
}

/** A token's blocks, decoded but NOT verified: for holders and tools that inspect what they hold. */
export interface InspectedToken {
  rootKeyId: string;
  blocks: BlockBody[];
  sealed: boolean;
}

export function inspectToken(token: string): InspectedToken {
  const env = decodeEnvelope(token);
  return { rootKeyId: env.key, blocks: env.blocks.map((b, i) => decodeBody(b.payload, i)), sealed: 'seal' in env.proof };
}

/** The proof key of an open token, checked against the last block's `next` (so a mangled proof fails here, not at the verifier). */
function proofKey(env: Envelope): KeyObject {
  if (!('secret' in env.proof)) throw new TokenError('E_TOKEN_SEALED', 'the token is sealed: no block can be appended');
  let key: KeyObject;
  try {
    key = privateKeyFromSeed(env.proof.secret, env.blocks[env.blocks.length - 1]!.next);
  } catch (err) {
    throw new TokenError('E_TOKEN_SIGNATURE', 'the token proof is not an Ed25519 key', undefined, { cause: err });
  }
  if (!rawPublicKey(key).equals(env.blocks[env.blocks.length - 1]!.next)) {
    throw new TokenError('E_TOKEN_SIGNATURE', "the token proof does not match the last block's key");
  }
  return key;
}

function normalizeChildConstraints(input: unknown): Constraints {
  const r = ConstraintsSchema.safeParse(input);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    invalid(`constraints.${issue.path.join('.')}: ${issue.message}`, { path: issue.path });
  }
  const c = r.data;
  // Roots are compared as strings by every verifier; only a normal absolute spelling means what it says.
  for (const root of c.paths ?? []) {
    if (!isAbsolute(root) || posix.normalize(root) !== root || (root.length > 1 && root.endsWith('/'))) {
      invalid(`constraints.paths: '${root}' is not a normalised absolute path`, { root });
    }
  }
  for (const d of c.allowedDomains ?? []) {
    if (!parseDomainEntry(d)) invalid(`constraints.allowedDomains: '${d}' is not host, *.host or *, with an optional :port`, { entry: d });
  }
  return c;
}

/**
 * Appends a block that allows no more than the token already does, signed with the token's
 * proof key, and returns the new token (open, with a fresh proof). Needs no secret of the
 * issuer's and no public key: a holder can narrow offline. A request that would widen any
 * dimension is refused (E_TOKEN_WIDENS) rather than silently producing a block that the
 * verifier would intersect away; a sealed token is refused (E_TOKEN_SEALED).
 */
export function attenuate(token: string, narrower: TokenNarrowing): string {
  const env = decodeEnvelope(token);
  const key = proofKey(env);
  const prior = env.blocks.map((b, i) => decodeBody(b.payload, i));
  const index = env.blocks.length;
  if (index >= MAX_BLOCKS) invalid(`the token already has ${index} blocks; at most ${MAX_BLOCKS} are allowed`);
  const body: BlockBody = {};

  if (narrower.principal !== undefined) {
    for (const p of prior) {
      if (p.principal !== undefined && narrower.principal !== p.principal && !narrower.principal.startsWith(p.principal + '/')) {
        widens('principal', `'${narrower.principal}' is not '${p.principal}' or below it`, { principal: narrower.principal });
      }
    }
    body.principal = narrower.principal;
  }
  if (narrower.operations !== undefined) {
    for (const p of prior) {
      const extra = p.operations ? narrower.operations.filter((op) => !p.operations!.includes(op)) : [];
      if (extra.length > 0) widens('operations', `${extra.join(', ')} not allowed by an earlier block`, { extra });
    }
    body.operations = [...narrower.operations];
  }
  if (narrower.resource !== undefined) {
    checkPattern(narrower.resource);
    for (const p of prior) {
      if (p.resource !== undefined && !patternCovers(p.resource, narrower.resource)) {
        widens('resource', `'${narrower.resource}' is not provably inside '${p.resource}'`, { resource: narrower.resource });
      }
    }
    body.resource = narrower.resource;
  }
  if (narrower.constraints !== undefined) {
    const child = normalizeChildConstraints(narrower.constraints);
    const effective = prior.reduce<Constraints>((acc, p) => (p.constraints ? intersectConstraints(acc, p.constraints) : acc), {});
    try {
      checkNarrowing(effective, child);
    } catch (err) {
      if (err instanceof DelegationError) {
        throw new TokenError('E_TOKEN_WIDENS', err.message.replace(/^delegation/, 'attenuation'), err.details, { cause: err });
      }
      throw err;
    }
    body.constraints = child;
  }
  // Depth: a block's maxDelegationDepth bounds the index of every block after it.
  for (const [i, p] of prior.entries()) {
    const d = p.constraints?.maxDelegationDepth;
    if (d !== undefined && index > d) widens('maxDelegationDepth', `block ${i} allows at most ${d} attenuations; this would be number ${index}`, { max: d });
  }
  const expiresAt = expiryOf(narrower, false);
  if (expiresAt !== undefined) {
    const current = Math.min(...prior.map((p) => p.expiresAt ?? Infinity));
    if (expiresAt > current) widens('expiresAt', `${new Date(expiresAt).toISOString()} is after the token's expiry ${new Date(current).toISOString()}`);
    body.expiresAt = expiresAt;
  }
  if (narrower.when !== undefined) {
    compileWhen(narrower.when);
    body.when = narrower.when;
  }

  const payload = encodeBody(checked(body, index));
  const eph = ephemeralKeyPair();
  const last = env.blocks[index - 1]!;
  const sig = signEd25519(key, blockMessage(env.key, index, last.sig, payload, eph.publicKey));
  return encodeEnvelope({ key: env.key, blocks: [...env.blocks, { payload, next: eph.publicKey, sig }], proof: { secret: eph.seed } });
}

/** Replaces the proof key with its signature over the last block: the token keeps working and takes no more blocks. */
export function seal(token: string): string {
  const env = decodeEnvelope(token);
  const key = proofKey(env);
  const lastIndex = env.blocks.length - 1;
  const seal = signEd25519(key, sealMessage(env.key, lastIndex, env.blocks[lastIndex]!.sig));
  return encodeEnvelope({ ...env, proof: { seal } });
}
