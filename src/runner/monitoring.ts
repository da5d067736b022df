// Joins the violation monitor and the dashboard (src/monitor) to a running sidecar: the monitor
// is fed every audit record, quarantines through the kernel and the supervisor, and counts into
// the sidecar's Prometheus registry; the dashboard reads through the admin handlers (the same
// answers `captrap ps` and `captrap caps` get, minus capability tokens) and acts through them.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Counter, Gauge } from 'prom-client';
import { loadOrCreateSecretFile } from '../kernel/keys.js';
import type { VerifyReport } from '../kernel/audit-verify.js';
import type { AuditEvent } from '../kernel/events.js';
import type { MonitorConfig } from '../monitor/config.js';
import { Dashboard } from '../monitor/dashboard.js';
import { ViolationMonitor } from '../monitor/monitor.js';
import type { AdminContext } from './admin.js';
import { publicKeyFileFor } from './config.js';
import type { RpcHandler } from './jsonrpc.js';

export interface DashboardConfig {
  listen: string;
  /** revoke / kill / release from the page (default false). */
  actions: boolean;
  /** How often the audit chain is verified in the background (0: only at start). */
  verifyIntervalMs: number;
}

export interface ChainStatus {
  seq: number;
  available: boolean | undefined;
  eventsLogged: number | undefined;
  /**
   * The last background verify. `ok`: the chain's integrity holds (every MAC and link). A live
   * log is never complete (its newest records are not yet covered by a checkpoint, and it is not
   * closed), so completeness is reported, not required: `lastCheckpointSeq` and `uncovered`.
   */
  verify: { ok: boolean; at: string; problems: number; lastCheckpointSeq: number | null; uncovered: number; error?: string } | null;
}

export interface Monitoring {
  readonly monitor: ViolationMonitor;
  readonly dashboard: Dashboard | undefined;
  /** The dashboard's address with its token (what an operator opens), if it runs. */
  readonly dashboardUrl: string | undefined;
  /** Every audit record, with its sequence number, as the log writes it. */
  feed(seq: number, event: AuditEvent): void;
  stop(): Promise<void>;
}

export interface MonitoringOptions {
  config: MonitorConfig;
  dashboard?: DashboardConfig;
  notice(line: string): void;
}

/** The admin answer for capabilities, without the bearer tokens (a page is no place for them). */
function withoutTokens(caps: unknown): unknown {
  return Array.isArray(caps) ? caps.map((c) => ({ ...(c as Record<string, unknown>), token: undefined })) : caps;
}

/** Runs `captrap audit verify --json` on the log in a child process: a long log never blocks the sidecar. */
function verifyInChild(ctx: AdminContext): Promise<ChainStatus['verify']> {
  const here = fileURLToPath(import.meta.url);
  const cli = join(here, '..', here.endsWith('.ts') ? 'cli.ts' : 'cli.js');
  const pre = here.endsWith('.ts') ? ['--import', 'tsx'] : [];
  const a = ctx.config.audit;
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [...pre, cli, 'audit', 'verify', a.dir, '--key', a.keyFile, '--pubkey', publicKeyFileFor(a.signingKeyFile), '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const at = () => new Date().toISOString();
    p.on('error', (e) => resolve({ ok: false, at: at(), problems: 0, lastCheckpointSeq: null, uncovered: 0, error: e.message }));
    p.on('exit', (code) => {
      try {
        const r = JSON.parse(out) as VerifyReport;
        resolve({ ok: r.integrity.ok, at: at(), problems: r.integrity.problemCount, lastCheckpointSeq: r.lastCheckpointSeq, uncovered: r.completeness.unverifiedTail?.count ?? 0 });
      } catch {
        resolve({ ok: false, at: at(), problems: 0, lastCheckpointSeq: null, uncovered: 0, error: err.trim().split('\n').at(-1) ?? `exit ${code}` });
      }
    });
  });
}

