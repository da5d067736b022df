// `captrap mcp` in front of the official reference servers (and a small fixture server), driven
// by the official SDK client over stdio. Each upstream is given a WIDER root than the client's
// capability, so every path denial here is captrap's, not the server's.
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { CallToolResultSchema, McpError } from '@modelcontextprotocol/sdk/types.js';
import { verifyAuditLog } from '../../src/kernel/audit.js';
import { readEd25519PublicKey, readSecretFile } from '../../src/kernel/keys.js';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { GATEWAY_ERRORS } from '../../src/mcp/session.js';
import { alive, auditRecords, cgroupDirs, CGROUP_BASE, EVERYTHING_SERVER, FIXTURE, FS_SERVER, MEMORY_SERVER, NODE_MODULES, ROOT, sharedDir, startGateway, textOf, waitFor, type Gateway } from './helpers.js';

const host = probeHost();
const canRun = host.isRoot;
if (!canRun) console.log('mcp stdio: skipping: the gateway tests run confined sandboxes and need root');

let state: string;
let wide: string;
let allowed: string;
const open: Gateway[] = [];

beforeAll(() => {
  state = sharedDir('captrap-mcp-state-');
  // The server may serve all of `wide`; the client's capability covers only `wide/allowed`.
  wide = sharedDir('captrap-mcp-wide-');
  allowed = join(wide, 'allowed');
  mkdirSync(allowed);
  // chmod after mkdir: the umask would narrow the mode given to mkdir. The server (uid 65534) writes here.
  chmodSync(allowed, 0o777);
  writeFileSync(join(allowed, 'a.txt'), 'inside the root\n', { mode: 0o644 });
  writeFileSync(join(wide, 'secret.txt'), 'outside the capability\n', { mode: 0o644 });
  symlinkSync(join(wide, 'secret.txt'), join(allowed, 'link.txt'));
});

afterAll(async () => {
  for (const g of open) await g.client.close().catch(() => undefined);
  removeCgroupBase(host, CGROUP_BASE);
  rmSync(wide, { recursive: true, force: true });
  rmSync(state, { recursive: true, force: true });
});

async function gateway(flags: string[], server: string, args: string[] = [], clientOpts = {}): Promise<Gateway> {
  const g = await startGateway(state, flags, server, args, clientOpts);
  open.push(g);
  return g;
}

