// Verifies an audit log directory: integrity (every MAC right, every chain link holds) and
// completeness (no seq gaps, segments in order with matching headers, the tail covered by a
// signed checkpoint) are judged and reported separately. Works on raw bytes: a record's MAC
// is computed over the exact bytes on disk, and only the rare lines that need it are parsed.
import type { KeyObject } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { LineReader, forEachLine } from './audit-lines.js';
import { FastPathAbandoned, MacOffload, type LineSource, type MacOffloadOptions } from './audit-verify-parallel.js';
import {
  AuditError,
  AuditMac,
  CHECKPOINT_FILE,
  CHECKPOINT_PREFIX,
  HEADER_PREFIX,
  MAC_HEX_LEN,
  MAC_SUFFIX_LEN,
  PREV_FIELD_LEN,
  RECORD_PREFIX,
  SEGMENT_FILE_RE,
  ZERO_MAC,
  auditKeyId,
  checkCheckpointLine,
  publicKeyId,
  segmentFileName,
  type AuditRecord,
  type Checkpoint,
  type SegmentHeader,
} from './audit-record.js';

/**
 * Full verification needs the HMAC audit key. Without it only the public-key checks can run,
 * and the caller has to say so (`publicKeyOnly: true`): a forgotten key must not quietly
 * downgrade the check.
 */
export type VerifyOptions = (
  | {
      /** The HMAC audit key. */
      key: Buffer;
      /** The Ed25519 public key that checks checkpoints. */
      publicKey: KeyObject;
      publicKeyOnly?: false;
    }
  | {
      key?: undefined;
      publicKey: KeyObject;
      /**
       * Check what the public key can prove: checkpoint signatures, each checkpoint against the
       * record at its seq (seq and MAC as written), chain links as written, seq gaps, segment
       * order and headers, the tail against the last checkpoint. Record MACs are NOT checked:
       * a record's content can be changed undetectably as long as its MAC field is left alone.
       */
      publicKeyOnly: true;
    }
) & {
  /**
   * Check record MACs on a second thread while this one checks the rest (full mode only; the
   * call stays synchronous). Used when the segments hold at least `minBytes` (default 16 MiB):
   * below that, starting the thread costs more than it saves. If any MAC fails, or the thread
   * does, the log is verified again sequentially, so the report is always the sequential one.
   */
  parallel?: boolean | { minBytes?: number };
};

/** Below this many segment bytes, parallel verify is not worth a thread start-up. */
export const PARALLEL_VERIFY_MIN_BYTES = 16 * 1024 * 1024;

export type VerifyMode = 'full' | 'public-key-only';

export type ProblemKind =
  | 'modified'
  | 'inserted'
  | 'reordered'
  | 'deleted'
  | 'gap'
  | 'segment'
  | 'checkpoint'
  | 'truncated'
  | 'unverifiable'
  | 'torn';

export interface VerifyProblem {
  kind: ProblemKind;
  message: string;
  segment?: number;
  file?: string;
  /** 1-based line within the file. */
  line?: number;
  seq?: number;
}

export interface VerifyReport {
  dir: string;
  mode: VerifyMode;
  /** Integrity and completeness both verified. Always false in public-key-only mode: record MACs were not checked. */
  ok: boolean;
  /** Every check this mode ran found nothing wrong (equals `ok` in full mode). */
  checksPassed: boolean;
  segments: number[];
  records: number;
  firstSeq: number | null;
  lastSeq: number | null;
  checkpoints: number;
  lastCheckpointSeq: number | null;
  /** The log ends with `audit_closed` covered by a final checkpoint. */
  closed: boolean;
  integrity: {
    /** Every record MAC and chain link verified; false when they could not be checked. */
    ok: boolean;
    /** 'unchecked': public-key-only mode found nothing wrong, but no record MAC was checked. */
    status: 'verified' | 'failed' | 'unchecked';
    /** Why integrity is unchecked (public-key-only mode), else null. */
    unchecked: string | null;
    firstBad: VerifyProblem | null;
    problems: VerifyProblem[];
    problemCount: number;
  };
  completeness: { ok: boolean; problems: VerifyProblem[]; unverifiedTail: { fromSeq: number; toSeq: number; count: number } | null };
  /** A last line cut short by a crash: reported, not counted as tampering. */
  torn: VerifyProblem | null;
}

