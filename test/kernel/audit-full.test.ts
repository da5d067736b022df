// The audit log when its disk fills up or its writes fail: it becomes unavailable (and says so),
// keeps what it could not write in a bounded buffer, retries with backoff, and resumes with an
// `audit_resumed` record; drops beyond the bound are counted in `audit_gap` records. Whatever
// happens, what is on disk is a chain `verify` accepts: never a partial batch, never a broken link.
// Real filesystem throughout: a real 1 MiB tmpfs filled to ENOSPC, and injected faults (short
// writes, failed fsyncs and truncates) through the log's ioHook.
import { execFileSync } from 'node:child_process';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  AuditLog,
  AuditUnavailableError,
  CHECKPOINT_FILE,
  readAuditRecords,
  segmentFileName,
  verifyAuditLog,
  type AuditLogOptions,
  type AuditOutageReport,
  type AuditRecord,
  type VerifyReport,
} from '../../src/kernel/audit.js';
import { AUDIT_EVENT_TYPES, type AuditEvent } from '../../src/kernel/events.js';
import { generateSecret } from '../../src/kernel/keys.js';

const { privateKey: signingKey } = generateKeyPairSync('ed25519');
const publicKey = createPublicKey(signingKey);
const key = generateSecret();

function event(i: number): AuditEvent {
  return { type: 'access_denied', principal: `agent-${i % 7}`, capabilityId: `cap-${i}`, details: { tool: 'read_file', reason: 'E_PATH', n: i, pad: 'x'.repeat(120) } };
}

function verify(dir: string): VerifyReport {
  return verifyAuditLog(dir, { key, publicKey });
}

/** Every segment and the checkpoint file end on a complete line. */
function expectWholeLines(dir: string): void {
  for (const name of readdirSync(dir).filter((n) => n.endsWith('.jsonl'))) {
    const buf = readFileSync(join(dir, name));
    if (buf.length > 0) expect(buf[buf.length - 1], `${name} ends with a newline`).toBe(0x0a);
  }
}

/** Our events (cap-N) in the log: each exactly once, in order. */
function expectEventsOnce(records: AuditRecord[], expected: number[]): void {
  const ns = records.filter((r) => r.type === 'access_denied').map((r) => Number(r.capabilityId!.slice(4)));
  expect(ns).toEqual(expected);
}

function expectGapless(records: AuditRecord[]): void {
  records.forEach((r, i) => expect(r.seq).toBe(records[0]!.seq + i));
}

