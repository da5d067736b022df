import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sign, verify } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadOrCreateEd25519KeyPair, readEd25519PrivateKey, readEd25519PublicKey } from '../../src/kernel/keys.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'captrap-edkeys-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('Ed25519 checkpoint key files', () => {
  it('creates a 0600 private and a 0644 public key once, and they pair', () => {
    const priv = join(dir, 'k');
    const pub = join(dir, 'k.pub');
    const a = loadOrCreateEd25519KeyPair(priv, pub);
    expect(a.created).toBe(true);
    expect(statSync(priv).mode & 0o777).toBe(0o600);
    expect(statSync(pub).mode & 0o777).toBe(0o644);
    const b = loadOrCreateEd25519KeyPair(priv, pub);
    expect(b.created).toBe(false);
    const msg = Buffer.from('checkpoint');
    expect(verify(null, msg, readEd25519PublicKey(pub), sign(null, msg, b.privateKey))).toBe(true);
  });

  it('rewrites a missing or stale public key from the private key', () => {
    const priv = join(dir, 'k');
    const pub = join(dir, 'k.pub');
    loadOrCreateEd25519KeyPair(priv, pub);
    const pem = readFileSync(pub, 'utf8');
    unlinkSync(pub);
    loadOrCreateEd25519KeyPair(priv, pub);
    expect(readFileSync(pub, 'utf8')).toBe(pem);
  });

  it('refuses an exposed private key, a non-key file and a missing file with typed codes', () => {
    const priv = join(dir, 'k');
    loadOrCreateEd25519KeyPair(priv, join(dir, 'k.pub'));
    chmodSync(priv, 0o640);
    expect(() => readEd25519PrivateKey(priv)).toThrow(expect.objectContaining({ code: 'E_KEY_PERMISSIONS' }));
    writeFileSync(join(dir, 'junk.pub'), 'not a key\n');
    expect(() => readEd25519PublicKey(join(dir, 'junk.pub'))).toThrow(expect.objectContaining({ code: 'E_KEY_FORMAT' }));
    expect(() => readEd25519PublicKey(join(dir, 'absent.pub'))).toThrow(expect.objectContaining({ code: 'E_KEY_MISSING' }));
  });
});
