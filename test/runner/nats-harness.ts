// Test and bench helpers for the nats revocation backend: a real nats-server with JetStream on a
// free port and its own store dir (killed by PID), and a TCP proxy per host that can be cut (a
// silent partition: bytes stop, no reset) and healed (the stuck sockets are then reset).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The nats-server binary on PATH, or null. */
export function findNatsServer(): string | null {
  const r = spawnSync('sh', ['-c', 'command -v nats-server'], { encoding: 'utf8' });
  const p = r.stdout.trim();
  return r.status === 0 && p ? p : null;
}

export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

export class NatsServer {
  private proc: ChildProcess | null = null;
  private constructor(
    readonly bin: string,
    readonly port: number,
    readonly dir: string,
    /** More nats-server flags: --user/--pass, --tls/--tlscert/--tlskey... */
    readonly extraArgs: readonly string[] = [],
  ) {}

  static async start(bin: string, extraArgs: readonly string[] = []): Promise<NatsServer> {
    const s = new NatsServer(bin, await freePort(), mkdtempSync(join(tmpdir(), 'captrap-nats-')), extraArgs);
    await s.restart();
    return s;
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  /** Starts (again) on the same port with the same store dir; resolves when it is ready. */
  async restart(): Promise<void> {
    if (this.proc) throw new Error('nats-server already running');
    for (let attempt = 0; ; attempt++) {
      const proc = spawn(this.bin, ['-a', '127.0.0.1', '-p', String(this.port), '-js', '-sd', this.dir, ...this.extraArgs], { stdio: ['ignore', 'ignore', 'pipe'] });
      let log = '';
      const ready = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), 10_000);
        proc.stderr!.on('data', (d: Buffer) => {
          log += d.toString();
          if (log.includes('Server is ready')) {
            clearTimeout(timer);
            resolve(true);
          }
        });
        proc.once('exit', () => {
          clearTimeout(timer);
          resolve(false);
        });
      });
      if (ready) {
        proc.stderr!.resume();
        this.proc = proc;
        return;
      }
      if (proc.exitCode === null) proc.kill('SIGKILL');
      // The port may still be held for a moment by the previous instance.
      if (attempt >= 20) throw new Error(`nats-server did not start on port ${this.port}:\n${log.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  /** SIGKILL by PID, as a crash would. */
  async kill(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await exited;
  }

  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

interface Pair {
  client: Socket;
  upstream: Socket | null;
  dead: boolean;
}

/** A per-host path to the server that a test can cut without touching the others. */
export class TcpProxy {
  private readonly pairs = new Set<Pair>();
  private isCut = false;
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(targetPort: number): Promise<TcpProxy> {
    let proxy!: TcpProxy;
    const server = createServer((client) => proxy.accept(client, targetPort));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    proxy = new TcpProxy(server, (server.address() as { port: number }).port);
    return proxy;
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  private accept(client: Socket, targetPort: number): void {
    const pair: Pair = { client, upstream: null, dead: this.isCut };
    this.pairs.add(pair);
    const drop = () => {
      client.destroy();
      pair.upstream?.destroy();
      this.pairs.delete(pair);
    };
    client.on('error', drop).on('close', drop);
    if (pair.dead) return; // a connection made during the cut hangs, as it would behind a dead link
    const up = tcpConnect(targetPort, '127.0.0.1');
    pair.upstream = up;
    up.on('error', drop).on('close', drop);
    client.on('data', (d) => {
      if (!pair.dead) up.write(d);
    });
    up.on('data', (d) => {
      if (!pair.dead) client.write(d);
    });
  }

  /** Silent partition: nothing passes either way, nothing is reset. */
  cut(): void {
    this.isCut = true;
    for (const p of this.pairs) p.dead = true;
  }

  /** The link is back; connections stuck across the cut are reset, as a NAT or firewall would. */
  heal(): void {
    this.isCut = false;
    for (const p of [...this.pairs]) {
      if (!p.dead) continue;
      p.client.destroy();
      p.upstream?.destroy();
      this.pairs.delete(p);
    }
  }

  async close(): Promise<void> {
    for (const p of this.pairs) {
      p.client.destroy();
      p.upstream?.destroy();
    }
    this.pairs.clear();
    await new Promise((r) => this.server.close(r));
  }
}

/** Polls `cond` every 5 ms until it holds or `ms` pass; returns how long it took, or throws. */
export async function waitFor(what: string, cond: () => boolean, ms: number): Promise<number> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
  return Date.now() - t0;
}
