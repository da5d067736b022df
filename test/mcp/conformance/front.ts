// The HTTP front in front of server-everything (stdio, sandboxed), for the conformance suite:
// `tsx test/mcp/conformance/front.ts PORT` prints `ready http://localhost:PORT/mcp` and serves
// until stdin ends or SIGTERM. The suite cannot send a bearer token, so a second listener on
// PORT adds this run's token and passes everything else (Host and Origin included) unchanged:
// the DNS-rebinding checks are still the front's.
import { mkdtempSync, rmSync } from 'node:fs';
import { request, createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuditLog } from '../../../src/kernel/audit.js';
import { Keyring } from '../../../src/kernel/keyring.js';
import { generateSecret } from '../../../src/kernel/keys.js';
import { removeCgroupBase } from '../../../src/isolation/cgroup.js';
import { probeHost } from '../../../src/isolation/host.js';
import { McpGateway } from '../../../src/mcp/gateway.js';
import { McpHttpFront } from '../../../src/mcp/http.js';

const ROOT = join(import.meta.dirname, '../../..');
const port = Number(process.argv[2] ?? 3918);
const token = generateSecret().toString('hex');
const base = `captrap-conformance-${process.pid}`;
const state = mkdtempSync(join(tmpdir(), 'captrap-conformance-'));
const audit = await AuditLog.open({ dir: join(state, 'audit') });
const gateway = new McpGateway(new Keyring({ id: 'k', secret: generateSecret() }), audit);
const front = await McpHttpFront.listen({
  gateway,
  allowedHosts: [`localhost:${port}`, `127.0.0.1:${port}`],
  allowedOrigins: [`http://localhost:${port}`, `http://127.0.0.1:${port}`],
  servers: [
    {
      name: 'everything',
      command: 'node',
      args: [join(ROOT, 'node_modules/@modelcontextprotocol/server-everything/dist/index.js'), 'stdio'],
      view: { readOnly: [join(ROOT, 'node_modules')] },
      cgroupBase: base,
      clients: [{ principal: 'conformance', token, operations: ['invoke'], constraints: { allowedSchemes: ['demo', 'test', 'http', 'https'] } }],
    },
  ],
  notice: (l) => process.stderr.write(`${l}\n`),
});
const relay = createServer((req, res) => {
  const up = request({ host: '127.0.0.1', port: front.port, method: req.method, path: req.url?.replace(/^\/mcp\b/, '/mcp/everything'), headers: { ...req.headers, authorization: `Bearer ${token}` } }, (r) => {
    res.writeHead(r.statusCode ?? 502, r.headers);
    r.pipe(res);
  });
  up.on('error', () => res.destroy());
  req.pipe(up);
});
await new Promise<void>((r) => relay.listen(port, '127.0.0.1', () => r()));
process.stdout.write(`ready http://localhost:${port}/mcp\n`);
const stop = async () => {
  relay.close();
  relay.closeAllConnections();
  await front.close();
  gateway.close();
  await audit.close();
  removeCgroupBase(probeHost(), base);
  rmSync(state, { recursive: true, force: true });
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.stdin.on('end', () => void stop());
process.stdin.resume();
