// The on-disk form of the audit log: one JSON object per line, written by one canonical
// encoder so that the bytes on disk ARE the canonical bytes. A MAC'd line is
//   <body>,"mac":"<64 hex>"}\n     where <body> ends with "prev":"<64 hex>"
// and the MAC is HMAC-SHA256(audit key, body). Verification therefore never re-serialises:
// it MACs the exact bytes it read, so any changed byte (even whitespace) is detected.
// Checkpoints end with ,"sig":"<base64>"} and are signed with Ed25519 over the bytes before it.
import { createHash, createHmac, hash, sign, verify as verifySignature, type KeyObject } from 'node:crypto';
import { CaptrapError } from '../errors.js';
import { AUDIT_EVENT_TYPES, type AuditEvent, type AuditEventType } from './events.js';
import { quoteJson } from './json-quote.js';

export const AUDIT_FORMAT_VERSION = 1;
export const MAC_HEX_LEN = 64;
export const ZERO_MAC = '0'.repeat(MAC_HEX_LEN);
/** A record larger than this has its details replaced by a digest, so one line stays readable in bounded memory. */
export const MAX_RECORD_BYTES = 64 * 1024;

export const SEGMENT_FILE_RE = /^audit-(\d{6,})\.jsonl$/;
export const CHECKPOINT_FILE = 'checkpoints.jsonl';

export function segmentFileName(n: number): string {
  return `audit-${String(n).padStart(6, '0')}.jsonl`;
}

export class AuditError extends CaptrapError {}

// Byte prefixes that tell the three line kinds apart without parsing.
export const RECORD_PREFIX = `{"v":${AUDIT_FORMAT_VERSION},"seq":`;
export const HEADER_PREFIX = `{"v":${AUDIT_FORMAT_VERSION},"kind":"segment",`;
export const CHECKPOINT_PREFIX = `{"v":${AUDIT_FORMAT_VERSION},"kind":"checkpoint",`;
/** `,"mac":"` + 64 hex + `"}` */
export const MAC_SUFFIX_LEN = 8 + MAC_HEX_LEN + 2;
/** `"prev":"` + 64 hex + `"` immediately before the MAC suffix. */
export const PREV_FIELD_LEN = 8 + MAC_HEX_LEN + 1;

/** HMAC-SHA256 of a line body, hex. (The reference form; AuditMac computes the same faster.) */
export function macHex(key: Buffer, body: string | Uint8Array): string {
  return createHmac('sha256', key).update(body).digest('hex');
}

const SHA256_BLOCK = 64;
/** `,"mac":"` */
const MAC_OPEN = Buffer.from(',"mac":"', 'latin1');

/** The RFC 2104 pads of `key` for HMAC-SHA256: K^ipad and K^opad, one block each. */
export function hmacSha256Pads(key: Buffer): { ipad: Buffer; opad: Buffer } {
  const k = key.length > SHA256_BLOCK ? createHash('sha256').update(key).digest() : key;
  const ipad = Buffer.alloc(SHA256_BLOCK, 0x36);
  const opad = Buffer.alloc(SHA256_BLOCK, 0x5c);
  for (let i = 0; i < k.length; i++) {
    ipad[i] = k[i]! ^ 0x36;
    opad[i] = k[i]! ^ 0x5c;
  }
  return { ipad, opad };
}

/**
 * HMAC-SHA256 (RFC 2104) built from two one-shot crypto.hash calls over reused buffers:
 * H((K^opad) || H((K^ipad) || m)). Same bytes out as createHmac, but without allocating two
 * native hash objects per record, which is most of createHmac's cost on ~400-byte lines.
 */
export class AuditMac {
  private scratch: Buffer;
  private readonly ipad: Buffer;
  private readonly outer: Buffer;

  constructor(key: Buffer) {
    const { ipad, opad } = hmacSha256Pads(key);
    this.ipad = ipad;
    this.outer = Buffer.alloc(SHA256_BLOCK + 32);
    opad.copy(this.outer, 0);
    this.scratch = Buffer.allocUnsafe(SHA256_BLOCK + 16 * 1024);
    this.ipad.copy(this.scratch, 0);
  }

  private finish(n: number): string {
    // 'binary' (latin1) output: a Buffer result would cost a native allocation per call, twice the hash itself.
    this.outer.write(hash('sha256', this.scratch.subarray(0, SHA256_BLOCK + n), 'binary'), SHA256_BLOCK, 'latin1');
    return hash('sha256', this.outer, 'hex');
  }

  private ensure(bytes: number): void {
    if (SHA256_BLOCK + bytes <= this.scratch.length) return;
    this.scratch = Buffer.allocUnsafe(SHA256_BLOCK + bytes * 2);
    this.ipad.copy(this.scratch, 0);
  }

