import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KeyError, loadOrCreateSecretFile, parseSecret, readSecretFile } from '../../src/kernel/keys.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'captrap-keys-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('key files', () => {
  it('creates a 0600 key file once and reads the same secret back', () => {
    const path = join(dir, 'cap.key');
    const a = loadOrCreateSecretFile(path);
    expect(a.created).toBe(true);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const b = loadOrCreateSecretFile(path);
    expect(b.created).toBe(false);
    expect(b.secret.equals(a.secret)).toBe(true);
  });

  it('refuses a key file readable by others, naming the fix', () => {
    const path = join(dir, 'open.key');
    loadOrCreateSecretFile(path);
    chmodSync(path, 0o644);
    expect(() => readSecretFile(path)).toThrow(/chmod 600/);
  });

  it('refuses short or malformed secrets with typed codes', () => {
    expect(() => parseSecret('abcd')).toThrow(KeyError);
    try {
      parseSecret('not a key!');
    } catch (e) {
      expect((e as KeyError).code).toBe('E_KEY_FORMAT');
    }
    const path = join(dir, 'short.key');
    writeFileSync(path, 'aa'.repeat(8), { mode: 0o600 });
    expect(() => readSecretFile(path)).toThrow(/at least 32/);
  });

  it('reports a missing key file as E_KEY_MISSING', () => {
    expect(() => readSecretFile(join(dir, 'nope.key'))).toThrow(expect.objectContaining({ code: 'E_KEY_MISSING' }));
  });
});
