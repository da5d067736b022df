import { createHash, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  AuditLog,
  CHECKPOINT_FILE,
  canonicalJson,
  encodeRecordBody,
  readAuditRecords,
  segmentFileName,
  verifyAuditLog,
  type AuditLogOptions,
  type VerifyReport,
} from '../../src/kernel/audit.js';
import { generateSecret, readEd25519PublicKey, readSecretFile } from '../../src/kernel/keys.js';
import type { AuditEvent } from '../../src/kernel/events.js';
import { event, indexOfSeq, readLines, writeLines } from './helpers.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'captrap-audit-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function generateTestKeys() {
  const { privateKey } = generateKeyPairSync('ed25519');
  return { key: generateSecret(), signingKey: privateKey, publicKey: createPublicKey(privateKey) };
}


/** Fresh log: seq 1 is audit_opened, seqs 2..n+1 the events, n+2 audit_closed. */
async function writeLog(n: number, opts: Partial<AuditLogOptions> = {}): Promise<AuditLog> {
  const log = await AuditLog.open({ dir, checkpointEvery: 10, flushIntervalMs: 5, ...opts });
  for (let i = 0; i < n; i++) log.record(event(i));
  await log.close();
  return log;
}

function keys() {
  return { key: readSecretFile(join(dir, 'audit.key')), publicKey: readEd25519PublicKey(join(dir, 'audit-signing.pub')) };
}

function verify(): VerifyReport {
  return verifyAuditLog(dir, keys());
}

function seg(n = 1): string {
  return join(dir, segmentFileName(n));
}