  /**
   * Encodes `body` straight into `out`, MACs it there and appends the MAC suffix and newline:
   * the line is UTF-8-encoded exactly once and never exists as a JS string. The 64 bytes
   * before the body briefly hold K^ipad so the inner hash runs over contiguous memory; the
   * body is then moved down over them. Returns the MAC (hex).
   */
  sealInto(out: LineBuffer, body: string): string {
    const max = body.length * 3 + SHA256_BLOCK + MAC_SUFFIX_LEN + 1;
    const buf = out.reserve(max > 64 * 1024 ? Buffer.byteLength(body) + SHA256_BLOCK + MAC_SUFFIX_LEN + 1 : max);
    const start = out.offset;
    buf.set(this.ipad, start);
    const n = buf.write(body, start + SHA256_BLOCK, 'utf8');
    this.outer.write(hash('sha256', buf.subarray(start, start + SHA256_BLOCK + n), 'binary'), SHA256_BLOCK, 'latin1');
    const mac = hash('sha256', this.outer, 'hex');
    buf.copyWithin(start, start + SHA256_BLOCK, start + SHA256_BLOCK + n);
    // The suffix byte by byte around one write of the MAC: concatenating it first would build a rope for the write to flatten.
    let p = start + n;
    for (let i = 0; i < 8; i++) buf[p++] = MAC_OPEN[i]!;
    p += buf.write(mac, p, MAC_HEX_LEN, 'latin1');
    buf[p++] = 0x22; // "
    buf[p++] = 0x7d; // }
    buf[p++] = 0x0a; // \n
    out.offset = p;
    out.appended += p - start;
    return mac;
  }

  /** MAC of a string's UTF-8 bytes. */
  ofString(body: string): string {
    // Cheap bound first: UTF-8 needs at most 3 bytes per UTF-16 unit.
    if (body.length * 3 > this.scratch.length - SHA256_BLOCK) this.ensure(Buffer.byteLength(body));
    const n = this.scratch.write(body, SHA256_BLOCK, 'utf8');
    return this.finish(n);
  }

  /**
   * MAC of bytes[start, end) without copying them: the 64 bytes before `start` (which must
   * exist, and hold nothing the caller still needs) are overwritten with K^ipad so the inner
   * hash runs over memory that is already contiguous. For a reader that keeps that headroom.
   */
  ofBytesInPlace(bytes: Buffer, start: number, end: number): string {
    bytes.set(this.ipad, start - SHA256_BLOCK);
    this.outer.write(hash('sha256', bytes.subarray(start - SHA256_BLOCK, end), 'binary'), SHA256_BLOCK, 'latin1');
    return hash('sha256', this.outer, 'hex');
  }

  /** MAC of bytes[start, end). */
  ofBytes(bytes: Buffer, start: number, end: number): string {
    this.ensure(end - start);
    bytes.copy(this.scratch, SHA256_BLOCK, start, end);
    return this.finish(end - start);
  }
}

/** A short, public fingerprint of the audit key: lets `verify` say "wrong key" instead of "every record modified". */
export function auditKeyId(key: Buffer): string {
  return createHmac('sha256', key).update('captrap audit key id').digest('hex').slice(0, 16);
}

export function publicKeyId(publicKey: KeyObject): string {
  return createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex').slice(0, 16);
}

/** JSON with object keys sorted at every level; drops undefined like JSON.stringify; never throws. */
export function canonicalJson(value: unknown): string {
  return encodeValue(value, []) ?? 'null';
}

/** Nesting deeper than this is cut. */
const MAX_DEPTH = 32;

/**
 * Small memo of encoded pieces that repeat from record to record (detail keys, principals,
 * capability ids): a hit costs a hash lookup instead of a scan and two concatenations, and
 * leaves no garbage. Cleared when full, so it stays bounded whatever the input.
 */
class PieceCache {
  private readonly map = new Map<string, string>();
  constructor(
    private readonly make: (s: string) => string,
    private readonly max = 4096,
  ) {}
  get(s: string): string {
    let v = this.map.get(s);
    if (v === undefined) {
      if (s.length > 128) return this.make(s); // long values rarely repeat
      if (this.map.size >= this.max) this.map.clear();
      v = this.make(s);
      this.map.set(s, v);
    }
    return v;
  }
}

const KEY_PIECES = new PieceCache((k) => quoteJson(k) + ':');
const EMPTY_KEYS: string[] = [];

