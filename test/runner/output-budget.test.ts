// An agent's own output is forwarded within a budget: a rate and a lifetime total per agent; the
// rest is dropped, counted and marked, so an agent cannot grow serve's stderr (or memory).
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { parseConfig } from '../../src/runner/config.js';
import { OutputBudget } from '../../src/runner/output-budget.js';
import { Sidecar } from '../../src/runner/sidecar.js';

const host = probeHost();
const base = `captrap-test-outbudget-${process.pid}-${Date.now().toString(36)}`;
const dir = mkdtempSync(join(tmpdir(), 'captrap-outbudget-'));
chmodSync(dir, 0o755);

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  expect(removeCgroupBase(host, base)).toEqual([]);
});

describe('OutputBudget', () => {
  it('forwards within the rate and burst, drops and marks the rest, and resumes as tokens return', () => {
    let t = 0;
    const marks: string[] = [];
    const out: string[] = [];
    const b = new OutputBudget({ bytesPerSecond: 100, burstBytes: 50, maxBytes: 1000 }, (l) => marks.push(l), () => t);
    for (let i = 0; i < 10; i++) b.offer('123456789', (l) => out.push(l)); // 10 bytes each with the newline
    expect(out.length).toBe(5);
    expect(b.dropped).toBe(50);
    expect(marks).toEqual(['[captrap: output over 100 bytes/s; dropping lines]']);
    t = 1000; // a second later: 100 bytes of tokens, capped at the 50-byte burst
    b.offer('123456789', (l) => out.push(l));
    expect(out.length).toBe(6);
    expect(marks[1]).toBe('[captrap: 50 bytes of output dropped]');
  });

  it('stops forwarding for good at the lifetime total', () => {
    let t = 0;
    const marks: string[] = [];
    let n = 0;
    const b = new OutputBudget({ bytesPerSecond: 1e9, burstBytes: 1e9, maxBytes: 35 }, (l) => marks.push(l), () => t);
    for (let i = 0; i < 10; i++, t += 1000) b.offer('123456789', () => n++);
    expect(n).toBe(3);
    expect(b.forwarded).toBe(30);
    expect(marks[0]).toMatch(/over its 35 byte total/);
  });
});

describe.skipIf(host.layout === 'none')('an agent flooding its own stdout', () => {
  it('50 MiB of lines reach serve as at most the budget, with the cut marked and counted', async () => {
    const lines = new Map<string, number>();
    let bytes = 0;
    const marks: string[] = [];
    const config = parseConfig(
      {
        cgroupBase: base,
        audit: { flushIntervalMs: 20 },
        agentOutput: { bytesPerSecond: '1M', burst: '1M', maxBytes: '4M' },
        agents: [{ id: 'loud', command: 'sh', args: ['-c', 'head -c 50M /dev/zero | tr "\\000" a | fold -w 99'], limits: { memory: '256M', pids: 16 } }],
      },
      'output budget test',
      dir,
    );
    const s = await Sidecar.start(config, {
      output: (id, stream, line) => {
        if (line.startsWith('[captrap:')) marks.push(line);
        else {
          bytes += Buffer.byteLength(line) + 1;
          lines.set(stream, (lines.get(stream) ?? 0) + 1);
        }
        expect(id).toBe('loud');
      },
    });
    try {
      const agent = s.supervisor.get('loud')!;
      await agent.done;
    } finally {
      await s.stop();
    }
    expect(bytes).toBeGreaterThan(0);
    expect(bytes).toBeLessThanOrEqual(4 * 1024 * 1024);
    expect(marks[0]).toMatch(/^\[captrap: output over /);
    const dropped = marks.map((m) => /(\d+) bytes of output dropped/.exec(m)?.[1]).filter(Boolean).map(Number);
    expect(dropped.reduce((a, b) => a + b, 0) + bytes).toBe(50 * 1024 * 1024 + Math.ceil((50 * 1024 * 1024) / 99));
  }, 60_000);
});
