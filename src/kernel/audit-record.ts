// The on-disk form of the audit log: one JSON object per line, written by one canonical
// encoder so that the bytes on disk ARE the canonical bytes. A MAC'd line is
//   <body>,"mac":"<64 hex>"}\n     where <body> ends with "prev":"<64 hex>"
// and the MAC is HMAC-SHA256(audit key, body). Verification therefore never re-serialises:
// it MACs the exact bytes it read, so any changed byte (even whitespace) is detected.
// Checkpoints end with ,"sig":"<base64>"} and are signed with Ed25519 over the bytes before it.
import { createHash, createHmac, sign, verify as verifySignature, type KeyObject } from 'node:crypto';
import { CaptrapError } from '../errors.js';
import type { AuditEvent, AuditEventType } from './events.js';

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

/** HMAC-SHA256 of a line body, hex. */
export function macHex(key: Buffer, body: string | Uint8Array): string {
  return createHmac('sha256', key).update(body).digest('hex');
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
  return encodeValue(value, new Set()) ?? 'null';
}

function encodeValue(value: unknown, seen: Set<object>): string | undefined {
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'number':
      return Number.isFinite(value) ? String(value) : 'null';
    case 'boolean':
      return value ? 'true' : 'false';
    case 'bigint':
      return JSON.stringify(value.toString());
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined;
  }
  if (value === null) return 'null';
  const obj = value as { toJSON?: () => unknown };
  if (typeof obj.toJSON === 'function') return encodeValue(obj.toJSON(), seen);
  if (seen.has(obj)) return '"[circular]"';
  seen.add(obj);
  let out: string;
  if (Array.isArray(obj)) {
    out = '[' + obj.map((v) => encodeValue(v, seen) ?? 'null').join(',') + ']';
  } else {
    const parts: string[] = [];
    for (const k of Object.keys(obj).sort()) {
      const v = encodeValue((obj as Record<string, unknown>)[k], seen);
      if (v !== undefined) parts.push(JSON.stringify(k) + ':' + v);
    }
    out = '{' + parts.join(',') + '}';
  }
  seen.delete(obj);
  return out;
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

export type CheckpointReason = 'interval' | 'rotate' | 'close' | 'open';

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
export function encodeRecordBody(seq: number, ts: string, event: AuditEvent, prev: string): string {
  let s = RECORD_PREFIX + seq + ',"ts":"' + ts + '","type":' + JSON.stringify(String(event.type));
  if (event.principal !== undefined) s += ',"principal":' + JSON.stringify(String(event.principal));
  if (event.capabilityId !== undefined) s += ',"capabilityId":' + JSON.stringify(String(event.capabilityId));
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
