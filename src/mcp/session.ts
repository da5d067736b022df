// One client's session with one upstream server: the SDK's low-level Server faces the client,
// an SDK Client faces the upstream, and everything between them passes through untouched except
// the three requests the gate decides (tools/list, tools/call, resources/read). initialize
// starts the upstream with the real client's identity and capabilities and answers with the
// upstream's, so negotiation happens end to end.
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import type { RequestOptions } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  CallToolRequestSchema,
  ErrorCode,
  InitializeRequestSchema,
  LATEST_PROTOCOL_VERSION,
  ListToolsRequestSchema,
  ListToolsResultSchema,
  McpError,
  ReadResourceRequestSchema,
  ResultSchema,
  SUPPORTED_PROTOCOL_VERSIONS,
  type CallToolResult,
  type InitializeResult,
  type JSONRPCRequest,
  type ListToolsResult,
  type Notification,
  type Result,
  type Tool,
} from '@modelcontextprotocol/sdk/types.js';
import type { McpGate } from './gate.js';
import { Upstream, type UpstreamSpec } from './upstream.js';

/** JSON-RPC error codes of the gateway (the spec's server range; the SDK uses -32000 and -32001). */
export const GATEWAY_ERRORS = {
  /** A request other than tools/call that the capability does not allow. */
  ACCESS_DENIED: -32020,
  /** The upstream is down (crashed and restarting, or shutting down). */
  UPSTREAM_UNAVAILABLE: -32021,
} as const;

/** How long a request waits for a restarting upstream before it fails. */
const RESTART_WAIT_MS = 10_000;
/** Per-call timeout when the capability names none (the SDK's own default). */
const DEFAULT_TIMEOUT_MS = 60_000;
/** Pages read to find a tool the cache does not know. */
const MAX_LIST_PAGES = 100;

export interface SessionOptions {
  gate: McpGate;
  upstream: UpstreamSpec;
  /** Told when the session ends (client gone or upstream closed for good). */
  onClose?: () => void;
}

type Extra = Parameters<NonNullable<Server['fallbackRequestHandler']>>[1];

export class GatewaySession {
  readonly server: Server;
  readonly upstream: Upstream;
  readonly gate: McpGate;
  /** The upstream's tools by name, as last listed: the schemas and annotations the gate reads. */
  private tools = new Map<string, Tool>();
  private toolsComplete = false;
  private closed: Promise<void> | undefined;
  private readonly onClose: (() => void) | undefined;

  constructor(o: SessionOptions) {
    this.gate = o.gate;
    this.onClose = o.onClose;
    // The front's own capabilities are never sent (initialize answers with the upstream's); they
    // only let the SDK pass the notifications and handlers the upstream may use.
    this.server = new Server(
      { name: `captrap-mcp/${o.gate.server}`, version: '0' },
      { capabilities: { tools: { listChanged: true }, resources: { subscribe: true, listChanged: true }, prompts: { listChanged: true }, logging: {}, completions: {} } },
    );
    this.upstream = new Upstream(o.upstream, {
      prepare: (client) => this.wireClient(client),
      restarted: () => {
        this.invalidateTools();
        // The new process may offer other tools: the client lists again, filtered again.
        this.server.notification({ method: 'notifications/tools/list_changed' }).catch(() => undefined);
      },
    });
    this.wireServer();
  }

  private invalidateTools(): void {
    this.tools = new Map();
    this.toolsComplete = false;
  }

  // -------------------------------------------------------------------------------------------
  // Client -> upstream

  private wireServer(): void {
    const s = this.server;
    // These answer locally in the SDK; here they belong to the upstream.
    s.removeRequestHandler('initialize');
    s.removeRequestHandler('ping');
    s.removeRequestHandler('logging/setLevel');
    s.setRequestHandler(InitializeRequestSchema, async (req): Promise<InitializeResult> => {
      const client = await this.upstream.start(req.params.clientInfo, req.params.capabilities).catch((err: unknown) => {
        const exit = this.upstream.lastExit ? ` (${this.upstream.lastExit})` : '';
        throw new McpError(GATEWAY_ERRORS.UPSTREAM_UNAVAILABLE, `captrap: upstream server ${this.gate.server} did not start: ${(err as Error).message}${exit}`);
      });
      const requested = req.params.protocolVersion;
      return {
        protocolVersion: SUPPORTED_PROTOCOL_VERSIONS.includes(requested) ? requested : LATEST_PROTOCOL_VERSION,
        capabilities: client.getServerCapabilities() ?? {},
        serverInfo: client.getServerVersion() ?? { name: this.gate.server, version: '0' },
        ...(client.getInstructions() ? { instructions: client.getInstructions()! } : {}),
      };
    });
    s.setRequestHandler(ListToolsRequestSchema, async (req, extra): Promise<ListToolsResult> => {
      const result = (await this.forward({ method: req.method, ...(req.params ? { params: req.params } : {}) }, extra, ListToolsResultSchema)) as ListToolsResult;
      if (req.params?.cursor === undefined) this.invalidateTools();
      for (const t of result.tools) this.tools.set(t.name, t);
      if (result.nextCursor === undefined) this.toolsComplete = true;
      const tools = this.decide(() => this.gate.filterTools(result.tools));
      return { ...result, tools };
    });
    s.setRequestHandler(CallToolRequestSchema, async (req, extra): Promise<CallToolResult> => {
      const name = req.params.name;
      const args = (req.params.arguments ?? {}) as Record<string, unknown>;
      const tool = await this.findTool(name, extra);
      const d = this.gate.checkCall(name, args, tool);
      if (!d.allowed) {
        return { content: [{ type: 'text', text: `captrap denied ${name} on ${this.gate.server}: ${d.code}: ${d.message}` }], isError: true };
      }
      const params = { ...req.params, arguments: d.arguments };
      return (await this.forward({ method: req.method, params }, extra, ResultSchema)) as CallToolResult;
    });
    s.setRequestHandler(ReadResourceRequestSchema, async (req, extra) => {
      const d = this.gate.checkResourceRead(req.params.uri);
      if (!d.allowed) throw new McpError(GATEWAY_ERRORS.ACCESS_DENIED, `captrap denied resources/read of ${String(req.params.uri)} on ${this.gate.server}: ${d.code}: ${d.message}`, { code: d.code });
      return this.forward({ method: req.method, params: req.params }, extra, ResultSchema);
    });
    s.fallbackRequestHandler = async (req: JSONRPCRequest, extra: Extra): Promise<Result> => {
      if (req.method === 'ping' && !this.upstream.running) return {};
      return this.forward({ method: req.method, ...(req.params ? { params: req.params } : {}) }, extra, ResultSchema);
    };
    s.fallbackNotificationHandler = async (n: Notification): Promise<void> => {
      // notifications/initialized was sent by the upstream Client itself when it connected.
      if (n.method === 'notifications/initialized') return;
      const client = await this.upstream.current(RESTART_WAIT_MS).catch(() => undefined);
      await client?.notification(n).catch(() => undefined);
    };
    s.onclose = () => {
      void this.close();
    };
  }

