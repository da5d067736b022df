// The HTTP front as `captrap serve` runs it: the config's mcpServers behind the sidecar's own
// audit log (one chain), sandboxes under the sidecar's cgroup base. Started after the sidecar,
// closed before it (the sessions' last events must reach the log before it closes).
import { Keyring } from '../kernel/keyring.js';
import { generateSecret } from '../kernel/keys.js';
import type { McpServerConfig, SidecarConfig } from '../runner/config.js';
import type { Sidecar } from '../runner/sidecar.js';
import { McpGateway, type McpServerSpec } from './gateway.js';
import { McpHttpFront, type HttpServerEntry } from './http.js';

/** A config entry as the gateway runs it. */
export function serverSpec(m: McpServerConfig, config: Pick<SidecarConfig, 'cgroupBase' | 'sandbox'>): McpServerSpec {
  const { clients: _c, limits, cwd: _cwd, ...rest } = m;
  const spec: McpServerSpec = { ...rest, cgroupBase: config.cgroupBase, limits: {} };
  if (limits.memoryBytes !== undefined) spec.limits!.memoryBytes = limits.memoryBytes;
  if (limits.pids !== undefined) spec.limits!.pids = limits.pids;
  if (limits.cpu !== undefined) spec.limits!.cpu = limits.cpu;
  if (config.sandbox.allowDegraded) spec.allowDegraded = true;
  return spec;
}

export function httpEntry(m: McpServerConfig, config: Pick<SidecarConfig, 'cgroupBase' | 'sandbox'>): HttpServerEntry {
  return { ...serverSpec(m, config), clients: m.clients.map((c) => ({ ...c })) };
}

export interface ServeMcp {
  front: McpHttpFront;
  gateway: McpGateway;
  close(): Promise<void>;
}

/** Starts the HTTP front for a running sidecar, or returns undefined when the config has no mcpServers. */
export async function startMcpHttp(sidecar: Sidecar, notice: (line: string) => void): Promise<ServeMcp | undefined> {
  const config = sidecar.config;
  if (!config.mcpServers || config.mcpServers.length === 0) return undefined;
  // Capabilities of MCP sessions live as long as their session: a key of their own, never written down.
  const gateway = new McpGateway(new Keyring({ id: 'mcp', secret: generateSecret() }), sidecar.audit);
  const front = await McpHttpFront.listen({
    gateway,
    servers: config.mcpServers.map((m) => httpEntry(m, config)),
    port: config.mcpHttp?.port ?? 0,
    allowedHosts: config.mcpHttp?.allowedHosts ?? [],
    allowedOrigins: config.mcpHttp?.allowedOrigins ?? [],
    maxSessions: config.mcpHttp?.maxSessions ?? 64,
    ...(config.mcpHttp?.idleTimeout !== undefined ? { idleTimeoutMs: Math.ceil(config.mcpHttp.idleTimeout) } : {}),
    notice,
    quarantineOf: (principal) => sidecar.monitoring?.monitor.quarantineOf(principal)?.type,
  });
  // A quarantine ends the principal's sessions at once, not only at its next request.
  const unsubscribe = sidecar.monitoring?.monitor.subscribe((alert) => {
    if (alert.actions.includes('quarantine')) front.endSessionsOf(alert.principal);
  });
  return {
    front,
    gateway,
    async close() {
      unsubscribe?.();
      await front.close();
      gateway.close();
    },
  };
}
