// The violation monitor: fed every audit event, it counts violations per (type, principal) in a
// sliding window and, when a rule's threshold is reached, raises one alert per cooldown and runs
// the rule's actions. It decides nothing about a request itself and never throws into the path
// that fed it: the kernel has already decided, and the monitor only watches and reacts.
//
// Actions:
// - alert: a line on stderr, an audit record `violation_alert` (in the same hash chain), a
//   webhook POST (queued, never awaited), a Prometheus counter, and every subscriber.
// - quarantine: the principal (and its sub-agents, `<principal>/...`) is refused from now on,
//   and the sidecar revokes everything it holds and kills its tree (the `quarantine` hook),
//   until an operator releases it (`captrap release PRINCIPAL`).
import { randomBytes } from 'node:crypto';
import type { AuditEvent } from '../kernel/events.js';
import type { MonitorAction, MonitorConfig, Severity } from './config.js';
import { classify, VIOLATION_TYPES, type Violation, type ViolationType } from './violations.js';
import { WebhookSender, type WebhookStats } from './webhook.js';

export interface Alert {
  id: string;
  type: ViolationType;
  principal: string;
  severity: Severity;
  /** Violations inside the window when the alert was raised. */
  count: number;
  windowMs: number;
  /** ISO times of the first and last violation counted. */
  firstAt: string;
  lastAt: string;
  /** Deny codes / exit reasons seen, most recent last (at most 10). */
  causes: string[];
  /** The audit detail of the violation that crossed the threshold. */
  sample: Record<string, unknown>;
  actions: MonitorAction[];
  at: string;
}

export interface Quarantine {
  principal: string;
  since: string;
  alertId: string;
  type: ViolationType;
}

export interface MonitorHooks {
  /** Writes a monitor record into the audit chain. */
  audit?(event: AuditEvent): void;
  /** Revoke everything `principal` holds and kill its processes (the sidecar's part of a quarantine). */
  quarantine?(principal: string, alert: Alert): void;
  /** Called for each alert (Prometheus counters). */
  onAlert?(alert: Alert): void;
  /** Called for each violation counted. */
  onViolation?(violation: Violation): void;
  /** One line for the operator (default: stderr). */
  notice?(line: string): void;
}

export interface MonitorStats {
  violations: Record<ViolationType, number>;
  alerts: number;
  quarantined: number;
  webhook: WebhookStats | null;
}

/** (type, principal) keys tracked at once; the least recently seen is forgotten beyond this. */
const MAX_KEYS = 10_000;
const RECENT_ALERTS = 200;

export class ViolationMonitor {
  private readonly windows = new Map<string, { at: number[]; causes: string[] }>();
  private readonly cooldownUntil = new Map<string, number>();
  private readonly quarantines = new Map<string, Quarantine>();
  private readonly recent: Alert[] = [];
  private readonly subscribers = new Set<(alert: Alert) => void>();
  private readonly counts = Object.fromEntries(VIOLATION_TYPES.map((t) => [t, 0])) as Record<ViolationType, number>;
  private alertCount = 0;
  private readonly webhook: WebhookSender | undefined;

  constructor(
    readonly config: MonitorConfig,
    private readonly hooks: MonitorHooks = {},
    private readonly now: () => number = Date.now,
  ) {
    this.webhook = config.webhook ? new WebhookSender(config.webhook) : undefined;
  }

  /** Feeds one audit event. Never throws. */
  observe(event: AuditEvent): void {
    if (!this.config.enabled) return;
    try {
      const v = classify(event, this.now());
      if (v) this.count(v);
    } catch (err) {
      this.notice(`monitor: could not process a ${event.type} event: ${(err as Error).message}`);
    }
  }

  /** True while `principal` or one of its ancestors (`a` for `a/b`) is quarantined. */
  isQuarantined(principal: string): boolean {
    return this.quarantineOf(principal) !== undefined;
  }

  quarantineOf(principal: string): Quarantine | undefined {
    if (this.quarantines.size === 0) return undefined;
    for (let p: string | undefined = principal; p; p = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : undefined) {
      const q = this.quarantines.get(p);
      if (q) return q;
    }
    return undefined;
  }

  /** Lifts a quarantine; false if `principal` was not quarantined. Its violation windows and cooldowns restart empty. */
  release(principal: string, by = 'operator'): boolean {
    const q = this.quarantines.get(principal);
    if (!q) return false;
    this.quarantines.delete(principal);
    for (const key of [...this.windows.keys()]) if (key.endsWith(`\u0000${principal}`)) this.windows.delete(key);
    for (const key of [...this.cooldownUntil.keys()]) if (key.endsWith(`\u0000${principal}`)) this.cooldownUntil.delete(key);
    this.hooks.audit?.({ type: 'principal_released', principal, details: { by, quarantinedSince: q.since, alertId: q.alertId } });
    this.notice(`monitor: released ${principal} (quarantined since ${q.since})`);
    return true;
  }

