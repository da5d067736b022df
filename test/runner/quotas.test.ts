// Quotas that cannot be turned on others. Delegations count against the giver, so filling
// another agent with delegated capabilities neither blocks the receiver's own requests nor lets
// the giver go on without bound. Sub-agents count against the configured agent at the root of
// the spawning agent's tree (maxSubAgentsPerAgent), so spawning until maxAgents cannot block
// another agent's spawns.
import { afterAll, describe, expect, it } from 'vitest';
import { RPC_ERROR } from '../../src/runner/jsonrpc.js';
import { connectAll, Harness, host, procCap, RELAY, rpcError, toolCap } from './inproc.js';

const h = new Harness('quota');
afterAll(() => h.cleanup(), 60_000);

type CapView = { id: string; token: string; principal: string; resource: { type: string }; holder: { pid: number } | null; revoked: boolean };
type CapList = { capabilities: CapView[]; nextCursor: string | null };

describe.skipIf(host.layout === 'none')('quotas', () => {
  it("delegating into another agent fills the giver's quota, never the receiver's: the receiver's own requests still succeed", async () => {
    const ca = h.control('a');
    const cb = h.control('b');
    const echoTemplate = toolCap(['echo']);
    const s = await h.start(
      h.config(
        [
          { id: 'a', control: ca },
          { id: 'b', control: cb, requestable: [echoTemplate] },
        ],
        { maxCapabilitiesPerAgent: 8 },
      ),
    );
    const agents = await connectAll([ca, cb]);
    const a = agents.get('a')!.conn;
    const b = agents.get('b')!.conn;
    const aCap = ((await a.call('capabilities.list', {})) as CapList).capabilities[0]!.id;

    // A delegates into B as much as it may: 8, then its own limit stops it.
    for (let i = 0; i < 8; i++) {
      const c = (await a.call('capabilities.delegate', { capability: aCap, to: 'b' })) as CapView;
      expect(c.principal).toBe('b');
    }
    const ninth = await rpcError(a.call('capabilities.delegate', { capability: aCap, to: 'b' }));
    expect(ninth.rpcCode).toBe(RPC_ERROR.ACCESS_DENIED);
    expect(ninth.data).toMatchObject({ code: 'E_TOO_MANY_CAPABILITIES' });
    expect(ninth.message).toMatch(/'a' has delegated to others 8/);
    expect(((await b.call('capabilities.list', {})) as CapList).capabilities.length).toBe(9);

    // B's own requests are unaffected: it still has its whole quota (1 configured + 7 more).
    for (let i = 0; i < 7; i++) {
      const own = (await b.call('capabilities.request', { resource: { type: 'tool', pattern: '*' }, operations: ['invoke'], constraints: { allowedTools: ['echo'] } })) as CapView;
      expect(own.principal).toBe('b');
    }
    const over = await rpcError(b.call('capabilities.request', { resource: { type: 'tool', pattern: '*' }, operations: ['invoke'], constraints: { allowedTools: ['echo'] } }));
    expect(over.data).toMatchObject({ code: 'E_TOO_MANY_CAPABILITIES' });

    // Revoking what it gave frees the giver's quota again.
    const given = ((await b.call('capabilities.list', { limit: 1000 })) as CapList).capabilities.filter((c) => c.principal === 'b');
    const fromA = given.filter((c) => s.book.get(c.id)?.parentId === aCap);
    expect(fromA).toHaveLength(8);
    await a.call('capabilities.revoke', { capability: fromA[0]!.id });
    expect(((await a.call('capabilities.delegate', { capability: aCap, to: 'b' })) as CapView).principal).toBe('b');
  }, 60_000);

  it("each agent's tree has its own sub-agent quota: A spawning all it may does not block B's spawns", async () => {
    const ca = h.control('sa');
    const cb = h.control('sb');
    const subs = h.control('subs');
    const s = await h.start(
      h.config(
        [
          { id: 'a', control: ca, capabilities: [toolCap(['echo']), procCap()] },
          { id: 'b', control: cb, capabilities: [toolCap(['echo']), procCap()] },
        ],
        // Before per-agent quotas, A could spawn until maxAgents (6 here) and B could spawn nothing.
        { maxAgents: 6, maxSubAgentsPerAgent: 2 },
      ),
    );
    const agents = await connectAll([ca, cb]);
    const a = agents.get('a')!.conn;
    const b = agents.get('b')!.conn;
    const procOf = async (c: typeof a) => ((await c.call('capabilities.list', {})) as CapList).capabilities.find((x) => x.resource.type === 'process')!.id;
    const aProc = await procOf(a);
    const bProc = await procOf(b);
    const spawn = (c: typeof a, id: string, capability: string, capabilities: unknown[] = []) =>
      c.call('agents.spawn', { id, capability, command: 'node', args: [RELAY, subs.path], limits: { memory: '128M', pids: 48 }, capabilities });

    // A's first sub-agent gets a process capability of its own: its spawns count against A's tree too.
    const a1 = (await spawn(a, 'w1', aProc, [{ capability: aProc, operations: ['spawn'] }])) as { id: string; capabilities: CapView[] };
    expect(a1.id).toBe('a/w1');
    const w1 = await subs.next();
    expect(w1.id).toBe('a/w1');
    expect(((await spawn(w1.conn, 'x', a1.capabilities[0]!.id)) as { id: string }).id).toBe('a/w1/x');
    await subs.next();
    const third = await rpcError(spawn(a, 'w3', aProc));
    expect(third.rpcCode).toBe(RPC_ERROR.UNAVAILABLE);
    expect(third.data).toMatchObject({ code: 'E_TOO_MANY_SUBAGENTS' });
    const nested = await rpcError(spawn(w1.conn, 'y', a1.capabilities[0]!.id));
    expect(nested.data).toMatchObject({ code: 'E_TOO_MANY_SUBAGENTS' });

    // B's quota is its own.
    for (const id of ['v1', 'v2']) {
      expect(((await spawn(b, id, bProc)) as { id: string }).id).toBe(`b/${id}`);
      await subs.next();
    }
    expect((await rpcError(spawn(b, 'v3', bProc))).data).toMatchObject({ code: 'E_TOO_MANY_SUBAGENTS' });
    expect(s.supervisor.running().map((x) => x.id).sort()).toEqual(['a', 'a/w1', 'a/w1/x', 'b', 'b/v1', 'b/v2']);

    // A sub-agent that exits frees its slot.
    const x = s.supervisor.get('a/w1/x')!;
    s.supervisor.kill('a/w1/x');
    await x.done;
    expect(((await spawn(a, 'w3', aProc)) as { id: string }).id).toBe('a/w3');
  }, 60_000);
});
