// SIGKILL the sidecar itself while agents and tools run: every process it started dies within
// 1 s (parent-death signal + cgroups, no cleanup code of serve runs), the next start on the same
// state dir and cgroup base removes the stale cgroups, and the audit log continues the same
// chain and verifies once the new run closes it.
import { rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { type ProcessRef } from '../../src/isolation/proc.js';
import {
  allGone,
  auditRecords,
  auditVerify,
  cgroupDirsOf,
  cgroupsUnder,
  collectAndClean,
  existingDirs,
  gone,
  host,
  processesInBase,
  proxyAgent,
  shutdown,
  signalRef,
  startHang,
  startServe,
  toolCap,
  waitFor,
  type ServeHandle,
} from './harness.js';


let first: ServeHandle | undefined;
let second: ServeHandle | undefined;

afterAll(async () => {
  // Whatever a failed assertion left: kill by ref, remove the cgroups.
  if (second && second.child.exitCode === null && second.child.signalCode === null) await shutdown(second);
  if (first) {
    const h = first;
    await collectAndClean(h);
    rmSync(h.dir, { recursive: true, force: true });
  }
}, 30_000);

/** A sidecar with two agents, each with a tool running (a shell, its child, a setsid escapee) and a setsid child of its own. */
async function busySidecar(
  sandbox: Record<string, unknown> = {},
): Promise<{ h: ServeHandle; leaders: ProcessRef[]; toolTrees: ProcessRef[]; everything: ProcessRef[]; oldToken: string }> {
  const h = await startServe({ agents: [proxyAgent('a1'), proxyAgent('a2')], sandbox });
  const a1 = await h.agent('a1');
  const a2 = await h.agent('a2');
  const oldToken = (await toolCap(a1)).token;
  const fork = await a1.order<{ pid: number }>('fork', { setsid: true });
  const forkRef = a1.hostRef(fork.pid)!; // the agent reports its namespace's pid
  expect(forkRef).toBeDefined();
  const t1 = await startHang(h, a1);
  const t2 = await startHang(h, a2);
  // The agents' own processes, their sandbox leaders, and the tools' leaders and shells.
  const leaders = [a1.ref, a2.ref, a1.leader!, a2.leader!, t1.refs[0]!, t2.refs[0]!, t1.shell, t2.shell];
  const toolCgroups = new Set([...t1.cgroups, ...t2.cgroups].map((d) => d.slice(d.lastIndexOf('/') + 1)));
  // Every process inside the two tools' cgroups (shell, its children, the setsid escapee, unshare's init).
  const toolTrees = [...t1.refs, ...t2.refs, ...processesInBase(h.cgroupBase).filter((r) => cgroupDirsOf(r.pid, h.cgroupBase).some((d) => toolCgroups.has(d.slice(d.lastIndexOf('/') + 1))))];
  const everything = [...leaders, forkRef, ...toolTrees, ...processesInBase(h.cgroupBase)];
  expect(allGone(everything)).toBe(false);
  expect(toolTrees.length).toBeGreaterThanOrEqual(6);
  return { h, leaders, toolTrees, everything, oldToken };
}

describe.skipIf(host.layout === 'none')('kill the sidecar', () => {
  it('SIGKILL serve: agents and tools die within 1 s, anything left is held in stale cgroups; restart removes them and continues a verifying audit chain', async () => {
    const busy = await busySidecar();
    first = busy.h;
    const h = first;
    const stale = cgroupsUnder(h.cgroupBase);
    expect(stale.length).toBeGreaterThan(0);
    const before = auditRecords(h);
    expect(before.length).toBeGreaterThan(0);

    const t0 = performance.now();
    signalRef(h.ref, 'SIGKILL');
    const dead = await waitFor(() => allGone(busy.leaders), 1000, 2);
    const elapsed = performance.now() - t0;
    expect(dead, `alive after ${elapsed.toFixed(0)} ms: ${JSON.stringify(busy.leaders.filter((r) => !gone(r)))}`).toBe(true);
    expect(elapsed).toBeLessThanOrEqual(1000);
    expect(await h.exited).toEqual({ code: null, signal: 'SIGKILL' });
    h.admin.close();
    h.control.close();
    // Whatever still lives (descendants, without a pid namespace) is inside the dead sidecar's cgroups.
    // (A process in the middle of dying may already show the root cgroup: give those a moment to finish.)
    const outside = () => {
      const inBase = new Set(processesInBase(h.cgroupBase).map((r) => r.pid));
      return busy.everything.filter((r) => !gone(r) && !inBase.has(r.pid));
    };
    await waitFor(() => outside().length === 0, 1000, 10);
    expect(outside()).toEqual([]);
    const survivors = busy.everything.filter((r) => !gone(r));

    // Restart on the same state dir and cgroup base: stale cgroups and their processes are gone before "ready".
    second = await startServe({ dir: h.dir, cgroupBase: h.cgroupBase, agents: [proxyAgent('after')] });
    expect(existingDirs(stale)).toEqual([]);
    expect(survivors.filter((r) => !gone(r))).toEqual([]);
    const after = await second.agent('after');
    // A token of an agent that died with the old sidecar is useless in the new one.
    const reuse = await after.call('tools.invoke', { tool: 'true', args: {}, capability: busy.oldToken });
    expect(reuse.error?.code, JSON.stringify(reuse)).toBeDefined();
    const ok = await after.call<{ reason: string }>('tools.invoke', { tool: 'true', args: {}, capability: (await toolCap(after)).id });
    expect(ok.result?.reason).toBe('exited');

    const left = await shutdown(second, { keepDir: true });
    second = undefined;
    expect(left.exit).toEqual({ code: 0, signal: null });
    expect(left.processes).toEqual([]);
    expect(left.cgroups).toEqual([]);
    expect(left.bases).toEqual([]);

    const v = auditVerify(h);
    expect(v.status, `${JSON.stringify(v.report)}\n${v.stderr}`).toBe(0);
    expect(v.report.ok).toBe(true);
    expect(v.report.closed).toBe(true);
    const all = auditRecords(h);
    // One chain: the old records are still its prefix, and the new run opened on top of them.
    expect(all.slice(0, before.length).map((r) => r.mac)).toEqual(before.map((r) => r.mac));
    const lastOld = before[before.length - 1]!.seq;
    expect(all.some((r) => r.seq > lastOld && r.type === 'audit_opened')).toBe(true);
    first = undefined;
    rmSync(h.dir, { recursive: true, force: true });
  }, 45_000);

  // The limits-only sidecar (confine: false) with tools in pid namespaces of their own; confined
  // sandboxes have one anyway (the other tests).
  it.skipIf(!host.namespaces.pid)('SIGKILL serve with sandbox { confine: false, namespaces: [pid] }: agents and whole tool trees (setsid escapees included) die within 1 s', async () => {
    const busy = await busySidecar({ confine: false, namespaces: ['pid'] });
    first = busy.h;
    const watched = [...busy.leaders, ...busy.toolTrees];
    const t0 = performance.now();
    signalRef(busy.h.ref, 'SIGKILL');
    const dead = await waitFor(() => allGone(watched), 1000, 2);
    const elapsed = performance.now() - t0;
    await busy.h.exited;
    busy.h.admin.close();
    busy.h.control.close();
    const alive = watched.filter((r) => !gone(r));
    await collectAndClean(busy.h);
    rmSync(busy.h.dir, { recursive: true, force: true });
    first = undefined;
    expect(dead, `alive ${elapsed.toFixed(0)} ms after the sidecar's SIGKILL: ${JSON.stringify(alive)}`).toBe(true);
  }, 30_000);

  // Confined (the default), the pid namespaces die with their launchers. Limits only (confine:
  // false, no pid namespace), the isolation layer's owner watchdog kills the dead sidecar's
  // sandbox cgroups, so descendants and setsid escapees die too.
  it.each([
    { mode: 'confined', sandbox: {} },
    { mode: 'confine: false', sandbox: { confine: false } },
  ])('SIGKILL serve ($mode): every process it started, descendants and setsid escapees included, dies within 1 s', async ({ sandbox }) => {
    const busy = await busySidecar(sandbox);
    first = busy.h;
    const t0 = performance.now();
    signalRef(busy.h.ref, 'SIGKILL');
    const dead = await waitFor(() => allGone(busy.everything), 1000, 2);
    const elapsed = performance.now() - t0;
    await busy.h.exited;
    busy.h.admin.close();
    busy.h.control.close();
    const alive = busy.everything.filter((r) => !gone(r));
    const left = await collectAndClean(busy.h);
    rmSync(busy.h.dir, { recursive: true, force: true });
    first = undefined;
    expect(dead, `alive ${elapsed.toFixed(0)} ms after the sidecar's SIGKILL: ${JSON.stringify(alive)}`).toBe(true);
    expect(left.processes).toEqual([]);
  }, 30_000);
});
