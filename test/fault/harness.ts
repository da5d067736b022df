// The fault-injection harness: a real `captrap serve` in a child process with a temporary
// config, state dir and cgroup base; remote-controlled agents (test/fixtures/agents/fault-proxy.mjs)
// that report to a control socket; the admin socket; and the checks the suite and
// scripts/fault-inject.ts make afterwards (no process, cgroup or live capability left behind,
// the audit log verifies). Used by test/fault/*.test.ts, scripts/fault-inject.ts and the sidecar bench.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync, type Dirent } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cleanupStaleCgroups, hierarchyRoots, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { sandboxPidNamespace } from '../../src/isolation/confine.js';
import { probeHost, type HostInfo } from '../../src/isolation/host.js';
import { cgroupsOf, isSameProcess, listPids, processRef, readStat, type ProcessRef } from '../../src/isolation/proc.js';
import { readAuditRecords, type AuditRecord } from '../../src/kernel/audit.js';
import { RpcConnection, RpcError } from '../../src/runner/jsonrpc.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const PROXY_AGENT = join(ROOT, 'test/fixtures/agents/fault-proxy.mjs');
export const host: HostInfo = probeHost();

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `cond` every `everyMs` until it is true or `timeoutMs` passed; returns the last value. */
export async function waitFor<T>(cond: () => T | Promise<T>, timeoutMs: number, everyMs = 5): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v || Date.now() >= deadline) return v;
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------------------- config

export interface ToolConfig {
  name: string;
  description?: string;
  command: string[];
  args?: Record<string, unknown>;
  resources?: unknown[];
  limits?: Record<string, unknown>;
}

export interface CapTemplate {
  resource: { type: string; pattern: string };
  operations: string[];
  constraints?: Record<string, unknown>;
  ttlMs?: number;
}

export interface AgentConfig {
  id: string;
  command?: string;
  args?: string[];
  env?: Record<string, string>;
  /** Default: the control socket's directory read-only (the agent must reach it). */
  view?: { readOnly?: string[]; readWrite?: string[]; hide?: string[] };
  confine?: boolean;
  allowRoot?: boolean;
  limits?: Record<string, unknown>;
  capabilities?: CapTemplate[];
  requestable?: CapTemplate[];
}

/**
 * The tools every fault config has. `hang` is a shell that starts a `setsid` escapee (another
 * shell) and sleeps; both shells carry the call's unique `dir` argument in their argv. Confined,
 * a tool can neither write to the host nor know its host pids, so the harness finds its
 * processes from outside: by that argument, then by the tool's cgroup (see startHang).
 */
export const FAULT_TOOLS: ToolConfig[] = [
  { name: 'true', command: ['/bin/true'] },
  { name: 'echo', command: ['/bin/echo', '{msg}'], args: { msg: { type: 'string', maxLength: 4096 } } },
  {
    name: 'hang',
    // `; exit 0` keeps each shell alive (no exec of its last command), so its argv keeps the marker.
    command: ['/bin/sh', '-c', 'setsid /bin/sh -c "sleep 300; exit 0" "$0" & sleep 300; exit 0', '{dir}'],
    args: { dir: { type: 'string', maxLength: 4096 } },
  },
  { name: 'nap', command: ['/bin/sleep', '{secs}'], args: { secs: { type: 'string', pattern: '[0-9.]{1,6}' } } },
];

export const ALL_TOOLS_CAP: CapTemplate = {
  resource: { type: 'tool', pattern: '*' },
  operations: ['invoke'],
  constraints: { allowedTools: FAULT_TOOLS.map((t) => t.name) },
  ttlMs: 3_600_000,
};

/**
 * Lets an agent spawn sub-agents: the proxy agents are launched as `node fault-proxy.mjs`, and a
 * process capability is judged on the command's real path.
 */
export const SPAWN_NODE_CAP: CapTemplate = {
  resource: { type: 'process', pattern: realpathSync(process.execPath) },
  operations: ['spawn'],
  ttlMs: 3_600_000,
};

