import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../src/kernel/events.js';
import { DEFAULT_RULES, MonitorInput, monitorConfig } from '../../src/monitor/config.js';
import { ViolationMonitor, type Alert } from '../../src/monitor/monitor.js';
import { classify, VIOLATION_TYPES, type ViolationType } from '../../src/monitor/violations.js';

/** One audit event of each violation type, as the kernel, runner and supervisor write them. */
const SAMPLE: Record<ViolationType, (p: string) => AuditEvent> = {
  'tool-not-allowed': (p) => ({ type: 'access_denied', principal: p, details: { code: 'E_TOOL_NOT_ALLOWED', tool: 'rm' } }),
  'path-outside-roots': (p) => ({ type: 'access_denied', principal: p, details: { code: 'E_PATH_OUTSIDE_ROOTS', path: '/etc/shadow' } }),
  'argument-outside-constraints': (p) => ({ type: 'access_denied', principal: p, details: { code: 'E_DOMAIN_NOT_ALLOWED' } }),
  'forged-token': (p) => ({ type: 'access_denied', principal: p, details: { code: 'E_BAD_SIGNATURE' } }),
  'wrong-holder': (p) => ({ type: 'access_denied', principal: p, details: { code: 'E_WRONG_HOLDER' } }),
  'revoked-or-expired': (p) => ({ type: 'access_denied', principal: p, details: { code: 'E_REVOKED' } }),
  'rate-limited': (p) => ({ type: 'access_denied', principal: p, details: { code: 'E_RATE_LIMITED' } }),
  'sandbox-oom': (p) => ({ type: 'sandbox_exited', principal: p, details: { kind: 'tool', reason: 'oom' } }),
  'sandbox-pids-limit': (p) => ({ type: 'sandbox_exited', principal: p, details: { kind: 'tool', reason: 'pids-limit' } }),
  'sandbox-timeout': (p) => ({ type: 'sandbox_exited', principal: p, details: { kind: 'tool', reason: 'timeout' } }),
  'escape-attempt': (p) => ({ type: 'sandbox_escape', principal: p, details: { kind: 'tool', pids: [123] } }),
  'egress-refused': (p) => ({ type: 'egress', principal: p, details: { host: 'evil.example', port: 443, allowed: false, code: 'E_DOMAIN_NOT_ALLOWED' } }),
};

function harness(input?: Parameters<typeof MonitorInput.parse>[0]) {
  let t = 1_000_000;
  const audit: AuditEvent[] = [];
  const quarantined: string[] = [];
  const notices: string[] = [];
  const alerts: Alert[] = [];
  const m = new ViolationMonitor(
    monitorConfig(input === undefined ? undefined : MonitorInput.parse(input)),
    { audit: (e) => audit.push(e), quarantine: (p) => quarantined.push(p), notice: (l) => notices.push(l), onAlert: (a) => alerts.push(a) },
    () => t,
  );
  return { m, audit, quarantined, notices, alerts, advance: (ms: number) => (t += ms) };
}

describe('classify', () => {
  it('maps each violation type from the audit event that records it, and nothing else', () => {
    for (const type of VIOLATION_TYPES) expect(classify(SAMPLE[type]('a'))?.type, type).toBe(type);
    expect(classify({ type: 'sandbox_exited', principal: 'a', details: { reason: 'exited' } })).toBeUndefined();
    expect(classify({ type: 'egress', principal: 'a', details: { allowed: true } })).toBeUndefined();
    expect(classify({ type: 'capability_granted', principal: 'a' })).toBeUndefined();
    expect(classify({ type: 'access_denied', details: { code: 'E_BAD_SIGNATURE' } }), 'no principal, nobody to blame').toBeUndefined();
    expect(classify({ type: 'access_denied', principal: 'a', details: { code: 'E_INVALID_REQUEST' } })).toBeUndefined();
  });
});

