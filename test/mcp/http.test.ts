// The Streamable HTTP front, in process, with a real audit log and real sandboxes, driven by the
// official SDK client's StreamableHTTPClientTransport: tokens map to principals, Host and Origin
// are checked, each session has its own upstream, and a session's end leaves nothing running.
import { mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CallToolResultSchema } from '@modelcontextprotocol/sdk/types.js';
import { AuditLog } from '../../src/kernel/audit.js';
import { Keyring } from '../../src/kernel/keyring.js';
import { generateSecret } from '../../src/kernel/keys.js';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { McpGateway } from '../../src/mcp/gateway.js';
import { McpHttpFront } from '../../src/mcp/http.js';
import { alive, auditRecords, cgroupDirs, CGROUP_BASE, EVERYTHING_SERVER, FS_SERVER, NODE_MODULES, sharedDir, textOf, waitFor } from './helpers.js';

const host = probeHost();
const canRun = host.isRoot;
if (!canRun) console.log('mcp http: skipping: the gateway tests run confined sandboxes and need root');

const TOKEN_A = 'token-a-' + 'x'.repeat(24);
const TOKEN_B = 'token-b-' + 'y'.repeat(24);

let state: string;
let wide: string;
let allowed: string;
let audit: AuditLog;
let gateway: McpGateway;
let front: McpHttpFront;
const clients: Client[] = [];

beforeAll(async () => {
  if (!canRun) return;
  state = sharedDir('captrap-mcphttp-state-');
  wide = sharedDir('captrap-mcphttp-wide-');
  allowed = join(wide, 'allowed');
  mkdirSync(allowed);
  chmodSync(allowed, 0o755);
  writeFileSync(join(allowed, 'a.txt'), 'inside over http\n', { mode: 0o644 });
  writeFileSync(join(wide, 'secret.txt'), 'outside\n', { mode: 0o644 });
  symlinkSync(join(wide, 'secret.txt'), join(allowed, 'link.txt'));
  writeFileSync(join(state, 'b.token'), TOKEN_B + '\n', { mode: 0o600 });
  audit = await AuditLog.open({ dir: join(state, 'audit') });
  gateway = new McpGateway(new Keyring({ id: 'k', secret: generateSecret() }), audit);
  front = await McpHttpFront.listen({
    gateway,
    servers: [
      {
        name: 'files',
        command: 'node',
        args: [FS_SERVER, wide],
        view: { readOnly: [NODE_MODULES] },
        cgroupBase: CGROUP_BASE,
        clients: [
          { principal: 'alice', token: TOKEN_A, operations: ['invoke'], constraints: { allowedTools: ['read_text_file', 'list_directory'], paths: [allowed] } },
          { principal: 'bob', tokenFile: join(state, 'b.token'), operations: ['read'], constraints: { paths: [allowed] } },
        ],
      },
      {
        name: 'everything',
        command: 'node',
        args: [EVERYTHING_SERVER, 'stdio'],
        view: { readOnly: [NODE_MODULES] },
        cgroupBase: CGROUP_BASE,
        clients: [{ principal: 'alice', token: TOKEN_A, operations: ['invoke'], constraints: { allowedSchemes: ['demo'] } }],
      },
    ],
  });
});

afterAll(async () => {
  if (!canRun) return;
  for (const c of clients) await c.close().catch(() => undefined);
  await front.close();
  gateway.close();
  await audit.close();
  removeCgroupBase(host, CGROUP_BASE);
  rmSync(wide, { recursive: true, force: true });
  rmSync(state, { recursive: true, force: true });
});

async function connect(server: string, token: string): Promise<{ client: Client; transport: StreamableHTTPClientTransport }> {
  const transport = new StreamableHTTPClientTransport(new URL(front.url(server)), { requestInit: { headers: { Authorization: `Bearer ${token}` } } });
  const client = new Client({ name: 'captrap-http-test', version: '1.0.0' });
  await client.connect(transport);
  clients.push(client);
  return { client, transport };
}

function raw(path: string, headers: Record<string, string>, body?: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: front.port, path, method: body === undefined ? 'GET' : 'POST', headers }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const INIT = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } });
const POST_HEADERS = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };

