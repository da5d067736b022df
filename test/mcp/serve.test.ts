// `captrap serve` with mcpServers in its config: the HTTP front comes up with the sidecar, a
// client with a config token reaches its server at /mcp/NAME, and SIGTERM ends every session
// (the server's tree gone) before the sidecar's audit log closes.
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { alive, auditRecords, FIXTURE, NODE_MODULES, ROOT, sharedDir, textOf, waitFor } from './helpers.js';

const host = probeHost();
const canRun = host.isRoot;
if (!canRun) console.log('mcp serve: skipping: the gateway tests run confined sandboxes and need root');
const BASE = `captrap-mcpserve-${process.pid}`;
const TOKEN = 'serve-token-' + 'z'.repeat(20);

let dir: string | undefined;
let serve: ChildProcess | undefined;

afterAll(() => {
  if (serve && serve.exitCode === null) serve.kill('SIGKILL');
  removeCgroupBase(host, BASE);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!canRun)('captrap serve with mcpServers', () => {
  it('serves each entry at /mcp/NAME and ends every session on SIGTERM', async () => {
    dir = sharedDir('captrap-mcpserve-');
    writeFileSync(
      join(dir, 'captrap.json'),
      JSON.stringify({
        cgroupBase: BASE,
        audit: { flushIntervalMs: 20 },
        mcpServers: { fx: { command: 'node', args: [FIXTURE], view: { readOnly: [NODE_MODULES] }, clients: [{ principal: 'remote', token: TOKEN, constraints: { allowedTools: ['echo'] } }] } },
      }),
    );
    serve = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/runner/cli.ts'), 'serve', '--config', join(dir, 'captrap.json')], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CAPTRAP_LOG_LEVEL: 'warn' } });
    let err = '';
    let out = '';
    serve.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    serve.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((r) => serve!.on('exit', (code) => r(code)));
    await waitFor('serve to be ready', () => /^captrap: ready /m.test(out) || serve!.exitCode !== null, 30_000);
    const m = /mcp (http:\/\/127\.0\.0\.1:\d+\/mcp\/)NAME \(fx\)/.exec(err);
    expect(m, err).not.toBeNull();
    const transport = new StreamableHTTPClientTransport(new URL(`${m![1]}fx`), { requestInit: { headers: { Authorization: `Bearer ${TOKEN}` } } });
    const client = new Client({ name: 'serve-test', version: '1' });
    await client.connect(transport);
    expect((await client.listTools()).tools.map((t) => t.name)).toEqual(['echo']);
    expect(textOf(await client.callTool({ name: 'echo', arguments: { text: 'via serve' } }))).toBe('via serve');
    const started = await waitFor('sandbox_started in the sidecar log', () => auditRecords(join(dir!, '.captrap/audit')).find((r) => r.type === 'sandbox_started' && r.details?.['mcpServer'] === 'fx'));
    const pid = started.details!['pid'] as number;
    expect(alive(pid)).toBe(true);
    serve.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(alive(pid)).toBe(false);
    const records = auditRecords(join(dir, '.captrap/audit'));
    const exitedAt = records.findIndex((r) => r.type === 'sandbox_exited' && r.details?.['mcpServer'] === 'fx');
    expect(exitedAt).toBeGreaterThan(-1);
    expect(records.at(-1)?.type).toBe('audit_closed');
  });
});
