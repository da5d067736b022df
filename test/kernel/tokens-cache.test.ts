// The ct2 validation cache: a hit answers as verifyToken does; revocation and expiry are checked
// on every call; a key change clears it; a tampered token is never served from it; it is bounded;
// a `when` that reads `now` and file access bypass the decision level. Real Ed25519 keys throughout.
import { describe, expect, it } from 'vitest';
import { generateEd25519KeyObjects, privateKeyFromSeed, signEd25519 } from '../../src/kernel/tokens/ed25519.js';
import { blockMessage, decodeEnvelope, encodeBody, encodeEnvelope } from '../../src/kernel/tokens/format.js';
import { attenuate, issueToken, TokenVerifier, verifyToken, type PublicKeySet, type TokenRequest } from '../../src/kernel/tokens/index.js';
import { codeOf } from './helpers.js';

const pair = generateEd25519KeyObjects();
const key = { id: 'k1', privateKey: pair.privateKey };
const publicKeys: PublicKeySet = new Map([['k1', pair.publicKey]]);
const NOW = Date.UTC(2026, 0, 5, 10, 0, 0); // a Monday, 10:00 UTC
const HOUR = 3_600_000;

function root(extra: Partial<Parameters<typeof issueToken>[0]> = {}): string {
  return issueToken({
    key,
    resourceType: 'tool',
    resource: '*',
    operations: ['invoke'],
    principal: 'planner',
    constraints: { allowedTools: ['read_file', 'list_dir'] },
    expiresAt: NOW + HOUR,
    now: NOW,
    ...extra,
  });
}

/** A 3-block chain whose last block allows only .csv paths, through a `when` that does not read `now`. */
function threeBlocks(): string {
  return attenuate(attenuate(root(), { principal: 'planner/worker', constraints: { allowedTools: ['read_file'] } }), { when: 'args.path.endsWith(".csv")' });
}

const call = (over: Partial<TokenRequest> = {}): TokenRequest => ({ principal: 'planner/worker', operation: 'invoke', resource: 'read_file', args: { path: '/data/a.csv' }, host: 'h1', ...over });

function setup(o: { maxEntries?: number } = {}) {
  const revoked = new Set<string>();
  const clock = { now: NOW };
  const isRevoked = (ids: readonly string[]) => ids.some((id) => revoked.has(id));
  const verifier = new TokenVerifier({ publicKeys, isRevoked, now: () => clock.now, ...o });
  return { verifier, revoked, clock, isRevoked };
}

/** The parts of a result that say what was decided. */
const essence = (v: ReturnType<typeof verifyToken>) => ({
  tokenId: v.tokenId,
  rootKeyId: v.rootKeyId,
  expiresAt: v.expiresAt,
  principal: v.principal,
  revocationIds: v.revocationIds,
  sealed: v.sealed,
  blocks: v.blocks,
  constraints: v.constraints,
  checked: v.checked,
});

