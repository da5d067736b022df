// The upstream MCP server: one long-lived sandbox (confined, limited, its tree killed as one)
// whose stdin and stdout carry MCP, and the SDK Client that talks to it. When the server dies
// on its own, the requests it was handling fail with its exit reason and it is started again
// with backoff; close() stops restarting and waits until its whole tree and cgroup are gone.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { ReadBuffer, serializeMessage } from '@modelcontextprotocol/sdk/shared/stdio.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import type { ClientCapabilities, Implementation, JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { describeExitReason, runSandboxed, type RunOptions, type Sandbox, type SandboxResult } from '../isolation/sandbox.js';
import { CaptrapError } from '../errors.js';

export class UpstreamError extends CaptrapError {}

/** Transport over a sandbox's stdin and stdout (newline-delimited JSON-RPC, as MCP stdio). */
export class SandboxTransport implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage) => void;
  private readonly buffer = new ReadBuffer();
  private closed = false;

  constructor(
    readonly sandbox: Sandbox,
    private readonly onExit: (result: SandboxResult | undefined, err?: unknown) => void,
  ) {}

  async start(): Promise<void> {
    this.sandbox.stdout?.on('data', (chunk: Buffer) => {
      this.buffer.append(chunk);
      for (;;) {
        let msg: JSONRPCMessage | null;
        try {
          msg = this.buffer.readMessage();
        } catch (err) {
          // A line that is not JSON-RPC (a server printing to stdout): reported, then skipped.
          this.onerror?.(err as Error);
          continue;
        }
        if (msg === null) break;
        this.onmessage?.(msg);
      }
    });
    this.sandbox.stdin?.on('error', (err: Error) => this.onerror?.(err));
    this.sandbox.then(
      (r) => this.finish(r),
      (err: unknown) => this.finish(undefined, err),
    );
  }

  private finish(result: SandboxResult | undefined, err?: unknown): void {
    if (this.closed) return;
    this.closed = true;
    this.onExit(result, err);
    this.onclose?.();
  }

  send(message: JSONRPCMessage): Promise<void> {
    const stdin = this.sandbox.stdin;
    if (this.closed || !stdin || stdin.destroyed) return Promise.reject(new UpstreamError('E_UPSTREAM_GONE', 'the upstream MCP server is not running'));
    return new Promise((resolve, reject) => {
      const ok = stdin.write(serializeMessage(message), (err) => (err ? reject(err) : undefined));
      if (ok) resolve();
      else stdin.once('drain', resolve);
    });
  }

  async close(): Promise<void> {
    this.sandbox.stdin?.end();
    this.sandbox.kill('killed');
    await this.sandbox.catch(() => undefined);
  }
}

export interface UpstreamSpec {
  /** The server's name: in errors, the audit log and the stderr prefix. */
  name: string;
  command: string;
  args: string[];
  /** Sandbox options (limits, view, env, uid...); stdin is always a pipe. */
  sandbox: RunOptions;
  /** Restart backoff: first delay and ceiling (ms). Default 250 and 30 000. */
  backoffMs?: { initial: number; max: number };
  /** Where the server's stderr goes (default: captrap's stderr, prefixed). */
  stderr?: (chunk: Buffer) => void;
  /** Told about every start and exit (audit, operator notices). */
  onEvent?: (e: UpstreamEvent) => void;
}

export type UpstreamEvent =
  | { type: 'started'; pid: number; cgroup: string; generation: number }
  | { type: 'exited'; reason: string; generation: number; restartInMs?: number }
  | { type: 'start_failed'; error: string; restartInMs?: number };

/** How the SDK client that talks to the upstream is wired into the session that owns it. */
export interface UpstreamWiring {
  /** Runs on every new Client before it connects: install the handlers for server-to-client traffic. */
  prepare(client: Client): void;
  /** After a restart (not the first start): the session may tell its client that lists changed. */
  restarted?(client: Client): void;
}

export class Upstream {
  readonly name: string;
  private client: Client | undefined;
  private transport: SandboxTransport | undefined;
  private connecting: Promise<Client> | undefined;
  private closing = false;
  private generation = 0;
  private failures = 0;
  private restartTimer: NodeJS.Timeout | undefined;
  private waiters: { resolve: (c: Client) => void; reject: (e: unknown) => void }[] = [];
  private clientInfo: Implementation = { name: 'captrap', version: '0' };
  private capabilities: ClientCapabilities = {};
  /** Why the last server process ended, for the errors of requests it took with it. */
  lastExit: string | undefined;

  constructor(
    private readonly spec: UpstreamSpec,
    private readonly wiring: UpstreamWiring,
  ) {
    this.name = spec.name;
  }

  get running(): boolean {
    return this.client !== undefined;
  }