function waitFor<T>(log: AuditLog, ev: 'available', ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no '${ev}' event within ${ms} ms (stats: ${JSON.stringify(log.stats())})`)), ms);
    log.once(ev, (info: AuditOutageReport) => {
      clearTimeout(t);
      resolve(info as T);
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

it('declares the availability event types (verify and `audit show --type` know them)', () => {
  for (const t of ['audit_unavailable', 'audit_gap', 'audit_resumed']) expect(AUDIT_EVENT_TYPES).toContain(t);
});

// ---- a real full disk ----------------------------------------------------------------------

const MNT = mkdtempSync(join(tmpdir(), 'captrap-audit-full-'));
let mounted = false;
try {
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', MNT], { stdio: 'pipe' });
  mounted = true;
} catch (err) {
  const why = ((err as { stderr?: Buffer }).stderr?.toString().trim() || (err as Error).message).split('\n')[0];
  console.warn(`audit-full.test.ts: tmpfs tests SKIPPED: cannot mount a 1 MiB tmpfs on ${MNT} (${why}); needs root (CAP_SYS_ADMIN)`);
}
afterAll(() => {
  if (mounted) {
    try {
      execFileSync('umount', [MNT], { stdio: 'pipe' });
    } catch {
      execFileSync('umount', ['-l', MNT], { stdio: 'pipe' }); // a failed test left a file open: detach anyway
    }
  }
  rmSync(MNT, { recursive: true, force: true });
});

/** Fills the tmpfs with a file of its own; deleting it frees the space again. */
function fill(path: string): number {
  const fd = openSync(path, 'w');
  const big = Buffer.alloc(64 * 1024, 0x2e);
  let total = 0;
  try {
    for (const chunk of [big, big.subarray(0, 512)]) {
      for (;;) {
        try {
          total += writeSync(fd, chunk);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw err;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return total;
}

describe.skipIf(!mounted)('on a real 1 MiB tmpfs filled to ENOSPC', () => {
  let dir: string;
  const filler = join(MNT, 'filler');
  beforeEach(() => {
    dir = join(MNT, `log-${Date.now()}`);
  });
  const opened: AuditLog[] = [];
  afterEach(async () => {
    rmSync(filler, { force: true });
    // A test that failed half-way leaves its log open: close it (whatever it reports) so the tmpfs can be unmounted.
    for (const log of opened.splice(0)) await log.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  });
  async function openLog(o: AuditLogOptions): Promise<AuditLog> {
    const log = await AuditLog.open(o);
    opened.push(log);
    return log;
  }

  const options = (extra: Partial<AuditLogOptions> = {}): AuditLogOptions => ({
    dir,
    key,
    signingKey,
    flushIntervalMs: 20,
    maxSegmentBytes: 16 * 1024,
    checkpointEvery: 100,
    retryInitialMs: 20,
    retryMaxMs: 200,
    ...extra,
  });

  /** Records events (flushing as it goes) until the log reports itself unavailable; returns how many it recorded. */
  async function recordUntilUnavailable(log: AuditLog, from: number): Promise<{ n: number; err: unknown }> {
    let n = from;
    for (let round = 0; round < 200; round++) {
      for (let k = 0; k < 20; k++) log.record(event(n++));
      const err = await log.flush().then(
        () => null,
        (e: unknown) => e,
      );
      if (err) return { n, err };
    }
    throw new Error(`still available after ${n} events: ${JSON.stringify(log.stats())}`);
  }

  it('ENOSPC: unavailable (event, stats, typed flush error), whole lines on disk; space freed: resumes, audit_resumed, verify passes', async () => {
    const unavailable: AuditUnavailableError[] = [];
    const errors: Error[] = [];
    const log = await openLog(options({ onError: (e) => errors.push(e) }));
    log.on('unavailable', (e) => unavailable.push(e));
    await log.flush();
    expect(log.available).toBe(true);
    expect(log.stats()).toMatchObject({ available: true, unavailableSince: null, droppedRecords: 0, failedWrites: 0, lastError: null });

    fill(filler);
    const { n: recorded, err } = await recordUntilUnavailable(log, 0);
    expect(err).toBeInstanceOf(AuditUnavailableError);
    expect(err).toMatchObject({ code: 'E_AUDIT_UNAVAILABLE' });
    expect((err as Error).message).toContain(dir);
    expect((err as Error).message).toMatch(/ENOSPC/);
    expect(log.available).toBe(false);
    expect(unavailable).toHaveLength(1);
    expect(unavailable[0]!.code).toBe('E_AUDIT_UNAVAILABLE');
    expect(errors).toHaveLength(1); // onError still hears of it
    expect(() => log.assertAvailable()).toThrow(AuditUnavailableError);
    await expect(log.flush()).rejects.toMatchObject({ code: 'E_AUDIT_UNAVAILABLE' });
    const down = log.stats();
    expect(down.available).toBe(false);
    expect(down.unavailableSince).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(down.failedWrites).toBeGreaterThanOrEqual(1);
    expect(down.lastError).toMatch(/ENOSPC/);
    expect(down.bufferDepth).toBeGreaterThan(0);
    expect(down.failed).toBeNull(); // an outage, not the end

    // What reached the disk before the failure is a clean chain: no partial batch was left behind.
    expectWholeLines(dir);
    const mid = verify(dir);
    expect(mid.integrity.ok).toBe(true);
    expect(mid.torn).toBeNull();

    // Records keep being accepted (buffered) and the log keeps retrying in the background.
    for (let i = recorded; i < recorded + 50; i++) log.record(event(i));
    await sleep(150);
    expect(log.stats().failedWrites).toBeGreaterThan(down.failedWrites);
    expect(log.available).toBe(false);
    expect(unavailable).toHaveLength(1); // one outage, one event

    const back = waitFor<AuditOutageReport>(log, 'available', 3000);
    unlinkSync(filler);
    const report = await back;
    expect(log.available).toBe(true);
    expect(log.stats()).toMatchObject({ available: true, unavailableSince: null, outages: 1, droppedRecords: 0 });
    expect(report.failedWrites).toBeGreaterThanOrEqual(2);
    expect(report.bufferedRecords).toBeGreaterThanOrEqual(50);
    expect(report.lastError).toMatch(/ENOSPC/);
    await log.flush();

    const records = readAuditRecords(dir);
    expectGapless(records);
    expectEventsOnce(records, Array.from({ length: recorded + 50 }, (_, i) => i));
    const types = records.map((r) => r.type);
    const down1 = types.indexOf('audit_unavailable');
    const up1 = types.indexOf('audit_resumed');
    expect(down1).toBeGreaterThan(0);
    expect(up1).toBeGreaterThan(down1);
    expect(records[down1]!.details).toMatchObject({ code: 'ENOSPC', since: down.unavailableSince });
    expect(records[up1]!.details).toMatchObject({ since: down.unavailableSince, droppedRecords: 0, bufferedRecords: report.bufferedRecords });
    expect(records[up1]!.details!.downMs as number).toBeGreaterThan(0);
    // The resume is anchored by a checkpoint at once: the whole log verifies while still open.
    const open = verify(dir);
    expect(open.ok, JSON.stringify(open.completeness.problems)).toBe(true);

    log.record(event(recorded + 50));
    await log.close();
    const final = verify(dir);
    expect(final.ok, JSON.stringify([final.integrity.problems, final.completeness.problems])).toBe(true);
    expect(final.closed).toBe(true);
    expect(final.torn).toBeNull();
  });

  it('beyond maxBufferedRecords: drops are counted in stats, audit_gap and audit_resumed; verify passes (the gap is explicit)', async () => {
    const log = await openLog(options({ maxBufferedRecords: 300 }));
    await log.flush();
    fill(filler);
    let { n } = await recordUntilUnavailable(log, 0);
    for (let k = 0; k < 1000; k++) log.record(event(n++));
    const down = log.stats();
    expect(down.bufferDepth).toBeLessThanOrEqual(300 + 5); // + the log's own records
    expect(down.droppedRecords).toBeGreaterThanOrEqual(700);
    await expect(log.flush()).rejects.toMatchObject({ code: 'E_AUDIT_UNAVAILABLE' });

    const back = waitFor<AuditOutageReport>(log, 'available', 3000);
    unlinkSync(filler);
    const report = await back;
    const dropped = log.stats().droppedRecords;
    expect(dropped).toBe(down.droppedRecords);
    expect(report.droppedRecords).toBe(dropped);
    await log.close();

    const records = readAuditRecords(dir);
    expectGapless(records);
    const written = records.filter((r) => r.type === 'access_denied').length;
    expect(written + dropped).toBe(n); // every event is either on disk or counted
    const gaps = records.filter((r) => r.type === 'audit_gap');
    expect(gaps.length).toBeGreaterThanOrEqual(1);
    expect(gaps.reduce((s, g) => s + (g.details!.dropped as number), 0)).toBe(dropped);
    expect(gaps[0]!.details).toMatchObject({ reason: 'buffer_full', maxBufferedRecords: 300, byType: { access_denied: dropped } });
    const resumed = records.find((r) => r.type === 'audit_resumed')!;
    expect(resumed.details).toMatchObject({ droppedRecords: dropped });
    // The gap record sits where the records are missing: after the last buffered one, before the resume.
    expect(records.indexOf(gaps[0]!)).toBeLessThan(records.indexOf(resumed));
    const closed = records[records.length - 1]!;
    expect(closed.type).toBe('audit_closed');
    expect(closed.details).toMatchObject({ droppedRecords: dropped });
    const r = verify(dir);
    expect(r.ok, JSON.stringify([r.integrity.problems, r.completeness.problems])).toBe(true);
    expect(r.closed).toBe(true);
  });

  it('close() while the disk is still full: tries once more, closes, reports what was lost; the disk holds a clean chain', async () => {
    const log = await openLog(options());
    await log.flush();
    fill(filler);
    const { n } = await recordUntilUnavailable(log, 0);
    const err = await log.close().then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AuditUnavailableError);
    expect(err).toMatchObject({ code: 'E_AUDIT_UNAVAILABLE' });
    expect((err as AuditUnavailableError).details!.lostRecords as number).toBeGreaterThan(0);
    expect((err as Error).message).toMatch(/closed while unavailable.*never written/);
    expect(log.available).toBe(false);
    expect(existsSync(join(dir, 'audit.lock'))).toBe(false);
    log.record(event(n));
    expect(log.stats().droppedAfterClose).toBe(1);
    expectWholeLines(dir);
    const r = verify(dir);
    expect(r.integrity.ok).toBe(true);
    expect(r.torn).toBeNull();
    expect(r.closed).toBe(false); // honest: it did not close cleanly
  });
});

// ---- injected faults (any filesystem) ------------------------------------------------------

describe('injected write faults', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'captrap-audit-full-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** A switchable fault: `fault(op)` decides per operation; null = no fault. */
  function faulty(extra: Partial<AuditLogOptions> = {}) {
    const ctl: { fault: AuditLogOptions['ioHook'] | null } = { fault: null };
    const opts: AuditLogOptions = {
      dir,
      key,
      signingKey,
      flushIntervalMs: 60_000,
      retryInitialMs: 10,
      retryMaxMs: 40,
      ioHook: (op) => ctl.fault?.(op),
      ...extra,
    };
    return { ctl, opts };
  }

  const seg1 = () => join(dir, segmentFileName(1));

  it('a short write (part of a batch on disk, then ENOSPC) is cut back to the last good offset and rewritten whole', async () => {
    const { ctl, opts } = faulty();
    const log = await AuditLog.open(opts);
    await log.flush();
    const good = statSync(seg1()).size;
    for (let i = 0; i < 100; i++) log.record(event(i));
    let partials = 0;
    ctl.fault = (op) => {
      if (op.op === 'write' && op.file.startsWith('audit-')) {
        partials++;
        return 777; // lands mid-line
      }
    };
    await expect(log.flush()).rejects.toBeInstanceOf(AuditUnavailableError);
    expect(partials).toBe(1);
    expect(statSync(seg1()).size).toBe(good); // the partial batch is gone
    expectWholeLines(dir);
    expect(verify(dir).integrity.ok).toBe(true);

    const back = waitFor<AuditOutageReport>(log, 'available', 2000);
    ctl.fault = null;
    await back;
    await log.close();
    const records = readAuditRecords(dir);
    expectGapless(records);
    expectEventsOnce(records, Array.from({ length: 100 }, (_, i) => i));
    const r = verify(dir);
    expect(r.ok, JSON.stringify([r.integrity.problems, r.completeness.problems])).toBe(true);
    expect(r.closed).toBe(true);
  });

  it('a failed cut-back leaves the partial batch until the retry, which cuts it before writing', async () => {
    const { ctl, opts } = faulty();
    const log = await AuditLog.open(opts);
    await log.flush();
    const good = statSync(seg1()).size;
    for (let i = 0; i < 50; i++) log.record(event(i));
    ctl.fault = (op) => {
      if (op.op === 'truncate') throw Object.assign(new Error('EIO: i/o error, ftruncate'), { code: 'EIO' });
      if (op.op === 'write' && op.file.startsWith('audit-')) return 300;
    };
    await expect(log.flush()).rejects.toMatchObject({ code: 'E_AUDIT_UNAVAILABLE' });
    expect(statSync(seg1()).size).toBe(good + 300); // still there: the cut failed ...
    expect(verify(dir).torn).not.toBeNull(); // ... and verify sees a torn line, not tampering
    expect(verify(dir).integrity.ok).toBe(true);

    const back = waitFor<AuditOutageReport>(log, 'available', 2000);
    ctl.fault = null;
    await back;
    await log.close();
    expectEventsOnce(readAuditRecords(dir), Array.from({ length: 50 }, (_, i) => i));
    const r = verify(dir);
    expect(r.ok, JSON.stringify([r.integrity.problems, r.completeness.problems, r.torn])).toBe(true);
  });

  it('a failed fsync: the batch is treated as not written (its pages may be gone), cut back and rewritten once, no duplicates', async () => {
    const { ctl, opts } = faulty({ fsync: 'flush' });
    const log = await AuditLog.open(opts);
    await log.flush();
    const good = statSync(seg1()).size;
    for (let i = 0; i < 30; i++) log.record(event(i));
    let syncs = 0;
    ctl.fault = (op) => {
      if (op.op === 'sync' && op.file.startsWith('audit-') && syncs++ < 2) throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
    };
    await expect(log.flush()).rejects.toMatchObject({ code: 'E_AUDIT_UNAVAILABLE', details: { permanent: false } });
    expect(statSync(seg1()).size).toBe(good);
    await waitFor(log, 'available', 2000); // the first retry fails the fsync again, the second goes through
    expect(log.stats().failedWrites).toBe(2);
    await log.close();
    const records = readAuditRecords(dir);
    expectGapless(records);
    expectEventsOnce(records, Array.from({ length: 30 }, (_, i) => i));
    expect(records.find((r) => r.type === 'audit_resumed')!.details).toMatchObject({ failedWrites: 2, firstError: expect.stringMatching(/EIO/) });
    expect(verify(dir).ok).toBe(true);
  });

  it('a short write to checkpoints.jsonl is cut back too (a torn checkpoint line would read as a forged one)', async () => {
    const { ctl, opts } = faulty({ checkpointEvery: 10 });
    const log = await AuditLog.open(opts);
    await log.flush();
    const cpPath = join(dir, CHECKPOINT_FILE);
    const cpGood = statSync(cpPath).size;
    for (let i = 0; i < 25; i++) log.record(event(i));
    ctl.fault = (op) => {
      if (op.op === 'write' && op.file === CHECKPOINT_FILE) return 40;
    };
    await expect(log.flush()).rejects.toMatchObject({ code: 'E_AUDIT_UNAVAILABLE' });
    expect(statSync(cpPath).size).toBe(cpGood);
    expectWholeLines(dir);
    const back = waitFor(log, 'available', 2000);
    ctl.fault = null;
    await back;
    await log.close();
    const r = verify(dir);
    expect(r.ok, JSON.stringify([r.integrity.problems, r.completeness.problems])).toBe(true);
    expectEventsOnce(readAuditRecords(dir), Array.from({ length: 25 }, (_, i) => i));
  });

  it('an outage across rotations: buffered segments are created when the disk comes back; verify passes', async () => {
    const { ctl, opts } = faulty({ maxSegmentBytes: 4096, checkpointEvery: 20 });
    const log = await AuditLog.open(opts);
    await log.flush();
    ctl.fault = (op) => {
      if (op.op === 'open' || (op.op === 'write' && op.file.startsWith('audit-'))) throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
    };
    for (let i = 0; i < 200; i++) log.record(event(i));
    await expect(log.flush()).rejects.toMatchObject({ code: 'E_AUDIT_UNAVAILABLE' });
    for (let i = 200; i < 400; i++) log.record(event(i));
    expect(log.stats().segment).toBeGreaterThan(5);
    const back = waitFor(log, 'available', 2000);
    ctl.fault = null;
    await back;
    await log.close();
    const records = readAuditRecords(dir);
    expectGapless(records);
    expectEventsOnce(records, Array.from({ length: 400 }, (_, i) => i));
    const r = verify(dir);
    expect(r.ok, JSON.stringify([r.integrity.problems, r.completeness.problems])).toBe(true);
    expect(r.segments.length).toBe(log.stats().segments);
  });

  it('retries back off (doubling to retryMaxMs); one unavailable notification per outage; a throwing listener breaks nothing', async () => {
    const seen: string[] = [];
    const { ctl, opts } = faulty({
      retryInitialMs: 20,
      retryMaxMs: 80,
      onUnavailable: (e) => seen.push(`cb:${e.code}`),
      onAvailable: (i) => seen.push(`cb:up:${i.failedWrites}`),
    });
    const log = await AuditLog.open(opts);
    log.on('unavailable', () => {
      throw new Error('listener bug');
    });
    log.on('unavailable', (e) => seen.push(`ev:${e.code}`));
    log.on('available', () => seen.push('ev:up'));
    ctl.fault = (op) => {
      if (op.op === 'write') throw Object.assign(new Error('EDQUOT: disk quota exceeded'), { code: 'EDQUOT' });
    };
    const t0 = Date.now();
    await expect(log.flush()).rejects.toMatchObject({ code: 'E_AUDIT_UNAVAILABLE' });
    await sleep(600);
    const failed = log.stats().failedWrites;
    const elapsed = Date.now() - t0;
    // Attempts at 0, 20, 60, 140, 220, ... ms: about 2 + elapsed/80; a fixed 20 ms would give ~30.
    expect(failed).toBeGreaterThanOrEqual(4);
    expect(failed).toBeLessThanOrEqual(Math.ceil(elapsed / 80) + 4);
    expect(seen).toEqual(['ev:E_AUDIT_UNAVAILABLE', 'cb:E_AUDIT_UNAVAILABLE']);
    ctl.fault = null;
    await waitFor(log, 'available', 2000);
    expect(seen.slice(2)).toEqual(['ev:up', `cb:up:${failed}`]);
    await log.close();
    expect(verify(dir).ok).toBe(true);
  });

  it('close() while unavailable, disk back by then: the one more try writes everything; audit_closed is last', async () => {
    const { ctl, opts } = faulty({ retryInitialMs: 60_000 });
    const log = await AuditLog.open(opts);
    for (let i = 0; i < 10; i++) log.record(event(i));
    ctl.fault = (op) => {
      if (op.op === 'write') throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
    };
    await expect(log.flush()).rejects.toMatchObject({ code: 'E_AUDIT_UNAVAILABLE' });
    ctl.fault = null; // no retry before close (the backoff is a minute)
    await log.close();
    const records = readAuditRecords(dir);
    expect(records.map((r) => r.type).slice(-3)).toEqual(['audit_unavailable', 'audit_resumed', 'audit_closed']);
    expectEventsOnce(records, Array.from({ length: 10 }, (_, i) => i));
    const r = verify(dir);
    expect(r.ok).toBe(true);
    expect(r.closed).toBe(true);
  });

  it("close()'s own final write fails once: it tries again, and the log ends with the whole story, audit_closed last", async () => {
    const { ctl, opts } = faulty();
    const log = await AuditLog.open(opts);
    for (let i = 0; i < 10; i++) log.record(event(i));
    await log.flush();
    let fails = 1;
    ctl.fault = (op) => {
      if (op.op === 'write' && fails > 0) {
        fails--;
        return 20;
      }
    };
    await log.close();
    const types = readAuditRecords(dir).map((r) => r.type);
    expect(types.slice(-4)).toEqual(['audit_closed', 'audit_unavailable', 'audit_resumed', 'audit_closed']);
    const r = verify(dir);
    expect(r.ok, JSON.stringify([r.integrity.problems, r.completeness.problems])).toBe(true);
    expect(r.closed).toBe(true);
  });

  it('a failure no retry can cure (the segment path is a directory) still stops the log for good, and says so as unavailable', async () => {
    const unavailable: AuditUnavailableError[] = [];
    const log = await AuditLog.open({ dir, key, signingKey, flushIntervalMs: 60_000, onUnavailable: (e) => unavailable.push(e) });
    await log.flush();
    mkdirSync(join(dir, segmentFileName(2)));
    log.rotate();
    await expect(log.flush()).rejects.toMatchObject({ code: 'E_AUDIT_WRITE' });
    expect(log.available).toBe(false);
    expect(unavailable).toHaveLength(1);
    expect(unavailable[0]!.details).toMatchObject({ permanent: true });
    expect(() => log.assertAvailable()).toThrow(/stopped for good/);
    expect(log.stats()).toMatchObject({ available: false, failedWrites: 1, failed: expect.stringMatching(/audit log write failed/) });
    await expect(log.close()).rejects.toMatchObject({ code: 'E_AUDIT_WRITE' });
  });
});
