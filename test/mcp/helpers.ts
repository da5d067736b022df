// Shared by the gateway's tests: start `captrap mcp` (the real CLI) in front of a real server,
// drive it with the official SDK client over stdio, and find what it started.
import { chmodSync, existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { readAuditRecords, type AuditRecord } from '../../src/kernel/audit.js';

export const ROOT = join(import.meta.dirname, '../..');
export const NODE_MODULES = join(ROOT, 'node_modules');
export const FIXTURE = join(ROOT, 'test/fixtures/mcp/fixture-server.mjs');
export const FS_SERVER = join(NODE_MODULES, '@modelcontextprotocol/server-filesystem/dist/index.js');
export const EVERYTHING_SERVER = join(NODE_MODULES, '@modelcontextprotocol/server-everything/dist/index.js');
export const MEMORY_SERVER = join(NODE_MODULES, '@modelcontextprotocol/server-memory/dist/index.js');
export const CGROUP_BASE = `captrap-mcptest-${process.pid}`;

/** A directory the sandboxed server (uid 65534) can traverse, and write when `writable`. */
export function sharedDir(prefix: string, writable = false): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(d, writable ? 0o777 : 0o755);
  return d;
}

export interface Gateway {
  client: Client;
  transport: StdioClientTransport;
  /** captrap's own pid. */
  pid: number;
  stderr: () => string;
  auditDir: string;
}

/** `captrap mcp FLAGS -- node SERVER ARGS`, connected. The project's node_modules are shown read-only. */
export async function startGateway(state: string, flags: string[], server: string, serverArgs: string[] = [], clientOpts: ConstructorParameters<typeof Client>[1] = {}): Promise<Gateway> {
  const auditDir = join(state, `audit-${Math.random().toString(36).slice(2)}`);
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: ['--import', 'tsx', join(ROOT, 'src/runner/cli.ts'), 'mcp', '--state-dir', state, '--audit-dir', auditDir, '--cgroup-base', CGROUP_BASE, '--ro', NODE_MODULES, ...flags, '--', 'node', server, ...serverArgs],
    cwd: ROOT,
    stderr: 'pipe',
  });
  let err = '';
  transport.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const client = new Client({ name: 'captrap-test', version: '1.0.0' }, clientOpts);
  await client.connect(transport);
  return { client, transport, pid: transport.pid!, stderr: () => err, auditDir };
}

export function auditRecords(dir: string): AuditRecord[] {
  return [...readAuditRecords(dir)];
}

/** Every directory of cgroup `name` under the test's base, in any hierarchy. */
export function cgroupDirs(name: string): string[] {
  const out: string[] = [];
  for (const h of readdirSync('/sys/fs/cgroup')) {
    const d = join('/sys/fs/cgroup', h, CGROUP_BASE, name);
    if (existsSync(d)) out.push(d);
  }
  return out;
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function waitFor<T>(what: string, fn: () => T | undefined | false, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function textOf(r: unknown): string {
  const c = (r as { content?: { type: string; text?: string }[] }).content ?? [];
  return c.map((x) => x.text ?? '').join('');
}
