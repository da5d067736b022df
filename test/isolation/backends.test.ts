// The cgroup v2 backend on a real cgroup2 tree (here possibly the controller-less unified tree
// of a hybrid host: membership, cgroup.kill and cgroup.events are real; limits need
// controllers and are skipped with a reason when absent), and the no-cgroup backend.
import { existsSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { isAlive, isSameProcess, processRef } from '../../src/isolation/proc.js';
import { runSandboxed, type Sandbox } from '../../src/isolation/sandbox.js';
import { cgroupOf, namespacePids, toHostPids } from './helpers.js';

const host = probeHost();
const base = `captrap-test-be-${process.pid}-${Date.now().toString(36)}`;
const v2 = host.unifiedRoot !== undefined && host.cgroupKill;
const v2Limits = ['memory', 'pids', 'cpu'].every((c) => host.unifiedControllers.includes(c));
if (!v2) console.log('skipping cgroup v2 backend tests: no writable cgroup2 tree with cgroup.kill on this host');
if (v2 && !v2Limits) console.log(`skipping cgroup v2 limit tests: ${host.unifiedRoot} has controllers [${host.unifiedControllers.join(' ')}], not memory+pids+cpu (hybrid host)`);

afterAll(() => {
  expect(removeCgroupBase(host, base)).toEqual([]);
});

function firstLines(sb: Sandbox, n: number): Promise<string[]> {
  return new Promise((resolve) => {
    let buf = '';
    sb.stdout!.on('data', (c: Buffer) => {
      buf += c.toString();
      const lines = buf.split('\n').filter(Boolean);
      if (lines.length >= n) resolve(lines);
    });
  });
}

describe.skipIf(!v2)('cgroup-v2 backend on a real cgroup2 tree', () => {
  it('joins before exec, kills a setsid escapee with cgroup.kill, and removes the cgroup', async () => {
    const sb = runSandboxed('sh', ['-c', `grep '^0::' /proc/self/cgroup; setsid sh -c 'echo $$; exec sleep 300' & trap "" TERM; while :; do sleep 0.1; done`], {
      cgroupBase: base,
      backend: 'cgroup-v2',
      killGrace: 100,
    });
    expect(sb.backend).toBe('cgroup-v2');
    const [membership, printed] = await firstLines(sb, 2);
    // Confined: the shell reads its membership relative to its cgroup namespace ('/' is the
    // namespace's root) and prints its escapee's pid inside the pid namespace; the host side
    // shows that root to be the sandbox's cgroup and finds the escapee's host pid.
    expect(membership).toBe('0::/');
    const { sh, escapee } = toHostPids(sb.pid, { sh: 2, escapee: Number(printed) });
    expect(cgroupOf(sh!, '')).toBe(`/${base}/${sb.cgroupName}`);
    expect(cgroupOf(escapee!, '')).toBe(`/${base}/${sb.cgroupName}`);
    expect(existsSync(`${host.unifiedRoot}/${base}/${sb.cgroupName}/cgroup.events`)).toBe(true);
    sb.kill();
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'killed' });
    expect(r.killMechanism).toMatch(/cgroup\.kill/);
    expect(r.escaped).toEqual([]);
    expect(isAlive(escapee!)).toBe(false);
    expect(existsSync(`${host.unifiedRoot}/${base}/${sb.cgroupName}`)).toBe(false);
  });

  it('refuses a limit the tree has no controller for, unless allowDegraded, which reports it', async () => {
    if (v2Limits) return;
    expect(() => runSandboxed('true', [], { cgroupBase: base, backend: 'cgroup-v2', memory: '64M' })).toThrow(
      expect.objectContaining({ code: 'E_LIMIT_UNENFORCEABLE', details: expect.objectContaining({ limit: 'memory' }) }),
    );
    const r = await runSandboxed('true', [], { cgroupBase: base, backend: 'cgroup-v2', memory: '64M', allowDegraded: true });
    expect(r.reason).toEqual({ kind: 'exited', code: 0 });
    expect(r.degraded.map((d) => d.limit)).toContain('memory');
  });

  it.skipIf(!v2Limits)('enforces memory and pids with oom / pids-limit reasons', async () => {
    const oom = await runSandboxed('sh', ['-c', 'x=a; while :; do x=$x$x; done'], { cgroupBase: base, backend: 'cgroup-v2', memory: '32M', timeout: 10_000 });
    expect(oom.reason).toEqual({ kind: 'oom' });
    const bomb = await runSandboxed('sh', ['-c', 'b() { b & b & wait; }; b'], { cgroupBase: base, backend: 'cgroup-v2', pids: 20, timeout: 1500 });
    expect(bomb.reason).toEqual({ kind: 'pids-limit' });
  });
});

