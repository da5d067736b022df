// The sidecar as one object: start() brings up the audit log, the kernel, the admin socket and
// the configured agents; stop() takes them down in the order that keeps every guarantee
// (stop accepting, stop every process, revoke everything, close the log, remove the socket).
// `captrap serve` is a thin shell around it; tests and embedders use it directly.
import { AuditLog, type AuditOutageReport, type AuditUnavailableError } from '../kernel/audit.js';
import type { Capability } from '../kernel/capability.js';
import type { AuditStats } from '../kernel/events.js';
import { SecurityKernel } from '../kernel/kernel.js';
import { Keyring } from '../kernel/keyring.js';
import { loadOrCreateSecretFile } from '../kernel/keys.js';
import { ToolPolicy } from '../kernel/policy.js';
import { cleanupStaleCgroups, removeCgroupBase, type StaleCleanupResult } from '../isolation/cgroup.js';
import { prioritiseSelf, type PrioritiseResult } from '../isolation/group.js';
import { DeathWatch } from '../isolation/deathwatch.js';
import { configureWarmPool, drainWarmPool } from '../isolation/pool.js';
import { probeHost } from '../isolation/host.js';
import { log } from '../log.js';
import { AdminServer, adminHandlers, type AdminContext } from './admin.js';
import { publicKeyFileFor, type SidecarConfig } from './config.js';

// Kept importable from here: the library API has exported it from the sidecar since issue 4.
export { publicKeyFileFor };
import { sidecarSecrets } from './identity.js';
import { SidecarMetrics } from './metrics.js';
import { AuditGate, SandboxCounters, ToolRunner } from './runner.js';
import { agentHandlers, startMaintenance, type SidecarContext } from './server.js';
import { monitorConfig } from '../monitor/config.js';
import { startMonitoring, type Monitoring } from './monitoring.js';
import { checkCapabilityKeyFile, prepareStateDir } from './statedir.js';
import { TokenGate } from './token-gate.js';
import type { TokenRevocations } from './token-revocations.js';
import { CapabilityBook, Supervisor, type AgentHandle } from './supervisor.js';

export interface SidecarOptions {
  /** Where agents' output lines go (default: stderr, prefixed `[agent-id] `). */
  output?: (agentId: string, stream: 'stdout' | 'stderr', line: string) => void;
  /**
   * One line for the operator (default: stderr, prefixed `captrap: `): what start-up did to keep
   * the sidecar responsive, and the audit log going unavailable and writing again.
   */
  notice?: (line: string) => void;
  /** Where ct2 revocations live, instead of the source config.revocations names (embedders, tests). Closed with the sidecar. */
  revocations?: TokenRevocations;
}

const defaultNotice = (line: string) => {
  process.stderr.write(`captrap: ${line}\n`);
};

/** The startup line about the sidecar's CPU priority over its sandboxes. */
export function describePriority(p: PrioritiseResult | { error: string }): string {
  if ('error' in p) return `cpu priority: not set (${p.error}); sandboxes compete with the sidecar on equal terms`;
  if (p.applied.length === 0) return `cpu priority: not set (${p.skipped ?? 'nothing to do'})`;
  return `cpu priority: ${p.applied.map((a) => `${a.file} = ${a.value}`).join(', ')} (the sidecar wins 4:1 over all sandboxes together under contention)`;
}

