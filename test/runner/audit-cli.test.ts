import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AuditLog, segmentFileName, verifyAuditLog } from '../../src/kernel/audit.js';
import { generateSecret, readEd25519PublicKey, readSecretFile, writeSecretFile } from '../../src/kernel/keys.js';
import { formatReport, main } from '../../src/runner/commands/audit.js';

let root: string;
let good: string;
let bad: string;

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
