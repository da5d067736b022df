// Parallel verify (record MACs on a worker thread) must give exactly the sequential report:
// for a healthy log straight from the fast path, for a damaged one by falling back.
import { execFile } from 'node:child_process';
import { createHash, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { appendFileSync, mkdtempSync, readdirSync, rmSync, unlinkSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog, encodeRecordBody, segmentFileName, type AuditLogOptions } from '../../src/kernel/audit.js';
import { PARALLEL_VERIFY_MIN_BYTES, verifyAuditLog, verifyAuditLogFastPath } from '../../src/kernel/audit-verify.js';
import type { MacOffloadOptions } from '../../src/kernel/audit-verify-parallel.js';
import { generateSecret, readEd25519PublicKey, readSecretFile } from '../../src/kernel/keys.js';
import type { AuditEvent } from '../../src/kernel/events.js';
import { event, indexOfSeq, readLines, writeLines } from './helpers.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'captrap-verify-par-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));


/** seq 1 is audit_opened, seqs 2..n+1 the events, then rotations and audit_closed. */
async function writeLog(n: number, opts: Partial<AuditLogOptions> = {}): Promise<void> {
  const log = await AuditLog.open({ dir, checkpointEvery: 10, flushIntervalMs: 5, maxSegmentBytes: 16 * 1024, ...opts });
  for (let i = 0; i < n; i++) log.record(event(i));
  await log.close();
}

function keys() {
  return { key: readSecretFile(join(dir, 'audit.key')), publicKey: readEd25519PublicKey(join(dir, 'audit-signing.pub')) };
}

const seg = (n: number) => join(dir, segmentFileName(n));
const segments = () => readdirSync(dir).filter((f) => f.startsWith('audit-0')).length;

/** Lines that carry a MAC (records and segment headers) in every segment. */
function macLines(): number {
  let n = 0;
  for (let s = 1; s <= segments(); s++) n += readLines(seg(s)).filter((l) => !l.includes('"kind":"checkpoint"')).length;
  return n;
}

// Small slots so that a test log spans many of them and every hand-over path runs.
const TUNINGS: Record<string, MacOffloadOptions> = {
  shared: { slotBytes: 4096 },
  'worker only': { slotBytes: 4096, helpAtBacklog: Infinity, noSteal: true },
  'main only': { slotBytes: 4096, helpAtBacklog: 0 },
  'three small slots': { slotBytes: 2048, slots: 3 },
};

describe('parallel verify of a healthy log', () => {
  it('gives the sequential report, deep-equal, on a multi-segment log, with the MACs checked by the worker', async () => {
    await writeLog(600);
    expect(segments()).toBeGreaterThanOrEqual(5);
    const sequential = verifyAuditLog(dir, keys());
    expect(sequential.ok).toBe(true);
    expect(verifyAuditLog(dir, { ...keys(), parallel: { minBytes: 0 } })).toEqual(sequential);
    for (const [name, tuning] of Object.entries(TUNINGS)) {
      const fast = verifyAuditLogFastPath(dir, keys(), tuning);
      if (!('report' in fast)) throw new Error(`${name}: fast path abandoned: ${fast.abandoned}`);
      expect(fast.report, name).toEqual(sequential);
      // Shared tunings split the work by timing (a small log may be done before the worker starts).
      if (name === 'worker only') expect(fast.workerLines).toBe(macLines());
      else if (name === 'main only') expect(fast.workerLines).toBe(0);
      else expect(fast.workerLines, name).toBeLessThanOrEqual(macLines());
    }
  });

  it('is used by default only above minBytes, and never without the key', async () => {
    await writeLog(50);
    const k = keys();
    // Nothing to observe but the report: it must be the same whichever path ran.
    expect(verifyAuditLog(dir, { ...k, parallel: true })).toEqual(verifyAuditLog(dir, k));
    const unkeyed = verifyAuditLog(dir, { publicKey: k.publicKey, publicKeyOnly: true });
    expect(unkeyed.mode).toBe('public-key-only');
  });
});

