// The dashboard: one static page and a read-only JSON/SSE API over node:http, on loopback only.
//
// Access: a bearer token (kept in the state dir, 0600). A browser presents it once as
// `/?token=...`; the answer sets an HttpOnly, SameSite=Strict cookie and redirects to `/`, so the
// token leaves the address bar. Every request must name this server in Host (127.0.0.1, localhost
// or [::1] with its port) and, when it carries an Origin, that same origin: a page on another
// site, or a DNS name rebound to 127.0.0.1, gets 403. Actions (revoke, kill, release) exist only
// when the config enables them, and each POST must carry the CSRF token the state answer gives.
//
// The live stream is server-sent events: every audit record the sidecar writes, with the audit
// sequence number as the event id, so a reconnecting browser (Last-Event-ID) gets exactly what it
// missed from a bounded ring, or a `reset` if that is gone. Agent usage comes every second as
// an `agents` event (no id) for the sparklines.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { AuditEvent } from '../kernel/events.js';
import { CaptrapError } from '../errors.js';
import { DASHBOARD_PAGE } from './dashboard-page.js';

export class DashboardError extends CaptrapError {
  constructor(message: string, details?: Record<string, unknown>, cause?: unknown) {
    super('E_DASHBOARD', message, details, { cause });
  }
}

/** What the sidecar lets the dashboard read and do. */
export interface DashboardSource {
  /** agents (AgentRow[]), capabilities (the delegation tree), stats: plain JSON. */
  state(): Promise<Record<string, unknown>>;
  /** revoke | kill | release; throws a CaptrapError for a bad target. */
  act?(action: 'revoke' | 'kill' | 'release', target: string): Promise<unknown>;
}

export interface DashboardOptions {
  /** `127.0.0.1:PORT`, `localhost:PORT` or `[::1]:PORT` (PORT 0: any free port). */
  listen: string;
  token: string;
  source: DashboardSource;
  /** Allow revoke / kill / release from the page (default false: read-only). */
  actions?: boolean;
  /** Stream events kept for Last-Event-ID resumption. */
  ringSize?: number;
  /** Interval of the `agents` events, ms. */
  agentsIntervalMs?: number;
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);
const COOKIE = 'captrap_dashboard';

/** `host:port` of a loopback listen address; anything else is refused (the page is not for the network). */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(\[::1\]|[^:]+):(\d{1,5})$/.exec(listen);
  const host = m?.[1];
  const port = Number(m?.[2]);
  if (!host || !LOOPBACK.has(host) || !Number.isInteger(port) || port > 65535) {
    throw new DashboardError(`dashboard.listen must be a loopback address with a port (127.0.0.1:PORT, localhost:PORT or [::1]:PORT), got '${listen}'`, { listen });
  }
  return { host: host === '[::1]' ? '::1' : host, port };
}

interface StreamEvent {
  seq: number;
  line: string;
}

export class Dashboard {
  private readonly server: Server;
  private readonly clients = new Set<ServerResponse>();
  private readonly ring: StreamEvent[] = [];
  private readonly csrf: string;
  private timer: NodeJS.Timeout | undefined;
  private port = 0;
  private agentsLine = '';

