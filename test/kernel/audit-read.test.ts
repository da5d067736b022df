// Paging through the audit log (limit/offset) and the log's uptime in its stats.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog, listSegments, readAuditRecords } from '../../src/kernel/audit.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'captrap-audit-read-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

async function writeLog(n: number): Promise<void> {
  // Small segments so paging crosses segment boundaries.
  const log = await AuditLog.open({ dir, flushIntervalMs: 5, maxSegmentBytes: 2048 });
  for (let i = 0; i < n; i++) log.record({ type: i % 2 ? 'capability_validated' : 'access_denied', principal: 'p', details: { i } });
  await log.close();
}

describe('readAuditRecords', () => {
  it('pages with offset and limit, after the filter, across segments', async () => {
    await writeLog(40);
    expect(listSegments(dir).length).toBeGreaterThan(1);
    const all = readAuditRecords(dir);
    expect(all.length).toBeGreaterThanOrEqual(42); // audit_opened + 40 + audit_closed (+ audit_rotated)
    expect(new Set(all.map((r) => r.seq)).size).toBe(all.length);
    expect(readAuditRecords(dir, { offset: 5, limit: 3 }).map((r) => r.seq)).toEqual(all.slice(5, 8).map((r) => r.seq));
    expect(readAuditRecords(dir, { limit: 0 })).toEqual([]);
    expect(readAuditRecords(dir, { offset: 1000 })).toEqual([]);
    const denied = (r: { type: string }) => r.type === 'access_denied';
    const deniedAll = readAuditRecords(dir, denied);
    expect(deniedAll).toHaveLength(20);
    // The old call shape (filter alone) and the new one agree, and options may follow the filter.
    expect(readAuditRecords(dir, { filter: denied, offset: 18 }).map((r) => r.details?.['i'])).toEqual([36, 38]);
    expect(readAuditRecords(dir, denied, { offset: 2, limit: 2 }).map((r) => r.details?.['i'])).toEqual([4, 6]);
    expect(() => readAuditRecords(dir, { offset: -1 })).toThrow(RangeError);
    expect(() => readAuditRecords(dir, { limit: 1.5 })).toThrow(RangeError);
  });
});

describe('AuditLog stats', () => {
  it('report uptimeMs since the log was opened', async () => {
    const log = await AuditLog.open({ dir, flushIntervalMs: 5 });
    const first = log.stats().uptimeMs;
    expect(first).toBeGreaterThanOrEqual(0);
    await new Promise((r) => setTimeout(r, 30));
    expect(log.stats().uptimeMs).toBeGreaterThanOrEqual(first + 20);
    await log.close();
  });
});