describe('TokenVerifier', () => {
  it('answers a miss and a hit exactly as verifyToken does', () => {
    const { verifier, isRevoked } = setup();
    const t = threeBlocks();
    const expected = essence(verifyToken(t, { publicKeys, isRevoked, now: NOW, request: call() }));
    const first = verifier.verify(t, call());
    const second = verifier.verify(t, call());
    expect(essence(first)).toEqual(expected);
    expect(essence(second)).toEqual(expected);
    expect(verifier.stats().chain).toMatchObject({ hits: 1, misses: 1, size: 1 });
    expect(verifier.stats().decision).toMatchObject({ hits: 1, misses: 1, size: 1, hitRatio: 0.5 });
    // Without a request: the chain is reused, the decision level is not involved.
    expect(essence(verifier.verify(t))).toEqual(essence(verifyToken(t, { publicKeys, isRevoked, now: NOW })));
    expect(verifier.stats().chain.hits).toBe(2);
    // A cached answer is shared, so it is frozen: a caller cannot change what the next one sees.
    expect(Object.isFrozen(second)).toBe(true);
    expect(() => {
      (second as { expiresAt: number }).expiresAt = NOW + 100 * HOUR;
    }).toThrow(TypeError);
    expect(Object.isFrozen(second.blocks[1])).toBe(true);
  });

  it('refuses a revoked token on the next call though its decision is cached, and a failing revocation check', () => {
    const { verifier, revoked } = setup();
    const t = threeBlocks();
    const v = verifier.verify(t, call());
    verifier.verify(t, call()); // now a decision hit
    revoked.add(v.revocationIds[1]!); // the middle block
    expect(codeOf(() => verifier.verify(t, call()))).toBe('E_TOKEN_REVOKED');
    expect(codeOf(() => verifier.verify(t))).toBe('E_TOKEN_REVOKED');
    revoked.clear();
    expect(verifier.verify(t, call()).tokenId).toBe(v.tokenId); // un-revoked: verified again, in full
    const throwing = new TokenVerifier({ publicKeys, isRevoked: () => { throw new Error('feed lost'); }, now: () => NOW });
    expect(codeOf(() => throwing.verify(t, call()))).toBe('E_TOKEN_REVOKED');
  });

  it('refuses an expired token even when cached, at the earliest expiry of any block', () => {
    const { verifier, clock } = setup();
    const t = attenuate(threeBlocks(), { expiresAt: NOW + 60_000 });
    verifier.verify(t, call());
    verifier.verify(t, call());
    expect(verifier.stats().decision.hits).toBe(1);
    clock.now = NOW + 59_999;
    expect(verifier.verify(t, call()).expiresAt).toBe(NOW + 60_000);
    clock.now = NOW + 60_000;
    expect(codeOf(() => verifier.verify(t, call()))).toBe('E_TOKEN_EXPIRED');
    expect(codeOf(() => verifier.verify(t))).toBe('E_TOKEN_EXPIRED');
    expect(codeOf(() => verifyToken(t, { publicKeys, isRevoked: () => false, now: clock.now }))).toBe('E_TOKEN_EXPIRED');
  });

  it('forgets everything when the public keys change', () => {
    const { verifier } = setup();
    const t = threeBlocks();
    verifier.verify(t, call());
    // The same key id now names another key: the token no longer verifies.
    verifier.setPublicKeys(new Map([['k1', generateEd25519KeyObjects().publicKey]]));
    expect(verifier.stats().chain.size).toBe(0);
    expect(verifier.stats().decision.size).toBe(0);
    expect(codeOf(() => verifier.verify(t, call()))).toBe('E_TOKEN_SIGNATURE');
    verifier.setPublicKeys(new Map([['k2', generateEd25519KeyObjects().publicKey]]));
    expect(codeOf(() => verifier.verify(t, call()))).toBe('E_TOKEN_UNKNOWN_KEY');
    verifier.setPublicKeys(publicKeys);
    expect(verifier.verify(t, call()).rootKeyId).toBe('k1');
    verifier.clear();
    expect(verifier.stats().chain.size).toBe(0);
  });

  it('never serves a tampered token from the cache: it is another key and is verified in full', () => {
    const { verifier, isRevoked } = setup();
    const t = threeBlocks();
    verifier.verify(t, call());
    verifier.verify(t, call());
    let tried = 0;
    // Change one character at a spread of positions (signatures, payloads, proof).
    for (let i = 10; i < t.length; i += Math.ceil(t.length / 40)) {
      const c = t[i] === 'A' ? 'B' : 'A';
      const bad = t.slice(0, i) + c + t.slice(i + 1);
      const expected = codeOf(() => verifyToken(bad, { publicKeys, isRevoked, now: NOW, request: call() }));
      expect(codeOf(() => verifier.verify(bad, call()))).toBe(expected);
      expect(expected).toMatch(/^E_TOKEN_/);
      tried++;
    }
    expect(tried).toBeGreaterThan(20);
    // Refused tokens leave nothing behind, and the good one is still there.
    expect(verifier.stats().chain.size).toBe(1);
    expect(verifier.stats().decision.size).toBe(1);
    expect(verifier.stats().chain.misses).toBe(1 + tried);
  });

  it('caches long tokens and large arguments by digest, and still tells them apart', () => {
    const { verifier, isRevoked } = setup();
    let t = threeBlocks();
    for (const c of 'xyz') t = attenuate(t, { when: `args.path != "${c.repeat(1500)}"` });
    expect(t.length).toBeGreaterThan(4096);
    const big = call({ args: { path: '/data/a.csv', blob: 'b'.repeat(10_000) } });
    expect(essence(verifier.verify(t, big))).toEqual(essence(verifyToken(t, { publicKeys, isRevoked, now: NOW, request: big })));
    verifier.verify(t, big);
    expect(verifier.stats().decision).toMatchObject({ hits: 1, misses: 1 });
    // Arguments differing in their last character: another key, decided afresh.
    verifier.verify(t, call({ args: { path: '/data/a.csv', blob: 'b'.repeat(9_999) + 'c' } }));
    expect(verifier.stats().decision).toMatchObject({ hits: 1, misses: 2, size: 2 });
    // The long token with one character changed deep inside: refused, as verifyToken refuses it.
    const i = t.length - 200;
    const bad = t.slice(0, i) + (t[i] === 'A' ? 'B' : 'A') + t.slice(i + 1);
    const expected = codeOf(() => verifyToken(bad, { publicKeys, isRevoked, now: NOW, request: big }));
    expect(expected).toMatch(/^E_TOKEN_(SIGNATURE|MALFORMED)$/);
    expect(codeOf(() => verifier.verify(bad, big))).toBe(expected);
    expect(verifier.stats().chain).toMatchObject({ hits: 2, misses: 2, size: 1 });
  });

  it('keys decisions by the canonical request: key order does not matter, any other difference does', () => {
    const { verifier } = setup();
    const t = threeBlocks();
    verifier.verify(t, call({ args: { path: '/data/a.csv', mode: 'r' } }));
    verifier.verify(t, call({ args: { mode: 'r', path: '/data/a.csv' } }));
    expect(verifier.stats().decision).toMatchObject({ hits: 1, misses: 1 });
    // Same token, another path: not served from cache, and refused by the last block's `when`.
    expect(codeOf(() => verifier.verify(t, call({ args: { path: '/data/a.txt', mode: 'r' } })))).toBe('E_TOKEN_DENIED');
    // Another principal, operation or tool: each decided afresh.
    expect(codeOf(() => verifier.verify(t, call({ principal: 'planner' })))).toBe('E_TOKEN_DENIED');
    expect(codeOf(() => verifier.verify(t, call({ operation: 'delete' })))).toBe('E_TOKEN_DENIED');
    expect(codeOf(() => verifier.verify(t, call({ resource: 'list_dir' })))).toBe('E_TOKEN_DENIED');
    // Denials are not kept: asking again decides again.
    expect(codeOf(() => verifier.verify(t, call({ principal: 'planner' })))).toBe('E_TOKEN_DENIED');
    expect(verifier.stats().decision).toMatchObject({ hits: 1, misses: 6, size: 1 });
  });

  it('does not cache decisions of a token whose `when` reads now', () => {
    const { verifier, clock } = setup();
    const officeHours = attenuate(threeBlocks(), { when: 'now.getHours("UTC") >= 9 && now.getHours("UTC") < 17' });
    expect(verifier.verify(officeHours, call()).tokenId).toMatch(/^tok_/);
    expect(verifier.verify(officeHours, call()).tokenId).toMatch(/^tok_/);
    clock.now = NOW + HOUR; // the token's expiry
    expect(codeOf(() => verifier.verify(officeHours, call()))).toBe('E_TOKEN_EXPIRED');
    const s = verifier.stats();
    expect(s.decision).toMatchObject({ hits: 0, misses: 0, size: 0, uncacheable: 3 });
    expect(s.chain.hits).toBe(2); // signatures are still cached; the expired entry was then dropped
    expect(s.chain.size).toBe(0);
  });

  it('re-evaluates a `now` expression on every call, so the window closes on a cached token', () => {
    const { verifier, clock } = setup();
    const t = attenuate(root({ expiresAt: NOW + 24 * HOUR }), { principal: 'planner/worker', when: 'now.getHours("UTC") < 11' });
    verifier.verify(t, call());
    verifier.verify(t, call());
    clock.now = NOW + HOUR; // 11:00
    const e = (() => {
      try {
        verifier.verify(t, call());
      } catch (err) {
        return err as { code: string; details: { reason: string } };
      }
      throw new Error('expected a refusal');
    })();
    expect(e.code).toBe('E_TOKEN_DENIED');
    expect(e.details.reason).toBe('E_WHEN_FALSE');
  });

  it('does not cache decisions that read the filesystem', () => {
    const { verifier } = setup();
    const t = threeBlocks();
    const withFile = call({ access: { files: [{ path: '/tmp', access: 'read' }] } });
    verifier.verify(t, withFile);
    verifier.verify(t, withFile);
    expect(verifier.stats().decision).toMatchObject({ hits: 0, misses: 0, size: 0, uncacheable: 2 });
  });

  it('a token crafted to end like another (same proof key) is verified in full, and neither evicts nor is mistaken for the other', () => {
    const { verifier, revoked } = setup();
    const a = attenuate(root(), { principal: 'planner/worker' });
    // A holder of `a` appends a block signed with a's proof key and names that same key again,
    // so the new token ends with a's proof; `when` padding lines the base64 up with a's.
    const env = decodeEnvelope(a);
    const seed = (env.proof as { secret: Buffer }).secret;
    const last = env.blocks[env.blocks.length - 1]!;
    const signer = privateKeyFromSeed(seed, last.next);
    let b: string | undefined;
    for (let pad = 0; pad < 3 && b === undefined; pad++) {
      const payload = encodeBody({ when: 'true' + ' '.repeat(pad), constraints: { allowedTools: ['read_file'] } });
      const sig = signEd25519(signer, blockMessage(env.key, env.blocks.length, last.sig, payload, last.next));
      const t = encodeEnvelope({ key: env.key, blocks: [...env.blocks, { payload, next: last.next, sig }], proof: { secret: seed } });
      if (t.slice(-43) === a.slice(-43)) b = t;
    }
    expect(b).toBeDefined();
    const listDir = call({ resource: 'list_dir', tool: 'list_dir', args: {} });
    expect(verifier.verify(a, listDir).tokenId).toBeDefined(); // a allows list_dir
    expect(codeOf(() => verifier.verify(b!, listDir))).toBe('E_TOKEN_DENIED'); // b does not: never a's answer
    expect(verifier.verify(b!, call()).blocks).toHaveLength(3);
    expect(verifier.verify(a, listDir).blocks).toHaveLength(2); // still a's entry, served from the cache
    expect(verifier.stats().chain.hits).toBeGreaterThanOrEqual(1);
    // b revoked by its own block: refusing it does not drop a's entry.
    revoked.add(verifier.verify(b!, call()).revocationIds[2]!);
    expect(codeOf(() => verifier.verify(b!, call()))).toBe('E_TOKEN_REVOKED');
    const hits = verifier.stats().chain.hits;
    verifier.verify(a, listDir);
    expect(verifier.stats().chain.hits).toBe(hits + 1);
  });

  it('holds at most maxEntries per level, dropping the least recently used', () => {
    const { verifier } = setup({ maxEntries: 2 });
    const [a, b, c] = [root(), root(), root()];
    verifier.verify(a, call({ principal: 'planner' }));
    verifier.verify(b, call({ principal: 'planner' }));
    verifier.verify(a, call({ principal: 'planner' })); // a is now the most recent
    verifier.verify(c, call({ principal: 'planner' })); // evicts b
    expect(verifier.stats().chain).toMatchObject({ size: 2, hits: 1, misses: 3, maxEntries: 2 });
    expect(verifier.stats().decision).toMatchObject({ size: 2, hits: 1, misses: 3 });
    verifier.verify(a, call({ principal: 'planner' }));
    verifier.verify(b, call({ principal: 'planner' })); // verified afresh
    expect(verifier.stats().chain).toMatchObject({ size: 2, hits: 2, misses: 4 });
    expect(() => new TokenVerifier({ publicKeys, isRevoked: () => false, maxEntries: 0 })).toThrow(RangeError);
  });
});
