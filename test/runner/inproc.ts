// A small harness for in-process sidecar tests under the default confinement: relay agents
// (test/fixtures/agents/core-relay.mjs) join their fd-3 channel to a control socket the test
// listens on, so the test speaks JSON-RPC as the agent on the agent's real channel.
import { chmodSync, mkdirSync, mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { parseConfig, type SidecarConfig } from '../../src/runner/config.js';
import { RpcConnection, RpcError } from '../../src/runner/jsonrpc.js';
import { Sidecar, type SidecarOptions } from '../../src/runner/sidecar.js';

export const RELAY = join(import.meta.dirname, '../fixtures/agents/core-relay.mjs');
export const NODE = realpathSync(process.execPath);
export const host = probeHost();

export interface Hello {
  hello: string;
  pid: number;
  pidNs: string | null;
}

export interface Connected {
  conn: RpcConnection;
  id: string;
  sock: Socket;
  /** The agent's hello line (its id, its pid and pid namespace as it sees them). */
  hello: Hello;
}

export interface AgentSpec {
  id: string;
  control: Control;
  capabilities?: unknown[];
  requestable?: unknown[];
  /** The agent's limits; default { memory: '512M', pids: 64 }; null: none of its own. */
  limits?: Record<string, unknown> | null;
}

export function toolCap(tools: string[], extra: Record<string, unknown> = {}) {
  return { resource: { type: 'tool', pattern: '*' }, operations: ['invoke', 'delegate'], constraints: { allowedTools: tools }, ...extra };
}

export function procCap(pattern = NODE) {
  return { resource: { type: 'process', pattern }, operations: ['spawn', 'delegate'] };
}

export const TOOLS = [{ name: 'echo', command: ['echo', '{text}'], args: { text: { type: 'string' } } }];

/** The sandbox section config() writes unless `extra` has one of its own. */
export const SANDBOX = { memory: '256M', pids: 64, timeout: '20s', killGrace: '200ms' };

export class Harness {
  readonly root: string;
  readonly ctlDir: string;
  readonly base: string;
  private readonly sidecars: Sidecar[] = [];
  private readonly servers: Server[] = [];

  constructor(tag: string) {
    this.root = mkdtempSync(join(tmpdir(), `captrap-${tag}-`));
    chmodSync(this.root, 0o755);
    this.ctlDir = join(this.root, 'ctl');
    mkdirSync(this.ctlDir, { mode: 0o755 });
    this.base = `captrap-t${tag}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  }

  control(name: string): Control {
    const c = new Control(this.ctlDir, name);
    this.servers.push(c.server);
    return c;
  }

  /** A config for `agents` (relay agents on their controls): see relayConfig. */
  config(agents: AgentSpec[], extra: Record<string, unknown> = {}, stateDir?: string): SidecarConfig {
    return relayConfig(this, agents, extra, stateDir);
  }

  /** Starts a sidecar (stopped by cleanup() if the test does not); its output and notices go to `io`, by default nowhere. */
  async start(cfg: SidecarConfig, io: SidecarOptions = { output: () => {}, notice: () => {} }): Promise<Sidecar> {
    const s = await Sidecar.start(cfg, io);
    this.sidecars.push(s);
    return s;
  }

  async cleanup(): Promise<void> {
    for (const s of this.sidecars.splice(0)) await s.stop();
    for (const s of this.servers.splice(0)) s.close();
    removeCgroupBase(host, this.base);
    rmSync(this.root, { recursive: true, force: true });
  }
}

/**
 * A config for relay agents on their controls, under `at.root` (a fresh state dir there unless
 * given), their control sockets' dir `at.ctlDir` in their view, cgroups under `at.base`. The
 * top-level keys of `extra` (tools, audit, sandbox, quotas...) replace the defaults.
 */
export function relayConfig(at: { root: string; ctlDir: string; base: string }, agents: AgentSpec[], extra: Record<string, unknown> = {}, stateDir?: string): SidecarConfig {
  return parseConfig(
    {
      stateDir: stateDir ?? mkdtempSync(join(at.root, 'state-')),
      cgroupBase: at.base,
      audit: { flushIntervalMs: 20 },
      tools: TOOLS,
      agents: agents.map((a) => ({
        id: a.id,
        command: 'node',
        args: [RELAY, a.control.path],
        view: { readOnly: [at.ctlDir] },
        ...(a.limits === null ? {} : { limits: a.limits ?? { memory: '512M', pids: 64 } }),
        capabilities: a.capabilities ?? [toolCap(['echo'])],
        requestable: a.requestable ?? [],
      })),
      sandbox: SANDBOX,
      ...extra,
    },
    'test config',
    at.root,
  );
}

/** A control socket the relay agent connects to; each connection is one agent. */
export class Control {
  readonly path: string;
  readonly server: Server;
  private readonly waiting: ((a: Connected) => void)[] = [];
  private readonly ready: Connected[] = [];

  constructor(dir: string, name: string, raw = false) {
    this.path = join(dir, `${name}-${Math.random().toString(36).slice(2, 8)}.sock`);
    this.server = createServer((sock) => {
      let buf = Buffer.alloc(0);
      const onData = (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        const nl = buf.indexOf(10);
        if (nl < 0) return;
        sock.off('data', onData);
        const hello = JSON.parse(buf.subarray(0, nl).toString()) as Hello;
        const rest = buf.subarray(nl + 1);
        if (rest.length > 0) sock.unshift(rest);
        const a: Connected = { conn: raw ? (undefined as unknown as RpcConnection) : new RpcConnection(sock, sock), id: hello.hello, sock, hello };
        const w = this.waiting.shift();
        if (w) w(a);
        else this.ready.push(a);
      };
      sock.on('data', onData);
      sock.on('error', () => {});
    });
    this.server.listen(this.path);
    chmodSync(this.path, 0o666);
  }

  async next(): Promise<Connected> {
    return this.ready.shift() ?? (await new Promise<Connected>((res) => this.waiting.push(res)));
  }
}

/** The next agents to connect, by id. */
export async function connectAll(ctls: Control[]): Promise<Map<string, Connected>> {
  const all = await Promise.all(ctls.map((c) => c.next()));
  return new Map(all.map((a) => [a.id, a]));
}

/** A JSON-RPC client on the sidecar's admin socket. */
export async function adminClient(path: string): Promise<RpcConnection> {
  const sock = createConnection(path);
  await new Promise<void>((r, j) => {
    sock.once('connect', () => r());
    sock.once('error', j);
  });
  return new RpcConnection(sock, sock);
}

export async function rpcError(p: Promise<unknown>): Promise<RpcError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof RpcError) return e;
    throw e;
  }
  throw new Error('expected an RPC error');
}

export async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * p))]!;
}