/** Each case damages the log written by `writeLog(200)` (several segments). */
const DAMAGE: { name: string; macsBroken: boolean; damage: () => void }[] = [
  {
    name: 'one record modified',
    macsBroken: true,
    damage: () => {
      const lines = readLines(seg(2));
      const i = lines.findIndex((l) => l.includes('"agent-'));
      lines[i] = lines[i]!.replace('"agent-', '"agent-x');
      writeLines(seg(2), lines);
    },
  },
  {
    name: 'one record inserted (forged with a plain hash)',
    macsBroken: true,
    damage: () => {
      const lines = readLines(seg(1));
      const i = indexOfSeq(lines, 20);
      const prev = (JSON.parse(lines[indexOfSeq(lines, 19)]!) as { mac: string }).mac;
      const body = encodeRecordBody(20, new Date().toISOString(), { type: 'capability_granted', principal: 'mallory' }, prev);
      lines.splice(i, 0, body + ',"mac":"' + createHash('sha256').update(body).digest('hex') + '"}');
      writeLines(seg(1), lines);
    },
  },
  {
    name: 'one record deleted',
    macsBroken: false,
    damage: () => {
      const lines = readLines(seg(1));
      lines.splice(indexOfSeq(lines, 30), 1);
      writeLines(seg(1), lines);
    },
  },
  {
    name: 'one modified, one inserted, one deleted',
    macsBroken: true,
    damage: () => {
      const lines = readLines(seg(1));
      lines.splice(indexOfSeq(lines, 30), 1);
      const i = indexOfSeq(lines, 20);
      lines[i] = lines[i]!.replace('"read_file"', '"rm_rf"');
      const prev = (JSON.parse(lines[indexOfSeq(lines, 9)]!) as { mac: string }).mac;
      const body = encodeRecordBody(10, new Date().toISOString(), { type: 'capability_granted', principal: 'mallory' }, prev);
      lines.splice(indexOfSeq(lines, 10), 0, body + ',"mac":"' + 'f'.repeat(64) + '"}');
      writeLines(seg(1), lines);
    },
  },
  {
    name: 'two records swapped',
    macsBroken: false,
    damage: () => {
      const lines = readLines(seg(1));
      const i = indexOfSeq(lines, 20);
      const j = indexOfSeq(lines, 21);
      [lines[i], lines[j]] = [lines[j]!, lines[i]!];
      writeLines(seg(1), lines);
    },
  },
  { name: 'a middle segment deleted', macsBroken: false, damage: () => unlinkSync(seg(2)) },
  { name: 'the last segment deleted', macsBroken: false, damage: () => unlinkSync(seg(segments())) },
  {
    name: 'an in-log checkpoint edited',
    macsBroken: false,
    damage: () => {
      const lines = readLines(seg(1));
      const i = lines.findIndex((l, k) => k > 3 && l.includes('"kind":"checkpoint"'));
      lines[i] = lines[i]!.replace('"reason":"interval"', '"reason":"rotate"');
      writeLines(seg(1), lines);
    },
  },
  {
    name: 'a torn last line',
    macsBroken: false,
    damage: () => appendFileSync(seg(segments()), '{"v":1,"seq":9999,"ts":"2026'),
  },
  {
    name: 'a line that is not an audit record',
    macsBroken: false,
    damage: () => {
      const lines = readLines(seg(1));
      lines.splice(5, 0, 'hello');
      writeLines(seg(1), lines);
    },
  },
];

describe('parallel verify of a damaged log gives exactly the sequential report', () => {
  for (const c of DAMAGE) {
    it(c.name, async () => {
      await writeLog(200);
      c.damage();
      const sequential = verifyAuditLog(dir, keys());
      expect(sequential.ok && sequential.torn === null).toBe(false);
      expect(verifyAuditLog(dir, { ...keys(), parallel: { minBytes: 0 } })).toEqual(sequential);
      for (const [name, tuning] of Object.entries(TUNINGS)) {
        const fast = verifyAuditLogFastPath(dir, keys(), tuning);
        if (c.macsBroken) {
          // A bad MAC is never judged by the fast path: the sequential pass says what it means.
          expect(fast, name).toEqual({ abandoned: 'a record MAC does not match' });
        } else {
          if (!('report' in fast)) throw new Error(`${name}: fast path abandoned: ${fast.abandoned}`);
          expect(fast.report, name).toEqual(sequential);
        }
      }
    });
  }

  it('a wrong key or public key: the same errors as the sequential verify', async () => {
    await writeLog(50);
    const wrongKey = { ...keys(), key: generateSecret(), parallel: { minBytes: 0 } };
    expect(() => verifyAuditLog(dir, wrongKey)).toThrow(expect.objectContaining({ code: 'E_AUDIT_WRONG_KEY' }));
    const otherPublicKey = createPublicKey(generateKeyPairSync('ed25519').privateKey);
    expect(() => verifyAuditLog(dir, { ...keys(), publicKey: otherPublicKey, parallel: { minBytes: 0 } })).toThrow(expect.objectContaining({ code: 'E_AUDIT_WRONG_PUBKEY' }));
  });

  it('a line longer than a slot: the fast path gives up, the sequential verify reads it', async () => {
    await writeLog(20, { maxSegmentBytes: 1024 * 1024 });
    const lines = readLines(seg(1));
    lines.splice(3, 0, 'x'.repeat(10_000));
    writeLines(seg(1), lines);
    const fast = verifyAuditLogFastPath(dir, keys(), { slotBytes: 4096 });
    expect(fast).toEqual({ abandoned: 'a line longer than 4096 bytes' });
    expect(verifyAuditLog(dir, { ...keys(), parallel: { minBytes: 0 } })).toEqual(verifyAuditLog(dir, keys()));
  });
});