const MAX_LISTED = 100;
const RECORD_PREFIX_B = Buffer.from(RECORD_PREFIX);
const HEADER_PREFIX_B = Buffer.from(HEADER_PREFIX);
const CHECKPOINT_PREFIX_B = Buffer.from(CHECKPOINT_PREFIX);
const AUDIT_TYPE_B = Buffer.from('audit_');
const ROTATED_B = Buffer.from('audit_rotated"');
const CLOSED_B = Buffer.from('audit_closed"');
/** From the end of a record's seq digits to its type value: `,"ts":"` + 24-char ISO time + `","type":"`. */
const SEQ_TO_TYPE = 7 + 24 + 10;

/** The last line the chain went through: its seq and MAC (hex), and where it was. */
interface Link {
  seq: number;
  mac: string;
  segment: number;
  line: number;
}

interface Pending {
  problemIndex: number;
  lastBefore: Link;
}

/** A run of consecutive seqs that verified, in the order they were read: a whole healthy log is one run. */
interface Run {
  from: number;
  to: number;
}

// Byte comparisons by hand: Buffer#compare with offsets costs more than the few bytes compared.
function startsWith(buf: Buffer, start: number, end: number, prefix: Buffer): boolean {
  const n = prefix.length;
  if (end - start < n) return false;
  for (let i = 0; i < n; i++) if (buf[start + i] !== prefix[i]) return false;
  return true;
}

/** Whether buf[pos, pos + 64) holds the hex MAC `mac`. */
function macAt(buf: Buffer, pos: number, mac: string): boolean {
  for (let i = 0; i < MAC_HEX_LEN; i++) if (buf[pos + i] !== mac.charCodeAt(i)) return false;
  return true;
}

function parseSeqAt(buf: Buffer, pos: number, end: number): number {
  let n = 0;
  let digits = 0;
  while (pos < end) {
    const c = buf[pos]!;
    if (c < 0x30 || c > 0x39) break;
    n = n * 10 + (c - 0x30);
    pos++;
    digits++;
  }
  return digits === 0 ? -1 : n;
}

