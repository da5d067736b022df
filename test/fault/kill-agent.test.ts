// Kill-agent faults against a real `captrap serve`: an agent SIGKILLed in the middle of a tool
// call, a sub-agent killed and then its parent, an agent SIGSTOPped and killed while stopped.
// After each: the tool tree is dead (including a setsid escapee), the agent's capabilities and
// those delegated from them are revoked, a principal_cleanup record is written, and none of
// the dead processes' cgroups is left.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readStat } from '../../src/isolation/proc.js';
import {
  PROXY_AGENT,
  allGone,
  cleanupRecords,
  cgroupDirsOf,
  existingDirs,
  gone,
  host,
  liveCapsOfDeadHolders,
  ALL_TOOLS_CAP,
  proxyAgent,
  SPAWN_NODE_CAP,
  spawnCap,
  shutdown,
  signalRef,
  startHang,
  startServe,
  toolCap,
  waitFor,
  type CapView,
  type ProxyAgent,
  type ServeHandle,
} from './harness.js';

const cgroupsAvailable = host.layout !== 'none';
let h: ServeHandle;

beforeAll(async () => {
  h = await startServe({
    agents: [proxyAgent('victim'), proxyAgent('peer'), proxyAgent('boss', { capabilities: [ALL_TOOLS_CAP, SPAWN_NODE_CAP] }), proxyAgent('stopper'), proxyAgent('stopper2')],
  });
}, 30_000);

afterAll(async () => {
  if (!h) return;
  const left = await shutdown(h);
  expect(left.exit).toEqual({ code: 0, signal: null });
  expect(left.processes).toEqual([]);
  expect(left.cgroups).toEqual([]);
  expect(left.bases).toEqual([]);
}, 30_000);

/** Everything the sidecar must have done after `agent` died. */
async function expectCleanedUp(agent: ProxyAgent, opts: { agentCgroups: string[]; toolRefs: { pid: number; startTime: number }[]; toolCgroups: string[]; extraRefs?: { pid: number; startTime: number }[] }): Promise<void> {
  // The agent's own process and its sandbox leader (confined, the launcher outside its pid namespace).
  const refs = [agent.ref, agent.leader!, ...opts.toolRefs, ...(opts.extraRefs ?? [])];
  expect(await waitFor(() => allGone(refs), 3000), `processes still alive: ${JSON.stringify(refs.filter((r) => !gone(r)))}`).toBe(true);
  expect(await waitFor(() => existingDirs([...opts.agentCgroups, ...opts.toolCgroups]).length === 0, 3000)).toBe(true);
  const caps = await waitFor(async () => {
    const all = await h.caps(agent.id);
    return all.length > 0 && all.every((c) => c.revoked) ? all : undefined;
  }, 3000);
  expect(caps, `capabilities of ${agent.id} not all revoked: ${JSON.stringify(await h.caps(agent.id))}`).toBeTruthy();
  const info = (await h.agents()).find((a) => a.id === agent.id);
  expect(info?.state).toBe('exited');
  expect(info?.toolsRunning ?? 0).toBe(0);
  const cleanup = await waitFor(() => cleanupRecords(h, agent).length > 0, 3000, 20);
  expect(cleanup, `principal_cleanup record for ${agent.id}`).toBe(true);
  expect(liveCapsOfDeadHolders(await h.caps())).toEqual([]);
}

