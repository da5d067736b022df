// ct2 tokens: issue, attenuate, seal and verify with real Ed25519 keys; every refusal by code;
// the canonical codec; the key store on disk and the JWKS export.
import { mkdirSync, readdirSync, realpathSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeCanonical, encodeCanonical } from '../../src/kernel/tokens/codec.js';
import { blockMessage, decodeEnvelope, encodeBody, encodeEnvelope } from '../../src/kernel/tokens/format.js';
import { ephemeralKeyPair, generateEd25519KeyObjects, privateKeyFromSeed, signEd25519 } from '../../src/kernel/tokens/ed25519.js';
import {
  attenuate,
  inspectToken,
  issueToken,
  MAX_BLOCKS,
  MAX_TOKEN_CHARS,
  publicKeysFromJwks,
  seal,
  toJwks,
  TokenKeyStore,
  verifyToken,
  type PublicKeySet,
  type TokenRequest,
} from '../../src/kernel/tokens/index.js';
import { codeOf, tempDir } from './helpers.js';

const pair = generateEd25519KeyObjects();
const key = { id: 'k1', privateKey: pair.privateKey };
const publicKeys: PublicKeySet = new Map([['k1', pair.publicKey]]);
const never = () => false;
const NOW = Date.UTC(2026, 0, 5, 10, 0, 0); // a Monday, 10:00 UTC

function root(extra: Partial<Parameters<typeof issueToken>[0]> = {}): string {
  return issueToken({
    key,
    resourceType: 'tool',
    resource: '*',
    operations: ['invoke'],
    principal: 'planner',
    constraints: { allowedTools: ['read_file', 'list_dir', 'fetch'] },
    expiresAt: NOW + 3_600_000,
    now: NOW,
    ...extra,
  });
}

const call = (over: Partial<TokenRequest> = {}): TokenRequest => ({ principal: 'planner', operation: 'invoke', resource: 'read_file', args: { path: '/data/a.csv' }, ...over });
const verify = (t: string, request?: TokenRequest, extra: { now?: number; isRevoked?: (ids: readonly string[]) => boolean; publicKeys?: PublicKeySet } = {}) =>
  verifyToken(t, { publicKeys, isRevoked: never, now: NOW, ...extra, ...(request ? { request } : {}) });

describe('canonical codec', () => {
  it('encodes map keys in one order whatever the insertion order', () => {
    expect(encodeCanonical({ b: 1, a: [true, null, 'x'] }).equals(encodeCanonical({ a: [true, null, 'x'], b: 1 }))).toBe(true);
  });
  it('round-trips values and refuses non-canonical bytes', () => {
    const v = { s: 'é', n: 300, f: 0.5, b: Buffer.from([1, 2]), l: [1, [2]], z: null };
    const bytes = encodeCanonical(v);
    expect(decodeCanonical(bytes)).toEqual({ ...v, b: Buffer.from([1, 2]) });
    // 300 as a padded varint (0xac 0x82 0x00) decodes to the same number but is not canonical.
    expect(() => decodeCanonical(Buffer.from([0x03, 0xac, 0x82, 0x00]))).toThrow(/not in canonical form|too long|truncated/);
    // Keys out of order.
    const swapped = Buffer.from([0x08, 2, 1, 0x62, 0x00, 1, 0x61, 0x00]);
    expect(() => decodeCanonical(swapped)).toThrow(/canonical/);
    expect(() => decodeCanonical(Buffer.concat([bytes, Buffer.from([0])]))).toThrow(/trailing/);
    expect(() => decodeCanonical(Buffer.from([0x08, 2, 1, 0x61, 0x00, 1, 0x61, 0x00]))).toThrow(/duplicate/);
  });
});

