// The sidecar's configuration file (`captrap serve --config FILE`): YAML or JSON, validated with
// zod. Every error names the file and the field. Paths are resolved against the config file's
// directory, sizes and durations ('256M', '30s') become plain numbers here, so nothing past this
// module parses user strings.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, extname, isAbsolute, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { CaptrapError } from '../errors.js';
import { ConstraintsSchema, type Constraints, type Limits } from '../kernel/constraints.js';
import { RESOURCE_TYPES, type ResourceType } from '../kernel/capability.js';
import { parseCatalogue, type Catalogue } from '../kernel/policy.js';
import { MonitorInput, monitorConfig, type MonitorConfig } from '../monitor/config.js';
import { parseListen } from '../monitor/dashboard.js';
import type { DashboardConfig } from './monitoring.js';
import type { RevocationsConfig } from './token-revocations.js';
import { parseBytes, parseCpu, parseDuration, type NamespaceName } from '../isolation/limits.js';

export class ConfigError extends CaptrapError {
  constructor(message: string, details?: Record<string, unknown>, cause?: unknown) {
    super('E_CONFIG', message, details, cause === undefined ? undefined : { cause });
  }
}

// ---------------------------------------------------------------------------------------------
// Units: accept what people write, keep numbers.

function unit<T>(parse: (v: unknown) => T, expected: string) {
  return z.union([z.number(), z.string()]).transform((v, ctx): T => {
    try {
      return parse(v);
    } catch {
      ctx.addIssue({ code: 'custom', message: `expected ${expected}, got ${JSON.stringify(v)}` });
      return z.NEVER;
    }
  });
}
const Bytes = unit((v) => parseBytes('size', v), "a size such as 268435456 or '256M'");
const Duration = unit((v) => parseDuration('duration', v), "a duration such as 1500, '500ms' or '30s'");
const Cpu = unit((v) => parseCpu(v), "a share of one core such as 0.5 or '50%'");
const PositiveInt = z.number().int().positive();

/** Resource limits as written in the config ('256M', '30s'); turned into the kernel's Limits. */
export const LimitsInput = z
  .object({ memory: Bytes.optional(), pids: PositiveInt.optional(), cpu: Cpu.optional(), timeout: Duration.optional() })
  .strict();

export function toLimits(l: z.infer<typeof LimitsInput> | undefined): Limits {
  const out: Limits = {};
  if (l?.memory !== undefined) out.memoryBytes = l.memory;
  if (l?.pids !== undefined) out.pids = l.pids;
  if (l?.cpu !== undefined) out.cpu = l.cpu;
  if (l?.timeout !== undefined) out.timeoutMs = Math.ceil(l.timeout);
  return out;
}

const AGENT_ID = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;

const CapabilityInput = z
  .object({
    resource: z.object({ type: z.enum(RESOURCE_TYPES), pattern: z.string().min(1).max(4096) }).strict(),
    operations: z.array(z.string().min(1)).min(1),
    constraints: ConstraintsSchema.default({}),
    ttlMs: PositiveInt.optional(),
  })
  .strict();

const NamespacesInput = z.array(z.enum(['pid', 'mount', 'net', 'ipc', 'uts', 'cgroup']));
/** What a sandbox sees of the filesystem besides the system (docs/config.md). */
const ViewInput = z
  .object({
    readOnly: z.array(z.string().min(1)).default([]),
    readWrite: z.array(z.string().min(1)).default([]),
    hide: z.array(z.string().min(1)).default([]),
  })
  .strict();

const EnvInput = z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected an environment variable name'), z.string());

const AgentInput = z
  .object({
    id: z.string().regex(AGENT_ID, 'expected an id of letters, digits, _ . - starting with a letter'),
    command: z.string().min(1),
    args: z.array(z.string()).default([]),
    cwd: z.string().min(1).optional(),
    env: EnvInput.default({}),
    /**
     * Namespaces for the agent's sandbox (sub-agents inherit them). With `pid` the agent's whole
     * tree dies with it even if captrap is SIGKILLed; the agent then sees itself as pid 1, while
     * the sidecar reports (and binds capabilities to) the namespace's launcher process.
     */
    namespaces: NamespacesInput.optional(),
    /** Run the agent (and its sub-agents) as this user/group; captrap must be root to switch. Default: a uid of its own from `identity`. */
    uid: z.number().int().nonnegative().optional(),
    gid: z.number().int().nonnegative().optional(),
    /** Let the agent keep uid 0 (confined, still without capabilities). */
    allowRoot: z.boolean().optional(),
    /** Turn confinement off for this agent (limits only). */
    confine: z.boolean().optional(),
    /** Extra paths the agent sees; its cwd, its command and absolute file arguments are shown read-only anyway. */
    view: ViewInput.optional(),
    limits: LimitsInput.optional(),
    capabilities: z.array(CapabilityInput).default([]),
    requestable: z.array(CapabilityInput).default([]),
  })
  .strict();