describe('audit log writer', () => {
  it('writes a chain that verifies, ends closed, and counts what it did', async () => {
    const log = await writeLog(40);
    const r = verify();
    expect(r.ok).toBe(true);
    expect(r.integrity.ok).toBe(true);
    expect(r.completeness.ok).toBe(true);
    expect(r.closed).toBe(true);
    expect(r.firstSeq).toBe(1);
    expect(r.lastSeq).toBe(42);
    const s = log.getAuditStats();
    expect(s.eventsLogged).toBe(42);
    expect(s.eventsFlushed).toBe(42);
    expect(s.bufferDepth).toBe(0);
    expect(s.segments).toBe(1);
    expect(s.bytesWritten).toBe(statSync(seg()).size);
    expect(s.lastFlushAt).not.toBeNull();
    expect(statSync(join(dir, 'audit.key')).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'audit-signing.key')).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'audit-signing.pub')).mode & 0o777).toBe(0o644);
    const recs = readAuditRecords(dir);
    expect(recs.map((x) => x.seq)).toEqual(Array.from({ length: 42 }, (_, i) => i + 1));
    expect(recs[5]).toMatchObject({ type: 'capability_granted', principal: 'agent-4', capabilityId: 'cap-4', process: { pid: 1004, startTime: 4242 }, details: { tool: 'read_file', n: 4 } });
  });

  it('encodes details canonically: key order does not change the bytes', () => {
    const a = encodeRecordBody(7, 'T', { type: 'access_denied', details: { b: 1, a: { d: [1, { y: 1, x: 2 }], c: 'z' } } }, '0'.repeat(64));
    const b = encodeRecordBody(7, 'T', { type: 'access_denied', details: { a: { c: 'z', d: [1, { x: 2, y: 1 }] }, b: 1 } }, '0'.repeat(64));
    expect(a).toBe(b);
    expect(canonicalJson({ z: undefined, a: new Date(0), n: NaN })).toBe('{"a":"1970-01-01T00:00:00.000Z","n":null}');
    const circ: Record<string, unknown> = { a: 1 };
    circ.self = circ;
    expect(canonicalJson(circ)).toBe('{"a":1,"self":"[circular]"}');
  });

  it('encodes exactly what JSON.stringify of the key-sorted value gives (strings with escapes, surrogates, toJSON, nesting)', () => {
    // JSON.stringify does every string and number; only the key order is ours (integer-like keys included).
    const sortedStringify = (v: unknown): string => {
      if (v !== null && typeof v === 'object' && typeof (v as { toJSON?: unknown }).toJSON === 'function') return sortedStringify((v as { toJSON: () => unknown }).toJSON());
      if (v === null || typeof v !== 'object') return JSON.stringify(v);
      if (Array.isArray(v)) return '[' + v.map((x) => sortedStringify(x)).join(',') + ']';
      const o = v as Record<string, unknown>;
      const keys = Object.keys(o).filter((k) => o[k] !== undefined).sort();
      return '{' + keys.map((k) => JSON.stringify(k) + ':' + sortedStringify(o[k])).join(',') + '}';
    };
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        expect(canonicalJson(v)).toBe(sortedStringify(v));
      }),
      { numRuns: 500 },
    );
    const odd = ['', 'a"b', 'back\\slash', 'tab\t', 'nul\u0000', 'lone \ud800 surrogate', 'pair \ud83d\ude00', 'x'.repeat(40) + '"', 'é ü 日本'];
    for (const s of odd) expect(canonicalJson({ [s]: s, z: [s] })).toBe(sortedStringify({ [s]: s, z: [s] }));
    // toJSON as an own key of a plain object, on a class instance, and on an array
    const arr = Object.assign([1, 2], { toJSON: () => 'arr' });
    expect(canonicalJson({ a: { toJSON: () => ({ y: 1, x: 2 }) }, b: new (class { toJSON() { return 'c'; } })(), c: arr })).toBe('{"a":{"x":2,"y":1},"b":"c","c":"arr"}');
  });

  it('record() never throws, even for details that cannot be serialised', async () => {
    const log = await AuditLog.open({ dir, flushIntervalMs: 5 });
    const bad = { get boom(): never { throw new Error('nope'); } };
    expect(() => log.record({ type: 'access_denied', details: bad as unknown as Record<string, unknown> })).not.toThrow();
    await log.close();
    expect(() => log.record(event(1))).not.toThrow();
    expect(log.stats().droppedAfterClose).toBe(1);
    const denied = readAuditRecords(dir, (r) => r.type === 'access_denied');
    expect(denied[0]!.details).toEqual({ unserialisable: 'nope' });
    expect(verify().ok).toBe(true);
  });

  it('shares one write among the flushes that wait on it (group commit): callers arriving during a sync do not each pay their own', async () => {
    // Every segment sync lets 5 more callers arrive (record, then wait for it to be durable)
    // while it is under way, as a burst of write-ahead tool calls does, up to 200 callers.
    const callers: Promise<void>[] = [];
    let syncs = 0;
    let log: AuditLog | undefined;
    // How many syncs a caller waited through: its write's, and the one under way when it came.
    let maxWaited = 0;
    const arrive = () => {
      if (!log || callers.length >= 200) return;
      log.record(event(callers.length));
      const at = syncs;
      callers.push(log.flush().then(() => void (maxWaited = Math.max(maxWaited, syncs - at))));
    };
    log = await AuditLog.open({
      dir,
      flushIntervalMs: 60_000,
      flushEvents: Number.MAX_SAFE_INTEGER,
      checkpointEvery: 1_000_000,
      ioHook: (op) => {
        if (op.op !== 'sync' || !op.file.startsWith('audit-')) return;
        syncs++;
        for (let k = 0; k < 5; k++) setImmediate(arrive);
      },
    });
    arrive();
    while (callers.length < 200) await new Promise((r) => setTimeout(r, 1));
    await Promise.all(callers);
    // Each flush resolved only once its own record was durable: everything is on disk, in one chain.
    expect(log.stats().eventsFlushed).toBe(log.stats().eventsLogged);
    // Without group commit every caller queues behind one sync per caller before it, and the
    // wait grows with the burst (about 20 syncs here); with it, no caller waits more than two.
    expect(maxWaited).toBeLessThanOrEqual(2);
    await log.close();
    expect(verify().ok).toBe(true);
  });

  it('keeps one gapless chain for many concurrent async producers', async () => {
    const log = await AuditLog.open({ dir, flushIntervalMs: 2, flushEvents: 64, checkpointEvery: 100 });
    const producers = 40;
    const each = 50;
    await Promise.all(
      Array.from({ length: producers }, async (_, p) => {
        for (let i = 0; i < each; i++) {
          log.record({ type: 'sandbox_started', principal: `p${p}`, details: { i } });
          if (i % 7 === 0) await new Promise((r) => setImmediate(r));
          else await Promise.resolve();
        }
      }),
    );
    await log.flush();
    expect(log.stats().bufferDepth).toBe(0);
    await log.close();
    const r = verify();
    expect(r.ok).toBe(true);
    const recs = readAuditRecords(dir, (x) => x.type === 'sandbox_started');
    expect(recs).toHaveLength(producers * each);
    const all = readAuditRecords(dir).map((x) => x.seq);
    expect(all).toEqual(Array.from({ length: all.length }, (_, i) => i + 1));
    for (let p = 0; p < producers; p++) {
      expect(recs.filter((x) => x.principal === `p${p}`).map((x) => (x.details as { i: number }).i)).toEqual(Array.from({ length: each }, (_, i) => i));
    }
  });

  it('rotates by size with headers that carry the chain across segments', async () => {
    const log = await writeLog(200, { maxSegmentBytes: 8 * 1024 });
    const files = readdirSync(dir).filter((f) => f.startsWith('audit-0'));
    expect(files.length).toBeGreaterThanOrEqual(4);
    expect(log.stats().segments).toBe(files.length);
    const h2 = JSON.parse(readLines(seg(2))[0]!) as { kind: string; segment: number; prevSeq: number; prev: string };
    expect(h2.kind).toBe('segment');
    expect(h2.segment).toBe(2);
    const s1 = readLines(seg(1)).filter((l) => l.startsWith('{"v":1,"seq":'));
    const lastOf1 = JSON.parse(s1[s1.length - 1]!) as { seq: number; mac: string };
    expect(h2.prevSeq).toBe(lastOf1.seq);
    expect(h2.prev).toBe(lastOf1.mac);
    expect(readAuditRecords(dir, (r) => r.type === 'audit_rotated').length).toBe(files.length - 1);
    expect(verify().ok).toBe(true);
  });

  it('keeps every segment within its size limit when records cross 1 MiB buffer chunks', async () => {
    // The size is counted per line: a line that opens a new buffer chunk once counted as a
    // negative size, and a 1 MiB limit produced 4 MiB segments. ~3.3 KiB records, 1 MiB
    // chunks, a 1.5 MiB limit: every segment is written across several chunk boundaries,
    // first in one synchronous burst (nothing flushed in between), then with flushes in between.
    const max = 1.5 * 1024 * 1024;
    const big = (i: number): AuditEvent => ({ ...event(i), details: { n: i, pad: 'x'.repeat(3200) } });
    const log = await AuditLog.open({ dir, flushIntervalMs: 60_000, maxSegmentBytes: max });
    for (let i = 0; i < 2000; i++) log.record(big(i));
    for (let i = 2000; i < 3000; i++) {
      log.record(big(i));
      if (i % 250 === 0) await log.flush();
    }
    await log.close();
    const files = readdirSync(dir).filter((f) => f.startsWith('audit-0')).sort();
    expect(files.length).toBeGreaterThanOrEqual(6); // ~10 MiB in 1.5 MiB segments
    for (const f of files.slice(0, -1)) {
      const lines = readLines(join(dir, f));
      const lastRecord = lines.findLastIndex((l) => l.startsWith('{"v":1,"seq":'));
      // Rotation happens before a record once the segment holds `max` bytes: everything before
      // the last record (and the checkpoints after it) was below the limit.
      const before = lines.slice(0, lastRecord).reduce((n, l) => n + Buffer.byteLength(l) + 1, 0);
      expect(before, f).toBeLessThan(max);
      expect(statSync(join(dir, f)).size, f).toBeLessThan(max + 8 * 1024);
    }
    expect(verify().ok).toBe(true);
  });

  it('rotates by age', async () => {
    const log = await AuditLog.open({ dir, flushIntervalMs: 5, maxSegmentAgeMs: 30 });
    log.record(event(1));
    await new Promise((r) => setTimeout(r, 80));
    log.record(event(2));
    await log.close();
    expect(log.stats().segments).toBeGreaterThanOrEqual(2);
    expect(readAuditRecords(dir, (r) => r.type === 'audit_rotated')[0]!.details).toMatchObject({ reason: 'age', fromSegment: 1, toSegment: 2 });
    expect(verify().ok).toBe(true);
  });

  it('deletes old segments under retention, logs it first, and still verifies', async () => {
    await writeLog(300, { maxSegmentBytes: 8 * 1024, retainSegments: 2 });
    const files = readdirSync(dir).filter((f) => f.startsWith('audit-0')).sort();
    expect(files).toHaveLength(2);
    expect(existsSync(seg(1))).toBe(false);
    const retention = readAuditRecords(dir, (r) => r.type === 'audit_rotated' && (r.details as { reason: string }).reason === 'retention');
    expect(retention.length).toBeGreaterThan(0);
    const r = verify();
    expect(r.completeness.problems).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.firstSeq).toBeGreaterThan(1);
  });

  it('continues an existing log on open: same chain, next seq', async () => {
    await writeLog(5);
    const log2 = await AuditLog.open({ dir, flushIntervalMs: 5 });
    log2.record(event(99));
    await log2.close();
    const recs = readAuditRecords(dir);
    expect(recs.map((r) => r.seq)).toEqual(Array.from({ length: recs.length }, (_, i) => i + 1));
    const opened = recs.filter((r) => r.type === 'audit_opened');
    expect(opened).toHaveLength(2);
    expect(opened[1]!.details).toMatchObject({ continued: true, fromSeq: 7 });
    expect(opened[1]!.seq).toBe(8);
    expect(verify().ok).toBe(true);
  });

  it('refuses to continue a log whose last record does not verify, or with another key', async () => {
    await writeLog(5);
    const lines = readLines(seg());
    const i = indexOfSeq(lines, 7);
    const saved = readFileSync(seg());
    lines[i] = lines[i]!.replace('"audit_closed"', '"audit_opened"');
    writeLines(seg(), lines);
    await expect(AuditLog.open({ dir })).rejects.toMatchObject({ code: 'E_AUDIT_TAMPERED' });
    writeFileSync(seg(), saved);
    await expect(AuditLog.open({ dir, key: generateSecret() })).rejects.toMatchObject({ code: 'E_AUDIT_WRONG_KEY' });
  });

  it('refuses a second writer on the same directory', async () => {
    const log = await AuditLog.open({ dir });
    await expect(AuditLog.open({ dir })).rejects.toMatchObject({ code: 'E_AUDIT_LOCKED' });
    await log.close();
  });

  it('reports a torn last line as torn (not tampering) and recovers from it on open', async () => {
    await writeLog(12);
    const torn = '{"v":1,"seq":15,"ts":"2026-01-01T00:00:00.000Z","type":"sandbox_exi';
    appendFileSync(seg(), torn);
    const r = verify();
    expect(r.torn).toMatchObject({ kind: 'torn', segment: 1, line: readLines(seg()).length + 1 });
    expect(r.integrity.ok).toBe(true);
    expect(r.completeness.ok).toBe(true);

    const log = await AuditLog.open({ dir, flushIntervalMs: 5 });
    log.record(event(1));
    await log.close();
    expect(readLines(seg()).every((l) => l.endsWith('}'))).toBe(true);
    expect(readLines(seg()).some((l) => l.startsWith(torn))).toBe(false);
    const opened = readAuditRecords(dir, (x) => x.type === 'audit_opened');
    const recovered = (opened[1]!.details as { recovered: { segment: number; tornBytes: number; tornSha256: string }[] }).recovered;
    expect(recovered[0]).toMatchObject({ segment: 1, tornBytes: Buffer.byteLength(torn), tornSha256: createHash('sha256').update(torn).digest('hex') });
    const after = verify();
    expect(after.torn).toBeNull();
    expect(after.ok).toBe(true);
  });

  it('replaces a first segment torn inside its header, but never a log that had checkpoints', async () => {
    writeFileSync(seg(), '{"v":1,"kind":"segment","segm');
    const log = await AuditLog.open({ dir, flushIntervalMs: 5 });
    await log.close();
    expect(readAuditRecords(dir)[0]!.details).toMatchObject({ created: true, recovered: [expect.objectContaining({ segment: 1, tornBytes: 29 }), { segment: 1, removedEmptySegment: true }] });
    expect(verify().ok).toBe(true);
    writeFileSync(seg(), '{"v":1,"kind":"segment","segm');
    await expect(AuditLog.open({ dir })).rejects.toMatchObject({ code: 'E_AUDIT_TAMPERED' });
  });

  it('repairs a checkpoint file left one checkpoint short by a crash between the two writes', async () => {
    await writeLog(12);
    const path = join(dir, CHECKPOINT_FILE);
    const cps = readLines(path);
    writeLines(path, cps.slice(0, -1));
    expect(verify().completeness.problems).toContainEqual(expect.objectContaining({ kind: 'checkpoint', message: expect.stringContaining('lacks the checkpoint') }));
    const log = await AuditLog.open({ dir });
    await log.close();
    expect(readLines(path).slice(0, cps.length)).toEqual(cps);
    expect(verify().ok).toBe(true);
  });

  it('continues after a crash: records before the crash stay verifiable, the unanchored tail is reported', async () => {
    // A writer seen before it closes (as after a crash): flushed records, no final checkpoint.
    // Checkpoints: seq 1 (open), seq 11 (ten records later).
    const log = await AuditLog.open({ dir, flushIntervalMs: 5, checkpointEvery: 10 });
    for (let i = 0; i < 15; i++) log.record(event(i));
    await log.flush();
    const r = verify();
    expect(r.integrity.ok).toBe(true);
    expect(r.completeness.unverifiedTail).toEqual({ fromSeq: 12, toSeq: 16, count: 5 });
    expect(r.completeness.problems[0]!.kind).toBe('unverifiable');
    expect(r.ok).toBe(false);
    await log.close();
    expect(verify().ok).toBe(true);
  });

  it('closes on SIGTERM through the helper, then re-raises the signal', async () => {
    const { closeAuditLogOnSignals } = await import('../../src/kernel/audit.js');
    const log = await AuditLog.open({ dir, flushIntervalMs: 10_000 });
    log.record(event(1));
    const uninstall = closeAuditLogOnSignals(log, ['SIGUSR2']);
    // Keep the re-raised signal from killing the test worker.
    const swallow = () => {};
    process.prependListener('SIGUSR2', swallow);
    try {
      process.kill(process.pid, 'SIGUSR2');
      await new Promise((r) => setTimeout(r, 100));
      expect(readAuditRecords(dir).map((x) => x.type)).toEqual(['audit_opened', 'capability_validated', 'audit_closed']);
      expect(verify().ok).toBe(true);
    } finally {
      uninstall();
      process.removeListener('SIGUSR2', swallow);
    }
  });

  it('flushes as soon as flushEvents are buffered, without waiting for the timer', async () => {
    const log = await AuditLog.open({ dir, flushIntervalMs: 60_000, flushEvents: 10 });
    for (let i = 0; i < 25; i++) log.record(event(i));
    for (let k = 0; k < 20 && log.stats().eventsFlushed < 20; k++) await new Promise((r) => setTimeout(r, 5));
    expect(log.stats().eventsFlushed).toBeGreaterThanOrEqual(20);
    expect(readAuditRecords(dir).length).toBeGreaterThanOrEqual(20);
    await log.close();
  });

  it('writes a checkpoint after checkpointIntervalMs even with few records', async () => {
    const log = await AuditLog.open({ dir, flushIntervalMs: 5, checkpointEvery: 1_000_000, checkpointIntervalMs: 20 });
    log.record(event(1));
    await new Promise((r) => setTimeout(r, 80));
    await log.flush();
    const cps = readLines(join(dir, CHECKPOINT_FILE)).map((l) => JSON.parse(l) as { seq: number; reason: string });
    expect(cps).toContainEqual(expect.objectContaining({ seq: 2, reason: 'interval' }));
    expect(verify().ok).toBe(true); // no unanchored tail while still open
    await log.close();
  });

  it('fails closed when a write fails: onError, rejected flushes, further events counted as dropped', async () => {
    const errors: Error[] = [];
    const log = await AuditLog.open({ dir, flushIntervalMs: 60_000, onError: (e) => errors.push(e) });
    await log.flush();
    mkdirSync(seg(2)); // the next segment's path is a directory: opening it for writing fails
    log.rotate();
    await expect(log.flush()).rejects.toMatchObject({ code: 'E_AUDIT_WRITE' });
    expect(errors).toHaveLength(1);
    log.record(event(1));
    expect(log.stats().droppedAfterFailure).toBe(1);
    expect(log.stats().failed).toMatch(/audit log write failed/);
    await expect(log.flush()).rejects.toMatchObject({ code: 'E_AUDIT_WRITE' });
    await expect(log.close()).rejects.toMatchObject({ code: 'E_AUDIT_WRITE' });
    expect(existsSync(join(dir, 'audit.lock'))).toBe(false);
  });

  it('getAuditStats works on any sink', async () => {
    const { getAuditStats } = await import('../../src/kernel/audit.js');
    const { MemoryAuditSink } = await import('../../src/kernel/events.js');
    expect(getAuditStats(new MemoryAuditSink())).toBeNull();
    const log = await AuditLog.open({ dir });
    log.record(event(1));
    expect(getAuditStats(log)).toMatchObject({ eventsLogged: 2, bufferDepth: 2, segments: 1 });
    await log.close();
  });

  it('uses keys passed in memory (no key files)', async () => {
    const k = generateTestKeys();
    const log = await AuditLog.open({ dir, key: k.key, signingKey: k.signingKey, flushIntervalMs: 5 });
    log.record(event(1));
    await log.close();
    expect(existsSync(join(dir, 'audit.key'))).toBe(false);
    expect(verifyAuditLog(dir, { key: k.key, publicKey: k.publicKey }).ok).toBe(true);
  });
});