describe('issue and verify', () => {
  it('verifies a fresh token and reports its blocks, expiry and revocation ids', () => {
    const v = verify(root(), call());
    expect(v.rootKeyId).toBe('k1');
    expect(v.blocks).toHaveLength(1);
    expect(v.expiresAt).toBe(NOW + 3_600_000);
    expect(v.revocationIds).toHaveLength(1);
    expect(v.revocationIds[0]).toMatch(/^[0-9a-f]{64}$/);
    expect(v.sealed).toBe(false);
    expect(v.principal).toBe('planner');
  });

  it('refuses a call the issuer block does not allow, naming the reason', () => {
    const t = root();
    const err = (() => {
      try {
        verify(t, call({ resource: 'rm_rf' }));
      } catch (e) {
        return e as { code: string; details: { reason: string; block: number } };
      }
      throw new Error('allowed');
    })();
    expect(err.code).toBe('E_TOKEN_DENIED');
    expect(err.details).toMatchObject({ block: 0, reason: 'E_TOOL_NOT_ALLOWED' });
    expect(codeOf(() => verify(t, call({ principal: 'other' })))).toBe('E_TOKEN_DENIED');
    expect(codeOf(() => verify(t, call({ operation: 'delete' })))).toBe('E_TOKEN_DENIED');
  });

  it('admits principals below the named one', () => {
    expect(() => verify(root(), call({ principal: 'planner/worker' }))).not.toThrow();
    expect(codeOf(() => verify(root(), call({ principal: 'plannerX' })))).toBe('E_TOKEN_DENIED');
  });

  it('refuses an expired token, an unknown key and a revoked block', () => {
    const t = root();
    expect(codeOf(() => verify(t, call(), { now: NOW + 3_600_000 }))).toBe('E_TOKEN_EXPIRED');
    const other = generateEd25519KeyObjects();
    expect(codeOf(() => verify(t, call(), { publicKeys: new Map([['k2', other.publicKey]]) }))).toBe('E_TOKEN_UNKNOWN_KEY');
    // Same key id, different key: a forged root signature.
    expect(codeOf(() => verify(t, call(), { publicKeys: new Map([['k1', other.publicKey]]) }))).toBe('E_TOKEN_SIGNATURE');
    const ids = verify(t).revocationIds;
    expect(codeOf(() => verify(t, call(), { isRevoked: (x) => x.includes(ids[0]!) }))).toBe('E_TOKEN_REVOKED');
    expect(codeOf(() => verify(t, call(), { isRevoked: () => { throw new Error('store down'); } }))).toBe('E_TOKEN_REVOKED');
  });

  it('refuses malformed input with E_TOKEN_MALFORMED', () => {
    const t = root();
    for (const bad of ['', 'ct1.abc', 'ct2.', 'ct2.!!!', 'ct2.' + 'A'.repeat(MAX_TOKEN_CHARS), t.slice(0, -8), t + 'A', 'ct2.' + Buffer.from([3, 0]).toString('base64url')]) {
      expect(codeOf(() => verify(bad, call()))).toBe('E_TOKEN_MALFORMED');
    }
  });

  it('checks issuance input: bad CEL is refused with its position, a token needs an expiry', () => {
    let err: { code?: string; message?: string; details?: { position?: number } } = {};
    try {
      root({ when: 'args.path.endsWith(".csv" ||' });
    } catch (e) {
      err = e as typeof err;
    }
    expect(err.code).toBe('E_CEL_PARSE');
    expect(err.details?.position).toBe(28);
    expect(err.message).toMatch(/position 28/);
    expect(codeOf(() => issueToken({ key, resourceType: 'tool', resource: '*', operations: ['invoke'] }))).toBe('E_TOKEN_INVALID_BLOCK');
    expect(codeOf(() => root({ constraints: { allowedDomains: ['http://x'] } }))).toBe('E_TOKEN_INVALID_BLOCK');
  });
});

