// The ct2 wire format.
//
//   token   = "ct2." base64url( 0x02 || canonical(envelope) )
//   envelope = { key: root key id,
//                blocks: [ { payload: bytes, next: 32-byte Ed25519 public key, sig: 64 bytes } ... ],
//                proof: { secret: 32-byte seed }   -- open: the holder may append a block
//                     | { seal: 64 bytes } }        -- sealed: no block can be appended
//   payload = canonical(block body), see BlockBodySchema
//
// Block 0 is signed by the issuer's root key; block i > 0 by the key whose public half block
// i-1 carries in `next`. Every signature covers the block's index, the root key id, the previous
// block's signature, the payload and its own `next` (blockMessage). An open token carries the
// seed of the last `next` key, so whoever holds the token can append one more block and nothing
// else; sealing replaces that seed with a signature by it over the last block's signature.
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { RESOURCE_TYPES } from '../capability.js';
import { ConstraintsSchema } from '../constraints.js';
import { CodecError, decodeCanonical, encodeCanonical, type CanonicalValue } from './codec.js';
import { ED25519_KEY_BYTES, ED25519_SIGNATURE_BYTES } from './ed25519.js';
import { TokenError } from './errors.js';

export const TOKEN_V2_PREFIX = 'ct2.';
export const TOKEN_V2_VERSION = 2;
/** Whole token, in characters. */
export const MAX_TOKEN_CHARS = 64 * 1024;
export const MAX_BLOCKS = 16;
export const MAX_BLOCK_BYTES = 8 * 1024;

const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;
const TOKEN_ID = /^tok_[A-Za-z0-9_-]{16,64}$/;
const epochMs = z.number().int().nonnegative().max(8.64e15);

/**
 * One block's claims. Block 0 (the issuer's) names the token id, issue time, expiry, resource
 * type, resource pattern and operations; a later block may restrict any of principal,
 * operations, resource, constraints, when and expiry, and may not set the others. An absent
 * field adds no restriction of its own: the blocks before it still apply, since every block
 * must permit a call.
 */
export const BlockBodySchema = z
  .object({
    tokenId: z.string().regex(TOKEN_ID).optional(),
    issuedAt: epochMs.optional(),
    expiresAt: epochMs.optional(),
    /** The caller must be this principal or one below it (`planner` admits `planner/worker`). */
    principal: z.string().min(1).max(256).optional(),
    resourceType: z.enum(RESOURCE_TYPES).optional(),
    resource: z.string().min(1).max(4096).optional(),
    operations: z.array(z.string().min(1).max(64)).min(1).max(64).optional(),
    constraints: ConstraintsSchema.optional(),
    /** A CEL expression over { tool, args, principal, operation, resource, now, host }. */
    when: z.string().min(1).optional(),
  })
  .strict();
export type BlockBody = z.infer<typeof BlockBodySchema>;

/** Block 0's body with its required fields present. */
export type AuthorityBody = BlockBody & Required<Pick<BlockBody, 'tokenId' | 'issuedAt' | 'expiresAt' | 'resourceType' | 'resource' | 'operations'>>;

export interface SignedBlock {
  payload: Buffer;
  next: Buffer;
  sig: Buffer;
}

export type Proof = { secret: Buffer } | { seal: Buffer };

export interface Envelope {
  key: string;
  blocks: SignedBlock[];
  proof: Proof;
}

function malformed(message: string, details?: Record<string, unknown>, cause?: unknown): never {
  throw new TokenError('E_TOKEN_MALFORMED', message, details, { cause });
}

function bytesOf(v: unknown, length: number | undefined, what: string): Buffer {
  if (!(v instanceof Uint8Array)) malformed(`${what} is not a byte string`);
  if (length !== undefined && v.length !== length) malformed(`${what} is ${v.length} bytes, not ${length}`);
  return Buffer.from(v);
}

function fieldsOf(v: unknown, allowed: readonly string[], what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Uint8Array) malformed(`${what} is not a map`);
  for (const k of Object.keys(v)) if (!allowed.includes(k)) malformed(`${what} has an unknown field '${k}'`);
  return v as Record<string, unknown>;
}