  /** The pid and cgroup of the live server process, for tests and `ps`. */
  get sandbox(): Sandbox | undefined {
    return this.transport?.sandbox;
  }

  /** Starts the server and initializes it with the real client's identity and capabilities. */
  start(clientInfo: Implementation, capabilities: ClientCapabilities): Promise<Client> {
    this.clientInfo = clientInfo;
    this.capabilities = capabilities;
    return this.connect();
  }

  private connect(): Promise<Client> {
    if (this.closing) return Promise.reject(new UpstreamError('E_UPSTREAM_CLOSED', `upstream server ${this.name} is shutting down`));
    this.connecting ??= this.spawnAndInitialize().finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async spawnAndInitialize(): Promise<Client> {
    const generation = ++this.generation;
    let sandbox: Sandbox;
    try {
      sandbox = runSandboxed(this.spec.command, this.spec.args, { ...this.spec.sandbox, stdin: 'pipe', maxOutputBytes: 64 * 1024 });
    } catch (err) {
      // Nothing started, so no exit will schedule the next try: a restart schedules it here.
      if (generation > 1) this.scheduleRestart();
      throw err;
    }
    const stderr = this.spec.stderr ?? ((c: Buffer) => process.stderr.write(c));
    sandbox.stderr?.on('data', stderr);
    this.spec.onEvent?.({ type: 'started', pid: sandbox.pid, cgroup: sandbox.cgroupName, generation });
    const transport = new SandboxTransport(sandbox, (result, err) => this.exited(generation, result, err));
    const client = new Client(this.clientInfo, { capabilities: this.capabilities });
    this.wiring.prepare(client);
    this.transport = transport;
    try {
      await client.connect(transport);
    } catch (err) {
      await transport.close();
      throw err;
    }
    if (this.closing) {
      await transport.close();
      throw new UpstreamError('E_UPSTREAM_CLOSED', `upstream server ${this.name} is shutting down`);
    }
    this.client = client;
    const w = this.waiters;
    this.waiters = [];
    for (const x of w) x.resolve(client);
    return client;
  }

  private exited(generation: number, result: SandboxResult | undefined, err: unknown): void {
    if (generation !== this.generation) return;
    this.client = undefined;
    this.lastExit = result ? `${describeExitReason(result.reason)}${result.stderr ? `: ${result.stderr.trim().split('\n').slice(-1)[0]}` : ''}` : `failed: ${(err as Error)?.message ?? String(err)}`;
    if (this.closing) {
      this.spec.onEvent?.({ type: 'exited', reason: this.lastExit, generation });
      return;
    }
    // A server that keeps dying waits longer each time; one that ran a while starts from the beginning.
    if (result && result.durationMs > 30_000) this.failures = 0;
    const delay = this.scheduleRestart();
    this.spec.onEvent?.({ type: 'exited', reason: this.lastExit, generation, restartInMs: delay });
  }

  private scheduleRestart(): number {
    const { initial, max } = this.spec.backoffMs ?? { initial: 250, max: 30_000 };
    const delay = Math.min(max, initial * 2 ** this.failures++);
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      this.connect().then(
        (c) => this.wiring.restarted?.(c),
        (e: unknown) => {
          if (this.closing) return;
          // A start that failed after spawning is retried from its exit (exited() above).
          this.spec.onEvent?.({ type: 'start_failed', error: (e as Error).message });
        },
      );
    }, delay);
    return delay;
  }

  /**
   * The live client; while the server restarts, waits for it (up to `waitMs`). Never starts the
   * server: the first start belongs to initialize.
   */
  current(waitMs: number): Promise<Client> {
    if (this.client) return Promise.resolve(this.client);
    if (this.closing) return Promise.reject(new UpstreamError('E_UPSTREAM_CLOSED', `upstream server ${this.name} is shutting down`));
    if (this.generation === 0) return Promise.reject(new UpstreamError('E_NOT_INITIALIZED', `upstream server ${this.name} is not started: the client has not sent initialize`));
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject };
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== entry);
        reject(new UpstreamError('E_UPSTREAM_UNAVAILABLE', `upstream server ${this.name} is restarting (last exit: ${this.lastExit ?? 'unknown'}) and did not come back within ${waitMs} ms`));
      }, waitMs);
      this.waiters.push({
        resolve: (c) => {
          clearTimeout(t);
          resolve(c);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      });
    });
  }

  /** Stops restarting, kills the server's whole tree and waits until its sandbox is gone. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    const w = this.waiters;
    this.waiters = [];
    for (const x of w) x.reject(new UpstreamError('E_UPSTREAM_CLOSED', `upstream server ${this.name} is shutting down`));
    await this.connecting?.catch(() => undefined);
    const t = this.transport;
    this.client = undefined;
    if (t) await t.close();
  }
}