describe('thresholds, windows and cooldowns', () => {
  it.each(VIOLATION_TYPES)('%s: alerts when its threshold is reached within the window, once per cooldown', (type) => {
    const h = harness();
    const rule = DEFAULT_RULES[type];
    for (let i = 1; i < rule.threshold; i++) h.m.observe(SAMPLE[type]('agent-1'));
    expect(h.alerts).toHaveLength(0);
    h.m.observe(SAMPLE[type]('agent-1'));
    expect(h.alerts).toHaveLength(1);
    expect(h.alerts[0]).toMatchObject({ type, principal: 'agent-1', severity: rule.severity, count: rule.threshold });
    expect(h.audit.filter((e) => e.type === 'violation_alert')).toHaveLength(1);
    // More of the same inside the cooldown: counted, not alerted again.
    for (let i = 0; i < rule.threshold * 2; i++) h.m.observe(SAMPLE[type]('agent-1'));
    expect(h.alerts).toHaveLength(1);
    expect(h.m.stats().violations[type]).toBe(rule.threshold * 3);
    // After the cooldown, a full window's worth alerts again.
    h.advance(rule.cooldownMs + 1);
    for (let i = 0; i < rule.threshold; i++) h.m.observe(SAMPLE[type]('agent-1'));
    expect(h.alerts).toHaveLength(2);
  });

  it('counts per principal and forgets violations older than the window', () => {
    const h = harness({ rules: { 'tool-not-allowed': { threshold: 3, window: '1m' } } });
    h.m.observe(SAMPLE['tool-not-allowed']('a'));
    h.m.observe(SAMPLE['tool-not-allowed']('b'));
    h.m.observe(SAMPLE['tool-not-allowed']('a'));
    h.advance(61_000);
    h.m.observe(SAMPLE['tool-not-allowed']('a'));
    expect(h.alerts, 'two of the three fell out of the window').toHaveLength(0);
    h.m.observe(SAMPLE['tool-not-allowed']('a'));
    h.m.observe(SAMPLE['tool-not-allowed']('a'));
    expect(h.alerts.map((a) => [a.principal, a.count])).toEqual([['a', 3]]);
  });

  it('takes severity, cooldown and actions from the config, and refuses an unknown type or a bad value', () => {
    const cfg = monitorConfig(MonitorInput.parse({ rules: { 'sandbox-oom': { threshold: 1, severity: 'critical', cooldown: '10s', actions: ['alert', 'quarantine'] } } }));
    expect(cfg.rules['sandbox-oom']).toEqual({ threshold: 1, windowMs: 300_000, severity: 'critical', cooldownMs: 10_000, actions: ['alert', 'quarantine'] });
    expect(cfg.rules['forged-token']).toEqual(DEFAULT_RULES['forged-token']);
    expect(() => MonitorInput.parse({ rules: { 'made-up': { threshold: 1 } } })).toThrow();
    expect(() => MonitorInput.parse({ rules: { 'sandbox-oom': { threshold: 0 } } })).toThrow();
    expect(() => MonitorInput.parse({ webhook: { url: 'file:///etc/passwd' } })).toThrow(/http or https/);
    expect(() => MonitorInput.parse({ rules: { 'sandbox-oom': { cooldown: 'soon' } } })).toThrow(/duration/);
  });

  it('does nothing when disabled', () => {
    const h = harness({ enabled: false });
    h.m.observe(SAMPLE['escape-attempt']('a'));
    expect([h.alerts.length, h.quarantined.length, h.m.stats().violations['escape-attempt']]).toEqual([0, 0, 0]);
  });
});

