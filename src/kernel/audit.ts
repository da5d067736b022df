// The tamper-evident audit log: an AuditSink that chains every event with an HMAC under a
// dedicated audit key, signs periodic checkpoints with Ed25519, and writes JSON lines to
// rotating segment files. Encoding and MAC happen synchronously in record(), so the chain
// order is exactly the call order and seq is gapless no matter how many async producers call
// it; only the file I/O is asynchronous (buffer + periodic flush).
import type { KeyObject } from 'node:crypto';
import { createPublicKey, createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { closeSync, statSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, fstatSync, ftruncateSync, fsyncSync, unlinkSync, writeFileSync } from 'node:fs';
import { open as openFile, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { log as oplog } from '../log.js';
import {
  AuditError,
  AuditMac,
  CHECKPOINT_FILE,
  CHECKPOINT_PREFIX,
  HEADER_PREFIX,
  ChunkPool,
  IsoClock,
  LineBuffer,
  MAC_SUFFIX_LEN,
  MAX_RECORD_BYTES,
  RECORD_PREFIX,
  SEGMENT_FILE_RE,
  ZERO_MAC,
  auditKeyId,
  checkCheckpointLine,
  encodeCheckpoint,
  encodeHeaderBody,
  encodeRecordBody,
  publicKeyId,
  segmentFileName,
  type CheckpointReason,
  type SegmentHeader,
} from './audit-record.js';
import type { AuditEvent, AuditSink, AuditStats } from './events.js';
import { loadOrCreateEd25519KeyPair, loadOrCreateSecretFile } from './keys.js';

export * from './audit-record.js';
export { verifyAuditLog, readAuditRecords, type ReadAuditOptions, type VerifyReport, type VerifyOptions, type VerifyMode, type VerifyProblem, type ProblemKind } from './audit-verify.js';

export const AUDIT_KEY_FILE = 'audit.key';
export const AUDIT_SIGNING_KEY_FILE = 'audit-signing.key';
export const AUDIT_PUBLIC_KEY_FILE = 'audit-signing.pub';
const LOCK_FILE = 'audit.lock';

export type FsyncPolicy = 'flush' | 'close' | 'never';

export interface AuditLogOptions {
  /** Directory holding the segments and the checkpoint file (created 0700 if missing). */
  dir: string;
  /** Where the key files live; defaults to `dir`. Keep them elsewhere in production (see README). */
  keyDir?: string;
  /** The HMAC audit key, or the file holding it (created 0600 when missing). */
  key?: Buffer;
  keyFile?: string;
  /** The Ed25519 checkpoint signing key, or its files (created when missing). */
  signingKey?: KeyObject;
  signingKeyFile?: string;
  publicKeyFile?: string;
  /** Flush the buffer this often (ms). Default 100. */
  flushIntervalMs?: number;
  /** Flush as soon as this many events are buffered. Default 1000. */
  flushEvents?: number;
  /** When to fsync: after every flush (default), only on close, or never. */
  fsync?: FsyncPolicy;
  /** Write a signed checkpoint every N records (default 1000) ... */
  checkpointEvery?: number;
  /** ... or every T ms when records arrived since the last one (default 60 000). */
  checkpointIntervalMs?: number;
  /** Start a new segment when the current one would exceed this many bytes (default 64 MiB; 0 = never). */
  maxSegmentBytes?: number;
  /** Start a new segment when the current one is older than this (ms; default 0 = never). */
  maxSegmentAgeMs?: number;
  /** Keep at most this many segments; older ones are deleted after a logged `audit_rotated` retention event (0 = keep all). */
  retainSegments?: number;
  /**
   * Called when the log stops writing: at the start of every outage (with the
   * AuditUnavailableError, E_AUDIT_UNAVAILABLE; the log retries) and when a write fails for good
   * (E_AUDIT_WRITE; see `failed` in stats): the segment path was replaced by something else, a
   * segment to create already exists, or a segment shrank under the writer. Then the log stops
   * (fail closed) and every later flush()/close() rejects with that error.
   */
  onError?: (err: Error) => void;
  /** Called (like the 'unavailable' event) when a write or fsync fails and the log starts retrying. */
  onUnavailable?: (err: AuditUnavailableError) => void;
  /** Called (like the 'available' event) when the log writes again, after its `audit_resumed` record is on disk. */
  onAvailable?: (info: AuditOutageReport) => void;
  /**
   * At most this many records wait in memory (default 100 000). Beyond it record() drops the
   * event and counts it: stats `droppedRecords`, and an `audit_gap` record with the count
   * (`dropped`) at the place in the chain where the records are missing.
   */
  maxBufferedRecords?: number;
  /** First retry this long after a failed write (ms, default 100), doubling ... */
  retryInitialMs?: number;
  /** ... up to this (ms, default 5000). */
  retryMaxMs?: number;
  /**
   * Fault injection (tests, fault scenarios): called before each open, write, fsync and truncate
   * of a segment or of the checkpoint file. Throw to make the operation fail. From a 'write',
   * return a byte count n smaller than `bytes` to write only the first n bytes and then fail with
   * ENOSPC, as a full disk does.
   */
  ioHook?: (op: AuditIoOp) => void | number;
}

export interface AuditIoOp {
  op: 'open' | 'write' | 'sync' | 'truncate';
  /** Base name: a segment file or `checkpoints.jsonl`. */
  file: string;
  /** For 'write': bytes about to be written. */
  bytes?: number;
}

/** One outage, as the `audit_resumed` record and the 'available' event report it. */
export interface AuditOutageReport {
  /** ISO time the first write failed. */
  since: string;
  /** How long the log could not write (ms). */
  downMs: number;
  /** Failed attempts during the outage (the first write and every retry). */
  failedWrites: number;
  firstError: string;
  lastError: string;
  /** Records accepted into the buffer while unavailable (written now). */
  bufferedRecords: number;
  /** The most records waiting at once during the outage. */
  peakBufferDepth: number;
  /** Records dropped during the outage because the buffer was full (also in `audit_gap` records). */
  droppedRecords: number;
}

export interface AuditUnavailableDetails {
  since?: string | null;
  bufferedRecords?: number;
  droppedRecords?: number;
  failedWrites?: number;
  /** The log gave up for good (E_AUDIT_WRITE): no retry will come. */
  permanent?: boolean;
  /** Set by close(): records that were never written. */
  lostRecords?: number;
}

/**
 * The audit log cannot write: what the sidecar throws instead of running a tool unaudited
 * (`log.assertAvailable()`), and what flush() rejects with during an outage. Names the
 * directory and the last write error.
 */
export class AuditUnavailableError extends AuditError {
  readonly dir: string;
  readonly lastError: string;
  constructor(dir: string, lastError: string, details: AuditUnavailableDetails = {}, options?: { cause?: unknown; message?: string }) {
    const since = details.since ? ` since ${details.since}` : '';
    const counts = `${details.bufferedRecords ?? 0} record(s) buffered, ${details.droppedRecords ?? 0} dropped`;
    const message =
      options?.message ??
      `audit log ${dir} is unavailable${since}: ${lastError}; ${counts}; ${details.permanent ? 'the log has stopped for good' : 'retrying'}`;
    super('E_AUDIT_UNAVAILABLE', message, { dir, lastError, ...details }, options?.cause === undefined ? undefined : { cause: options.cause });
    this.dir = dir;
    this.lastError = lastError;
  }
}

export interface AuditLogStats extends AuditStats {
  seq: number;
  segment: number;
  checkpoints: number;
  /** record() calls after close(): never written. */
  droppedAfterClose: number;
  /** record() calls after a write failed: never written. */
  droppedAfterFailure: number;
  failed: string | null;
  /** Milliseconds since this log was opened (monotonic clock). */
  uptimeMs: number;
  /** Writes go through; false during an outage (retrying), after a permanent failure, and after close. */
  available: boolean;
  /** ISO time the current outage began, or null. */
  unavailableSince: string | null;
  /** Records dropped because the buffer held maxBufferedRecords (cumulative; each also counted in an `audit_gap` record). */
  droppedRecords: number;
  /** Failed write attempts (cumulative). */
  failedWrites: number;
  /** Message of the last write failure, or null. */
  lastError: string | null;
  /** Outages that ended with an `audit_resumed` record. */
  outages: number;
}

interface Group {
  segment: number;
  /** The segment starts here: its file must not exist yet (never overwrite a segment). Cleared once this writer created it. */
  create: boolean;
  out: LineBuffer;
  /** Bytes taken out of `out` and not yet durably written: kept across failed attempts and rewritten whole. */
  pending: Buffer[];
  /** Pool chunks behind `pending`, released once written. */
  chunks: Buffer[];
  /** The first `owned` entries of `pending` are exact-size copies (compacted), not pool chunk views. */
  owned: number;
  events: number;
  checkpoints: string[];
  deletes: string[];
  /** Stages already done (a retry resumes after them). */
  segmentDone: boolean;
  checkpointsDone: boolean;
}

interface Outage {
  sinceMs: number;
  since: string;
  failedWrites: number;
  firstError: string;
  lastError: string;
  buffered: number;
  peak: number;
  dropped: number;
  /** The `audit_resumed` record is queued: the outage ends when it is on disk. */
  report: AuditOutageReport | null;
}

interface Gap {
  dropped: number;
  firstAt: string;
  lastAt: string;
  byType: Record<string, number>;
}

/**
 * Errors a retry cannot cure: something else now sits where the log writes (a directory, a
 * segment this writer did not create), or a name the log built is invalid. The log then stops
 * for good (fail closed) rather than retrying forever. Everything else (ENOSPC, EDQUOT, EIO,
 * EROFS, EACCES, ...) is an outage: buffer, retry, resume.
 */
const PERMANENT_WRITE_ERRORS = new Set(['EISDIR', 'ENOTDIR', 'EEXIST', 'ELOOP', 'ENAMETOOLONG', 'EINVAL', 'EBADF', 'EFBIG']);
/** At most this many distinct event types are counted apart in an `audit_gap` record. */
const GAP_TYPES_MAX = 64;

class PermanentWriteError extends Error {}

interface TailState {
  seq: number;
  head: string;
  segment: number;
  segmentBytes: number;
  segmentOpenedAt: number;
  lastCheckpointSeq: number;
  lastCheckpointLine: string | null;
  recovered: Record<string, unknown>[];
}

const TAIL_WINDOW = 4 * MAX_RECORD_BYTES;

export class AuditLog implements AuditSink {
  readonly dir: string;
  readonly publicKey: KeyObject;
  private readonly mac: AuditMac;
  private readonly keyId: string;
  private readonly signingKey: KeyObject;
  private readonly pk: string;
  private readonly clock = new IsoClock();
  private readonly pool = new ChunkPool();
  private readonly opts: Required<
    Pick<
      AuditLogOptions,
      | 'flushIntervalMs'
      | 'flushEvents'
      | 'fsync'
      | 'checkpointEvery'
      | 'checkpointIntervalMs'
      | 'maxSegmentBytes'
      | 'maxSegmentAgeMs'
      | 'retainSegments'
      | 'maxBufferedRecords'
      | 'retryInitialMs'
      | 'retryMaxMs'
    >
  >;
  private readonly onError: ((err: Error) => void) | undefined;
  private readonly onUnavailable: ((err: AuditUnavailableError) => void) | undefined;
  private readonly onAvailable: ((info: AuditOutageReport) => void) | undefined;
  private readonly ioHook: ((op: AuditIoOp) => void | number) | undefined;
  private readonly emitter = new EventEmitter();

  private seq = 0;
  private head = ZERO_MAC;
  private segment = 0;
  private segmentBytes = 0;
  private segmentOpenedAt = Date.now();
  private segments: number[] = [];
  private sinceCheckpoint = 0;
  private lastCheckpointSeq = 0;
  private lastCheckpointAt = Date.now();
  private queue: Group[] = [];
  private pendingEvents = 0;
  private flushChain: Promise<void> = Promise.resolve();
  private flushSoon = false;
  /** The flush not started yet that new flush() callers join (see flush). */
  private nextFlush: Promise<void> | null = null;
  private readonly taps = new Set<(seq: number, event: AuditEvent, mac: string) => void>();
  private timer: NodeJS.Timeout | undefined;
  private fh: FileHandle | undefined;
  private fhSegment = 0;
  private closing: Promise<void> | undefined;
  private closed = false;
  private failure: Error | undefined;
  private lockHeld = false;

  private eventsLogged = 0;
  private eventsFlushed = 0;
  private bytesWritten = 0;
  private checkpoints = 0;
  private lastFlushAt: string | null = null;
  private droppedAfterClose = 0;
  private droppedAfterFailure = 0;
  private readonly openedAtMs = performance.now();

  // Availability: an outage is a run of failed writes; the buffer holds what could not be written.
  private outage: Outage | null = null;
  private unavailableSince: string | null = null;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelay = 0;
  private gap: Gap | null = null;
  private droppedRecords = 0;
  private failedWrites = 0;
  private lastError: string | null = null;
  private outages = 0;
  // What is durably on disk of the segment being written: a failed batch is cut back to here.
  private diskSegment = 0;
  private diskOffset = 0;
  /** Segment that may hold a partial batch past diskOffset (0: none). */
  private dirtySegment = 0;
  /** The checkpoint file must be cut back to this length before the next append. */
  private cpTruncateTo: number | undefined;
  /** close() queued `audit_closed` and nothing has been appended after it. */
  private closeRecorded = false;

  private constructor(dir: string, key: Buffer, signingKey: KeyObject, opts: AuditLogOptions) {
    this.dir = dir;
    this.mac = new AuditMac(key);
    this.keyId = auditKeyId(key);
    this.signingKey = signingKey;
    this.publicKey = createPublicKey(signingKey);
    this.pk = publicKeyId(this.publicKey);
    this.onError = opts.onError;
    this.onUnavailable = opts.onUnavailable;
    this.onAvailable = opts.onAvailable;
    this.ioHook = opts.ioHook;
    this.opts = {
      flushIntervalMs: opts.flushIntervalMs ?? 100,
      flushEvents: opts.flushEvents ?? 1000,
      fsync: opts.fsync ?? 'flush',
      checkpointEvery: opts.checkpointEvery ?? 1000,
      checkpointIntervalMs: opts.checkpointIntervalMs ?? 60_000,
      maxSegmentBytes: opts.maxSegmentBytes ?? 64 * 1024 * 1024,
      maxSegmentAgeMs: opts.maxSegmentAgeMs ?? 0,
      retainSegments: opts.retainSegments ?? 0,
      maxBufferedRecords: Math.max(1, opts.maxBufferedRecords ?? 100_000),
      retryInitialMs: Math.max(1, opts.retryInitialMs ?? 100),
      retryMaxMs: Math.max(1, opts.retryMaxMs ?? 5000),
    };
    this.retryDelay = this.opts.retryInitialMs;
  }

  /**
   * Opens the log in `dir`, continuing an existing chain (after checking its last record)
   * or starting a new one. A torn last line left by a crash is cut off and reported in the
   * `audit_opened` event; a last record that does not verify makes open fail (E_AUDIT_TAMPERED):
   * captrap never starts a second chain silently.
   */
  static async open(options: AuditLogOptions): Promise<AuditLog> {
    const dir = options.dir;
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new AuditError('E_AUDIT_DIR', `cannot create audit directory ${dir}: ${(err as Error).message}`, { dir }, { cause: err });
    }
    const keyDir = options.keyDir ?? dir;
    const key = options.key ?? loadOrCreateSecretFile(options.keyFile ?? join(keyDir, AUDIT_KEY_FILE)).secret;
    const signingKey =
      options.signingKey ??
      loadOrCreateEd25519KeyPair(options.signingKeyFile ?? join(keyDir, AUDIT_SIGNING_KEY_FILE), options.publicKeyFile ?? join(keyDir, AUDIT_PUBLIC_KEY_FILE)).privateKey;
    const logObj = new AuditLog(dir, key, signingKey, options);
    logObj.acquireLock();
    try {
      logObj.resume();
    } catch (err) {
      logObj.releaseLock();
      throw err;
    }
    logObj.timer = setInterval(() => logObj.tick(), Math.max(1, logObj.opts.flushIntervalMs));
    logObj.timer.unref();
    return logObj;
  }

  // ---- availability -------------------------------------------------------------------

  /**
   * True while records reach the disk. False during an outage (a write or fsync failed; the log
   * buffers, retries with backoff and resumes by itself), after a permanent failure, and after
   * close. The sidecar must not run tools while it is false: see assertAvailable().
   */
  get available(): boolean {
    return !this.closed && this.failure === undefined && this.outage === null;
  }

  /** Throws AuditUnavailableError (E_AUDIT_UNAVAILABLE) unless the log is available. */
  assertAvailable(): void {
    if (!this.available) throw this.unavailableError();
  }

  /** The error that says why the log is not available now (for callers that throw it themselves). */
  unavailableError(cause?: unknown): AuditUnavailableError {
    if (this.closed || (this.closing && !this.outage && !this.failure)) {
      return new AuditUnavailableError(this.dir, 'the audit log is closed', { since: this.unavailableSince }, { message: `audit log ${this.dir} is closed` });
    }
    const o = this.outage;
    return new AuditUnavailableError(
      this.dir,
      this.lastError ?? 'unknown error',
      {
        since: this.unavailableSince,
        bufferedRecords: this.pendingEvents,
        droppedRecords: o ? o.dropped : this.droppedRecords,
        failedWrites: o ? o.failedWrites : this.failedWrites,
        permanent: this.failure !== undefined,
      },
      { cause: cause ?? this.failure },
    );
  }

  /** 'unavailable': a write failed and the log is retrying (or stopped for good: `err.details.permanent`). 'available': an outage ended. */
  on(event: 'unavailable', listener: (err: AuditUnavailableError) => void): this;
  on(event: 'available', listener: (info: AuditOutageReport) => void): this;
  on(event: 'unavailable' | 'available', listener: (arg: never) => void): this {
    this.emitter.on(event, listener as (arg: unknown) => void);
    return this;
  }
  once(event: 'unavailable', listener: (err: AuditUnavailableError) => void): this;
  once(event: 'available', listener: (info: AuditOutageReport) => void): this;
  once(event: 'unavailable' | 'available', listener: (arg: never) => void): this {
    this.emitter.once(event, listener as (arg: unknown) => void);
    return this;
  }
  off(event: 'unavailable' | 'available', listener: (arg: never) => void): this {
    this.emitter.off(event, listener as (arg: unknown) => void);
    return this;
  }

  /** Listeners are the sidecar's; one that throws must not break the log (or the other listeners). */
  private notify(event: 'unavailable' | 'available', arg: unknown): void {
    const cb = event === 'unavailable' ? this.onUnavailable : this.onAvailable;
    const all: ((a: unknown) => void)[] = [...(this.emitter.listeners(event) as ((a: unknown) => void)[])];
    if (cb) all.push(cb as (a: unknown) => void);
    for (const l of all) {
      try {
        l(arg);
      } catch (err) {
        oplog.error({ err: (err as Error)?.message, event }, 'audit log: an availability listener threw');
      }
    }
  }

  // ---- the hot path -------------------------------------------------------------------

  record(event: AuditEvent): void {
    if (this.closed || this.closing) {
      this.droppedAfterClose++;
      oplog.warn({ type: event?.type }, 'audit event recorded after close; not written');
      return;
    }
    if (this.failure) {
      // Nothing more reaches the disk; buffering forever would only trade a lost log for an OOM.
      this.droppedAfterFailure++;
      return;
    }
    if (this.pendingEvents >= this.opts.maxBufferedRecords) {
      this.drop(event);
      return;
    }
    if (this.opts.maxSegmentBytes > 0 && this.segmentBytes >= this.opts.maxSegmentBytes) this.rotate('size');
    if (this.gap) this.appendGap();
    this.append(event);
    const o = this.outage;
    if (o) {
      o.buffered++;
      if (this.pendingEvents > o.peak) o.peak = this.pendingEvents;
    }
  }

  /** The buffer is full: count the event, never keep it. The count goes into the next `audit_gap` record. */
  private drop(event: AuditEvent): void {
    this.droppedRecords++;
    if (this.outage) this.outage.dropped++;
    const now = this.clock.now();
    if (!this.gap) {
      this.gap = { dropped: 0, firstAt: now, lastAt: now, byType: {} };
      oplog.error({ dir: this.dir, maxBufferedRecords: this.opts.maxBufferedRecords }, 'audit buffer full: dropping audit events (counted; an audit_gap record will say how many)');
    }
    const g = this.gap;
    g.dropped++;
    g.lastAt = now;
    let type = typeof event?.type === 'string' ? event.type : 'unknown';
    if (!(type in g.byType) && Object.keys(g.byType).length >= GAP_TYPES_MAX) type = 'other';
    g.byType[type] = (g.byType[type] ?? 0) + 1;
  }

  /** Records the drops since the last gap record, at this place in the chain: the gap is explicit, the chain unbroken. */
  private appendGap(): void {
    const g = this.gap;
    if (!g) return;
    this.gap = null;
    this.append({
      type: 'audit_gap',
      details: { reason: 'buffer_full', dropped: g.dropped, firstDroppedAt: g.firstAt, lastDroppedAt: g.lastAt, byType: g.byType, maxBufferedRecords: this.opts.maxBufferedRecords },
    });
  }

  private append(event: AuditEvent): void {
    const seq = this.seq + 1;
    const body = encodeRecordBody(seq, this.clock.now(), event, this.head);
    const g = this.currentGroup();
    // Not `offset`: it restarts at 0 when the line opens a new chunk.
    const before = g.out.appended;
    this.head = this.mac.sealInto(g.out, body);
    this.seq = seq;
    g.events++;
    this.segmentBytes += g.out.appended - before;
    this.eventsLogged++;
    this.pendingEvents++;
    if (++this.sinceCheckpoint >= this.opts.checkpointEvery) this.addCheckpoint('interval');
    // During an outage the retry timer does the writing; flush() would only reject.
    if (this.pendingEvents >= this.opts.flushEvents && !this.flushSoon && this.outage === null) {
      this.flushSoon = true;
      setImmediate(() => {
        this.flushSoon = false;
        this.flush().catch(() => {});
      });
    }
    if (this.taps.size > 0) {
      for (const t of this.taps) {
        try {
          t(seq, event, this.head);
        } catch (err) {
          oplog.error({ err: (err as Error)?.message, type: event.type }, 'audit log: a tap threw');
        }
      }
    }
  }

  /**
   * Calls `fn` with every record's sequence number and event as it is appended to the chain
   * (before it is on disk), in chain order: the sidecar's monitor and dashboard. A record `fn`
   * itself records is appended, and tapped, before `fn` returns. `mac` is the record's chain MAC,
   * unique per record (what a shipped copy is de-duplicated by). Returns the way to stop.
   */
  tap(fn: (seq: number, event: AuditEvent, mac: string) => void): () => void {
    this.taps.add(fn);
    return () => this.taps.delete(fn);
  }

  private currentGroup(): Group {
    const last = this.queue[this.queue.length - 1];
    // A group whose bytes are on disk (a failed attempt stopped at its checkpoint stage) takes nothing more.
    if (last && last.segment === this.segment && !last.segmentDone) return last;
    const g = newGroup(this.segment, false, this.pool);
    this.queue.push(g);
    return g;
  }

  private addCheckpoint(reason: CheckpointReason): void {
    if (this.seq === 0) return;
    const line = encodeCheckpoint(this.signingKey, this.pk, this.seq, this.head, this.clock.now(), this.segment, reason);
    const g = this.currentGroup();
    this.segmentBytes += g.out.appendString(line);
    g.checkpoints.push(line);
    this.sinceCheckpoint = 0;
    this.lastCheckpointSeq = this.seq;
    this.lastCheckpointAt = Date.now();
    this.checkpoints++;
  }

  private startSegment(n: number, create: boolean): void {
    // During an outage the finished segment's bytes may wait long: keep them in an exact-size
    // buffer instead of a mostly empty pool chunk per segment.
    const prev = this.queue[this.queue.length - 1];
    if (this.outage && prev) this.compact(prev);
    const body = encodeHeaderBody(n, this.clock.now(), this.keyId, this.seq, this.head);
    const g = newGroup(n, create, this.pool);
    this.head = this.mac.sealInto(g.out, body);
    this.segment = n;
    this.segments.push(n);
    this.queue.push(g);
    this.segmentBytes = g.out.appended;
    this.segmentOpenedAt = Date.now();
  }

  /** Moves a waiting group's bytes into one exact-size buffer and gives its pool chunks back. Only for groups no write is using. */
  private compact(g: Group): void {
    if (g.segmentDone) return;
    const { views, chunks } = g.out.take();
    const loose = g.pending.slice(g.owned).concat(views); // bytes still in pool chunks; owned ones are not copied again
    if (loose.length > 0) {
      g.pending = g.pending.slice(0, g.owned);
      g.pending.push(Buffer.concat(loose));
      g.owned = g.pending.length;
    }
    this.pool.release(g.chunks.concat(chunks));
    g.chunks = [];
  }

  /** Closes the current segment (with a checkpoint) and starts the next; applies retention. */
  rotate(reason: 'size' | 'age' | 'manual' = 'manual'): void {
    if (this.closed || this.closing || this.failure) return;
    const from = this.segment;
    const lastSeq = this.seq;
    const lastMac = this.head;
    this.addCheckpoint('rotate');
    this.startSegment(from + 1, true);
    this.append({ type: 'audit_rotated', details: { reason, fromSegment: from, toSegment: this.segment, fromLastSeq: lastSeq, fromLastMac: lastMac } });
    const keep = this.opts.retainSegments;
    if (keep > 0 && this.segments.length > keep) {
      const doomed = this.segments.splice(0, this.segments.length - keep);
      // Logged before the files go: the deletion is itself on the record.
      // deletedThrough is cumulative: the newest retention event alone accounts for every segment gone so far.
      this.append({ type: 'audit_rotated', details: { reason: 'retention', deletedSegments: doomed, deletedThrough: doomed[doomed.length - 1], keptFrom: this.segments[0] } });
      this.currentGroup().deletes.push(...doomed.map(segmentFileName));
    }
  }

  private tick(): void {
    if (this.closed || this.closing || this.failure) return;
    if (this.outage) return; // the retry timer writes; rotation and checkpoints wait for the disk
    if (this.gap && this.pendingEvents < this.opts.maxBufferedRecords) this.appendGap();
    const now = Date.now();
    if (this.opts.maxSegmentAgeMs > 0 && now - this.segmentOpenedAt >= this.opts.maxSegmentAgeMs && this.seq > 0) this.rotate('age');
    if (this.seq > this.lastCheckpointSeq && now - this.lastCheckpointAt >= this.opts.checkpointIntervalMs) this.addCheckpoint('interval');
    if (this.queue.length > 0) this.flush().catch(() => {});
  }

  // ---- writing ------------------------------------------------------------------------

  /**
   * Writes everything recorded before this call (and fsyncs per policy). Rejects with
   * AuditUnavailableError (E_AUDIT_UNAVAILABLE) during an outage, including when this flush's
   * own write fails (the log then retries by itself), and with E_AUDIT_WRITE once the log has
   * stopped for good.
   */
  flush(): Promise<void> {
    // Group commit: every caller that arrives while a write is under way shares the next one,
    // which takes the whole queue when it starts. One write + fdatasync per caller would
    // serialise a burst of write-ahead calls behind hundreds of syncs.
    if (this.nextFlush) return this.nextFlush;
    const p = this.chained(async () => {
      // Started: the queue is taken below, synchronously; a later caller needs another write.
      this.nextFlush = null;
      if (this.failure) throw this.failure;
      if (this.outage) throw this.unavailableError();
      await this.attempt();
    });
    this.nextFlush = p;
    return p;
  }

  /** Runs fn after every write before it: one write at a time, in order. */
  private chained(fn: () => Promise<void>): Promise<void> {
    const p = this.flushChain.then(fn);
    this.flushChain = p.catch(() => {});
    return p;
  }

  /**
   * One attempt at writing the queue. After an outage, a successful write is followed by the
   * `audit_resumed` record (and a checkpoint anchoring it); the outage ends once that is on disk.
   */
  private async attempt(): Promise<void> {
    if (this.failure) throw this.failure;
    try {
      await this.writeQueued();
      const o = this.outage;
      if (!o) return;
      if (!o.report) {
        if (this.gap) this.appendGap();
        o.report = {
          since: o.since,
          downMs: Math.round(performance.now() - o.sinceMs),
          failedWrites: o.failedWrites,
          firstError: o.firstError,
          lastError: o.lastError,
          bufferedRecords: o.buffered,
          peakBufferDepth: o.peak,
          droppedRecords: o.dropped,
        };
        this.append({ type: 'audit_resumed', details: { ...o.report } });
        this.addCheckpoint('resume');
      }
      await this.writeQueued();
      this.resumed(o.report);
    } catch (err) {
      throw this.writeFailed(err as Error);
    }
  }

  private resumed(report: AuditOutageReport): void {
    this.outage = null;
    this.unavailableSince = null;
    this.outages++;
    this.clearRetry();
    this.retryDelay = this.opts.retryInitialMs;
    oplog.warn({ dir: this.dir, ...report }, 'audit log writes again; outage recorded in audit_resumed');
    this.notify('available', report);
  }

  /** A write failed: an outage begins (or goes on), or, for a failure no retry can cure, the log stops. Returns the error to reject with. */
  private writeFailed(err: Error): AuditError {
    if (err instanceof AuditError && (err === this.failure || err.code === 'E_AUDIT_UNAVAILABLE')) return err;
    this.failedWrites++;
    this.lastError = err.message;
    const code = (err as NodeJS.ErrnoException).code;
    const wasAvailable = this.outage === null;
    if (err instanceof PermanentWriteError || (code !== undefined && PERMANENT_WRITE_ERRORS.has(code))) {
      const e = new AuditError('E_AUDIT_WRITE', `audit log write failed in ${this.dir}: ${err.message}`, { dir: this.dir }, { cause: err });
      this.failure = e;
      this.unavailableSince ??= new Date().toISOString();
      this.clearRetry();
      oplog.error({ err: err.message, dir: this.dir, buffered: this.pendingEvents }, 'audit log write failed; audit log stopped');
      this.callOnError(e);
      if (wasAvailable) this.notify('unavailable', this.unavailableError(err));
      return e;
    }
    if (wasAvailable) {
      const since = new Date().toISOString();
      this.unavailableSince = since;
      this.outage = { sinceMs: performance.now(), since, failedWrites: 1, firstError: err.message, lastError: err.message, buffered: 0, peak: this.pendingEvents, dropped: 0, report: null };
      // Not writable now; written with the rest of the buffer when the disk takes writes again,
      // at the place in the chain where the outage began.
      this.append({ type: 'audit_unavailable', details: { error: err.message, ...(code ? { code } : {}), since, bufferedRecords: this.pendingEvents } });
      // A failure of close()'s final write: audit_closed must stay the last record, so close()
      // records it again after the outage (audit_closed, audit_unavailable, audit_resumed, audit_closed).
      this.closeRecorded = false;
    } else {
      const o = this.outage!;
      o.failedWrites++;
      o.lastError = err.message;
    }
    const e = this.unavailableError(err);
    if (wasAvailable) {
      oplog.error({ err: err.message, dir: this.dir, buffered: this.pendingEvents }, 'audit log unavailable: write failed; buffering and retrying');
      this.callOnError(e);
      this.notify('unavailable', e);
    }
    this.scheduleRetry();
    return e;
  }

  private callOnError(e: Error): void {
    try {
      this.onError?.(e);
    } catch (err) {
      oplog.error({ err: (err as Error)?.message }, 'audit log: onError threw');
    }
  }

  private scheduleRetry(): void {
    if (this.retryTimer || this.closing || this.closed || this.failure) return;
    const delay = this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, this.opts.retryMaxMs);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.closing || this.closed || this.failure || !this.outage) return;
      this.chained(() => this.attempt()).catch(() => {});
    }, delay);
    this.retryTimer.unref();
  }

  private clearRetry(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
  }

  /** Writes the queued groups in order; on failure the unwritten ones go back to the front of the queue, bytes kept. */
  private async writeQueued(): Promise<void> {
    if (this.queue.length === 0) return;
    const groups = this.queue;
    this.queue = [];
    let i = 0;
    try {
      for (; i < groups.length; i++) await this.writeGroup(groups[i]!);
    } catch (err) {
      const back = groups.slice(i);
      for (const g of back) this.compact(g);
      this.queue = back.concat(this.queue);
      throw err;
    }
    this.lastFlushAt = new Date().toISOString();
  }

  /**
   * A group's segment bytes are written whole or not at all: before writing, the segment is cut
   * back to the last offset known to be durable if an earlier attempt may have left part of a
   * batch there (a short write on a full disk, or a failed fsync whose pages may be gone), and a
   * failed attempt cuts it back at once. The chain on disk therefore only ever ends with complete lines.
   */
  private async writeGroup(g: Group): Promise<void> {
    if (!g.segmentDone) {
      const file = segmentFileName(g.segment);
      let fh: FileHandle | undefined;
      try {
        fh = await this.handleFor(g);
        const { views, chunks } = g.out.take();
        for (const v of views) g.pending.push(v);
        for (const c of chunks) g.chunks.push(c);
        let bytes = 0;
        this.dirtySegment = g.segment;
        for (const buf of g.pending) {
          // At an explicit offset: a segment this writer created is not O_APPEND, so after a cut-back
          // the file position would still point past the end and leave a hole.
          await this.writeAll(fh, buf, file, this.diskOffset + bytes);
          bytes += buf.length;
        }
        if (this.opts.fsync === 'flush') {
          this.hook('sync', file);
          await fh.datasync();
        }
        this.dirtySegment = 0;
        this.diskOffset += bytes;
        this.bytesWritten += bytes;
        this.pool.release(g.chunks);
        g.pending = [];
        g.chunks = [];
        g.owned = 0;
        g.segmentDone = true;
      } catch (err) {
        if (fh && this.dirtySegment === g.segment) {
          try {
            this.hook('truncate', file);
            await fh.truncate(this.diskOffset);
            this.dirtySegment = 0;
          } catch {
            /* cut back before the next write instead */
          }
        }
        throw err;
      }
    }
    if (!g.checkpointsDone) {
      if (g.checkpoints.length > 0) await this.appendCheckpoints(g.checkpoints);
      g.checkpointsDone = true;
    }
    for (const name of g.deletes) {
      await unlink(join(this.dir, name)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
    this.eventsFlushed += g.events;
    this.pendingEvents -= g.events;
  }

  private async handleFor(g: Group): Promise<FileHandle> {
    const segment = g.segment;
    const file = segmentFileName(segment);
    if (!this.fh || this.fhSegment !== segment) {
      if (this.fh) {
        if (this.opts.fsync !== 'never') {
          this.hook('sync', segmentFileName(this.fhSegment));
          await this.fh.sync();
        }
        const old = this.fh;
        this.fh = undefined;
        await old.close();
      }
      this.hook('open', file);
      this.fh = await openFile(join(this.dir, file), g.create ? 'wx' : 'a', 0o600);
      this.fhSegment = segment;
      if (g.create) {
        g.create = false; // ours now: a retry appends to it
        this.diskSegment = segment;
        this.diskOffset = 0;
      } else if (this.diskSegment !== segment) {
        this.diskSegment = segment;
        this.diskOffset = (await this.fh.stat()).size;
      }
    }
    if (this.dirtySegment === segment) {
      // An earlier attempt may have left part of a batch: back to the last durable offset.
      const size = (await this.fh.stat()).size;
      if (size < this.diskOffset) {
        throw new PermanentWriteError(`${file} shrank under the writer (${size} bytes, ${this.diskOffset} written)`);
      }
      if (size > this.diskOffset) {
        this.hook('truncate', file);
        await this.fh.truncate(this.diskOffset);
      }
      this.dirtySegment = 0;
    }
    return this.fh;
  }

  private async appendCheckpoints(lines: string[]): Promise<void> {
    this.hook('open', CHECKPOINT_FILE);
    const fh = await openFile(join(this.dir, CHECKPOINT_FILE), 'a', 0o644);
    try {
      let size = (await fh.stat()).size;
      if (this.cpTruncateTo !== undefined) {
        if (size > this.cpTruncateTo) {
          this.hook('truncate', CHECKPOINT_FILE);
          await fh.truncate(this.cpTruncateTo);
          size = this.cpTruncateTo;
        }
        this.cpTruncateTo = undefined;
      }
      try {
        await this.writeAll(fh, Buffer.from(lines.join('')), CHECKPOINT_FILE, null);
        if (this.opts.fsync === 'flush') {
          this.hook('sync', CHECKPOINT_FILE);
          await fh.datasync();
        }
      } catch (err) {
        // Whole lines or nothing here too: a torn checkpoint line would read as a forged one.
        this.cpTruncateTo = size;
        try {
          this.hook('truncate', CHECKPOINT_FILE);
          await fh.truncate(size);
          this.cpTruncateTo = undefined;
        } catch {
          /* cut back before the next append */
        }
        throw err;
      }
    } finally {
      await fh.close().catch(() => {});
    }
  }

  private hook(op: AuditIoOp['op'], file: string): void {
    this.ioHook?.({ op, file });
  }

  /** Writes all of buf at `position` (null: at the end of an O_APPEND file). */
  private async writeAll(fh: FileHandle, buf: Buffer, file: string, position: number | null): Promise<void> {
    let off = 0;
    const at = () => (position === null ? null : position + off);
    while (off < buf.length) {
      const len = buf.length - off;
      const allow = this.ioHook?.({ op: 'write', file, bytes: len });
      if (typeof allow === 'number' && allow < len) {
        // Injected short write: what a full disk does (part of the buffer lands, then ENOSPC).
        const stop = off + Math.max(0, allow);
        while (off < stop) {
          const { bytesWritten } = await fh.write(buf, off, stop - off, at());
          off += bytesWritten;
        }
        throw Object.assign(new Error(`ENOSPC: no space left on device, write (injected after ${allow} bytes)`), { code: 'ENOSPC', errno: -28, syscall: 'write' });
      }
      const { bytesWritten } = await fh.write(buf, off, len, at());
      off += bytesWritten;
    }
  }

  /**
   * Records `audit_closed`, writes a final checkpoint, flushes and closes. Idempotent. During an
   * outage it tries once more to write the buffer (and, if that works, the `audit_resumed` and
   * `audit_closed` records); if the disk still refuses, it closes anyway and rejects with
   * AuditUnavailableError saying how many records were never written (details.lostRecords,
   * details.droppedRecords). Rejects with E_AUDIT_WRITE after a permanent failure.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    if (this.timer) clearInterval(this.timer);
    this.clearRetry();
    const startedInOutage = this.outage !== null;
    if (!this.failure && !this.outage) this.queueClosed();
    this.closing = (async () => {
      try {
        await this.flushChain; // a write in flight (a retry, a flush) ends first
        // During an outage: one more try. Available: the final write, and one more try if it fails.
        const maxFailures = startedInOutage ? 1 : 2;
        let failures = 0;
        for (;;) {
          if (this.failure) throw this.failure;
          if (!this.outage && !this.closeRecorded) this.queueClosed();
          let ok = true;
          await this.chained(() => this.attempt()).catch(() => {
            ok = false;
          });
          if (this.failure) throw this.failure;
          if (ok && !this.outage && this.closeRecorded) break; // everything, audit_closed last, is on disk
          if (ok) continue; // the outage just ended: audit_closed comes after audit_resumed
          if (++failures >= maxFailures) throw this.lostOnClose();
          await new Promise((r) => setTimeout(r, this.opts.retryInitialMs));
        }
      } finally {
        this.clearRetry();
        if (this.fh) {
          if (this.opts.fsync !== 'never' && !this.failure && !this.outage) await this.fh.sync().catch(() => {});
          await this.fh.close().catch(() => {});
          this.fh = undefined;
        }
        this.closed = true;
        this.releaseLock();
      }
    })();
    return this.closing;
  }

  /** `audit_closed` and the final checkpoint (after any pending gap record). */
  private queueClosed(): void {
    if (this.gap) this.appendGap();
    this.append({ type: 'audit_closed', details: { seq: this.seq + 1, eventsLogged: this.eventsLogged + 1, droppedAfterClose: this.droppedAfterClose, droppedRecords: this.droppedRecords } });
    this.addCheckpoint('close');
    this.closeRecorded = true;
  }

  private lostOnClose(): AuditUnavailableError {
    const lost = this.pendingEvents;
    const dropped = this.outage?.dropped ?? 0;
    const last = this.lastError ?? 'unknown error';
    oplog.error({ dir: this.dir, lostRecords: lost, droppedRecords: dropped, err: last }, 'audit log closed while unavailable: buffered records lost');
    return new AuditUnavailableError(
      this.dir,
      last,
      { since: this.unavailableSince, bufferedRecords: lost, droppedRecords: dropped, failedWrites: this.outage?.failedWrites ?? 0, lostRecords: lost },
      {
        message: `audit log ${this.dir} closed while unavailable (since ${this.unavailableSince}; last error: ${last}): ${lost} buffered record(s) were never written and ${dropped} were dropped`,
      },
    );
  }

  stats(): AuditLogStats {
    return {
      eventsLogged: this.eventsLogged,
      eventsFlushed: this.eventsFlushed,
      bytesWritten: this.bytesWritten,
      segments: this.segments.length,
      lastFlushAt: this.lastFlushAt,
      bufferDepth: this.pendingEvents,
      seq: this.seq,
      segment: this.segment,
      checkpoints: this.checkpoints,
      droppedAfterClose: this.droppedAfterClose,
      droppedAfterFailure: this.droppedAfterFailure,
      failed: this.failure ? this.failure.message : null,
      uptimeMs: Math.round(performance.now() - this.openedAtMs),
      available: this.available,
      unavailableSince: this.unavailableSince,
      droppedRecords: this.droppedRecords,
      failedWrites: this.failedWrites,
      lastError: this.lastError,
      outages: this.outages,
    };
  }

  getAuditStats(): AuditLogStats {
    return this.stats();
  }

  // ---- opening an existing log ----------------------------------------------------------

  private resume(): void {
    const nums = listSegments(this.dir);
    const recovered: Record<string, unknown>[] = [];
    let tail: TailState | undefined;
    // Walk back over segments that hold nothing usable (a crash right after creating one).
    while (nums.length > 0) {
      const n = nums[nums.length - 1]!;
      tail = this.readTail(n, recovered);
      if (tail) break;
      unlinkSync(join(this.dir, segmentFileName(n)));
      recovered.push({ segment: n, removedEmptySegment: true });
      nums.pop();
    }
    this.segments = nums.slice();
    if (!tail) {
      // Only a first segment torn before its header was complete may be replaced: if checkpoints
      // exist, a chain existed, and starting another would hide whatever removed it.
      if (recovered.length > 0 && hasCheckpoints(this.dir)) {
        throw new AuditError('E_AUDIT_TAMPERED', `audit log in ${this.dir} has checkpoints but no readable segment; run 'captrap audit verify ${this.dir}'`, { dir: this.dir });
      }
      this.segments = [];
      this.startSegment(1, true);
      this.append({ type: 'audit_opened', details: { created: true, keyId: this.keyId, publicKeyId: this.pk, ...(recovered.length > 0 ? { recovered } : {}) } });
      this.addCheckpoint('open');
      return;
    }
    this.seq = tail.seq;
    this.head = tail.head;
    this.segment = tail.segment;
    this.segmentBytes = tail.segmentBytes;
    this.diskSegment = tail.segment;
    this.diskOffset = tail.segmentBytes;
    this.segmentOpenedAt = tail.segmentOpenedAt;
    this.lastCheckpointSeq = tail.lastCheckpointSeq;
    this.sinceCheckpoint = tail.seq - tail.lastCheckpointSeq;
    const restored = this.repairCheckpointFile();
    if (restored.length > 0) recovered.push({ checkpointsRestored: restored });
    const details: Record<string, unknown> = { continued: true, fromSeq: tail.seq, segment: this.segment, keyId: this.keyId, publicKeyId: this.pk };
    if (recovered.length > 0) details.recovered = recovered;
    this.append({ type: 'audit_opened', details });
    this.addCheckpoint('open');
    if (recovered.length > 0) oplog.warn({ dir: this.dir, recovered }, 'audit log: recovered from a torn write on open');
  }

  /** Reads the end of segment n: cuts a torn last line, checks the last MAC'd line, returns where the chain stands. */
  private readTail(n: number, recovered: Record<string, unknown>[]): TailState | undefined {
    const path = join(this.dir, segmentFileName(n));
    const fd = openSync(path, 'r+');
    try {
      const size = fstatSync(fd).size;
      const start = Math.max(0, size - TAIL_WINDOW);
      const buf = Buffer.alloc(size - start);
      readFully(fd, buf, start);
      const end = buf.lastIndexOf(0x0a) + 1;
      if (end < buf.length) {
        const torn = buf.subarray(end);
        recovered.push({ segment: n, tornBytes: torn.length, tornSha256: createHash('sha256').update(torn).digest('hex'), tornPreview: torn.subarray(0, 200).toString('utf8') });
        ftruncateSync(fd, start + end);
        fsyncSync(fd);
      }
      const text = buf.subarray(0, end).toString('utf8');
      const lines = text.split('\n');
      lines.pop();
      if (start > 0) lines.shift(); // first line of the window may be partial
      const header = this.readHeader(fd, path);
      if (header === 'empty') return undefined;
      let lastCheckpointSeq = 0;
      let lastCheckpointLine: string | null = null;
      for (let i = lines.length - 1; i >= 0; i--) {
        const line = lines[i]!;
        if (line.startsWith(CHECKPOINT_PREFIX)) {
          // Only a checkpoint we signed may be copied into the checkpoint file on repair.
          if (lastCheckpointLine === null) {
            const res = checkCheckpointLine(line, this.publicKey);
            if (res.ok) {
              lastCheckpointSeq = res.cp.seq;
              lastCheckpointLine = line + '\n';
            }
          }
          continue;
        }
        if (!line.startsWith(RECORD_PREFIX) && !line.startsWith(HEADER_PREFIX)) {
          throw tampered(this.dir, n, `an unrecognised line near the end of ${segmentFileName(n)}`);
        }
        const body = line.slice(0, -MAC_SUFFIX_LEN);
        const mac = line.slice(-MAC_SUFFIX_LEN + 8, -2);
        if (this.mac.ofString(body) !== mac) throw tampered(this.dir, n, `the last record of ${segmentFileName(n)} does not verify`);
        const parsed = JSON.parse(line) as { seq?: number; prevSeq?: number };
        const seq = line.startsWith(RECORD_PREFIX) ? parsed.seq! : parsed.prevSeq!;
        return {
          seq,
          head: mac,
          segment: n,
          segmentBytes: start + end,
          segmentOpenedAt: Date.parse(header.ts) || Date.now(),
          lastCheckpointSeq: lastCheckpointSeq || seq,
          lastCheckpointLine,
          recovered,
        };
      }
      throw tampered(this.dir, n, `no record found in the last ${TAIL_WINDOW} bytes of ${segmentFileName(n)}`);
    } finally {
      closeSync(fd);
    }
  }

  private readHeader(fd: number, path: string): SegmentHeader | 'empty' {
    const buf = Buffer.alloc(Math.min(4096, fstatSync(fd).size));
    readFully(fd, buf, 0);
    const nl = buf.indexOf(0x0a);
    if (nl < 0) return 'empty';
    const line = buf.subarray(0, nl).toString('utf8');
    if (!line.startsWith(HEADER_PREFIX)) throw new AuditError('E_AUDIT_NOT_A_LOG', `${path} is not a captrap audit segment (no segment header)`, { path });
    const header = JSON.parse(line) as SegmentHeader;
    if (header.keyId !== this.keyId) {
      throw new AuditError('E_AUDIT_WRONG_KEY', `${path} was written with a different audit key (key id ${header.keyId}, this key ${this.keyId})`, { path });
    }
    if (this.mac.ofString(line.slice(0, -MAC_SUFFIX_LEN)) !== header.mac) throw tampered(this.dir, 0, `the header of ${path} does not verify`);
    return header;
  }

  /**
   * A crash between a flush's segment writes and its checkpoint-file write leaves the file short
   * of every checkpoint that flush wrote, possibly on both sides of a rotation. Re-append, in
   * order, each checkpoint the log holds past the file's last one, if its signature is ours. It
   * can only restore what the log still holds, so it hides no deletion from the log; the seqs
   * restored are reported in `audit_opened`. Returns them.
   */
  private repairCheckpointFile(): number[] {
    const path = join(this.dir, CHECKPOINT_FILE);
    let text = '';
    try {
      text = readFileSync(path, 'utf8');
    } catch {
      text = '';
    }
    const last = text.trimEnd().split('\n').pop() ?? '';
    let lastSeq = 0;
    try {
      lastSeq = last ? (JSON.parse(last) as { seq: number }).seq : 0;
    } catch {
      return []; // a damaged checkpoint file is verify's to report, not ours to paper over
    }
    const missing: { seq: number; line: string }[] = [];
    for (const n of [...this.segments].reverse()) {
      const lines = readFileSync(join(this.dir, segmentFileName(n)), 'utf8').split('\n');
      for (const line of lines) {
        if (!line.startsWith(CHECKPOINT_PREFIX)) continue;
        const res = checkCheckpointLine(line, this.publicKey);
        if (res.ok && res.cp.seq > lastSeq) missing.push({ seq: res.cp.seq, line: line + '\n' });
      }
      // Older segments end at or before this one's prevSeq: nothing there is newer than the file.
      const header = lines[0]?.startsWith(HEADER_PREFIX) ? (JSON.parse(lines[0]) as SegmentHeader) : undefined;
      if (!header || header.prevSeq <= lastSeq) break;
    }
    if (missing.length === 0) return [];
    missing.sort((a, b) => a.seq - b.seq);
    writeFileSync(path, (text && !text.endsWith('\n') ? '\n' : '') + missing.map((m) => m.line).join(''), { flag: 'a', mode: 0o644 });
    return missing.map((m) => m.seq);
  }

  private acquireLock(): void {
    const path = join(this.dir, LOCK_FILE);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        writeFileSync(path, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
        this.lockHeld = true;
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new AuditError('E_AUDIT_DIR', `cannot lock audit directory ${this.dir}: ${(err as Error).message}`, { dir: this.dir }, { cause: err });
        }
        const pid = Number.parseInt(readFileSync(path, 'utf8'), 10);
        if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) {
          throw new AuditError('E_AUDIT_LOCKED', `audit log ${this.dir} is already open by process ${pid}; two writers would fork the chain`, { dir: this.dir, pid });
        }
        unlinkSync(path); // stale lock of a dead writer
      }
    }
    throw new AuditError('E_AUDIT_LOCKED', `cannot lock audit directory ${this.dir}`, { dir: this.dir });
  }

  private releaseLock(): void {
    if (!this.lockHeld) return;
    this.lockHeld = false;
    try {
      unlinkSync(join(this.dir, LOCK_FILE));
    } catch {
      /* already gone */
    }
  }
}