export class Sidecar {
  readonly config: SidecarConfig;
  readonly kernel: SecurityKernel;
  readonly audit: AuditLog;
  readonly policy: ToolPolicy;
  readonly book: CapabilityBook;
  readonly runner: ToolRunner;
  readonly supervisor: Supervisor;
  /** Early death notices for agents (unused where the host cannot give them: see `deathWatch.status`). */
  readonly deathWatch: DeathWatch | undefined;
  readonly metrics: SidecarMetrics;
  readonly counters = new SandboxCounters();
  readonly gate: AuditGate;
  readonly startedAt = Date.now();
  /** What start-up did to give the sidecar CPU priority over the sandboxes (prioritiseSelf). */
  priority: PrioritiseResult | { error: string } | undefined;
  private readonly notice: (line: string) => void;
  private readonly onAuditUnavailable: (err: AuditUnavailableError) => void;
  private readonly onAuditAvailable: (info: AuditOutageReport) => void;
  /** What start-up cleaned from an earlier run that did not stop cleanly. */
  staleCleanup: StaleCleanupResult | undefined;
  private admin: AdminServer | undefined;
  /** The violation monitor and, with `dashboard:` in the config, the dashboard (docs/monitoring.md). */
  monitoring: Monitoring | undefined;
  /** ct2 tokens: keys, validation cache, revocations (docs/tokens.md, "In the sidecar"). */
  tokens: TokenGate | undefined;
  /** With revocations.shipAudit: the copy of every audit record going to the JetStream stream. */
  auditShipping: { status(): object; close(): Promise<void> } | undefined;
  private untapTokens: (() => void) | undefined;
  private untap: (() => void) | undefined;
  private stopping = false;
  private stopped: Promise<void> | undefined;

  private constructor(config: SidecarConfig, audit: AuditLog, opts: SidecarOptions) {
    this.config = config;
    this.audit = audit;
    checkCapabilityKeyFile(config.capabilityKeyFile);
    const keys = new Keyring({ id: 'k1', secret: loadOrCreateSecretFile(config.capabilityKeyFile).secret });
    this.policy = ToolPolicy.fromObject(config.catalogue, config.source);
    this.kernel = new SecurityKernel({ keys, stateDir: config.stateDir, audit, policy: this.policy });
    this.book = new CapabilityBook(this.kernel);
    this.metrics = new SidecarMetrics({
      agentsRunning: () => this.supervisor.running().length,
      sandboxesRunning: () => this.counters.running,
      kernel: () => this.kernel.stats(),
      audit: () => this.audit.stats(),
      tokens: () => (this.tokens ? { stats: this.tokens.stats(), revocations: this.tokens.revocationStatus() } : undefined),
    });
    this.gate = new AuditGate({ audit, onFailure: config.audit.onFailure ?? 'deny', metrics: this.metrics });
    this.runner = new ToolRunner({
      kernel: this.kernel,
      audit,
      sandbox: config.sandbox,
      cgroupBase: config.cgroupBase,
      counters: this.counters,
      metrics: this.metrics,
      secrets: sidecarSecrets(config),
      gate: this.gate,
      // Every tool call runs in its agent's group (the supervisor is built below).
      groupFor: (caller) => this.supervisor.groupFor(caller.agentId, caller.process),
    });
    this.notice = opts.notice ?? defaultNotice;
    const policy = config.audit.onFailure === 'continue' ? 'tool calls and capability changes run UNAUDITED (audit.onFailure: continue)' : 'refusing tool calls and capability changes (E_AUDIT_UNAVAILABLE)';
    this.onAuditUnavailable = (err) => {
      const permanent = err.details?.['permanent'] === true;
      this.notice(`audit log unavailable: ${err.lastError}; ${policy} ${permanent ? 'for good: the log has stopped' : 'until it writes again'}`);
    };
    this.onAuditAvailable = (info) => {
      this.notice(`audit log writes again after ${info.downMs} ms (${info.failedWrites} failed writes, ${info.droppedRecords} records dropped); refused ${this.gate.refused}, unaudited ${this.gate.unaudited} so far`);
    };
    audit.on('unavailable', this.onAuditUnavailable);
    audit.on('available', this.onAuditAvailable);
    const ctx = this.context();
    // CAPTRAP_DEATHWATCH=0 leaves agents to be revoked on their exit notice alone (for comparison).
    this.deathWatch = process.env.CAPTRAP_DEATHWATCH === '0' ? undefined : DeathWatch.start();
    this.supervisor = new Supervisor({
      kernel: this.kernel,
      book: this.book,
      runner: this.runner,
      audit,
      config,
      counters: this.counters,
      metrics: this.metrics,
      ...(opts.output ? { output: opts.output } : {}),
      handlers: (agent) => agentHandlers(ctx, agent),
      ...(this.deathWatch ? { deathWatch: this.deathWatch } : {}),
    });
    // Expired capabilities are forgotten on a timer from the start, agents or not.
    startMaintenance(ctx);
  }

