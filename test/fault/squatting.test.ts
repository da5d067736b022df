// Squatting: a delegation must reach only the agent the giver meant. The attack: agent A
// delegated (unbound) to a principal 'ghost' that was not running; agent B spawned a sub-agent
// named 'ghost', which received A's capability and used it, also after a sidecar SIGKILL and a
// restart on the same state dir. Now: a delegation to a principal that is not running is refused
// unless it names a future sub-agent of the giver's own ('<giver>/<id>'); sub-agents' principals
// live under their parent's ('b/ghost' is never 'a/ghost'); a delegated capability is bound to
// its receiver's process (at once, or when the giver spawns it); and capabilities from an earlier
// run of the sidecar are refused, bound or not.
import { rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ALL_TOOLS_CAP,
  host,
  PROXY_AGENT,
  proxyAgent,
  shutdown,
  signalRef,
  spawnCap,
  startServe,
  SPAWN_NODE_CAP,
  toolCap,
  type CapView,
  type ProxyAgent,
  type ServeHandle,
} from './harness.js';

const DENIED = -32001;
const handles: ServeHandle[] = [];

afterAll(async () => {
  for (const h of handles.splice(0)) {
    if (h.child.exitCode === null && h.child.signalCode === null) await shutdown(h, { keepDir: true }).catch(() => undefined);
    rmSync(h.dir, { recursive: true, force: true });
  }
}, 60_000);

const AGENTS = [proxyAgent('a', { capabilities: [ALL_TOOLS_CAP, SPAWN_NODE_CAP] }), proxyAgent('b', { capabilities: [ALL_TOOLS_CAP, SPAWN_NODE_CAP] })];

async function spawnSub(h: ServeHandle, parent: ProxyAgent, id: string): Promise<{ agent: ProxyAgent; id: string; capabilities: CapView[] }> {
  const r = await parent.ok<{ id: string; pid: number; startTime: number; capabilities: CapView[] }>('agents.spawn', {
    id,
    capability: (await spawnCap(parent)).id,
    command: process.execPath,
    args: [PROXY_AGENT, h.control.path],
    capabilities: [],
  });
  return { agent: await h.agent(r.id), id: r.id, capabilities: r.capabilities };
}

const invokeTrue = (agent: ProxyAgent, capability: string) => agent.call<{ reason: string }>('tools.invoke', { tool: 'true', args: {}, capability });