describe('attenuate and seal', () => {
  it('appends a narrower block offline; every block must permit the call', () => {
    const t1 = attenuate(root(), { principal: 'planner/worker', constraints: { allowedTools: ['read_file'] }, when: 'args.path.endsWith(".csv")' });
    const v = verify(t1, call({ principal: 'planner/worker' }));
    expect(v.blocks).toHaveLength(2);
    expect(v.revocationIds).toHaveLength(2);
    expect(v.constraints.allowedTools).toEqual(['read_file']);
    // Allowed by block 0, refused by block 1:
    expect(codeOf(() => verify(t1, call({ principal: 'planner/worker', resource: 'list_dir' })))).toBe('E_TOKEN_DENIED');
    expect(codeOf(() => verify(t1, call({ principal: 'planner' })))).toBe('E_TOKEN_DENIED');
    expect(codeOf(() => verify(t1, call({ principal: 'planner/worker', args: { path: '/data/a.txt' } })))).toBe('E_TOKEN_DENIED');
    // A missing argument cannot satisfy the expression: refused, not an exception of another kind.
    expect(codeOf(() => verify(t1, call({ principal: 'planner/worker', args: {} })))).toBe('E_TOKEN_DENIED');
  });

  it('refuses to widen any dimension', () => {
    const t = root();
    expect(codeOf(() => attenuate(t, { constraints: { allowedTools: ['rm'] } }))).toBe('E_TOKEN_WIDENS');
    expect(codeOf(() => attenuate(t, { principal: 'someone-else' }))).toBe('E_TOKEN_WIDENS');
    expect(codeOf(() => attenuate(t, { operations: ['invoke', 'delete'] }))).toBe('E_TOKEN_WIDENS');
    expect(codeOf(() => attenuate(t, { expiresAt: NOW + 7_200_000 }))).toBe('E_TOKEN_WIDENS');
    const narrowResource = attenuate(t, { resource: 'read_*' });
    expect(codeOf(() => attenuate(narrowResource, { resource: 'list_dir' }))).toBe('E_TOKEN_WIDENS');
    expect(codeOf(() => attenuate(t, { when: 'args.x ==' }))).toBe('E_CEL_PARSE');
    expect(codeOf(() => attenuate(t, { constraints: { paths: ['relative/dir'] } }))).toBe('E_TOKEN_INVALID_BLOCK');
  });

  it('takes the earliest expiry of all blocks', () => {
    const t = attenuate(root(), { expiresAt: NOW + 60_000 });
    expect(verify(t).expiresAt).toBe(NOW + 60_000);
    expect(codeOf(() => verify(t, call(), { now: NOW + 60_000 }))).toBe('E_TOKEN_EXPIRED');
  });

  it('revoking one block refuses that token and everything attenuated from it, not its parent', () => {
    const parent = root();
    const child = attenuate(parent, { principal: 'planner/a' });
    const grandchild = attenuate(child, { principal: 'planner/a/b' });
    const childId = verify(child).revocationIds[1]!;
    const revoked = new Set([childId]);
    const isRevoked = (ids: readonly string[]) => ids.some((id) => revoked.has(id));
    expect(() => verify(parent, call(), { isRevoked })).not.toThrow();
    expect(codeOf(() => verify(child, call({ principal: 'planner/a' }), { isRevoked }))).toBe('E_TOKEN_REVOKED');
    expect(codeOf(() => verify(grandchild, call({ principal: 'planner/a/b' }), { isRevoked }))).toBe('E_TOKEN_REVOKED');
  });

  it('honours maxDelegationDepth as the number of attenuations', () => {
    const t = root({ constraints: { allowedTools: ['read_file'], maxDelegationDepth: 1 } });
    const once = attenuate(t, {});
    expect(() => verify(once, call())).not.toThrow();
    expect(codeOf(() => attenuate(once, {}))).toBe('E_TOKEN_WIDENS');
  });

  it('stops at MAX_BLOCKS when attenuating', () => {
    let t = root();
    for (let i = 1; i < MAX_BLOCKS; i++) t = attenuate(t, {});
    expect(verify(t, call()).blocks).toHaveLength(MAX_BLOCKS);
    expect(codeOf(() => attenuate(t, {}))).toBe('E_TOKEN_INVALID_BLOCK');
  });

  it('a sealed token verifies but takes no more blocks', () => {
    const s = seal(attenuate(root(), { constraints: { allowedTools: ['read_file'] } }));
    expect(verify(s, call()).sealed).toBe(true);
    expect(codeOf(() => attenuate(s, {}))).toBe('E_TOKEN_SEALED');
    expect(codeOf(() => seal(s))).toBe('E_TOKEN_SEALED');
    // Turning the seal back into a proof (any 32 bytes) does not reopen it.
    const env = decodeEnvelope(s);
    const reopened = encodeEnvelope({ ...env, proof: { secret: Buffer.alloc(32, 7) } });
    expect(codeOf(() => verify(reopened, call()))).toBe('E_TOKEN_SIGNATURE');
    expect(codeOf(() => attenuate(reopened, {}))).toBe('E_TOKEN_SIGNATURE');
  });

  it('refuses a block dropped from the middle, a swapped order, and a block from another token', () => {
    const t0 = root();
    const a = attenuate(t0, { principal: 'planner/a' });
    const ab = attenuate(a, { principal: 'planner/a/b' });
    const env = decodeEnvelope(ab);
    const dropped = encodeEnvelope({ ...env, blocks: [env.blocks[0]!, env.blocks[2]!] });
    expect(codeOf(() => verify(dropped, call({ principal: 'planner/a/b' })))).toBe('E_TOKEN_SIGNATURE');
    const swapped = encodeEnvelope({ ...env, blocks: [env.blocks[0]!, env.blocks[2]!, env.blocks[1]!] });
    expect(codeOf(() => verify(swapped, call({ principal: 'planner/a/b' })))).toBe('E_TOKEN_SIGNATURE');
    // Truncating to the first block with the last proof: the proof no longer matches.
    const truncated = encodeEnvelope({ ...env, blocks: [env.blocks[0]!] });
    expect(codeOf(() => verify(truncated, call()))).toBe('E_TOKEN_SIGNATURE');
    // Splice: block 1 of another token attenuated from the same parent.
    const other = decodeEnvelope(attenuate(t0, { principal: 'planner/zzz' }));
    const spliced = encodeEnvelope({ ...env, blocks: [env.blocks[0]!, other.blocks[1]!, env.blocks[2]!] });
    expect(codeOf(() => verify(spliced, call({ principal: 'planner/a/b' })))).toBe('E_TOKEN_SIGNATURE');
    // A payload edited after signing.
    const edited = Buffer.from(env.blocks[1]!.payload);
    edited[edited.length - 1] = edited[edited.length - 1]! ^ 1;
    const tampered = encodeEnvelope({ ...env, blocks: [env.blocks[0]!, { ...env.blocks[1]!, payload: edited }, env.blocks[2]!] });
    expect(codeOf(() => verify(tampered, call({ principal: 'planner/a/b' })))).toBe('E_TOKEN_SIGNATURE');
  });

  it('a block crafted by hand (not through attenuate) is still held to the CEL limits at verification', () => {
    const env = decodeEnvelope(root());
    const proof = env.proof as { secret: Buffer };
    const signer = privateKeyFromSeed(proof.secret, env.blocks[0]!.next);
    const next = ephemeralKeyPair();
    const payload = encodeBody({ when: 'args.tags.all(a, args.tags.all(b, a == b))' });
    const sig = signEd25519(signer, blockMessage(env.key, 1, env.blocks[0]!.sig, payload, next.publicKey));
    const crafted = encodeEnvelope({ key: env.key, blocks: [env.blocks[0]!, { payload, next: next.publicKey, sig }], proof: { secret: next.seed } });
    let details: unknown;
    try {
      verify(crafted, call({ args: { tags: ['x'] } }));
    } catch (e) {
      details = (e as { code: string; details: unknown }).code === 'E_TOKEN_DENIED' ? (e as { details: unknown }).details : e;
    }
    expect(details).toMatchObject({ block: 1, reason: 'E_CEL_TOO_COMPLEX' });
  });

  it('inspect shows the blocks without verifying', () => {
    const i = inspectToken(attenuate(root(), { when: 'true' }));
    expect(i.rootKeyId).toBe('k1');
    expect(i.blocks[1]).toEqual({ when: 'true' });
    expect(i.sealed).toBe(false);
  });
});

