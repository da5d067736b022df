// Ed25519 keys as the raw 32-byte strings a token carries. They are imported and exported as
// JWK, not DER: Node hands an OKP JWK straight to OpenSSL's raw-key constructors, while DER goes
// through OpenSSL 3's generic decoder, measured 10 to 40 times slower here (a 1-block verify
// spent most of its time importing keys, not checking signatures).
import { createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from 'node:crypto';

export const ED25519_KEY_BYTES = 32;
export const ED25519_SIGNATURE_BYTES = 64;

export function publicKeyFromRaw(raw: Uint8Array): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') }, format: 'jwk' });
}

/**
 * The private key whose seed is `seed`. JWK wants the public half too (`x`) but Node derives the
 * key from `d` alone, so callers compare rawPublicKey(result) with what they expect rather than
 * trusting `expectedPublic`.
 */
export function privateKeyFromSeed(seed: Uint8Array, expectedPublic: Uint8Array): KeyObject {
  return createPrivateKey({
    key: { kty: 'OKP', crv: 'Ed25519', d: Buffer.from(seed).toString('base64url'), x: Buffer.from(expectedPublic).toString('base64url') },
    format: 'jwk',
  });
}

export function rawPublicKey(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return Buffer.from(pub.export({ format: 'jwk' }).x!, 'base64url');
}

export function isEd25519(key: KeyObject): boolean {
  return key.asymmetricKeyType === 'ed25519';
}

/** A placeholder `x` for importing a seed whose public half is not known yet (Node derives it from `d`). */
const UNKNOWN_PUBLIC = new Uint8Array(ED25519_KEY_BYTES);

/**
 * A fresh key pair from 32 random bytes. Not generateKeyPairSync: on Node 20 the garbage
 * collector can finalise the key-generation job while its key is being exported, and the job's
 * destructor then waits for the lock the export holds (a deadlock seen here in the benchmark,
 * with the main thread stuck in ExportJWK -> GC -> ~KeyGenJob).
 */
export function generateEd25519(): { seed: Buffer; publicKey: Buffer; privateKey: KeyObject } {
  const seed = randomBytes(ED25519_KEY_BYTES);
  const privateKey = privateKeyFromSeed(seed, UNKNOWN_PUBLIC);
  return { seed, publicKey: rawPublicKey(privateKey), privateKey };
}

/** A fresh key pair as KeyObjects (an issuer key for tests and benchmarks), made as generateEd25519 makes it. */
export function generateEd25519KeyObjects(): { privateKey: KeyObject; publicKey: KeyObject } {
  const { privateKey } = generateEd25519();
  return { privateKey, publicKey: createPublicKey(privateKey) };
}

/** A fresh key pair for one block: the public half goes into the block, the seed into the proof. */
export const ephemeralKeyPair = generateEd25519;

export function signEd25519(key: KeyObject, message: Uint8Array): Buffer {
  return sign(null, message, key);
}

export function verifyEd25519(key: KeyObject, message: Uint8Array, signature: Uint8Array): boolean {
  try {
    return verify(null, message, key, signature);
  } catch {
    return false;
  }
}