  private context(): SidecarContext {
    // Getters: the supervisor is built after the context it is handed.
    const self = this;
    return {
      kernel: this.kernel,
      policy: this.policy,
      book: this.book,
      runner: this.runner,
      get supervisor() {
        return self.supervisor;
      },
      audit: this.audit,
      config: this.config,
      metrics: this.metrics,
      isStopping: () => this.stopping,
      quarantineOf: (principal) => self.monitoring?.monitor.quarantineOf(principal)?.type,
      get tokens() {
        return self.tokens;
      },
    };
  }

  /** Starts a sidecar from a validated config. On failure everything started is stopped again. */
  static async start(config: SidecarConfig, opts: SidecarOptions = {}): Promise<Sidecar> {
    // Before anything reads a key or creates a cgroup: a state dir another user planted is refused.
    prepareStateDir(config);
    const host = probeHost();
    // Before anything of ours exists: what an earlier, killed sidecar left behind.
    const stale = await cleanupStaleCgroups(host, config.cgroupBase);
    const audit = await AuditLog.open({
      dir: config.audit.dir,
      keyFile: config.audit.keyFile,
      signingKeyFile: config.audit.signingKeyFile,
      publicKeyFile: publicKeyFileFor(config.audit.signingKeyFile),
      ...(config.audit.flushIntervalMs !== undefined ? { flushIntervalMs: config.audit.flushIntervalMs } : {}),
      // While the log cannot write, requests are refused (audit.onFailure: deny): retry often enough
      // that the sidecar serves again within about a second of the disk taking writes.
      retryMaxMs: 1000,
    });
    let s: Sidecar;
    try {
      s = new Sidecar(config, audit, opts);
    } catch (err) {
      await audit.close();
      throw err;
    }
    s.staleCleanup = stale;
    try {
      // The sidecar runs outside <base>: under contention it must win over every sandbox together.
      if (config.sandbox.backend !== 'none') {
        try {
          s.priority = prioritiseSelf(config.cgroupBase, host);
        } catch (err) {
          s.priority = { error: (err as Error).message };
        }
        s.notice(describePriority(s.priority));
      }
      // Process-wide: the pools themselves are per agent group, and go with their groups.
      configureWarmPool({ maxSize: config.sandbox.warm });
      // Before the first agent can present a token: keys, cache, revocation source.
      await s.openTokens(opts);
      const adminCtx: AdminContext = {
        ...s.context(),
        supervisor: s.supervisor,
        counters: s.counters,
        startedAt: s.startedAt,
        auditStats: () => ({ ...s.audit.stats(), onFailure: s.gate.onFailure, refusedCalls: s.gate.refused, unauditedCalls: s.gate.unaudited }),
        metricsText: () => s.metrics.text(),
        auditShipping: () => s.auditShipping?.status() as Record<string, unknown> | undefined,
      };
      const handlers = adminHandlers(adminCtx);
      s.admin = await AdminServer.listen(config.adminSocket, handlers);
      // Before the first agent: the monitor sees every record its requests cause.
      s.monitoring = await startMonitoring(adminCtx, handlers, {
        config: config.monitor ?? monitorConfig(undefined),
        ...(config.dashboard ? { dashboard: config.dashboard } : {}),
        notice: (line) => s.notice(line),
      });
      adminCtx.quarantine = s.monitoring.monitor;
      const monitoring = s.monitoring;
      s.untap = audit.tap((seq, event) => monitoring.feed(seq, event));
      if (monitoring.dashboardUrl) s.notice(`dashboard: ${monitoring.dashboardUrl}`);
      for (const a of config.agents) s.launchConfigured(a);
    } catch (err) {
      await s.stop();
      throw err;
    }
    return s;
  }