function encodeValue(value: unknown, ancestors: object[]): string | undefined {
  switch (typeof value) {
    case 'string':
      return quoteJson(value);
    case 'number':
      return Number.isFinite(value) ? String(value) : 'null';
    case 'boolean':
      return value ? 'true' : 'false';
    case 'bigint':
      return '"' + value.toString() + '"';
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined;
  }
  if (value === null) return 'null';
  if (ancestors.length >= MAX_DEPTH) return '"[too deep]"';
  const obj = value as { toJSON?: () => unknown };
  // A short ancestor list (not a Set) finds cycles cheaply at the depths details have.
  if (ancestors.includes(obj)) return '"[circular]"';
  const isArray = Array.isArray(obj);
  const keys = isArray ? EMPTY_KEYS : Object.keys(obj);
  // A plain object (the usual details) has a toJSON only as an own key: looking one up on the
  // prototype chain of every object costs more than a glance at its keys.
  const proto: unknown = isArray ? undefined : Object.getPrototypeOf(obj);
  const mayHaveToJSON = isArray || !(proto === Object.prototype || proto === null) || keys.includes('toJSON');
  if (mayHaveToJSON && typeof obj.toJSON === 'function') return encodeValue(obj.toJSON(), ancestors);
  ancestors.push(obj);
  let out: string;
  if (isArray) {
    const arr = obj as unknown[];
    out = '[';
    for (let i = 0; i < arr.length; i++) out += (i > 0 ? ',' : '') + (encodeValue(arr[i], ancestors) ?? 'null');
    out += ']';
  } else {
    if (keys.length > 1) sortKeys(keys);
    out = '{';
    let first = true;
    for (const k of keys) {
      const v = encodeValue((obj as Record<string, unknown>)[k], ancestors);
      if (v === undefined) continue;
      out += (first ? '' : ',') + KEY_PIECES.get(k) + v;
      first = false;
    }
    out += '}';
  }
  ancestors.pop();
  return out;
}

/**
 * keys.sort(), i.e. UTF-16 code unit order, by insertion for the handful of keys details have:
 * Array#sort's call costs more than sorting them (and keys already in order, as producers often
 * write them, take one comparison each).
 */
export function sortKeys(keys: string[]): void {
  const n = keys.length;
  if (n > 16) {
    keys.sort();
    return;
  }
  for (let i = 1; i < n; i++) {
    const k = keys[i]!;
    let j = i - 1;
    if (keys[j]! < k) continue;
    while (j >= 0 && keys[j]! > k) {
      keys[j + 1] = keys[j]!;
      j--;
    }
    keys[j + 1] = k;
  }
}

export interface AuditRecord {
  v: number;
  seq: number;
  ts: string;
  type: AuditEventType;
  principal?: string;
  capabilityId?: string;
  process?: { pid: number; startTime: number };
  details?: Record<string, unknown>;
  prev: string;
  mac: string;
}

export interface SegmentHeader {
  v: number;
  kind: 'segment';
  segment: number;
  ts: string;
  keyId: string;
  /** Sequence number of the last record before this segment (0 for the first segment of a log). */
  prevSeq: number;
  prev: string;
  mac: string;
}

/** `resume`: right after the `audit_resumed` record that ends an outage, so the recovery is anchored at once. */
export type CheckpointReason = 'interval' | 'rotate' | 'close' | 'open' | 'resume';

export interface Checkpoint {
  v: number;
  kind: 'checkpoint';
  seq: number;
  head: string;
  ts: string;
  segment: number;
  reason: CheckpointReason;
  pk: string;
  sig: string;
}

/** The record body (everything the MAC covers). `details` is encoded canonically; fixed fields in fixed order. */
const TYPE_FIELD = new Map<string, string>(AUDIT_EVENT_TYPES.map((t) => [t, `","type":"${t}"`]));

const PRINCIPAL_PIECES = new PieceCache((p) => ',"principal":' + quoteJson(p));

export function encodeRecordBody(seq: number, ts: string, event: AuditEvent, prev: string): string {
  let s = RECORD_PREFIX + seq + ',"ts":"' + ts + (TYPE_FIELD.get(event.type) ?? '","type":' + quoteJson(String(event.type)));
  if (event.principal !== undefined) s += PRINCIPAL_PIECES.get(String(event.principal));
  if (event.capabilityId !== undefined) s += ',"capabilityId":' + quoteJson(String(event.capabilityId));
  const p = event.process;
  if (p !== undefined && p !== null) s += ',"process":{"pid":' + numberOrNull(p.pid) + ',"startTime":' + numberOrNull(p.startTime) + '}';
  if (event.details !== undefined && event.details !== null) {
    let d: string;
    try {
      d = canonicalJson(event.details);
    } catch (err) {
      // A throwing toJSON or getter: keep the event, say why its details are missing.
      d = canonicalJson({ unserialisable: (err as Error).message ?? String(err) });
    }
    if (d.length > MAX_RECORD_BYTES) {
      d = canonicalJson({ truncated: true, bytes: Buffer.byteLength(d), sha256: createHash('sha256').update(d).digest('hex') });
    }
    s += ',"details":' + d;
  }
  return s + ',"prev":"' + prev + '"';
}