  quarantined(): Quarantine[] {
    return [...this.quarantines.values()];
  }

  /** The most recent alerts, oldest first. */
  alerts(): Alert[] {
    return [...this.recent];
  }

  subscribe(fn: (alert: Alert) => void): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  stats(): MonitorStats {
    return { violations: { ...this.counts }, alerts: this.alertCount, quarantined: this.quarantines.size, webhook: this.webhook ? { ...this.webhook.stats } : null };
  }

  /** Waits for queued webhook deliveries (tests, shutdown). */
  async flush(timeoutMs?: number): Promise<boolean> {
    return this.webhook ? this.webhook.idle(timeoutMs) : true;
  }

  close(): void {
    this.webhook?.close();
    this.subscribers.clear();
  }

  private count(v: Violation): void {
    this.counts[v.type]++;
    this.hooks.onViolation?.(v);
    const rule = this.config.rules[v.type];
    const key = `${v.type}\u0000${v.principal}`;
    let w = this.windows.get(key);
    if (w) {
      this.windows.delete(key); // re-inserted below: the map's order is least recently seen first
    } else {
      w = { at: [], causes: [] };
      if (this.windows.size >= MAX_KEYS) this.windows.delete(this.windows.keys().next().value!);
    }
    this.windows.set(key, w);
    w.at.push(v.at);
    w.causes.push(v.cause);
    while (w.at.length > 0 && w.at[0]! <= v.at - rule.windowMs) {
      w.at.shift();
      w.causes.shift();
    }
    if (w.causes.length > 10) w.causes.splice(0, w.causes.length - 10);
    if (w.at.length < rule.threshold) return;
    // The cooldown spaces alerts out; it never spares a principal its quarantine.
    const quarantines = rule.actions.includes('quarantine') && !this.isQuarantined(v.principal);
    if ((this.cooldownUntil.get(key) ?? 0) > v.at && !quarantines) return;
    if (this.cooldownUntil.size >= MAX_KEYS) for (const [k, until] of this.cooldownUntil) if (until <= v.at) this.cooldownUntil.delete(k);
    this.cooldownUntil.set(key, v.at + rule.cooldownMs);
    this.raise(v, rule.severity, rule.actions, w.at.length, rule.windowMs, w.at[0]!, [...w.causes]);
  }

  private raise(v: Violation, severity: Severity, actions: MonitorAction[], count: number, windowMs: number, first: number, causes: string[]): void {
    const alert: Alert = {
      id: `alert_${randomBytes(8).toString('hex')}`,
      type: v.type,
      principal: v.principal,
      severity,
      count,
      windowMs,
      firstAt: new Date(first).toISOString(),
      lastAt: new Date(v.at).toISOString(),
      causes,
      sample: v.details,
      actions,
      at: new Date(this.now()).toISOString(),
    };
    this.alertCount++;
    this.recent.push(alert);
    if (this.recent.length > RECENT_ALERTS) this.recent.shift();
    // The alert is in the chain before anything acts on it.
    this.hooks.audit?.({ type: 'violation_alert', principal: v.principal, details: { alertId: alert.id, violation: v.type, severity, count, windowMs, causes, actions } });
    if (this.config.stderr) this.notice(`monitor: ${severity} alert ${alert.id}: ${v.principal} ${v.type} x${count} in ${Math.round(windowMs / 1000)} s (${causes.at(-1)})${actions.includes('quarantine') ? '; quarantining' : ''}`);
    this.hooks.onAlert?.(alert);
    this.webhook?.send({ kind: 'captrap.violation_alert', alert });
    for (const fn of this.subscribers) {
      try {
        fn(alert);
      } catch {
        // a subscriber's failure is its own
      }
    }
    if (actions.includes('quarantine')) this.quarantine(v.principal, alert);
  }

  private quarantine(principal: string, alert: Alert): void {
    if (!this.quarantines.has(principal)) {
      this.quarantines.set(principal, { principal, since: alert.at, alertId: alert.id, type: alert.type });
      this.hooks.audit?.({ type: 'principal_quarantined', principal, details: { alertId: alert.id, violation: alert.type } });
    }
    try {
      this.hooks.quarantine?.(principal, alert);
    } catch (err) {
      // The principal stays refused even if revoking or killing failed; say so loudly.
      this.notice(`monitor: quarantine of ${principal} could not revoke or kill everything: ${(err as Error).message}`);
    }
  }

  private notice(line: string): void {
    (this.hooks.notice ?? ((l: string) => process.stderr.write(`captrap: ${l}\n`)))(line);
  }
}
