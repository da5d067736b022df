// `captrap run` under pressure: a timeout longer than a 32-bit timer works as written, and a
// command that writes faster than its reader reads slows down instead of growing captrap.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';

const host = probeHost();
const base = `captrap-test-runp-${process.pid}-${Date.now().toString(36)}`;
const cli = fileURLToPath(new URL('../../src/runner/cli.ts', import.meta.url));
const tsx = fileURLToPath(new URL('../../node_modules/tsx/dist/loader.mjs', import.meta.url));

afterAll(() => {
  expect(removeCgroupBase(host, base)).toEqual([]);
});

function rssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

describe.skipIf(host.layout === 'none')('captrap run under pressure', () => {
  it('a timeout of 600h is not a timeout after a moment (no 32-bit timer overflow)', () => {
    const t0 = Date.now();
    const r = spawnSync(process.execPath, ['--import', tsx, cli, 'run', '--cgroup-base', base, '--timeout', '600h', '--', 'sleep', '1'], { encoding: 'utf8' });
    expect(r.stderr).not.toMatch(/timeout/);
    expect(r.status).toBe(0);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
  }, 30_000);

  it('a reader that stops reading stops the command: captrap does not buffer 256 MiB', async () => {
    const child = spawn(process.execPath, ['--import', tsx, cli, 'run', '--cgroup-base', base, '--timeout', '60s', '--', 'head', '-c', '256M', '/dev/zero'], { stdio: ['ignore', 'pipe', 'inherit'] });
    // Nobody reads for 3 s: without backpressure captrap would read all of head's output (it
    // writes at GB/s) into its own write queue; with it, head blocks on a full pipe.
    child.stdout.pause();
    let peak = 0;
    for (let i = 0; i < 30; i++) {
      await new Promise((r) => setTimeout(r, 100));
      if (child.pid !== undefined && child.exitCode === null) peak = Math.max(peak, rssKb(child.pid));
    }
    let got = 0;
    child.stdout.on('data', (c: Buffer) => (got += c.length));
    const ended = new Promise<void>((resolve) => child.stdout.once('end', () => resolve()));
    child.stdout.resume();
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    await ended;
    expect(code).toBe(0);
    expect(got).toBe(256 * 1024 * 1024);
    expect(peak).toBeGreaterThan(0);
    expect(peak).toBeLessThan(160 * 1024);
  }, 90_000);
});
