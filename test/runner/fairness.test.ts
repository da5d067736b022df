// Fair channels: one agent's flood of pipelined denied calls must not slow another agent down.
// Agent A writes 20 000 pipelined tools.invoke lines (a forged capability: each one denied) on
// its real channel; meanwhile agent B times 20 capabilities.list round trips. The same 20 round
// trips are timed without the flood first. A is answered E_RATE_LIMITED beyond its bucket, and
// the audit log holds one start and one end record for the episode, not one per refused request.
import { afterAll, describe, expect, it } from 'vitest';
import { readAuditRecords } from '../../src/kernel/audit.js';
import { AgentRateLimiter, TokenBucket } from '../../src/runner/ratelimit.js';
import { RpcConnection } from '../../src/runner/jsonrpc.js';
import { PassThrough } from 'node:stream';
import { connectAll, Harness, host, percentile, type Connected } from './inproc.js';

const h = new Harness('fair');
afterAll(() => h.cleanup(), 60_000);

async function timeLists(b: Connected, n: number): Promise<number[]> {
  const lat: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await b.conn.call('capabilities.list', {});
    lat.push(performance.now() - t0);
  }
  return lat;
}

describe('token bucket and episodes', () => {
  it('admits a burst, then the sustained rate; audits one start and one end record per episode', () => {
    let now = 0;
    const b = new TokenBucket({ perSecond: 10, burst: 5, clock: () => now });
    expect([1, 2, 3, 4, 5, 6].map(() => b.take())).toEqual([true, true, true, true, true, false]);
    now += 100; // one token
    expect([b.take(), b.take()]).toEqual([true, false]);
    const records: { type: string; details?: Record<string, unknown> }[] = [];
    let t = 0;
    const l = new AgentRateLimiter({ limit: { perSecond: 10, burst: 2 }, audit: { record: (e) => records.push(e) }, principal: 'a', process: { pid: 1, startTime: 1 }, clock: () => t, quietMs: 1000 });
    const admitted = Array.from({ length: 1000 }, () => l.admit('tools.invoke')).filter(Boolean).length;
    expect(admitted).toBe(2);
    expect(records.map((r) => r.type)).toEqual(['access_denied']);
    expect(records[0]!.details?.['code']).toBe('E_RATE_LIMITED');
    l.end();
    expect(records.map((r) => r.type)).toEqual(['access_denied', 'rate_limited']);
    expect(records[1]!.details?.['refused']).toBe(998);
  });

  it('a connection yields after maxPerTurn lines, so another connection is served between its slices', async () => {
    const order: string[] = [];
    const mk = (name: string) => {
      const input = new PassThrough();
      const output = new PassThrough();
      output.resume();
      new RpcConnection(input, output, { handlers: { m: () => order.push(name) }, maxPerTurn: 4 });
      return input;
    };
    const a = mk('a');
    const b = mk('b');
    a.write(Array.from({ length: 40 }, (_, i) => JSON.stringify({ jsonrpc: '2.0', id: i, method: 'm' })).join('\n') + '\n');
    await new Promise((r) => setImmediate(r));
    b.write(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'm' }) + '\n');
    await new Promise((r) => setTimeout(r, 50));
    expect(order.filter((x) => x === 'a')).toHaveLength(40);
    // b's one request was handled long before a's backlog was worked off.
    expect(order.indexOf('b')).toBeLessThan(20);
  });
});

describe.skipIf(host.layout === 'none')('fair channels', () => {
  it("a flood of 20 000 pipelined denied calls from one agent leaves another agent's capabilities.list fast", async () => {
    const ca = h.control('a');
    const cb = h.control('b');
    const s = await h.start(h.config([{ id: 'a', control: ca }, { id: 'b', control: cb }]));
    const agents = await connectAll([ca, cb]);
    const a = agents.get('a')!;
    const b = agents.get('b')!;
    await timeLists(b, 10); // warm up
    const quiet = await timeLists(b, 20);

    // A floods on its own channel: raw pipelined lines; its answers are only counted, not parsed.
    const N = 20_000;
    a.conn.close();
    a.sock.removeAllListeners('data');
    let answers = 0;
    let limited = 0;
    let tail = '';
    const allAnswered = new Promise<void>((resolve) => {
      a.sock.on('data', (c: Buffer) => {
        const text = tail + c.toString('utf8');
        const lines = text.split('\n');
        tail = lines.pop()!;
        answers += lines.length;
        for (const l of lines) if (l.includes('"E_RATE_LIMITED"')) limited++;
        if (answers >= N) resolve();
      });
    });
    const forged = 'cap_' + 'Z'.repeat(22);
    const flood = Array.from({ length: N }, (_, i) => JSON.stringify({ jsonrpc: '2.0', id: `f${i}`, method: 'tools.invoke', params: { tool: 'echo', args: { text: 'x' }, capability: forged } })).join('\n') + '\n';
    const t0 = performance.now();
    a.sock.write(flood);
    await new Promise((r) => setTimeout(r, 20));
    const during = await timeLists(b, 20);
    const answeredWhileMeasured = answers;
    await allAnswered;
    const floodMs = performance.now() - t0;

    const p50q = percentile(quiet, 0.5);
    const p50f = percentile(during, 0.5);
    console.log(
      `fairness: during=${JSON.stringify(during.map((x) => Math.round(x)))} B capabilities.list p50 ${p50q.toFixed(2)} ms quiet, ${p50f.toFixed(2)} ms during A's flood (max ${Math.max(...during).toFixed(1)} ms); ` +
        `A's ${N} calls answered in ${floodMs.toFixed(0)} ms, ${limited} E_RATE_LIMITED, ${answeredWhileMeasured} answered while B measured`,
    );
    expect(answeredWhileMeasured, 'the flood was still being answered while B measured').toBeLessThan(N);
    expect(p50f).toBeLessThan(50);
    // Without turns, B's calls are either instant (A's input paused) or wait for a whole read of
    // A's lines (100-350 ms here): the p90 shows it where the p50 may not.
    expect(percentile(during, 0.9)).toBeLessThan(150);
    expect(limited).toBeGreaterThan(0);

    // The episode ends after a quiet second: its end record carries the count.
    await new Promise((r) => setTimeout(r, 1600));
    await s.stop();
    const dir = s.config.audit.dir;
    const starts = readAuditRecords(dir, (r) => r.type === 'access_denied' && r.details?.['code'] === 'E_RATE_LIMITED');
    const ends = readAuditRecords(dir, (r) => r.type === 'rate_limited');
    expect(starts.length).toBeGreaterThanOrEqual(1);
    expect(starts.length).toBeLessThanOrEqual(3);
    expect(ends.length).toBe(starts.length);
    expect(ends.reduce((n, r) => n + (r.details?.['refused'] as number), 0)).toBe(limited);
    expect(ends.every((r) => r.principal === 'a')).toBe(true);
    // Every request is accounted for: one access_denied per judged call plus the episodes' counts.
    const judged = readAuditRecords(dir, (r) => r.type === 'access_denied' && r.principal === 'a' && r.details?.['code'] !== 'E_RATE_LIMITED').length;
    expect(judged + limited).toBe(N);
  }, 90_000);
});