/** Tool calls of an agent start through launchers made ahead in its group (src/isolation/pool.ts). */
export const DEFAULT_WARM_LAUNCHERS = 2;

const SandboxInput = z
  .object({
    memory: Bytes.optional(),
    pids: PositiveInt.optional(),
    cpu: Cpu.optional(),
    timeout: Duration.optional(),
    maxOutputBytes: Bytes.optional(),
    killGrace: Duration.optional(),
    allowDegraded: z.boolean().default(false),
    backend: z.enum(['auto', 'cgroup-v2', 'cgroup-v1', 'none']).default('auto'),
    /** Run tools as this user/group (captrap must be root to switch). Default: the calling agent's uid. */
    uid: z.number().int().nonnegative().optional(),
    gid: z.number().int().nonnegative().optional(),
    /** Namespaces for tool sandboxes (default all six when confined). */
    namespaces: NamespacesInput.optional(),
    /** Confinement of every sandbox (namespaces, view, no capabilities); false means limits only. */
    confine: z.boolean().default(true),
    /** Let tools and agents keep uid 0 (confined, still without capabilities). */
    allowRoot: z.boolean().default(false),
    /** Extra paths every tool sees (besides the system and its capability's roots). */
    view: ViewInput.optional(),
    /** Warm launchers kept per agent group for its tool calls (0: every tool call starts cold). */
    warm: z.number().int().min(0).max(64).default(DEFAULT_WARM_LAUNCHERS),
  })
  .strict();

/** One client of an MCP server behind the gateway (docs/mcp.md): who it is and what it may do. */
const McpClientInput = z
  .object({
    principal: z.string().regex(AGENT_ID, 'expected a principal of letters, digits, _ . - starting with a letter'),
    /** The bearer token (HTTP front) that names this client; prefer tokenFile. */
    token: z.string().min(16, 'expected a bearer token of at least 16 characters').optional(),
    tokenFile: z.string().min(1).optional(),
    operations: z.array(z.string().min(1)).min(1).default(['invoke']),
    constraints: ConstraintsSchema.default({}),
    /** Per-call timeout (becomes constraints.limits.timeoutMs). */
    timeout: Duration.optional(),
  })
  .strict();

const McpToolPolicyInput = z
  .object({
    /** Kind per argument name: wins over detection from the inputSchema. */
    arguments: z.record(z.string(), z.enum(['file', 'url', 'command', 'none'])).optional(),
    operation: z.enum(['read', 'write', 'list', 'execute']).optional(),
    /** Arguments whose values never reach the audit log. */
    secret: z.array(z.string()).optional(),
  })
  .strict();

const McpServerInput = z
  .object({
    command: z.string().min(1),
    args: z.array(z.string()).default([]),
    env: EnvInput.default({}),
    cwd: z.string().min(1).optional(),
    /** Limits of the server's one long-lived sandbox. */
    limits: LimitsInput.optional(),
    view: ViewInput.optional(),
    uid: z.number().int().nonnegative().optional(),
    gid: z.number().int().nonnegative().optional(),
    allowRoot: z.boolean().optional(),
    namespaces: NamespacesInput.optional(),
    confine: z.boolean().optional(),
    /** Corrections per tool name: argument kinds, operation, secret arguments. */
    tools: z.record(z.string(), McpToolPolicyInput).default({}),
    clients: z.array(McpClientInput).min(1, 'expected at least one client (principal, operations, constraints)'),
  })
  .strict();

/** ct2 tokens the sidecar accepts on agent channels (docs/tokens.md, "In the sidecar"). */
const TokensInput = z
  .object({
    /** JWKS files of other issuers; the sidecar's own keys (<stateDir>/token-keys) are always trusted. */
    trust: z.array(z.string().min(1)).max(64).default([]),
    cacheEntries: PositiveInt.max(10_000_000).default(10_000),
  })
  .strict();