describe('audit verify detects tampering and names the place', () => {
  it('streams a segment larger than its 4 MiB read buffer: verifies it whole, and names a record modified past the first chunk', async () => {
    const log = await AuditLog.open({ dir, flushIntervalMs: 5 });
    for (let i = 0; i < 2800; i++) log.record({ ...event(i), details: { n: i, pad: 'p'.repeat(3200) } });
    await log.close();
    expect(statSync(seg()).size).toBeGreaterThan(8 * 1024 * 1024);
    const before = verify();
    expect(before.ok).toBe(true);
    expect(before.records).toBe(2802);
    const lines = readLines(seg());
    const i = indexOfSeq(lines, 2000); // ~6.5 MiB in: read by the second chunk
    lines[i] = lines[i]!.replace('"n":1998', '"n":1999');
    writeLines(seg(), lines);
    const r = verify();
    expect(r.integrity.firstBad).toMatchObject({ kind: 'modified', seq: 2000, line: i + 1 });
    expect(r.integrity.problemCount).toBe(1);
  });

  it('one byte of a field edited: modified, at that line and seq', async () => {
    await writeLog(30);
    const lines = readLines(seg());
    const i = indexOfSeq(lines, 20);
    lines[i] = lines[i]!.replace('"agent-3"', '"agent-9"');
    writeLines(seg(), lines);
    const r = verify();
    expect(r.ok).toBe(false);
    expect(r.integrity.firstBad).toMatchObject({ kind: 'modified', segment: 1, line: i + 1, seq: 20 });
    expect(r.integrity.problemCount).toBe(1);
    expect(r.completeness.problems.filter((p) => p.kind === 'gap')).toEqual([]);
  });

  it('a record deleted in the middle: deleted, at the next record, and a gap', async () => {
    await writeLog(30);
    const lines = readLines(seg());
    const i = indexOfSeq(lines, 20);
    lines.splice(i, 1);
    writeLines(seg(), lines);
    const r = verify();
    expect(r.integrity.firstBad).toMatchObject({ kind: 'deleted', segment: 1, line: i + 1, seq: 21 });
    expect(r.completeness.ok).toBe(false);
    expect(r.completeness.problems).toContainEqual(expect.objectContaining({ kind: 'gap', seq: 20 }));
  });

  it('two records swapped: reordered', async () => {
    await writeLog(30);
    const lines = readLines(seg());
    const i = indexOfSeq(lines, 20);
    const j = indexOfSeq(lines, 21);
    [lines[i], lines[j]] = [lines[j]!, lines[i]!];
    writeLines(seg(), lines);
    const r = verify();
    expect(r.integrity.firstBad).toMatchObject({ kind: 'reordered', segment: 1, line: i + 1, seq: 21 });
    expect(r.completeness.problems.filter((p) => p.kind === 'gap')).toEqual([]);
  });

  it('a forged record with a recomputed plain hash but no key: inserted', async () => {
    await writeLog(30);
    const lines = readLines(seg());
    const i = indexOfSeq(lines, 20);
    const prev = (JSON.parse(lines[indexOfSeq(lines, 19)]!) as { mac: string }).mac;
    const body = encodeRecordBody(20, new Date().toISOString(), { type: 'capability_granted', principal: 'mallory', capabilityId: 'cap-root' }, prev);
    const forged = body + ',"mac":"' + createHash('sha256').update(body).digest('hex') + '"}';
    lines.splice(i, 0, forged);
    writeLines(seg(), lines);
    const r = verify();
    expect(r.integrity.firstBad).toMatchObject({ kind: 'inserted', segment: 1, line: i + 1, seq: 20 });
    expect(r.integrity.problemCount).toBe(1);
  });

  it('the tail truncated: completeness fails against the signed checkpoint file', async () => {
    await writeLog(30);
    const lines = readLines(seg());
    writeLines(seg(), lines.slice(0, indexOfSeq(lines, 25)));
    const r = verify();
    expect(r.integrity.ok).toBe(true);
    expect(r.completeness.ok).toBe(false);
    expect(r.completeness.problems).toContainEqual(expect.objectContaining({ kind: 'truncated', seq: 32 }));
  });

  it('the last segment deleted: detected', async () => {
    await writeLog(200, { maxSegmentBytes: 8 * 1024 });
    const n = readdirSync(dir).filter((f) => f.startsWith('audit-0')).length;
    unlinkSync(seg(n));
    const r = verify();
    expect(r.integrity.ok).toBe(true);
    expect(r.completeness.ok).toBe(false);
    expect(r.completeness.problems.some((p) => p.kind === 'truncated')).toBe(true);
  });

  it('the last segment deleted together with the checkpoint file lines after it: the rotation checkpoint still names it', async () => {
    await writeLog(200, { maxSegmentBytes: 8 * 1024 });
    const n = readdirSync(dir).filter((f) => f.startsWith('audit-0')).length;
    unlinkSync(seg(n));
    // An attacker who also trims the checkpoint file down to what the remaining segments hold.
    const cps = readLines(join(dir, CHECKPOINT_FILE)).filter((l) => (JSON.parse(l) as { segment: number }).segment < n);
    writeLines(join(dir, CHECKPOINT_FILE), cps);
    const r = verify();
    expect(r.completeness.problems).toContainEqual(expect.objectContaining({ kind: 'truncated', segment: n }));
  });

  it('a middle segment deleted: deleted at the next header, and the missing segment named', async () => {
    await writeLog(200, { maxSegmentBytes: 8 * 1024 });
    unlinkSync(seg(2));
    const r = verify();
    expect(r.integrity.firstBad).toMatchObject({ kind: 'deleted', segment: 3, line: 1 });
    expect(r.completeness.problems).toContainEqual(expect.objectContaining({ kind: 'segment', segment: 3, message: expect.stringContaining('segment(s) 2..2 missing') }));
    expect(r.completeness.problems.some((p) => p.kind === 'gap')).toBe(true);
  });

  it('a checkpoint replaced in the checkpoint file: named by line', async () => {
    await writeLog(30);
    const path = join(dir, CHECKPOINT_FILE);
    const cps = readLines(path);
    const cp = JSON.parse(cps[1]!) as { head: string };
    cps[1] = cps[1]!.replace(cp.head, createHash('sha256').update('forged').digest('hex'));
    writeLines(path, cps);
    const r = verify();
    expect(r.integrity.ok).toBe(true);
    expect(r.completeness.problems).toContainEqual(expect.objectContaining({ kind: 'checkpoint', file: CHECKPOINT_FILE, line: 2 }));

    // Replaced by an older, validly signed checkpoint: out of order, and the log's checkpoint is missing from the file.
    cps[1] = cps[0]!;
    writeLines(path, cps);
    const r2 = verify();
    expect(r2.completeness.problems.some((p) => p.kind === 'checkpoint' && p.line === 2)).toBe(false);
    expect(r2.completeness.problems).toContainEqual(expect.objectContaining({ kind: 'checkpoint', message: expect.stringContaining('lacks the checkpoint') }));
  });

  it('an in-log checkpoint edited: modified at its line', async () => {
    await writeLog(30);
    const lines = readLines(seg());
    const i = lines.findIndex((l, k) => k > 3 && l.includes('"kind":"checkpoint"'));
    lines[i] = lines[i]!.replace('"reason":"interval"', '"reason":"rotate"');
    writeLines(seg(), lines);
    const r = verify();
    expect(r.integrity.firstBad).toMatchObject({ kind: 'modified', segment: 1, line: i + 1 });
  });

  it('a wrong key and a non-log directory are errors, not reports', async () => {
    await writeLog(3);
    expect(() => verifyAuditLog(dir, { ...keys(), key: generateSecret() })).toThrow(expect.objectContaining({ code: 'E_AUDIT_WRONG_KEY' }));
    expect(() => verifyAuditLog(dir, { ...keys(), publicKey: generateTestKeys().publicKey })).toThrow(expect.objectContaining({ code: 'E_AUDIT_WRONG_PUBKEY' }));
    expect(() => verifyAuditLog(join(dir, 'nope'), keys())).toThrow(expect.objectContaining({ code: 'E_AUDIT_NO_DIR' }));
    expect(() => verifyAuditLog(seg(), keys())).toThrow(expect.objectContaining({ code: 'E_AUDIT_NOT_A_LOG' }));
    const junk = mkdtempSync(join(tmpdir(), 'captrap-audit-junk-'));
    try {
      writeFileSync(join(junk, segmentFileName(1)), 'hello\nworld\n');
      expect(() => verifyAuditLog(junk, keys())).toThrow(expect.objectContaining({ code: 'E_AUDIT_NOT_A_LOG' }));
    } finally {
      rmSync(junk, { recursive: true, force: true });
    }
  });
});

describe('AuditMac', () => {
  it('computes exactly HMAC-SHA256 for short, long and non-ASCII input, and long keys', async () => {
    const { AuditMac, ChunkPool, LineBuffer, macHex } = await import('../../src/kernel/audit.js');
    for (const key of [generateSecret(32), generateSecret(100)]) {
      const m = new AuditMac(key);
      for (const body of ['', 'a', 'é😀 ünïcode', 'x'.repeat(70_000), '{"v":1}'.repeat(3000)]) {
        expect(m.ofString(body)).toBe(macHex(key, body));
        const buf = Buffer.from('##' + body + '##');
        expect(m.ofBytes(buf, 2, buf.length - 2)).toBe(macHex(key, Buffer.from(body)));
        const out = new LineBuffer(new ChunkPool(1024));
        out.appendString('first\n');
        const mac = m.sealInto(out, body);
        expect(mac).toBe(macHex(key, body));
        expect(Buffer.concat(out.take().views).toString('utf8')).toBe(`first\n${body},"mac":"${mac}"}\n`);
      }
    }
  });
});
