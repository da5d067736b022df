// Public-key-only verification: what a holder of only the checkpoint public key can check,
// and — stated by a test, not hidden — what it cannot (a record edited with its MAC field left alone).
import { createHash, createPublicKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog, CHECKPOINT_FILE, publicKeyId, segmentFileName, verifyAuditLog, type AuditLogOptions, type VerifyOptions, type VerifyReport } from '../../src/kernel/audit.js';
import { readEd25519PublicKey, readSecretFile } from '../../src/kernel/keys.js';
import { readLines, writeLines } from './helpers.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'captrap-audit-pk-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** seq 1 audit_opened, 2..n+1 events, n+2 audit_closed; checkpoints every 10 records. */
async function writeLog(n: number, opts: Partial<AuditLogOptions> = {}): Promise<void> {
  const log = await AuditLog.open({ dir, checkpointEvery: 10, flushIntervalMs: 5, ...opts });
  for (let i = 0; i < n; i++) log.record({ type: 'capability_validated', principal: `agent-${i % 3}`, capabilityId: `cap-${i}`, details: { n: i } });
  await log.close();
}

const publicKey = (): KeyObject => readEd25519PublicKey(join(dir, 'audit-signing.pub'));
const pkOnly = (): VerifyReport => verifyAuditLog(dir, { publicKey: publicKey(), publicKeyOnly: true });
const full = (): VerifyReport => verifyAuditLog(dir, { key: readSecretFile(join(dir, 'audit.key')), publicKey: publicKey() });
const seg = (n = 1): string => join(dir, segmentFileName(n));

const isRecord = (l: string): boolean => l.startsWith('{"v":1,"seq":');
const isCheckpoint = (l: string): boolean => l.startsWith('{"v":1,"kind":"checkpoint",');
const seqOf = (l: string): number => (JSON.parse(l) as { seq: number }).seq;
const macOf = (l: string): string => (JSON.parse(l) as { mac: string }).mac;
const setPrev = (l: string, prev: string): string => l.replace(/"prev":"[0-9a-f]{64}"/, `"prev":"${prev}"`);
const setMac = (l: string, mac: string): string => l.replace(/"mac":"[0-9a-f]{64}"\}$/, `"mac":"${mac}"}`);
/** What an attacker without the key can put in a MAC field: a plain hash of the body. */
const plainMac = (l: string): string => createHash('sha256').update(l.slice(0, l.lastIndexOf(',"mac":"'))).digest('hex');

function resign(line: string, privateKey: KeyObject, edit: (body: string) => string = (b) => b): string {
  const body = edit(line.slice(0, line.lastIndexOf(',"sig":"')));
  return `${body},"sig":"${sign(null, Buffer.from(body), privateKey).toString('base64')}"}`;
}

function expectPassedButUnchecked(r: VerifyReport): void {
  expect(r.mode).toBe('public-key-only');
  expect(r.checksPassed).toBe(true);
  expect(r.ok).toBe(false);
  expect(r.integrity).toMatchObject({ ok: false, status: 'unchecked', problemCount: 0 });
  expect(r.integrity.unchecked).toMatch(/no HMAC key/);
}

