// `captrap audit verify | tail | show`: check and read a tamper-evident audit log.
// Exit codes: 0 verified / printed, 1 the log failed verification, 2 bad input (usage,
// missing or wrong key, not a log), 3 only the public-key checks could run (no HMAC key)
// and found nothing wrong, but the weaker check was not accepted with --pubkey-only.
// Errors are one line; CAPTRAP_DEBUG=1 adds the stack.
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  AUDIT_EVENT_TYPES,
  type AuditEventType,
} from '../../kernel/events.js';
import {
  AUDIT_KEY_FILE,
  AUDIT_PUBLIC_KEY_FILE,
  listSegments,
  readAuditRecords,
  verifyAuditLog,
  RECORD_PREFIX,
  segmentFileName,
  type AuditRecord,
  type VerifyReport,
} from '../../kernel/audit.js';
import { readEd25519PublicKey, readSecretFile } from '../../kernel/keys.js';

const USAGE = `usage:
  captrap audit verify <dir> [--key FILE] [--pubkey FILE] [--json]
  captrap audit verify <dir> --pubkey-only [--pubkey FILE] [--json]
  captrap audit tail <dir> [-n N] [-f] [--json]
  captrap audit show <dir> [--principal P] [--type T] [--capability ID] [--json]

<dir> defaults to $CAPTRAP_AUDIT_DIR. --key defaults to <dir>/${AUDIT_KEY_FILE}, --pubkey to
<dir>/${AUDIT_PUBLIC_KEY_FILE}; keep trusted copies elsewhere and pass them explicitly.
verify exits 0 only if integrity and completeness both hold, 1 if not, 2 on bad input.
show --principal and --capability also match records that list the principal or id among
others (details.principals, details.ids: one capability_revoked record per cascade).
Without the HMAC key (none given, none in <dir>) verify checks only what the public key can:
checkpoint signatures, the records at checkpoints, seqs, chain links as written, segments and
the tail; record MACs are NOT checked. Nothing wrong found then exits 3, or 0 with
--pubkey-only, which asks for exactly this weaker check (and never reads the HMAC key).
`;

class UsageError extends Error {}

