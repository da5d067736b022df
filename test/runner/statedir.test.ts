// The state directory against a hostile local user, on the real filesystem (the tests run as
// root, so "another user" is uid 65534 via chown): what another user created, replaced or can
// write is refused before `captrap serve` uses it, and the error says where, what and how to fix.
import { chmodSync, chownSync, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { generateSecret, writeSecretFile } from '../../src/kernel/keys.js';
import { hierarchyRoots, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { parseConfig, type SidecarConfig } from '../../src/runner/config.js';
import { Sidecar } from '../../src/runner/sidecar.js';
import { checkOwnedPath, prepareStateDir, StateDirError } from '../../src/runner/statedir.js';

// A hook run just before each mkdirSync, to plant things in the window between captrap's
// lstat (nothing there) and its mkdir; unset, mkdirSync is the real one.
const race = vi.hoisted(() => ({ beforeMkdir: undefined as ((path: string) => void) | undefined }));
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const mkdirSync = ((path: Parameters<typeof fs.mkdirSync>[0], opts?: Parameters<typeof fs.mkdirSync>[1]) => {
    race.beforeMkdir?.(String(path));
    return fs.mkdirSync(path, opts);
  }) as typeof fs.mkdirSync;
  return { ...fs, mkdirSync, default: { ...fs, mkdirSync } };
});

const NOBODY = 65534;
const BASE = `captrap-statedir-${process.pid}`;
let root: string;
let n = 0;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'captrap-statedir-'));
});

afterAll(() => {
  removeCgroupBase(probeHost(), BASE);
  rmSync(root, { recursive: true, force: true });
});

/** A config whose state dir is a fresh, not yet existing path under the test root. */
function config(extra: Record<string, unknown> = {}): SidecarConfig {
  const stateDir = join(root, `case-${++n}`, 'state');
  return parseConfig({ stateDir, cgroupBase: BASE, ...extra }, 'statedir test', root);
}

/** A state dir that prepareStateDir built and passed: the layout every test then spoils. */
function prepared(extra: Record<string, unknown> = {}): SidecarConfig {
  const c = config(extra);
  prepareStateDir(c);
  return c;
}

function refusal(fn: () => void): StateDirError {
  try {
    fn();
  } catch (err) {
    if (err instanceof StateDirError) return err;
    throw err;
  }
  throw new Error('expected a StateDirError');
}

function expectRefused(c: SidecarConfig, path: string, problem: RegExp): StateDirError {
  const err = refusal(() => prepareStateDir(c));
  expect(err.code).toBe('E_STATE_DIR');
  expect(err.message).toContain(path);
  expect(err.message).toMatch(problem);
  expect(err.message).toMatch(/Fix: /);
  expect(err.details).toMatchObject({ path });
  return err;
}