const NAME = /^[A-Za-z0-9_-]{1,64}$/;
const RevocationsInput = z
  .object({
    backend: z.enum(['file', 'nats']).default('file'),
    url: z
      .string()
      .regex(/^(nats|tls|ws|wss):\/\/\S+$/, 'expected a NATS server URL such as nats://127.0.0.1:4222')
      .optional(),
    bucket: z.string().regex(NAME, 'expected a bucket name of letters, digits, _ and -').default('captrap-revocations'),
    maxStaleness: Duration.default(5000),
    host: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$/, 'expected a host name (letters, digits, _ . -)').optional(),
    shipAudit: z.boolean().default(false),
    auditStream: z.string().regex(NAME, 'expected a stream name of letters, digits, _ and -').default('CAPTRAP_AUDIT'),
    auth: z
      .object({
        credentialsFile: z.string().min(1).optional(),
        user: z.string().min(1).max(256).optional(),
        passwordFile: z.string().min(1).optional(),
        tokenFile: z.string().min(1).optional(),
      })
      .strict()
      .superRefine((a, ctx) => {
        const ways = [a.credentialsFile, a.user, a.tokenFile].filter((x) => x !== undefined).length;
        if (ways !== 1) ctx.addIssue({ code: 'custom', message: 'give exactly one of credentialsFile, user (with passwordFile) or tokenFile' });
        if ((a.user === undefined) !== (a.passwordFile === undefined)) ctx.addIssue({ code: 'custom', path: ['passwordFile'], message: 'user and passwordFile go together' });
      })
      .optional(),
    tls: z
      .object({ caFile: z.string().min(1).optional(), certFile: z.string().min(1).optional(), keyFile: z.string().min(1).optional() })
      .strict()
      .superRefine((t, ctx) => {
        if ((t.certFile === undefined) !== (t.keyFile === undefined)) ctx.addIssue({ code: 'custom', path: ['keyFile'], message: 'certFile and keyFile go together (a client certificate)' });
      })
      .optional(),
  })
  .strict()
  .superRefine((r, ctx) => {
    if (r.backend === 'file' && (r.auth !== undefined || r.tls !== undefined)) ctx.addIssue({ code: 'custom', path: [r.auth !== undefined ? 'auth' : 'tls'], message: 'auth and tls are for backend nats' });
    if (r.backend === 'nats' && r.url === undefined) ctx.addIssue({ code: 'custom', path: ['url'], message: 'backend nats needs url (e.g. nats://127.0.0.1:4222)' });
    if (r.backend === 'file' && r.url !== undefined) ctx.addIssue({ code: 'custom', path: ['url'], message: 'url is for backend nats; the file backend keeps <stateDir>/token-revocations.jsonl' });
    if (r.backend === 'file' && r.shipAudit) ctx.addIssue({ code: 'custom', path: ['shipAudit'], message: 'shipAudit needs backend nats' });
  });

