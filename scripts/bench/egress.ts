// Egress bench: what captrap's egress proxy adds to an HTTP request. A local HTTP server on
// 127.0.0.1 answers small GETs; the baseline is a request straight to it, then the same request
// through the proxy as plain HTTP (absolute-form) and through a CONNECT tunnel, each on a fresh
// connection as a sandboxed tool's curl would make it. Policy: one allowedDomains entry.
import { request, createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { entryMatches, parseDomainEntry } from '../../src/kernel/domains.js';
import { startEgressProxy } from '../../src/runner/egress.js';
import { latencyRow, percentile, sampleAsync, type BenchSection } from './harness.js';

const RUNS = 2000;

function get(o: { port?: number; socketPath?: string; path: string; host: string }): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = request({ ...(o.socketPath ? { socketPath: o.socketPath } : { host: '127.0.0.1', port: o.port }), path: o.path, headers: { host: o.host }, agent: false }, (res) => {
      res.resume();
      res.once('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`))));
    });
    req.once('error', reject);
    req.end();
  });
}

function tunnel(socketPath: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = connect(socketPath);
    let buf = '';
    let stage = 0;
    s.setEncoding('latin1');
    s.once('error', reject);
    s.on('data', (d: string) => {
      buf += d;
      if (stage === 0 && buf.includes('\r\n\r\n')) {
        if (!buf.startsWith('HTTP/1.1 200')) return reject(new Error(buf.split('\r\n')[0]));
        stage = 1;
        buf = '';
        s.write(`GET /x HTTP/1.1\r\nHost: localhost:${port}\r\nConnection: close\r\n\r\n`);
      }
    });
    s.once('end', () => {
      s.destroy();
      resolve();
    });
    s.write(`CONNECT localhost:${port} HTTP/1.1\r\nHost: localhost:${port}\r\n\r\n`);
  });
}

export async function bench(): Promise<BenchSection> {
  const server: Server = createServer((_req, res) => res.end('ok\n'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const dir = mkdtempSync(join(tmpdir(), 'captrap-bench-egress-'));
  const entries = [parseDomainEntry(`localhost:${port}`)!];
  const proxy = await startEgressProxy({
    socketPath: join(dir, 'egress.sock'),
    authorize: (host, p) => (entries.some((e) => entryMatches(e, { host, port: p })) ? { allowed: true } : { allowed: false, code: 'E_DOMAIN_NOT_ALLOWED' }),
    onEvent: () => undefined,
    // localhost resolves here; dial 127.0.0.1 directly so DNS is not what is measured.
    connect: (_host, p) => connect(p, '127.0.0.1'),
  });
  try {
    const direct = await sampleAsync(() => get({ port, path: '/x', host: `localhost:${port}` }), RUNS, 50);
    const base = percentile(direct, 50);
    const plain = await sampleAsync(() => get({ socketPath: proxy.socketPath, path: `http://localhost:${port}/x`, host: `localhost:${port}` }), RUNS, 50);
    const conn = await sampleAsync(() => tunnel(proxy.socketPath, port), RUNS, 50);
    return {
      section: 'egress',
      rows: [
        latencyRow('HTTP GET direct to 127.0.0.1 (new connection)', direct, { note: 'baseline' }),
        latencyRow('HTTP GET through the egress proxy (plain HTTP)', plain, { baseline: 'direct', ratio: percentile(plain, 50) / base, note: 'policy check + a second connection + header rewrite' }),
        latencyRow('HTTP GET through a CONNECT tunnel', conn, { baseline: 'direct', ratio: percentile(conn, 50) / base, note: 'CONNECT round trip, then bytes relayed' }),
      ],
    };
  } finally {
    await proxy.close();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