function numberOrNull(n: unknown): string {
  return typeof n === 'number' && Number.isFinite(n) ? String(n) : 'null';
}

export function encodeHeaderBody(segment: number, ts: string, keyId: string, prevSeq: number, prev: string): string {
  return `${HEADER_PREFIX}"segment":${segment},"ts":"${ts}","keyId":"${keyId}","prevSeq":${prevSeq},"prev":"${prev}"`;
}

export function sealLine(body: string, mac: string): string {
  return body + ',"mac":"' + mac + '"}\n';
}

export function encodeCheckpoint(
  privateKey: KeyObject,
  pk: string,
  seq: number,
  head: string,
  ts: string,
  segment: number,
  reason: CheckpointReason,
): string {
  const body = `${CHECKPOINT_PREFIX}"seq":${seq},"head":"${head}","ts":"${ts}","segment":${segment},"reason":"${reason}","pk":"${pk}"`;
  const sig = sign(null, Buffer.from(body), privateKey).toString('base64');
  return body + ',"sig":"' + sig + '"}\n';
}

/** Checks a checkpoint line's signature; returns the parsed checkpoint or a reason it is not valid. */
export function checkCheckpointLine(line: string, publicKey: KeyObject): { ok: true; cp: Checkpoint } | { ok: false; why: string } {
  const at = line.lastIndexOf(',"sig":"');
  if (!line.startsWith(CHECKPOINT_PREFIX) || at < 0 || !line.endsWith('"}')) return { ok: false, why: 'not a checkpoint line' };
  let cp: Checkpoint;
  try {
    cp = JSON.parse(line) as Checkpoint;
  } catch {
    return { ok: false, why: 'not valid JSON' };
  }
  const sig = Buffer.from(line.slice(at + 8, -2), 'base64');
  let good = false;
  try {
    good = verifySignature(null, Buffer.from(line.slice(0, at)), publicKey, sig);
  } catch {
    good = false;
  }
  if (!good) return { ok: false, why: 'bad signature' };
  return { ok: true, cp };
}

/**
 * Reuses written chunks: 1 MiB allocations outside the V8 heap count as external memory
 * pressure and trigger full collections at hundreds of thousands of events a second.
 */
export class ChunkPool {
  private readonly free: Buffer[] = [];
  constructor(
    readonly chunkBytes = 1024 * 1024,
    private readonly keep = 32,
  ) {}
  get(min: number): Buffer {
    if (min <= this.chunkBytes) {
      const b = this.free.pop();
      if (b) return b;
    }
    return Buffer.allocUnsafe(Math.max(this.chunkBytes, min));
  }
  /** Only once nothing refers to the chunk's bytes any more (its write has completed). */
  release(chunks: Buffer[]): void {
    for (const c of chunks) if (c.length === this.chunkBytes && this.free.length < this.keep) this.free.push(c);
  }
}

const defaultPool = new ChunkPool(1024 * 1024, 0);

/** Lines awaiting write, as bytes in large chunks: no per-line strings, no join at flush. */
export class LineBuffer {
  private readonly views: Buffer[] = [];
  private readonly chunks: Buffer[] = [];
  private cur: Buffer | undefined;
  /** Write position in the current chunk (it restarts at 0 in each new chunk). */
  offset = 0;
  /** Bytes appended since construction: unlike `offset`, never goes back, so differences of it measure lines. */
  appended = 0;

  constructor(private readonly pool: ChunkPool = defaultPool) {}

  /** The current chunk, with at least `bytes` free from `offset`. */
  reserve(bytes: number): Buffer {
    if (this.cur && this.offset + bytes <= this.cur.length) return this.cur;
    if (this.cur && this.offset > 0) this.views.push(this.cur.subarray(0, this.offset));
    this.cur = this.pool.get(bytes);
    this.chunks.push(this.cur);
    this.offset = 0;
    return this.cur;
  }

  appendString(s: string): number {
    const buf = this.reserve(s.length * 3);
    const n = buf.write(s, this.offset, 'utf8');
    this.offset += n;
    this.appended += n;
    return n;
  }

  /** Everything held, in order, and the chunks to release once written; the buffer is empty afterwards. */
  take(): { views: Buffer[]; chunks: Buffer[] } {
    const views = this.views.splice(0);
    if (this.cur && this.offset > 0) views.push(this.cur.subarray(0, this.offset));
    this.cur = undefined;
    this.offset = 0;
    return { views, chunks: this.chunks.splice(0) };
  }
}

/** Cached ISO timestamp per millisecond: Date#toISOString is a visible share of the hot path. */
export class IsoClock {
  private lastMs = -1;
  private lastIso = '';
  now(): string {
    const ms = Date.now();
    if (ms !== this.lastMs) {
      this.lastMs = ms;
      this.lastIso = new Date(ms).toISOString();
    }
    return this.lastIso;
  }
}
