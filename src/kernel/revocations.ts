// The revocation store: an append-only file of revoked capability ids, fsynced before a
// revocation is reported done, so a revoked capability never comes back because captrap
// restarted. The one exception is a holder's death (`durable: 'soon'`): its cascade is in
// memory and in the file (the page cache: it survives a captrap crash) at once, and the
// fdatasync runs off the event loop, so the next death, call or kill is not held up by the disk. One line per id: {"id":"cap_...","at":<ms>,"reason":"...","expiresAt":<ms>}.
// `expiresAt` (the capability's own expiry, when known) lets `compact` drop a line once the
// capability could not be valid anyway; lines without it (older files, ids revoked on someone
// else's word) are kept for ever.
import { closeSync, fdatasync, fdatasyncSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, truncateSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { RevocationStoreError } from './errors.js';
import { quoteJson } from './json-quote.js';

export const REVOCATIONS_FILE = 'revocations.jsonl';

interface RevocationRecord {
  at: number;
  reason: string;
  expiresAt: number | undefined;
}

/** `,"at":…,"reason":…`: the same for every id of one revocation, encoded once. */
function encodeMiddle(at: number, reason: string): string {
  return ',"at":' + JSON.stringify(at) + ',"reason":' + JSON.stringify(reason);
}

// The same bytes JSON.stringify of { id, at, reason, expiresAt? } gives, without building the object.
// `plainId`: the id has the capability id form (cap_ and base64url), which JSON needs no escape for.
function encodeLineWith(id: string, middle: string, expiresAt: number | undefined, plainId = false): string {
  const quoted = plainId ? '"' + id + '"' : quoteJson(id);
  // For a finite number String() gives JSON.stringify's digits; anything else goes through JSON.
  const exp = expiresAt === undefined ? '' : ',"expiresAt":' + (Number.isFinite(expiresAt) ? String(expiresAt) : JSON.stringify(expiresAt));
  return '{"id":' + quoted + middle + exp + '}\n';
}

function encodeLine(id: string, r: RevocationRecord): string {
  return encodeLineWith(id, encodeMiddle(r.at, r.reason), r.expiresAt);
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

/**
 * 'now': the ids are on disk (write + fdatasync) before add returns. 'soon': written at once,
 * fdatasync'd in the background (coalesced); a later 'now' add or close syncs them too.
 */
export type Durability = 'now' | 'soon';

export class RevocationStore {
  private readonly revoked = new Map<string, RevocationRecord>();
  private fd: number | undefined;
  readonly path: string | undefined;
  /** A background fdatasync is running / another is wanted after it / bytes not yet synced. */
  private syncing = false;
  private syncAgain = false;
  private unsynced = false;
  /** Descriptors replaced while a background sync used them: closed when it ends (never reused under it). */
  private retired: number[] = [];
  private waiters: (() => void)[] = [];
  /** The last background fdatasync failure, until a later sync succeeds. */
  lastSyncError: Error | undefined;

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
  add(
    ids: Iterable<string>,
    reason: string,
    at: number,
    expiresAtOf: (id: string, index: number) => number | undefined = () => undefined,
    durable: Durability = 'now',
    /** The caller vouches that every id has the capability id form (the kernel's stored ones). */
    capabilityIds = false,
  ): string[] {
    const fresh: string[] = [];
    const persist = this.fd !== undefined;
    // Joined once: appending 1000 lines to one string costs twice as much (revoke-on-death).
    const lines: string[] = [];
    const middle = persist ? encodeMiddle(at, reason) : '';
    let index = -1;
    // One pass: memory first (even if the disk write fails, this process stops honouring them), the line text alongside.
    for (const id of ids) {
      index++;
      if (this.revoked.has(id)) continue; // also skips an id given twice
      const r: RevocationRecord = { at, reason, expiresAt: expiresAtOf(id, index) };
      this.revoked.set(id, r);
      fresh.push(id);
      if (persist) lines.push(encodeLineWith(id, middle, r.expiresAt, capabilityIds));
    }
    if (fresh.length === 0) return fresh;
    if (this.fd !== undefined) {
      try {
        writeSync(this.fd, lines.join(''));
        if (durable === 'now') {
          // Appends only: fdatasync also makes the new file size durable, and skips the timestamps fsync would add.
          fdatasyncSync(this.fd);
          this.synced();
        } else {
          this.unsynced = true;
          this.syncSoon();
        }
      } catch (err) {
        throw new RevocationStoreError(`cannot persist revocation to ${this.path}: ${(err as Error).message}`, { path: this.path, ids: fresh }, err);
      }
    }
    return fresh;
  }

  /** Everything written so far is synced (a sync in flight started before these bytes may still be running: it syncs nothing new). */
  private synced(): void {
    if (this.syncing) this.syncAgain = false;
    else this.unsynced = false;
    this.lastSyncError = undefined;
  }

  private syncSoon(): void {
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    const fd = this.fd;
    if (fd === undefined) return;
    this.syncing = true;
    this.unsynced = false;
    fdatasync(fd, (err) => {
      this.syncing = false;
      if (err) {
        this.lastSyncError = err;
        this.unsynced = true;
      }
      for (const old of this.retired.splice(0)) closeSync(old);
      if (this.syncAgain && this.fd !== undefined) {
        this.syncAgain = false;
        this.syncSoon();
        return;
      }
      for (const w of this.waiters.splice(0)) w();
    });
  }

  /** Resolves when no background fdatasync is running or wanted (a failed one stays in lastSyncError). */
  whenSynced(): Promise<void> {
    if (!this.syncing) return Promise.resolve();
    return new Promise((r) => this.waiters.push(r));
  }

  /** Closes a descriptor now, or after the background sync that may be using it. */
  private retire(fd: number): void {
    if (this.syncing) this.retired.push(fd);
    else closeSync(fd);
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
        this.retire(this.fd);
        this.fd = undefined;
        // The new file was written and fsynced whole: nothing of the old one needs a sync.
        this.unsynced = false;
        this.syncAgain = false;
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

  /** Syncs what a death cascade left unsynced, then closes. */
  close(): void {
    if (this.fd !== undefined) {
      if (this.unsynced || this.syncing) {
        try {
          fdatasyncSync(this.fd);
        } catch {
          // Closing anyway: the bytes are in the page cache, and lastSyncError already said so.
        }
      }
      this.retire(this.fd);
    }
    this.fd = undefined;
    this.unsynced = false;
    this.syncAgain = false;
  }
}
