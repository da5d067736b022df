// `captrap/agent`: the client an agent written in TypeScript or JavaScript uses to talk to the
// captrap sidecar that launched it. The sidecar hands every agent one end of a private socket
// pair as an inherited file descriptor (CAPTRAP_FD, normally 3); that channel *is* the agent's
// identity, so nothing here sends a principal or a pid — the sidecar already knows who is asking.
// The wire format is newline-delimited JSON-RPC 2.0 (see the README for speaking it from any
// language); this module only adds types and turns error answers into AgentCallError.
import net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { CaptrapError } from './errors.js';
import { RPC_ERROR, RpcConnection, RpcError } from './runner/jsonrpc.js';
import type { IssuedToken } from './runner/token-gate.js';

export { RPC_ERROR };
// Narrowing a ct2 token needs no secret and no sidecar: an agent does it offline before handing a
// copy to a sub-agent or another host (docs/tokens.md).
export { attenuate, seal, inspectToken, type TokenNarrowing, type InspectedToken } from './kernel/tokens/sign.js';

// ---------------------------------------------------------------------------------------------
// What goes over the wire

export interface ProcessRefView {
  pid: number;
  startTime: number;
}

export interface ResourceView {
  type: 'tool' | 'file' | 'network' | 'process' | (string & {});
  pattern: string;
}

/** Narrowing rules of a capability (see DESIGN.md, "constraints"). */
export interface ConstraintsView {
  allowedTools?: string[];
  paths?: string[];
  maxFileSize?: number;
  allowedDomains?: string[];
  allowedCommands?: string[];
  maxDelegationDepth?: number;
  limits?: { memoryBytes?: number; pids?: number; cpu?: number; timeoutMs?: number };
  [more: string]: unknown;
}

/** A capability as the sidecar shows it. `id` or `token` is what you pass back as `capability`. */
export interface CapView {
  id: string;
  token: string;
  principal: string;
  resource: ResourceView;
  operations: string[];
  constraints: ConstraintsView;
  parent: string | null;
  depth: number;
  issuedAt: number;
  expiresAt: number | null;
  holder: ProcessRefView | null;
  revoked: boolean;
}

/** A capability id (`cap_...`), a token (`ct1....`), or a CapView (its id is used). */
export type CapabilityRef = string | Pick<CapView, 'id'>;

export interface CapabilityRequest {
  resource: ResourceView;
  operations: string[];
  constraints?: ConstraintsView;
  ttlMs?: number;
}

/** How a delegated child is narrowed; anything left out is inherited from the parent. */
export interface Narrowing {
  operations?: string[];
  constraints?: ConstraintsView;
  ttlMs?: number;
}

/** What `capabilities.export` answers: the token and, in `capability`, the capability it was exported from. */
export type ExportedToken = IssuedToken & { capability: string };

export interface ToolInfo {
  name: string;
  description?: string;
  args: Record<string, unknown>;
}

export type ToolArgs = Record<string, string | number | boolean>;

// The answer shapes are the sidecar's own (runner.ts): one definition for both ends of the channel.
export type { ToolExitReason as ExitReason, ToolResult } from './runner/runner.js';
import type { ToolResult } from './runner/runner.js';

export interface SpawnAgentSpec {
  /** The sub-agent's principal id. */
  id: string;
  /** A process capability (operation `spawn`) this agent holds whose pattern covers the command's real path. */
  capability: CapabilityRef;
  command: string;
  args?: string[];
  env?: Record<string, string>;
  /** Only tighter than this agent's own limits, e.g. `{ memory: '64M', pids: 16 }`. */
  limits?: Record<string, string | number>;
  /** Capabilities to delegate to it, each bound to the sub-agent's process. */
  capabilities: Array<{ capability: CapabilityRef } & Narrowing>;
}

export interface SpawnedAgent {
  id: string;
  pid: number;
  startTime: number;
  capabilities: CapView[];
}

// ---------------------------------------------------------------------------------------------
// Errors

const RPC_CODE_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(RPC_ERROR).map(([name, code]) => [code, name]));