describe('prepareStateDir', () => {
  it('creates a missing state dir, its missing parents and the audit dir 0700', () => {
    const c = prepared();
    for (const d of [join(c.stateDir, '..'), c.stateDir, c.audit.dir]) {
      const st = lstatSync(d);
      expect(st.isDirectory()).toBe(true);
      expect(st.mode & 0o777).toBe(0o700);
      expect(st.uid).toBe(process.getuid!());
    }
    // Files are left to their owners to create (O_EXCL, 0600).
    expect(existsSync(c.capabilityKeyFile)).toBe(false);
  });

  it('passes a correct existing layout and leaves it as it was', () => {
    const c = prepared();
    writeSecretFile(c.capabilityKeyFile, generateSecret());
    writeSecretFile(c.audit.keyFile, generateSecret());
    writeFileSync(c.audit.signingKeyFile, 'pem\n', { mode: 0o600 });
    writeFileSync(join(c.stateDir, 'audit-signing.pub'), 'pub\n', { mode: 0o644 });
    writeFileSync(join(c.stateDir, 'revocations.jsonl'), '', { mode: 0o600 });
    chmodSync(c.stateDir, 0o755); // readable is allowed; only writable by others is refused
    const before = readdirSync(c.stateDir).sort();
    expect(() => prepareStateDir(c)).not.toThrow();
    expect(readdirSync(c.stateDir).sort()).toEqual(before);
    expect(statSync(c.stateDir).mode & 0o777).toBe(0o755);
  });

  it('refuses a state dir writable by group or others', () => {
    const c = config();
    mkdirSync(c.stateDir, { recursive: true });
    chmodSync(c.stateDir, 0o777);
    const err = expectRefused(c, c.stateDir, /state directory .* has mode 0777, writable by group or others/);
    expect(err.message).toContain(`chmod 700 ${c.stateDir}`);
  });

  it('refuses a state dir owned by another uid', () => {
    const c = config();
    mkdirSync(c.stateDir, { recursive: true, mode: 0o700 });
    chownSync(c.stateDir, NOBODY, NOBODY);
    const err = expectRefused(c, c.stateDir, new RegExp(`owned by uid ${NOBODY}, not ${process.getuid!()}`));
    expect(err.message).toMatch(/chown \S+ .* && chmod 700 /);
  });

  it('refuses a state dir that is a symlink, even to a good directory', () => {
    const c = config();
    const real = join(root, `real-${n}`);
    mkdirSync(real, { mode: 0o700 });
    mkdirSync(join(c.stateDir, '..'), { recursive: true });
    symlinkSync(real, c.stateDir);
    const err = expectRefused(c, c.stateDir, /is a symlink/);
    expect(err.message).toMatch(/remove the symlink/);
    expect(readdirSync(real)).toEqual([]); // nothing was created through it
  });

  it('refuses a planted cap.key owned by another uid', () => {
    const c = prepared();
    writeSecretFile(c.capabilityKeyFile, generateSecret());
    chownSync(c.capabilityKeyFile, NOBODY, NOBODY);
    expectRefused(c, c.capabilityKeyFile, new RegExp(`capability key file .* owned by uid ${NOBODY}`));
  });

  it('refuses a cap.key that group or others can read', () => {
    const c = prepared();
    writeSecretFile(c.capabilityKeyFile, generateSecret());
    chmodSync(c.capabilityKeyFile, 0o644);
    const err = expectRefused(c, c.capabilityKeyFile, /has mode 0644, accessible to group or others/);
    expect(err.message).toContain(`chmod 600 ${c.capabilityKeyFile}`);
  });

  it('refuses audit key files that are symlinks or group-readable', () => {
    const a = prepared();
    symlinkSync('/etc/hostname', a.audit.keyFile);
    expectRefused(a, a.audit.keyFile, /audit key file .* is a symlink/);
    const b = prepared();
    writeFileSync(b.audit.signingKeyFile, 'pem\n', { mode: 0o640 });
    chmodSync(b.audit.signingKeyFile, 0o640);
    expectRefused(b, b.audit.signingKeyFile, /audit signing key .* has mode 0640/);
  });

  it('refuses a revocations.jsonl that is a symlink to /etc/passwd', () => {
    const c = prepared();
    const rev = join(c.stateDir, 'revocations.jsonl');
    symlinkSync('/etc/passwd', rev);
    expectRefused(c, rev, /revocation list .* is a symlink/);
  });

  it('refuses a revocations.jsonl with a second hard link', () => {
    const c = prepared();
    const rev = join(c.stateDir, 'revocations.jsonl');
    writeFileSync(rev, '', { mode: 0o600 });
    linkSync(rev, join(root, `rev-link-${n}`));
    expectRefused(c, rev, /has 2 hard links/);
  });

  it('refuses an audit dir that is a symlink', () => {
    const c = prepared();
    rmSync(c.audit.dir, { recursive: true });
    const real = join(root, `audit-real-${n}`);
    mkdirSync(real, { mode: 0o700 });
    symlinkSync(real, c.audit.dir);
    expectRefused(c, c.audit.dir, /audit directory .* is a symlink/);
  });

  it("refuses an admin socket's directory writable by others, and names it", () => {
    const sockDir = join(root, `sock-${n}`);
    mkdirSync(sockDir, { mode: 0o700 });
    chmodSync(sockDir, 0o1777);
    const c = config({ adminSocket: join(sockDir, 'admin.sock') });
    expectRefused(c, sockDir, /admin socket directory .* has mode 01777, writable by group or others/);
  });
});