/**
 * Closes `log` when the process receives one of `signals`, then re-raises the signal so the
 * process ends the way it would have. For the sidecar's main(); the library installs nothing
 * by itself. Returns a function that removes the handlers.
 */
export function closeAuditLogOnSignals(log: AuditLog, signals: NodeJS.Signals[] = ['SIGTERM', 'SIGINT']): () => void {
  const handlers = new Map<NodeJS.Signals, () => void>();
  const uninstall = () => {
    for (const [sig, h] of handlers) process.removeListener(sig, h);
    handlers.clear();
  };
  for (const sig of signals) {
    const h = () => {
      uninstall();
      log.close().then(
        () => process.kill(process.pid, sig),
        (err: unknown) => {
          oplog.error({ err: (err as Error).message }, 'audit log close failed on signal');
          process.kill(process.pid, sig);
        },
      );
    };
    handlers.set(sig, h);
    process.on(sig, h);
  }
  return uninstall;
}

/** The counters of any sink that keeps them (the file log does), or null. */
export function getAuditStats(sink: AuditSink): AuditStats | null {
  return sink.stats?.() ?? null;
}

export function listSegments(dir: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync(dir)) {
    const m = SEGMENT_FILE_RE.exec(name);
    if (m) out.push(Number(m[1]));
  }
  return out.sort((a, b) => a - b);
}

function hasCheckpoints(dir: string): boolean {
  try {
    return statSync(join(dir, CHECKPOINT_FILE)).size > 0;
  } catch {
    return false;
  }
}

function tampered(dir: string, segment: number, what: string): AuditError {
  return new AuditError(
    'E_AUDIT_TAMPERED',
    `refusing to continue the audit log in ${dir}: ${what}; run 'captrap audit verify ${dir}' (captrap never starts a second chain silently)`,
    { dir, segment },
  );
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readFully(fd: number, buf: Buffer, position: number): void {
  let off = 0;
  while (off < buf.length) {
    const n = readSync(fd, buf, off, buf.length - off, position + off);
    if (n === 0) break;
    off += n;
  }
}

function newGroup(segment: number, create: boolean, pool: ChunkPool): Group {
  return { segment, create, out: new LineBuffer(pool), pending: [], chunks: [], owned: 0, events: 0, checkpoints: [], deletes: [], segmentDone: false, checkpointsDone: false };
}
