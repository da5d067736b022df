// capabilities.list on the agent channel is paginated (limit: default 100, max 1000; cursor ->
// nextCursor), and serve prunes expired capabilities on a timer (pruneIntervalMs): after many
// request+revoke cycles with short TTLs the list, the book and the kernel are back to baseline.
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REVOCATIONS_FILE } from '../../src/kernel/revocations.js';
import { AdminClient } from '../../src/runner/admin-client.js';
import { RPC_ERROR } from '../../src/runner/jsonrpc.js';
import { connectAll, Harness, host, rpcError, toolCap, until } from './inproc.js';

const h = new Harness('page');
afterAll(() => h.cleanup(), 60_000);

type CapList = { capabilities: { id: string }[]; nextCursor: string | null };
const REQUEST = { resource: { type: 'tool', pattern: '*' }, operations: ['invoke'], constraints: { allowedTools: ['echo'] } };

describe.skipIf(host.layout === 'none')('capabilities.list pages and serve prunes', () => {
  it('pages return every capability exactly once; expired ones are pruned on the timer', async () => {
    const c = h.control('p');
    const s = await h.start(h.config([{ id: 'p', control: c, requestable: [toolCap(['echo'])] }], { pruneIntervalMs: 100 }));
    const a = (await connectAll([c])).get('p')!.conn;
    const ids = new Set([((await a.call('capabilities.list', {})) as CapList).capabilities[0]!.id]);
    for (let i = 0; i < 249; i++) ids.add(((await a.call('capabilities.request', REQUEST)) as { id: string }).id);

    const collect = async (limit?: number) => {
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const r = (await a.call('capabilities.list', { ...(limit ? { limit } : {}), ...(cursor ? { cursor } : {}) })) as CapList;
        seen.push(...r.capabilities.map((x) => x.id));
        cursor = r.nextCursor;
        pages++;
      } while (cursor);
      return { seen, pages };
    };
    for (const [limit, pages] of [[undefined, 3], [1000, 1], [33, 8]] as const) {
      const { seen, pages: n } = await collect(limit);
      expect(n).toBe(pages);
      expect(seen).toHaveLength(250);
      expect(new Set(seen)).toEqual(ids);
    }
    // The admin socket pages the same way when asked to (without limit/cursor: the whole tree).
    const admin = await AdminClient.connect(s.config.adminSocket);
    try {
      const seen: string[] = [];
      let cursor: string | null = null;
      do {
        const r: { capabilities: { id: string }[]; nextCursor: string | null } = await admin.call('capabilities.list', { principal: 'p', limit: 40, ...(cursor ? { cursor } : {}) });
        expect(r.capabilities.length).toBeLessThanOrEqual(40);
        seen.push(...r.capabilities.map((x) => x.id));
        cursor = r.nextCursor;
      } while (cursor);
      expect(seen).toHaveLength(250);
      expect(new Set(seen)).toEqual(ids);
      expect((await admin.capabilities('p')).capabilities).toHaveLength(250);
    } finally {
      admin.close();
    }
    expect((await rpcError(a.call('capabilities.list', { limit: 1001 }))).rpcCode).toBe(RPC_ERROR.INVALID_PARAMS);
    expect((await rpcError(a.call('capabilities.list', { cursor: 'forged' }))).rpcCode).toBe(RPC_ERROR.INVALID_PARAMS);

    // Request+revoke cycles with a short TTL: they pile up until they expire, then the timer prunes them.
    const base = { book: s.book.size, kernel: s.kernel.size, revoked: s.kernel.stats().revoked };
    const revFile = join(s.config.stateDir, REVOCATIONS_FILE);
    for (let i = 0; i < 300; i++) {
      const x = (await a.call('capabilities.request', { ...REQUEST, ttlMs: 400 })) as { id: string };
      await a.call('capabilities.revoke', { capability: x.id });
    }
    expect(s.book.size).toBeGreaterThan(base.book + 50); // the oldest may already be pruned
    await until(() => s.book.size === base.book && s.kernel.size === base.kernel, 5000);
    expect(s.kernel.stats().revoked).toBe(base.revoked);
    expect(statSync(revFile).size).toBe(0);
    const { seen } = await collect(1000);
    expect(new Set(seen)).toEqual(ids);
  }, 60_000);
});
