// The Streamable HTTP front: every configured MCP server at http://127.0.0.1:PORT/mcp/NAME. A
// client names itself with a bearer token from the config (-> principal and capability); Host
// and Origin are checked before anything else (a web page must not reach a local gateway by
// DNS rebinding); each MCP session (Mcp-Session-Id) gets its own upstream sandbox, which dies
// when the session is deleted or the front closes.
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { CaptrapError } from '../errors.js';
import type { McpClientSpec, McpGateway, McpServerSpec } from './gateway.js';
import type { GatewaySession } from './session.js';

export class McpHttpError extends CaptrapError {}

/** A client of one server as the HTTP front knows it: its capability template and its token. */
export interface HttpClientSpec extends McpClientSpec {
  token?: string;
  /** Read once at start; the token is its content, trimmed. */
  tokenFile?: string;
}

export interface HttpServerEntry extends McpServerSpec {
  clients: HttpClientSpec[];
}

export interface McpHttpOptions {
  gateway: McpGateway;
  servers: HttpServerEntry[];
  /** Default 127.0.0.1: the front is for clients on this machine. */
  host?: string;
  /** Default 0 (any free port). */
  port?: number;
  /** Host header values accepted besides 127.0.0.1:PORT and localhost:PORT. */
  allowedHosts?: string[];
  /** Origin header values accepted (a request without Origin is not from a browser page). */
  allowedOrigins?: string[];
  /** Bodies larger than this are refused (default 4 MiB). */
  maxBodyBytes?: number;
  /** Sessions open at once, across servers (default 64): each is a sandbox. */
  maxSessions?: number;
  /** A session with no request for this long is ended, its sandbox with it (default 30 min). */
  idleTimeoutMs?: number;
  notice?: (line: string) => void;
  /** Why a principal is quarantined by the sidecar's monitor (docs/monitoring.md), or undefined. */
  quarantineOf?: (principal: string) => string | undefined;
}

interface LiveSession {
  id: string;
  server: string;
  principal: string;
  transport: StreamableHTTPServerTransport;
  session: GatewaySession;
  lastSeen: number;
  /** Requests (and open streams) being handled: a session busy with one is never idle. */
  inflight: number;
  /** Of inflight, the requests proper (POST, DELETE): a GET is the long-lived server-to-client stream. */
  requests: number;
  /** Ended (endSessionsOf) while a request was in flight: closed when that request is answered. */
  ending?: boolean;
}

const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest();

function tokenOf(c: HttpClientSpec, server: string): string {
  const t = c.tokenFile !== undefined ? readFileSync(c.tokenFile, 'utf8').trim() : c.token;
  if (t === undefined || t.length < 16) throw new McpHttpError('E_CONFIG', `mcpServers.${server}: client ${c.principal} needs a bearer token of at least 16 characters (token or tokenFile) for the HTTP front`, { server, principal: c.principal });
  return t;
}

function reply(res: ServerResponse, status: number, message: string, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message }, id: null }));
}

export class McpHttpFront {
  private readonly http: HttpServer;
  private readonly o: McpHttpOptions;
  private readonly servers = new Map<string, HttpServerEntry>();
  /** Per server: sha256(token) -> client. */
  private readonly tokens = new Map<string, { hash: Buffer; client: HttpClientSpec }[]>();
  private readonly sessions = new Map<string, LiveSession>();
  private hosts = new Set<string>();
  private readonly origins: Set<string>;
  private closing = false;
  private reaper: NodeJS.Timeout | undefined;

