// The audit event interface. The kernel (and later the runner) emits these; the
// hash-chained log in audit.ts is one implementation of AuditSink, the in-memory sink
// below another (for tests and for embedding without a log).

export const AUDIT_EVENT_TYPES = [
  'capability_requested',
  'capability_granted',
  'capability_denied',
  'capability_delegated',
  'capability_revoked',
  'capability_validated',
  'access_denied',
  // The end of a rate-limiting episode on an agent channel, with the number of requests refused
  // (its start is one access_denied with code E_RATE_LIMITED): one pair per episode, not one per request.
  'rate_limited',
  'principal_cleanup',
  'sandbox_started',
  'sandbox_exited',
  'sandbox_escape',
  'egress',
  'audit_rotated',
  'audit_opened',
  'audit_closed',
  // The log's own availability (see AuditLog): the moment writes started failing (written once
  // the disk takes writes again, at its place in the chain), records the log had to drop because
  // its bounded buffer was full (the count, never the records), and the recovery.
  'audit_unavailable',
  'audit_gap',
  'audit_resumed',
  // The violation monitor (src/monitor): an alert it raised, and a principal it quarantined or
  // an operator released.
  'violation_alert',
  'principal_quarantined',
  'principal_released',
  // ct2 block revocation ids added to the sidecar's revocation set: by this host (origin local)
  // or learned from another host through the shared set (origin remote).
  'token_revoked',
] as const;

export type AuditEventType = (typeof AUDIT_EVENT_TYPES)[number];

/** A real process: pid plus field 22 of /proc/<pid>/stat (start time in clock ticks since boot). */
export interface AuditProcessRef {
  pid: number;
  startTime: number;
}

export interface AuditEvent {
  type: AuditEventType;
  principal?: string;
  capabilityId?: string;
  process?: AuditProcessRef;
  /** JSON-serialisable detail: reason codes, tool names, arguments judged, exit reasons. */
  details?: Record<string, unknown>;
}

/**
 * Where audit events go. `record` must not block and must not throw for a well-formed
 * event: the kernel calls it on the hot path. Durability is the sink's business
 * (buffer + flush + fsync in the file log).
 */
export interface AuditSink {
  record(event: AuditEvent): void;
  /**
   * False while the sink cannot write what it is given (the file log after a write failure,
   * until a retry succeeds). Sinks without the notion leave it undefined: always available.
   */
  readonly available?: boolean;
  /** Counters of a sink that keeps them (the file log does); `kernel.stats()` includes them as `audit`. */
  stats?(): AuditStats;
}

/** What the file log reports about itself (issue: tamper-evident audit log). */
export interface AuditStats {
  eventsLogged: number;
  eventsFlushed: number;
  bytesWritten: number;
  segments: number;
  /** ISO time of the last completed flush, or null before the first. */
  lastFlushAt: string | null;
  /** Events recorded but not yet written. */
  bufferDepth: number;
  /** Milliseconds since the sink was opened, for sinks that know. */
  uptimeMs?: number;
  /** The sink writes what it is given (false while a write failure is being retried, or for good). */
  available?: boolean;
  /** ISO time the current outage began, or null while available. */
  unavailableSince?: string | null;
  /** Records never written because the buffer was full (each count is also in an `audit_gap` record). */
  droppedRecords?: number;
  /** Write attempts that failed since the sink was opened. */
  failedWrites?: number;
  /** Message of the last write failure, or null. */
  lastError?: string | null;
}

export const nullAuditSink: AuditSink = { record() {} };

export class MemoryAuditSink implements AuditSink {
  readonly events: AuditEvent[] = [];
  record(event: AuditEvent): void {
    this.events.push(event);
  }
  ofType(type: AuditEventType): AuditEvent[] {
    return this.events.filter((e) => e.type === type);
  }
}
