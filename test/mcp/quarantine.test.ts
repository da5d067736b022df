// The monitor's quarantine reaches the MCP HTTP front: an in-process sidecar with an mcpServers
// entry, whose client crosses a (lowered) threshold: its session and the session's upstream
// sandbox end at once, it is refused from then on, and `release` lets it in again.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { startMcpHttp, type ServeMcp } from '../../src/mcp/serve.js';
import { parseConfig } from '../../src/runner/config.js';
import { Sidecar } from '../../src/runner/sidecar.js';
import { alive, FIXTURE, NODE_MODULES, sharedDir, textOf, waitFor } from './helpers.js';

const host = probeHost();
if (!host.isRoot) console.log('mcp quarantine: skipping: the gateway runs confined sandboxes and needs root');
const BASE = `captrap-mcpq-${process.pid}`;
const TOKEN = 'quarantine-token-' + 'q'.repeat(20);

let sidecar: Sidecar | undefined;
let mcp: ServeMcp | undefined;
let dir: string | undefined;
afterEach(async () => {
  await mcp?.close();
  await sidecar?.stop();
  removeCgroupBase(host, BASE);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function connect(url: string): { client: Client; transport: StreamableHTTPClientTransport } {
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { Authorization: `Bearer ${TOKEN}` } } });
  return { client: new Client({ name: 'quarantine-test', version: '1' }), transport };
}

describe.skipIf(!host.isRoot)('quarantine and the MCP HTTP front', () => {
  it('refuses a quarantined client, ends its sessions, and lets it in again after release', async () => {
    dir = sharedDir('captrap-mcpq-');
    const config = parseConfig(
      {
        cgroupBase: BASE,
        audit: { flushIntervalMs: 20 },
        monitor: { rules: { 'tool-not-allowed': { threshold: 2, actions: ['alert', 'quarantine'] } } },
        mcpServers: { fx: { command: 'node', args: [FIXTURE], view: { readOnly: [NODE_MODULES] }, clients: [{ principal: 'remote', token: TOKEN, constraints: { allowedTools: ['echo'] } }] } },
      },
      join(dir, 'captrap.json'),
      dir,
    );
    sidecar = await Sidecar.start(config, { output: () => {}, notice: () => {} });
    mcp = await startMcpHttp(sidecar, () => {});
    const url = mcp!.front.url('fx');
    const a = connect(url);
    await a.client.connect(a.transport);
    expect(textOf(await a.client.callTool({ name: 'echo', arguments: { text: 'ok' } }))).toBe('ok');
    const upstream = mcp!.front.liveSessions()[0]!.pid!;
    expect(alive(upstream)).toBe(true);
    for (let i = 0; i < 2; i++) expect((await a.client.callTool({ name: 'crash', arguments: {} })).isError).toBe(true);
    expect(sidecar.monitoring?.monitor.isQuarantined('remote')).toBe(true);
    // Its session ends at once, the upstream sandbox with it; any further request is refused.
    await waitFor('the quarantined session to end', () => mcp!.front.liveSessions().length === 0 && !alive(upstream), 10_000);
    const c = connect(url);
    await expect(c.client.connect(c.transport)).rejects.toThrow(/403|quarantined/);
    // Released: a new session works.
    expect(sidecar.monitoring!.monitor.release('remote')).toBe(true);
    const b = connect(url);
    await b.client.connect(b.transport);
    expect(textOf(await b.client.callTool({ name: 'echo', arguments: { text: 'back' } }))).toBe('back');
    await b.client.close();
  }, 60_000);
});