describe.skipIf(!cgroupsAvailable)('kill an agent', () => {
  it('SIGKILL mid tool call: tool tree dead, caps and delegatees revoked, cleanup record, no cgroup left', async () => {
    const victim = await h.agent('victim');
    const peer = await h.agent('peer');
    const cap = await toolCap(victim);
    // A delegation from the victim to another principal: must die with the victim's capability.
    const delegated = await victim.ok<CapView>('capabilities.delegate', { capability: cap.id, to: 'peer', operations: ['invoke'], constraints: { allowedTools: ['true', 'echo'] } });
    expect(delegated.parent).toBe(cap.id);
    expect(delegated.principal).toBe('peer');
    const before = await peer.call<{ reason: string; stdout: string }>('tools.invoke', { tool: 'echo', args: { msg: 'hi' }, capability: delegated.id });
    expect(before.result?.reason, JSON.stringify(before)).toBe('exited');
    // A child of the agent that tries to leave its session: the agent's sandbox takes it down too.
    const escapee = await victim.order<{ pid: number }>('fork', { setsid: true });
    // The pid the agent reports is its namespace's: its host process is found from outside.
    const escapeeRef = victim.hostRef(escapee.pid)!;
    expect(escapeeRef).toBeDefined();
    const agentCgroups = cgroupDirsOf(victim.pid, h.cgroupBase);
    expect(agentCgroups.length).toBeGreaterThan(0);
    const tool = await startHang(h, victim, cap.id);
    expect(tool.cgroups.length).toBeGreaterThan(0);
    expect((await h.agents()).find((a) => a.id === 'victim')?.toolsRunning).toBe(1);

    signalRef(victim.ref, 'SIGKILL');
    await expectCleanedUp(victim, { agentCgroups, toolRefs: tool.refs, toolCgroups: tool.cgroups, extraRefs: [escapeeRef] });
    // The delegatee's capability went with its parent, and using it is refused without spawning.
    const peerCaps = await h.caps('peer');
    expect(peerCaps.find((c) => c.id === delegated.id)?.revoked).toBe(true);
    const after = await peer.call('tools.invoke', { tool: 'echo', args: { msg: 'hi' }, capability: delegated.id });
    expect(after.error?.code).toBe(-32001);
    expect(after.error?.data?.code).toMatch(/^E_(REVOKED|ANCESTOR_REVOKED)$/);
    // The peer's own capability is untouched.
    const own = await peer.call<{ reason: string }>('tools.invoke', { tool: 'true', args: {}, capability: (await toolCap(peer)).id });
    expect(own.result?.reason).toBe('exited');
    // The tool call that was in flight ended (its answer, if any came back, is not a success).
    const settled = await Promise.race([tool.call, new Promise((r) => setTimeout(() => r('pending'), 3000))]);
    expect(settled).not.toBe('pending');
  });

  it('SIGKILL a sub-agent, then its parent: each time the dead one is cleaned up, the parent survives the first', async () => {
    const boss = await h.agent('boss');
    const cap = await toolCap(boss);
    const mayRun = await spawnCap(boss);
    const spawnSub = async (id: string) => {
      const r = await boss.ok<{ id: string; pid: number; startTime: number; capabilities: CapView[] }>('agents.spawn', {
        id,
        capability: mayRun.id,
        command: process.execPath,
        args: [PROXY_AGENT, h.control.path],
        capabilities: [{ capability: cap.id, operations: ['invoke'], constraints: { allowedTools: ['hang', 'true'] } }],
      });
      expect(r.capabilities).toHaveLength(1);
      expect(r.capabilities[0]!.holder).toEqual({ pid: r.pid, startTime: r.startTime });
      expect(r.id).toBe(`boss/${id}`); // a sub-agent's principal is namespaced under its parent
      const sub = await h.agent(r.id);
      expect(sub.leader).toEqual({ pid: r.pid, startTime: r.startTime });
      return { sub, subCap: r.capabilities[0]! };
    };

    const first = await spawnSub('boss.sub1');
    const subTool = await startHang(h, first.sub, first.subCap.id);
    const subCgroups = cgroupDirsOf(first.sub.pid, h.cgroupBase);
    signalRef(first.sub.ref);
    await expectCleanedUp(first.sub, { agentCgroups: subCgroups, toolRefs: subTool.refs, toolCgroups: subTool.cgroups });
    // The parent lives on with its capability intact.
    expect(gone(boss.ref)).toBe(false);
    const bossCaps = await h.caps('boss');
    expect(bossCaps.find((c) => c.id === cap.id)?.revoked).toBe(false);
    const ok = await boss.call<{ reason: string }>('tools.invoke', { tool: 'true', args: {}, capability: cap.id });
    expect(ok.result?.reason).toBe('exited');

    // Now a second sub-agent with a tool running, and the parent dies: the whole family goes.
    const second = await spawnSub('boss.sub2');
    const sub2Tool = await startHang(h, second.sub, second.subCap.id);
    const bossTool = await startHang(h, boss, cap.id);
    const cgs = [...cgroupDirsOf(boss.pid, h.cgroupBase), ...cgroupDirsOf(second.sub.pid, h.cgroupBase)];
    signalRef(boss.ref);
    await expectCleanedUp(boss, { agentCgroups: cgs, toolRefs: [...bossTool.refs, ...sub2Tool.refs, second.sub.ref, second.sub.leader!], toolCgroups: [...bossTool.cgroups, ...sub2Tool.cgroups] });
    await expectCleanedUp(second.sub, { agentCgroups: [], toolRefs: [], toolCgroups: [] });
  });

  it('SIGSTOP an agent mid tool call, then SIGKILL it while stopped', async () => {
    const a = await h.agent('stopper');
    const tool = await startHang(h, a);
    const agentCgroups = cgroupDirsOf(a.pid, h.cgroupBase);
    signalRef(a.ref, 'SIGSTOP');
    expect(await waitFor(() => (readStat(a.pid)?.state ?? '') === 'T', 2000)).toBe(true);
    signalRef(a.ref, 'SIGKILL');
    await expectCleanedUp(a, { agentCgroups, toolRefs: tool.refs, toolCgroups: tool.cgroups });
  });

  it('SIGSTOP an agent, then kill it through the admin socket while stopped', async () => {
    const a = await h.agent('stopper2');
    const tool = await startHang(h, a);
    const agentCgroups = cgroupDirsOf(a.pid, h.cgroupBase);
    signalRef(a.ref, 'SIGSTOP');
    expect(await h.adminCall('agents.kill', { id: a.id })).toEqual({ killed: true });
    // A stopped process ignores SIGTERM until continued: the kill must still take it (grace, then SIGKILL).
    await waitFor(() => gone(a.ref), 6000, 20);
    await expectCleanedUp(a, { agentCgroups, toolRefs: tool.refs, toolCgroups: tool.cgroups });
  }, 20_000);
});