const ConfigInput = z
  .object({
    stateDir: z.string().min(1).optional(),
    adminSocket: z.string().min(1).optional(),
    cgroupBase: z
      .string()
      .regex(/^captrap[A-Za-z0-9_.-]*$/, "expected a name starting with 'captrap' (letters, digits, _ . -)")
      .default('captrap'),
    keys: z.object({ capabilityKeyFile: z.string().min(1).optional() }).strict().default({}),
    audit: z
      .object({
        dir: z.string().min(1).optional(),
        keyFile: z.string().min(1).optional(),
        signingKeyFile: z.string().min(1).optional(),
        flushIntervalMs: PositiveInt.optional(),
        /** While the log cannot write: refuse tool calls and capability changes (deny), or run them unaudited and say so (continue). */
        onFailure: z.enum(['deny', 'continue']).optional(),
      })
      .strict()
      .default({}),
    sandbox: SandboxInput.default({ allowDegraded: false, backend: 'auto', confine: true, allowRoot: false, warm: DEFAULT_WARM_LAUNCHERS }),
    /** Agents get uids first..first+count-1, one each while they run, so no two agents share a uid. */
    identity: z.object({ firstUid: z.number().int().min(1).max(4294967294).default(200000), count: PositiveInt.default(65536) }).strict().default({ firstUid: 200000, count: 65536 }),
    onAgentExit: z.enum(['kill', 'finish']).default('kill'),
    /** Upper bound on agents alive at once (configured ones plus sub-agents): agents.spawn cannot fork-bomb the host. */
    maxAgents: PositiveInt.default(64),
    /** Tool calls running at once per agent; more are refused with UNAVAILABLE rather than queued without bound. */
    maxToolCallsPerAgent: PositiveInt.default(256),
    /** Live capabilities one principal may hold; requests and delegations beyond it are refused (E_TOO_MANY_CAPABILITIES). */
    maxCapabilitiesPerAgent: PositiveInt.default(4096),
    /** What the sidecar forwards of each agent's own stdout and stderr (the rest is dropped, counted and marked). */
    agentOutput: z.object({ bytesPerSecond: Bytes.default(256 * 1024), burst: Bytes.default(1024 * 1024), maxBytes: Bytes.default(64 * 1024 * 1024) }).strict().optional(),
    /** Sub-agents running at once under one configured agent (its whole tree): no agent can use up another's spawns. */
    maxSubAgentsPerAgent: PositiveInt.default(16),
    /** Requests per second (sustained) and at once (burst) on each agent channel; beyond it E_RATE_LIMITED. */
    rateLimit: z.object({ perSecond: z.number().positive(), burst: PositiveInt }).strict().default({ perSecond: 500, burst: 1000 }),
    /** How often expired capabilities are forgotten and the revocation file compacted (ms). */
    pruneIntervalMs: PositiveInt.default(60_000),
    /** The violation monitor: rules per violation type, webhook (docs/monitoring.md). On by default. */
    monitor: MonitorInput.optional(),
    /** The dashboard on loopback (docs/monitoring.md); absent: no dashboard. */
    dashboard: z
      .object({
        listen: z.string().min(1).refine((l) => {
          try {
            parseListen(l);
            return true;
          } catch {
            return false;
          }
        }, 'expected a loopback address with a port: 127.0.0.1:PORT, localhost:PORT or [::1]:PORT (the dashboard is not for the network)'),
        actions: z.boolean().default(false),
        verifyInterval: Duration.default(600_000),
      })
      .strict()
      .optional(),
    tools: z.array(z.unknown()).default([]),
    agents: z.array(AgentInput).default([]),
    /** MCP servers behind the gateway, by name (`captrap mcp --server NAME`, `/mcp/NAME` in serve). */
    /** The Streamable HTTP front of `captrap serve` for mcpServers (docs/mcp.md). */
    mcpHttp: z
      .object({
        port: z.number().int().min(0).max(65535).default(0),
        allowedHosts: z.array(z.string().min(1)).default([]),
        allowedOrigins: z.array(z.string().min(1)).default([]),
        maxSessions: PositiveInt.default(64),
        /** A session with no request and no open stream for this long is ended (default 30 min). */
        idleTimeout: Duration.optional(),
      })
      .strict()
      .optional(),
    mcpServers: z.record(z.string().regex(AGENT_ID, 'expected a server name of letters, digits, _ . - starting with a letter'), McpServerInput).default({}),
    tokens: TokensInput.default({ trust: [], cacheEntries: 10_000 }),
    revocations: RevocationsInput.default({ backend: 'file', bucket: 'captrap-revocations', maxStaleness: 5000, shipAudit: false, auditStream: 'CAPTRAP_AUDIT' }),
  })
  .strict()
  .superRefine((c, ctx) => {
    const seen = new Set<string>();
    c.agents.forEach((a, i) => {
      if (seen.has(a.id)) ctx.addIssue({ code: 'custom', path: ['agents', i, 'id'], message: `expected a unique agent id; '${a.id}' appears twice` });
      seen.add(a.id);
    });
  });

// ---------------------------------------------------------------------------------------------
// The resolved form the sidecar uses

export interface CapabilityTemplate {
  resource: { type: ResourceType; pattern: string };
  operations: string[];
  constraints: Constraints;
  ttlMs?: number;
}

export interface AgentConfig {
  id: string;
  command: string;
  args: string[];
  /** Absolute; defaults to the config file's directory. */
  cwd: string;
  env: Record<string, string>;
  namespaces?: NamespaceName[];
  uid?: number;
  gid?: number;
  allowRoot?: boolean;
  confine?: boolean;
  view?: ViewConfig;
  limits: Limits;
  capabilities: CapabilityTemplate[];
  requestable: CapabilityTemplate[];
}