describe('verifyAuditLog with the public key only', () => {
  it('passes a real log across rotated segments, and never calls that a full verification', async () => {
    await writeLog(200, { maxSegmentBytes: 8 * 1024 });
    const r = pkOnly();
    expectPassedButUnchecked(r);
    expect(r.segments.length).toBeGreaterThanOrEqual(4);
    expect(r.completeness).toMatchObject({ ok: true, problems: [] });
    expect(r.closed).toBe(true);
    expect(r.checkpoints).toBeGreaterThan(20);
    const f = full();
    expect(f).toMatchObject({ mode: 'full', ok: true, checksPassed: true, integrity: { status: 'verified', unchecked: null } });
  });

  it('must be asked for: no key without publicKeyOnly is an error, not a weaker check', async () => {
    await writeLog(3);
    const noKey = { publicKey: publicKey() } as unknown as VerifyOptions;
    expect(() => verifyAuditLog(dir, noKey)).toThrow(expect.objectContaining({ code: 'E_AUDIT_NO_KEY' }));
  });

  it('a wrong public key, or every checkpoint re-signed with another key: E_AUDIT_WRONG_PUBKEY naming both key ids', async () => {
    await writeLog(30);
    const other = generateKeyPairSync('ed25519').privateKey;
    const otherPk = publicKeyId(createPublicKey(other));
    expect(() => verifyAuditLog(dir, { publicKey: createPublicKey(other), publicKeyOnly: true })).toThrow(expect.objectContaining({ code: 'E_AUDIT_WRONG_PUBKEY' }));
    const forge = (l: string): string => (isCheckpoint(l) ? resign(l, other, (b) => b.replace(/"pk":"[0-9a-f]+"/, `"pk":"${otherPk}"`)) : l);
    writeLines(seg(), readLines(seg()).map(forge));
    writeLines(join(dir, CHECKPOINT_FILE), readLines(join(dir, CHECKPOINT_FILE)).map(forge));
    expect(() => pkOnly()).toThrow(expect.objectContaining({ code: 'E_AUDIT_WRONG_PUBKEY', message: expect.stringContaining(`they name key id ${otherPk}`) }));
  });

  it('a checkpoint forged and re-signed with another key is detected, in the log and in the checkpoint file', async () => {
    await writeLog(30);
    const other = generateKeyPairSync('ed25519').privateKey;
    const lines = readLines(seg());
    const i = lines.findIndex(isCheckpoint);
    const forgedHead = createHash('sha256').update('forged').digest('hex');
    lines[i] = resign(lines[i]!, other, (b) => b.replace(/"head":"[0-9a-f]{64}"/, `"head":"${forgedHead}"`));
    writeLines(seg(), lines);
    const r = pkOnly();
    expect(r.checksPassed).toBe(false);
    expect(r.integrity.status).toBe('failed');
    expect(r.integrity.firstBad).toMatchObject({ kind: 'modified', line: i + 1, message: expect.stringContaining('bad signature') });

    rmSync(dir, { recursive: true, force: true });
    dir = mkdtempSync(join(tmpdir(), 'captrap-audit-pk-'));
    await writeLog(30);
    const cpPath = join(dir, CHECKPOINT_FILE);
    const cps = readLines(cpPath);
    cps[cps.length - 1] = resign(cps[cps.length - 1]!, other);
    writeLines(cpPath, cps);
    const r2 = pkOnly();
    expect(r2.checksPassed).toBe(false);
    expect(r2.completeness.problems).toContainEqual(expect.objectContaining({ kind: 'checkpoint', file: CHECKPOINT_FILE, line: cps.length, message: expect.stringContaining('bad signature') }));
  });

  it('the record at a checkpoint with its MAC field replaced: the chain link and the signed head both break', async () => {
    await writeLog(30);
    const lines = readLines(seg());
    const cpAt = lines.findIndex(isCheckpoint);
    const cpSeq = seqOf(lines[cpAt]!);
    const r0 = lines.findIndex((l) => isRecord(l) && seqOf(l) === cpSeq);
    const edited = lines[r0]!.replace('"n":', '"n":1');
    lines[r0] = setMac(edited, plainMac(edited));
    writeLines(seg(), lines);
    const r = pkOnly();
    expect(r.checksPassed).toBe(false);
    expect(r.integrity.problems).toContainEqual(expect.objectContaining({ kind: 'modified', line: cpAt + 1, seq: cpSeq, message: expect.stringContaining('does not match the chain') }));

    // The attacker also re-links the next record to the new MAC: the signed head still pins the record.
    const next = lines.findIndex((l, k) => k > r0 && isRecord(l));
    lines[next] = setPrev(lines[next]!, macOf(lines[r0]!));
    writeLines(seg(), lines);
    const r2 = pkOnly();
    expect(r2.checksPassed).toBe(false);
    expect(r2.integrity.problems).toContainEqual(expect.objectContaining({ line: cpAt + 1, message: expect.stringContaining('does not match the chain') }));
    expect(r2.integrity.problems).toContainEqual(expect.objectContaining({ file: CHECKPOINT_FILE, seq: cpSeq, message: expect.stringContaining(`not the MAC of the log's record at seq ${cpSeq}`) }));
    expect(r2.integrity.problems.some((p) => p.message.includes('chain link broken'))).toBe(false);
  });

  it('a record MAC field edited between checkpoints: chain link broken at the next record', async () => {
    await writeLog(30);
    const lines = readLines(seg());
    const r0 = lines.findIndex((l) => isRecord(l) && seqOf(l) === 5);
    lines[r0] = setMac(lines[r0]!, plainMac(lines[r0]!));
    writeLines(seg(), lines);
    const r = pkOnly();
    expect(r.integrity.firstBad).toMatchObject({ kind: 'modified', seq: 6, message: expect.stringContaining('chain link broken') });
  });

  it('says what it cannot see: a record body edited with its MAC field left alone passes the public-key checks (and fails the full ones)', async () => {
    await writeLog(30);
    const lines = readLines(seg());
    const r0 = lines.findIndex((l) => isRecord(l) && seqOf(l) === 5);
    lines[r0] = lines[r0]!.replace('"principal":"agent-', '"principal":"agent-x');
    writeLines(seg(), lines);
    expectPassedButUnchecked(pkOnly());
    expect(full().integrity.firstBad).toMatchObject({ kind: 'modified', seq: 5 });
  });

  it('records deleted before a checkpoint: deleted and a gap', async () => {
    await writeLog(30);
    const lines = readLines(seg()).filter((l) => !(isRecord(l) && (seqOf(l) === 4 || seqOf(l) === 5)));
    writeLines(seg(), lines);
    const r = pkOnly();
    expect(r.integrity.firstBad).toMatchObject({ kind: 'deleted', seq: 6 });
    expect(r.completeness.problems).toContainEqual(expect.objectContaining({ kind: 'gap', message: 'records 4..5 missing' }));
  });

  it('records deleted and the rest renumbered and re-linked, in-log checkpoints stripped: the signed checkpoints still catch it', async () => {
    await writeLog(30);
    const recs = readLines(seg()).filter((l) => !isCheckpoint(l));
    const kept = recs.filter((l) => !(isRecord(l) && seqOf(l) === 4));
    let prev = '';
    let seq = 0;
    const rewritten = kept.map((l) => {
      if (!isRecord(l)) {
        prev = macOf(l);
        return l;
      }
      seq++;
      const out = setPrev(l.replace(/^\{"v":1,"seq":\d+,/, `{"v":1,"seq":${seq},`), prev);
      prev = macOf(l);
      return out;
    });
    writeLines(seg(), rewritten);
    const r = pkOnly();
    expect(r.checksPassed).toBe(false);
    // The chain as written holds: only the checkpoints know.
    expect(r.integrity.problems.some((p) => p.file === segmentFileName(1))).toBe(false);
    const firstCpAfter = readLines(join(dir, CHECKPOINT_FILE)).map(seqOf).find((s) => s >= 4)!;
    expect(r.integrity.firstBad).toMatchObject({ kind: 'modified', file: CHECKPOINT_FILE, seq: firstCpAfter, message: expect.stringContaining('renumbered') });
    expect(r.completeness.problems).toContainEqual(expect.objectContaining({ kind: 'truncated' }));
  });

  it('a truncated tail and a deleted last segment are reported against the signed checkpoint file', async () => {
    await writeLog(30);
    const lines = readLines(seg());
    const cut = lines.findIndex((l) => isRecord(l) && seqOf(l) === 25);
    writeLines(seg(), lines.slice(0, cut));
    const r = pkOnly();
    expect(r.checksPassed).toBe(false);
    expect(r.completeness.problems).toContainEqual(expect.objectContaining({ kind: 'truncated', message: expect.stringContaining('tail truncated') }));

    rmSync(dir, { recursive: true, force: true });
    dir = mkdtempSync(join(tmpdir(), 'captrap-audit-pk-'));
    await writeLog(200, { maxSegmentBytes: 8 * 1024 });
    const last = pkOnly().segments.at(-1)!;
    unlinkSync(seg(last));
    const r2 = pkOnly();
    expect(r2.checksPassed).toBe(false);
    expect(r2.completeness.problems.some((p) => p.kind === 'truncated')).toBe(true);
  });

  it('a middle segment deleted: the header chain and segment order catch it', async () => {
    await writeLog(200, { maxSegmentBytes: 8 * 1024 });
    unlinkSync(seg(2));
    const r = pkOnly();
    expect(r.integrity.firstBad).toMatchObject({ kind: 'deleted', segment: 3, line: 1 });
    expect(r.completeness.problems).toContainEqual(expect.objectContaining({ kind: 'segment', segment: 3, message: expect.stringContaining('segment(s) 2..2 missing') }));
  });
});
