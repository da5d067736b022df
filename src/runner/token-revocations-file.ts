// The local revocation set of ct2 tokens: <state-dir>/token-revocations.jsonl, one revoked block
// id per line, {"id":"<64 hex>","host":"...","at":<ms>,"reason":"..."}. A revocation is in the
// in-memory set (refused at once) before it is written, and reported done only once the line is
// fdatasync'ed, so a revoked token never comes back because the sidecar restarted. The file is
// read whole at start; a line that is not a revocation record stops the start (fail closed: a
// set we cannot read completely is a set we cannot vouch for), except a torn last line without
// its newline, which was never acknowledged and is cut off.
import { closeSync, fdatasyncSync, openSync, readFileSync, truncateSync, writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { CaptrapError } from '../errors.js';
import { RevocationsUnavailableError, type RevocationEntry, type RevocationStatus, type TokenRevocations } from './token-revocations.js';

export const TOKEN_REVOCATIONS_FILE = 'token-revocations.jsonl';

/** A ct2 revocation id: the hex SHA-256 of a block's signature. */
export const REVOCATION_ID = /^[0-9a-f]{64}$/;

export class TokenRevocationsFileError extends CaptrapError {
  constructor(message: string, details: Record<string, unknown>, cause?: unknown) {
    super('E_TOKEN_REVOCATIONS_FILE', message, details, cause === undefined ? undefined : { cause });
  }
}

function parseLine(line: string): RevocationEntry | undefined {
  let v: Partial<Record<keyof RevocationEntry, unknown>>;
  try {
    v = JSON.parse(line) as typeof v;
  } catch {
    return undefined;
  }
  if (v === null || typeof v !== 'object') return undefined;
  if (typeof v.id !== 'string' || !REVOCATION_ID.test(v.id)) return undefined;
  if (typeof v.host !== 'string' || typeof v.at !== 'number' || !Number.isFinite(v.at) || typeof v.reason !== 'string') return undefined;
  return { id: v.id, host: v.host, at: v.at, reason: v.reason };
}

function encodeLine(e: RevocationEntry): string {
  return JSON.stringify({ id: e.id, host: e.host, at: e.at, reason: e.reason }) + '\n';
}

export class FileTokenRevocations implements TokenRevocations {
  readonly path: string;
  private readonly revoked = new Map<string, RevocationEntry>();
  private fh: FileHandle | undefined;
  private closed = false;
  /** Appends run one after another: a line is never interleaved with another. */
  private chain: Promise<unknown> = Promise.resolve();
  private lastError: string | null = null;

  private constructor(
    stateDir: string,
    private readonly host: string,
  ) {
    this.path = join(stateDir, TOKEN_REVOCATIONS_FILE);
  }

  /** Loads `<stateDir>/token-revocations.jsonl` (creating it 0600 when missing). Throws TokenRevocationsFileError on a corrupt line. */
  static async open(stateDir: string, host: string): Promise<FileTokenRevocations> {
    const s = new FileTokenRevocations(stateDir, host);
    s.load();
    try {
      s.fh = await open(s.path, 'a', 0o600);
    } catch (err) {
      throw new TokenRevocationsFileError(`cannot open ${s.path} for appending: ${(err as Error).message}`, { path: s.path }, err);
    }
    return s;
  }

  private load(): void {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new TokenRevocationsFileError(`cannot read ${this.path}: ${(err as Error).message}`, { path: this.path }, err);
    }
    const lines = text.split('\n');
    const tail = lines.pop()!; // '' when the file ends with a newline
    let offset = 0;
    for (const [i, line] of lines.entries()) {
      if (line.trim() !== '') {
        const e = parseLine(line);
        if (!e) {
          throw new TokenRevocationsFileError(
            `${this.path}: line ${i + 1} is not a token revocation record ({"id":"<64 hex>","host","at","reason"}); refusing to start with a revocation set it cannot read. Fix or remove the line (the ids on the other lines stay revoked)`,
            { path: this.path, line: i + 1 },
          );
        }
        this.revoked.set(e.id, e);
      }
      offset += Buffer.byteLength(line) + 1;
    }
    if (tail === '') return;
    // A last line without its newline: a write cut short before its fdatasync returned, so never
    // reported done. A whole record keeps its id (only the newline is missing); a torn one goes.
    const e = parseLine(tail);
    const fd = openSync(this.path, 'r+');
    try {
      truncateSync(this.path, offset);
      if (e) {
        this.revoked.set(e.id, e);
        writeSync(fd, encodeLine(e), offset);
        fdatasyncSync(fd);
      }
    } finally {
      closeSync(fd);
    }
  }

  isRevoked(ids: readonly string[]): boolean {
    if (this.closed) throw new RevocationsUnavailableError(`the token revocation file ${this.path} is closed`);
    for (const id of ids) if (this.revoked.has(id)) return true;
    return false;
  }

  /** The entry of a revoked id, if it is. */
  entry(id: string): RevocationEntry | undefined {
    return this.revoked.get(id);
  }

  revoke(ids: readonly string[], reason: string): Promise<RevocationEntry[]> {
    if (this.closed || !this.fh) return Promise.reject(new RevocationsUnavailableError(`the token revocation file ${this.path} is closed`));
    for (const id of ids) {
      if (typeof id !== 'string' || !REVOCATION_ID.test(id)) return Promise.reject(new TokenRevocationsFileError(`'${String(id).slice(0, 80)}' is not a revocation id (64 hex characters)`, { id: String(id).slice(0, 80) }));
    }
    const at = Date.now();
    const out: RevocationEntry[] = [];
    const fresh: RevocationEntry[] = [];
    for (const id of new Set(ids)) {
      const known = this.revoked.get(id);
      if (known) {
        out.push(known);
        continue;
      }
      const e: RevocationEntry = { id, host: this.host, at, reason };
      // Refused from this moment, before the line is on disk.
      this.revoked.set(id, e);
      fresh.push(e);
      out.push(e);
    }
    return this.append(fresh, out);
  }

  /**
   * Keeps entries revoked elsewhere (their host, time and reason as given): the nats backend's
   * local copy, so a host never forgets an id it has seen. Resolves once they are on disk.
   */
  record(entries: readonly RevocationEntry[]): Promise<RevocationEntry[]> {
    if (this.closed || !this.fh) return Promise.reject(new RevocationsUnavailableError(`the token revocation file ${this.path} is closed`));
    const fresh: RevocationEntry[] = [];
    for (const e of entries) {
      if (!REVOCATION_ID.test(e.id) || this.revoked.has(e.id)) continue;
      const copy: RevocationEntry = { id: e.id, host: e.host, at: e.at, reason: e.reason };
      this.revoked.set(e.id, copy);
      fresh.push(copy);
    }
    return this.append(fresh, fresh);
  }

  /** Every id this file holds. */
  ids(): string[] {
    return [...this.revoked.keys()];
  }

  private append(fresh: RevocationEntry[], out: RevocationEntry[]): Promise<RevocationEntry[]> {
    if (fresh.length === 0) return Promise.resolve(out);
    const fh = this.fh!;
    const write = this.chain.then(async () => {
      try {
        await fh.appendFile(fresh.map(encodeLine).join(''));
        await fh.datasync();
        this.lastError = null;
      } catch (err) {
        this.lastError = (err as Error).message;
        throw new TokenRevocationsFileError(`cannot write ${this.path}: ${(err as Error).message} (the ids are refused by this sidecar until it restarts)`, { path: this.path }, err);
      }
      return out;
    });
    this.chain = write.catch(() => {});
    return write;
  }

  onRevoked(): () => void {
    // One host's file: nothing is learned from elsewhere.
    return () => {};
  }

  status(): RevocationStatus {
    return {
      backend: 'file',
      revoked: this.revoked.size,
      healthy: !this.closed,
      // A local file is the whole set by construction.
      lastSyncAt: this.closed ? null : Date.now(),
      detail: this.closed ? `closed (${this.path})` : this.lastError ? `${this.path} (last write failed: ${this.lastError})` : this.path,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.chain;
    await this.fh?.close();
    this.fh = undefined;
  }
}