/** The segment numbers of the log in `dir`, ascending; a typed error when `dir` is not a captrap audit log. */
function listSegments(dir: string): number[] {
  let st;
  try {
    st = statSync(dir);
  } catch {
    throw new AuditError('E_AUDIT_NO_DIR', `audit directory ${dir} does not exist`, { dir });
  }
  if (!st.isDirectory()) throw new AuditError('E_AUDIT_NOT_A_LOG', `${dir} is not a directory (give the audit log directory, not a file)`, { dir });
  const segments = readdirSync(dir)
    .map((n) => SEGMENT_FILE_RE.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
  if (segments.length === 0) throw new AuditError('E_AUDIT_NOT_A_LOG', `${dir} holds no captrap audit segments (audit-NNNNNN.jsonl)`, { dir });
  return segments;
}

/**
 * Verifies the log in `dir`. Streams: segment by segment, a few MiB at a time, keeping only the
 * last link of the chain and runs of seqs (one for a healthy log), so memory does not grow with
 * the log.
 */
export function verifyAuditLog(dir: string, options: VerifyOptions): VerifyReport {
  const segments = listSegments(dir);
  const minBytes = typeof options.parallel === 'object' ? (options.parallel.minBytes ?? PARALLEL_VERIFY_MIN_BYTES) : PARALLEL_VERIFY_MIN_BYTES;
  if (options.parallel && options.key !== undefined && segmentBytes(dir, segments) >= minBytes) {
    const fast = verifyInParallel(dir, segments, options);
    if ('report' in fast) return fast.report;
  }
  return verifySegments(dir, segments, options, null);
}

/**
 * The parallel fast path alone (full mode): the report, or why it gave up — then
 * verifyAuditLog verifies sequentially. Exported for tests, which must see which path ran.
 */
export function verifyAuditLogFastPath(dir: string, options: VerifyOptions & { key: Buffer }, tuning?: MacOffloadOptions): FastPathResult {
  return verifyInParallel(dir, listSegments(dir), options, tuning);
}

type FastPathResult = { report: VerifyReport; workerLines: number } | { abandoned: string };

function verifyInParallel(dir: string, segments: number[], options: VerifyOptions, tuning?: MacOffloadOptions): FastPathResult {
  let offload: MacOffload | undefined;
  try {
    offload = new MacOffload(options.key!, tuning);
    const report = verifySegments(dir, segments, options, offload);
    return { report, workerLines: offload.workerLines };
  } catch (err) {
    // Whatever went wrong, the sequential verify decides: it names bad records, or throws its own error.
    return { abandoned: err instanceof FastPathAbandoned ? err.message : `error: ${(err as Error).message ?? String(err)}` };
  } finally {
    offload?.dispose();
  }
}

function segmentBytes(dir: string, segments: number[]): number {
  let bytes = 0;
  for (const s of segments) {
    try {
      bytes += statSync(join(dir, segmentFileName(s))).size;
    } catch {
      /* the verify pass reports it */
    }
  }
  return bytes;
}

/**
 * The verify pass. With `offload`, lines are read through its shared slots and it may take
 * over a line's MAC check: the line's MAC is then taken as written here, and `offload.finish()`
 * throws unless the worker found every one right — so a report is returned only when it is the
 * same as the sequential pass would give.
 */
function verifySegments(dir: string, segments: number[], options: VerifyOptions, offload: MacOffload | null): VerifyReport {
  const key = options.key;
  if (key === undefined && options.publicKeyOnly !== true) {
    throw new AuditError('E_AUDIT_NO_KEY', 'no audit key given: pass the HMAC key, or ask explicitly for the weaker public-key-only check', { dir });
  }
  const keyed = key !== undefined;
  const mac = keyed ? new AuditMac(key) : null;
  const keyId = keyed ? auditKeyId(key) : '';
  const pk = publicKeyId(options.publicKey);
  // Without the key a checkpoint's head can only be compared with the MAC field as written of
  // the record at its seq: collect those seqs first (cheaply, unverified), keep their MACs while scanning.
  const cpFileRead = readCheckpointFile(dir);
  const wantedSeqs = new Set<number>();
  const macAtSeq = new Map<number, string>();
  if (!keyed) {
    for (const l of cpFileRead.lines) {
      const m = /"seq":(\d+),/.exec(l);
      if (m) wantedSeqs.add(Number(m[1]));
    }
  }
  // Every checkpoint is written twice, into its segment and into the checkpoint file: a line
  // identical to one whose signature verified needs no second Ed25519 check.
  const signedLines = new Map<string, Checkpoint>();
  const checkCheckpoint = (line: string): ReturnType<typeof checkCheckpointLine> => {
    const known = signedLines.get(line);
    if (known) return { ok: true, cp: known };
    const res = checkCheckpointLine(line, options.publicKey);
    if (res.ok) signedLines.set(line, res.cp);
    return res;
  };
  const integrity: VerifyProblem[] = [];
  let integrityCount = 0;
  const completeness: VerifyProblem[] = [];
  const addIntegrity = (p: VerifyProblem): number => {
    integrityCount++;
    if (integrity.length < MAX_LISTED) integrity.push(p);
    return integrity.length - 1;
  };
  const addCompleteness = (p: VerifyProblem) => {
    if (completeness.length < MAX_LISTED) completeness.push(p);
  };

  const runs: Run[] = [];
  let run: Run | null = null;
  let records = 0;
  const validSeq = (seq: number) => {
    records++;
    if (run !== null && seq === run.to + 1) run.to = seq;
    else runs.push((run = { from: seq, to: seq }));
  };
  const badSeqs = new Set<number>();
  const missingRanges: { from: number; to: number; problemIndex: number }[] = [];
  let retainedThrough = 0;
  const inLogCheckpoints = new Map<number, string>();
  let lastCp: (Checkpoint & { where: string }) | null = null;
  let headersOurs = 0;
  let headersOther = 0;
  let macsOk = 0;
  let cpSigOk = 0;
  let cpSigBad = 0;
  let firstBadCpPk: string | null = null;
  let logLike = false;
  let torn: VerifyProblem | null = null;
  let last: Link = { seq: 0, mac: ZERO_MAC, segment: 0, line: 0 };
  let pending: Pending | null = null;
  let lastRecordClosed = false;
  let firstChained = true;

  let reader: LineSource | undefined = offload ?? undefined;
  try {
    for (let si = 0; si < segments.length; si++) {
      const segment = segments[si]!;
      const file = segmentFileName(segment);
      if (si > 0 && segment !== segments[si - 1]! + 1) {
        addCompleteness({ kind: 'segment', segment, file, message: `segment(s) ${segments[si - 1]! + 1}..${segment - 1} missing before ${file}` });
      }
      if (reader) reader.open(join(dir, file));
      else reader = new LineReader(join(dir, file));
      let lineNo = 0;
      let sawHeader = false;
      while (reader.next()) {
        const buf = reader.buf;
        const start = reader.start;
        const end = reader.end;
        lineNo++;
        const where = { segment, file, line: lineNo };
        if (!reader.terminated) {
          const t: VerifyProblem = { kind: 'torn', ...where, message: `${file} line ${lineNo}: last line is incomplete (${end - start} bytes, no newline): a write cut short by a crash` };
          if (si === segments.length - 1) torn = t;
          else addCompleteness({ ...t, message: t.message + ', in a segment that is not the last' });
          break;
        }
        if (startsWith(buf, start, end, CHECKPOINT_PREFIX_B)) {
          logLike = true;
          const text = reader.text();
          const res = checkCheckpoint(text);
          if (!res.ok) {
            cpSigBad++;
            firstBadCpPk ??= /"pk":"([0-9a-f]+)"/.exec(text)?.[1] ?? null;
            addIntegrity({ kind: 'modified', ...where, message: `${file} line ${lineNo}: checkpoint ${res.why}` });
            continue;
          }
          cpSigOk++;
          const cp = res.cp;
          if (cp.seq !== last.seq || cp.head !== last.mac) {
            addIntegrity({ kind: 'modified', ...where, seq: cp.seq, message: `${file} line ${lineNo}: checkpoint for seq ${cp.seq} does not match the chain at this point (seq ${last.seq})` });
          }
          inLogCheckpoints.set(cp.seq, cp.head);
          if (!lastCp || cp.seq >= lastCp.seq) lastCp = { ...cp, where: `${file} line ${lineNo}` };
          continue;
        }
        const isRecord = startsWith(buf, start, end, RECORD_PREFIX_B);
        const isHeader = !isRecord && startsWith(buf, start, end, HEADER_PREFIX_B);
        if (isRecord || isHeader) logLike = true;
        const macStart = end - MAC_SUFFIX_LEN + 8;
        const prevPos = end - MAC_SUFFIX_LEN - MAC_HEX_LEN - 1;
        const shapeOk = (isRecord || isHeader) && end - start > MAC_SUFFIX_LEN + PREV_FIELD_LEN && buf[end - 1] === 0x7d;
        // Everything this line's checks read is taken before the MAC clobbers the bytes in front of it.
        let seq = -1;
        let header: SegmentHeader | null = null;
        if (isRecord) seq = parseSeqAt(buf, start + RECORD_PREFIX_B.length, end);
        else if (isHeader) {
          try {
            header = JSON.parse(reader.text()) as SegmentHeader;
            seq = header.prevSeq;
            if (keyed && header.keyId === keyId) headersOurs++;
            else if (keyed) headersOther++;
          } catch {
            header = null;
          }
        }
        // Without the key a line's MAC field is taken as written: only its shape is checked.
        let lineMac = '';
        let macOk = false;
        if (shapeOk) {
          if (mac === null || offload?.defer(start, end - MAC_SUFFIX_LEN) === true) {
            lineMac = buf.toString('latin1', macStart, macStart + MAC_HEX_LEN);
            macOk = true;
          } else {
            lineMac = mac.ofBytesInPlace(buf, start, end - MAC_SUFFIX_LEN);
            macOk = macAt(buf, macStart, lineMac);
            // The fast path reports only healthy MACs; the sequential pass says what a bad one means.
            if (!macOk && offload) throw new FastPathAbandoned('a record MAC does not match');
          }
        }
        if (!macOk) {
          if (isRecord && seq >= 0) badSeqs.add(seq);
          const idx = addIntegrity({
            kind: 'modified',
            ...where,
            ...(seq >= 0 ? { seq } : {}),
            message: isRecord || isHeader ? `${file} line ${lineNo}: MAC does not match` : `${file} line ${lineNo}: not an audit record`,
          });
          if (!pending) pending = { problemIndex: idx, lastBefore: last };
          continue;
        }
        macsOk++;
        if (!keyed && isRecord && wantedSeqs.has(seq)) macAtSeq.set(seq, lineMac);
        const link: Link = { seq, mac: lineMac, segment, line: lineNo };
        if (pending) {
          // The first good line after bad ones says what the bad ones were: if it chains
          // straight from the last good line before them, they were inserted; else they replaced (modified) a record.
          const p = integrity[pending.problemIndex];
          const inserted = macAt(buf, prevPos, pending.lastBefore.mac);
          if (p && inserted) {
            p.kind = 'inserted';
            p.message = `${p.file} line ${p.line}: record inserted (its MAC does not verify and the next record chains past it)`;
          } else if (p) p.message = `${p.file} line ${p.line}: record modified (MAC does not match)`;
          pending = null;
          if (!inserted) {
            last = link;
            if (isRecord) validSeq(seq);
            firstChained = false;
            continue;
          }
        }
        if (isHeader) {
          if (sawHeader || lineNo !== 1) addIntegrity({ kind: 'inserted', ...where, message: `${file} line ${lineNo}: segment header in the middle of a segment` });
          sawHeader = true;
          if (header && header.segment !== segment) {
            addCompleteness({ kind: 'segment', ...where, message: `${file} carries the header of segment ${header.segment} (renamed or moved)` });
          }
          // The first header of a log that starts after segment 1 is checked against retention events below.
          if (firstChained) {
            if (segment === 1 && (seq !== 0 || !macAt(buf, prevPos, ZERO_MAC))) {
              addIntegrity({ kind: 'modified', ...where, message: `${file} header: first segment does not start a chain` });
            }
          } else if (seq !== last.seq || !macAt(buf, prevPos, last.mac)) {
            const idx = addIntegrity({
              kind: seq > last.seq ? 'deleted' : 'reordered',
              ...where,
              seq,
              message: `${file} header: chain broken — it follows seq ${seq} but the previous line is seq ${last.seq}${segment !== last.segment + 1 ? ` in segment ${last.segment}` : ''}`,
            });
            if (seq > last.seq) missingRanges.push({ from: last.seq + 1, to: seq, problemIndex: idx });
          }
        } else {
          validSeq(seq);
          if (!sawHeader && lineNo === 1) addCompleteness({ kind: 'segment', ...where, message: `${file} has no segment header` });
          const expected = last.seq + 1;
          if (!firstChained && (seq !== expected || !macAt(buf, prevPos, last.mac))) {
            if (seq > expected) {
              const idx = addIntegrity({ kind: 'deleted', ...where, seq, message: `${file} line ${lineNo}: seq ${seq} follows seq ${last.seq}; records ${expected}..${seq - 1} missing here` });
              missingRanges.push({ from: expected, to: seq - 1, problemIndex: idx });
            } else if (!keyed && seq === expected) {
              // Keyed, a MAC-valid record with the right seq and a wrong prev cannot happen without the key;
              // unkeyed, it is what a record (or its predecessor) with an edited MAC field looks like.
              addIntegrity({ kind: 'modified', ...where, seq, message: `${file} line ${lineNo}: chain link broken — seq ${seq}'s prev is not the MAC of seq ${last.seq} as written (a MAC field was edited)` });
            } else {
              addIntegrity({ kind: 'reordered', ...where, seq, message: `${file} line ${lineNo}: seq ${seq} out of order after seq ${last.seq}` });
            }
          }
          // Retention deletes old segments on purpose; the (MAC'd) event that says so excuses the gap.
          // Only audit_* records need a closer look; find the type at its fixed offset, not by searching.
          let t = start + RECORD_PREFIX_B.length;
          while (t < end && buf[t]! >= 0x30 && buf[t]! <= 0x39) t++;
          t += SEQ_TO_TYPE;
          lastRecordClosed = false;
          if (startsWith(buf, t, end, AUDIT_TYPE_B)) {
            lastRecordClosed = startsWith(buf, t, end, CLOSED_B);
            if (startsWith(buf, t, end, ROTATED_B)) {
              try {
                const r = JSON.parse(reader.text()) as AuditRecord;
                const d = r.details as { reason?: string; deletedThrough?: number } | undefined;
                if (d?.reason === 'retention' && typeof d.deletedThrough === 'number') retainedThrough = Math.max(retainedThrough, d.deletedThrough);
              } catch {
                /* MAC verified: cannot happen */
              }
            }
          }
        }
        firstChained = false;
        last = link;
      }
    }
    offload?.finish();
  } finally {
    reader?.close();
  }
  if (pending) {
    const p = integrity[pending.problemIndex];
    if (p) p.message = `${p.file} line ${p.line}: record modified (MAC does not match)`;
  }

  if (!logLike) throw new AuditError('E_AUDIT_NOT_A_LOG', `${dir} is not a captrap audit log (no line has the audit record format)`, { dir });
  if (headersOurs === 0 && headersOther > 0 && macsOk === 0) {
    throw new AuditError('E_AUDIT_WRONG_KEY', `wrong audit key: the log was written with key id ${findKeyId(dir, segments)}, this key's id is ${keyId}`, { dir });
  }
  if (cpSigOk === 0 && cpSigBad > 0 && macsOk > 0) {
    const named = firstBadCpPk && firstBadCpPk !== pk ? ` (they name key id ${firstBadCpPk}): wrong public key, or every checkpoint was replaced` : '';
    throw new AuditError('E_AUDIT_WRONG_PUBKEY', `wrong public key: no checkpoint verifies with key id ${pk}${named}`, { dir, keyId: pk, ...(firstBadCpPk ? { signedBy: firstBadCpPk } : {}) });
  }

  // The runs of verified seqs in seq order: a healthy log has one; each further run is a place where the order broke.
  const sortedRuns = runs.slice().sort((a, b) => a.from - b.from || a.to - b.to);
  // Deleted or reordered: a missing range is "reordered" when its records turn up elsewhere.
  const anyPresent = (from: number, to: number): boolean => sortedRuns.some((r) => r.from <= to && r.to >= from);
  for (const r of missingRanges) {
    const p = r.problemIndex >= 0 ? integrity[r.problemIndex] : undefined;
    if (p && anyPresent(r.from, r.to)) {
      p.kind = 'reordered';
      p.message = p.message.replace(/; records .* missing here$/, '') + ' (records moved)';
    }
  }
  const firstSegment = segments[0]!;
  if (firstSegment > 1) {
    if (retainedThrough < firstSegment - 1) addCompleteness({ kind: 'segment', segment: firstSegment, message: `segment(s) 1..${firstSegment - 1} missing and no retention event accounts for them` });
  }

  // Gaps among the records that verified (records that failed their MAC are integrity's business).
  const firstSeq = sortedRuns.length > 0 ? sortedRuns[0]!.from : null;
  let lastSeq: number | null = null;
  for (const r of sortedRuns) if (lastSeq === null || r.to > lastSeq) lastSeq = r.to;
  if (firstSeq !== null && firstSeq > 1 && firstSegment === 1) {
    addCompleteness({ kind: 'gap', message: `records 1..${firstSeq - 1} missing at the start of the log` });
  }
  // A sweep over the runs in seq order: a hole between what is covered so far and the next run is a
  // gap; a run starting inside what is covered repeats seqs (each reported, as far as the list goes).
  let covered = firstSeq === null ? 0 : firstSeq - 1;
  for (const r of sortedRuns) {
    if (r.from > covered + 1) {
      let allBad = true;
      for (let s = covered + 1; s < r.from && allBad; s++) allBad = badSeqs.has(s);
      if (!allBad) addCompleteness({ kind: 'gap', seq: covered + 1, message: `records ${covered + 1}..${r.from - 1} missing` });
    } else {
      const dupTo = Math.min(r.to, covered);
      for (let s = r.from; s <= dupTo && completeness.length < MAX_LISTED; s++) addCompleteness({ kind: 'gap', seq: s, message: `seq ${s} appears more than once` });
    }
    if (r.to > covered) covered = r.to;
  }

  // The checkpoint file: every line signed, increasing, agreeing with the log.
  const cpFileLines = cpFileRead.lines;
  const cpFileMissing = cpFileRead.missing;
  if (cpFileMissing && inLogCheckpoints.size > 0) {
    addCompleteness({ kind: 'checkpoint', file: CHECKPOINT_FILE, message: `${CHECKPOINT_FILE} is missing although the log holds ${inLogCheckpoints.size} checkpoints` });
  }
  let prevFileSeq = 0;
  let prevFileHead = '';
  const inFile = new Set<number>();
  for (let i = 0; i < cpFileLines.length; i++) {
    const where = { file: CHECKPOINT_FILE, line: i + 1 };
    const res = checkCheckpoint(cpFileLines[i]!);
    if (!res.ok) {
      addCompleteness({ kind: 'checkpoint', ...where, message: `${CHECKPOINT_FILE} line ${i + 1}: ${res.why} (checkpoint replaced or modified)` });
      continue;
    }
    const cp = res.cp;
    inFile.add(cp.seq);
    // The same head twice is harmless (a rotation right after an interval checkpoint); going back is not.
    if (cp.seq < prevFileSeq || (cp.seq === prevFileSeq && prevFileHead !== cp.head)) addCompleteness({ kind: 'checkpoint', ...where, seq: cp.seq, message: `${CHECKPOINT_FILE} line ${i + 1}: checkpoint seq ${cp.seq} not after ${prevFileSeq} (replaced or reordered)` });
    if (cp.seq >= prevFileSeq) {
      prevFileSeq = cp.seq;
      prevFileHead = cp.head;
    }
    if (!lastCp || cp.seq > lastCp.seq) lastCp = { ...cp, where: `${CHECKPOINT_FILE} line ${i + 1}` };
    const written = macAtSeq.get(cp.seq);
    if (written !== undefined && written !== cp.head) {
      addIntegrity({
        kind: 'modified',
        ...where,
        seq: cp.seq,
        message: `${CHECKPOINT_FILE} line ${i + 1}: signed head for seq ${cp.seq} is not the MAC of the log's record at seq ${cp.seq} (record replaced, renumbered or its MAC edited)`,
      });
    }
    const mine = inLogCheckpoints.get(cp.seq);
    if (mine !== undefined) {
      if (mine !== cp.head) addCompleteness({ kind: 'checkpoint', ...where, seq: cp.seq, message: `${CHECKPOINT_FILE} line ${i + 1}: head for seq ${cp.seq} differs from the log` });
    } else if (firstSeq !== null && cp.seq < firstSeq) {
      // covers records removed by retention
    } else if (lastSeq !== null && cp.seq <= lastSeq) {
      addCompleteness({ kind: 'checkpoint', ...where, seq: cp.seq, message: `${CHECKPOINT_FILE} line ${i + 1}: checkpoint for seq ${cp.seq} is not in the log (removed from it)` });
    }
  }
  for (const seq of inLogCheckpoints.keys()) {
    if (!cpFileMissing && !inFile.has(seq)) addCompleteness({ kind: 'checkpoint', seq, file: CHECKPOINT_FILE, message: `${CHECKPOINT_FILE} lacks the checkpoint for seq ${seq} that the log holds (file truncated or edited)` });
  }

  // The tail: everything up to the last signed checkpoint is anchored; anything after is not.
  let unverifiedTail: VerifyReport['completeness']['unverifiedTail'] = null;
  const end = lastSeq ?? 0;
  if (lastCp && lastCp.seq > end) {
    addCompleteness({
      kind: 'truncated',
      seq: lastCp.seq,
      message: `the log ends at seq ${end} but ${lastCp.where} is a signed checkpoint for seq ${lastCp.seq} (segment ${lastCp.segment}): tail truncated or last segment deleted`,
    });
  } else if (lastCp && lastCp.reason === 'rotate' && lastCp.seq === end && segments[segments.length - 1]! <= lastCp.segment) {
    addCompleteness({ kind: 'truncated', segment: lastCp.segment + 1, message: `segment ${lastCp.segment + 1} missing: ${lastCp.where} rotated to it (last segment deleted)` });
  } else if (end > (lastCp?.seq ?? 0)) {
    const from = (lastCp?.seq ?? 0) + 1;
    unverifiedTail = { fromSeq: from, toSeq: end, count: end - from + 1 };
    addCompleteness({
      kind: 'unverifiable',
      seq: from,
      message: `records ${from}..${end} come after the last signed checkpoint${lastCp ? ` (seq ${lastCp.seq})` : ''}: unverifiable — the log is still open, crashed, or its tail was cut`,
    });
  }

  const integrityStatus = integrityCount > 0 ? 'failed' : keyed ? 'verified' : 'unchecked';
  const report: VerifyReport = {
    dir,
    mode: keyed ? 'full' : 'public-key-only',
    ok: false,
    checksPassed: false,
    segments,
    records,
    firstSeq,
    lastSeq,
    checkpoints: cpSigOk,
    lastCheckpointSeq: lastCp?.seq ?? null,
    closed: lastRecordClosed && lastCp?.reason === 'close' && lastCp.seq === end,
    integrity: {
      ok: integrityStatus === 'verified',
      status: integrityStatus,
      unchecked: integrityStatus === 'unchecked' ? UNCHECKED_NO_KEY : null,
      firstBad: integrity[0] ?? null,
      problems: integrity,
      problemCount: integrityCount,
    },
    completeness: { ok: completeness.length === 0, problems: completeness, unverifiedTail },
    torn,
  };
  report.ok = report.integrity.ok && report.completeness.ok;
  report.checksPassed = integrityCount === 0 && report.completeness.ok;
  return report;
}

const UNCHECKED_NO_KEY =
  'unchecked: no HMAC key — record MACs were not checked, so a record whose content was edited with its MAC field left alone is not detected ' +
  '(retention events are taken at their word too); checkpoint signatures, seqs, chain links as written and the records at checkpoints were checked';

function readCheckpointFile(dir: string): { lines: string[]; missing: boolean } {
  try {
    const lines = readFileSync(join(dir, CHECKPOINT_FILE), 'utf8').split('\n');
    if (lines[lines.length - 1] === '') lines.pop();
    return { lines, missing: false };
  } catch {
    return { lines: [], missing: true };
  }
}

function findKeyId(dir: string, segments: number[]): string {
  let keyId = 'unknown';
  try {
    forEachLine(join(dir, segmentFileName(segments[0]!)), (r) => {
      keyId = (JSON.parse(r.text()) as SegmentHeader).keyId ?? 'unknown';
      return false; // the header is the first line
    });
  } catch {
    /* unreadable: unknown */
  }
  return keyId;
}

export interface ReadAuditOptions {
  filter?: (r: AuditRecord) => boolean;
  /** Matching records to skip first (oldest first). Default 0. */
  offset?: number;
  /** At most this many records are returned; reading stops there. Default all. */
  limit?: number;
}

/**
 * Reads the record lines of the log (no verification: use verifyAuditLog for that), oldest
 * first: those `filter` keeps, after skipping `offset` of them, at most `limit`. The filter may
 * be given alone as the second argument (the older call shape).
 */
export function readAuditRecords(dir: string, filterOrOptions: ((r: AuditRecord) => boolean) | ReadAuditOptions = {}, options: ReadAuditOptions = {}): AuditRecord[] {
  const o: ReadAuditOptions = typeof filterOrOptions === 'function' ? { ...options, filter: filterOrOptions } : { ...filterOrOptions, ...options };
  const filter = o.filter ?? (() => true);
  const offset = o.offset ?? 0;
  const limit = o.limit ?? Infinity;
  if (!Number.isInteger(offset) || offset < 0) throw new RangeError(`offset: expected a non-negative integer, got ${offset}`);
  if (limit !== Infinity && (!Number.isInteger(limit) || limit < 0)) throw new RangeError(`limit: expected a non-negative integer, got ${limit}`);
  const out: AuditRecord[] = [];
  if (limit === 0) return out;
  let skipped = 0;
  for (const s of listSegments(dir)) {
    let full = false;
    forEachLine(join(dir, segmentFileName(s)), (line) => {
      if (!startsWith(line.buf, line.start, line.end, RECORD_PREFIX_B)) return;
      let r: AuditRecord;
      try {
        r = JSON.parse(line.text()) as AuditRecord;
        if (!filter(r)) return;
      } catch {
        return; // torn or damaged line (verify reports it), or one the filter chokes on
      }
      if (skipped < offset) {
        skipped++;
        return;
      }
      out.push(r);
      if (out.length >= limit) return !(full = true);
    });
    if (full) return out;
  }
  return out;
}