describe.skipIf(host.layout === 'none')('squatting a delegation', () => {
  it("a delegation to 'ghost' cannot be picked up by another agent's sub-agent of that name, in this run or after a SIGKILL and restart", async () => {
    const h = await startServe({ agents: AGENTS });
    handles.push(h);
    const a = await h.agent('a');
    const b = await h.agent('b');
    const aCap = await toolCap(a);

    // The attack as it was: A delegates to 'ghost', which is not running. Refused now.
    for (const to of ['ghost', 'b/ghost']) {
      const r = await a.call('capabilities.delegate', { capability: aCap.id, to, constraints: { allowedTools: ['true'] } });
      expect(r.error?.code, `${to}: ${JSON.stringify(r)}`).toBe(DENIED);
      expect(r.error?.data?.code).toBe('E_UNKNOWN_AGENT');
    }

    // B's sub-agent 'ghost' is 'b/ghost': it is not, and never can be, A's 'a/ghost'.
    const bGhost = await spawnSub(h, b, 'ghost');
    expect(bGhost.id).toBe('b/ghost');
    // A delegation to A's own future sub-agent is allowed, unbound until A spawns it.
    const pending = await a.ok<CapView>('capabilities.delegate', { capability: aCap.id, to: 'a/ghost', constraints: { allowedTools: ['true'] } });
    expect([pending.principal, pending.holder]).toEqual(['a/ghost', null]);
    const seen = (await bGhost.agent.ok<{ capabilities: CapView[] }>('capabilities.list')).capabilities;
    expect(seen.map((c) => c.id)).not.toContain(pending.id);
    for (const ref of [pending.id, pending.token]) {
      const r = await invokeTrue(bGhost.agent, ref);
      expect(r.error?.code, JSON.stringify(r)).toBe(DENIED);
      expect(r.error?.data?.code).toBe('E_WRONG_PRINCIPAL');
    }
    // A delegation to a running agent is bound to that agent's process.
    const toRunning = await a.ok<CapView>('capabilities.delegate', { capability: aCap.id, to: 'b/ghost', constraints: { allowedTools: ['true'] } });
    expect(toRunning.holder).not.toBeNull();
    expect((await h.agents()).find((x) => x.id === 'b/ghost')).toMatchObject({ pid: toRunning.holder!.pid, startTime: toRunning.holder!.startTime });

    // A spawns its 'ghost': what A delegated to 'a/ghost' is bound to that process now.
    const aGhost = await spawnSub(h, a, 'ghost');
    expect(aGhost.id).toBe('a/ghost');
    const bound = aGhost.capabilities.find((c) => c.id === pending.id);
    const aGhostRow = (await h.agents()).find((x) => x.id === 'a/ghost')!;
    expect(bound?.holder).toEqual({ pid: aGhostRow.pid, startTime: aGhostRow.startTime });
    expect((await invokeTrue(aGhost.agent, pending.id)).result?.reason).toBe('exited');

    // Before the crash: an unbound delegation to a future 'a/later', and the bound token of a/ghost.
    const later = await a.ok<CapView>('capabilities.delegate', { capability: aCap.id, to: 'a/later', constraints: { allowedTools: ['true'] } });
    expect(later.holder).toBeNull();
    const boundToken = (await aGhost.agent.ok<{ capabilities: CapView[] }>('capabilities.list')).capabilities.find((c) => c.id === pending.id)!.token;

    signalRef(h.ref, 'SIGKILL');
    expect(await h.exited).toEqual({ code: null, signal: 'SIGKILL' });
    h.admin.close();
    h.control.close();

    // Restart on the same state dir: the same configured agents, new processes.
    const h2 = await startServe({ dir: h.dir, cgroupBase: h.cgroupBase, agents: AGENTS });
    handles.push(h2);
    const a2 = await h2.agent('a');
    const b2 = await h2.agent('b');
    const bLater = await spawnSub(h2, b2, 'later');
    const bGhost2 = await spawnSub(h2, b2, 'ghost');
    const aLater = await spawnSub(h2, a2, 'later');
    const aGhost2 = await spawnSub(h2, a2, 'ghost');
    const attempts: [ProxyAgent, string, string][] = [
      [bLater.agent, later.token, "b/later with a's unbound token for a/later"],
      [aLater.agent, later.token, 'a new a/later with the unbound token the old run issued to a/later'],
      [bGhost2.agent, pending.token, "b/ghost with a's token for a/ghost"],
      [aGhost2.agent, boundToken, "a new a/ghost with the old a/ghost's bound token"],
      [aGhost2.agent, pending.token, 'a new a/ghost with the token as issued (unbound) in the old run'],
    ];
    for (const [agent, token, what] of attempts) {
      const r = await invokeTrue(agent, token);
      expect(r.error?.code, `${what}: ${JSON.stringify(r)}`).toBe(DENIED);
      expect(r.error?.data?.code, what).toBe('E_NOT_ISSUED_HERE');
      const d = await agent.call('capabilities.delegate', { capability: token, to: agent.id });
      expect(d.error?.code, `${what} (delegate): ${JSON.stringify(d)}`).toBe(DENIED);
    }
    // What this run issues works as before.
    expect((await invokeTrue(a2, (await toolCap(a2)).id)).result?.reason).toBe('exited');
    const left = await shutdown(h2, { keepDir: true });
    expect(left.exit).toEqual({ code: 0, signal: null });
  }, 90_000);
});
