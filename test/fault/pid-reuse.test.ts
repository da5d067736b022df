// PID reuse: after an agent dies, a new process that gets the same PID must not be able to use
// the dead agent's capabilities. The same PID is forced for real: as root we set the pid
// namespace's last-allocated pid (/proc/sys/kernel/ns_last_pid) just below the dead pid before
// spawning, and retry when another process on the machine takes it first.
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { processRef, type ProcessRef } from '../../src/isolation/proc.js';
import {
  PROXY_AGENT,
  gone,
  host,
  killRef,
  liveCapsOfDeadHolders,
  ALL_TOOLS_CAP,
  proxyAgent,
  SPAWN_NODE_CAP,
  spawnCap,
  shutdown,
  signalRef,
  startServe,
  toolCap,
  waitFor,
  type CapView,
  type ServeHandle,
} from './harness.js';

const NS_LAST_PID = '/proc/sys/kernel/ns_last_pid';
let h: ServeHandle;

function canSetLastPid(): boolean {
  try {
    writeFileSync(NS_LAST_PID, readFileSync(NS_LAST_PID, 'utf8').trim());
    return true;
  } catch {
    return false;
  }
}

beforeAll(async () => {
  h = await startServe({ agents: [proxyAgent('doomed'), proxyAgent('spawner', { capabilities: [ALL_TOOLS_CAP, SPAWN_NODE_CAP] }), proxyAgent('other')] });
}, 30_000);

afterAll(async () => {
  if (!h) return;
  const left = await shutdown(h);
  expect(left.processes).toEqual([]);
  expect(left.cgroups).toEqual([]);
}, 30_000);

describe.skipIf(host.layout === 'none')('PID reuse', () => {
  it("a dead agent's capabilities stay dead for another process, even one with the same pid", async () => {
    const doomed = await h.agent('doomed');
    const spawner = await h.agent('spawner');
    const other = await h.agent('other');
    const cap = await toolCap(doomed);
    // Capabilities are bound to the agent's sandbox leader (confined: the launcher outside its pid
    // namespace); that is the pid a new process must not inherit them through.
    const holder = doomed.leader!;
    expect(cap.holder).toEqual(holder);
    const deadPid = holder.pid;

    signalRef(doomed.ref); // the agent's own process: its sandbox ends with it
    expect(await waitFor(() => gone(doomed.ref) && gone(holder), 3000)).toBe(true);
    const revoked = await waitFor(async () => { const c = await h.caps('doomed'); return c.length > 0 && c.every((x) => x.revoked); }, 3000);
    expect(revoked).toBe(true);

    // Another live agent presenting the dead agent's capability, by id and by token: refused.
    for (const capability of [cap.id, cap.token]) {
      const r = await other.call('tools.invoke', { tool: 'true', args: {}, capability });
      expect(r.error?.code, JSON.stringify(r)).toBe(-32001);
    }

    // A sub-agent that really gets the dead pid (spawned through the sidecar): it cannot use them either.
    const spawnerCap = await toolCap(spawner);
    const spawnerProcessCap = await spawnCap(spawner);
    let reused: { id: string; pid: number; startTime: number } | undefined;
    const misses: number[] = [];
    if (canSetLastPid()) {
      let offset = 0;
      for (let attempt = 0; attempt < 12 && !reused; attempt++) {
        const id = `spawner.r${attempt}`;
        writeFileSync(NS_LAST_PID, String(deadPid - 1 - offset));
        const r = await spawner.ok<{ id: string; pid: number; startTime: number; capabilities: CapView[] }>('agents.spawn', {
          id,
          capability: spawnerProcessCap.id,
          command: process.execPath,
          args: [PROXY_AGENT, h.control.path],
          capabilities: [{ capability: spawnerCap.id, operations: ['invoke'], constraints: { allowedTools: ['true'] } }],
        });
        if (r.pid === deadPid) {
          reused = r;
          break;
        }
        misses.push(r.pid);
        // Learn how many pids the launcher uses before the agent's own (exec chain), if it did not race.
        const d = r.pid - deadPid;
        if (d > 0 && d < 8 && attempt === 0) offset = d;
        await h.adminCall('agents.kill', { id: r.id });
      }
    }
    if (reused) {
      const sub = await h.agent(reused.id);
      expect(sub.leader!.pid).toBe(deadPid);
      expect(sub.leader!.startTime).not.toBe(holder.startTime);
      for (const capability of [cap.id, cap.token]) {
        const r = await sub.call('tools.invoke', { tool: 'true', args: {}, capability });
        expect(r.error?.code, JSON.stringify(r)).toBe(-32001);
      }
      expect((await sub.call('capabilities.delegate', { capability: cap.id, to: 'other' })).error).toBeDefined();
      await h.adminCall('agents.kill', { id: reused.id });
    } else {
      console.warn(`pid-reuse: could not place a sub-agent on pid ${deadPid} (got ${misses.join(', ')}); checking with a plain process`);
    }

    // A plain process on the dead pid: the sidecar still reports the capability revoked and no
    // capability is live for a holder whose ref no longer matches.
    let squatter: ProcessRef | undefined;
    if (canSetLastPid()) {
      for (let attempt = 0; attempt < 20 && !squatter; attempt++) {
        writeFileSync(NS_LAST_PID, String(deadPid - 1));
        const c = spawn('sleep', ['30'], { stdio: 'ignore' });
        const ref = c.pid === undefined ? undefined : processRef(c.pid);
        if (c.pid === deadPid && ref) squatter = ref;
        else if (ref) killRef(ref);
      }
    }
    // With a writable ns_last_pid at least one real reuse must have happened (else the test proved less than it says).
    if (canSetLastPid()) expect(reused ?? squatter, `no process landed on pid ${deadPid}`).toBeDefined();
    try {
      const caps = await h.caps();
      const dead = caps.find((c) => c.id === cap.id)!;
      expect(dead.revoked).toBe(true);
      expect(liveCapsOfDeadHolders(caps)).toEqual([]);
      if (squatter) expect(squatter.startTime).not.toBe(holder.startTime);
    } finally {
      if (squatter) killRef(squatter);
    }
  }, 30_000);
});
