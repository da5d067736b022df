// Prometheus metrics of one sidecar. A private registry (not prom-client's global one), so two
// sidecars in one process (tests, embedding) never share or clash over metric names.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { TokenGateStats } from './token-gate.js';
import type { RevocationStatus } from './token-revocations.js';

export interface MetricsSource {
  agentsRunning(): number;
  sandboxesRunning(): number;
  kernel(): { live: number; bound: number; revoked: number; validations: number; denials: number };
  audit(): { eventsLogged: number; bufferDepth: number; available?: boolean; droppedRecords?: number; failedWrites?: number } | null;
  /** ct2 tokens, once the sidecar has opened them. */
  tokens?(): { stats: TokenGateStats; revocations: RevocationStatus } | undefined;
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
    const tokens = () => source.tokens?.();
    const labelled = (name: string, help: string, labelNames: string[], read: (set: (labels: Record<string, string>, v: number) => void) => void) =>
      new Gauge({
        name,
        help,
        labelNames,
        registers,
        collect() {
          this.reset();
          read((labels, v) => this.set(labels, v));
        },
      });
    labelled('captrap_token_calls', 'Tool calls presented with a ct2 token since start, by result (allowed|denied)', ['result'], (set) => {
      const t = tokens();
      if (!t) return;
      set({ result: 'allowed' }, t.stats.verified);
      set({ result: 'denied' }, t.stats.denied);
    });
    labelled('captrap_token_cache_hit_ratio', 'ct2 validation cache hits / lookups since start, by level (chain: signatures, decision: whole allowed calls)', ['level'], (set) => {
      const t = tokens();
      if (!t) return;
      set({ level: 'chain' }, t.stats.cache.chain.hitRatio);
      set({ level: 'decision' }, t.stats.cache.decision.hitRatio);
    });
    labelled('captrap_token_cache_entries', 'Entries in the ct2 validation cache, by level', ['level'], (set) => {
      const t = tokens();
      if (!t) return;
      set({ level: 'chain' }, t.stats.cache.chain.size);
      set({ level: 'decision' }, t.stats.cache.decision.size);
    });
    gauge('captrap_token_revocations_healthy', '1 while the ct2 revocation set can be trusted, 0 while ct2 calls are refused for want of it (stale feed, closed)', () => (tokens()?.revocations.healthy === false ? 0 : 1));
    gauge('captrap_token_revocations', 'ct2 revocation ids known revoked', () => tokens()?.revocations.revoked ?? 0);
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
