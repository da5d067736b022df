// Guarantee 7: 100 sandboxes at once all run and all are cleaned up: no cgroup, file
// descriptor or process is left behind (counted before and after).
import { existsSync, readdirSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { hierarchyRoots, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { descendants } from '../../src/isolation/proc.js';
import { runSandboxed } from '../../src/isolation/sandbox.js';

const host = probeHost();
const base = `captrap-test-cc-${process.pid}-${Date.now().toString(36)}`;

const cgroupCount = () =>
  hierarchyRoots(host).reduce((n, h) => {
    const d = `${h.root}/${base}`;
    return n + (existsSync(d) ? readdirSync(d).filter((x) => existsSync(`${d}/${x}/cgroup.procs`)).length : 0);
  }, 0);
const fdCount = () => readdirSync('/proc/self/fd').length;
const childCount = () => descendants(process.pid).length;

afterAll(() => {
  expect(removeCgroupBase(host, base)).toEqual([]);
});

describe.skipIf(host.layout === 'none')('guarantee 7: 100 concurrent sandboxes', () => {
  it('all run, all exit cleanly, and nothing is left behind', async () => {
    // Warm up once so lazily opened handles (pino's destination, the probe) are not counted as leaks.
    await runSandboxed('true', [], { cgroupBase: base });
    const before = { cgroups: cgroupCount(), fds: fdCount(), children: childCount() };
    const sandboxes = Array.from({ length: 100 }, (_, i) =>
      runSandboxed('sh', ['-c', `sleep 0.3; echo $((${i} * 2))`], { cgroupBase: base, memory: '64M', pids: 16 }),
    );
    // All 100 are alive at the same time.
    await new Promise((r) => setTimeout(r, 150));
    expect(cgroupCount()).toBeGreaterThanOrEqual(100);
    const results = await Promise.all(sandboxes);
    results.forEach((r, i) => {
      expect(r.reason).toEqual({ kind: 'exited', code: 0 });
      expect(r.stdout.trim()).toBe(String(i * 2));
      expect(r.cleanedUp).toBe(true);
    });
    await new Promise((r) => setTimeout(r, 50));
    expect({ cgroups: cgroupCount(), fds: fdCount(), children: childCount() }).toEqual(before);
  });
});
