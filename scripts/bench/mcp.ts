// MCP gateway bench: what `captrap mcp` adds to a tools/call and a tools/list. The baseline is
// the SDK client talking straight to the same server (test/fixtures/mcp/fixture-server.mjs, a
// low-level SDK server) over stdio; the measured path is the same client talking to `captrap mcp`
// in front of it (the server confined in its sandbox, every call decided by the kernel and
// audited). Then tools/list with 100 tools (50 allowed), both ways, and the gate's filter alone.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { MemoryAuditSink } from '../../src/kernel/events.js';
import { Keyring } from '../../src/kernel/keyring.js';
import { generateSecret } from '../../src/kernel/keys.js';
import { SecurityKernel } from '../../src/kernel/kernel.js';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { ContextualAuditSink } from '../../src/mcp/audit-context.js';
import { McpGate } from '../../src/mcp/gate.js';
import { latencyRow, percentile, sampleAsync, sampleSync, type BenchRow, type BenchSection } from './harness.js';

const ROOT = join(import.meta.dirname, '../..');
const FIXTURE = join(ROOT, 'test/fixtures/mcp/fixture-server.mjs');
const CALLS = 1000;
const LISTS = 200;
const BASE = `captrap-bench-mcp-${process.pid}`;

function cliArgs(): string[] {
  // `npm run bench` builds first: the built CLI starts faster and is what users run.
  const dist = join(ROOT, 'dist/runner/cli.js');
  return existsSync(dist) && process.env.CAPTRAP_CLI_FROM_DIST === '1' ? [dist] : ['--import', 'tsx', join(ROOT, 'src/runner/cli.ts')];
}

async function connect(command: string, args: string[], env: Record<string, string>): Promise<Client> {
  const client = new Client({ name: 'bench', version: '1' });
  await client.connect(new StdioClientTransport({ command, args, env: { PATH: process.env.PATH ?? '', ...env }, cwd: ROOT, stderr: 'ignore' }));
  return client;
}

function pair(name: string, direct: number[], gw: number[], baseline: string): BenchRow {
  const p50 = percentile(gw, 50) / percentile(direct, 50);
  const p99 = percentile(gw, 99) / percentile(direct, 99);
  return latencyRow(name, gw, { baseline, ratio: p50, p99Ratio: p99, note: `p50 ${p50.toFixed(2)}x, p99 ${p99.toFixed(2)}x of direct` });
}

export async function bench(): Promise<BenchSection> {
  const rows: BenchRow[] = [];
  if (!probeHost().isRoot) {
    return { section: 'mcp', rows: [{ name: 'skipped', note: 'the gateway confines its upstream and needs root' }] };
  }
  const state = mkdtempSync(join(tmpdir(), 'captrap-bench-mcp-'));
  const root = mkdtempSync(join(tmpdir(), 'captrap-bench-mcp-root-'));
  const allowTools = ['echo', 'stat_path', ...Array.from({ length: 50 }, (_, i) => `tool-${i * 2}`)].join(',');
  const env = { EXTRA_TOOLS: '100' };
  const direct = await connect(process.execPath, [FIXTURE], env);
  const gateway = await connect(
    process.execPath,
    [...cliArgs(), 'mcp', '--state-dir', state, '--cgroup-base', BASE, '--allow-tools', allowTools, '--paths', root, '--ro', join(ROOT, 'node_modules'), '--env', 'EXTRA_TOOLS=100', '--', 'node', FIXTURE],
    {},
  );
  try {
    const echo = (c: Client) => () => c.callTool({ name: 'echo', arguments: { text: 'hello' } });
    const stat = (c: Client) => () => c.callTool({ name: 'stat_path', arguments: { path: join(root, 'x.txt') } });
    // Side by side, alternating blocks, so machine noise lands on both.
    const d1: number[] = [];
    const g1: number[] = [];
    const d2: number[] = [];
    const g2: number[] = [];
    for (let block = 0; block < 10; block++) {
      d1.push(...(await sampleAsync(echo(direct), CALLS / 10, block === 0 ? 50 : 2)));
      g1.push(...(await sampleAsync(echo(gateway), CALLS / 10, block === 0 ? 50 : 2)));
      d2.push(...(await sampleAsync(stat(direct), CALLS / 10, 2)));
      g2.push(...(await sampleAsync(stat(gateway), CALLS / 10, 2)));
    }
    for (const a of [d1, g1, d2, g2]) a.sort((x, y) => x - y);
    rows.push(latencyRow('tools/call echo, direct', d1));
    rows.push(pair('tools/call echo, through captrap mcp', d1, g1, 'tools/call echo, direct'));
    rows.push(latencyRow('tools/call with a path, direct', d2));
    rows.push(pair('tools/call with a path, through captrap mcp', d2, g2, 'tools/call with a path, direct'));

    const ld = await sampleAsync(() => direct.listTools(), LISTS, 10);
    const lg = await sampleAsync(() => gateway.listTools(), LISTS, 10);
    const shown = (await gateway.listTools()).tools.length;
    rows.push(latencyRow('tools/list 105 tools, direct', ld));
    rows.push({ ...pair('tools/list 105 tools -> 52 shown, through captrap mcp', ld, lg, 'tools/list 105 tools, direct'), note: `${shown} of 105 shown; p50 ${(percentile(lg, 50) / percentile(ld, 50)).toFixed(2)}x, p99 ${(percentile(lg, 99) / percentile(ld, 99)).toFixed(2)}x of direct` });

    // The filter alone, in process: what the gate adds to a list of 100 tools.
    const tools = (await direct.listTools()).tools;
    const audit = new ContextualAuditSink(new MemoryAuditSink());
    const kernel = new SecurityKernel({ keys: new Keyring({ id: 'k', secret: generateSecret() }), audit: { record() {} } });
    const capability = kernel.requestCapability('bench', { type: 'tool', pattern: '*' }, ['read'], { allowedTools: allowTools.split(',') });
    const gate = new McpGate({ kernel, audit, server: 'bench', capability });
    const f = sampleSync(() => gate.filterTools(tools), 2000, 200);
    rows.push(latencyRow('gate.filterTools, 105 tools (in process)', f, { note: `${gate.filterTools(tools).length} shown (read-only capability)` }));
  } finally {
    await gateway.close().catch(() => undefined);
    await direct.close().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 500));
    removeCgroupBase(probeHost(), BASE);
    rmSync(state, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  }
  return { section: 'mcp', rows };
}
