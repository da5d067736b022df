// Warm launchers started by a small resident helper (launcher/captrap-spawn.c) instead of by a
// spawn from this process.
//
// A spawn from Node forks all of Node, and the fork copies its page tables while the event loop
// waits: on the 2-core VM this was measured on, 1.7 ms at 45 MB resident, 12 ms at 145 MB, 39 ms
// at 545 MB. A sidecar refills its warm pool after every tool call, so every call paid that on
// the event loop. Through captrap-spawn a refill costs a 16-byte request and, when the helper
// answers, four open()s of the new launcher's pipes through /proc/<helper>/fd (a pipe, unlike a
// socket, can be opened there, and Node has no other way to receive a descriptor).
//
// What a warm launcher started this way differs in: its parent is the helper (so its --ppid
// names the helper, which dies with captrap: parent-death signals chain), its request pipe and
// its ready pipe are two pipes (captrap-launch --split-ctl), and its stdout and stderr are pipes
// rather than Node's socket pairs. Used only where it is built and works (a failed start falls
// back to Node's spawn); CAPTRAP_SPAWNER=0 turns it off.
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { closeSync, constants as fsConstants, openSync } from 'node:fs';
import { Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import type { Readable, Writable } from 'node:stream';
import { log } from '../log.js';
import { registerOwnHelper, unregisterOwnHelper } from './cgroup.js';
import { builtProgramPath } from './launcher/launcher.js';

/** What a sandbox uses of its leader's process: a ChildProcess, or a SpawnedProcess. */
export interface LeaderProcess extends EventEmitter {
  readonly pid?: number | undefined;
  readonly exitCode: number | null;
  readonly signalCode: NodeJS.Signals | null;
  readonly stdin: Writable | null;
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
  kill(signal?: NodeJS.Signals | number): boolean;
  ref(): void;
  unref(): void;
  once(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  once(event: string | symbol, listener: (...args: any[]) => void): this;
  prependOnceListener(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  prependOnceListener(event: string | symbol, listener: (...args: any[]) => void): this;
}

const REPLY_BYTES = 32;
/** A helper that dies this many times in a row, before starting anything, is not started again. */
const MAX_HELPER_FAILURES = 3;

const signalNames = new Map<number, NodeJS.Signals>(Object.entries(osConstants.signals).map(([name, n]) => [n, name as NodeJS.Signals]));

function header(type: string, id: number, a: number, b: number): Buffer {
  const h = Buffer.alloc(16);
  h.write(type, 0, 'latin1');
  h.writeUInt32LE(id, 4);
  h.writeUInt32LE(a, 8);
  h.writeUInt32LE(b, 12);
  return h;
}

/** A process captrap-spawn started: a ChildProcess's events and fields, for what a warm launcher needs. */
export class SpawnedProcess extends EventEmitter implements LeaderProcess {
  pid: number | undefined;
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  readonly stdin = null;
  stdout: Socket | null = null;
  stderr: Socket | null = null;
  /** The launcher's fd 3 (it reads its request there) and fd 4 (it writes 'R' there when ready). */
  request: Socket | null = null;
  ready: Socket | null = null;
  private refd = true;

  constructor(
    private readonly helper: Spawner,
    readonly id: number,
  ) {
    super();
  }

  get exited(): boolean {
    return this.exitCode !== null || this.signalCode !== null;
  }

  kill(signal: NodeJS.Signals | number = 'SIGTERM'): boolean {
    const n = typeof signal === 'number' ? signal : osConstants.signals[signal];
    if (n === undefined || !Number.isInteger(n) || n <= 0) throw new TypeError(`unknown signal: ${String(signal)}`);
    if (this.exited) return false;
    return this.helper.kill(this.id, n);
  }

  /** Whether its exit keeps captrap's event loop alive (its pipes are ref'd on their own, as a ChildProcess's). */
  ref(): void {
    if (this.refd || this.exited) return;
    this.refd = true;
    this.helper.refs(+1);
  }

  unref(): void {
    if (!this.refd || this.exited) return;
    this.refd = false;
    this.helper.refs(-1);
  }

  /** Called by the helper: the pipes are open (emits 'spawn'). */
  opened(pid: number, out: Socket, err: Socket, request: Socket, ready: Socket): void {
    this.pid = pid;
    this.stdout = out;
    this.stderr = err;
    this.request = request;
    this.ready = ready;
    this.emit('spawn');
  }

  /** Called by the helper: reaped, or never started (code 125 with an 'error'), or the helper died (SIGKILL: so did this). */
  ended(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.exited) return;
    if (this.refd) this.helper.refs(-1);
    this.refd = false;
    this.exitCode = code;
    this.signalCode = signal;
    this.emit('exit', code, signal);
  }
}

export class Spawner {
  readonly pid: number;
  private readonly child: ChildProcess;
  private readonly live = new Map<number, SpawnedProcess>();
  private nextId = 1;
  private pending = Buffer.alloc(0);
  private refCount = 0;
  private started = false;
  dead = false;

  private constructor(child: ChildProcess, pid: number, onDeath: (early: boolean) => void) {
    this.child = child;
    this.pid = pid;
    registerOwnHelper(pid);
    // Like the owner watchdog and the death watch: the helper never keeps captrap alive by itself.
    child.unref();
    (child.stdin as unknown as { unref?: () => void }).unref?.();
    (child.stdout as unknown as { unref?: () => void }).unref?.();
    child.stdin!.on('error', () => undefined);
    child.stdout!.on('data', (c: Buffer) => this.onReplies(c));
    child.once('exit', (code, signal) => {
      unregisterOwnHelper(pid);
      this.dead = true;
      // Everything it started had it as parent, with a parent-death signal armed: SIGKILL.
      for (const p of [...this.live.values()]) p.ended(null, 'SIGKILL');
      this.live.clear();
      log.debug({ code, signal }, 'captrap-spawn exited');
      onDeath(!this.started);
    });
  }

  static start(path: string, onDeath: (early: boolean) => void): Spawner | undefined {
    let child: ChildProcess;
    try {
      child = spawn(path, [String(process.pid)], { stdio: ['pipe', 'pipe', 'inherit'], cwd: '/', env: {} });
    } catch (err) {
      log.debug({ err }, 'cannot start captrap-spawn');
      return undefined;
    }
    child.on('error', () => undefined);
    if (child.pid === undefined || !child.stdin || !child.stdout) return undefined;
    return new Spawner(child, child.pid, onDeath);
  }

  /** Starts `path` with `argv` (argv[0] first); undefined if the helper is gone. Emits 'spawn' once its pipes are open. */
  spawn(path: string, argv: readonly string[]): SpawnedProcess | undefined {
    if (this.dead) return undefined;
    const id = this.nextId++;
    if (this.nextId > 0xffff_fff0) this.nextId = 1;
    const payload = Buffer.from([path, ...argv].map((s) => `${s}\0`).join(''));
    const p = new SpawnedProcess(this, id);
    this.live.set(id, p);
    this.refs(+1);
    this.child.stdin!.write(Buffer.concat([header('SPWN', id, 1 + argv.length, payload.length), payload]));
    return p;
  }

  kill(id: number, signal: number): boolean {
    if (this.dead || !this.live.has(id)) return false;
    this.child.stdin!.write(header('KILL', id, signal, 0));
    return true;
  }

  /** The helper's replies keep the event loop alive while any started process that is ref'd runs. */
  refs(delta: number): void {
    const before = this.refCount;
    this.refCount += delta;
    const out = this.child.stdout as unknown as { ref?: () => void; unref?: () => void };
    if (before === 0 && this.refCount > 0) out.ref?.();
    else if (before > 0 && this.refCount === 0) out.unref?.();
  }

  private onReplies(chunk: Buffer): void {
    const buf = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    let off = 0;
    for (; off + REPLY_BYTES <= buf.length; off += REPLY_BYTES) this.onReply(buf.subarray(off, off + REPLY_BYTES));
    this.pending = Buffer.from(buf.subarray(off));
  }

  private onReply(r: Buffer): void {
    const type = r.toString('latin1', 0, 4);
    const id = r.readUInt32LE(4);
    const p = this.live.get(id);
    if (type === 'PIPE') {
      const pid = r.readInt32LE(8);
      const fds = [r.readInt32LE(12), r.readInt32LE(16), r.readInt32LE(20), r.readInt32LE(24)];
      const opened: number[] = [];
      try {
        // The child's order: fd 1's and fd 2's read ends, fd 3's write end, fd 4's read end.
        fds.forEach((fd, i) => {
          const mode = i === 2 ? fsConstants.O_WRONLY : fsConstants.O_RDONLY;
          opened.push(openSync(`/proc/${this.pid}/fd/${fd}`, mode | fsConstants.O_NONBLOCK));
        });
      } catch (err) {
        for (const fd of opened) closeSync(fd);
        // Not a passing failure (this host's /proc refuses us): stop using the helper at all.
        disabledBecause = `cannot open the pipes of a process it started through /proc/${this.pid}/fd: ${(err as Error).message}`;
        log.warn({ err, pid }, 'captrap-spawn: cannot open a started process\'s pipes; warm launchers are spawned by captrap itself from now on');
        this.child.kill('SIGKILL'); // what it started dies with it, and is reported so
        return;
      }
      this.child.stdin!.write(header('CLOS', id, 0, 0));
      this.started = true;
      if (!p) {
        for (const fd of opened) closeSync(fd);
        return;
      }
      const [out, err, request, ready] = opened.map((fd, i) => new Socket({ fd, readable: i !== 2, writable: i === 2 }));
      p.opened(pid, out!, err!, request!, ready!);
    } else if (type === 'EXIT') {
      const status = r.readInt32LE(8);
      this.live.delete(id);
      const sig = status & 0x7f;
      if (sig === 0) p?.ended((status >> 8) & 0xff, null);
      else p?.ended(null, signalNames.get(sig) ?? 'SIGKILL');
    } else if (type === 'FAIL') {
      const errno = r.readInt32LE(8);
      this.live.delete(id);
      if (!p) return;
      if (p.listenerCount('error') > 0) p.emit('error', new Error(`captrap-spawn could not start the process (errno ${errno})`));
      p.ended(125, null);
    } else {
      log.error({ type }, 'captrap-spawn: unknown reply; stopping it');
      this.child.kill('SIGKILL');
    }
  }
}

let current: Spawner | undefined;
let failures = 0;
/** Set when the helper cannot work on this host at all: it is not started again. */
let disabledBecause: string | undefined;

/**
 * The running helper, started on first use; undefined where it is not built, is turned off
 * (CAPTRAP_SPAWNER=0) or keeps dying before it started anything (the caller then spawns itself).
 */
export function getSpawner(): Spawner | undefined {
  if (process.env.CAPTRAP_SPAWNER === '0') return undefined;
  if (current && !current.dead) return current;
  current = undefined;
  if (failures >= MAX_HELPER_FAILURES || disabledBecause !== undefined) return undefined;
  const path = builtProgramPath('captrap-spawn');
  if (!path) return undefined;
  const s = Spawner.start(path, (early) => {
    if (early) failures++;
    else failures = 0;
    if (failures === MAX_HELPER_FAILURES) log.warn('captrap-spawn keeps exiting; warm launchers are spawned by captrap itself from now on');
  });
  current = s;
  return s;
}

/** How warm launchers are started here, for doctor (without starting the helper). */
export function spawnerStatus(): { available: boolean; why: string } {
  if (process.env.CAPTRAP_SPAWNER === '0') return { available: false, why: 'CAPTRAP_SPAWNER=0' };
  const path = builtProgramPath('captrap-spawn');
  if (!path) return { available: false, why: 'build/captrap-spawn is not built (npm run build, with a C compiler)' };
  if (disabledBecause !== undefined) return { available: false, why: disabledBecause };
  if (failures >= MAX_HELPER_FAILURES) return { available: false, why: `${path} kept exiting` };
  return { available: true, why: path };
}