export function encodeEnvelope(e: Envelope): string {
  const value: CanonicalValue = {
    key: e.key,
    blocks: e.blocks.map((b) => ({ payload: b.payload, next: b.next, sig: b.sig })),
    proof: 'secret' in e.proof ? { secret: e.proof.secret } : { seal: e.proof.seal },
  };
  const body = encodeCanonical(value);
  const out = Buffer.allocUnsafe(body.length + 1);
  out[0] = TOKEN_V2_VERSION;
  body.copy(out, 1);
  const token = TOKEN_V2_PREFIX + out.toString('base64url');
  if (token.length > MAX_TOKEN_CHARS) throw new TokenError('E_TOKEN_INVALID_BLOCK', `token would be ${token.length} characters; at most ${MAX_TOKEN_CHARS} are allowed`);
  return token;
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;

export function isTokenV2(s: unknown): s is string {
  return typeof s === 'string' && s.startsWith(TOKEN_V2_PREFIX);
}

/** Structure only: sizes, field names, canonical bytes. Says nothing about signatures. */
export function decodeEnvelope(token: unknown): Envelope {
  if (typeof token !== 'string') malformed('a token is a string');
  if (!token.startsWith(TOKEN_V2_PREFIX)) malformed(`not a ct2 token (it must start with '${TOKEN_V2_PREFIX}')`);
  if (token.length > MAX_TOKEN_CHARS) malformed(`token is ${token.length} characters; at most ${MAX_TOKEN_CHARS} are allowed`);
  const text = token.slice(TOKEN_V2_PREFIX.length);
  if (!BASE64URL.test(text)) malformed('token is not base64url');
  const raw = Buffer.from(text, 'base64url');
  // Node's decoder ignores stray trailing bits; only the one spelling of these bytes is accepted.
  if (raw.toString('base64url') !== text) malformed('token is not canonical base64url');
  if (raw.length < 1) malformed('token is empty');
  if (raw[0] !== TOKEN_V2_VERSION) malformed(`token version ${raw[0]} is not supported (this build reads version ${TOKEN_V2_VERSION})`, { version: raw[0] });
  let value: CanonicalValue;
  try {
    value = decodeCanonical(raw.subarray(1));
  } catch (err) {
    if (err instanceof CodecError) malformed(`token body: ${err.message}`, undefined, err);
    throw err;
  }
  const env = fieldsOf(value, ['key', 'blocks', 'proof'], 'token');
  if (typeof env.key !== 'string' || !KEY_ID.test(env.key)) malformed('token has no valid root key id');
  if (!Array.isArray(env.blocks) || env.blocks.length < 1) malformed('token has no blocks');
  if (env.blocks.length > MAX_BLOCKS) malformed(`token has ${env.blocks.length} blocks; at most ${MAX_BLOCKS} are allowed`);
  const blocks = env.blocks.map((b: unknown, i: number): SignedBlock => {
    const f = fieldsOf(b, ['payload', 'next', 'sig'], `block ${i}`);
    const payload = bytesOf(f.payload, undefined, `block ${i} payload`);
    if (payload.length > MAX_BLOCK_BYTES) malformed(`block ${i} is ${payload.length} bytes; at most ${MAX_BLOCK_BYTES} are allowed`);
    return { payload, next: bytesOf(f.next, ED25519_KEY_BYTES, `block ${i} next key`), sig: bytesOf(f.sig, ED25519_SIGNATURE_BYTES, `block ${i} signature`) };
  });
  const p = fieldsOf(env.proof, ['secret', 'seal'], 'proof');
  let proof: Proof;
  if (p.secret !== undefined && p.seal === undefined) proof = { secret: bytesOf(p.secret, ED25519_KEY_BYTES, 'proof secret') };
  else if (p.seal !== undefined && p.secret === undefined) proof = { seal: bytesOf(p.seal, ED25519_SIGNATURE_BYTES, 'seal') };
  else malformed('proof must hold exactly one of secret and seal');
  return { key: env.key, blocks, proof };
}

/** What block `index`'s signature covers. The canonical encoding is injective, so no two inputs share these bytes. */
export function blockMessage(rootKeyId: string, index: number, previousSig: Buffer | null, payload: Buffer, next: Buffer): Buffer {
  return encodeCanonical(['captrap-ct2-block', TOKEN_V2_VERSION, rootKeyId, index, previousSig, payload, next]);
}

/** What the seal covers: the last block's signature, which covers everything before it. */
export function sealMessage(rootKeyId: string, lastIndex: number, lastSig: Buffer): Buffer {
  return encodeCanonical(['captrap-ct2-seal', TOKEN_V2_VERSION, rootKeyId, lastIndex, lastSig]);
}

/** A block's revocation id: hex SHA-256 of its signature (unique per block, known to every holder). */
export function revocationId(sig: Buffer): string {
  return createHash('sha256').update(sig).digest('hex');
}

export function encodeBody(body: BlockBody): Buffer {
  const payload = encodeCanonical(body as CanonicalValue);
  if (payload.length > MAX_BLOCK_BYTES) throw new TokenError('E_TOKEN_INVALID_BLOCK', `block would be ${payload.length} bytes; at most ${MAX_BLOCK_BYTES} are allowed`);
  return payload;
}

/** Decodes and schema-checks block `index`'s payload; block 0 must carry the authority fields. */
export function decodeBody(payload: Buffer, index: number): BlockBody {
  let value: CanonicalValue;
  try {
    value = decodeCanonical(payload);
  } catch (err) {
    if (err instanceof CodecError) malformed(`block ${index}: ${err.message}`, { block: index }, err);
    throw err;
  }
  const r = BlockBodySchema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    malformed(`block ${index}: ${issue.path.join('.') || '(root)'}: ${issue.message}`, { block: index, path: issue.path });
  }
  const b = r.data;
  checkBodyShape(b, index, (m) => malformed(`block ${index}: ${m}`, { block: index }));
  return b;
}

/** Which fields a block at `index` must and may carry. */
export function checkBodyShape(b: BlockBody, index: number, fail: (message: string) => never): void {
  if (index === 0) {
    for (const k of ['tokenId', 'issuedAt', 'expiresAt', 'resourceType', 'resource', 'operations'] as const) {
      if (b[k] === undefined) fail(`the issuer's block must carry ${k}`);
    }
  } else {
    for (const k of ['tokenId', 'issuedAt', 'resourceType'] as const) if (b[k] !== undefined) fail(`only the issuer's block may carry ${k}`);
  }
}
