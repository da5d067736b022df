// Memory over time: request+revoke cycles with short TTLs must not grow the kernel, the
// sidecar's capability book or the revocation file for ever. A prune (on serve's timer) brings
// all three back to their baseline; capability lists are paginated.
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { REVOCATIONS_FILE } from '../../src/kernel/revocations.js';
import { RpcError } from '../../src/runner/jsonrpc.js';
import { paginate, startMaintenance } from '../../src/runner/server.js';
import { CapabilityBook } from '../../src/runner/supervisor.js';
import type { SidecarConfig } from '../../src/runner/config.js';
import { makeKernel, tempDir } from './helpers.js';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

const TOOL = { type: 'tool' as const, pattern: 'echo' };
const holder = { pid: 4242, startTime: 99 };

describe('pruning expired capabilities', () => {
  it('after 5 000 request+revoke cycles with short TTLs and a prune, kernel, book and revocation file are back to baseline', () => {
    const { dir, cleanup } = tempDir('prune');
    cleanups.push(cleanup);
    let now = 1_000_000;
    const { kernel } = makeKernel({ stateDir: dir, clock: () => now });
    cleanups.push(() => kernel.close());
    const book = new CapabilityBook(kernel);
    startMaintenance({ kernel, book, config: { pruneIntervalMs: 3_600_000 } as SidecarConfig });
    // What stays: a long-lived capability, and a long-lived revoked one (its revocation must stay on file).
    book.add(kernel.requestCapability('agent', TOOL, ['invoke'], {}, { ttlMs: 86_400_000, holder }));
    const kept = kernel.requestCapability('agent', TOOL, ['invoke'], {}, { ttlMs: 86_400_000, holder });
    book.add(kept);
    kernel.revokeCapability(kept.id, 'test');
    const file = join(dir, REVOCATIONS_FILE);
    const base = { kernel: kernel.size, book: book.size, revoked: kernel.stats().revoked, fileBytes: statSync(file).size, listed: book.tree('agent').length };

    for (let i = 0; i < 5_000; i++) {
      const c = kernel.requestCapability('agent', TOOL, ['invoke'], {}, { ttlMs: 1_000, holder });
      book.add(c);
      const child = kernel.delegate(c.id, 'agent/worker', { ttlMs: 500 });
      book.add(child);
      kernel.revokeCapability(c.id, 'cycle');
      now += 1;
    }
    expect(kernel.size).toBe(base.kernel + 10_000);
    expect(book.size).toBe(base.book + 10_000);
    expect(kernel.stats().revoked).toBe(base.revoked + 10_000);
    const grown = statSync(file).size;
    expect(grown).toBeGreaterThan(base.fileBytes + 10_000 * 50);

    now += 2_000; // every cycle's capability has expired
    expect(kernel.pruneExpired()).toBe(10_000);
    expect(kernel.size).toBe(base.kernel);
    expect(book.size).toBe(base.book);
    expect(book.principals()).toEqual(['agent']);
    expect(kernel.stats().revoked).toBe(base.revoked);
    expect(statSync(file).size).toBe(base.fileBytes);
    expect(book.tree('agent')).toHaveLength(base.listed);
    // The revocation that still matters survived the compaction, on disk too.
    kernel.close();
    const { kernel: again } = makeKernel({ stateDir: dir, clock: () => now });
    cleanups.push(() => again.close());
    expect(again.isRevoked(kept.id)).toBe(true);
    expect(again.stats().revoked).toBe(base.revoked);
  });

  it('startMaintenance prunes on a timer (pruneIntervalMs) and kernel.close() stops it', async () => {
    const { dir, cleanup } = tempDir('prune-timer');
    cleanups.push(cleanup);
    const { kernel } = makeKernel({ stateDir: dir });
    const book = new CapabilityBook(kernel);
    startMaintenance({ kernel, book, config: { pruneIntervalMs: 25 } as SidecarConfig });
    startMaintenance({ kernel, book, config: { pruneIntervalMs: 25 } as SidecarConfig }); // idempotent
    expect(kernel.pruning).toBe(true);
    for (let i = 0; i < 100; i++) {
      const c = kernel.requestCapability('a', TOOL, ['invoke'], {}, { ttlMs: 30 });
      book.add(c);
      kernel.revokeCapability(c.id, 'x');
    }
    expect(book.size).toBe(100);
    const t0 = Date.now();
    while ((book.size > 0 || kernel.size > 0) && Date.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 10));
    expect([kernel.size, book.size, kernel.stats().revoked]).toEqual([0, 0, 0]);
    expect(statSync(join(dir, REVOCATIONS_FILE)).size).toBe(0);
    kernel.close();
    expect(kernel.pruning).toBe(false);
  });
});

