// An audit sink that stamps the gateway's context (server name, MCP method, redacted
// arguments) onto the events the kernel emits while it decides an MCP request. The kernel's
// checks are synchronous, so the context set around one call can belong to no other call.
// Everything still goes to the one hash-chained log the sink wraps.
import type { AuditEvent, AuditSink, AuditStats } from '../kernel/events.js';

export class ContextualAuditSink implements AuditSink {
  private context: Record<string, unknown> | undefined;

  constructor(private readonly inner: AuditSink) {
    this.stats = inner.stats ? () => inner.stats!() : undefined;
  }

  get available(): boolean | undefined {
    return this.inner.available;
  }

  readonly stats: (() => AuditStats) | undefined;

  record(event: AuditEvent): void {
    this.inner.record(this.context ? { ...event, details: { ...this.context, ...(event.details ?? {}) } } : event);
  }

  /** Runs `fn` (synchronous) with `context` added to every event recorded meanwhile. */
  with<T>(context: Record<string, unknown>, fn: () => T): T {
    const outer = this.context;
    this.context = { ...(outer ?? {}), ...context };
    try {
      return fn();
    } finally {
      this.context = outer;
    }
  }
}
