// The revocation store: an append-only file of revoked capability ids, fsynced before a
// revocation is reported done, so a revoked capability never comes back because captrap
// restarted. One line per id: {"id":"cap_...","at":<ms>,"reason":"..."}.
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, truncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { RevocationStoreError } from './errors.js';

export const REVOCATIONS_FILE = 'revocations.jsonl';

export class RevocationStore {
  private readonly revoked = new Set<string>();
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
        writeSync(this.fd, JSON.stringify({ id: torn.id, at: Date.now(), reason: 'recovered record' }) + '\n');
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
      let id: unknown;
      try {
        id = (JSON.parse(line) as { id?: unknown }).id;
      } catch {
        id = undefined;
      }
      if (typeof id !== 'string') {
        throw new RevocationStoreError(`${path}:${i + 1}: not a revocation record; refusing to start with a damaged revocation list`, {
          path,
          line: i + 1,
        });
      }
      this.revoked.add(id);
    });
    const torn = lines[lines.length - 1]!;
    if (torn.length === 0) return undefined;
    let tornId: string | undefined;
    try {
      const id = (JSON.parse(torn) as { id?: unknown }).id;
      // A complete record that only lacks its newline still counts: revoking is the safe side.
      if (typeof id === 'string') tornId = id;
    } catch {
      /* torn write: never acknowledged */
    }
    if (tornId) this.revoked.add(tornId);
    return { keepBytes: Buffer.byteLength(text) - Buffer.byteLength(torn), id: tornId };
  }

  has(id: string): boolean {
    return this.revoked.has(id);
  }

  get size(): number {
    return this.revoked.size;
  }

  /** Records ids as revoked: in memory at once, on disk with one write and one fsync. Returns the newly revoked. */
  add(ids: readonly string[], reason: string, at: number): string[] {
    const fresh = ids.filter((id) => !this.revoked.has(id));
    if (fresh.length === 0) return [];
    // Memory first: even if the disk write fails, this process stops honouring them.
    for (const id of fresh) this.revoked.add(id);
    if (this.fd !== undefined) {
      const text = fresh.map((id) => JSON.stringify({ id, at, reason }) + '\n').join('');
      try {
        writeSync(this.fd, text);
        fsyncSync(this.fd);
      } catch (err) {
        throw new RevocationStoreError(`cannot persist revocation to ${this.path}: ${(err as Error).message}`, { path: this.path, ids: fresh }, err);
      }
    }
    return fresh;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}
