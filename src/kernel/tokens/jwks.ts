// The issuer's public keys as a JWKS-like JSON document (RFC 7517/8037 "OKP" Ed25519 keys), so
// any host can verify ct2 tokens with nothing but this file. Private parts never appear here.
import { createPublicKey, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { TokenError } from './errors.js';
import { isEd25519 } from './ed25519.js';
import type { PublicKeySet } from './verify.js';

const JwkSchema = z
  .object({
    kty: z.literal('OKP'),
    crv: z.literal('Ed25519'),
    x: z.string().regex(/^[A-Za-z0-9_-]{43}$/),
    kid: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/),
    alg: z.literal('EdDSA').optional(),
    use: z.literal('sig').optional(),
  })
  .passthrough();

export const JwksSchema = z.object({ keys: z.array(JwkSchema).max(256) }).passthrough();
export type Jwks = { keys: { kty: 'OKP'; crv: 'Ed25519'; x: string; kid: string; alg: 'EdDSA'; use: 'sig' }[] };

/** The JWKS document for these public keys (a private key is reduced to its public half). */
export function toJwks(keys: Iterable<[string, KeyObject]>): Jwks {
  const out: Jwks = { keys: [] };
  for (const [kid, key] of keys) {
    const pub = key.type === 'private' ? createPublicKey(key) : key;
    if (!isEd25519(pub)) throw new TokenError('E_TOKEN_MALFORMED', `key '${kid}' is not an Ed25519 key`);
    const jwk = pub.export({ format: 'jwk' });
    out.keys.push({ kty: 'OKP', crv: 'Ed25519', x: jwk.x!, kid, alg: 'EdDSA', use: 'sig' });
  }
  return out;
}

/** Reads a JWKS document (parsed JSON) into a key set for verifyToken. Refuses duplicates and anything but Ed25519. */
export function publicKeysFromJwks(value: unknown, source = 'public key set'): PublicKeySet {
  const r = JwksSchema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw new TokenError('E_TOKEN_MALFORMED', `${source}: ${issue.path.join('.') || '(root)'}: ${issue.message}`, { source, path: issue.path });
  }
  const out = new Map<string, KeyObject>();
  for (const k of r.data.keys) {
    if (out.has(k.kid)) throw new TokenError('E_TOKEN_MALFORMED', `${source}: key id '${k.kid}' appears twice`, { source, kid: k.kid });
    try {
      out.set(k.kid, createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: k.x }, format: 'jwk' }));
    } catch (err) {
      throw new TokenError('E_TOKEN_MALFORMED', `${source}: key '${k.kid}' is not a valid Ed25519 public key`, { source, kid: k.kid }, { cause: err });
    }
  }
  return out;
}