/**
 * The sidecar answered a call with an error. `rpcCode` is the JSON-RPC code (RPC_ERROR.*);
 * `code` is the stable reason: the kernel's code for a denial (`E_TOOL_NOT_ALLOWED`,
 * `E_PATH_OUTSIDE_ROOTS`, `E_REVOKED`, ...) when the sidecar sent one, otherwise the name of the
 * RPC code (`NOT_FOUND`, `INVALID_PARAMS`, `UNAVAILABLE`, ...).
 */
export class AgentCallError extends CaptrapError {
  readonly rpcCode: number;
  readonly method: string;
  readonly data: unknown;

  constructor(method: string, rpcCode: number, code: string, message: string, data?: unknown) {
    super(code, message, data === undefined ? { method, rpcCode } : { method, rpcCode, data });
    this.method = method;
    this.rpcCode = rpcCode;
    this.data = data;
  }

  /** The `reason` the sidecar gave for a denial, if any. */
  get reason(): string | undefined {
    const r = (this.data as { reason?: unknown } | null | undefined)?.reason;
    return typeof r === 'string' ? r : undefined;
  }

  get denied(): boolean {
    return this.rpcCode === RPC_ERROR.ACCESS_DENIED;
  }
}

function toAgentCallError(method: string, err: unknown): unknown {
  if (!(err instanceof RpcError)) return err;
  const dataCode = (err.data as { code?: unknown } | null | undefined)?.code;
  const code = typeof dataCode === 'string' ? dataCode : (RPC_CODE_NAMES.get(err.rpcCode) ?? `RPC_${err.rpcCode}`);
  return new AgentCallError(method, err.rpcCode, code, `${method}: ${err.message}`, err.data);
}

/** The process was not started by captrap (no channel fd), or the fd is not a socket. */
export class AgentChannelError extends CaptrapError {
  constructor(message: string) {
    super('E_NO_CHANNEL', message);
  }
}

// ---------------------------------------------------------------------------------------------
// The client

export interface ConnectAgentOptions {
  /** The channel's file descriptor; default `$CAPTRAP_FD`. */
  fd?: number;
  /** Give up on a call after this long (RPC_ERROR.TIMEOUT); default: wait as long as the sidecar takes. */
  timeoutMs?: number;
}

const capId = (c: CapabilityRef): string => (typeof c === 'string' ? c : c.id);

export class AgentClient {
  private readonly rpc: RpcConnection;
  private readonly timeoutMs: number | undefined;
  private inFlight = 0;

  /**
   * Over any byte streams (tests, or a channel you opened yourself); `connectAgent()` is the
   * usual way in. `hold(true|false)` is called as calls start and finish so the channel keeps
   * the process alive only while an answer is awaited.
   */
  constructor(
    input: Readable,
    output: Writable,
    options: { timeoutMs?: number; hold?: (busy: boolean) => void } = {},
  ) {
    this.rpc = new RpcConnection(input, output);
    this.timeoutMs = options.timeoutMs;
    this.hold = options.hold ?? (() => undefined);
  }

  private readonly hold: (busy: boolean) => void;

  /** True once the channel closed (by `close()` or because the sidecar went away). */
  get closed(): boolean {
    return this.rpc.isClosed;
  }

  /** Called once when the channel closes: the sidecar is shutting down or dropped this agent. */
  onClose(listener: () => void): void {
    this.rpc.once('close', listener);
  }

  /** A raw call, for methods this version has no typed wrapper for. Errors are AgentCallError. */
  async call<T = unknown>(method: string, params: Record<string, unknown> = {}): Promise<T> {
    if (this.inFlight++ === 0) this.hold(true);
    try {
      const opts = this.timeoutMs === undefined ? {} : { timeoutMs: this.timeoutMs };
      return (await this.rpc.call(method, params, opts)) as T;
    } catch (err) {
      throw toAgentCallError(method, err);
    } finally {
      if (--this.inFlight === 0) this.hold(false);
    }
  }

  /** Capabilities held by this agent, live ones and revoked ones the sidecar still knows (`revoked: true`). */
  /** Every capability of this agent: follows `nextCursor` page by page (the sidecar answers at most 1000 at a time). */
  async listCapabilities(): Promise<CapView[]> {
    const out: CapView[] = [];
    let cursor: string | null | undefined;
    do {
      const page = await this.call<{ capabilities: CapView[]; nextCursor?: string | null }>('capabilities.list', cursor ? { cursor, limit: 1000 } : {});
      out.push(...page.capabilities);
      cursor = page.nextCursor;
    } while (cursor);
    return out;
  }

