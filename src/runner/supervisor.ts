// Launches agents (and sub-agents) in sandboxes, each with a private channel on fd 3, and owns
// what happens when one ends. The channel is the identity: the process ref recorded here at
// launch is the only one the agent's requests are ever judged as.
//
// Exit, in this order, at the first exit signal (the leader's exit): every capability bound to
// the agent is revoked (and, by cascade, everything delegated from them), its in-flight tool
// calls are stopped (onAgentExit: kill), its sub-agents are stopped, its channel is closed.
// The sandbox is only "gone" once its cgroup is empty and removed (the sandbox promise).
//
// Groups: the cgroup tree mirrors the agent tree. Each agent gets a SandboxGroup holding its
// limits (memory, pids, cpu); its own sandbox, every tool call it makes and every sub-agent's
// group are created inside it, so the agent's limits bound the sum of all of them. The group is
// destroyed once the agent's sandbox, its tool calls and its sub-agents are all gone ("released").
import { existsSync, realpathSync, statSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { toToken, type Capability, type ProcessRef } from '../kernel/capability.js';
import type { Limits } from '../kernel/constraints.js';
import type { AuditSink } from '../kernel/events.js';
import type { SecurityKernel } from '../kernel/kernel.js';
import type { DeathWatch } from '../isolation/deathwatch.js';
import { which } from '../isolation/host.js';
import { commandOfLeader } from '../isolation/proc.js';
import { DEFAULT_PATH } from '../isolation/limits.js';
import { SandboxSpawnError } from '../isolation/errors.js';
import { createSandboxGroup, runSandboxed, type GroupLimitOptions, type KillReason, type Sandbox, type SandboxGroup, type SandboxResult } from '../isolation/sandbox.js';
import { log } from '../log.js';
import type { AgentConfig, SidecarConfig } from './config.js';
import { DEFAULT_OUTPUT_BUDGET, OutputBudget } from './output-budget.js';
import { agentIdentity, sidecarSecrets, UidPool, type Identity } from './identity.js';
import { RPC_ERROR, RpcConnection, RpcError, type RpcHandler } from './jsonrpc.js';
import type { SidecarMetrics } from './metrics.js';
import type { SandboxCounters, ToolRunner } from './runner.js';

// ---------------------------------------------------------------------------------------------
// Capability book: the kernel keeps capabilities by id only; the sidecar remembers which it
// issued, so it can list them by principal and as a tree.

export interface CapView {
  id: string;
  token: string;
  principal: string;
  resource: { type: string; pattern: string };
  operations: string[];
  constraints: Capability['constraints'];
  parent: string | null;
  depth: number;
  issuedAt: number;
  expiresAt: number;
  holder: { pid: number; startTime: number } | null;
  revoked: boolean;
}

export class CapabilityBook {
  /** Insertion order is issue order, so a parent always comes before its children. */
  private readonly ids = new Set<string>();
  private readonly byPrincipal = new Map<string, Set<string>>();

  constructor(private readonly kernel: SecurityKernel) {}

  add(c: Capability): void {
    this.ids.add(c.id);
    let s = this.byPrincipal.get(c.principal);
    if (!s) this.byPrincipal.set(c.principal, (s = new Set()));
    s.add(c.id);
  }

  has(id: string): boolean {
    return this.ids.has(id);
  }

  /** Drops ids the kernel has forgotten (SecurityKernel.onPruned), so the book does not grow with them. */
  forget(ids: Iterable<string>): void {
    for (const id of ids) {
      if (!this.ids.delete(id)) continue;
      for (const [p, s] of this.byPrincipal) {
        if (!s.delete(id)) continue;
        if (s.size === 0) this.byPrincipal.delete(p);
        break;
      }
    }
  }

  get size(): number {
    return this.ids.size;
  }

  /** The stored record (it carries any later binding). */
  get(id: string): Capability | undefined {
    return this.ids.has(id) ? this.kernel.getCapability(id) : undefined;
  }

  principals(): string[] {
    return [...this.byPrincipal.keys()];
  }

  ofPrincipal(principal: string): Capability[] {
    return [...(this.byPrincipal.get(principal) ?? [])].map((id) => this.kernel.getCapability(id)).filter((c): c is Capability => c !== undefined);
  }

  /**
   * Capabilities (all, or one principal's), parents before children: depth-first from each root
   * in issue order. A capability whose parent is not in the set counts as a root.
   */
  tree(principal?: string): Capability[] {
    const set = principal === undefined ? this.ids : (this.byPrincipal.get(principal) ?? new Set<string>());
    const all = [...set].map((id) => this.kernel.getCapability(id)).filter((c): c is Capability => c !== undefined);
    const kids = new Map<string | null, Capability[]>();
    for (const c of all) {
      const p = c.parentId !== null && set.has(c.parentId) ? c.parentId : null;
      const l = kids.get(p) ?? [];
      l.push(c);
      kids.set(p, l);
    }
    const out: Capability[] = [];
    const walk = (p: string | null) => {
      for (const c of kids.get(p) ?? []) {
        out.push(c);
        walk(c.id);
      }
    };
    walk(null);
    return out;
  }

  isRevoked(c: Capability): boolean {
    return this.kernel.isRevoked(c.id) || c.ancestors.some((a) => this.kernel.isRevoked(a));
  }

  /** Live: not revoked (nor an ancestor) and not expired. */
  isLive(c: Capability, now = Date.now()): boolean {
    return now < c.expiresAt && !this.isRevoked(c);
  }

  /** Stored capabilities are frozen (a re-binding stores a new object), so a token can be remembered per object. */
  private readonly tokens = new WeakMap<Capability, string>();
  private tokenOf(c: Capability): string {
    let t = this.tokens.get(c);
    if (t === undefined) this.tokens.set(c, (t = toToken(c)));
    return t;
  }

  view(c: Capability): CapView {
    return {
      id: c.id,
      token: this.tokenOf(c),
      principal: c.principal,
      resource: { type: c.resourceType, pattern: c.resource },
      operations: [...c.operations],
      constraints: c.constraints,
      parent: c.parentId,
      depth: c.depth,
      issuedAt: c.issuedAt,
      expiresAt: c.expiresAt,
      holder: c.holder ? { pid: c.holder.pid, startTime: c.holder.startTime } : null,
      revoked: this.isRevoked(c),
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Agents

/**
 * What launching an agent takes: an agent entry of the config without its initial capabilities
 * (granted separately: from the config for a configured agent, by delegation for a sub-agent).
 * Sub-agents inherit their parent's namespaces, uid and gid.
 */
export type LaunchSpec = Omit<AgentConfig, 'capabilities'>;

export interface AgentHandle {
  readonly id: string;
  readonly parent: string | null;
  readonly spec: LaunchSpec;
  readonly sandbox: Sandbox;
  /** The channel's identity: fixed at launch. */
  readonly ref: ProcessRef;
  readonly children: Set<string>;
  /** Who the agent runs as; its tools run as the same uid. */
  readonly identity: Identity;
  /** What the agent's sandbox shows (sub-agents get the same, plus their program). */
  readonly view: AgentView;
  state: 'running' | 'exited';
  exitReason: string | null;
  conn: RpcConnection | undefined;
  /** Resolves once the sandbox is gone (cgroup empty and removed). */
  readonly done: Promise<void>;
  /**
   * The agent's cgroup group: its limits bound the agent, its tool calls and its sub-agents
   * together. Its own sandbox is a leaf inside; a sub-agent's group nests inside.
   */
  readonly group: SandboxGroup;
  /** Resolves once the agent's sandbox, its tool calls and its sub-agents are gone and its group is destroyed. */
  readonly released: Promise<void>;
  /** Set once its capabilities were revoked for its death (on the early death notice or the exit). */
  revokedForExit?: boolean;
  /** Stops the early death notice for it. */
  unwatchDeath?: () => void;
}

export interface SupervisorOptions {
  kernel: SecurityKernel;
  book: CapabilityBook;
  runner: ToolRunner;
  audit: AuditSink;
  config: SidecarConfig;
  counters: SandboxCounters;
  metrics?: SidecarMetrics;
  /** One line of an agent's stdout or stderr (default: serve's stderr, prefixed `[id] `). */
  output?: (agentId: string, stream: 'stdout' | 'stderr', line: string) => void;
  /** The agent-channel methods, bound to this agent. */
  handlers: (agent: AgentHandle) => Readonly<Record<string, RpcHandler>>;
  /** Early death notices (taskstats), when this host has them: agents are revoked as soon as they start to die. */
  deathWatch?: DeathWatch;
}

// Moves the socket captrap handed over as stdin to fd 3 and gives the agent /dev/null as stdin,
// then execs the agent: same pid, so the process ref taken at spawn is the agent's.
const CHANNEL_WRAPPER = 'exec 3<&0 0</dev/null; exec "$@"';
const AGENT_OUTPUT_CAP = 64 * 1024;
const MAX_FORWARDED_LINE = 16 * 1024;
const MAX_EXITED_RECORDS = 256;

function forwardLines(stream: Readable | null, emit: (line: string) => void, ended?: () => void): void {
  if (!stream) return;
  let partial = '';
  // Decode here rather than setEncoding: the sandbox's own output capture reads Buffers from the same stream.
  const decoder = new StringDecoder('utf8');
  stream.on('data', (chunk: Buffer) => {
    partial += decoder.write(chunk);
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      emit(partial.slice(0, nl));
      partial = partial.slice(nl + 1);
    }
    if (partial.length > MAX_FORWARDED_LINE) {
      emit(partial);
      partial = '';
    }
  });
  stream.on('end', () => {
    if (partial) emit(partial);
    partial = '';
    ended?.();
  });
}

const defaultOutput = (id: string, _stream: 'stdout' | 'stderr', line: string) => {
  process.stderr.write(`[${id}] ${line}\n`);
};

/** The pipe handle behind a child's stdin: node creates stdio pipes as Unix socket pairs, so it reads too. */
function duplexOfStdin(sb: Sandbox): Socket | undefined {
  const handle = (sb.stdin as unknown as { _handle?: unknown } | null)?._handle;
  if (!handle) return undefined;
  // `handle` is an undocumented but long-standing net.Socket option (child_process uses it itself).
  return new Socket({ handle, readable: true, writable: true } as ConstructorParameters<typeof Socket>[0]);
}

export class Supervisor {
  private readonly agents = new Map<string, AgentHandle>();
  /** Agents whose sandbox is not gone yet (listed or not): shutdown waits for every one. */
  private readonly notGone = new Set<AgentHandle>();
  /** Group teardowns still under way (an agent's group outlives its sandbox while its tools or sub-agents run). */
  private readonly teardowns = new Set<Promise<void>>();
  /** Sub-agent handles by parent handle (ids can be reused; handles cannot). */
  private readonly kids = new Map<AgentHandle, Set<AgentHandle>>();
  private stopping = false;
  private stopSignal!: () => void;
  private readonly stopped = new Promise<void>((r) => (this.stopSignal = r));
  readonly uids: UidPool;

  constructor(private readonly o: SupervisorOptions) {
    this.uids = new UidPool(o.config.identity);
  }

  get(id: string): AgentHandle | undefined {
    return this.agents.get(id);
  }

  list(): AgentHandle[] {
    return [...this.agents.values()];
  }

  running(): AgentHandle[] {
    return this.list().filter((a) => a.state === 'running');
  }

  /**
   * The group a caller's tool calls run in: the group of the agent launched as exactly this
   * process (id and process ref), unless it was already destroyed.
   */
  groupFor(agentId: string, ref: ProcessRef): SandboxGroup | undefined {
    const a = this.agents.get(agentId);
    if (!a || a.ref.pid !== ref.pid || a.ref.startTime !== ref.startTime || a.group.removed) return undefined;
    return a.group;
  }

  /** The running agent whose principal is `principal`, if any. */
  runningAgent(principal: string): AgentHandle | undefined {
    const a = this.agents.get(principal);
    return a && a.state === 'running' ? a : undefined;
  }

  /**
   * Starts an agent. `grant` issues its capabilities once its process ref is known (they must be
   * bound to it); if `grant` throws, the agent is stopped and the error rethrown.
   */
  launch(spec: LaunchSpec, parent: AgentHandle | null, grant: (agent: AgentHandle) => void): AgentHandle {
    const { config, counters } = this.o;
    if (this.stopping) throw new RpcError(RPC_ERROR.UNAVAILABLE, 'the sidecar is shutting down');
    if (parent) {
      // A sub-agent is a new principal holding delegated capabilities: not while the log cannot record it.
      this.o.runner.auditGate('agents.spawn');
      if (parent.state !== 'running') throw new RpcError(RPC_ERROR.UNAVAILABLE, `agent ${parent.id} has exited`);
    }
    const existing = this.agents.get(spec.id);
    if (existing && existing.state === 'running') throw new RpcError(RPC_ERROR.INVALID_PARAMS, `agent id '${spec.id}' is in use`, { path: ['id'], expected: 'an agent id not in use' });
    // A sub-agent never takes the principal of a configured agent: that would let it receive what is delegated to that agent.
    if (parent && config.agents.some((a) => a.id === spec.id)) {
      throw new RpcError(RPC_ERROR.INVALID_PARAMS, `agent id '${spec.id}' belongs to a configured agent`, { path: ['id'], expected: 'an id that is not a configured agent' });
    }
    if (this.running().length >= config.maxAgents) throw new RpcError(RPC_ERROR.UNAVAILABLE, `too many agents: the limit is ${config.maxAgents} (maxAgents)`);

    const env: Record<string, string> = { PATH: DEFAULT_PATH, ...spec.env, CAPTRAP_FD: '3', CAPTRAP_AGENT_ID: spec.id };
    const resolved = resolveAgentCommand(spec.command, spec.cwd, env.PATH);
    if (!resolved) throw new SandboxSpawnError('E_COMMAND_NOT_FOUND', `agent ${spec.id}: command '${spec.command}' not found or not executable`, { command: spec.command });

    const id = agentIdentity(spec, config, this.uids);
    // A sub-agent sees what its parent sees, plus the program it was allowed to start: its
    // arguments come from the parent and never widen the view.
    const view = parent ? { readOnly: [...parent.view.readOnly, resolved], readWrite: parent.view.readWrite, hide: parent.view.hide } : agentView(spec, resolved, config);
    const release = () => {
      if (id.pooled && id.uid !== undefined) this.uids.release(id.uid);
    };
    // The agent's limits go on its group: they bound the agent, its tools and its sub-agents together.
    const limits: GroupLimitOptions = {};
    if (spec.limits.memoryBytes !== undefined) limits.memory = spec.limits.memoryBytes;
    if (spec.limits.pids !== undefined) limits.pids = spec.limits.pids;
    if (spec.limits.cpu !== undefined) limits.cpu = spec.limits.cpu;
    let group: SandboxGroup;
    try {
      group = createSandboxGroup({
        limits,
        ...(parent ? { parent: parent.group } : { cgroupBase: config.cgroupBase, backend: config.sandbox.backend }),
        allowDegraded: config.sandbox.allowDegraded,
      });
    } catch (err) {
      release();
      throw err;
    }
    let sb: Sandbox;
    try {
      // The agent's own leaf gets no limit of its own (the group's bind it), only its wall clock.
      sb = runSandboxed('/bin/sh', ['-c', CHANNEL_WRAPPER, 'captrap-agent', resolved, ...spec.args], {
        ...(spec.limits.timeoutMs !== undefined ? { timeout: spec.limits.timeoutMs } : {}),
        group,
        env,
        cwd: spec.cwd,
        stdin: 'pipe',
        cgroupBase: config.cgroupBase,
        allowDegraded: config.sandbox.allowDegraded,
        backend: config.sandbox.backend,
        maxOutputBytes: AGENT_OUTPUT_CAP,
        killGrace: config.sandbox.killGraceMs ?? 1000,
        confine: spec.confine ?? config.sandbox.confine,
        allowRoot: id.allowRoot,
        view,
        ...(spec.namespaces !== undefined ? { namespaces: spec.namespaces } : {}),
        ...(id.uid !== undefined ? { uid: id.uid } : {}),
        ...(id.gid !== undefined ? { gid: id.gid } : {}),
      });
    } catch (err) {
      release();
      group.destroy().catch((e: unknown) => log.error({ err: e, group: group.path }, 'removing an agent group failed'));
      throw err;
    }
    const mine = new Set<AgentHandle>();
    // The uid returns to the pool only with the group: the agent's tools (onAgentExit: finish) run as it too.
    const released = this.teardown(group, sb, mine).finally(release);
    counters.start();
    const socket = duplexOfStdin(sb);
    if (!sb.ref || !socket) {
      // The process is already gone (or has no channel): nothing can be bound to it.
      sb.kill('killed');
      void sb.then(
        (r) => counters.end(r.reason.kind),
        () => counters.end('error'),
      );
      throw new RpcError(RPC_ERROR.SANDBOX_ERROR, `agent ${spec.id}: the process exited before it could be registered`, { code: 'E_SPAWN' });
    }
    const ref: ProcessRef = { pid: sb.ref.pid, startTime: sb.ref.startTime };
    let markDone!: () => void;
    const agent: AgentHandle = {
      id: spec.id,
      parent: parent?.id ?? null,
      spec,
      sandbox: sb,
      ref,
      children: new Set(),
      identity: { ...(id.uid !== undefined ? { uid: id.uid } : {}), ...(id.gid !== undefined ? { gid: id.gid } : {}), allowRoot: id.allowRoot },
      view,
      state: 'running',
      exitReason: null,
      conn: undefined,
      done: new Promise<void>((r) => (markDone = r)),
      group,
      released,
    };
    this.kids.set(agent, mine);
    void released.then(() => this.kids.delete(agent));
    this.agents.delete(spec.id); // a re-used id is listed once, in launch order
    this.agents.set(spec.id, agent);
    parent?.children.add(spec.id);
    if (parent) this.kids.get(parent)?.add(agent);
    this.prune();
    socket.on('error', () => {
      /* the RpcConnection closes on it; a dead peer is not our error */
    });
    const out = this.o.output ?? defaultOutput;
    // One budget for both streams: an agent cannot flood serve's stderr (or its log file).
    const budget = new OutputBudget(config.agentOutput ?? DEFAULT_OUTPUT_BUDGET, (l) => out(spec.id, 'stderr', l));
    forwardLines(sb.stdout, (l) => budget.offer(l, (x) => out(spec.id, 'stdout', x)), () => budget.endEpisode());
    forwardLines(sb.stderr, (l) => budget.offer(l, (x) => out(spec.id, 'stderr', x)), () => budget.endEpisode());
    this.o.audit.record({
      type: 'sandbox_started',
      principal: spec.id,
      process: ref,
      details: { kind: 'agent', agent: spec.id, parent: agent.parent, cgroup: sb.cgroupName, group: group.path, limits: spec.limits },
    });
    // Ahead of the sandbox's own exit handling (its tree kill, its cgroup wait): revocation comes first.
    sb.child.prependOnceListener('exit', (code, signal) => this.onLeaderExit(agent, socket, code, signal));
    this.notGone.add(agent);
    sb.then(
      (r) => this.onGone(agent, r),
      (err: unknown) => this.onGone(agent, undefined, err),
    ).finally(() => {
      this.notGone.delete(agent);
      markDone();
    });
    try {
      grant(agent);
    } catch (err) {
      sb.kill('killed');
      throw err;
    }
    // Only now does the agent get answers: every capability it was launched with exists.
    agent.conn = new RpcConnection(socket, socket, { handlers: this.o.handlers(agent), maxLineBytes: 1024 * 1024, maxInFlight: 64, maxPendingWriteBytes: 1024 * 1024 });
    agent.conn.on('protocolError', (e) => this.o.metrics?.rpcErrors.inc({ channel: 'agent', code: String(e.code) }));
    // Sooner than the exit where the host can tell: the agent has started to exit.
    // (After the channel's reader is attached: watching adds a listener of its own to the socket.)
    this.watchDeath(agent, socket);
    return agent;
  }

  /**
   * Destroys an agent's group once everything inside is gone: its own sandbox, its tool calls (the
   * runner's, in this group) and its sub-agents (each released in turn, nested groups first). At
   * shutdown it does not wait for tool calls: destroy() kills whatever is left.
   */
  private teardown(group: SandboxGroup, sb: Sandbox, kids: Set<AgentHandle>): Promise<void> {
    const { runner } = this.o;
    const p = (async () => {
      await sb.then(
        () => undefined,
        () => undefined,
      );
      for (;;) {
        await Promise.race([runner.whenIdleIn(group), this.stopped]);
        await Promise.all([...kids].map((k) => k.released));
        if ((this.stopping || runner.runningIn(group) === 0) && [...kids].every((k) => !this.kids.has(k))) break;
      }
      try {
        await group.destroy('owner-exited');
      } catch (err) {
        log.error({ err, group: group.path }, 'removing an agent group failed');
      }
    })();
    this.teardowns.add(p);
    void p.finally(() => this.teardowns.delete(p));
    return p;
  }

  /**
   * Watches for the agent's death through the early death notice. Capabilities are bound to the
   * sandbox's leader, which lives until the whole sandbox is gone; in a pid namespace the process
   * that dies first is the agent's own (the leader's init exits when it does, and the kernel then
   * kills everything left in the namespace), so that is the one watched. It is looked up when the
   * agent first speaks: by then it exists and has not forked yet.
   */
  private watchDeath(agent: AgentHandle, socket: Socket): void {
    const dw = this.o.deathWatch;
    if (!dw) return;
    const stops = [dw.watch(agent.ref, () => this.onAgentDying(agent))];
    agent.unwatchDeath = () => stops.forEach((f) => f());
    socket.prependOnceListener('data', () => {
      if (agent.revokedForExit) return;
      const cmd = commandOfLeader(agent.ref);
      if (cmd) stops.push(dw.watch(cmd, () => this.onAgentDying(agent)));
    });
  }

  /**
   * The agent has started to die (the kernel's exit message for a thread of it ending by a signal,
   * or for its last thread, before its memory and files are released): it can never present a
   * capability again, so revoke now and
   * stop its tool calls and those that ran on what was revoked. Everything else (its channel,
   * its sub-agents, its group) waits for the exit notice.
   */
  private onAgentDying(agent: AgentHandle): void {
    if (agent.state !== 'running' || agent.revokedForExit) return;
    const { runner, config } = this.o;
    this.revokeForExit(agent, 'death-notice');
    // As at the exit: its own tool calls end as owner-exited, not as revoked.
    if (config.onAgentExit === 'kill') runner.killOwnedBy(agent.id, 'owner-exited');
    runner.killRevoked(config.onAgentExit === 'finish' ? agent.id : undefined);
  }

  /** Once per agent, whichever sign of its death comes first. */
  private revokeForExit(agent: AgentHandle, noticedBy: 'exit' | 'death-notice'): string[] {
    if (agent.revokedForExit) return [];
    agent.revokedForExit = true;
    agent.unwatchDeath?.();
    try {
      return this.o.kernel.processExited(agent.ref, `agent ${agent.id} exited`, noticedBy);
    } catch (err) {
      log.error({ err, agent: agent.id }, 'revoking the capabilities of an exited agent failed');
      return [];
    }
  }

  /** The exit notice: revoke (unless the early death notice did) before anything else, then stop what depended on the agent. */
  private onLeaderExit(agent: AgentHandle, socket: Socket, code: number | null, signal: NodeJS.Signals | null): void {
    const { runner, config } = this.o;
    agent.state = 'exited';
    agent.exitReason = signal ? `signaled(${signal})` : `exited(${code ?? 0})`;
    const revoked = this.revokeForExit(agent, 'exit');
    if (config.onAgentExit === 'kill') runner.killOwnedBy(agent.id, 'owner-exited');
    runner.killRevoked(config.onAgentExit === 'finish' ? agent.id : undefined);
    for (const id of agent.children) {
      const child = this.agents.get(id);
      if (child && child.state === 'running') child.sandbox.kill('owner-exited');
    }
    agent.conn?.close();
    socket.destroy();
    log.info({ agent: agent.id, code, signal, revoked: revoked.length }, 'agent exited');
  }

  private onGone(agent: AgentHandle, r: SandboxResult | undefined, err?: unknown): void {
    const reason = r ? (r.reason.kind === 'exited' ? `exited(${r.reason.code})` : r.reason.kind === 'signaled' ? `signaled(${r.reason.signal})` : r.reason.kind) : 'error';
    agent.state = 'exited';
    agent.exitReason = reason;
    this.o.counters.end(r?.reason.kind ?? 'error');
    this.o.metrics?.agentExits.inc({ reason: r?.reason.kind ?? 'error' });
    if (err) log.error({ err, agent: agent.id }, 'agent sandbox failed');
    if (r && r.escaped.length > 0) {
      this.o.audit.record({ type: 'sandbox_escape', principal: agent.id, process: agent.ref, details: { kind: 'agent', agent: agent.id, cgroup: agent.sandbox.cgroupName, pids: r.escaped } });
    }
    this.o.audit.record({
      type: 'sandbox_exited',
      principal: agent.id,
      process: agent.ref,
      details: { kind: 'agent', agent: agent.id, reason: r?.reason.kind ?? 'error', exitCode: r?.exitCode ?? null, signal: r?.signal ?? null, durationMs: r ? Math.round(r.durationMs) : null, cleanedUp: r?.cleanedUp ?? false },
    });
  }

  /** Keeps the records of exited agents bounded: a long-running sidecar spawning sub-agents must not grow without end. */
  private prune(): void {
    let exited = 0;
    for (const a of this.agents.values()) if (a.state === 'exited') exited++;
    for (const [id, a] of this.agents) {
      if (exited <= MAX_EXITED_RECORDS) break;
      if (a.state !== 'exited' || this.notGone.has(a) || this.kids.has(a)) continue;
      this.agents.delete(id);
      exited--;
    }
  }

  /** Stops one agent (its sandbox: SIGTERM, grace, then the whole tree). */
  kill(id: string, reason: KillReason = 'killed'): boolean {
    const a = this.agents.get(id);
    if (!a || a.state !== 'running') return false;
    a.sandbox.kill(reason);
    return true;
  }

  /**
   * Refuses new launches, stops every agent and waits until every agent sandbox is gone and every
   * agent group is destroyed (tool calls still inside are killed with it).
   */
  async stopAll(): Promise<void> {
    this.stopping = true;
    this.stopSignal();
    for (const a of this.notGone) a.sandbox.kill('killed');
    await Promise.all([...this.notGone].map((a) => a.done));
    while (this.teardowns.size > 0) await Promise.all([...this.teardowns]);
  }
}

/**
 * What an agent sees besides the system: its cwd, its program and the files its arguments name
 * (all read-only), plus what the config adds; never the sidecar's own files.
 */
export interface AgentView {
  readOnly: string[];
  readWrite: string[];
  hide: string[];
}

function agentView(spec: LaunchSpec, resolved: string, config: SidecarConfig): AgentView {
  // The operator's paths are trusted and resolved once here (the sandbox binds exactly what it is given).
  const real = (p: string) => {
    try {
      return realpathSync(p);
    } catch {
      return p;
    }
  };
  const named = spec.args.filter((a) => isAbsolute(a) && existsSync(a) && !statSync(a).isDirectory());
  return {
    readOnly: [spec.cwd, ...named, ...(spec.view?.readOnly ?? [])].map(real).concat(resolved),
    readWrite: (spec.view?.readWrite ?? []).map(real),
    hide: [...sidecarSecrets(config), ...(spec.view?.hide ?? [])],
  };
}

/**
 * An agent command's real absolute path, looked up the way a launch does (relative to cwd when it
 * has a slash, else on PATH), symlinks resolved so a process capability's pattern judges the file
 * that runs. Undefined when there is no such executable.
 */
export function resolveAgentCommand(command: string, cwd: string, path: string = DEFAULT_PATH): string | undefined {
  const found = command.includes('/') ? which(command.startsWith('/') ? command : `${cwd}/${command}`) : which(command, path);
  if (!found) return undefined;
  try {
    return realpathSync(found);
  } catch {
    return undefined;
  }
}