describe.skipIf(!canRun)('the MCP Streamable HTTP front', () => {
  it('refuses a missing or unknown token, a foreign Host and a foreign Origin before any session exists', async () => {
    const hostHeader = `127.0.0.1:${front.port}`;
    expect((await raw('/mcp/files', { ...POST_HEADERS, host: hostHeader }, INIT)).status).toBe(401);
    expect((await raw('/mcp/files', { ...POST_HEADERS, host: hostHeader, authorization: 'Bearer not-a-token-of-anyone' }, INIT)).status).toBe(401);
    expect((await raw('/mcp/files', { ...POST_HEADERS, host: 'evil.example', authorization: `Bearer ${TOKEN_A}` }, INIT)).status).toBe(403);
    expect((await raw('/mcp/files', { ...POST_HEADERS, host: hostHeader, origin: 'http://evil.example', authorization: `Bearer ${TOKEN_A}` }, INIT)).status).toBe(403);
    expect((await raw('/mcp/nope', { ...POST_HEADERS, host: hostHeader, authorization: `Bearer ${TOKEN_A}` }, INIT)).status).toBe(404);
    expect(front.sessionCount).toBe(0);
  });

  it('maps each token to its principal and capability: filtered lists, allowed and denied calls', async () => {
    const a = await connect('files', TOKEN_A);
    expect((await a.client.listTools()).tools.map((t) => t.name).sort()).toEqual(['list_directory', 'read_text_file']);
    expect(textOf(await a.client.callTool({ name: 'read_text_file', arguments: { path: join(allowed, 'a.txt') } }))).toContain('inside over http');
    for (const path of [join(wide, 'secret.txt'), join(allowed, '..', 'secret.txt'), join(allowed, 'link.txt')]) {
      const r = await a.client.callTool({ name: 'read_text_file', arguments: { path } });
      expect(r.isError, path).toBe(true);
      expect(textOf(r)).toContain('E_PATH_OUTSIDE_ROOTS');
    }
    const denied = await a.client.callTool({ name: 'write_file', arguments: { path: join(allowed, 'w.txt'), content: 'x' } });
    expect(textOf(denied)).toContain('E_TOOL_NOT_ALLOWED');

    // bob (token from a file) holds read-only operations: every read-only tool, no writer.
    const b = await connect('files', TOKEN_B);
    const names = (await b.client.listTools()).tools.map((t) => t.name);
    expect(names).toContain('read_text_file');
    expect(names).toContain('directory_tree');
    expect(names).not.toContain('write_file');
    expect(front.liveSessions().map((s) => s.principal).sort()).toEqual(['alice', 'bob']);
  });

  it('a session is its owner’s: another token cannot use its id', async () => {
    const a = await connect('files', TOKEN_A);
    const sid = a.transport.sessionId!;
    const r = await raw('/mcp/files', { ...POST_HEADERS, host: `127.0.0.1:${front.port}`, authorization: `Bearer ${TOKEN_B}`, 'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' }, JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/list' }));
    expect(r.status).toBe(403);
  });

  it('gates resources/read and passes progress over HTTP', async () => {
    const e = await connect('everything', TOKEN_A);
    const first = (await e.client.listResources()).resources[0]!;
    expect((await e.client.readResource({ uri: first.uri })).contents.length).toBeGreaterThan(0);
    await expect(e.client.readResource({ uri: 'https://example.com/' })).rejects.toThrow(/E_SCHEME_NOT_ALLOWED/);
    const progress: number[] = [];
    await e.client.callTool({ name: 'trigger-long-running-operation', arguments: { duration: 0.6, steps: 3 } }, CallToolResultSchema, { onprogress: (p) => progress.push(p.progress) });
    expect(progress.slice(0, 2)).toEqual([1, 2]);
  });

  it('ending a session kills its upstream’s whole tree and removes its cgroup', async () => {
    const a = await connect('files', TOKEN_A);
    const live = front.liveSessions().find((s) => s.id === a.transport.sessionId)!;
    expect(live.pid).toBeDefined();
    expect(alive(live.pid!)).toBe(true);
    expect(cgroupDirs(live.cgroup!).length).toBeGreaterThan(0);
    await a.transport.terminateSession();
    await waitFor('the session to end', () => !front.liveSessions().some((s) => s.id === live.id));
    await waitFor('the upstream to die', () => !alive(live.pid!));
    expect(cgroupDirs(live.cgroup!)).toEqual([]);
  });

  it('ends a session that stays idle, and its sandbox with it', async () => {
    const idle = await McpHttpFront.listen({ gateway, idleTimeoutMs: 300, servers: [{ name: 'files', command: 'node', args: [FS_SERVER, wide], view: { readOnly: [NODE_MODULES] }, cgroupBase: CGROUP_BASE, clients: [{ principal: 'alice', token: TOKEN_A, operations: ['invoke'], constraints: {} }] }] });
    try {
      const transport = new StreamableHTTPClientTransport(new URL(idle.url('files')), { requestInit: { headers: { Authorization: `Bearer ${TOKEN_A}` } } });
      const client = new Client({ name: 'idle', version: '1' });
      await client.connect(transport);
      const s = idle.liveSessions()[0]!;
      expect(alive(s.pid!)).toBe(true);
      // While the client holds its stream open it is there, however quiet.
      await new Promise((r) => setTimeout(r, 900));
      expect(idle.sessionCount).toBe(1);
      // It vanishes without DELETE: its connections close, nothing ends the session but the idle timer.
      await client.close();
      await waitFor('the idle session to end', () => idle.sessionCount === 0, 5000);
      await waitFor('its server to die', () => !alive(s.pid!), 5000);
      expect(cgroupDirs(s.cgroup!)).toEqual([]);
    } finally {
      await idle.close();
    }
  });

  it('audits HTTP decisions in the same chain, with the server and principal', async () => {
    await new Promise((r) => setTimeout(r, 250));
    const records = auditRecords(join(state, 'audit'));
    expect(records.some((r) => r.type === 'access_denied' && r.details?.['code'] === 'E_UNAUTHENTICATED' && r.details?.['mcpServer'] === 'files')).toBe(true);
    expect(records.some((r) => r.type === 'access_denied' && r.principal === 'alice' && r.details?.['code'] === 'E_PATH_OUTSIDE_ROOTS' && r.details?.['mcpServer'] === 'files')).toBe(true);
    expect(records.some((r) => r.type === 'capability_validated' && r.principal === 'bob' && r.details?.['mcpMethod'] === 'tools/list')).toBe(true);
    expect(readFileSync(join(state, 'b.token'), 'utf8')).toContain(TOKEN_B);
    expect(JSON.stringify(records)).not.toContain(TOKEN_A);
  });
});