describe('no-cgroup backend (rlimits + process group)', () => {
  it('is refused by default: setsid escapees would not be contained', () => {
    expect(() => runSandboxed('true', [], { cgroupBase: base, backend: 'none' })).toThrow(
      expect.objectContaining({ code: 'E_LIMIT_UNENFORCEABLE', details: expect.objectContaining({ limit: 'tree-kill' }) }),
    );
  });

  // Prints RLIMIT_AS, then a child and a setsid'd escapee with their pids, and waits.
  const ESCAPEE_TREE = `ulimit -v; sh -c 'echo child $$; exec sleep 300' & setsid sh -c 'echo escapee $$; exec sleep 300' & sleep 300`;

  it('with allowDegraded: kills the process group, applies rlimits, and honestly does not contain a setsid escapee', async () => {
    // Unconfined: this is the backend's own primitive (a process group), which a pid namespace
    // would otherwise cover (see the next test).
    const sb = runSandboxed('sh', ['-c', ESCAPEE_TREE], {
      confine: false,
      cgroupBase: base,
      backend: 'none',
      allowDegraded: true,
      memory: '512M',
      killGrace: 100,
    });
    const lines = await firstLines(sb, 3);
    const pidOf = (label: string) => Number(lines.find((l) => l.startsWith(label))!.split(' ')[1]);
    expect(lines[0]).toBe(String(512 * 1024)); // RLIMIT_AS in KiB
    const child = pidOf('child');
    const escapee = processRef(pidOf('escapee'))!;
    sb.kill();
    const r = await sb;
    expect(r.degraded.map((d) => d.limit)).toEqual(expect.arrayContaining(['tree-kill', 'memory']));
    expect(isAlive(child)).toBe(false);
    // The documented hole of this backend: the setsid'd process left the process group.
    expect(isSameProcess(escapee)).toBe(true);
    process.kill(escapee.pid, 'SIGKILL');
  });

  it.skipIf(!host.namespaces.pid)('confined, the same setsid escapee dies with the sandbox: the pid namespace holds it without a cgroup', async () => {
    const sb = runSandboxed('sh', ['-c', ESCAPEE_TREE], {
      cgroupBase: base,
      backend: 'none',
      allowDegraded: true,
      memory: '512M',
      killGrace: 100,
    });
    const lines = await firstLines(sb, 3);
    const pidOf = (label: string) => Number(lines.find((l) => l.startsWith(label))!.split(' ')[1]);
    expect(lines[0]).toBe(String(512 * 1024));
    const outside = toHostPids(sb.pid, { child: pidOf('child'), escapee: pidOf('escapee') });
    const all = [sb.pid, ...namespacePids(sb.pid).values()];
    const escapee = processRef(outside.escapee!)!;
    sb.kill();
    const r = await sb;
    expect(r.confinement.namespaces).toContain('pid');
    expect(r.degraded.map((d) => d.limit)).toEqual(expect.arrayContaining(['tree-kill', 'memory']));
    expect(isAlive(outside.child!)).toBe(false);
    expect(isSameProcess(escapee)).toBe(false);
    expect(all.filter(isAlive)).toEqual([]);
  });
});