export async function main(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  try {
    switch (sub) {
      case 'verify':
        return verify(rest);
      case 'tail':
        return await tail(rest);
      case 'show':
        return show(rest);
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        process.stdout.write(USAGE);
        return sub === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown subcommand '${sub}'`);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`captrap audit: ${err.message}\n\n${USAGE}`);
      return 2;
    }
    process.stderr.write(`captrap audit: ${describe(err)}\n`);
    return 2;
  }
}

function describe(err: unknown): string {
  if (process.env.CAPTRAP_DEBUG && err instanceof Error && err.stack) return err.stack;
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === 'string' ? `${err.message} [${code}]` : err.message;
  }
  return String(err);
}

const COMMON = { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } as const;

/** parseArgs, with its complaints turned into usage errors (exit 2 plus the usage text). */
function parse<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function dirOf(positionals: string[]): string {
  if (positionals.length > 1) throw new UsageError(`unexpected argument '${positionals[1]}'`);
  const dir = positionals[0] ?? process.env.CAPTRAP_AUDIT_DIR;
  if (!dir) throw new UsageError('no audit directory given (argument or $CAPTRAP_AUDIT_DIR)');
  return dir;
}

function wantJson(flag: unknown): boolean {
  return flag === true || !process.stdout.isTTY;
}

function verify(argv: string[]): number {
  const { values, positionals } = parse(() =>
    parseArgs({
      args: argv,
      options: { ...COMMON, key: { type: 'string' }, pubkey: { type: 'string' }, 'pubkey-only': { type: 'boolean' } },
      allowPositionals: true,
      strict: true,
    }),
  );
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const dir = dirOf(positionals);
  // Say "no such directory" before complaining about the key that would live in it.
  let isDir: boolean;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    throw new Error(`audit directory ${dir} does not exist`);
  }
  if (!isDir) throw new Error(`${dir} is not a directory: give the audit log directory`);
  const pubkeyOnly = values['pubkey-only'] === true;
  if (pubkeyOnly && typeof values.key === 'string') throw new UsageError('--pubkey-only checks without the HMAC key: do not also pass --key');
  const pubkeyPath = typeof values.pubkey === 'string' ? values.pubkey : join(dir, AUDIT_PUBLIC_KEY_FILE);
  const publicKey = readEd25519PublicKey(pubkeyPath);
  // An explicit --key must be readable; the default one may be absent (a verifier holding only
  // the public key), and then only the public-key checks run — never reported as full success.
  const keyPath = typeof values.key === 'string' ? values.key : join(dir, AUDIT_KEY_FILE);
  const key = pubkeyOnly || (typeof values.key !== 'string' && !existsSync(keyPath)) ? undefined : readSecretFile(keyPath);
  // With the key, a large log's record MACs are checked on a second thread (same report, sooner).
  const report = key === undefined ? verifyAuditLog(dir, { publicKey, publicKeyOnly: true }) : verifyAuditLog(dir, { key, publicKey, parallel: true });
  if (wantJson(values.json)) process.stdout.write(JSON.stringify(report) + '\n');
  else process.stdout.write(formatReport(report));
  // Notes go to stderr so that --json output stays one parseable report.
  if (report.mode === 'public-key-only' && typeof values.pubkey !== 'string') {
    process.stderr.write(`captrap audit: note: public key read from ${pubkeyPath}, inside the log directory; whoever can rewrite the log can replace it — pass a trusted copy with --pubkey\n`);
  }
  if (report.mode === 'public-key-only' && report.checksPassed && !pubkeyOnly) {
    process.stderr.write(`captrap audit: note: no HMAC key at ${keyPath}, so record MACs were not checked; exit 3. Pass --key, or --pubkey-only to accept the public-key checks alone\n`);
  }
  if (report.ok) return 0;
  if (report.mode === 'public-key-only' && report.checksPassed) return pubkeyOnly ? 0 : 3;
  return 1;
}

export function formatReport(r: VerifyReport): string {
  const out: string[] = [];
  const range = r.firstSeq === null ? 'no records' : `seq ${r.firstSeq}..${r.lastSeq}`;
  out.push(`audit log ${r.dir}: ${r.segments.length} segment(s), ${r.records} record(s) (${range}), ${r.checkpoints} checkpoint(s)${r.closed ? ', closed cleanly' : ''}`);
  if (r.integrity.ok) out.push('integrity:    OK — every MAC and chain link verifies');
  else if (r.integrity.status === 'unchecked') {
    out.push('integrity:    UNCHECKED — no HMAC key: record MACs were NOT checked (a record edited with its MAC field left alone is not detected)');
    out.push('              checked with the public key: checkpoint signatures, the record at each checkpoint (seq and MAC), chain links as written');
  } else {
    const more = r.integrity.problemCount > 1 ? ` (+${r.integrity.problemCount - 1} more)` : '';
    out.push(`integrity:    FAILED — first bad: [${r.integrity.firstBad!.kind}] ${r.integrity.firstBad!.message}${more}`);
    for (const p of r.integrity.problems.slice(1, 10)) out.push(`              [${p.kind}] ${p.message}`);
  }
  if (r.completeness.ok) out.push(`completeness: OK — no gaps; tail covered by the checkpoint at seq ${r.lastCheckpointSeq}`);
  else {
    out.push('completeness: FAILED');
    for (const p of r.completeness.problems.slice(0, 10)) out.push(`              [${p.kind}] ${p.message}`);
    if (r.completeness.problems.length > 10) out.push(`              ... ${r.completeness.problems.length - 10} more`);
  }
  if (r.torn) out.push(`torn write:   ${r.torn.message} (not tampering; the writer cuts it off on next open)`);
  if (r.mode === 'public-key-only') {
    out.push(r.checksPassed ? 'result: PUBLIC-KEY CHECKS PASSED — record MACs unchecked (not a full verification)' : 'result: NOT VERIFIED (public-key checks failed)');
  } else out.push(r.ok ? 'result: VERIFIED' : 'result: NOT VERIFIED');
  return out.join('\n') + '\n';
}

function formatRecord(r: AuditRecord): string {
  const who = r.principal ?? '-';
  const cap = r.capabilityId ? ` cap=${r.capabilityId}` : '';
  const proc = r.process ? ` pid=${r.process.pid}` : '';
  const details = r.details ? ' ' + JSON.stringify(r.details) : '';
  return `${r.ts}  #${r.seq}  ${r.type.padEnd(20)}  ${who}${cap}${proc}${details}`;
}

function emit(records: AuditRecord[], json: boolean): void {
  if (records.length === 0) return;
  process.stdout.write(records.map((r) => (json ? JSON.stringify(r) : formatRecord(r))).join('\n') + '\n');
}

async function tail(argv: string[]): Promise<number> {
  const { values, positionals } = parse(() =>
    parseArgs({ args: argv, options: { ...COMMON, n: { type: 'string', short: 'n' }, follow: { type: 'boolean', short: 'f' } }, allowPositionals: true, strict: true }),
  );
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const dir = dirOf(positionals);
  const n = values.n === undefined ? 10 : Number(values.n);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`-n must be a non-negative integer, got '${String(values.n)}'`);
  const json = wantJson(values.json);
  // Only the last n are kept while reading (the reader streams): memory follows n, not the log.
  let last: AuditRecord[] = [];
  if (n > 0) {
    readAuditRecords(dir, (r) => {
      last.push(r);
      if (last.length >= 2 * n) last = last.slice(-n);
      return false;
    });
  }
  emit(last.slice(-n), json);
  if (values.follow) await follow(dir, json);
  return 0;
}

/** Polls the newest segment for appended lines until SIGINT/SIGTERM. */
async function follow(dir: string, json: boolean): Promise<void> {
  let segment = listSegments(dir).pop() ?? 1;
  let offset = sizeOf(join(dir, segmentFileName(segment)));
  let partial = '';
  let stop = false;
  const onSignal = () => {
    stop = true;
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    while (!stop) {
      await new Promise((r) => setTimeout(r, 250));
      const path = join(dir, segmentFileName(segment));
      const size = sizeOf(path);
      if (size > offset) {
        const fd = openSync(path, 'r');
        const buf = Buffer.alloc(size - offset);
        readSync(fd, buf, 0, buf.length, offset);
        closeSync(fd);
        offset = size;
        const lines = (partial + buf.toString('utf8')).split('\n');
        partial = lines.pop() ?? '';
        const recs: AuditRecord[] = [];
        for (const l of lines) if (l.startsWith(RECORD_PREFIX)) recs.push(JSON.parse(l) as AuditRecord);
        emit(recs, json);
      } else if (listSegments(dir).some((s) => s > segment)) {
        segment++;
        offset = 0;
        partial = '';
      }
    }
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
}

function sizeOf(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

function show(argv: string[]): number {
  const { values, positionals } = parse(() =>
    parseArgs({ args: argv, options: { ...COMMON, principal: { type: 'string' }, type: { type: 'string' }, capability: { type: 'string' } }, allowPositionals: true, strict: true }),
  );
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const dir = dirOf(positionals);
  const type = values.type;
  if (typeof type === 'string' && !(AUDIT_EVENT_TYPES as readonly string[]).includes(type)) {
    throw new UsageError(`unknown event type '${type}'; known: ${AUDIT_EVENT_TYPES.join(', ')}`);
  }
  const principal = values.principal;
  const capability = values.capability;
  const records = readAuditRecords(
    dir,
    (r) =>
      (type === undefined || r.type === (type as AuditEventType)) &&
      (principal === undefined || r.principal === principal || listed(r.details?.principals, principal)) &&
      (capability === undefined || r.capabilityId === capability || listed(r.details?.ids, capability)),
  );
  emit(records, wantJson(values.json));
  return 0;
}

/** A record about many principals or capabilities (a revocation cascade, a clean-up) lists them in its details. */
function listed(list: unknown, value: string): boolean {
  return Array.isArray(list) && list.includes(value);
}
