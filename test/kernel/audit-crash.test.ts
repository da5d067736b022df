// A writer SIGKILLed mid-stream (no close, no final checkpoint, a stale lock, maybe a torn
// line): the next open must recover and continue the same chain, losing nothing it flushed.
import { spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { AuditLog, readAuditRecords, segmentFileName, verifyAuditLog } from '../../src/kernel/audit.js';
import { readEd25519PublicKey, readSecretFile } from '../../src/kernel/keys.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'captrap-audit-crash-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

it('recovers after the writer is SIGKILLed mid-write and continues one chain', async () => {
  const logDir = join(dir, 'log');
  const script = join(dir, 'writer.mts');
  writeFileSync(
    script,
    `import { AuditLog } from ${JSON.stringify(resolve('src/kernel/audit.ts'))};
const log = await AuditLog.open({ dir: ${JSON.stringify(logDir)}, flushIntervalMs: 1, flushEvents: 50, checkpointEvery: 200, maxSegmentBytes: 64 * 1024 });
let i = 0;
let told = false;
for (;;) {
  for (let k = 0; k < 50; k++) log.record({ type: 'sandbox_started', principal: 'p', details: { i: i++ } });
  await log.flush();
  if (!told && i >= 1000) { process.stdout.write('ready ' + process.pid + '\\n'); told = true; }
}
`,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((r) => child.once('exit', r));
  try {
    await new Promise<void>((res, rej) => {
      child.stdout.on('data', (d: Buffer) => {
        if (d.toString().includes('ready')) res();
      });
      child.on('exit', (code) => rej(new Error(`writer exited early with ${code}`)));
      setTimeout(() => rej(new Error('writer never became ready')), 20_000).unref();
    });
    await new Promise((r) => setTimeout(r, 50));
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  }

  // Whatever the kill left, add a torn fragment too, as a write cut short would.
  const segs = readdirSync(logDir).filter((f) => f.startsWith('audit-0')).sort();
  appendFileSync(join(logDir, segs[segs.length - 1]!), '{"v":1,"seq":999999,"ts":"20');
  const before = readAuditRecords(logDir).length;
  expect(before).toBeGreaterThanOrEqual(1000);

  const log = await AuditLog.open({ dir: logDir, flushIntervalMs: 5 });
  log.record({ type: 'sandbox_exited', principal: 'p' });
  await log.close();

  const k = { key: readSecretFile(join(logDir, 'audit.key')), publicKey: readEd25519PublicKey(join(logDir, 'audit-signing.pub')) };
  const r = verifyAuditLog(logDir, k);
  expect(r.integrity.problems).toEqual([]);
  expect(r.completeness.problems).toEqual([]);
  expect(r.ok).toBe(true);
  expect(r.torn).toBeNull();
  const recs = readAuditRecords(logDir);
  expect(recs.length).toBe(before + 3); // audit_opened, sandbox_exited, audit_closed
  const opened = recs.filter((x) => x.type === 'audit_opened');
  expect(opened[1]!.details).toMatchObject({ continued: true, recovered: expect.arrayContaining([expect.objectContaining({ tornBytes: expect.any(Number) })]) });
  expect(recs.map((x) => x.seq)).toEqual(Array.from({ length: recs.length }, (_, i) => i + 1));
  expect(segmentFileName(1)).toBe(segs[0]);
});

it('restores checkpoints a crash kept out of checkpoints.jsonl, across a rotation, and says so', async () => {
  const logDir = join(dir, 'log2');
  const first = await AuditLog.open({ dir: logDir, flushIntervalMs: 5, checkpointEvery: 20, maxSegmentBytes: 8 * 1024 });
  for (let i = 0; i < 300; i++) first.record({ type: 'sandbox_started', principal: 'p', details: { i } });
  await first.close();
  expect(readdirSync(logDir).filter((f) => f.startsWith('audit-0')).length).toBeGreaterThan(2);
  // The last flush's checkpoint-file write never happened: drop the file's last entries, which
  // span the final rotation (a rotate checkpoint ends a segment, the next segment's follow).
  const cpPath = join(logDir, 'checkpoints.jsonl');
  const cps = readFileSync(cpPath, 'utf8').trimEnd().split('\n');
  const segOf = (l: string) => (JSON.parse(l) as { segment: number }).segment;
  let cut = cps.length - 1;
  while (cut > 0 && segOf(cps[cut - 1]!) === segOf(cps[cps.length - 1]!)) cut--;
  cut--; // and one from the segment before
  const dropped = cps.slice(cut).map((l) => (JSON.parse(l) as { seq: number }).seq);
  writeFileSync(cpPath, cps.slice(0, cut).join('\n') + '\n');

  const k = { key: readSecretFile(join(logDir, 'audit.key')), publicKey: readEd25519PublicKey(join(logDir, 'audit-signing.pub')) };
  expect(verifyAuditLog(logDir, k).ok).toBe(false);
  const again = await AuditLog.open({ dir: logDir, flushIntervalMs: 5 });
  await again.close();
  const r = verifyAuditLog(logDir, k);
  expect(r.completeness.problems).toEqual([]);
  expect(r.ok).toBe(true);
  const opened = readAuditRecords(logDir).filter((x) => x.type === 'audit_opened');
  expect(opened.at(-1)!.details).toMatchObject({ recovered: [{ checkpointsRestored: dropped }] });
});