/** A proxy agent entry: runs fault-proxy.mjs reporting to the harness's control socket. */
export function proxyAgent(id: string, extra: Partial<AgentConfig> = {}): AgentConfig {
  return { id, capabilities: [ALL_TOOLS_CAP], ...extra };
}

export interface ServeOptions {
  agents: AgentConfig[];
  tools?: ToolConfig[];
  onAgentExit?: 'kill' | 'finish';
  sandbox?: Record<string, unknown>;
  /** Reuse an existing state dir (restart after a crash); default a fresh temp dir. */
  dir?: string;
  cgroupBase?: string;
  /** Copy serve's stderr to ours (debugging; also CAPTRAP_FAULT_ECHO=1). */
  echoStderr?: boolean;
  readyTimeoutMs?: number;
  /** Audit flush interval (default 20 ms so tests see records soon; omit-equivalent 100 is serve's default). */
  auditFlushIntervalMs?: number;
}

export function uniqueBase(tag = 'f'): string {
  return `captrap-${tag}-${process.pid}-${randomBytes(3).toString('hex')}`;
}

// ---------------------------------------------------------------------------- agents over the control socket

interface ControlAnswer {
  id: number;
  ok: boolean;
  value?: unknown;
  error?: string;
}

export interface RpcOutcome<T = unknown> {
  result?: T;
  error?: { code: number; message: string; data?: { code?: string; reason?: string } & Record<string, unknown> };
}

const OWN_PID_NS = readlinkSync('/proc/self/ns/pid');