describe('paginate', () => {
  // Issue order is the kernel's issueSeq; the list comes in any order.
  const items = Array.from({ length: 2345 }, (_, i) => ({ id: `cap_${String(i).padStart(22, '0')}`, seq: i + 1 }));
  const shuffled = [...items].sort((a, b) => ((a.seq * 7919) % 2345) - ((b.seq * 7919) % 2345));
  const bySeq = (x: { seq: number }) => x.seq;
  const all = (list: readonly { id: string; seq: number }[], limit?: number) => {
    const out: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    for (;;) {
      const { page, nextCursor } = paginate(list, { ...(limit !== undefined ? { limit } : {}), ...(cursor !== undefined ? { cursor } : {}) }, bySeq);
      pages++;
      out.push(...page.map((p) => p.id));
      if (nextCursor === null) break;
      cursor = nextCursor;
    }
    return { out, pages };
  };

  it('returns every entry exactly once, in issue order, whatever the page size (default 100, max 1000)', () => {
    for (const [limit, pages] of [[undefined, 24], [1000, 3], [7, 335], [2345, 3], [5000, 3]] as const) {
      const { out, pages: n } = all(shuffled, limit);
      expect(out).toEqual(items.map((i) => i.id));
      expect(n).toBe(pages);
    }
    expect(paginate([], {}, bySeq)).toEqual({ page: [], nextCursor: null });
    expect(paginate(items.slice(0, 100), {}, bySeq).nextCursor).toBeNull();
  });

  it('a cursor survives entries pruned or issued between pages; a forged cursor is INVALID_PARAMS', () => {
    const list = items.slice(0, 300);
    const first = paginate(list, {}, bySeq);
    const last = first.page[first.page.length - 1]!.id;
    // The last entry returned and an earlier one are pruned, one is issued.
    const changed = list.filter((x) => x.id !== last && x.id !== list[10]!.id).concat([{ id: 'cap_new', seq: 99_999 }]);
    const rest: string[] = [];
    let cursor: string | null = first.nextCursor;
    while (cursor !== null) {
      const p = paginate(changed, { cursor }, bySeq);
      rest.push(...p.page.map((x) => x.id));
      cursor = p.nextCursor;
    }
    expect(rest).toEqual(list.slice(100).map((x) => x.id).concat(['cap_new']));
    for (const bad of ['nope', Buffer.from('{"s":-1}').toString('base64url'), Buffer.from('{"a":1}').toString('base64url')]) {
      const err = (() => {
        try {
          paginate(list, { cursor: bad }, bySeq);
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      expect(err).toBeInstanceOf(RpcError);
      expect((err as RpcError).rpcCode).toBe(-32602);
    }
  });

  it("the kernel's issue order puts parents before children and survives pruning and re-binding", () => {
    let now = 1_000;
    const { kernel } = makeKernel({ clock: () => now });
    const root = kernel.requestCapability('a', TOOL, ['invoke'], {}, { ttlMs: 10 });
    const keep = kernel.requestCapability('a', TOOL, ['invoke'], {}, { ttlMs: 1_000_000 });
    const child = kernel.delegate(keep.id, 'a/w');
    const seqChild = kernel.issueSeq(child.id)!;
    expect(kernel.issueSeq(root.id)!).toBeLessThan(kernel.issueSeq(keep.id)!);
    expect(kernel.issueSeq(keep.id)!).toBeLessThan(seqChild);
    kernel.bindToProcess(child.id, holder);
    expect(kernel.issueSeq(child.id)).toBe(seqChild);
    now += 100;
    kernel.pruneExpired();
    expect(kernel.issueSeq(root.id)).toBeUndefined();
    expect(kernel.issueSeq(kernel.requestCapability('a', TOOL, ['invoke']).id)!).toBeGreaterThan(seqChild);
  });
});
