import { createHmac, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { canonicalEncoding, parseToken, toToken, verifySignature, type Capability } from '../../src/kernel/capability.js';
import { Keyring } from '../../src/kernel/keyring.js';
import { codeOf, freshKeyring, makeKernel } from './helpers.js';

const alice = { principal: 'alice' };

function sample() {
  const env = makeKernel();
  const cap = env.kernel.requestCapability(
    'alice',
    { type: 'tool', pattern: 'read_*' },
    ['invoke'],
    { allowedTools: ['read_file'], maxFileSize: 1000, allowedDomains: ['example.com'], allowedCommands: ['ls'], maxDelegationDepth: 3, limits: { memoryBytes: 1 << 20, pids: 4, cpu: 0.5, timeoutMs: 1000 } },
    { ttlMs: 60_000, holder: { pid: 1234, startTime: 99 } },
  );
  return { ...env, cap };
}

// One altered copy per signed field (and per constraint / limit field).
function tampered(c: Capability): [string, Capability][] {
  const t = (name: string, patch: Partial<Capability>): [string, Capability] => [name, { ...c, ...patch } as Capability];
  const con = (patch: Partial<Capability['constraints']>) => ({ constraints: { ...c.constraints, ...patch } });
  return [
    t('id', { id: 'cap_' + 'A'.repeat(22) }),
    t('principal', { principal: 'mallory' }),
    t('resourceType', { resourceType: 'file' }),
    t('resource', { resource: '*' }),
    t('operations', { operations: ['invoke', 'admin'] }),
    t('constraints.allowedTools', con({ allowedTools: ['read_file', 'shell'] })),
    t('constraints.paths', con({ paths: ['/'] })),
    t('constraints.maxFileSize', con({ maxFileSize: 1001 })),
    t('constraints.allowedDomains', con({ allowedDomains: ['*'] })),
    t('constraints.allowedCommands', con({ allowedCommands: ['ls', 'rm'] })),
    t('constraints.maxDelegationDepth', con({ maxDelegationDepth: 4 })),
    t('limits.memoryBytes', con({ limits: { ...c.constraints.limits, memoryBytes: 2 << 20 } })),
    t('limits.cpu', con({ limits: { ...c.constraints.limits, cpu: 0.75 } })),
    t('limits.timeoutMs', con({ limits: { ...c.constraints.limits, timeoutMs: 1001 } })),
    t('issuedAt', { issuedAt: c.issuedAt - 1 }),
    t('expiresAt', { expiresAt: c.expiresAt + 1 }),
    t('holder.pid', { holder: { pid: 1235, startTime: 99 } }),
    t('holder.startTime', { holder: { pid: 1234, startTime: 100 } }),
    t('holder removed', { holder: null }),
    t('signature', { signature: Buffer.alloc(32, 7).toString('base64url') }),
  ];
}

describe('capability signature', () => {
  it('the canonical encoding is stable for the same capability', () => {
    const { cap } = sample();
    const copy = JSON.parse(JSON.stringify(cap)) as Capability;
    expect(canonicalEncoding(copy)).toBe(canonicalEncoding(cap));
    expect(canonicalEncoding(cap).startsWith('captrap-cap-v1\n')).toBe(true);
  });

  it('tampering with any signed field is detected as a bad signature', () => {
    const { kernel, cap } = sample();
    const caller = { ...alice, process: { pid: 1234, startTime: 99 } };
    expect(kernel.validateCapability(toToken(cap), 'invoke', 'read_file', caller).capability.id).toBe(cap.id);
    for (const [field, bad] of tampered(cap)) {
      // As a token (the form a remote caller can forge) and as an object.
      expect(codeOf(() => kernel.validateCapability(toToken(bad), 'invoke', 'read_file', caller)), field).toBe('E_BAD_SIGNATURE');
      expect(codeOf(() => kernel.validateCapability(bad, 'invoke', 'read_file', caller)), field).toBe('E_BAD_SIGNATURE');
    }
  });

  it('a changed key id is an unknown key; a malformed token is malformed', () => {
    const { kernel, cap } = sample();
    expect(codeOf(() => kernel.validateCapability(toToken({ ...cap, keyId: 'nope' }), 'invoke', 'read_file', alice))).toBe('E_UNKNOWN_KEY');
    expect(codeOf(() => kernel.validateCapability('ct1.!!!', 'invoke', 'read_file', alice))).toBe('E_MALFORMED_CAPABILITY');
    expect(codeOf(() => kernel.validateCapability(toToken({ ...cap, depth: 2 }), 'invoke', 'read_file', alice))).toBe('E_MALFORMED_CAPABILITY');
  });

  it('tokens round-trip and validate on another kernel holding the key', () => {
    const { cap, keys } = sample();
    const other = makeKernel({ keys }).kernel;
    const back = parseToken(toToken(cap));
    expect(back).toEqual(cap);
    expect(verifySignature(back, keys)).toBe('ok');
    expect(other.validateCapability(toToken(cap), 'invoke', 'read_file', { ...alice, process: { pid: 1234, startTime: 99 } }).capability.id).toBe(cap.id);
    // Same key id, different secret: forged as far as that kernel can tell.
    expect(codeOf(() => makeKernel().kernel.validateCapability(toToken(cap), 'invoke', 'read_file', alice))).toBe('E_BAD_SIGNATURE');
    expect(codeOf(() => makeKernel({ keys: freshKeyring('k9') }).kernel.validateCapability(toToken(cap), 'invoke', 'read_file', alice))).toBe('E_UNKNOWN_KEY');
  });

  it('key rotation: old capabilities verify until their key is retired', () => {
    const keys = new Keyring({ id: 'old', secret: randomBytes(32) });
    const { kernel } = makeKernel({ keys });
    const before = kernel.requestCapability('alice', { type: 'tool', pattern: 'x' }, ['invoke']);
    keys.rotate('new', randomBytes(32));
    const after = kernel.requestCapability('alice', { type: 'tool', pattern: 'x' }, ['invoke']);
    expect(before.keyId).toBe('old');
    expect(after.keyId).toBe('new');
    expect(kernel.validateCapability(before.id, 'invoke', 'x', alice).capability.id).toBe(before.id);
    expect(kernel.validateCapability(toToken(before), 'invoke', 'x', alice).capability.id).toBe(before.id); // now cached
    expect(() => keys.retire('new')).toThrow(/active/);
    keys.retire('old');
    // Cached verification must not outlive the key.
    expect(codeOf(() => kernel.validateCapability(before.id, 'invoke', 'x', alice))).toBe('E_UNKNOWN_KEY');
    expect(codeOf(() => kernel.validateCapability(toToken(before), 'invoke', 'x', alice))).toBe('E_UNKNOWN_KEY');
    expect(kernel.validateCapability(after.id, 'invoke', 'x', alice).capability.keyId).toBe('new');
    // A retired id cannot come back with another secret (cached verifications would carry over).
    expect(() => keys.add('old', randomBytes(32))).toThrow(/retired/);
  });
});

describe('keyring files', () => {
  it('creates the active key as a 0600 file once and reuses it', async () => {
    const { tempDir } = await import('./helpers.js');
    const { statSync } = await import('node:fs');
    const t = tempDir('keyring');
    try {
      const a = Keyring.fromDir(t.dir, 'main');
      expect(statSync(`${t.dir}/main.key`).mode & 0o777).toBe(0o600);
      const b = Keyring.fromDir(t.dir, 'main');
      expect(b.get('main')!.equals(a.get('main')!)).toBe(true);
      expect(() => Keyring.fromDir(t.dir, '../escape')).toThrow(/key id/);
    } finally {
      t.cleanup();
    }
  });
});

describe('signature bytes', () => {
  it('are HMAC-SHA256 of the canonical encoding as createHmac computes it (short and long keys), so signatures made before still verify', () => {
    for (const secret of [randomBytes(32), randomBytes(100)]) {
      const keys = new Keyring({ id: 'k', secret });
      const { kernel } = makeKernel({ keys });
      const cap = kernel.requestCapability('alice', { type: 'tool', pattern: '*' }, ['invoke'], { allowedTools: ['x'] });
      expect(cap.signature).toBe(createHmac('sha256', secret).update(canonicalEncoding(cap)).digest('base64url'));
      expect(verifySignature(cap, keys)).toBe('ok');
      // A signature off by one bit anywhere fails (parsed copies are fresh objects: nothing cached).
      for (const at of [0, 21, 42]) {
        const s = Buffer.from(cap.signature, 'base64url');
        s[Math.min(at, 31)]! ^= 1;
        expect(verifySignature(parseToken(toToken({ ...cap, signature: s.toString('base64url') })), keys)).toBe('E_BAD_SIGNATURE');
      }
    }
  });
});
