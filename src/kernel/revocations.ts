// The revocation store: an append-only file of revoked capability ids, fsynced before a
// revocation is reported done, so a revoked capability never comes back because captrap
// restarted. One line per id: {"id":"cap_...","at":<ms>,"reason":"...","expiresAt":<ms>}.
// `expiresAt` (the capability's own expiry, when known) lets `compact` drop a line once the
// capability could not be valid anyway; lines without it (older files, ids revoked on someone
// else's word) are kept for ever.
import { closeSync, fdatasyncSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, truncateSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { RevocationStoreError } from './errors.js';

export const REVOCATIONS_FILE = 'revocations.jsonl';

interface RevocationRecord {
  at: number;
  reason: string;
  expiresAt: number | undefined;
}

function encodeLine(id: string, r: RevocationRecord): string {
  // The same bytes JSON.stringify of { id, at, reason, expiresAt? } gives, without building the object.
  const head = '{"id":' + JSON.stringify(id) + ',"at":' + JSON.stringify(r.at) + ',"reason":' + JSON.stringify(r.reason);
  return (r.expiresAt === undefined ? head : head + ',"expiresAt":' + JSON.stringify(r.expiresAt)) + '}\n';
}

/** The fields of a line we rely on; undefined when it is not a revocation record. */
function decodeLine(line: string): { id: string; record: RevocationRecord } | undefined {
  let v: { id?: unknown; at?: unknown; reason?: unknown; expiresAt?: unknown };
  try {
    v = JSON.parse(line) as typeof v;
  } catch {
    return undefined;
  }
  if (typeof v?.id !== 'string') return undefined;
  return {
    id: v.id,
    record: {
      at: typeof v.at === 'number' ? v.at : 0,
      reason: typeof v.reason === 'string' ? v.reason : '',
      expiresAt: typeof v.expiresAt === 'number' && Number.isFinite(v.expiresAt) ? v.expiresAt : undefined,
    },
  };
}

export class RevocationStore {
  private readonly revoked = new Map<string, RevocationRecord>();
  private fd: number | undefined;
  readonly path: string | undefined;

  /** Without `stateDir` revocations live in memory only (tests, benchmarks, embedding). */
  constructor(stateDir?: string) {
    if (stateDir === undefined) return;
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    this.path = join(stateDir, REVOCATIONS_FILE);
    const torn = this.load(this.path);
    try {
      // Cut a torn tail off so our records start on a line of their own; a tail that was a
      // whole record (only its newline missing) is written again below.
      if (torn) truncateSync(this.path, torn.keepBytes);
      this.fd = openSync(this.path, 'a', 0o600);
      if (torn?.id) {
        const r = this.revoked.get(torn.id)!;
        writeSync(this.fd, encodeLine(torn.id, { at: Date.now(), reason: 'recovered record', expiresAt: r.expiresAt }));
        fsyncSync(this.fd);
      }
    } catch (err) {
      throw new RevocationStoreError(`cannot open ${this.path} for appending: ${(err as Error).message}`, { path: this.path }, err);
    }
  }

  /** Loads the records; describes a partial last line, if any. */
  private load(path: string): { keepBytes: number; id: string | undefined } | undefined {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new RevocationStoreError(`cannot read ${path}: ${(err as Error).message}`, { path }, err);
    }
    const lines = text.split('\n');
    // A last line without its newline is a write cut short by a crash before fsync returned:
    // that revocation was never reported done. Everything before it must parse (fail closed).
    const complete = lines.slice(0, -1);
    complete.forEach((line, i) => {
      const d = decodeLine(line);
      if (!d) {
        throw new RevocationStoreError(`${path}:${i + 1}: not a revocation record; refusing to start with a damaged revocation list`, {
          path,
          line: i + 1,
        });
      }
      this.remember(d.id, d.record);
    });
    const torn = lines[lines.length - 1]!;
    if (torn.length === 0) return undefined;
    // A complete record that only lacks its newline still counts: revoking is the safe side.
    const d = decodeLine(torn);
    if (d) this.remember(d.id, d.record);
    return { keepBytes: Buffer.byteLength(text) - Buffer.byteLength(torn), id: d?.id };
  }

  /** A later line for the same id may only add what an earlier one lacked (its expiry). */
  private remember(id: string, r: RevocationRecord): void {
    const had = this.revoked.get(id);
    if (!had) this.revoked.set(id, r);
    else if (had.expiresAt === undefined && r.expiresAt !== undefined) had.expiresAt = r.expiresAt;
  }

  has(id: string): boolean {
    return this.revoked.has(id);
  }

  get size(): number {
    return this.revoked.size;
  }

  /** The expiry stored with a revocation, if any. */
  expiresAtOf(id: string): number | undefined {
    return this.revoked.get(id)?.expiresAt;
  }

  /**
   * Records ids as revoked: in memory at once, on disk with one write and one fsync. Returns
   * the newly revoked. `expiresAtOf` gives each capability's own expiry, when known.
   */
  add(ids: Iterable<string>, reason: string, at: number, expiresAtOf: (id: string) => number | undefined = () => undefined): string[] {
    const fresh: string[] = [];
    const persist = this.fd !== undefined;
    let text = '';
    // One pass: memory first (even if the disk write fails, this process stops honouring them), the line text alongside.
    for (const id of ids) {
      if (this.revoked.has(id)) continue; // also skips an id given twice
      const r: RevocationRecord = { at, reason, expiresAt: expiresAtOf(id) };
      this.revoked.set(id, r);
      fresh.push(id);
      if (persist) text += encodeLine(id, r);
    }
    if (fresh.length === 0) return fresh;
    if (this.fd !== undefined) {
      try {
        writeSync(this.fd, text);
        // Appends only: fdatasync also makes the new file size durable, and skips the timestamps fsync would add.
        fdatasyncSync(this.fd);
      } catch (err) {
        throw new RevocationStoreError(`cannot persist revocation to ${this.path}: ${(err as Error).message}`, { path: this.path, ids: fresh }, err);
      }
    }
    return fresh;
  }

  /**
   * Forgets revocations of capabilities that have expired by `now` (an expired capability is
   * refused anyway, and a descendant never outlives its ancestors, so nothing can become valid
   * again) and rewrites the file with the rest: a new file, fsynced, renamed over the old one,
   * the directory fsynced. A crash at any point leaves either the old list or the new one.
   * `expiresAtOf` supplies expiries the file lacks. Returns the number of ids forgotten.
   */
  compact(now: number, expiresAtOf: (id: string) => number | undefined = () => undefined): number {
    const keep: [string, RevocationRecord][] = [];
    const drop: string[] = [];
    for (const [id, r] of this.revoked) {
      const expiresAt = r.expiresAt ?? expiresAtOf(id);
      if (expiresAt !== undefined && expiresAt <= now) drop.push(id);
      else keep.push([id, { ...r, expiresAt }]);
    }
    if (this.path !== undefined) {
      const tmp = `${this.path}.tmp`;
      let fd: number | undefined;
      try {
        fd = openSync(tmp, 'w', 0o600);
        writeSync(fd, keep.map(([id, r]) => encodeLine(id, r)).join(''));
        fsyncSync(fd);
        closeSync(fd);
        fd = undefined;
        renameSync(tmp, this.path);
        const dir = openSync(dirname(this.path), 'r');
        try {
          fsyncSync(dir);
        } finally {
          closeSync(dir);
        }
      } catch (err) {
        if (fd !== undefined) closeSync(fd);
        rmSync(tmp, { force: true });
        throw new RevocationStoreError(`cannot compact ${this.path}: ${(err as Error).message}`, { path: this.path }, err);
      }
      // The old descriptor points at the replaced file: append to the new one from now on.
      if (this.fd !== undefined) {
        closeSync(this.fd);
        this.fd = undefined;
        try {
          this.fd = openSync(this.path, 'a', 0o600);
        } catch (err) {
          throw new RevocationStoreError(`cannot reopen ${this.path} after compacting: ${(err as Error).message}`, { path: this.path }, err);
        }
      }
    }
    for (const id of drop) this.revoked.delete(id);
    for (const [id, r] of keep) this.revoked.set(id, r);
    return drop.length;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}