  private constructor(o: McpHttpOptions) {
    this.o = o;
    for (const s of o.servers) {
      this.servers.set(s.name, s);
      this.tokens.set(
        s.name,
        s.clients.map((c) => ({ hash: sha256(tokenOf(c, s.name)), client: c })),
      );
    }
    this.origins = new Set(o.allowedOrigins ?? []);
    this.http = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        o.notice?.(`mcp http: ${(err as Error).message}`);
        reply(res, 500, 'internal error');
      });
    });
  }

  static async listen(o: McpHttpOptions): Promise<McpHttpFront> {
    const f = new McpHttpFront(o);
    await new Promise<void>((resolve, reject) => {
      f.http.once('error', reject);
      f.http.listen(o.port ?? 0, o.host ?? '127.0.0.1', () => resolve());
    });
    const port = f.port;
    f.hosts = new Set([`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, ...(o.allowedHosts ?? [])]);
    for (const h of ['127.0.0.1', 'localhost']) f.origins.add(`http://${h}:${port}`);
    // A client that vanished without DELETE must not keep its sandbox forever.
    const idle = o.idleTimeoutMs ?? 30 * 60_000;
    f.reaper = setInterval(() => f.reapIdle(idle), Math.min(60_000, idle));
    f.reaper.unref();
    return f;
  }

  get port(): number {
    return (this.http.address() as AddressInfo).port;
  }

  url(server: string): string {
    return `http://127.0.0.1:${this.port}/mcp/${server}`;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** The upstream sandboxes of live sessions (tests, `ps`). */
  liveSessions(): { id: string; server: string; principal: string; pid: number | undefined; cgroup: string | undefined }[] {
    return [...this.sessions.values()].map((s) => ({ id: s.id, server: s.server, principal: s.principal, pid: s.session.upstream.sandbox?.pid, cgroup: s.session.upstream.sandbox?.cgroupName }));
  }

  /** Ends every session of `principal` (and of its sub-principals `<principal>/...`), their upstream sandboxes with them. */
  endSessionsOf(principal: string): number {
    const mine = [...this.sessions.values()].filter((x) => x.principal === principal || x.principal.startsWith(`${principal}/`));
    for (const s of mine) {
      // Gone for every new request at once; a request being answered (often the very one that
      // caused this) gets its answer first.
      this.sessions.delete(s.id);
      if (s.requests > 0) s.ending = true;
      else this.closeSession(s);
    }
    return mine.length;
  }

  private closeSession(s: LiveSession): void {
    void s.transport.close().catch(() => undefined);
    void s.session.close();
  }

  private reapIdle(idleMs: number): void {
    const now = Date.now();
    for (const s of this.sessions.values()) {
      if (s.inflight > 0 || now - s.lastSeen < idleMs) continue;
      this.o.notice?.(`mcp http: session ${s.id} of ${s.principal} on ${s.server} idle for ${Math.round((now - s.lastSeen) / 1000)} s: ending it`);
      this.sessions.delete(s.id);
      void s.transport.close().catch(() => undefined);
      void s.session.close();
    }
  }

  private async track(live: LiveSession, fn: () => Promise<void>, stream = false): Promise<void> {
    live.inflight++;
    if (!stream) live.requests++;
    live.lastSeen = Date.now();
    try {
      await fn();
    } finally {
      live.inflight--;
      if (!stream) live.requests--;
      live.lastSeen = Date.now();
      if (live.ending && live.requests === 0) this.closeSession(live);
    }
  }

  private authenticate(req: IncomingMessage, server: string): HttpClientSpec | undefined {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    if (!m) return undefined;
    const h = sha256(m[1]!);
    // Every entry is compared, in constant time each: the answer's timing says nothing about which.
    let found: HttpClientSpec | undefined;
    for (const t of this.tokens.get(server) ?? []) if (timingSafeEqual(t.hash, h) && !found) found = t.client;
    return found;
  }

  private deny(server: string, principal: string | undefined, code: string, message: string): void {
    this.o.gateway.audit.record({ type: 'access_denied', ...(principal ? { principal } : {}), details: { mcpServer: server, mcpMethod: 'http', code, message } });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // DNS rebinding: a page on evil.example resolving to 127.0.0.1 still sends its own Host and Origin.
    const host = req.headers.host ?? '';
    if (!this.hosts.has(host.toLowerCase())) return reply(res, 403, `captrap: Host '${host}' is not allowed`);
    const origin = req.headers.origin;
    if (origin !== undefined && !this.origins.has(origin)) return reply(res, 403, `captrap: Origin '${origin}' is not allowed`);
    const url = new URL(req.url ?? '/', 'http://localhost');
    const m = /^\/mcp\/([A-Za-z][A-Za-z0-9_.-]{0,63})\/?$/.exec(url.pathname);
    const entry = m ? this.servers.get(m[1]!) : undefined;
    if (!entry) return reply(res, 404, `captrap: no MCP server at ${url.pathname} (servers: ${[...this.servers.keys()].map((n) => `/mcp/${n}`).join(', ') || 'none'})`);
    const client = this.authenticate(req, entry.name);
    if (!client) {
      this.deny(entry.name, undefined, 'E_UNAUTHENTICATED', 'missing or unknown bearer token');
      return reply(res, 401, 'captrap: a bearer token for this server is required', { 'www-authenticate': 'Bearer realm="captrap"' });
    }
    const quarantine = this.o.quarantineOf?.(client.principal);
    if (quarantine !== undefined) {
      this.endSessionsOf(client.principal);
      this.deny(entry.name, client.principal, 'E_QUARANTINED', `${client.principal} is quarantined by the monitor (${quarantine})`);
      return reply(res, 403, `captrap: ${client.principal} is quarantined by the monitor (${quarantine}); an operator lifts it with 'captrap release'`);
    }
    let body: unknown;
    if (req.method === 'POST') {
      const parsed = await this.readBody(req, res);
      if (parsed === undefined) return;
      body = parsed.value;
    }
    const sid = req.headers['mcp-session-id'];
    if (typeof sid === 'string') {
      const live = this.sessions.get(sid);
      if (!live || live.server !== entry.name) return reply(res, 404, 'captrap: unknown or expired session; initialize a new one');
      if (live.principal !== client.principal) {
        this.deny(entry.name, client.principal, 'E_WRONG_PRINCIPAL', `session ${sid} belongs to another principal`);
        return reply(res, 403, 'captrap: this session belongs to another client');
      }
      return this.track(live, () => live.transport.handleRequest(req, res, body), req.method === 'GET');
    }
    if (req.method !== 'POST' || !isInitializeRequest(body)) return reply(res, 400, 'captrap: no session: send initialize first (without Mcp-Session-Id)');
    if (this.closing) return reply(res, 503, 'captrap: shutting down');
    if (this.sessions.size >= (this.o.maxSessions ?? 64)) return reply(res, 503, `captrap: too many MCP sessions (${this.sessions.size}); close one first`);
    await this.startSession(entry, client, req, res, body);
  }

  private async startSession(entry: HttpServerEntry, client: HttpClientSpec, req: IncomingMessage, res: ServerResponse, body: unknown): Promise<void> {
    let live: LiveSession | undefined;
    const session = await this.o.gateway.session(entry, client, {
      onClose: () => {
        if (live) this.sessions.delete(live.id);
      },
      stderr: (c) => this.o.notice?.(`[${entry.name}] ${c.toString().trimEnd()}`),
    });
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => {
        live = { id, server: entry.name, principal: client.principal, transport, session, lastSeen: Date.now(), inflight: 1, requests: 1 };
        this.sessions.set(id, live);
      },
    });
    await session.connect(transport);
    try {
      await transport.handleRequest(req, res, body);
    } finally {
      if (live) {
        live.inflight--;
        live.requests--;
        live.lastSeen = Date.now();
        if (live.ending && live.requests === 0) this.closeSession(live);
      }
    }
    // An initialize that failed (the upstream did not start) leaves no session behind.
    if (!live) await session.close();
  }

  private readBody(req: IncomingMessage, res: ServerResponse): Promise<{ value: unknown } | undefined> {
    const max = this.o.maxBodyBytes ?? 4 * 1024 * 1024;
    return new Promise((resolve) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let done = false;
      req.on('data', (c: Buffer) => {
        if (done) return;
        size += c.length;
        if (size > max) {
          done = true;
          reply(res, 413, `captrap: request body over ${max} bytes`);
          req.destroy();
          resolve(undefined);
          return;
        }
        chunks.push(c);
      });
      req.on('end', () => {
        if (done) return;
        done = true;
        try {
          resolve({ value: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
        } catch {
          reply(res, 400, 'captrap: the body is not JSON');
          resolve(undefined);
        }
      });
      req.on('error', () => {
        if (!done) resolve(undefined);
        done = true;
      });
    });
  }

  /** Stops accepting, ends every session (each upstream's tree killed and gone), closes the port. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.reaper) clearInterval(this.reaper);
    const closing = new Promise<void>((resolve) => this.http.close(() => resolve()));
    this.http.closeAllConnections();
    await Promise.all([...this.sessions.values()].map((s) => s.session.close()));
    await closing;
  }
}