describe('file and URL constraints (real files)', () => {
  let t: { dir: string; cleanup: () => void };
  let base: string;
  beforeAll(() => {
    t = tempDir('tokens');
    base = realpathSync(t.dir);
    mkdirSync(join(base, 'ws', 'in'), { recursive: true });
    writeFileSync(join(base, 'ws', 'in', 'a.csv'), 'x,y\n');
    writeFileSync(join(base, 'secret'), 'no');
  });
  afterAll(() => t.cleanup());

  it('checks paths per block against real paths; a child root narrows', () => {
    const tok = issueToken({ key, resourceType: 'tool', resource: '*', operations: ['invoke'], constraints: { paths: [join(base, 'ws')] }, ttlMs: 60_000 });
    const child = attenuate(tok, { constraints: { paths: [join(base, 'ws', 'in')] } });
    const req = (path: string): TokenRequest => ({ principal: 'p', operation: 'invoke', resource: 'read_file', access: { files: [{ path, access: 'read', arg: 'path' }] } });
    const v = verifyToken(child, { publicKeys, isRevoked: never, request: req(join(base, 'ws', 'in', 'a.csv')) });
    expect(v.checked?.realPaths.path).toBe(join(base, 'ws', 'in', 'a.csv'));
    expect(codeOf(() => verifyToken(child, { publicKeys, isRevoked: never, request: req(join(base, 'ws', 'in', '..', '..', 'secret')) }))).toBe('E_TOKEN_DENIED');
    expect(codeOf(() => verifyToken(tok, { publicKeys, isRevoked: never, request: req(join(base, 'secret')) }))).toBe('E_TOKEN_DENIED');
    expect(codeOf(() => attenuate(tok, { constraints: { paths: [base] } }))).toBe('E_TOKEN_WIDENS');
  });

  it('returns the real paths to use even when no block constrains paths', () => {
    const tok = issueToken({ key, resourceType: 'tool', resource: '*', operations: ['invoke'], ttlMs: 60_000 });
    const dotted = join(base, 'ws', 'in', '..', 'in', 'a.csv');
    const v = verifyToken(tok, { publicKeys, isRevoked: never, request: { principal: 'p', operation: 'invoke', resource: 'read_file', access: { files: [{ path: dotted, access: 'read', arg: 'path' }] } } });
    expect(v.checked?.realPaths.path).toBe(join(base, 'ws', 'in', 'a.csv'));
  });

  it('checks URL arguments against allowedDomains in every block', () => {
    const tok = issueToken({ key, resourceType: 'tool', resource: '*', operations: ['invoke'], constraints: { allowedDomains: ['*.example.com'] }, ttlMs: 60_000 });
    const child = attenuate(tok, { constraints: { allowedDomains: ['api.example.com'] } });
    const req = (url: string): TokenRequest => ({ principal: 'p', operation: 'invoke', resource: 'fetch', access: { urls: [{ url, arg: 'url' }] } });
    expect(() => verifyToken(child, { publicKeys, isRevoked: never, request: req('https://api.example.com/x') })).not.toThrow();
    expect(codeOf(() => verifyToken(child, { publicKeys, isRevoked: never, request: req('https://www.example.com/x') }))).toBe('E_TOKEN_DENIED');
  });
});