describe('quarantine', () => {
  it('an escape attempt quarantines at once: the hook revokes and kills, the principal and its sub-agents are refused until released', () => {
    const h = harness();
    h.m.observe(SAMPLE['escape-attempt']('planner'));
    expect(h.quarantined).toEqual(['planner']);
    expect(h.m.isQuarantined('planner')).toBe(true);
    expect(h.m.isQuarantined('planner/sub-1')).toBe(true);
    expect(h.m.isQuarantined('planner-2')).toBe(false);
    expect(h.audit.map((e) => e.type)).toEqual(['violation_alert', 'principal_quarantined']);
    expect(h.m.release('planner/sub-1'), 'only the quarantined principal itself can be released').toBe(false);
    expect(h.m.release('planner')).toBe(true);
    expect(h.m.isQuarantined('planner/sub-1')).toBe(false);
    expect(h.audit.at(-1)).toMatchObject({ type: 'principal_released', principal: 'planner' });
    expect(h.m.release('planner')).toBe(false);
    // Released, it tries again at once: quarantined again, cooldown or not.
    h.m.observe(SAMPLE['escape-attempt']('planner'));
    expect(h.m.isQuarantined('planner')).toBe(true);
    expect(h.quarantined).toEqual(['planner', 'planner']);
  });

  it('a quarantine rule quarantines again after a release, however long its alert cooldown', () => {
    const h = harness({ rules: { 'forged-token': { threshold: 2, actions: ['alert', 'quarantine'], cooldown: '1h' } } });
    for (let i = 0; i < 2; i++) h.m.observe(SAMPLE['forged-token']('x'));
    expect(h.quarantined).toEqual(['x']);
    h.m.release('x');
    for (let i = 0; i < 2; i++) h.m.observe(SAMPLE['forged-token']('x'));
    expect(h.quarantined).toEqual(['x', 'x']);
  });

  it('stays quarantined even if revoking or killing fails, and says so', () => {
    const notices: string[] = [];
    const m = new ViolationMonitor(monitorConfig(undefined), { quarantine: () => { throw new Error('kill failed'); }, notice: (l) => notices.push(l) });
    m.observe(SAMPLE['escape-attempt']('x'));
    expect(m.isQuarantined('x')).toBe(true);
    expect(notices.some((n) => /could not revoke or kill everything: kill failed/.test(n))).toBe(true);
  });
});

describe('webhook', () => {
  let server: Server | undefined;
  afterEach(async () => {
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    server = undefined;
  });

  const listen = async (handler: (req: IncomingMessage, body: string) => number): Promise<string> => {
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        res.statusCode = handler(req, body);
        res.end();
      });
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', () => r()));
    return `http://127.0.0.1:${(server!.address() as AddressInfo).port}/hook`;
  };

  it('POSTs each alert as JSON, retrying a failed attempt', async () => {
    const got: { body: unknown; auth: string | undefined }[] = [];
    let calls = 0;
    const url = await listen((req, body) => {
      calls++;
      if (calls === 1) return 503;
      got.push({ body: JSON.parse(body), auth: req.headers.authorization });
      return 204;
    });
    const m = new ViolationMonitor(monitorConfig(MonitorInput.parse({ webhook: { url, retries: 2, timeout: 2000, headers: { authorization: 'Bearer t' } } })), { notice: () => undefined });
    m.observe(SAMPLE['escape-attempt']('agent-9'));
    expect(await m.flush()).toBe(true);
    expect(calls).toBe(2);
    expect(got).toHaveLength(1);
    expect(got[0]!.auth).toBe('Bearer t');
    expect(got[0]!.body).toMatchObject({ kind: 'captrap.violation_alert', alert: { type: 'escape-attempt', principal: 'agent-9', severity: 'critical' } });
    expect(m.stats().webhook).toMatchObject({ delivered: 1, failed: 0 });
    m.close();
  });

  it('a webhook that is down (or hangs) never blocks observe(); it ends counted as failed', async () => {
    // A server that accepts and never answers: every attempt runs into the timeout.
    const url = await listen(() => 200);
    server!.removeAllListeners('request');
    server!.on('request', () => undefined);
    const m = new ViolationMonitor(monitorConfig(MonitorInput.parse({ rules: { 'tool-not-allowed': { threshold: 1, cooldown: 0 } }, webhook: { url, retries: 1, timeout: 200 } })), { notice: () => undefined });
    const t0 = performance.now();
    for (let i = 0; i < 500; i++) m.observe(SAMPLE['tool-not-allowed'](`p${i % 5}`));
    const observeMs = performance.now() - t0;
    expect(m.stats().alerts).toBe(500);
    // 500 alerts with a hanging webhook would take 500 × 2 × 200 ms if anything waited on it.
    expect(observeMs).toBeLessThan(2000);
    m.close();
    expect(m.stats().webhook!.dropped).toBeGreaterThan(400);
  });
});
