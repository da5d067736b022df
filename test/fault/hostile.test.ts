// A hostile agent on its own channel: garbage bytes, a 100 MB line, invalid JSON-RPC, unknown
// methods, forged capability ids, another agent's capabilities, tampered tokens, and a flood of
// 10 000 requests. Each gets an error answer, nothing is spawned for a denied call, the sidecar
// keeps answering the other agent, its memory stays bounded, and the denials are in the audit log.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ALL_TOOLS_CAP,
  auditRecords,
  auditVerify,
  host,
  proxyAgent,
  shutdown,
  startServe,
  toolCap,
  waitFor,
  type CapView,
  type ProxyAgent,
  type ServeHandle,
} from './harness.js';

const DENIED = -32001;
const NOT_FOUND = -32003;
let h: ServeHandle;
let evil: ProxyAgent;
let good: ProxyAgent;

/** Resident and peak resident memory of a process, bytes. */
function memoryOf(pid: number): { rss: number; hwm: number } {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

interface Stats {
  sandboxes: { started: number; running: number };
}

async function sandboxesStarted(): Promise<number> {
  return (await h.adminCall<Stats>('stats')).sandboxes.started;
}

function b64(s: string | Buffer): string {
  return (typeof s === 'string' ? Buffer.from(s) : s).toString('base64');
}

function retoken(token: string, edit: (c: Record<string, unknown>) => void): string {
  const c = JSON.parse(Buffer.from(token.slice(4), 'base64url').toString('utf8')) as Record<string, unknown>;
  edit(c);
  return 'ct1.' + Buffer.from(JSON.stringify(c)).toString('base64url');
}

beforeAll(async () => {
  h = await startServe({
    agents: [
      proxyAgent('evil', { capabilities: [{ ...ALL_TOOLS_CAP, constraints: { allowedTools: ['true', 'echo'] } }] }),
      proxyAgent('good'),
    ],
  });
  evil = await h.agent('evil');
  good = await h.agent('good');
}, 30_000);

afterAll(async () => {
  if (!h) return;
  const left = await shutdown(h, { keepDir: true });
  expect(left.exit).toEqual({ code: 0, signal: null });
  expect(left.processes).toEqual([]);
  expect(left.cgroups).toEqual([]);
  const v = auditVerify(h);
  expect(v.status, v.stderr).toBe(0);
  (await import('node:fs')).rmSync(h.dir, { recursive: true, force: true });
}, 60_000);

describe.skipIf(host.layout === 'none')('hostile agent', () => {
  it('garbage, invalid JSON-RPC and unknown methods: each answered with an error, the channel lives on', async () => {
    const cases: [string, number][] = [
      ['\x00\xff\xfe not json at all\n', -32700],
      ['{"jsonrpc":"2.0","id":1,"method":\n', -32700],
      ['[1,2,3]\n', -32600],
      ['"a string"\n', -32600],
      ['{"jsonrpc":"1.0","id":2,"method":"tools.list"}\n', -32600],
      ['{"jsonrpc":"2.0","id":{"x":1},"method":"tools.list"}\n', -32600],
      ['{"jsonrpc":"2.0","id":3,"method":42}\n', -32600],
      ['{"jsonrpc":"2.0","id":4,"method":"tools.list","params":"str"}\n', -32600],
      ['{"jsonrpc":"2.0","id":5,"method":"no.such.method","params":{}}\n', -32601],
      ['{"jsonrpc":"2.0","id":6,"method":"__proto__","params":{}}\n', -32601],
      ['{"jsonrpc":"2.0","id":7,"method":"constructor","params":{}}\n', -32601],
    ];
    for (const [line, code] of cases) {
      const { answers } = await evil.order<{ answers: { error?: { code: number } }[] }>('raw', { base64: b64(line), expect: 1, timeoutMs: 5000 });
      expect(answers.map((a) => a.error?.code), JSON.stringify(line)).toEqual([code]);
    }
    // Bad params on real methods: INVALID_PARAMS, not a crash.
    for (const params of [{ tool: 42 }, { tool: 'true', args: 'x', capability: 1 }, [], { capability: { $gt: '' } }]) {
      const r = await evil.call('tools.invoke', params);
      expect([-32602, DENIED, NOT_FOUND], JSON.stringify(r)).toContain(r.error?.code);
    }
    // Still served.
    expect((await evil.call('tools.list')).result).toBeDefined();
  });

  it('a 100 MB line is discarded unread: an error answer, memory bounded, others served meanwhile', async () => {
    const before = memoryOf(h.ref.pid);
    const t0 = Date.now();
    const [big, goodCalls] = await Promise.all([
      evil.order<{ answers: { id: unknown; error?: { code: number } }[] }>('bigLine', { bytes: 100 * 1024 * 1024, timeoutMs: 30_000 }, 60_000),
      (async () => {
        const lat: number[] = [];
        for (let i = 0; i < 10; i++) {
          const s = Date.now();
          expect((await good.call('capabilities.list')).result).toBeDefined();
          lat.push(Date.now() - s);
        }
        return lat;
      })(),
    ]);
    expect(big.answers.map((a) => a.error?.code)).toEqual([-32010]);
    const after = memoryOf(h.ref.pid);
    // Holding the line would take >= 100 MB more than before (twice that as a JS string).
    expect(after.hwm - before.rss, `rss ${before.rss} -> peak ${after.hwm} in ${Date.now() - t0} ms`).toBeLessThan(64 * 1024 * 1024);
    expect(Math.max(...goodCalls)).toBeLessThan(2000);
    expect((await evil.call('capabilities.list')).result).toBeDefined();
  }, 60_000);

  it('forged ids, another agent’s capabilities and tampered tokens are denied, audited, and spawn nothing', async () => {
    const mine = await toolCap(evil);
    const theirs = await toolCap(good);
    const started = await sandboxesStarted();
    const deniedBefore = auditRecords(h, (r) => r.type === 'access_denied' && r.principal === 'evil').length;
    const attempts: { what: string; params: Record<string, unknown>; codes: number[] }[] = [
      { what: 'forged id', params: { tool: 'true', args: {}, capability: 'cap_' + 'A'.repeat(22) }, codes: [DENIED, NOT_FOUND] },
      { what: 'garbage id', params: { tool: 'true', args: {}, capability: '../../etc/passwd' }, codes: [DENIED, NOT_FOUND, -32602] },
      { what: 'garbage token', params: { tool: 'true', args: {}, capability: 'ct1.!!!notbase64' }, codes: [DENIED] },
      { what: "other agent's id", params: { tool: 'hang', args: { dir: h.dir }, capability: theirs.id }, codes: [DENIED, NOT_FOUND] },
      { what: "other agent's token", params: { tool: 'hang', args: { dir: h.dir }, capability: theirs.token }, codes: [DENIED] },
      { what: 'tool outside allowedTools', params: { tool: 'hang', args: { dir: h.dir }, capability: mine.id }, codes: [DENIED] },
      {
        what: 'widened token (signature kept)',
        params: { tool: 'hang', args: { dir: h.dir }, capability: retoken(mine.token, (c) => ((c.constraints as Record<string, unknown>).allowedTools = ['true', 'echo', 'hang'])) },
        codes: [DENIED],
      },
      {
        what: 'flipped signature',
        params: { tool: 'true', args: {}, capability: retoken(mine.token, (c) => (c.signature = String(c.signature).replace(/^./, (x) => (x === 'A' ? 'B' : 'A')))) },
        codes: [DENIED],
      },
      {
        what: "other agent's token re-addressed to me",
        params: { tool: 'hang', args: { dir: h.dir }, capability: retoken(theirs.token, (c) => (c.principal = 'evil')) },
        codes: [DENIED],
      },
    ];
    for (const a of attempts) {
      const r = await evil.call('tools.invoke', a.params);
      expect(a.codes, `${a.what}: ${JSON.stringify(r)}`).toContain(r.error?.code);
    }
    // Tampered tokens specifically fail on their signature (or are rejected as malformed).
    const widened = await evil.call('tools.invoke', attempts[6]!.params);
    expect(widened.error?.data?.code).toMatch(/^E_(BAD_SIGNATURE|MALFORMED_CAPABILITY)$/);
    // Delegating or revoking someone else's capability is refused too.
    expect((await evil.call('capabilities.delegate', { capability: theirs.id, to: 'evil' })).error).toBeDefined();
    expect((await evil.call('capabilities.revoke', { capability: theirs.id })).error).toBeDefined();
    expect((await h.caps('good')).find((c: CapView) => c.id === theirs.id)?.revoked).toBe(false);

    expect(await sandboxesStarted()).toBe(started);
    const denied = await waitFor(() => auditRecords(h, (r) => r.type === 'access_denied' && r.principal === 'evil').length - deniedBefore >= 6, 3000);
    expect(denied, 'access_denied records for the denied tools.invoke calls').toBe(true);
  });

  it('a flood of 10 000 requests: every one answered, the other agent and the admin socket stay responsive, memory bounded', async () => {
    const before = memoryOf(h.ref.pid);
    const started = await sandboxesStarted();
    const deniedBefore = auditRecords(h, (r) => r.type === 'access_denied' && r.principal === 'evil').length;
    const flood = evil.order<{ ok: number; byCode: Record<string, number>; ms: number }>(
      'flood',
      { n: 10_000, method: 'tools.invoke', params: { tool: 'true', args: {}, capability: 'cap_' + 'Z'.repeat(22) } },
      60_000,
    );
    const lat: number[] = [];
    let done = false;
    void flood.finally(() => (done = true));
    while (!done || lat.length < 5) {
      const s = Date.now();
      expect((await good.call('tools.list')).result).toBeDefined();
      await h.adminCall('stats');
      lat.push(Date.now() - s);
    }
    const f = await flood;
    expect(f.ok).toBe(0);
    expect(Object.values(f.byCode).reduce((a, b) => a + b, 0)).toBe(10_000);
    expect(Object.keys(f.byCode).every((c) => [DENIED, NOT_FOUND].includes(Number(c))), JSON.stringify(f.byCode)).toBe(true);
    lat.sort((a, b) => a - b);
    expect(lat[Math.floor(lat.length * 0.99)]!, `good-agent + admin round trips during the flood (ms): ${JSON.stringify(lat)}`).toBeLessThan(1000);
    expect(await sandboxesStarted()).toBe(started);
    const after = memoryOf(h.ref.pid);
    expect(after.rss - before.rss).toBeLessThan(100 * 1024 * 1024);
    // Every denial is in the audit log: one access_denied per call the kernel judged, and the calls
    // refused by the rate limit (E_RATE_LIMITED) as one count per episode (its rate_limited record,
    // written once the flood has stopped for a second), not one record each.
    const accounted = () => {
      const judged = auditRecords(h, (r) => r.type === 'access_denied' && r.principal === 'evil' && r.details?.['code'] !== 'E_RATE_LIMITED').length - deniedBefore;
      const limited = auditRecords(h, (r) => r.type === 'rate_limited' && r.principal === 'evil').reduce((n, r) => n + Number(r.details?.['refused'] ?? 0), 0);
      return judged + limited;
    };
    const audited = await waitFor(() => accounted() >= 10_000, 5000, 50);
    expect(audited, `accounted for ${accounted()} of 10 000`).toBe(true);
    expect(auditRecords(h, (r) => r.type === 'rate_limited' && r.principal === 'evil').length).toBeLessThanOrEqual(3);
  }, 60_000);
});