  private decide<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      throw new McpError(GATEWAY_ERRORS.ACCESS_DENIED, `captrap: ${(err as Error).message}`, { code });
    }
  }

  /** The upstream's description of `name`; lists every page once when the cache does not know it. */
  private async findTool(name: string, extra: Extra): Promise<Tool | undefined> {
    const known = this.tools.get(name);
    if (known || this.toolsComplete) return known;
    let cursor: string | undefined;
    const seen = new Map<string, Tool>();
    for (let page = 0; page < MAX_LIST_PAGES; page++) {
      const r = (await this.forward({ method: 'tools/list', ...(cursor ? { params: { cursor } } : {}) }, extra, ListToolsResultSchema)) as ListToolsResult;
      for (const t of r.tools) seen.set(t.name, t);
      cursor = r.nextCursor;
      if (cursor === undefined) break;
    }
    this.tools = seen;
    this.toolsComplete = cursor === undefined;
    return seen.get(name);
  }

  /**
   * Sends one request upstream on behalf of the client: the client's cancellation aborts it
   * (the SDK sends notifications/cancelled upstream), its progress token is honoured (progress
   * comes back under the client's own token), and the capability's timeout bounds it.
   */
  private async forward(request: { method: string; params?: Record<string, unknown> }, extra: Extra, schema: typeof ResultSchema | typeof ListToolsResultSchema): Promise<Result> {
    const client = await this.upstream.current(RESTART_WAIT_MS).catch((err: unknown) => {
      throw new McpError(GATEWAY_ERRORS.UPSTREAM_UNAVAILABLE, `captrap: ${(err as Error).message}`);
    });
    const token = (request.params?.['_meta'] as { progressToken?: string | number } | undefined)?.progressToken;
    const opts: RequestOptions = {
      signal: extra.signal,
      timeout: this.gate.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    };
    // The last progress notification is written before the result, as the upstream sent them.
    let progressSent: Promise<unknown> = Promise.resolve();
    if (token !== undefined) {
      opts.resetTimeoutOnProgress = true;
      opts.onprogress = (p) => {
        progressSent = extra.sendNotification({ method: 'notifications/progress', params: { ...p, progressToken: token } }).catch(() => undefined);
      };
    }
    try {
      const result = await client.request(request as never, schema, opts);
      await progressSent;
      return result;
    } catch (err) {
      if (err instanceof McpError && err.code === ErrorCode.ConnectionClosed) {
        throw new McpError(GATEWAY_ERRORS.UPSTREAM_UNAVAILABLE, `captrap: upstream server ${this.gate.server} exited while handling ${request.method} (${this.upstream.lastExit ?? 'connection closed'}); it is being restarted`);
      }
      throw err;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Upstream -> client

  private wireClient(client: Client): void {
    client.fallbackRequestHandler = async (req, extra) => {
      // sampling/createMessage, elicitation/create, roots/list...: the real client answers.
      return this.server.request({ method: req.method, ...(req.params ? { params: req.params } : {}) } as never, ResultSchema, { signal: extra.signal, timeout: DEFAULT_TIMEOUT_MS * 5 });
    };
    client.fallbackNotificationHandler = async (n) => {
      if (n.method === 'notifications/tools/list_changed') this.invalidateTools();
      await this.server.notification(n as never).catch(() => undefined);
    };
  }

  // -------------------------------------------------------------------------------------------

  async connect(transport: Transport): Promise<void> {
    await this.server.connect(transport);
  }

  /** Ends the session: the upstream's whole tree is killed and its sandbox gone when this resolves. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      await this.upstream.close();
      await this.server.close().catch(() => undefined);
      this.onClose?.();
    })();
    return this.closed;
  }
}