describe('checkOwnedPath', () => {
  it('refuses a path where a directory is expected but a file is found, and vice versa', () => {
    const dir = mkdtempSync(join(root, 'kinds-'));
    const file = join(dir, 'f');
    writeFileSync(file, 'x', { mode: 0o600 });
    expect(refusal(() => checkOwnedPath(file, 'dir', { create: true })).message).toMatch(/is not a directory/);
    expect(refusal(() => checkOwnedPath(dir, 'secret')).message).toMatch(/is not a regular file/);
  });

  it('refuses a symlink planted where it found nothing', () => {
    const dir = mkdtempSync(join(root, 'planted-'));
    const target = join(dir, 'x');
    symlinkSync(dir, target);
    expect(refusal(() => checkOwnedPath(target, 'dir', { create: true })).message).toMatch(/is a symlink/);
  });

  it('refuses, not follows, a symlink planted between its lstat and its mkdir (EEXIST)', () => {
    const dir = mkdtempSync(join(root, 'race-'));
    const elsewhere = mkdtempSync(join(root, 'elsewhere-'));
    const target = join(dir, 'state');
    race.beforeMkdir = (p) => {
      if (p === target) symlinkSync(elsewhere, target);
    };
    try {
      const err = refusal(() => checkOwnedPath(join(target, 'audit'), 'dir', { create: true, role: 'audit directory' }));
      expect(err.message).toContain(target);
      expect(err.message).toMatch(/is a symlink/);
    } finally {
      race.beforeMkdir = undefined;
    }
    expect(readdirSync(elsewhere)).toEqual([]); // the child was not created through the link
  });

  it('does not judge parents it did not create (the state dir may live under /var/lib)', () => {
    const shared = join(root, `shared-${++n}`);
    mkdirSync(shared);
    chmodSync(shared, 0o1777);
    chownSync(shared, NOBODY, NOBODY);
    expect(() => checkOwnedPath(join(shared, 'a', 'b'), 'dir', { create: true })).not.toThrow();
    expect(lstatSync(join(shared, 'a')).mode & 0o777).toBe(0o700);
  });
});

describe('Sidecar.start with a planted state dir', () => {
  it('rejects with E_STATE_DIR and leaves no admin socket, cgroup or audit dir behind', async () => {
    const cfg = config({ audit: { flushIntervalMs: 20 } });
    // The attack: another user pre-created the state dir, planted a key and a symlink.
    mkdirSync(cfg.stateDir, { recursive: true, mode: 0o755 });
    writeFileSync(cfg.capabilityKeyFile, generateSecret().toString('base64') + '\n', { mode: 0o600 });
    symlinkSync('/etc/passwd', join(cfg.stateDir, 'revocations.jsonl'));
    chownSync(cfg.capabilityKeyFile, NOBODY, NOBODY);
    chownSync(cfg.stateDir, NOBODY, NOBODY);
    let s: Sidecar | undefined;
    try {
      const started = Sidecar.start(cfg, { output: () => {} });
      started.then((x) => (s = x)).catch(() => {});
      await expect(started).rejects.toMatchObject({ code: 'E_STATE_DIR', details: { path: cfg.stateDir } });
    } finally {
      await s?.stop();
    }
    expect(existsSync(cfg.adminSocket)).toBe(false);
    expect(existsSync(cfg.audit.dir)).toBe(false);
    for (const h of hierarchyRoots(probeHost())) expect(existsSync(join(h.root, BASE))).toBe(false);
    expect(readdirSync(cfg.stateDir).sort()).toEqual(['cap.key', 'revocations.jsonl']);
  });
});