describe('key store and JWKS', () => {
  let t: { dir: string; cleanup: () => void };
  beforeAll(() => {
    t = tempDir('token-keys');
  });
  afterAll(() => t.cleanup());

  it('creates a 0600 key, rotates, exports public keys only, retires', () => {
    const dir = join(t.dir, 'token-keys');
    const store = TokenKeyStore.open(dir);
    const first = store.activeId;
    expect(statSync(join(dir, `${first}.pem`)).mode & 0o777).toBe(0o600);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    const oldToken = issueToken({ key: store.signingKey(), resourceType: 'tool', resource: '*', operations: ['invoke'], ttlMs: 60_000 });
    const second = store.rotate('k-second');
    expect(store.activeId).toBe('k-second');
    const jwks = JSON.parse(JSON.stringify(store.jwks())) as { keys: Record<string, unknown>[] };
    expect(jwks.keys.map((k) => k.kid).sort()).toEqual([first, second].sort());
    for (const k of jwks.keys) expect(k).not.toHaveProperty('d');
    const keys = publicKeysFromJwks(jwks);
    // The old key still verifies what it signed after rotation.
    expect(verifyToken(oldToken, { publicKeys: keys, isRevoked: never }).rootKeyId).toBe(first);
    expect(codeOf(() => store.retire(second))).toBe('E_KEY_ACTIVE');
    store.retire(first);
    expect(readdirSync(dir)).toContain(`${first}.retired`);
    expect(codeOf(() => verifyToken(oldToken, { publicKeys: publicKeysFromJwks(store.jwks()), isRevoked: never }))).toBe('E_TOKEN_UNKNOWN_KEY');
    expect(codeOf(() => store.rotate(first))).toBe('E_KEY_ID');
    // Reopening finds the same active key.
    expect(TokenKeyStore.open(dir).activeId).toBe('k-second');
  });

  it('refuses a key file others can read, and a JWKS with a duplicate id', () => {
    const dir = join(t.dir, 'loose');
    const store = TokenKeyStore.open(dir);
    chmodSync(join(dir, `${store.activeId}.pem`), 0o644);
    expect(codeOf(() => store.signingKey())).toBe('E_KEY_PERMISSIONS');
    const jwk = toJwks([['a', pair.publicKey]]).keys[0]!;
    expect(codeOf(() => publicKeysFromJwks({ keys: [jwk, jwk] }))).toBe('E_TOKEN_MALFORMED');
    expect(codeOf(() => publicKeysFromJwks({ keys: [{ ...jwk, crv: 'P-256' }] }))).toBe('E_TOKEN_MALFORMED');
  });
});