describe('parallel verify fails closed', () => {
  it('a worker that crashes or stalls never yields a report', async () => {
    await writeLog(200);
    const k = keys();
    for (const faultAfterSlots of [0, 3]) {
      expect(verifyAuditLogFastPath(dir, k, { slotBytes: 4096, helpAtBacklog: Infinity, noSteal: true, faultAfterSlots })).toEqual({ abandoned: 'the MAC worker failed' });
    }
    const stalled = verifyAuditLogFastPath(dir, k, { slotBytes: 4096, slots: 3, helpAtBacklog: Infinity, noSteal: true, stallMs: 1 });
    expect(stalled).toEqual({ abandoned: 'the MAC worker finished nothing for 1 ms' });
  });

  it('leaves no thread behind', async () => {
    await writeLog(200);
    await readFile(seg(1)); // the libuv pool starts on first use: let it, before counting threads
    const threads = () => readdirSync('/proc/self/task').length;
    const before = threads();
    const k = keys();
    for (let i = 0; i < 5; i++) {
      expect('report' in verifyAuditLogFastPath(dir, k, { slotBytes: 4096 })).toBe(true);
      verifyAuditLogFastPath(dir, k, { slotBytes: 4096, faultAfterSlots: 1, helpAtBacklog: Infinity, noSteal: true });
    }
    // Terminated workers are joined on the event loop: give it a moment.
    const deadline = Date.now() + 5000;
    while (threads() > before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(threads()).toBeLessThanOrEqual(before);
  });
});

describe('captrap audit verify (the CLI, from the TypeScript sources)', () => {
  it('verifies a log above the parallel threshold, and names a modified record in it', async () => {
    // ~400-byte records: enough of them to pass the threshold, in 8 MiB segments.
    const log = await AuditLog.open({ dir, flushIntervalMs: 50, maxSegmentBytes: 8 * 1024 * 1024 });
    for (let i = 0; log.stats().bytesWritten < PARALLEL_VERIFY_MIN_BYTES + 1024 * 1024; i++) {
      log.record({ ...event(i), details: { tool: 'read_file', n: i, path: '/workspace/' + 'p'.repeat(200) } });
      if (i % 5000 === 0) await log.flush();
    }
    await log.close();
    const cli = (d: string) =>
      promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/runner/cli.ts', 'audit', 'verify', d, '--json'], { cwd: process.cwd(), maxBuffer: 1 << 24 }).then(
        (r) => ({ code: 0, out: r.stdout }),
        (e: { code: number; stdout: string }) => ({ code: e.code, out: e.stdout }),
      );
    const good = await cli(dir);
    expect(good.code).toBe(0);
    expect(JSON.parse(good.out)).toEqual(JSON.parse(JSON.stringify(verifyAuditLog(dir, keys()))));

    const lines = readLines(seg(2));
    const i = indexOfSeq(lines, (JSON.parse(lines[1]!) as { seq: number }).seq + 1000);
    lines[i] = lines[i]!.replace('"read_file"', '"rm_rf"');
    writeLines(seg(2), lines);
    const bad = await cli(dir);
    expect(bad.code).toBe(1);
    const report = JSON.parse(bad.out) as ReturnType<typeof verifyAuditLog>;
    expect(report.integrity.firstBad).toMatchObject({ kind: 'modified', segment: 2, line: i + 1 });
    expect(report).toEqual(JSON.parse(JSON.stringify(verifyAuditLog(dir, keys()))));
  });
});
