// The tamper-evident audit log: an AuditSink that chains every event with an HMAC under a
// dedicated audit key, signs periodic checkpoints with Ed25519, and writes JSON lines to
// rotating segment files. Encoding and MAC happen synchronously in record(), so the chain
// order is exactly the call order and seq is gapless no matter how many async producers call
// it; only the file I/O is asynchronous (buffer + periodic flush).
import type { KeyObject } from 'node:crypto';
import { createPublicKey, createHash } from 'node:crypto';
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
  /** Called when a write fails; the log stops writing (fail closed) and every later flush() rejects. */
  onError?: (err: Error) => void;
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
}

interface Group {
  segment: number;
  /** The segment starts here: its file must not exist yet (never overwrite a segment). */
  create: boolean;
  out: LineBuffer;
  events: number;
  checkpoints: string[];
  deletes: string[];
}

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
  private readonly opts: Required<Pick<AuditLogOptions, 'flushIntervalMs' | 'flushEvents' | 'fsync' | 'checkpointEvery' | 'checkpointIntervalMs' | 'maxSegmentBytes' | 'maxSegmentAgeMs' | 'retainSegments'>>;
  private readonly onError: ((err: Error) => void) | undefined;

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

  private constructor(dir: string, key: Buffer, signingKey: KeyObject, opts: AuditLogOptions) {
    this.dir = dir;
    this.mac = new AuditMac(key);
    this.keyId = auditKeyId(key);
    this.signingKey = signingKey;
    this.publicKey = createPublicKey(signingKey);
    this.pk = publicKeyId(this.publicKey);
    this.onError = opts.onError;
    this.opts = {
      flushIntervalMs: opts.flushIntervalMs ?? 100,
      flushEvents: opts.flushEvents ?? 1000,
      fsync: opts.fsync ?? 'flush',
      checkpointEvery: opts.checkpointEvery ?? 1000,
      checkpointIntervalMs: opts.checkpointIntervalMs ?? 60_000,
      maxSegmentBytes: opts.maxSegmentBytes ?? 64 * 1024 * 1024,
      maxSegmentAgeMs: opts.maxSegmentAgeMs ?? 0,
      retainSegments: opts.retainSegments ?? 0,
    };
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
    if (this.opts.maxSegmentBytes > 0 && this.segmentBytes >= this.opts.maxSegmentBytes) this.rotate('size');
    this.append(event);
  }

  private append(event: AuditEvent): void {
    const seq = this.seq + 1;
    const body = encodeRecordBody(seq, this.clock.now(), event, this.head);
    const g = this.currentGroup();
    const before = g.out.offset;
    this.head = this.mac.sealInto(g.out, body);
    this.seq = seq;
    g.events++;
    this.segmentBytes += g.out.offset - before;
    this.eventsLogged++;
    this.pendingEvents++;
    if (++this.sinceCheckpoint >= this.opts.checkpointEvery) this.addCheckpoint('interval');
    if (this.pendingEvents >= this.opts.flushEvents && !this.flushSoon) {
      this.flushSoon = true;
      setImmediate(() => {
        this.flushSoon = false;
        this.flush().catch(() => {});
      });
    }
  }

  private currentGroup(): Group {
    const last = this.queue[this.queue.length - 1];
    if (last && last.segment === this.segment) return last;
    const g: Group = { segment: this.segment, create: false, out: new LineBuffer(this.pool), events: 0, checkpoints: [], deletes: [] };
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
    const body = encodeHeaderBody(n, this.clock.now(), this.keyId, this.seq, this.head);
    const g: Group = { segment: n, create, out: new LineBuffer(this.pool), events: 0, checkpoints: [], deletes: [] };
    this.head = this.mac.sealInto(g.out, body);
    this.segment = n;
    this.segments.push(n);
    this.queue.push(g);
    this.segmentBytes = g.out.offset;
    this.segmentOpenedAt = Date.now();
  }

  /** Closes the current segment (with a checkpoint) and starts the next; applies retention. */
  rotate(reason: 'size' | 'age' | 'manual' = 'manual'): void {
    if (this.closed || this.closing) return;
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
    const now = Date.now();
    if (this.opts.maxSegmentAgeMs > 0 && now - this.segmentOpenedAt >= this.opts.maxSegmentAgeMs && this.seq > 0) this.rotate('age');
    if (this.seq > this.lastCheckpointSeq && now - this.lastCheckpointAt >= this.opts.checkpointIntervalMs) this.addCheckpoint('interval');
    if (this.queue.length > 0) this.flush().catch(() => {});
  }

  // ---- writing ------------------------------------------------------------------------

  /** Writes everything recorded before this call (and fsyncs per policy). Rejects once a write has failed. */
  flush(): Promise<void> {
    const p = this.flushChain.then(() => this.writeOut());
    this.flushChain = p.catch(() => {});
    return p;
  }

  private async writeOut(): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.queue.length === 0) return;
    const groups = this.queue;
    this.queue = [];
    try {
      for (const g of groups) {
        const fh = await this.handleFor(g.segment, g.create);
        const { views, chunks } = g.out.take();
        for (const buf of views) {
          await writeAll(fh, buf);
          this.bytesWritten += buf.length;
        }
        this.pool.release(chunks);
        if (this.opts.fsync === 'flush') await fh.datasync();
        if (g.checkpoints.length > 0) await this.appendCheckpoints(g.checkpoints);
        for (const name of g.deletes) {
          await unlink(join(this.dir, name)).catch((err: NodeJS.ErrnoException) => {
            if (err.code !== 'ENOENT') throw err;
          });
        }
        this.eventsFlushed += g.events;
        this.pendingEvents -= g.events;
      }
      this.lastFlushAt = new Date().toISOString();
    } catch (err) {
      const e = new AuditError('E_AUDIT_WRITE', `audit log write failed in ${this.dir}: ${(err as Error).message}`, { dir: this.dir }, { cause: err });
      this.failure = e;
      oplog.error({ err: (err as Error).message, dir: this.dir }, 'audit log write failed; audit log stopped');
      this.onError?.(e);
      throw e;
    }
  }

  private async handleFor(segment: number, create: boolean): Promise<FileHandle> {
    if (this.fh && this.fhSegment === segment) return this.fh;
    if (this.fh) {
      if (this.opts.fsync !== 'never') await this.fh.sync();
      await this.fh.close();
      this.fh = undefined;
    }
    const path = join(this.dir, segmentFileName(segment));
    this.fh = await openFile(path, create ? 'wx' : 'a', 0o600);
    this.fhSegment = segment;
    return this.fh;
  }

  private async appendCheckpoints(lines: string[]): Promise<void> {
    const fh = await openFile(join(this.dir, CHECKPOINT_FILE), 'a', 0o644);
    try {
      await writeAll(fh, Buffer.from(lines.join('')));
      if (this.opts.fsync === 'flush') await fh.datasync();
    } finally {
      await fh.close();
    }
  }

  /** Records `audit_closed`, writes a final checkpoint, flushes and closes. Idempotent. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    if (this.timer) clearInterval(this.timer);
    if (!this.failure) {
      this.append({ type: 'audit_closed', details: { seq: this.seq + 1, eventsLogged: this.eventsLogged + 1, droppedAfterClose: this.droppedAfterClose } });
      this.addCheckpoint('close');
    }
    this.closing = (async () => {
      try {
        await this.flush();
      } finally {
        if (this.fh) {
          if (this.opts.fsync !== 'never' && !this.failure) await this.fh.sync().catch(() => {});
          await this.fh.close().catch(() => {});
          this.fh = undefined;
        }
        this.closed = true;
        this.releaseLock();
      }
    })();
    return this.closing;
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

async function writeAll(fh: FileHandle, buf: Buffer): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off);
    off += bytesWritten;
  }
}
