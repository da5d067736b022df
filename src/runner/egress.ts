// The egress proxy: the only way out of a confined sandbox's network namespace. A bridge inside
// the namespace relays each TCP connection to this Unix socket, one proxy per sandbox, so the
// socket itself says which sandbox is talking. Policy is a callback (the kernel decides); this
// module only parses, canonicalises, asks, relays, bounds and reports.
import { existsSync, chmodSync, lstatSync, unlinkSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { domainToASCII } from 'node:url';
import { CaptrapError } from '../errors.js';
import { log } from '../log.js';

export interface EgressDecision { allowed: boolean; code?: string; reason?: string }
export type EgressKind = 'connect' | 'http';
export interface EgressEvent {
  host: string; port: number; method: string; kind: EgressKind; allowed: boolean; code?: string; reason?: string;
  /** Bytes exchanged with the upstream (request/response headers included for plain HTTP). */
  bytesUp: number; bytesDown: number; durationMs: number; error?: string;
}
export interface EgressProxyOptions {
  socketPath: string;
  /** `host` is canonical (see canonicalHost); IPv6 literals keep their brackets. */
  authorize(host: string, port: number, kind: EgressKind): EgressDecision;
  onEvent(e: EgressEvent): void;
  connectTimeoutMs?: number;
  idleTimeoutMs?: number;
  maxConnections?: number;
  maxHeaderBytes?: number;
  /** Opens the upstream; `host` has no brackets, ready for net.connect. */
  connect?: (host: string, port: number) => net.Socket;
}
export interface EgressProxy {
  readonly socketPath: string;
  readonly stats: { allowed: number; denied: number; active: number };
  close(): Promise<void>;
}

// domainToASCII silently truncates at '/', '\\', '?', '#' and percent-decodes, so anything that
// could make the checked name differ from the dialled one is refused before it gets there.
const FORBIDDEN = /[\s\p{Cc}@\\%/?#<>^|"'`{}]/u;
const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

export function canonicalHost(raw: string): string | undefined {
  if (typeof raw !== 'string' || raw.length === 0 || raw.length > 1024 || FORBIDDEN.test(raw)) return undefined;
  const bracketed = raw.startsWith('[');
  if (bracketed ? !raw.endsWith(']') || !net.isIPv6(raw.slice(1, -1)) : /[[\]:]/.test(raw)) return undefined;
  let h = domainToASCII(raw);
  if (h === '') return undefined;
  if (bracketed) return h.startsWith('[') && h.endsWith(']') ? h : undefined;
  if (h.endsWith('.')) h = h.slice(0, -1);
  if (net.isIPv4(h)) return h;
  if (h.length === 0 || h.length > 253 || !h.split('.').every((l) => LABEL.test(l))) return undefined;
  return h;
}

type Target = { host: string; port: number } | { error: string };

function parseHostPort(authority: string, defaultPort: number | undefined): Target {
  const close = authority.startsWith('[') ? authority.indexOf(']') : -1;
  const colon = authority.indexOf(':', close + 1);
  const rawHost = colon === -1 ? authority : authority.slice(0, colon);
  const rawPort = colon === -1 ? undefined : authority.slice(colon + 1);
  const host = canonicalHost(rawHost);
  if (!host) return { error: `malformed host ${JSON.stringify(rawHost.slice(0, 256))}` };
  if (rawPort === undefined && defaultPort !== undefined) return { host, port: defaultPort };
  const port = rawPort !== undefined && /^[0-9]{1,5}$/.test(rawPort) ? Number(rawPort) : 0;
  if (port < 1 || port > 65535) return { error: `a port 1..65535 is required, got ${JSON.stringify((rawPort ?? '').slice(0, 16))}` };
  return { host, port };
}

/** The request-target of a plain proxy request: `http://host[:port][/path][?query]`, nothing else. */
function parseAbsolute(url: string): (Target & { path?: string }) {
  const m = /^http:\/\/([^/?#]*)([^#]*)/i.exec(url);
  if (!m) return { error: /^[a-z][a-z0-9+.-]*:\/\//i.test(url) ? 'only http:// targets are proxied (use CONNECT for TLS)' : 'not a proxy request (the request-target must be absolute: http://host/...)' };
  // A backslash or '@' anywhere is where URL parsers disagree about which host is meant.
  if (url.includes('\\')) return { error: 'backslash in the request-target is refused' };
  const authority = m[1] ?? '';
  if (authority.includes('@')) return { error: 'userinfo in the request-target is refused' };
  const t = parseHostPort(authority, 80);
  const rest = m[2] ?? '';
  return 'error' in t ? t : { ...t, path: rest.startsWith('/') ? rest : `/${rest}` };
}

// Framing (content-length, transfer-encoding) is always set by the proxy itself, never copied.
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'content-length', 'upgrade', 'expect', 'host']);

function forwardHeaders(h: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const named = new Set(String(h.connection ?? '').toLowerCase().split(',').map((s) => s.trim()));
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined && !HOP_BY_HOP.has(k) && !named.has(k) && !k.startsWith('proxy-')) out[k] = v;
  return out;
}

const STATUS: Record<number, string> = { 400: 'Bad Request', 403: 'Forbidden', 431: 'Request Header Fields Too Large', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout' };

/** A proxy-made answer on a raw socket; the grace lets the peer read it before the socket goes. */
function rawReply(sock: net.Socket, status: number, body: string): void {
  if (!sock.writable) return void sock.destroy();
  sock.resume(); // the peer's FIN is only seen if its data is drained
  sock.end(`HTTP/1.1 ${status} ${STATUS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  setTimeout(() => sock.destroy(), 2000).unref();
}

function upstreamFailure(err: unknown): { status: number; error: string } {
  const code = (err as NodeJS.ErrnoException)?.code;
  const status = code === 'ETIMEDOUT' ? 504 : 502;
  return { status, error: `${status === 504 ? 'E_EGRESS_UPSTREAM_TIMEOUT' : 'E_EGRESS_UPSTREAM_UNREACHABLE'}: ${(err as Error)?.message ?? String(err)}` };
}

/** Let a clean close on one side flush what is queued for the other before it goes too. */
function closeAfter(other: net.Socket, hadError: boolean): void {
  if (hadError) other.destroy();
  else other.end(() => other.destroy());
}

async function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNREFUSED' ? resolve(false) : reject(e)));
  });
}

export async function startEgressProxy(o: EgressProxyOptions): Promise<EgressProxy> {
  const connectTimeoutMs = o.connectTimeoutMs ?? 10_000;
  const idleTimeoutMs = o.idleTimeoutMs ?? 300_000;
  const maxConnections = o.maxConnections ?? 64;
  const open = o.connect ?? ((host: string, port: number) => net.connect({ host, port }));
  const stats = { allowed: 0, denied: 0, active: 0 };
  const clients = new Set<net.Socket>();
  const refused = new Set<net.Socket>();
  const upstreams = new Set<net.Socket>();
  let upstreamsInFlight = 0;

  const emit = (e: EgressEvent): void => {
    try {
      o.onEvent(e);
    } catch (err) {
      log.error({ err, event: e }, 'egress onEvent threw; the event is lost but the proxy keeps serving');
    }
  };
  const decide = (host: string, port: number, kind: EgressKind): EgressDecision => {
    let d: EgressDecision;
    try {
      d = o.authorize(host, port, kind);
    } catch (err) {
      d = { allowed: false, code: 'E_EGRESS_POLICY_ERROR', reason: `the policy failed: ${(err as Error)?.message ?? String(err)}` };
    }
    const allowed = d?.allowed === true;
    if (allowed) stats.allowed++;
    else stats.denied++;
    return allowed ? { allowed, code: d.code, reason: d.reason } : { allowed, code: d?.code ?? 'E_EGRESS_DENIED', reason: d?.reason ?? `${host}:${port} is not allowed` };
  };
  const refusal = (code: string, reason: string) => `${code}: ${reason}\n`;
  // Opened here rather than by the caller so tunnels and plain requests share one connect timeout.
  const openUpstream = (host: string, port: number): net.Socket => {
    const s = open(host.startsWith('[') ? host.slice(1, -1) : host, port);
    upstreams.add(s);
    upstreamsInFlight++;
    const timer = setTimeout(() => s.destroy(Object.assign(new Error(`no connection to ${host}:${port} within ${connectTimeoutMs} ms`), { code: 'ETIMEDOUT' })), connectTimeoutMs);
    s.once('connect', () => { clearTimeout(timer); s.setTimeout(idleTimeoutMs); });
    s.on('timeout', () => s.destroy());
    s.once('close', () => { clearTimeout(timer); upstreams.delete(s); upstreamsInFlight--; });
    return s;
  };
  class UpstreamAgent extends http.Agent {
    override createConnection(opts: http.ClientRequestArgs): net.Socket {
      return openUpstream(String(opts.host), Number(opts.port));
    }
  }
  const agent = new UpstreamAgent({ keepAlive: false });

  // The Host header is never used (the target names the host), so its absence is no error.
  const server = http.createServer({ maxHeaderSize: o.maxHeaderBytes ?? 16 * 1024, requireHostHeader: false });
  // Node restores this after each keep-alive pause; left at 0 it would drop the idle bound.
  server.timeout = idleTimeoutMs;

  server.on('connect', (req: http.IncomingMessage, sock: net.Socket, head: Buffer) => {
    const t0 = Date.now();
    const base = { method: 'CONNECT', kind: 'connect' as const, bytesUp: 0, bytesDown: 0 };
    const t = parseHostPort(req.url ?? '', undefined);
    if ('error' in t) {
      stats.denied++;
      rawReply(sock, 400, refusal('E_EGRESS_BAD_REQUEST', t.error));
      return emit({ ...base, host: '', port: 0, allowed: false, code: 'E_EGRESS_BAD_REQUEST', reason: t.error, durationMs: Date.now() - t0 });
    }
    const d = decide(t.host, t.port, 'connect');
    const ev = { ...base, ...t, allowed: d.allowed, code: d.code, reason: d.reason };
    if (!d.allowed) {
      rawReply(sock, 403, refusal(ev.code!, ev.reason!));
      return emit({ ...ev, durationMs: Date.now() - t0 });
    }
    // Pipelined requests on one client connection each open an upstream, so those are bounded too.
    if (upstreamsInFlight >= maxConnections) return tooMany(sock, ev, t0);
    let error: string | undefined;
    let established = false;
    let closed = 0;
    const up = openUpstream(t.host, t.port);
    const done = () => {
      if (++closed === 2) emit({ ...ev, bytesUp: up.bytesWritten, bytesDown: up.bytesRead, durationMs: Date.now() - t0, error });
    };
    up.once('connect', () => {
      established = true;
      sock.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length > 0) up.write(head);
      sock.pipe(up).pipe(sock);
    });
    up.on('error', (err) => {
      const f = upstreamFailure(err);
      error ??= f.error;
      if (!established) rawReply(sock, f.status, `${f.error}\n`);
    });
    up.once('close', (hadError) => { if (established) closeAfter(sock, hadError); done(); });
    sock.once('close', (hadError) => {
      if (!established) error ??= 'the client went away before the upstream answered';
      closeAfter(up, hadError || !established);
      done();
    });
  });

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const t0 = Date.now();
    const t = parseAbsolute(req.url ?? '');
    const method = req.method ?? '';
    const refuse = (status: number, e: EgressEvent) => {
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' });
      res.end(e.error !== undefined ? `${e.error}\n` : refusal(e.code ?? 'E_EGRESS_DENIED', e.reason ?? ''));
      emit({ ...e, durationMs: Date.now() - t0 });
    };
    const base = { method, kind: 'http' as const, bytesUp: 0, bytesDown: 0, durationMs: 0 };
    if ('error' in t) {
      stats.denied++;
      return refuse(400, { ...base, host: '', port: 0, allowed: false, code: 'E_EGRESS_BAD_REQUEST', reason: t.error });
    }
    const d = decide(t.host, t.port, 'http');
    const ev: EgressEvent = { ...base, host: t.host, port: t.port, allowed: d.allowed, code: d.code, reason: d.reason };
    if (!d.allowed) return refuse(403, ev);
    if (upstreamsInFlight >= maxConnections) return refuse(503, { ...ev, error: `E_EGRESS_TOO_MANY_CONNECTIONS: more than ${maxConnections} upstream connections` });
    const headers = forwardHeaders(req.headers);
    headers.host = t.port === 80 ? t.host : `${t.host}:${t.port}`;
    // The parser refuses a request carrying both; without either there is no body. Stating the
    // framing here keeps a body from going out unframed (and read upstream as a second request).
    if (req.headers['content-length'] !== undefined) headers['content-length'] = req.headers['content-length'];
    else if (req.headers['transfer-encoding'] !== undefined) headers['transfer-encoding'] = 'chunked';
    let upSock: net.Socket | undefined;
    let error: string | undefined;
    let up: http.ClientRequest;
    try {
      up = http.request({ agent, host: t.host, port: t.port, method, path: t.path, headers, setHost: false });
    } catch (err) {
      return refuse(400, { ...ev, error: `E_EGRESS_BAD_REQUEST: ${(err as Error).message}` });
    }
    up.on('socket', (s: net.Socket) => { upSock = s; });
    up.on('response', (upRes) => {
      const h = forwardHeaders(upRes.headers);
      if (upRes.headers['content-length'] !== undefined) h['content-length'] = upRes.headers['content-length'];
      res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, h);
      upRes.pipe(res);
      upRes.on('error', () => res.destroy());
    });
    up.on('error', (err) => {
      const f = upstreamFailure(err);
      error ??= f.error;
      if (res.headersSent) return void res.destroy();
      res.writeHead(f.status, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' });
      res.end(`${f.error}\n`);
    });
    req.pipe(up);
    res.once('close', () => {
      if (!res.writableFinished) {
        error ??= 'the client went away before the response was complete';
        up.destroy();
      }
      emit({ ...ev, bytesUp: upSock?.bytesWritten ?? 0, bytesDown: upSock?.bytesRead ?? 0, durationMs: Date.now() - t0, error });
    });
  });

  server.on('upgrade', (req: http.IncomingMessage, sock: net.Socket) => {
    stats.denied++;
    const reason = 'protocol upgrades over plain HTTP are not proxied (use CONNECT)';
    rawReply(sock, 400, refusal('E_EGRESS_BAD_REQUEST', reason));
    emit({ host: '', port: 0, method: req.method ?? '', kind: 'http', allowed: false, code: 'E_EGRESS_BAD_REQUEST', reason, bytesUp: 0, bytesDown: 0, durationMs: 0 });
  });

  server.on('clientError', (err: NodeJS.ErrnoException, sock: net.Socket) => {
    // Only parser errors are a refused request; the rest are a broken socket. An answer is only
    // written when no response has started on this socket, or it would corrupt that response.
    const inFlight = (sock as net.Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
    if (!err.code?.startsWith('HPE_') || !sock.writable || inFlight) return void sock.destroy();
    const big = err.code === 'HPE_HEADER_OVERFLOW';
    const code = big ? 'E_EGRESS_HEADER_TOO_LARGE' : 'E_EGRESS_BAD_REQUEST';
    const reason = big ? 'request header too large' : `not a valid HTTP request (${err.code ?? err.message})`;
    stats.denied++;
    rawReply(sock, big ? 431 : 400, refusal(code, reason));
    emit({ host: '', port: 0, method: '', kind: 'http', allowed: false, code, reason, bytesUp: 0, bytesDown: 0, durationMs: 0 });
  });

  const tooMany = (sock: net.Socket, ev: Omit<EgressEvent, 'durationMs'>, t0: number) => {
    const reason = `more than ${maxConnections} connections`;
    rawReply(sock, 503, refusal('E_EGRESS_TOO_MANY_CONNECTIONS', reason));
    emit({ ...ev, durationMs: Date.now() - t0, error: `E_EGRESS_TOO_MANY_CONNECTIONS: ${reason}` });
  };

  // A plain net server accepts, so a connection over the limit is answered and counted without
  // ever reaching the HTTP parser; the rest are handed to the HTTP server.
  const listener = net.createServer({ allowHalfOpen: true }, (sock) => {
    sock.on('error', () => {});
    if (clients.size >= maxConnections) {
      stats.denied++;
      refused.add(sock);
      sock.once('close', () => refused.delete(sock));
      return tooMany(sock, { host: '', port: 0, method: '', kind: 'connect', allowed: false, code: 'E_EGRESS_TOO_MANY_CONNECTIONS', bytesUp: 0, bytesDown: 0 }, Date.now());
    }
    clients.add(sock);
    stats.active = clients.size;
    sock.once('close', () => { clients.delete(sock); stats.active = clients.size; });
    sock.setTimeout(idleTimeoutMs);
    sock.on('timeout', () => sock.destroy());
    server.emit('connection', sock);
  });

  if (existsSync(o.socketPath)) {
    if (!lstatSync(o.socketPath).isSocket()) throw new CaptrapError('E_EGRESS_SOCKET', `${o.socketPath} exists and is not a socket; refusing to replace it`, { path: o.socketPath });
    if (await socketAnswers(o.socketPath)) throw new CaptrapError('E_EGRESS_SOCKET', `something is already listening on ${o.socketPath}`, { path: o.socketPath });
    unlinkSync(o.socketPath);
  }
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    // The bind happens inside listen(), synchronously, so the umask is only changed around it
    // and the socket is owner-only from the moment it exists.
    const old = process.umask(0o177);
    try {
      listener.listen(o.socketPath, () => { listener.off('error', reject); resolve(); });
    } finally {
      process.umask(old);
    }
  });
  chmodSync(o.socketPath, 0o600);

  let closing: Promise<void> | undefined;
  return {
    socketPath: o.socketPath,
    stats,
    close() {
      closing ??= new Promise<void>((resolve) => {
        listener.close(() => resolve());
        for (const s of [...clients, ...refused]) s.destroy();
        for (const s of upstreams) s.destroy();
        agent.destroy();
        try {
          unlinkSync(o.socketPath);
        } catch {
          // already gone
        }
      });
      return closing;
    },
  };
}