  private constructor(private readonly o: DashboardOptions) {
    this.csrf = createHmac('sha256', o.token).update('captrap dashboard csrf').digest('base64url');
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => this.fail(res, 500, (err as Error).message));
    });
  }

  static async start(o: DashboardOptions): Promise<Dashboard> {
    const { host, port } = parseListen(o.listen);
    if (o.token.length < 32) throw new DashboardError('the dashboard token must be at least 32 characters');
    const d = new Dashboard(o);
    await new Promise<void>((resolve, reject) => {
      d.server.once('error', (err) => reject(new DashboardError(`dashboard cannot listen on ${o.listen}: ${err.message}`, { listen: o.listen }, err)));
      d.server.listen(port, host, () => resolve());
    });
    d.port = (d.server.address() as AddressInfo).port;
    d.timer = setInterval(() => void d.pushAgents(), o.agentsIntervalMs ?? 1000);
    d.timer.unref();
    return d;
  }

  get url(): string {
    const { host } = parseListen(this.o.listen);
    return `http://${host === '::1' ? '[::1]' : host}:${this.port}/`;
  }

  /** One audit record (with its sequence number) into the live stream. */
  feed(seq: number, event: AuditEvent): void {
    const line = `id: ${seq}\nevent: audit\ndata: ${JSON.stringify({ seq, at: new Date().toISOString(), ...event })}\n\n`;
    this.ring.push({ seq, line });
    if (this.ring.length > (this.o.ringSize ?? 2000)) this.ring.shift();
    for (const c of this.clients) c.write(line);
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const c of this.clients) c.end();
    this.clients.clear();
    await new Promise<void>((r) => this.server.close(() => r()));
    this.server.closeAllConnections?.();
  }

  private async pushAgents(): Promise<void> {
    if (this.clients.size === 0) return;
    try {
      const s = await this.o.source.state();
      this.agentsLine = `event: agents\ndata: ${JSON.stringify({ at: Date.now(), agents: s['agents'] ?? [] })}\n\n`;
      for (const c of this.clients) c.write(this.agentsLine);
    } catch {
      // the next tick tries again
    }
  }

  // ---- requests ---------------------------------------------------------------------------

  private allowedHosts(): Set<string> {
    return new Set([`127.0.0.1:${this.port}`, `localhost:${this.port}`, `[::1]:${this.port}`]);
  }

  private tokenOk(presented: string | undefined): boolean {
    if (presented === undefined) return false;
    const a = Buffer.from(presented);
    const b = Buffer.from(this.o.token);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  private authorized(req: IncomingMessage): boolean {
    const auth = req.headers.authorization;
    if (auth?.startsWith('Bearer ') && this.tokenOk(auth.slice(7))) return true;
    const cookie = (req.headers.cookie ?? '').split(';').map((c) => c.trim()).find((c) => c.startsWith(`${COOKIE}=`));
    return this.tokenOk(cookie?.slice(COOKIE.length + 1));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    res.setHeader('cache-control', 'no-store');
    res.setHeader('x-content-type-options', 'nosniff');
    res.setHeader('referrer-policy', 'no-referrer');
    // DNS rebinding: the name the browser used must be this server's own.
    const hosts = this.allowedHosts();
    if (!hosts.has(req.headers.host ?? '')) return this.fail(res, 403, 'Host not allowed');
    const origin = req.headers.origin;
    if (origin !== undefined && !hosts.has(origin.replace(/^http:\/\//, ''))) return this.fail(res, 403, 'Origin not allowed');
    const url = new URL(req.url ?? '/', 'http://dashboard');
    if (req.method === 'GET' && url.pathname === '/' && url.searchParams.has('token')) {
      if (!this.tokenOk(url.searchParams.get('token') ?? undefined)) return this.fail(res, 401, 'bad token');
      res.setHeader('set-cookie', `${COOKIE}=${this.o.token}; HttpOnly; SameSite=Strict; Path=/`);
      res.writeHead(303, { location: '/' });
      res.end();
      return;
    }
    if (!this.authorized(req)) return this.fail(res, 401, 'a dashboard token is required: open the URL captrap printed (…/?token=…), or send Authorization: Bearer <token>');
    if (req.method === 'GET' && url.pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-security-policy': "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'" });
      res.end(DASHBOARD_PAGE);
      return;
    }
    if (req.method === 'GET' && url.pathname === '/api/state') {
      const s = await this.o.source.state();
      return this.json(res, 200, { ...s, actions: this.o.actions === true, csrf: this.o.actions ? this.csrf : null });
    }
    if (req.method === 'GET' && url.pathname === '/events') return this.stream(req, res);
    if (req.method === 'POST' && url.pathname.startsWith('/api/')) return this.action(req, res, url.pathname.slice(5));
    this.fail(res, 404, 'not found');
  }

  private stream(req: IncomingMessage, res: ServerResponse): void {
    res.writeHead(200, { 'content-type': 'text/event-stream', connection: 'keep-alive' });
    res.write('retry: 1000\n\n');
    const last = Number(req.headers['last-event-id'] ?? new URL(req.url ?? '/', 'http://d').searchParams.get('after') ?? NaN);
    if (Number.isInteger(last)) {
      const oldest = this.ring[0]?.seq;
      if (oldest !== undefined && last < oldest - 1) res.write('event: reset\ndata: {}\n\n');
      for (const e of this.ring) if (e.seq > last) res.write(e.line);
    } else {
      for (const e of this.ring.slice(-200)) res.write(e.line);
    }
    if (this.agentsLine) res.write(this.agentsLine);
    this.clients.add(res);
    req.on('close', () => this.clients.delete(res));
  }

  private async action(req: IncomingMessage, res: ServerResponse, name: string): Promise<void> {
    if (!this.o.actions || !this.o.source.act) return this.fail(res, 403, 'actions are disabled (dashboard.actions: false)');
    const csrf = req.headers['x-captrap-csrf'];
    if (typeof csrf !== 'string' || csrf.length !== this.csrf.length || !timingSafeEqual(Buffer.from(csrf), Buffer.from(this.csrf))) return this.fail(res, 403, 'missing or wrong CSRF token');
    if (name !== 'revoke' && name !== 'kill' && name !== 'release') return this.fail(res, 404, 'unknown action');
    let body = '';
    for await (const c of req) {
      body += (c as Buffer).toString();
      if (body.length > 4096) return this.fail(res, 413, 'body too large');
    }
    let target: unknown;
    try {
      target = (JSON.parse(body) as { target?: unknown }).target;
    } catch {
      return this.fail(res, 400, 'body must be JSON: {"target": "..."}');
    }
    if (typeof target !== 'string' || target === '' || target.length > 1024) return this.fail(res, 400, 'target must be a non-empty string');
    try {
      this.json(res, 200, { ok: true, result: await this.o.source.act(name, target) });
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      this.json(res, 400, { ok: false, code: typeof code === 'string' ? code : 'E_INTERNAL', message: (err as Error).message });
    }
  }

  private json(res: ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  }

  private fail(res: ServerResponse, status: number, message: string): void {
    if (res.headersSent) {
      res.end();
      return;
    }
    this.json(res, status, { error: message });
  }
}

/** A fresh dashboard token. */
export function newDashboardToken(): string {
  return randomBytes(32).toString('base64url');
}
