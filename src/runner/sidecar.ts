// The sidecar as one object: start() brings up the audit log, the kernel, the admin socket and
// the configured agents; stop() takes them down in the order that keeps every guarantee
// (stop accepting, stop every process, revoke everything, close the log, remove the socket).
// `captrap serve` is a thin shell around it; tests and embedders use it directly.
import { extname } from 'node:path';
import { AuditLog } from '../kernel/audit.js';
import type { Capability } from '../kernel/capability.js';
import type { AuditStats } from '../kernel/events.js';
import { SecurityKernel } from '../kernel/kernel.js';
import { Keyring } from '../kernel/keyring.js';
import { loadOrCreateSecretFile } from '../kernel/keys.js';
import { ToolPolicy } from '../kernel/policy.js';
import { cleanupStaleCgroups, removeCgroupBase, type StaleCleanupResult } from '../isolation/cgroup.js';
import { probeHost } from '../isolation/host.js';
import { log } from '../log.js';
import { AdminServer, adminHandlers, type AdminContext } from './admin.js';
import type { SidecarConfig } from './config.js';
import { sidecarSecrets } from './identity.js';
import { SidecarMetrics } from './metrics.js';
import { SandboxCounters, ToolRunner } from './runner.js';
import { agentHandlers, type SidecarContext } from './server.js';
import { checkCapabilityKeyFile, prepareStateDir } from './statedir.js';
import { CapabilityBook, Supervisor, type AgentHandle } from './supervisor.js';

export interface SidecarOptions {
  /** Where agents' output lines go (default: stderr, prefixed `[agent-id] `). */
  output?: (agentId: string, stream: 'stdout' | 'stderr', line: string) => void;
}

/** The public key next to the signing key: `audit-signing.pem` -> `audit-signing.pub`. */
export function publicKeyFileFor(signingKeyFile: string): string {
  const ext = extname(signingKeyFile);
  return (ext ? signingKeyFile.slice(0, -ext.length) : signingKeyFile) + '.pub';
}

export class Sidecar {
  readonly config: SidecarConfig;
  readonly kernel: SecurityKernel;
  readonly audit: AuditLog;
  readonly policy: ToolPolicy;
  readonly book: CapabilityBook;
  readonly runner: ToolRunner;
  readonly supervisor: Supervisor;
  readonly metrics: SidecarMetrics;
  readonly counters = new SandboxCounters();
  readonly startedAt = Date.now();
  /** What start-up cleaned from an earlier run that did not stop cleanly. */
  staleCleanup: StaleCleanupResult | undefined;
  private admin: AdminServer | undefined;
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
    });
    this.runner = new ToolRunner({ kernel: this.kernel, audit, sandbox: config.sandbox, cgroupBase: config.cgroupBase, counters: this.counters, metrics: this.metrics, secrets: sidecarSecrets(config) });
    const ctx = this.context();
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
    });
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
      const adminCtx: AdminContext = {
        ...s.context(),
        supervisor: s.supervisor,
        counters: s.counters,
        startedAt: s.startedAt,
        auditStats: () => s.audit.stats(),
        metricsText: () => s.metrics.text(),
      };
      s.admin = await AdminServer.listen(config.adminSocket, adminHandlers(adminCtx));
      for (const a of config.agents) s.launchConfigured(a);
    } catch (err) {
      await s.stop();
      throw err;
    }
    return s;
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
    this.kernel.close();
    this.runner.close();
    await this.audit.close();
    removeCgroupBase(probeHost(), this.config.cgroupBase);
  }
}
