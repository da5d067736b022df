// The client side of a running sidecar's admin socket, shared by `captrap ps | caps | revoke |
// kill | release | stats`: find the socket, connect, call, close. Everything that can go wrong before an
// answer arrives (no socket, nobody listening, not our socket, no permission) becomes one
// AdminClientError whose message says what to do about it.
import net from 'node:net';
import { resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { CapView } from '../agent.js';
import { CaptrapError } from '../errors.js';
import { RpcConnection, RpcError, RPC_ERROR } from './jsonrpc.js';

export type { CapView };

export const DEFAULT_SOCKET = './.captrap/admin.sock';

/** --socket, else $CAPTRAP_SOCKET, else ./.captrap/admin.sock (relative to `cwd`). */
export function resolveSocketPath(flag: string | undefined, env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): string {
  const chosen = flag !== undefined && flag !== '' ? flag : env.CAPTRAP_SOCKET !== undefined && env.CAPTRAP_SOCKET !== '' ? env.CAPTRAP_SOCKET : DEFAULT_SOCKET;
  return resolve(cwd, chosen);
}

export class AdminClientError extends CaptrapError {}

function connectError(path: string, err: NodeJS.ErrnoException): AdminClientError {
  const hint = 'start one with `captrap serve --config FILE`, or point at it with --socket PATH / CAPTRAP_SOCKET';
  switch (err.code) {
    case 'ENOENT':
      return new AdminClientError('E_ADMIN_NO_SOCKET', `no captrap sidecar at ${path} (no such socket): ${hint}`);
    case 'ECONNREFUSED':
      return new AdminClientError('E_ADMIN_REFUSED', `no captrap sidecar listening on ${path} (connection refused; a stale socket?): ${hint}`);
    case 'EACCES':
    case 'EPERM':
      return new AdminClientError('E_ADMIN_PERMISSION', `permission denied on ${path}: the admin socket is owner-only; run as the user that started the sidecar`);
    case 'ENOTSOCK':
      return new AdminClientError('E_ADMIN_NOT_SOCKET', `${path} is not a socket: ${hint}`);
    default:
      return new AdminClientError('E_ADMIN_CONNECT', `cannot connect to ${path}: ${err.message}`);
  }
}

/** The sidecar answered with an error (unknown capability, unknown agent, ...). */
export class AdminCallError extends CaptrapError {
  constructor(
    readonly method: string,
    readonly rpcCode: number,
    message: string,
    readonly data: unknown,
  ) {
    const dataCode = (data as { code?: unknown } | null | undefined)?.code;
    super(typeof dataCode === 'string' ? dataCode : rpcCode === RPC_ERROR.NOT_FOUND ? 'E_NOT_FOUND' : 'E_ADMIN_CALL', message, { rpcCode });
  }
}

export class AdminClient {
  private constructor(
    readonly socketPath: string,
    private readonly socket: net.Socket,
    private readonly rpc: RpcConnection,
  ) {}

  static connect(socketPath: string, options: { timeoutMs?: number } = {}): Promise<AdminClient> {
    const timeoutMs = options.timeoutMs ?? 5000;
    return new Promise((resolvePromise, reject) => {
      const socket = net.connect(socketPath);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new AdminClientError('E_ADMIN_TIMEOUT', `no answer from ${socketPath} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(connectError(socketPath, err));
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        const rpc = new RpcConnection(socket, socket, { maxLineBytes: 64 * 1024 * 1024 });
        resolvePromise(new AdminClient(socketPath, socket, rpc));
      });
    });
  }

  get closed(): boolean {
    return this.rpc.isClosed;
  }

  async call<T>(method: string, params: Record<string, unknown> = {}, timeoutMs = 10_000): Promise<T> {
    try {
      return (await this.rpc.call(method, params, { timeoutMs })) as T;
    } catch (err) {
      if (err instanceof RpcError) {
        if (err.rpcCode === RPC_ERROR.UNAVAILABLE) throw new AdminClientError('E_ADMIN_GONE', `the sidecar at ${this.socketPath} closed the connection (${err.message})`);
        if (err.rpcCode === RPC_ERROR.TIMEOUT) throw new AdminClientError('E_ADMIN_TIMEOUT', `the sidecar at ${this.socketPath} did not answer ${method} within ${timeoutMs} ms`);
        throw new AdminCallError(method, err.rpcCode, err.message, err.data);
      }
      throw err;
    }
  }

  // Typed wrappers, one per admin method of the spec.
  agents(): Promise<{ agents: AgentRow[] }> {
    return this.call('agents.list');
  }
  capabilities(principal?: string): Promise<{ capabilities: CapView[] }> {
    return this.call('capabilities.list', principal === undefined ? {} : { principal });
  }
  revoke(target: { id: string } | { principal: string }): Promise<{ revoked: string[] }> {
    return this.call('capabilities.revoke', { ...target });
  }
  /** Lifts the monitor's quarantine of `principal` (`captrap release`). */
  release(principal: string): Promise<{ released: boolean }> {
    return this.call('principals.release', { principal });
  }
  kill(id: string): Promise<{ killed: boolean }> {
    return this.call('agents.kill', { id });
  }
  stats(): Promise<SidecarStats> {
    return this.call('stats');
  }
  metrics(): Promise<{ text: string }> {
    return this.call('metrics');
  }

  close(): void {
    this.rpc.close();
    this.socket.end();
    this.socket.destroy();
  }
}

export interface AgentRow {
  id: string;
  parent: string | null;
  pid: number;
  startTime: number;
  state: 'running' | 'exited';
  exitReason: string | null;
  limits: Record<string, unknown>;
  usage: { memoryBytes: number | null; memoryPeakBytes: number | null; cpuUsageUs: number | null };
  capabilities: number;
  toolsRunning: number;
}

export interface SidecarStats {
  kernel: Record<string, unknown>;
  audit: Record<string, unknown> | null;
  sandboxes: { running: number; started: number; exited: number; byReason: Record<string, number> };
  agents: { running: number; exited: number };
  uptimeMs: number;
  rssBytes: number;
}

// ---------------------------------------------------------------------------------------------
// Running one admin command: argument parsing, connection, one-line errors, exit codes.

export class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig['options']>;

export interface AdminCommand<O extends Options> {
  name: string;
  usage: string;
  options: O;
  /** Positional arguments allowed: [min, max]. */
  positionals?: [number, number];
  run(ctx: {
    values: Record<string, string | boolean | undefined>;
    positionals: string[];
    connect: () => Promise<AdminClient>;
    out: NodeJS.WriteStream;
  }): Promise<number>;
}

/**
 * Exit codes: 0 done, 1 the sidecar refused (unknown id, ...), 2 bad usage or no sidecar to
 * talk to. Errors are one line on stderr; CAPTRAP_DEBUG=1 adds the stack.
 */
export async function runAdminCommand<O extends Options>(cmd: AdminCommand<O>, argv: string[]): Promise<number> {
  const prefix = `captrap ${cmd.name}`;
  let client: AdminClient | undefined;
  try {
    let parsed: { values: Record<string, string | boolean | undefined>; positionals: string[] };
    try {
      parsed = parseArgs({
        args: argv,
        options: { ...cmd.options, socket: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
        allowPositionals: true,
        strict: true,
      }) as typeof parsed;
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    if (parsed.values.help) {
      process.stdout.write(cmd.usage);
      return 0;
    }
    const [min, max] = cmd.positionals ?? [0, 0];
    if (parsed.positionals.length < min || parsed.positionals.length > max) {
      throw new UsageError(parsed.positionals.length > max ? `unexpected argument '${parsed.positionals[max]}'` : 'missing argument');
    }
    const socketPath = resolveSocketPath(parsed.values.socket as string | undefined);
    return await cmd.run({
      values: parsed.values,
      positionals: parsed.positionals,
      connect: async () => (client = await AdminClient.connect(socketPath)),
      out: process.stdout,
    });
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`${prefix}: ${err.message}\n\n${cmd.usage}`);
      return 2;
    }
    process.stderr.write(`${prefix}: ${describe(err)}\n`);
    return err instanceof AdminCallError ? 1 : 2;
  } finally {
    client?.close();
  }
}

function describe(err: unknown): string {
  if (process.env.CAPTRAP_DEBUG && err instanceof Error && err.stack) return err.stack;
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === 'string' ? `${err.message} [${code}]` : err.message;
  }
  return String(err);
}

// ---------------------------------------------------------------------------------------------
// Output helpers for the admin commands' tables.

export interface TableStyle {
  /** ANSI bold headers and dimmed rows; only on a terminal. */
  color: boolean;
}

export function tableStyle(out: { isTTY?: boolean } = process.stdout): TableStyle {
  return { color: out.isTTY === true && !process.env.NO_COLOR };
}

const visibleLength = (s: string): number => s.replace(/\x1b\[[0-9;]*m/g, '').length;

/**
 * Columns padded to their widest cell, two spaces apart; a column whose header starts with '>'
 * is right-aligned (numbers). `dim[i]` greys out row i on a terminal (revoked, exited).
 */
export function renderTable(headers: string[], rows: string[][], style: TableStyle, dim: boolean[] = []): string {
  const right = headers.map((h) => h.startsWith('>'));
  const heads = headers.map((h) => (h.startsWith('>') ? h.slice(1) : h));
  const widths = heads.map((h, i) => Math.max(h.length, ...rows.map((r) => visibleLength(r[i] ?? ''))));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => {
        const pad = ' '.repeat(Math.max(0, widths[i]! - visibleLength(c)));
        return right[i] ? pad + c : i === cells.length - 1 ? c : c + pad;
      })
      .join('  ');
  const out = [style.color ? `\x1b[1m${line(heads)}\x1b[0m` : line(heads)];
  rows.forEach((r, i) => out.push(style.color && dim[i] ? `\x1b[2m${line(r)}\x1b[0m` : line(r)));
  return out.join('\n') + '\n';
}

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[u]}`;
}

export function formatDuration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '-';
  const abs = Math.abs(ms);
  let text: string;
  if (abs < 1000) text = `${Math.round(abs)}ms`;
  else if (abs < 10_000) text = `${(abs / 1000).toFixed(1)}s`;
  else {
    // Whole seconds first, so a unit never shows its own maximum ("59m60s").
    const total = Math.round(abs / 1000);
    const [d, h, m, sec] = [Math.floor(total / 86400), Math.floor(total / 3600) % 24, Math.floor(total / 60) % 60, total % 60];
    if (total < 60) text = `${sec}s`;
    else if (total < 3600) text = `${m}m${sec}s`;
    else if (total < 48 * 3600) text = `${d * 24 + h}h${m}m`;
    else text = `${d}d`;
  }
  return ms < 0 ? `-${text}` : text;
}

/** Orders items so each parent comes before its children and returns each with its depth in that tree. */
export function treeOrder<T>(items: readonly T[], key: (t: T) => string, parent: (t: T) => string | null): Array<{ item: T; depth: number }> {
  const byKey = new Map(items.map((t) => [key(t), t]));
  const children = new Map<string | null, T[]>();
  for (const t of items) {
    const p = parent(t);
    const k = p !== null && byKey.has(p) ? p : null; // an orphan (parent not listed) is a root
    const list = children.get(k) ?? [];
    list.push(t);
    children.set(k, list);
  }
  const out: Array<{ item: T; depth: number }> = [];
  const seen = new Set<string>();
  const walk = (k: string | null, depth: number) => {
    for (const t of children.get(k) ?? []) {
      if (seen.has(key(t))) continue; // a cycle in what the sidecar sent must not loop forever
      seen.add(key(t));
      out.push({ item: t, depth });
      walk(key(t), depth + 1);
    }
  };
  walk(null, 0);
  for (const t of items) if (!seen.has(key(t))) out.push({ item: t, depth: 0 });
  return out;
}

export const indent = (depth: number, text: string): string => (depth === 0 ? text : `${'  '.repeat(depth - 1)}└ ${text}`);