describe.skipIf(!canRun)('captrap mcp over stdio', () => {
  describe('server-filesystem behind a narrower capability', () => {
    let g: Gateway;
    beforeAll(async () => {
      g = await gateway(['--allow-tools', 'read_text_file,list_directory,write_file,list_allowed_directories', '--paths', allowed], FS_SERVER, [wide]);
    });

    it('lists only the tools the capability allows', async () => {
      const names = (await g.client.listTools()).tools.map((t) => t.name).sort();
      expect(names).toEqual(['list_allowed_directories', 'list_directory', 'read_text_file', 'write_file']);
    });

    it('forwards an allowed call and returns the server result', async () => {
      const r = await g.client.callTool({ name: 'read_text_file', arguments: { path: join(allowed, 'a.txt') } });
      expect(r.isError).toBeFalsy();
      expect(textOf(r)).toContain('inside the root');
      const w = await g.client.callTool({ name: 'write_file', arguments: { path: join(allowed, 'new.txt'), content: 'written through captrap' } });
      expect(w.isError, textOf(w)).toBeFalsy();
      expect(existsSync(join(allowed, 'new.txt'))).toBe(true);
    });

    it('refuses a tool outside allowedTools as a tool error naming the code', async () => {
      const r = await g.client.callTool({ name: 'move_file', arguments: { source: join(allowed, 'a.txt'), destination: join(allowed, 'b.txt') } });
      expect(r.isError).toBe(true);
      expect(textOf(r)).toMatch(/^captrap denied move_file .*E_TOOL_NOT_ALLOWED/);
      expect(existsSync(join(allowed, 'a.txt'))).toBe(true);
    });

    it('refuses a path outside the root, through .., and through a symlink', async () => {
      for (const path of [join(wide, 'secret.txt'), join(allowed, '..', 'secret.txt'), join(allowed, 'link.txt')]) {
        const r = await g.client.callTool({ name: 'read_text_file', arguments: { path } });
        expect(r.isError, path).toBe(true);
        expect(textOf(r), path).toMatch(/captrap denied read_text_file .*E_PATH_OUTSIDE_ROOTS/);
        expect(textOf(r)).not.toContain('outside the capability');
      }
      // The upstream itself would have served it: its root is the wider directory.
      const dirs = await g.client.callTool({ name: 'list_allowed_directories', arguments: {} });
      expect(textOf(dirs)).toContain(wide);
    });

    it('audits every decision in one verifiable chain, with the server name', async () => {
      await new Promise((r) => setTimeout(r, 300)); // one flush interval
      const records = auditRecords(g.auditDir);
      const denied = records.filter((r) => r.type === 'access_denied');
      expect(denied.length).toBeGreaterThanOrEqual(4);
      expect(denied.every((r) => r.details?.['mcpServer'] === 'server-filesystem')).toBe(true);
      expect(denied.map((r) => r.details?.['code'])).toContain('E_TOOL_NOT_ALLOWED');
      expect(records.some((r) => r.type === 'capability_validated' && r.details?.['mcpMethod'] === 'tools/list')).toBe(true);
      expect(records.some((r) => r.type === 'sandbox_started')).toBe(true);
      // Verified once the gateway has closed its log (the client going away closes it).
      await g.client.close();
      await waitFor('captrap to exit', () => !alive(g.pid), 10_000);
      expect(verifyAuditLog(g.auditDir, { key: readSecretFile(join(state, 'audit.key')), publicKey: readEd25519PublicKey(join(state, 'audit-signing.pub')) }).ok).toBe(true);
    });
  });

  it('a read-only capability hides and refuses tools that are not read-only', async () => {
    const g = await gateway(['--operations', 'read', '--paths', allowed], FS_SERVER, [wide]);
    const names = (await g.client.listTools()).tools.map((t) => t.name);
    expect(names).toContain('read_text_file');
    expect(names).not.toContain('write_file');
    const r = await g.client.callTool({ name: 'write_file', arguments: { path: join(allowed, 'ro.txt'), content: 'x' } });
    expect(r.isError).toBe(true);
    expect(textOf(r)).toContain('E_OPERATION_NOT_PERMITTED');
    expect(existsSync(join(allowed, 'ro.txt'))).toBe(false);
  });

  it('server-memory: an allowed call and a filtered list', async () => {
    const mem = sharedDir('captrap-mcp-mem-', true);
    try {
      const g = await gateway(['--allow-tools', 'create_entities,read_graph', '--rw', mem, '--env', `MEMORY_FILE_PATH=${join(mem, 'memory.jsonl')}`], MEMORY_SERVER);
      expect((await g.client.listTools()).tools.map((t) => t.name).sort()).toEqual(['create_entities', 'read_graph']);
      const c = await g.client.callTool({ name: 'create_entities', arguments: { entities: [{ name: 'captrap', entityType: 'tool', observations: ['gates MCP'] }] } });
      expect(c.isError, textOf(c)).toBeFalsy();
      expect(textOf(await g.client.callTool({ name: 'read_graph', arguments: {} }))).toContain('gates MCP');
      const d = await g.client.callTool({ name: 'delete_entities', arguments: { entityNames: ['captrap'] } });
      expect(textOf(d)).toContain('E_TOOL_NOT_ALLOWED');
    } finally {
      rmSync(mem, { recursive: true, force: true });
    }
  });

  describe('server-everything', () => {
    let g: Gateway;
    beforeAll(async () => {
      g = await gateway(['--schemes', 'demo', '--paths', allowed], EVERYTHING_SERVER, ['stdio']);
    });

    it('gates resources/read: allowed scheme passes, others are JSON-RPC errors', async () => {
      const list = await g.client.listResources();
      const first = list.resources[0]!;
      expect(first.uri).toMatch(/^demo:/);
      const r = await g.client.readResource({ uri: first.uri });
      expect(r.contents.length).toBeGreaterThan(0);
      for (const uri of ['https://example.com/x', `file://${join(wide, 'secret.txt')}`]) {
        const err = await g.client.readResource({ uri }).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err, uri).toBeInstanceOf(McpError);
        expect((err as McpError).code).toBe(GATEWAY_ERRORS.ACCESS_DENIED);
        expect((err as McpError).message).toMatch(/E_SCHEME_NOT_ALLOWED|E_PATH_OUTSIDE_ROOTS/);
      }
    });

    it('passes progress through under the client’s own token', async () => {
      const progress: number[] = [];
      const r = await g.client.callTool({ name: 'trigger-long-running-operation', arguments: { duration: 0.6, steps: 3 } }, CallToolResultSchema, {
        onprogress: (p) => progress.push(p.progress),
      });
      expect(textOf(r)).toContain('completed');
      // The reference server's last step reaches no client, direct or not (checked by hand): compare what it does deliver.
      expect(progress.slice(0, 2)).toEqual([1, 2]);
    });

    it('passes pagination and ping through', async () => {
      await g.client.ping();
      const page = await g.client.listResources();
      if (page.nextCursor) {
        const next = await g.client.listResources({ cursor: page.nextCursor });
        expect(next.resources[0]?.uri).not.toBe(page.resources[0]?.uri);
      }
    });
  });

  it('the config form runs a mcpServers entry with its clients’ policy', async () => {
    const cfgDir = sharedDir('captrap-mcp-cfg-');
    try {
      const cfg = join(cfgDir, 'captrap.json');
      writeFileSync(
        cfg,
        JSON.stringify({
          stateDir: join(cfgDir, 'state'),
          cgroupBase: CGROUP_BASE,
          mcpServers: {
            fx: {
              command: 'node',
              args: [FIXTURE],
              view: { readOnly: [NODE_MODULES] },
              tools: { stat_path: { secret: ['path'] } },
              clients: [
                { principal: 'first', constraints: { allowedTools: ['echo'] } },
                { principal: 'second', operations: ['read'], constraints: { allowedTools: ['echo', 'stat_path', 'crash'] } },
              ],
            },
          },
        }),
      );
      const transport = new StdioClientTransport({ command: process.execPath, args: ['--import', 'tsx', join(ROOT, 'src/runner/cli.ts'), 'mcp', '--config', cfg, '--server', 'fx', '--principal', 'second'], cwd: ROOT, stderr: 'pipe' });
      const client = new Client({ name: 'cfg-test', version: '1' });
      await client.connect(transport);
      try {
        // 'second' holds read only: crash (destructive) is hidden though allowedTools names it.
        expect((await client.listTools()).tools.map((t) => t.name).sort()).toEqual(['echo', 'stat_path']);
        expect(textOf(await client.callTool({ name: 'echo', arguments: { text: 'cfg' } }))).toBe('cfg');
      } finally {
        await client.close();
      }
    } finally {
      rmSync(cfgDir, { recursive: true, force: true });
    }
  });

  it('--domains gives the server an egress proxy that lets through exactly those hosts', async () => {
    const site = createServer((_req, res) => res.end('hello-egress'));
    await new Promise<void>((r) => site.listen(0, '127.0.0.1', () => r()));
    const port = (site.address() as AddressInfo).port;
    try {
      const g = await gateway(['--domains', `127.0.0.1:${port}`], FIXTURE);
      expect(textOf(await g.client.callTool({ name: 'http_get', arguments: { address: `127.0.0.1:${port}` } }))).toBe('status=200 body=hello-egress');
      const other = textOf(await g.client.callTool({ name: 'http_get', arguments: { address: `127.0.0.1:${port === 65535 ? port - 1 : port + 1}` } }));
      expect(other).toMatch(/status=403/);
      // Without --domains the server has no network at all.
      const closed = await gateway([], FIXTURE);
      expect(textOf(await closed.client.callTool({ name: 'http_get', arguments: { address: `127.0.0.1:${port}` } }))).toMatch(/no proxy/);
    } finally {
      site.close();
    }
  });

  it('bad input from the client gets an error and the gateway keeps serving', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/runner/cli.ts'), 'mcp', '--state-dir', state, '--cgroup-base', CGROUP_BASE, '--ro', NODE_MODULES, '--', 'node', FIXTURE], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    const replies: Record<string, unknown>[] = [];
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        replies.push(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
        buf = buf.slice(nl + 1);
      }
    });
    const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    const send = (m: unknown) => child.stdin!.write(typeof m === 'string' ? m : JSON.stringify(m) + '\n');
    const reply = (id: number) => waitFor(`reply ${id}`, () => replies.find((r) => r['id'] === id), 15_000);
    send('this is not json\n');
    send({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } });
    expect(((await reply(1))['result'] as { serverInfo: { name: string } }).serverInfo.name).toBe('captrap-fixture');
    send({ jsonrpc: '2.0', method: 'notifications/initialized' });
    send({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { arguments: {} } });
    // The SDK's own answer to params its schema refuses (a server behind no gateway says the same).
    const bad = (await reply(2))['error'] as { code: number; message: string };
    expect([-32602, -32603]).toContain(bad.code);
    expect(bad.message).toMatch(/name/);
    send({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'stat_path', arguments: { path: { not: 'a string' } } } });
    expect(JSON.stringify((await reply(3))['result'])).toContain('E_INVALID_ARGUMENTS');
    send({ jsonrpc: '2.0', id: 4, method: 'tools/call', params: { name: 'echo', arguments: { text: 'still here' } } });
    expect(JSON.stringify((await reply(4))['result'])).toContain('still here');
    child.stdin!.end();
    expect(await exited).toBe(0);
  });

  describe('lifecycle (fixture server)', () => {
    it('a client cancellation reaches the upstream', async () => {
      const marks = sharedDir('captrap-mcp-marks-', true);
      try {
        const g = await gateway(['--rw', marks, '--env', `MARK_DIR=${marks}`], FIXTURE);
        const ac = new AbortController();
        const call = g.client.callTool({ name: 'wait', arguments: { ms: 20_000, tag: 'c1' } }, CallToolResultSchema, { signal: ac.signal });
        setTimeout(() => ac.abort('test cancels'), 400);
        await expect(call).rejects.toThrow();
        await waitFor('the upstream to see the cancellation', () => existsSync(join(marks, 'cancelled-c1')), 5000);
      } finally {
        rmSync(marks, { recursive: true, force: true });
      }
    });

    it('progress of a long call arrives under the client’s token, in order', async () => {
      const g = await gateway([], FIXTURE);
      const progress: number[] = [];
      const r = await g.client.callTool({ name: 'wait', arguments: { ms: 400 } }, CallToolResultSchema, { onprogress: (p) => progress.push(p.progress) });
      expect(textOf(r)).toBe('waited 400');
      expect(progress.length).toBeGreaterThanOrEqual(4);
      expect(progress).toEqual([...progress].sort((a, b) => a - b));
    });

    it('an upstream crash fails the call in flight clearly, then the server is back', async () => {
      const g = await gateway([], FIXTURE);
      const r = await g.client.callTool({ name: 'crash', arguments: {} }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(r).toBeInstanceOf(McpError);
      expect((r as McpError).code).toBe(GATEWAY_ERRORS.UPSTREAM_UNAVAILABLE);
      expect((r as McpError).message).toMatch(/exited while handling tools\/call \(exited\(3\)/);
      const again = await g.client.callTool({ name: 'echo', arguments: { text: 'back' } });
      expect(textOf(again)).toBe('back');
      expect(g.stderr()).toMatch(/restarting in \d+ ms/);
    });

    it('a SIGKILLed gateway takes its server with it; the next start removes the stale cgroup', async () => {
      const g = await gateway([], FIXTURE);
      const started = await waitFor('the sandbox_started record', () => auditRecords(g.auditDir).find((r) => r.type === 'sandbox_started'));
      const pid = started.details!['pid'] as number;
      const cgroup = started.details!['cgroup'] as string;
      process.kill(g.pid, 'SIGKILL');
      await waitFor('the server to die with its gateway', () => !alive(pid), 10_000);
      // The next gateway on the same base cleans what the killed one left.
      const next = await gateway([], FIXTURE);
      expect(textOf(await next.client.callTool({ name: 'echo', arguments: { text: 'next' } }))).toBe('next');
      expect(cgroupDirs(cgroup)).toEqual([]);
    });

    it('a client disconnect leaves nothing running', async () => {
      const g = await gateway([], FIXTURE);
      expect(textOf(await g.client.callTool({ name: 'echo', arguments: { text: 'hi' } }))).toBe('hi');
      const started = await waitFor('the sandbox_started record', () => auditRecords(g.auditDir).find((r) => r.type === 'sandbox_started'));
      const pid = started.details!['pid'] as number;
      const cgroup = started.details!['cgroup'] as string;
      expect(alive(pid)).toBe(true);
      expect(cgroupDirs(cgroup).length).toBeGreaterThan(0);
      await g.client.close(); // ends captrap's stdin
      await waitFor('captrap to exit', () => !alive(g.pid), 10_000);
      expect(alive(pid)).toBe(false);
      expect(cgroupDirs(cgroup)).toEqual([]);
      expect(verifyAuditLog(g.auditDir, { key: readSecretFile(join(state, 'audit.key')), publicKey: readEd25519PublicKey(join(state, 'audit-signing.pub')) }).ok).toBe(true);
    });
  });
});
