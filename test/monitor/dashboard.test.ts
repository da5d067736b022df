// The dashboard's HTTP surface against a stub source: who gets in (token, cookie, Host, Origin),
// what actions need (the flag and the CSRF token), and the event stream's resumption.
import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { Dashboard, newDashboardToken, parseListen } from '../../src/monitor/dashboard.js';

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function http(port: number, path: string, o: { method?: string; headers?: Record<string, string>; body?: string; readMs?: number } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: o.method ?? 'GET', headers: { host: `127.0.0.1:${port}`, ...o.headers } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      const done = () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
      res.on('end', done);
      // An event stream never ends: take what came within readMs.
      if (o.readMs !== undefined) setTimeout(() => { req.destroy(); done(); }, o.readMs);
    });
    req.on('error', (e) => (o.readMs !== undefined ? undefined : reject(e)));
    req.end(o.body);
  });
}

let d: Dashboard | undefined;
afterEach(async () => {
  await d?.close();
  d = undefined;
});

const acted: string[] = [];
async function start(actions: boolean) {
  const token = newDashboardToken();
  d = await Dashboard.start({
    listen: '127.0.0.1:0',
    token,
    actions,
    agentsIntervalMs: 50,
    source: {
      state: async () => ({ agents: [{ id: 'a1', parent: null, state: 'running' }], capabilities: [] }),
      act: async (action, target) => {
        acted.push(`${action}:${target}`);
        return { done: true };
      },
    },
  });
  const port = Number(new URL(d.url).port);
  return { token, port, auth: { authorization: `Bearer ${token}` } };
}

describe('dashboard access', () => {
  it('listens on loopback only', () => {
    expect(parseListen('127.0.0.1:8080')).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(parseListen('[::1]:1')).toEqual({ host: '::1', port: 1 });
    expect(() => parseListen('0.0.0.0:8080')).toThrow(/loopback/);
    expect(() => parseListen('example.com:80')).toThrow(/loopback/);
    expect(() => parseListen('127.0.0.1')).toThrow(/loopback address with a port/);
  });

  it('needs the token: 401 without, a cookie from ?token= (then the page), Bearer for the API', async () => {
    const { token, port, auth } = await start(false);
    expect((await http(port, '/')).status).toBe(401);
    expect((await http(port, '/api/state')).status).toBe(401);
    expect((await http(port, `/?token=${'x'.repeat(token.length)}`)).status).toBe(401);
    const login = await http(port, `/?token=${token}`);
    expect(login.status).toBe(303);
    const cookie = String(login.headers['set-cookie']);
    expect(cookie).toMatch(/HttpOnly/);
    expect(cookie).toMatch(/SameSite=Strict/);
    const page = await http(port, '/', { headers: { cookie: cookie.split(';')[0]! } });
    expect(page.status).toBe(200);
    expect(page.headers['content-security-policy']).toMatch(/default-src 'none'/);
    expect(page.body).toContain('<title>captrap</title>');
    const state = JSON.parse((await http(port, '/api/state', { headers: auth })).body);
    expect(state).toMatchObject({ agents: [{ id: 'a1' }], actions: false, csrf: null });
  });

  it('refuses a foreign Host (DNS rebinding) and a foreign Origin, token or not', async () => {
    const { port, auth } = await start(false);
    expect((await http(port, '/api/state', { headers: { ...auth, host: `evil.example:${port}` } })).status).toBe(403);
    expect((await http(port, '/api/state', { headers: { ...auth, host: `127.0.0.1:${port + 1}` } })).status).toBe(403);
    expect((await http(port, '/api/state', { headers: { ...auth, origin: 'http://evil.example' } })).status).toBe(403);
    expect((await http(port, '/api/state', { headers: { ...auth, host: `localhost:${port}`, origin: `http://localhost:${port}` } })).status).toBe(200);
  });
});

describe('dashboard actions', () => {
  it('are refused when not enabled', async () => {
    const { port, auth } = await start(false);
    const r = await http(port, '/api/revoke', { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: '{"target":"cap_x"}' });
    expect(r.status).toBe(403);
    expect(acted).toEqual([]);
  });

  it('need the CSRF token when enabled, and pass the target through', async () => {
    acted.length = 0;
    const { port, auth } = await start(true);
    const { csrf } = JSON.parse((await http(port, '/api/state', { headers: auth })).body) as { csrf: string };
    expect(csrf).toMatch(/^[A-Za-z0-9_-]{20,}$/);
    const post = (headers: Record<string, string>, body = '{"target":"cap_x"}') => http(port, '/api/revoke', { method: 'POST', headers: { ...auth, ...headers }, body });
    expect((await post({})).status).toBe(403);
    expect((await post({ 'x-captrap-csrf': 'nope' })).status).toBe(403);
    expect((await post({ 'x-captrap-csrf': csrf }, 'not json')).status).toBe(400);
    expect((await post({ 'x-captrap-csrf': csrf }, '{"target":""}')).status).toBe(400);
    const ok = await post({ 'x-captrap-csrf': csrf });
    expect([ok.status, JSON.parse(ok.body)]).toEqual([200, { ok: true, result: { done: true } }]);
    expect(acted).toEqual(['revoke:cap_x']);
  });
});

describe('dashboard event stream', () => {
  it('sends audit records with their sequence number as id, resumes after Last-Event-ID, and says reset when that is gone', async () => {
    const { port, auth } = await start(false);
    for (let seq = 1; seq <= 5; seq++) d!.feed(seq, { type: 'access_denied', principal: 'a1', details: { code: 'E_TOOL_NOT_ALLOWED' } });
    const all = await http(port, '/events', { headers: auth, readMs: 300 });
    expect(all.headers['content-type']).toBe('text/event-stream');
    expect([...all.body.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]))).toEqual([1, 2, 3, 4, 5]);
    expect(all.body).toContain('"code":"E_TOOL_NOT_ALLOWED"');
    expect(all.body, 'agent usage arrives as agents events').toMatch(/event: agents/);
    const resumed = await http(port, '/events', { headers: { ...auth, 'last-event-id': '3' }, readMs: 200 });
    expect([...resumed.body.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]))).toEqual([4, 5]);
    expect(resumed.body).not.toContain('event: reset');
    // A ring of 2000: feed past it, then ask for something it no longer holds.
    for (let seq = 6; seq <= 2100; seq++) d!.feed(seq, { type: 'sandbox_started', principal: 'a1' });
    const stale = await http(port, '/events', { headers: { ...auth, 'last-event-id': '3' }, readMs: 300 });
    expect(stale.body).toContain('event: reset');
  });
});