export async function startMonitoring(ctx: AdminContext, handlers: Record<string, RpcHandler>, o: MonitoringOptions): Promise<Monitoring> {
  const { kernel, supervisor, runner } = ctx;
  const registers = ctx.metrics ? [ctx.metrics.registry] : [];
  const violations = new Counter({ name: 'captrap_violations_total', help: 'Violations seen by the monitor, by type', labelNames: ['type'], registers });
  const alerts = new Counter({ name: 'captrap_violation_alerts_total', help: 'Alerts raised by the monitor, by violation type and severity', labelNames: ['type', 'severity'], registers });
  let monitorRef: ViolationMonitor | undefined;
  new Gauge({ name: 'captrap_quarantined_principals', help: 'Principals quarantined now', registers, collect() { this.set(monitorRef?.quarantined().length ?? 0); } });

  const monitor = new ViolationMonitor(o.config, {
    audit: (e) => ctx.audit.record(e),
    // The monitor is fed from inside the kernel's own audit call (the denial being recorded):
    // revoking and killing wait for that call to finish. The refusal itself is immediate.
    quarantine: (principal, alert) => {
      setImmediate(() => {
        try {
          kernel.revokeAllForPrincipal(principal, `quarantined by the monitor (${alert.type}, alert ${alert.id})`);
        } catch (err) {
          o.notice(`monitor: revoking what ${principal} holds failed: ${(err as Error).message}`);
        }
        for (const a of supervisor.list()) if (a.state === 'running' && (a.id === principal || a.id.startsWith(`${principal}/`))) supervisor.kill(a.id, 'killed');
        runner.killRevoked();
      });
    },
    onAlert: (a) => alerts.inc({ type: a.type, severity: a.severity }),
    onViolation: (v) => violations.inc({ type: v.type }),
    notice: o.notice,
  });
  monitorRef = monitor;

  let lastSeq = 0;
  let verify: ChainStatus['verify'] = null;
  let verifying: Promise<void> | undefined;
  const runVerify = () => {
    verifying ??= verifyInChild(ctx).then((v) => {
      verify = v;
      verifying = undefined;
    });
    return verifying;
  };

  let dashboard: Dashboard | undefined;
  let dashboardUrl: string | undefined;
  let verifyTimer: NodeJS.Timeout | undefined;
  if (o.dashboard) {
    const token = loadOrCreateSecretFile(join(ctx.config.stateDir, 'dashboard.token')).secret.toString('base64url');
    const call = async (method: string, params: unknown = {}) => {
      const h = handlers[method];
      if (!h) throw new Error(`no admin method ${method}`);
      return (await h(params, method)) as Record<string, unknown>;
    };
    dashboard = await Dashboard.start({
      listen: o.dashboard.listen,
      token,
      actions: o.dashboard.actions,
      source: {
        state: async () => {
          const [agents, caps, stats] = await Promise.all([call('agents.list'), call('capabilities.list'), call('stats')]);
          const audit = (stats['audit'] ?? null) as { available?: boolean; eventsLogged?: number } | null;
          const chain: ChainStatus = { seq: lastSeq, available: audit?.available, eventsLogged: audit?.eventsLogged, verify };
          return { agents: agents['agents'], capabilities: withoutTokens(caps['capabilities']), stats, alerts: monitor.alerts(), quarantined: monitor.quarantined(), monitor: monitor.stats(), chain };
        },
        act: async (action, target) => {
          if (action === 'revoke') return call('capabilities.revoke', { id: target });
          if (action === 'kill') return call('agents.kill', { id: target });
          return { released: monitor.release(target, 'dashboard') };
        },
      },
    });
    dashboardUrl = `${dashboard.url}?token=${token}`;
    void runVerify();
    if (o.dashboard.verifyIntervalMs > 0) {
      verifyTimer = setInterval(() => void runVerify(), o.dashboard.verifyIntervalMs);
      verifyTimer.unref();
    }
  }

  return {
    monitor,
    dashboard,
    dashboardUrl,
    feed(seq, event) {
      lastSeq = seq;
      monitor.observe(event);
      dashboard?.feed(seq, event);
    },
    async stop() {
      if (verifyTimer) clearInterval(verifyTimer);
      monitor.close();
      await dashboard?.close();
      await verifying;
    },
  };
}