/** The last field of NSpid: the pid a process has in its own (innermost) pid namespace. */
function innermostPid(pid: number): number | undefined {
  try {
    const m = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    const all = m?.[1]?.trim().split(/\s+/);
    return all ? Number(all[all.length - 1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The host pid of the process that is `nsPid` in pid namespace `ns` (a `pid:[inode]` link text),
 * found from outside (/proc/<pid>/ns/pid and NSpid); `ns` null or ours: `nsPid` is a host pid.
 */
export function hostPidIn(ns: string | null, nsPid: number): number | undefined {
  if (ns === null || ns === OWN_PID_NS) return nsPid;
  for (const pid of listPids()) {
    try {
      if (readlinkSync(`/proc/${pid}/ns/pid`) !== ns) continue;
    } catch {
      continue;
    }
    if (innermostPid(pid) === nsPid) return pid;
  }
  return undefined;
}

/** One connected proxy agent: orders go out over its control connection, answers come back. */
export class ProxyAgent {
  private next = 1;
  private readonly waiting = new Map<number, (a: ControlAnswer) => void>();
  private buf = '';
  closed = false;
  /**
   * The agent's sandbox leader as the sidecar sees it (agents.list): the process its capabilities
   * are bound to. Confined, the launcher on the host side of the agent's pid namespace, not `ref`.
   * Set by ServeHandle.agent().
   */
  leader: ProcessRef | undefined;

  constructor(
    readonly id: string,
    /** The agent's own process (node fault-proxy.mjs), host pid. */
    readonly pid: number,
    readonly ref: ProcessRef,
    private readonly sock: net.Socket,
    /** The agent's pid namespace (null if it could not tell); pids it reports are in it. */
    readonly pidNs: string | null = null,
  ) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      this.buf += chunk;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) !== -1) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        const a = JSON.parse(line) as ControlAnswer;
        const w = this.waiting.get(a.id);
        this.waiting.delete(a.id);
        w?.(a);
      }
    });
    sock.on('close', () => {
      this.closed = true;
      for (const [, w] of this.waiting) w({ id: -1, ok: false, error: `agent ${id} went away` });
      this.waiting.clear();
    });
  }

  order<T = unknown>(op: string, fields: Record<string, unknown> = {}, timeoutMs = 60_000): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`agent ${this.id} went away`));
    const id = this.next++;
    return new Promise<T>((resolvePromise, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`agent ${this.id}: no answer to ${op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, (a) => {
        clearTimeout(timer);
        if (a.ok) resolvePromise(a.value as T);
        else reject(new Error(a.error));
      });
      this.sock.write(JSON.stringify({ id, op, ...fields }) + '\n');
    });
  }

  /** A JSON-RPC call on the agent's captrap channel; resolves with the result or the error object. */
  call<T = unknown>(method: string, params: unknown = {}, timeoutMs?: number): Promise<RpcOutcome<T>> {
    return this.order<RpcOutcome<T>>('rpc', { method, params }, timeoutMs);
  }

  /** Like call() but throws on an error answer. */
  async ok<T = unknown>(method: string, params: unknown = {}): Promise<T> {
    const r = await this.call<T>(method, params);
    if (r.error) throw new Error(`${this.id} ${method}: ${r.error.message} ${JSON.stringify(r.error.data ?? {})}`);
    return r.result as T;
  }

  /** The host ref of a process the agent reported by its own (namespace) pid, e.g. a `fork` child. */
  hostRef(nsPid: number): ProcessRef | undefined {
    const pid = hostPidIn(this.pidNs, nsPid);
    return pid === undefined ? undefined : processRef(pid);
  }

  close(): void {
    this.sock.destroy();
  }
}

export class ControlServer {
  readonly agents = new Map<string, ProxyAgent>();
  private readonly waiters = new Map<string, ((a: ProxyAgent) => void)[]>();
  private readonly server: net.Server;

  constructor(readonly path: string) {
    this.server = net.createServer((sock) => {
      let buf = '';
      const onData = (chunk: Buffer) => {
        buf += chunk.toString('utf8');
        const nl = buf.indexOf('\n');
        if (nl === -1) return;
        sock.off('data', onData);
        const hello = JSON.parse(buf.slice(0, nl)) as { agent: string; pid: number; pidNs?: string | null };
        // Confined, hello.pid is the agent's pid in its own namespace: the host pid is found from outside.
        const hostPid = hostPidIn(hello.pidNs ?? null, hello.pid) ?? -1;
        const ref = processRef(hostPid) ?? { pid: hostPid, startTime: -1 };
        const agent = new ProxyAgent(hello.agent, hostPid, ref, sock, hello.pidNs ?? null);
        this.agents.set(hello.agent, agent);
        const ws = this.waiters.get(hello.agent) ?? [];
        this.waiters.delete(hello.agent);
        for (const w of ws) w(agent);
        if (buf.length > nl + 1) sock.unshift(Buffer.from(buf.slice(nl + 1)));
      };
      sock.on('data', onData);
      sock.on('error', () => {});
    });
  }

  listen(): Promise<void> {
    // Agents run under uids of their own: the socket must be connectable by them.
    return new Promise((r) => this.server.listen(this.path, () => (chmodSync(this.path, 0o666), r())));
  }

  wait(id: string, timeoutMs = 15_000): Promise<ProxyAgent> {
    const have = this.agents.get(id);
    if (have && !have.closed) return Promise.resolve(have);
    return new Promise((resolvePromise, reject) => {
      const timer = setTimeout(() => reject(new Error(`agent ${id} did not connect to the control socket within ${timeoutMs} ms`)), timeoutMs);
      const list = this.waiters.get(id) ?? [];
      list.push((a) => {
        clearTimeout(timer);
        resolvePromise(a);
      });
      this.waiters.set(id, list);
    });
  }

  close(): void {
    for (const a of this.agents.values()) a.close();
    this.server.close();
  }
}

// ---------------------------------------------------------------------------- serve

export interface AgentInfo {
  id: string;
  parent: string | null;
  pid: number;
  startTime: number;
  state: 'running' | 'exited';
  exitReason: string | null;
  capabilities: number;
  toolsRunning: number;
}

export interface CapView {
  id: string;
  token: string;
  principal: string;
  resource: { type: string; pattern: string };
  operations: string[];
  constraints: Record<string, unknown>;
  parent: string | null;
  depth: number;
  issuedAt: number | string;
  expiresAt: number | string | null;
  holder: { pid: number; startTime: number } | null;
  revoked: boolean;
}

export interface ServeHandle {
  dir: string;
  configPath: string;
  stateDir: string;
  auditDir: string;
  socketPath: string;
  cgroupBase: string;
  child: ChildProcess;
  /** The serve process itself (node --import tsx, no wrapper process in between). */
  ref: ProcessRef;
  admin: RpcConnection;
  control: ControlServer;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  agent(id: string, timeoutMs?: number): Promise<ProxyAgent>;
  adminCall<T = unknown>(method: string, params?: unknown): Promise<T>;
  agents(): Promise<AgentInfo[]>;
  caps(principal?: string): Promise<CapView[]>;
}

export function writeConfig(dir: string, opts: ServeOptions, controlPath: string, cgroupBase: string): string {
  const agents = opts.agents.map((a) => ({
    command: process.execPath,
    args: [PROXY_AGENT, controlPath],
    // Confined agents see only what they are shown: the control socket's directory too.
    view: { readOnly: [dirname(controlPath)] },
    ...a,
  }));
  const config = {
    stateDir: 'state',
    adminSocket: 'state/admin.sock',
    cgroupBase,
    keys: { capabilityKeyFile: 'state/cap.key' },
    audit: { dir: 'state/audit', flushIntervalMs: opts.auditFlushIntervalMs ?? 20 },
    sandbox: { memory: '256M', pids: 128, timeout: '60s', maxOutputBytes: '64K', ...(opts.sandbox ?? {}) },
    onAgentExit: opts.onAgentExit ?? 'kill',
    tools: opts.tools ?? FAULT_TOOLS,
    agents,
  };
  const path = join(dir, 'captrap.json');
  writeFileSync(path, JSON.stringify(config, null, 2));
  return path;
}

/**
 * The node command line that runs the captrap CLI directly (no tsx wrapper process: a signal to
 * the pid hits serve itself). CAPTRAP_CLI_FROM_DIST=1 runs the built dist/ instead, as a user
 * would: the benchmarks use it so serve's memory and latency are not the TypeScript loader's.
 */
export function cliArgv(args: string[]): string[] {
  if (process.env.CAPTRAP_CLI_FROM_DIST === '1') return [join(ROOT, 'dist/runner/cli.js'), ...args];
  return ['--import', 'tsx', join(ROOT, 'src/runner/cli.ts'), ...args];
}

export async function startServe(opts: ServeOptions): Promise<ServeHandle> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'captrap-fault-'));
  // Agents run under uids of their own: the way to the control socket must be open to them (the
  // state dir inside stays the sidecar's own, 0700, and hidden from every view).
  chmodSync(dir, 0o755);
  const cgroupBase = opts.cgroupBase ?? uniqueBase();
  const controlDir = join(dir, 'ctl');
  mkdirSync(controlDir, { recursive: true, mode: 0o755 });
  const controlPath = join(controlDir, `ctl-${randomBytes(3).toString('hex')}.sock`);
  const control = new ControlServer(controlPath);
  await control.listen();
  const configPath = writeConfig(dir, opts, controlPath, cgroupBase);
  const child = spawn(process.execPath, cliArgv(['serve', '--config', configPath]), {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, CAPTRAP_LOG_LEVEL: process.env.CAPTRAP_LOG_LEVEL ?? 'warn' },
  });
  let err = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (c: string) => {
    if (err.length < 1_000_000) err += c;
    if (opts.echoStderr ?? process.env.CAPTRAP_FAULT_ECHO === '1') process.stderr.write(c);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
  const ready = new Promise<string>((resolvePromise, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`serve not ready within ${opts.readyTimeoutMs ?? 20_000} ms; stderr:\n${err}`)), opts.readyTimeoutMs ?? 20_000);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (c: string) => {
      out += c;
      const m = /^captrap: ready (.+)\n/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolvePromise(m[1]!);
      }
    });
    void exited.then((e) => {
      clearTimeout(timer);
      reject(new Error(`serve exited before ready (code ${e.code}, signal ${e.signal}); stderr:\n${err}`));
    });
  });
  let socketPath: string;
  try {
    socketPath = await ready;
  } catch (err) {
    // Never ready: leave nothing behind (the process, the control socket, a temp dir we made).
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    control.close();
    await collectAndClean({ cgroupBase, dir });
    if (opts.dir === undefined) rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const ref = processRef(child.pid!);
  if (!ref) throw new Error('serve is ready but its process is gone');
  const sock = net.connect(resolve(dir, socketPath));
  await new Promise<void>((r, j) => {
    sock.once('connect', () => r());
    sock.once('error', j);
  });
  const admin = new RpcConnection(sock, sock, { maxLineBytes: 64 * 1024 * 1024 });
  const handle: ServeHandle = {
    dir,
    configPath,
    stateDir: join(dir, 'state'),
    auditDir: join(dir, 'state/audit'),
    socketPath: resolve(dir, socketPath),
    cgroupBase,
    child,
    ref,
    admin,
    control,
    stderr: () => err,
    exited,
    agent: async (id, timeoutMs) => {
      const a = await control.wait(id, timeoutMs);
      a.leader = await leaderOf(handle, a);
      return a;
    },
    adminCall: async <T>(method: string, params: unknown = {}) => (await admin.call(method, params, { timeoutMs: 20_000 })) as T,
    agents: async () => (await handle.adminCall<{ agents: AgentInfo[] }>('agents.list')).agents,
    caps: async (principal?: string) =>
      (await handle.adminCall<{ capabilities: CapView[] }>('capabilities.list', principal === undefined ? {} : { principal })).capabilities,
  };
  return handle;
}

/**
 * The sidecar's process ref for a connected agent, checked rather than assumed: the agent's own
 * process must be that leader or run inside its pid namespace.
 */
async function leaderOf(h: ServeHandle, a: ProxyAgent): Promise<ProcessRef> {
  const row = (await h.agents()).find((r) => r.id === a.id && r.state === 'running');
  if (!row) throw new Error(`agent ${a.id} connected but agents.list shows no running agent of that id`);
  const leader = { pid: row.pid, startTime: row.startTime };
  const ns = sandboxPidNamespace(leader.pid);
  const inside = ns === undefined ? leader.pid === a.pid : ns === a.pidNs;
  if (!inside) throw new Error(`agent ${a.id} (host pid ${a.pid}, ${a.pidNs}) is not the process of its sandbox (leader ${leader.pid}, ${ns ?? 'no pid namespace'})`);
  return leader;
}

/** SIGTERM, wait for exit (SIGKILL after `graceMs`); returns how it ended. */
export async function stopServe(h: ServeHandle, graceMs = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  h.admin.close();
  if (h.child.exitCode === null && h.child.signalCode === null) {
    h.child.kill('SIGTERM');
    const t = setTimeout(() => h.child.kill('SIGKILL'), graceMs);
    const e = await h.exited;
    clearTimeout(t);
    h.control.close();
    return e;
  }
  h.control.close();
  return h.exited;
}

// ---------------------------------------------------------------------------- leak checks

/** Cgroup directories under `base` in every hierarchy (the base dirs themselves not included). */
export function cgroupsUnder(base: string): string[] {
  const out: string[] = [];
  for (const h of hierarchyRoots(host)) {
    const d = `${h.root}/${base}`;
    let entries: Dirent[];
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      continue;
    }
    for (const e of entries) if (e.isDirectory()) out.push(`${d}/${e.name}`);
  }
  return out;
}

/** Live processes (refs) whose cgroup path in any hierarchy lies under `base`. */
export function processesInBase(base: string): ProcessRef[] {
  const out: ProcessRef[] = [];
  for (const pid of listPids()) {
    const cg = cgroupsOf(pid);
    if (!cg) continue;
    for (const path of cg.values()) {
      if (path === `/${base}` || path.startsWith(`/${base}/`)) {
        const st = readStat(pid);
        if (st && st.state !== 'Z') out.push({ pid, startTime: st.startTime });
        break;
      }
    }
  }
  return out;
}

/** Every live process whose environment says it is one of our agents (CAPTRAP_AGENT_ID) and whose argv names our control socket. */
export function processesMentioning(needle: string): ProcessRef[] {
  const out: ProcessRef[] = [];
  for (const pid of listPids()) {
    if (pid === process.pid) continue;
    let cmd: string;
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (!cmd.includes(needle)) continue;
    const st = readStat(pid);
    if (st && st.state !== 'Z') out.push({ pid, startTime: st.startTime });
  }
  return out;
}

/** Live shells one of whose arguments is exactly `marker` (a `hang` call's two shells; not the launcher, whose argv has it too), host refs. */
export function markedShells(marker: string): ProcessRef[] {
  const out: ProcessRef[] = [];
  for (const pid of listPids()) {
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (argv[0] !== '/bin/sh' || !argv.includes(marker)) continue;
    const st = readStat(pid);
    if (st && st.state !== 'Z') out.push({ pid, startTime: st.startTime });
  }
  return out;
}

/** Live children of a process (host refs). */
export function childrenOf(ref: ProcessRef): ProcessRef[] {
  const out: ProcessRef[] = [];
  for (const pid of listPids()) {
    const st = readStat(pid);
    if (st && st.ppid === ref.pid && st.state !== 'Z' && isSameProcess(ref)) out.push({ pid, startTime: st.startTime });
  }
  return out;
}

/** The processes of a `hang` call found from outside: its two shells (tool and setsid escapee) and their children. */
export function hangRefs(marker: string): ProcessRef[] {
  const shells = markedShells(marker);
  return [...shells, ...shells.flatMap(childrenOf)];
}

export function allGone(refs: readonly ProcessRef[]): boolean {
  return refs.every((r) => !isSameProcess(r));
}

/** Kills a leftover process only if its ref still names it (never a recycled pid). */
export function killRef(ref: ProcessRef): void {
  if (!isSameProcess(ref)) return;
  try {
    process.kill(ref.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

export interface Leftovers {
  processes: ProcessRef[];
  cgroups: string[];
  bases: string[];
}

/**
 * After serve has exited: what it left behind (processes in its cgroups or naming its control
 * socket, cgroup dirs), then removes all of it so one failing test does not poison the next.
 * Returns what was found before the clean-up.
 */
export async function collectAndClean(h: Pick<ServeHandle, 'cgroupBase' | 'dir'>, controlNeedle = h.dir): Promise<Leftovers> {
  const processes = [...processesInBase(h.cgroupBase), ...processesMentioning(controlNeedle)];
  const cgroups = cgroupsUnder(h.cgroupBase);
  for (const r of processes) killRef(r);
  if (processes.length > 0) await waitFor(() => allGone(processes), 2000);
  await cleanupStaleCgroups(host, h.cgroupBase).catch(() => undefined);
  let bases = removeCgroupBase(host, h.cgroupBase);
  // A cgroup whose last process just died can take a moment to become removable.
  for (let i = 0; i < 20 && bases.length > 0; i++) {
    await sleep(100);
    await cleanupStaleCgroups(host, h.cgroupBase).catch(() => undefined);
    bases = removeCgroupBase(host, h.cgroupBase);
  }
  return { processes, cgroups, bases };
}

/** Stop serve, then check and clean; removes the temp dir unless `keepDir`. */
export async function shutdown(h: ServeHandle, opts: { keepDir?: boolean } = {}): Promise<Leftovers & { exit: { code: number | null; signal: NodeJS.Signals | null } }> {
  const exit = await stopServe(h);
  // Sandboxes are removed before serve exits; give the kernel a moment to retire the cgroup dirs.
  await waitFor(() => cgroupsUnder(h.cgroupBase).length === 0, 2000);
  const left = await collectAndClean(h);
  if (!opts.keepDir) rmSync(h.dir, { recursive: true, force: true });
  return { ...left, exit };
}

// ---------------------------------------------------------------------------- audit

/** The principal_cleanup records for a process (the record names the principal only when the process held one principal's capabilities). */
export function cleanupRecords(h: Pick<ServeHandle, 'auditDir'>, who: { id: string; ref: ProcessRef; leader?: ProcessRef | undefined }): AuditRecord[] {
  const refs = [who.ref, ...(who.leader ? [who.leader] : [])];
  return readAuditRecords(
    h.auditDir,
    (r) =>
      r.type === 'principal_cleanup' &&
      (refs.some((ref) => r.process?.pid === ref.pid && r.process.startTime === ref.startTime) || r.principal === who.id || (Array.isArray(r.details?.principals) && (r.details.principals as unknown[]).includes(who.id))),
  );
}

export function auditRecords(h: Pick<ServeHandle, 'auditDir'>, filter?: (r: AuditRecord) => boolean): AuditRecord[] {
  return readAuditRecords(h.auditDir, filter);
}

/** The pubkey verify needs: wherever serve put it (the audit dir by default, else the state dir). */
function findPubkey(h: Pick<ServeHandle, 'auditDir' | 'stateDir'>): string | undefined {
  for (const d of [h.auditDir, h.stateDir]) {
    try {
      const f = readdirSync(d).find((n) => n.endsWith('.pub'));
      if (f) return join(d, f);
    } catch {
      // not there
    }
  }
  return undefined;
}

function findAuditKey(h: Pick<ServeHandle, 'auditDir' | 'stateDir'>): string | undefined {
  for (const p of [join(h.auditDir, 'audit.key'), join(h.stateDir, 'audit.key')]) if (existsSync(p)) return p;
  return undefined;
}

/** `captrap audit verify` as a user runs it; returns its exit status and JSON report. */
export function auditVerify(h: Pick<ServeHandle, 'auditDir' | 'stateDir'>): { status: number | null; report: { ok: boolean; records: number; closed: boolean } & Record<string, unknown>; stderr: string } {
  const args = ['audit', 'verify', h.auditDir, '--json'];
  const key = findAuditKey(h);
  const pub = findPubkey(h);
  if (key) args.push('--key', key);
  if (pub) args.push('--pubkey', pub);
  const r = spawnSync(process.execPath, cliArgv(args), { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  let report: { ok: boolean; records: number; closed: boolean } & Record<string, unknown>;
  try {
    report = JSON.parse(r.stdout);
  } catch {
    report = { ok: false, records: 0, closed: false, raw: r.stdout };
  }
  return { status: r.status, report, stderr: r.stderr };
}

// ---------------------------------------------------------------------------- capability checks

/** Capabilities the admin socket reports live whose holder process is gone. Must always be empty. */
export function liveCapsOfDeadHolders(caps: readonly CapView[]): CapView[] {
  return caps.filter((c) => !c.revoked && c.holder !== null && !isSameProcess(c.holder));
}

export function isRpcError(e: unknown): e is RpcError {
  return e instanceof RpcError;
}

// ---------------------------------------------------------------------------- scenario helpers

/** The first live process capability an agent holds: what agents.spawn needs. */
export async function spawnCap(agent: ProxyAgent): Promise<CapView> {
  const { capabilities } = await agent.ok<{ capabilities: CapView[] }>('capabilities.list');
  const cap = capabilities.find((c) => !c.revoked && c.resource.type === 'process');
  if (!cap) throw new Error(`${agent.id} holds no live process capability: ${JSON.stringify(capabilities)}`);
  return cap;
}

/** The first live tool capability an agent holds (from its own view on its channel). */
export async function toolCap(agent: ProxyAgent): Promise<CapView> {
  const { capabilities } = await agent.ok<{ capabilities: CapView[] }>('capabilities.list');
  const cap = capabilities.find((c) => !c.revoked && c.resource.type === 'tool');
  if (!cap) throw new Error(`${agent.id} holds no live tool capability: ${JSON.stringify(capabilities)}`);
  return cap;
}

export interface RunningTool {
  /** Settles when tools.invoke answers (after the tool ended or the agent died). */
  call: Promise<RpcOutcome<{ reason: string }>>;
  /**
   * Every process of the tool's sandbox, host refs, found from outside while it ran: its leader
   * (the process the sidecar started) first, then the rest of its cgroup (the namespace's init,
   * the shell, the setsid escapee, their sleeps).
   */
  refs: ProcessRef[];
  /** The tool's own shell and the setsid escapee it started. */
  shell: ProcessRef;
  escapee: ProcessRef;
  /** Cgroup dirs of the tool's shell, taken while it ran. */
  cgroups: string[];
}

/** Host refs of the processes in a cgroup directory. */
export function procsOf(cgroupDir: string): ProcessRef[] {
  let text: string;
  try {
    text = readFileSync(join(cgroupDir, 'cgroup.procs'), 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => processRef(Number(l)))
    .filter((r): r is ProcessRef => r !== undefined);
}

/** Cgroup directories (absolute) a live process is in, below `base` only. */
export function cgroupDirsOf(pid: number, base: string): string[] {
  const cg = cgroupsOf(pid);
  if (!cg) return [];
  const out: string[] = [];
  for (const h of hierarchyRoots(host)) {
    for (const [key, path] of cg) {
      const matches = h.key === '' ? key === '' : key.split(',').includes(h.key);
      if (matches && path.startsWith(`/${base}/`)) out.push(`${h.root}${path}`);
    }
  }
  return [...new Set(out)];
}

let hangSeq = 0;

/**
 * Starts the `hang` tool through `agent` and waits until its shell and its setsid escapee both
 * run, each with its sleep. Everything is found from outside (argv, ppid, session, cgroup.procs):
 * a confined tool knows only its namespace's pids and cannot write to the host.
 */
export async function startHang(h: ServeHandle, agent: ProxyAgent, capability?: string): Promise<RunningTool> {
  // A unique argument (nothing is written there): how the harness finds this call's processes.
  const marker = join(h.dir, `hang-${agent.id}-${++hangSeq}`);
  const cap = capability ?? (await toolCap(agent)).id;
  // The agent may be killed before the answer comes: then the call settles as an error, never rejects.
  const call = agent
    .call<{ reason: string }>('tools.invoke', { tool: 'hang', args: { dir: marker }, capability: cap }, 120_000)
    .catch((err: unknown): RpcOutcome<{ reason: string }> => ({ error: { code: -1, message: `agent gone: ${(err as Error).message}` } }));
  const started = () => {
    const shells = markedShells(marker);
    if (shells.length !== 2 || shells.some((s) => childrenOf(s).length === 0)) return undefined;
    const stats = shells.map((s) => readStat(s.pid));
    // The escapee is the shell the other one started, in a session of its own.
    const i = stats.findIndex((st, k) => st !== undefined && st.ppid === shells[1 - k]!.pid);
    if (i < 0 || stats[i]!.session === stats[1 - i]!.session) return undefined;
    return { shell: shells[1 - i]!, escapee: shells[i]! };
  };
  const found = await waitFor(started, 10_000, 20);
  if (!found) {
    const early = await Promise.race([call, sleep(10).then(() => undefined)]);
    throw new Error(`hang tool of ${agent.id} did not start: ${JSON.stringify(early)}; stderr:\n${h.stderr().slice(-2000)}`);
  }
  const cgroups = cgroupDirsOf(found.shell.pid, h.cgroupBase);
  const inCgroup = cgroups.length > 0 ? procsOf(cgroups[0]!) : [];
  // The leader: the member the sidecar started, itself or (a warm launcher) through its captrap-spawn.
  const starters = new Set([h.ref.pid, ...childrenOf(h.ref).filter((c) => readStat(c.pid)?.comm === 'captrap-spawn').map((c) => c.pid)]);
  const leader = inCgroup.filter((r) => starters.has(readStat(r.pid)?.ppid ?? -1));
  if (leader.length !== 1) throw new Error(`hang tool of ${agent.id}: expected one process of serve's in its cgroup ${cgroups[0]}, found ${JSON.stringify(leader)}`);
  const refs: ProcessRef[] = [];
  for (const r of [...leader, ...inCgroup, ...hangRefs(marker)]) if (!refs.some((x) => x.pid === r.pid)) refs.push(r);
  return { call, refs, shell: found.shell, escapee: found.escapee, cgroups };
}

/** SIGKILL (or another signal) to a process, only if its ref still names it. */
export function signalRef(ref: ProcessRef, sig: NodeJS.Signals = 'SIGKILL'): void {
  if (!isSameProcess(ref)) throw new Error(`process ${ref.pid} (start ${ref.startTime}) is already gone`);
  process.kill(ref.pid, sig);
}

/** True when the process is gone or a zombie (its ref may linger as a zombie until reaped). */
export function gone(ref: ProcessRef): boolean {
  return !isSameProcess(ref);
}

export function existingDirs(dirs: readonly string[]): string[] {
  return dirs.filter((d) => existsSync(d));
}
