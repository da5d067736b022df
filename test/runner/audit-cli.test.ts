import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AuditLog, segmentFileName, verifyAuditLog } from '../../src/kernel/audit.js';
import { generateSecret, readEd25519PublicKey, readSecretFile, writeSecretFile } from '../../src/kernel/keys.js';
import { formatReport, main } from '../../src/runner/commands/audit.js';
import { SecurityKernel } from '../../src/kernel/kernel.js';
import { freshKeyring } from '../kernel/helpers.js';

let root: string;
let good: string;
let bad: string;
/** A log whose HMAC key was moved away: what a verifier holding only the public key sees. */
let nokey: string;

async function makeLog(dir: string): Promise<void> {
  const log = await AuditLog.open({ dir, checkpointEvery: 5, flushIntervalMs: 5 });
  for (let i = 0; i < 12; i++) {
    log.record({ type: i % 3 === 0 ? 'access_denied' : 'capability_validated', principal: `agent-${i % 2}`, capabilityId: `cap-${i}`, details: { i } });
  }
  await log.close();
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'captrap-audit-cli-'));
  good = join(root, 'good');
  bad = join(root, 'bad');
  await makeLog(good);
  await makeLog(bad);
  nokey = join(root, 'nokey');
  await makeLog(nokey);
  renameSync(join(nokey, 'audit.key'), join(root, 'nokey.key'));
  const seg = join(bad, segmentFileName(1));
  writeFileSync(seg, readFileSync(seg, 'utf8').replace('"i":4}', '"i":5}'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s) => ((out += String(s)), true));
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s) => ((err += String(s)), true));
  try {
    const code = await main(argv);
    return { code, out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

describe('captrap audit verify', () => {
  it('exits 0 for an intact log and reports both checks as JSON', async () => {
    const r = await run(['verify', good, '--json']);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out) as { ok: boolean; integrity: { ok: boolean }; completeness: { ok: boolean }; closed: boolean };
    expect(report).toMatchObject({ ok: true, integrity: { ok: true }, completeness: { ok: true }, closed: true });
  });

  it('exits 1 for a tampered log and names the record', async () => {
    const r = await run(['verify', bad, '--json']);
    expect(r.code).toBe(1);
    const report = JSON.parse(r.out) as { integrity: { firstBad: { kind: string; seq: number; line: number; file: string } } };
    expect(report.integrity.firstBad).toMatchObject({ kind: 'modified', seq: 6, file: segmentFileName(1) });
  });

  it('prints a readable report for people', () => {
    const k = { key: readSecretFile(join(bad, 'audit.key')), publicKey: readEd25519PublicKey(join(bad, 'audit-signing.pub')) };
    const text = formatReport(verifyAuditLog(bad, k));
    expect(text).toMatch(/integrity: +FAILED — first bad: \[modified\] audit-000001\.jsonl line \d+: record modified/);
    expect(text).toContain('result: NOT VERIFIED');
    expect(formatReport(verifyAuditLog(good, { key: readSecretFile(join(good, 'audit.key')), publicKey: readEd25519PublicKey(join(good, 'audit-signing.pub')) }))).toContain('result: VERIFIED');
  });

  it.each([
    ['a non-existent directory', () => ['verify', join(root, 'nope')], /audit directory .* does not exist/],
    ['a file instead of a directory', () => ['verify', join(good, segmentFileName(1))], /is not a directory/],
    ['a missing key file', () => ['verify', good, '--key', join(root, 'missing.key')], /key file .*missing\.key cannot be read.*\[E_KEY_MISSING\]/],
    ['a wrong key', () => ['verify', good, '--key', join(root, 'other.key')], /wrong audit key.*\[E_AUDIT_WRONG_KEY\]/],
    ['a directory that is not a log', () => ['verify', root, '--key', join(good, 'audit.key'), '--pubkey', join(good, 'audit-signing.pub')], /no captrap audit segments.*\[E_AUDIT_NOT_A_LOG\]/],
    ['an unknown option', () => ['verify', good, '--frobnicate'], /Unknown option '--frobnicate'/],
  ])('rejects %s: exit 2, one clear line, no stack', async (_name, argv, message) => {
    try {
      writeSecretFile(join(root, 'other.key'), generateSecret());
    } catch {
      /* made by an earlier case */
    }
    const r = await run(argv());
    expect(r.code).toBe(2);
    expect(r.err).toMatch(message);
    expect(r.err.split('\n')[0]).toMatch(/^captrap audit: /);
    expect(r.err).not.toMatch(/\n\s+at /);
    expect(r.out).toBe('');
  });

  it('as a real process: exit code and a one-line error', async () => {
    const exec = promisify(execFile);
    const ok = await exec(process.execPath, ['--import', 'tsx', 'src/runner/cli.ts', 'audit', 'verify', good], { cwd: process.cwd() });
    expect(JSON.parse(ok.stdout)).toMatchObject({ ok: true });
    const failed = await exec(process.execPath, ['--import', 'tsx', 'src/runner/cli.ts', 'audit', 'verify', join(root, 'nope')], { cwd: process.cwd() }).then(
      () => null,
      (e: { code: number; stderr: string }) => e,
    );
    expect(failed?.code).toBe(2);
    expect(failed?.stderr.trim().split('\n')).toHaveLength(1);
  });
});

describe('captrap audit verify with the public key only', () => {
  it('--pubkey-only on an intact log: exit 0, JSON says integrity unchecked and ok false', async () => {
    const r = await run(['verify', good, '--pubkey-only', '--pubkey', join(good, 'audit-signing.pub'), '--json']);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out) as { mode: string; ok: boolean; checksPassed: boolean; integrity: { ok: boolean; status: string; unchecked: string } };
    expect(report).toMatchObject({ mode: 'public-key-only', ok: false, checksPassed: true, integrity: { ok: false, status: 'unchecked' } });
    expect(report.integrity.unchecked).toMatch(/no HMAC key/);
  });

  it('no HMAC key to be found and --pubkey-only not given: the checks run, but exit 3, with the reason', async () => {
    const r = await run(['verify', nokey, '--pubkey', join(nokey, 'audit-signing.pub')]);
    expect(r.code).toBe(3);
    expect(JSON.parse(r.out)).toMatchObject({ mode: 'public-key-only', ok: false, checksPassed: true });
    expect(r.err).toMatch(/no HMAC key at .*audit\.key, so record MACs were not checked; exit 3\. Pass --key, or --pubkey-only/);
    expect(r.err).not.toMatch(/inside the log directory/);
    const text = formatReport(verifyAuditLog(nokey, { publicKey: readEd25519PublicKey(join(nokey, 'audit-signing.pub')), publicKeyOnly: true }));
    expect(text).toMatch(/integrity: +UNCHECKED — no HMAC key: record MACs were NOT checked/);
    expect(text).toContain('result: PUBLIC-KEY CHECKS PASSED — record MACs unchecked');
    expect(text).not.toContain('result: VERIFIED');
    const accepted = await run(['verify', nokey, '--pubkey-only']);
    expect(accepted.code).toBe(0);
    expect(accepted.err).toMatch(/public key read from .* inside the log directory/);
    expect(accepted.err).not.toMatch(/exit 3/);
    const keyed = await run(['verify', nokey, '--key', join(root, 'nokey.key'), '--json']);
    expect(keyed.code).toBe(0);
    expect(JSON.parse(keyed.out)).toMatchObject({ mode: 'full', ok: true });
  });

  it('a truncated log fails the public-key checks: exit 1 even with --pubkey-only', async () => {
    const cut = join(root, 'cut');
    await makeLog(cut);
    const seg = join(cut, segmentFileName(1));
    const lines = readFileSync(seg, 'utf8').split('\n');
    writeFileSync(seg, lines.slice(0, lines.findIndex((l) => l.startsWith('{"v":1,"seq":10,'))).join('\n') + '\n');
    const r = await run(['verify', cut, '--pubkey-only', '--json']);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.out)).toMatchObject({ checksPassed: false, completeness: { ok: false } });
  });

  it('--pubkey-only with --key is a usage error; a wrong public key is a typed error', async () => {
    const both = await run(['verify', good, '--pubkey-only', '--key', join(good, 'audit.key')]);
    expect(both.code).toBe(2);
    expect(both.err).toContain('--pubkey-only checks without the HMAC key');
    const otherDir = join(root, 'other');
    await makeLog(otherDir);
    const wrong = await run(['verify', good, '--pubkey-only', '--pubkey', join(otherDir, 'audit-signing.pub')]);
    expect(wrong.code).toBe(2);
    expect(wrong.err).toMatch(/wrong public key.*\[E_AUDIT_WRONG_PUBKEY\]/);
  });
});

