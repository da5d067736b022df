// The nats backend with a local copy: every id a host learns from the bucket (or revokes itself)
// is also kept in its own <stateDir>/token-revocations.jsonl. A revocation is then never
// forgotten by a host that has seen it, across restarts too, even if its key disappears from the
// bucket (a mistaken purge, or someone with write access keeping a token alive); and at start the
// host puts back into the bucket what it holds and the bucket lacks, so hosts that never saw an
// id learn it again. The remote set still decides freshness: while it cannot vouch for itself,
// ids not in the local copy are refused (fail closed), ids in it are revoked as before.
import type { FileTokenRevocations } from './token-revocations-file.js';
import type { RevocationEntry, RevocationStatus, TokenRevocations } from './token-revocations.js';

export interface MirrorLog {
  warn(obj: unknown, msg?: string): void;
  error(obj: unknown, msg?: string): void;
}

export class MirroredRevocations implements TokenRevocations {
  private readonly unsubscribe: () => void;
  private pending = new Set<Promise<unknown>>();
  /** Ids put back into the bucket at start (the bucket had lost them). */
  restored = 0;

  private constructor(
    private readonly remote: TokenRevocations,
    private readonly local: FileTokenRevocations,
    private readonly log: MirrorLog,
  ) {
    this.unsubscribe = remote.onRevoked((entries) => this.keep(entries));
  }

  /**
   * Wraps an opened remote source and the local file. Puts back into the bucket the local ids it
   * lacks, when the remote set is known complete now (otherwise that waits for the next start).
   */
  static async open(remote: TokenRevocations, local: FileTokenRevocations, log: MirrorLog): Promise<MirroredRevocations> {
    const m = new MirroredRevocations(remote, local, log);
    // What the remote loaded before this copy listened (onRevoked reports only what comes after).
    const known = remote.snapshot?.() ?? [];
    if (known.length > 0) await local.record(known);
    await m.restore();
    return m;
  }

  private keep(entries: readonly RevocationEntry[]): void {
    const p = this.local.record(entries).catch((err: unknown) => {
      // Still refused here (the remote set has them); only the copy across a restart is missing.
      this.log.error({ err, ids: entries.map((e) => e.id) }, 'revocations: keeping a local copy of ids learned from the bucket failed');
    });
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
  }

  private async restore(): Promise<void> {
    if (!this.remote.status().healthy) return;
    const missing: string[] = [];
    for (const id of this.local.ids()) {
      try {
        if (!this.remote.isRevoked([id])) missing.push(id);
      } catch {
        return; // the remote set stopped vouching for itself meanwhile: next start
      }
    }
    if (missing.length === 0) return;
    this.log.warn({ count: missing.length }, 'revocations: ids this host keeps revoked are missing from the bucket; putting them back');
    try {
      await this.remote.revoke(missing, 'restored from a local copy: the bucket had lost it');
      this.restored = missing.length;
    } catch (err) {
      // Kept here regardless; the remote source retries what it could not put.
      this.log.error({ err, count: missing.length }, 'revocations: putting ids back into the bucket failed');
    }
  }

  isRevoked(ids: readonly string[]): boolean {
    // Revoked is the safe answer, so the local copy may give it even while the remote set is stale.
    if (this.local.isRevoked(ids)) return true;
    return this.remote.isRevoked(ids);
  }

  async revoke(ids: readonly string[], reason: string): Promise<RevocationEntry[]> {
    // On this host's disk first: whatever the bucket does, this host never forgets it.
    await this.local.revoke(ids, reason);
    return this.remote.revoke(ids, reason);
  }

  onRevoked(fn: (entries: RevocationEntry[]) => void): () => void {
    return this.remote.onRevoked(fn);
  }

  status(): RevocationStatus {
    const r = this.remote.status();
    const kept = this.local.status().revoked;
    return { ...r, revoked: Math.max(r.revoked, kept), detail: `${r.detail}; local copy ${this.local.path} (${kept} ids${this.restored > 0 ? `, ${this.restored} put back into the bucket at start` : ''})` };
  }

  async close(): Promise<void> {
    this.unsubscribe();
    await Promise.all([...this.pending]);
    await this.remote.close();
    await this.local.close();
  }
}