  private async openTokens(opts: SidecarOptions): Promise<void> {
    const tokens = await TokenGate.open({
      config: this.config,
      audit: this.audit,
      kernel: this.kernel,
      policy: this.policy,
      metrics: this.metrics,
      ...(opts.revocations ? { revocations: opts.revocations } : {}),
    });
    this.tokens = tokens;
    // A running ct2 call stops when one of its token's ids is revoked, here or on another host.
    tokens.onRevoked((ids) => this.runner.killRevokedTokens(ids));
    // Every ct1 revocation (an agent's, an administrator's, the cascade at a holder's death) is
    // an audit record: the tokens exported from those capabilities are revoked with them.
    this.untapTokens = this.audit.tap((_seq, event) => {
      if (event.type !== 'capability_revoked') return;
      const ids = event.details?.['ids'];
      if (Array.isArray(ids)) tokens.capabilitiesRevoked(ids.filter((x): x is string => typeof x === 'string'));
    });
    this.kernel.onPruned((ids) => tokens.capabilitiesForgotten(ids));
    const r = tokens.revocationStatus();
    this.notice(`ct2 tokens: key ${tokens.store.activeId}, revocations ${r.backend} (${r.detail})`);
    const rc = this.config.revocations;
    if (rc?.backend === 'nats' && rc.shipAudit) {
      // Loaded only when asked for: no NATS client in a sidecar that does not use one.
      const { startAuditShipping } = await import('./nats-audit-ship.js');
      this.auditShipping = startAuditShipping(this.audit, rc, { log });
      this.notice(`audit shipping: every record also goes to stream ${rc.auditStream} on ${rc.url}`);
    }
  }

  private launchConfigured(a: SidecarConfig['agents'][number]): AgentHandle {
    const { capabilities: _granted, ...spec } = a;
    return this.supervisor.launch(spec, null, (agent) => {
      for (const t of a.capabilities) {
        const c: Capability = this.kernel.requestCapability(a.id, t.resource, t.operations, t.constraints, {
          ...(t.ttlMs !== undefined ? { ttlMs: t.ttlMs } : {}),
          holder: agent.ref,
        });
        this.book.add(c);
      }
    });
  }

  get adminSocket(): string {
    return this.config.adminSocket;
  }

  get isStopping(): boolean {
    return this.stopping;
  }

  auditStats(): AuditStats {
    return this.audit.stats();
  }

  /**
   * Graceful shutdown: refuse new calls, close the admin socket, stop every tool call and agent
   * and wait until their sandboxes are gone, revoke every capability, close the kernel and the
   * audit log, remove the cgroup base. Idempotent.
   */
  stop(): Promise<void> {
    this.stopped ??= this.doStop();
    return this.stopped;
  }

  private async doStop(): Promise<void> {
    this.stopping = true;
    await this.admin?.close();
    this.runner.killAll('killed');
    await this.supervisor.stopAll();
    await this.runner.whenIdle();
    for (const p of this.book.principals()) {
      try {
        this.kernel.revokeAllForPrincipal(p, 'sidecar shutdown');
      } catch (err) {
        log.error({ err, principal: p }, 'revocation at shutdown failed');
      }
    }
    // After the revocations above (tokens exported from them are revoked through the source), before the log closes.
    try {
      await this.tokens?.close();
    } catch (err) {
      log.error({ err }, 'closing the ct2 token revocations failed');
    }
    this.untapTokens?.();
    // Best effort by design: what is queued gets a moment to go out; the local chain is the authority.
    await this.auditShipping?.close().catch((err: unknown) => log.error({ err }, 'stopping audit shipping failed'));
    // The monitor's last alerts are recorded before the log closes; the dashboard goes with it.
    this.untap?.();
    await this.monitoring?.stop();
    this.kernel.close();
    this.runner.close();
    this.deathWatch?.close();
    this.audit.off('unavailable', this.onAuditUnavailable as (arg: never) => void);
    this.audit.off('available', this.onAuditAvailable as (arg: never) => void);
    let lost: unknown;
    try {
      await this.audit.close();
    } catch (err) {
      // The log could not write its last records (still unavailable): say so, but leave nothing behind.
      lost = err;
      this.notice(`audit log closed while unavailable: ${(err as Error).message}`);
    }
    // Agent groups took their launchers with them; a sandbox started outside a group (an
    // embedder's) may have left a pool under the base, which must be empty to be removed.
    if (this.config.sandbox.warm > 0) await drainWarmPool();
    removeCgroupBase(probeHost(), this.config.cgroupBase);
    if (lost !== undefined) throw lost;
  }
}
