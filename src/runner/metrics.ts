// Prometheus metrics of one sidecar. A private registry (not prom-client's global one), so two
// sidecars in one process (tests, embedding) never share or clash over metric names.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export interface MetricsSource {
  agentsRunning(): number;
  sandboxesRunning(): number;
  kernel(): { live: number; bound: number; revoked: number; validations: number; denials: number };
  audit(): { eventsLogged: number; bufferDepth: number; available?: boolean; droppedRecords?: number; failedWrites?: number } | null;
}

export class SidecarMetrics {
  readonly registry = new Registry();
  readonly toolCalls: Counter<'tool' | 'reason'>;
  readonly toolDenials: Counter<'code'>;
  readonly toolDuration: Histogram<'tool'>;
  readonly agentExits: Counter<'reason'>;
  readonly rpcErrors: Counter<'channel' | 'code'>;
  readonly auditRefused: Counter<'method'>;
  readonly auditUnaudited: Counter<'method'>;

  constructor(source: MetricsSource) {
    const registers = [this.registry];
    this.toolCalls = new Counter({ name: 'captrap_tool_calls_total', help: 'Tool calls that ran, by exit reason', labelNames: ['tool', 'reason'], registers });
    this.toolDenials = new Counter({ name: 'captrap_tool_denials_total', help: 'Tool calls refused before anything was spawned, by deny code', labelNames: ['code'], registers });
    this.toolDuration = new Histogram({
      name: 'captrap_tool_duration_seconds',
      help: 'Wall-clock time of sandboxed tool calls',
      labelNames: ['tool'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.agentExits = new Counter({ name: 'captrap_agent_exits_total', help: 'Agents that exited, by exit reason', labelNames: ['reason'], registers });
    this.rpcErrors = new Counter({ name: 'captrap_rpc_errors_total', help: 'JSON-RPC error answers, by channel (agent|admin) and code', labelNames: ['channel', 'code'], registers });
    this.auditRefused = new Counter({ name: 'captrap_audit_refused_calls_total', help: 'Requests refused because the audit log could not write (audit.onFailure: deny), by method', labelNames: ['method'], registers });
    this.auditUnaudited = new Counter({
      name: 'captrap_audit_unaudited_calls_total',
      help: 'Requests run while the audit log could not write (audit.onFailure: continue), by method',
      labelNames: ['method'],
      registers,
    });
    // One scrape reads several gauges from kernel.stats(), which walks every capability: read it once per scrape.
    let kernelAt = 0;
    let kernelStats: ReturnType<MetricsSource['kernel']> | undefined;
    const kernel = () => {
      const now = Date.now();
      if (!kernelStats || now - kernelAt > 50) {
        kernelStats = source.kernel();
        kernelAt = now;
      }
      return kernelStats;
    };
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read());
        },
      });
    gauge('captrap_agents_running', 'Agents (and sub-agents) alive', () => source.agentsRunning());
    gauge('captrap_sandboxes_running', 'Sandboxes (agents and tool calls) alive', () => source.sandboxesRunning());
    gauge('captrap_capabilities_live', 'Capabilities neither expired nor revoked', () => kernel().live);
    gauge('captrap_capabilities_bound', 'Live capabilities bound to a process', () => kernel().bound);
    gauge('captrap_capabilities_revoked', 'Revoked capability ids (persisted)', () => kernel().revoked);
    gauge('captrap_validations', 'Capability validations since start', () => kernel().validations);
    gauge('captrap_denials', 'Capability denials since start', () => kernel().denials);
    gauge('captrap_audit_events', 'Audit events logged since start', () => source.audit()?.eventsLogged ?? 0);
    gauge('captrap_audit_buffer_depth', 'Audit events recorded but not yet written', () => source.audit()?.bufferDepth ?? 0);
    gauge('captrap_audit_available', '1 while the audit log writes, 0 while it cannot (an outage, a permanent failure, or closed)', () => (source.audit()?.available === false ? 0 : 1));
    gauge('captrap_audit_dropped_records', 'Audit records dropped because the buffer was full during an outage', () => source.audit()?.droppedRecords ?? 0);
    gauge('captrap_audit_failed_writes', 'Audit log write attempts that failed since start', () => source.audit()?.failedWrites ?? 0);
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