describe('captrap audit tail -f (a real process)', () => {
  it('prints records appended after it started, across a rotation, and stops cleanly on SIGTERM', async () => {
    const live = join(root, 'live');
    const log = await AuditLog.open({ dir: live, flushIntervalMs: 5, maxSegmentBytes: 4 * 1024 });
    await log.flush();
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/runner/cli.ts', 'audit', 'tail', live, '-n', '1', '-f', '--json'], {
      cwd: process.cwd(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const seqs = (): number[] => out.split('\n').filter((l) => l.startsWith('{')).map((l) => (JSON.parse(l) as { seq: number }).seq);
    const until = async (cond: () => boolean, what: string): Promise<void> => {
      const deadline = Date.now() + 15_000;
      while (!cond()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; stdout: ${out.slice(-500)} stderr: ${err.slice(-500)}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    };
    try {
      // The one existing record (audit_opened) printed means the follower has taken its starting offset.
      await until(() => seqs().length === 1, 'the initial record');
      expect(seqs()).toEqual([1]);
      for (let i = 0; i < 60; i++) log.record({ type: 'access_denied', principal: 'tail-test', details: { i, pad: 'x'.repeat(100) } });
      await log.flush();
      const segments = log.stats().segments;
      expect(segments).toBeGreaterThan(1);
      await until(() => seqs().length >= 61 + segments - 1, 'the appended records');
      const recs = out.trim().split('\n').map((l) => JSON.parse(l) as { seq: number; type: string; principal?: string });
      expect(recs.map((x) => x.seq)).toEqual(Array.from({ length: recs.length }, (_, k) => k + 1));
      expect(recs.filter((x) => x.principal === 'tail-test')).toHaveLength(60);
      expect(recs.some((x) => x.type === 'audit_rotated')).toBe(true);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(err).toBe('');
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await log.close();
    }
  }, 30_000);
});

describe('captrap audit tail / show', () => {
  it('tail -n prints the last N records as JSON lines when not on a terminal', async () => {
    const r = await run(['tail', good, '-n', '3']);
    expect(r.code).toBe(0);
    const recs = r.out.trim().split('\n').map((l) => JSON.parse(l) as { seq: number; type: string });
    expect(recs.map((x) => x.seq)).toEqual([12, 13, 14]);
    expect(recs[2]!.type).toBe('audit_closed');
  });

  it('show filters by principal and type', async () => {
    const r = await run(['show', good, '--principal', 'agent-0', '--type', 'access_denied']);
    expect(r.code).toBe(0);
    const recs = r.out.trim().split('\n').map((l) => JSON.parse(l) as { principal: string; type: string; details: { i: number } });
    expect(recs.map((x) => x.details.i)).toEqual([0, 6]);
    expect(recs.every((x) => x.principal === 'agent-0' && x.type === 'access_denied')).toBe(true);
  });

  it('show finds every capability of a revocation cascade (one record) by principal and by id; verify passes', async () => {
    const dir = join(root, 'cascade');
    const log = await AuditLog.open({ dir, flushIntervalMs: 5 });
    const kernel = new SecurityKernel({ keys: freshKeyring(), audit: log });
    const top = kernel.requestCapability('planner', { type: 'tool', pattern: '*' }, ['invoke', 'delegate']);
    const mine = Array.from({ length: 20 }, () => kernel.delegate(top.id, 'worker'));
    const theirs = mine.map((m) => kernel.delegate(m.id, 'helper'));
    expect(kernel.revokeCapability(top.id, 'bench')).toHaveLength(41);
    await log.close();
    expect((await run(['verify', dir, '--json'])).code).toBe(0);
    const show = async (...args: string[]) => {
      const r = await run(['show', dir, '--type', 'capability_revoked', ...args]);
      expect(r.code).toBe(0);
      return r.out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { details: { ids: string[]; principals: string[]; count: number } });
    };
    const all = await show();
    expect(all).toHaveLength(1);
    expect(all[0]!.details.count).toBe(41);
    expect(new Set(all[0]!.details.principals)).toEqual(new Set(['planner', 'worker', 'helper']));
    for (const who of ['planner', 'worker', 'helper']) expect(await show('--principal', who)).toHaveLength(1);
    expect(await show('--principal', 'nobody')).toHaveLength(0);
    for (const c of [top, mine[7]!, theirs[19]!]) {
      const found = await show('--capability', c.id);
      expect(found).toHaveLength(1);
      expect(found[0]!.details.ids).toContain(c.id);
    }
    // --capability also matches records that name the id at the top level.
    const granted = await run(['show', dir, '--capability', top.id, '--type', 'capability_granted']);
    expect(granted.out.trim().split('\n')).toHaveLength(1);
  });

  it('show rejects an unknown event type with the list of known ones', async () => {
    const r = await run(['show', good, '--type', 'nonsense']);
    expect(r.code).toBe(2);
    expect(r.err).toContain("unknown event type 'nonsense'");
    expect(r.err).toContain('capability_granted');
  });

  it('tail -n rejects a non-number', async () => {
    const r = await run(['tail', good, '-n', 'x']);
    expect(r.code).toBe(2);
    expect(r.err).toContain('-n must be a non-negative integer');
  });
});