export interface SandboxDefaults {
  limits: Limits;
  maxOutputBytes?: number;
  killGraceMs?: number;
  allowDegraded: boolean;
  backend: 'auto' | 'cgroup-v2' | 'cgroup-v1' | 'none';
  uid?: number;
  gid?: number;
  /** Tool sandboxes' namespaces (default all six when confined). */
  namespaces?: NamespaceName[];
  confine: boolean;
  allowRoot: boolean;
  view?: ViewConfig;
  /** Most warm launchers per agent group (0: off). */
  warm: number;
}

export interface ViewConfig {
  readOnly: string[];
  readWrite: string[];
  hide: string[];
}

export interface McpClientConfig {
  principal: string;
  token?: string;
  /** Absolute. */
  tokenFile?: string;
  operations: string[];
  constraints: Constraints;
}

export interface McpServerConfig {
  name: string;
  command: string;
  args: string[];
  env: Record<string, string>;
  /** Absolute; defaults to the config file's directory. */
  cwd: string;
  limits: Limits;
  view?: ViewConfig;
  uid?: number;
  gid?: number;
  allowRoot?: boolean;
  namespaces?: NamespaceName[];
  confine?: boolean;
  tools: Record<string, { arguments?: Record<string, 'file' | 'url' | 'command' | 'none'>; operation?: 'read' | 'write' | 'list' | 'execute'; secret?: string[] }>;
  clients: McpClientConfig[];
}

export interface SidecarConfig {
  /** The file it came from (absolute), or a label for configs built in code. */
  source: string;
  /** The directory relative paths were resolved against. */
  baseDir: string;
  stateDir: string;
  adminSocket: string;
  cgroupBase: string;
  capabilityKeyFile: string;
  audit: { dir: string; keyFile: string; signingKeyFile: string; flushIntervalMs?: number; /** Default 'deny'. */ onFailure?: 'deny' | 'continue' };
  sandbox: SandboxDefaults;
  onAgentExit: 'kill' | 'finish';
  maxAgents: number;
  maxToolCallsPerAgent: number;
  maxCapabilitiesPerAgent: number;
  agentOutput?: { bytesPerSecond: number; burstBytes: number; maxBytes: number };
  maxSubAgentsPerAgent: number;
  rateLimit: { perSecond: number; burst: number };
  pruneIntervalMs: number;
  /** Absent in configs built in code: the monitor's defaults apply. */
  monitor?: MonitorConfig;
  dashboard?: DashboardConfig;
  identity: { firstUid: number; count: number };
  catalogue: Catalogue;
  agents: AgentConfig[];
  /** MCP servers behind the gateway (absent in configs built in code before issue 12). */
  mcpServers?: McpServerConfig[];
  mcpHttp?: { port: number; allowedHosts: string[]; allowedOrigins: string[]; maxSessions: number; idleTimeout?: number };
  /** ct2 tokens on agent channels; absent in configs built in code: defaults (own keys only, 10 000 entries). */
  tokens?: TokensConfig;
  /** Where ct2 revocations live; absent in configs built in code: the file backend. */
  revocations?: RevocationsConfig;
}

export interface TokensConfig {
  /** Absolute paths of JWKS files whose keys are trusted besides the sidecar's own. */
  trust: string[];
  /** Entries per level of the validation cache. */
  cacheEntries: number;
}

/** The revocations section with every default filled in (what a config built in code gets). */
export function revocationsConfig(r: Partial<RevocationsConfig> = {}): RevocationsConfig {
  return {
    backend: r.backend ?? 'file',
    ...(r.url !== undefined ? { url: r.url } : {}),
    bucket: r.bucket ?? 'captrap-revocations',
    maxStalenessMs: r.maxStalenessMs ?? 5000,
    host: r.host ?? hostname(),
    shipAudit: r.shipAudit ?? false,
    auditStream: r.auditStream ?? 'CAPTRAP_AUDIT',
    ...(r.auth !== undefined ? { auth: r.auth } : {}),
    ...(r.tls !== undefined ? { tls: r.tls } : {}),
  };
}

function formatPath(path: readonly PropertyKey[]): string {
  let s = '';
  for (const p of path) s += typeof p === 'number' ? `[${p}]` : s ? `.${String(p)}` : String(p);
  return s || '(root)';
}

function template(c: z.infer<typeof CapabilityInput>): CapabilityTemplate {
  const t: CapabilityTemplate = { resource: c.resource, operations: c.operations, constraints: c.constraints };
  if (c.ttlMs !== undefined) t.ttlMs = c.ttlMs;
  return t;
}

