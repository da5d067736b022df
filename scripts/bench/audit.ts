// Audit log throughput: events/s appended and flushed with the HMAC chain (flush every
// 100 ms, fsync per flush) next to writing the very same bytes with a plain write stream on
// the same cadence (no encoding, no chain) as the baseline; and verify throughput next to
// merely reading and splitting the same files.
import { createWriteStream, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { fdatasync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { AuditLog, verifyAuditLog } from '../../src/kernel/audit.js';
import { readEd25519PublicKey, readSecretFile } from '../../src/kernel/keys.js';
import type { AuditEvent } from '../../src/kernel/events.js';
import { type BenchRow, type BenchSection, sampleSync, latencyRow } from './harness.js';

const EVENTS = 400_000;
const BATCH = 1000;
const FLUSH_MS = 100;
const yieldToTimers = () => new Promise<void>((r) => setImmediate(r));

function event(i: number): AuditEvent {
  return {
    type: 'capability_validated',
    principal: `agent-${i & 15}`,
    capabilityId: `cap_${(i * 2654435761) >>> 0}`,
    process: { pid: 10_000 + (i & 1023), startTime: 123456 },
    details: { tool: 'read_file', path: '/workspace/src/index.ts', decision: 'allow' },
  };
}

/** Producers record in batches and yield, so the 100 ms flush timer runs as it would in the sidecar. */
async function chained(dir: string): Promise<{ seconds: number; bytes: number }> {
  const log = await AuditLog.open({ dir, flushIntervalMs: FLUSH_MS, flushEvents: Number.MAX_SAFE_INTEGER, maxSegmentBytes: 256 * 1024 * 1024 });
  const t0 = performance.now();
  for (let i = 0; i < EVENTS; i += BATCH) {
    for (let k = 0; k < BATCH; k++) log.record(event(i + k));
    await yieldToTimers();
  }
  await log.close();
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, bytes: log.stats().bytesWritten };
}

/** The same bytes, same batching, same 100 ms flush + fdatasync, through a plain write stream. */
async function raw(lines: string[], path: string): Promise<number> {
  const ws = createWriteStream(path, { flags: 'a' });
  await new Promise((r) => ws.once('open', r));
  const fd = (ws as unknown as { fd: number }).fd;
  const sync = promisify(fdatasync);
  let pending: string[] = [];
  const flush = async () => {
    if (pending.length === 0) return;
    const chunk = pending.join('');
    pending = [];
    if (!ws.write(chunk)) await new Promise<void>((r) => ws.once('drain', () => r()));
    await sync(fd);
  };
  let flushing: Promise<void> = Promise.resolve();
  const timer = setInterval(() => {
    flushing = flushing.then(flush);
  }, FLUSH_MS);
  const t0 = performance.now();
  for (let i = 0; i < lines.length; i += BATCH) {
    for (let k = i; k < Math.min(lines.length, i + BATCH); k++) pending.push(lines[k]!);
    await yieldToTimers();
  }
  clearInterval(timer);
  await flushing;
  await flush();
  await new Promise<void>((r) => ws.end(() => r()));
  return (performance.now() - t0) / 1000;
}

export async function bench(): Promise<BenchSection> {
  const root = mkdtempSync(join(tmpdir(), 'captrap-bench-audit-'));
  const rows: BenchRow[] = [];
  try {
    const dir = join(root, 'log');
    const c = await chained(dir);
    const segFiles = readdirSync(dir).filter((f) => f.startsWith('audit-0')).sort();
    const lines: string[] = [];
    for (const f of segFiles) {
      const text = readFileSync(join(dir, f), 'utf8');
      for (const l of text.split('\n')) if (l) lines.push(l + '\n');
    }
    const rawSeconds = await raw(lines, join(root, 'raw.jsonl'));
    const chainedRate = EVENTS / c.seconds;
    const rawRate = EVENTS / rawSeconds;
    rows.push({ name: 'write stream, same bytes, no chain (baseline)', opsPerSec: rawRate, note: `${lines.length} lines, ${(c.bytes / 2 ** 20).toFixed(1)} MiB, flush+fdatasync every ${FLUSH_MS} ms` });
    rows.push({
      name: 'audit log record()+flush, HMAC chain',
      opsPerSec: chainedRate,
      baseline: 'write stream, same bytes, no chain (baseline)',
      ratio: chainedRate / rawRate,
      target: '>= 200k events/s',
      pass: chainedRate >= 200_000,
      note: `${EVENTS} events incl. encode, HMAC-SHA256, Ed25519 checkpoint every 1000, flush every ${FLUSH_MS} ms with fdatasync, close`,
    });

    // record() alone: the cost a kernel decision pays on its hot path.
    const hot = await AuditLog.open({ dir: join(root, 'hot'), flushIntervalMs: FLUSH_MS, fsync: 'never' });
    let i = 0;
    const lat = sampleSync(() => hot.record(event(i++)), 50_000, 5_000);
    await hot.close();
    rows.push(latencyRow('record() hot path (sync part)', lat, { note: 'encode + HMAC + buffer; no I/O' }));

    // Verify: the same files, vs only reading and splitting them into lines.
    const key = readSecretFile(join(dir, 'audit.key'));
    const publicKey = readEd25519PublicKey(join(dir, 'audit-signing.pub'));
    let t0 = performance.now();
    let n = 0;
    for (const f of segFiles) {
      const buf = readFileSync(join(dir, f));
      for (let p = 0, e = buf.indexOf(0x0a); e >= 0; p = e + 1, e = buf.indexOf(0x0a, p)) n++;
    }
    const readRate = n / ((performance.now() - t0) / 1000);
    // Median of three runs: the first also pays for JIT warm-up, which a 400k-record log does not amortise fully.
    const rates: number[] = [];
    let report = verifyAuditLog(dir, { key, publicKey });
    for (let run = 0; run < 3; run++) {
      t0 = performance.now();
      report = verifyAuditLog(dir, { key, publicKey });
      rates.push(report.records / ((performance.now() - t0) / 1000));
    }
    if (!report.ok) throw new Error('bench: the log it wrote does not verify');
    const verifyRate = rates.sort((a, b) => a - b)[1]!;
    rows.push({ name: 'read + split lines (baseline)', opsPerSec: readRate });
    rows.push({
      name: 'verifyAuditLog',
      opsPerSec: verifyRate,
      baseline: 'read + split lines (baseline)',
      ratio: verifyRate / readRate,
      target: '>= 300k records/s',
      pass: verifyRate >= 300_000,
      note: `${report.records} records, ${report.checkpoints} checkpoint signatures checked; median of 3 runs after one warm-up`,
    });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return { section: 'audit', rows };
}