  /** Asks for a new capability; granted only within what this agent holds or its config lets it request. */
  requestCapability(request: CapabilityRequest): Promise<CapView> {
    return this.call<CapView>('capabilities.request', { ...request });
  }

  /** Issues a narrower child of `capability` to principal `to`. */
  delegate(capability: CapabilityRef, to: string, narrowing: Narrowing = {}): Promise<CapView> {
    return this.call<CapView>('capabilities.delegate', { capability: capId(capability), to, ...narrowing });
  }

  /** Revokes one of this agent's capabilities (or one delegated from them) and all its descendants; returns every id revoked. */
  async revoke(capability: CapabilityRef): Promise<string[]> {
    return (await this.call<{ revoked: string[] }>('capabilities.revoke', { capability: capId(capability) })).revoked;
  }

  /**
   * A ct2 token for what `capability` grants this agent, signed by the sidecar: verifiable on any
   * host with its public keys, narrowable offline with `attenuate`, and revoked with the
   * capability (its holder's death included). It expires at the earlier of the capability's
   * expiry and now + `ttlMs` (default 1 h).
   */
  exportCapability(capability: CapabilityRef, ttlMs?: number): Promise<ExportedToken> {
    return this.call<ExportedToken>('capabilities.export', { capability: capId(capability), ...(ttlMs !== undefined ? { ttlMs } : {}) });
  }

  /** The tools some live capability of this agent allows. */
  async listTools(): Promise<ToolInfo[]> {
    return (await this.call<{ tools: ToolInfo[] }>('tools.list')).tools;
  }

  /**
   * Runs `tool` in a fresh sandbox under `capability`. A denial throws AgentCallError (nothing was
   * spawned); a tool that ran resolves whatever its ending: check `result.reason` (`exited`, `oom`, ...).
   */
  invoke(tool: string, args: ToolArgs, capability: CapabilityRef): Promise<ToolResult> {
    return this.call<ToolResult>('tools.invoke', { tool, args, capability: capId(capability) });
  }

  /** Launches a sub-agent in its own sandbox with capabilities delegated from this agent's. */
  spawnAgent(spec: SpawnAgentSpec): Promise<SpawnedAgent> {
    return this.call<SpawnedAgent>('agents.spawn', {
      ...spec,
      capability: capId(spec.capability),
      capabilities: spec.capabilities.map(({ capability, ...narrowing }) => ({ capability: capId(capability), ...narrowing })),
    });
  }

  /** Closes the channel; calls still waiting reject with UNAVAILABLE. */
  close(): void {
    this.rpc.close();
  }
}

/**
 * Connects to the channel the sidecar gave this process (fd `$CAPTRAP_FD`). The channel does not
 * keep the process alive on its own: a script that has no call waiting exits normally.
 */
export function connectAgent(options: ConnectAgentOptions = {}): AgentClient {
  const fromEnv = process.env.CAPTRAP_FD;
  const fd = options.fd ?? (fromEnv === undefined || fromEnv === '' ? undefined : Number(fromEnv));
  if (fd === undefined) {
    throw new AgentChannelError('no captrap channel: CAPTRAP_FD is not set (is this process running under `captrap serve`?)');
  }
  if (!Number.isInteger(fd) || fd < 0) throw new AgentChannelError(`no captrap channel: CAPTRAP_FD must be a file descriptor number, got '${String(fromEnv)}'`);
  let socket: net.Socket;
  try {
    socket = new net.Socket({ fd, readable: true, writable: true });
  } catch (err) {
    throw new AgentChannelError(`no captrap channel on fd ${fd}: ${(err as Error).message}`);
  }
  socket.unref();
  const client = new AgentClient(socket, socket, {
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
    hold: (busy) => (busy ? socket.ref() : socket.unref()),
  });
  // end(), not destroy(): a request written just before close() still reaches the sidecar.
  client.onClose(() => {
    socket.end();
    socket.unref();
  });
  return client;
}