/**
 * Validates a config object. `source` names it in errors; relative paths resolve against
 * `baseDir`; `stateDirOverride` (serve's --state-dir) replaces the configured stateDir.
 */
export function parseConfig(value: unknown, source: string, baseDir: string, stateDirOverride?: string): SidecarConfig {
  const r = ConfigInput.safeParse(value ?? {});
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const field = formatPath(issue.path);
    throw new ConfigError(`${source}: ${field}: ${issue.message}`, { source, field });
  }
  const c = r.data;
  let catalogue: Catalogue;
  try {
    catalogue = parseCatalogue({ version: 1, tools: c.tools }, source);
  } catch (err) {
    // parseCatalogue already says "<source>: tools[i] (tool x).field: ..."
    throw new ConfigError((err as Error).message, { source, field: 'tools' }, err);
  }
  const abs = (p: string, from = baseDir) => (isAbsolute(p) ? p : resolve(from, p));
  const stateDir = stateDirOverride !== undefined ? resolve(stateDirOverride) : abs(c.stateDir ?? '.captrap');
  const sandbox: SandboxDefaults = {
    limits: toLimits(c.sandbox),
    allowDegraded: c.sandbox.allowDegraded,
    backend: c.sandbox.backend,
    confine: c.sandbox.confine,
    allowRoot: c.sandbox.allowRoot,
    warm: c.sandbox.warm,
  };
  const view = (v: z.infer<typeof ViewInput>): ViewConfig => ({ readOnly: v.readOnly.map((p) => abs(p)), readWrite: v.readWrite.map((p) => abs(p)), hide: v.hide.map((p) => abs(p)) });
  if (c.sandbox.view !== undefined) sandbox.view = view(c.sandbox.view);
  if (c.sandbox.maxOutputBytes !== undefined) sandbox.maxOutputBytes = c.sandbox.maxOutputBytes;
  if (c.sandbox.killGrace !== undefined) sandbox.killGraceMs = c.sandbox.killGrace;
  if (c.sandbox.namespaces !== undefined) sandbox.namespaces = c.sandbox.namespaces;
  if (c.sandbox.uid !== undefined) sandbox.uid = c.sandbox.uid;
  if (c.sandbox.gid !== undefined) sandbox.gid = c.sandbox.gid;
  const audit: SidecarConfig['audit'] = {
    dir: c.audit.dir !== undefined ? abs(c.audit.dir) : resolve(stateDir, 'audit'),
    keyFile: c.audit.keyFile !== undefined ? abs(c.audit.keyFile) : resolve(stateDir, 'audit.key'),
    signingKeyFile: c.audit.signingKeyFile !== undefined ? abs(c.audit.signingKeyFile) : resolve(stateDir, 'audit-signing.pem'),
  };
  if (c.audit.flushIntervalMs !== undefined) audit.flushIntervalMs = c.audit.flushIntervalMs;
  if (c.audit.onFailure !== undefined) audit.onFailure = c.audit.onFailure;
  return {
    source,
    baseDir,
    stateDir,
    adminSocket: c.adminSocket !== undefined ? abs(c.adminSocket) : resolve(stateDir, 'admin.sock'),
    cgroupBase: c.cgroupBase,
    capabilityKeyFile: c.keys.capabilityKeyFile !== undefined ? abs(c.keys.capabilityKeyFile) : resolve(stateDir, 'cap.key'),
    audit,
    sandbox,
    onAgentExit: c.onAgentExit,
    maxAgents: c.maxAgents,
    maxToolCallsPerAgent: c.maxToolCallsPerAgent,
    maxCapabilitiesPerAgent: c.maxCapabilitiesPerAgent,
    ...(c.agentOutput ? { agentOutput: { bytesPerSecond: c.agentOutput.bytesPerSecond, burstBytes: c.agentOutput.burst, maxBytes: c.agentOutput.maxBytes } } : {}),
    maxSubAgentsPerAgent: c.maxSubAgentsPerAgent,
    rateLimit: c.rateLimit,
    pruneIntervalMs: c.pruneIntervalMs,
    monitor: monitorConfig(c.monitor),
    ...(c.dashboard ? { dashboard: { listen: c.dashboard.listen, actions: c.dashboard.actions, verifyIntervalMs: c.dashboard.verifyInterval } } : {}),
    identity: c.identity,
    catalogue,
    agents: c.agents.map((a) => ({
      id: a.id,
      command: a.command,
      args: a.args,
      cwd: a.cwd !== undefined ? abs(a.cwd) : baseDir,
      env: a.env,
      ...(a.namespaces !== undefined ? { namespaces: a.namespaces } : {}),
      ...(a.uid !== undefined ? { uid: a.uid } : {}),
      ...(a.gid !== undefined ? { gid: a.gid } : {}),
      ...(a.allowRoot !== undefined ? { allowRoot: a.allowRoot } : {}),
      ...(a.confine !== undefined ? { confine: a.confine } : {}),
      ...(a.view !== undefined ? { view: view(a.view) } : {}),
      limits: toLimits(a.limits),
      capabilities: a.capabilities.map(template),
      requestable: a.requestable.map(template),
    })),
    ...(c.mcpHttp ? { mcpHttp: c.mcpHttp } : {}),
    tokens: { trust: c.tokens.trust.map((p) => abs(p)), cacheEntries: c.tokens.cacheEntries },
    revocations: revocationsConfig({
      backend: c.revocations.backend,
      ...(c.revocations.url !== undefined ? { url: c.revocations.url } : {}),
      bucket: c.revocations.bucket,
      maxStalenessMs: c.revocations.maxStaleness,
      ...(c.revocations.host !== undefined ? { host: c.revocations.host } : {}),
      shipAudit: c.revocations.shipAudit,
      auditStream: c.revocations.auditStream,
      ...(c.revocations.auth !== undefined ? { auth: Object.fromEntries(Object.entries(c.revocations.auth).map(([k, v]) => [k, k === 'user' ? v : abs(v)])) } : {}),
      ...(c.revocations.tls !== undefined ? { tls: Object.fromEntries(Object.entries(c.revocations.tls).map(([k, v]) => [k, abs(v)])) } : {}),
    }),
    mcpServers: Object.entries(c.mcpServers).map(([name, m]) => ({
      name,
      command: m.command,
      args: m.args,
      env: m.env,
      cwd: m.cwd !== undefined ? abs(m.cwd) : baseDir,
      limits: toLimits(m.limits),
      ...(m.view !== undefined ? { view: view(m.view) } : {}),
      ...(m.uid !== undefined ? { uid: m.uid } : {}),
      ...(m.gid !== undefined ? { gid: m.gid } : {}),
      ...(m.allowRoot !== undefined ? { allowRoot: m.allowRoot } : {}),
      ...(m.namespaces !== undefined ? { namespaces: m.namespaces } : {}),
      ...(m.confine !== undefined ? { confine: m.confine } : {}),
      tools: m.tools,
      clients: m.clients.map((cl) => {
        const constraints: Constraints = { ...cl.constraints };
        if (cl.timeout !== undefined) constraints.limits = { ...(constraints.limits ?? {}), timeoutMs: Math.ceil(cl.timeout) };
        return {
          principal: cl.principal,
          ...(cl.token !== undefined ? { token: cl.token } : {}),
          ...(cl.tokenFile !== undefined ? { tokenFile: abs(cl.tokenFile) } : {}),
          operations: cl.operations,
          constraints,
        };
      }),
    })),
  };
}

/** The public key next to the audit signing key: `audit-signing.pem` -> `audit-signing.pub`. */
export function publicKeyFileFor(signingKeyFile: string): string {
  const ext = extname(signingKeyFile);
  return (ext ? signingKeyFile.slice(0, -ext.length) : signingKeyFile) + '.pub';
}

/** Reads and validates a config file (.yaml, .yml or .json). */
export function loadConfig(path: string, stateDirOverride?: string): SidecarConfig {
  const file = resolve(path);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read: ${(err as Error).message}`, { source: file }, err);
  }
  const ext = extname(file).toLowerCase();
  let value: unknown;
  try {
    if (ext === '.json') value = JSON.parse(text);
    else if (ext === '.yaml' || ext === '.yml') value = parseYaml(text);
    else throw new Error('expected a .yaml, .yml or .json file');
  } catch (err) {
    throw new ConfigError(`${file}: ${ext === '.json' ? 'not valid JSON' : ext === '.yaml' || ext === '.yml' ? 'not valid YAML' : 'unsupported file type'}: ${(err as Error).message}`, { source: file }, err);
  }
  return parseConfig(value, file, dirname(file), stateDirOverride);
}
