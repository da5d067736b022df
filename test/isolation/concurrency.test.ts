// Guarantee 7: 100 sandboxes at once all run and all are cleaned up: no cgroup, file
// descriptor or process is left behind (counted before and after).
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { afterAll, describe, expect, it } from 'vitest';
import { hierarchyRoots, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { descendants, isAlive } from '../../src/isolation/proc.js';
import { runSandboxed, WATCHDOG_DEFER_MS } from '../../src/isolation/sandbox.js';

const host = probeHost();
const base = `captrap-test-cc-${process.pid}-${Date.now().toString(36)}`;

const cgroupCount = () =>
  hierarchyRoots(host).reduce((n, h) => {
    const d = `${h.root}/${base}`;
    return n + (existsSync(d) ? readdirSync(d).filter((x) => existsSync(`${d}/${x}/cgroup.procs`)).length : 0);
  }, 0);
// memory + pids in v1 plus the cgroup2 tracking cgroup on a hybrid host; one cgroup on pure v2.
const hierarchiesPerSandbox = () =>
  host.layout === 'v2' ? 1 : (host.v1.memory ? 1 : 0) + (host.v1.pids ? 1 : 0) + (host.layout === 'hybrid' && host.cgroupKill ? 1 : host.v1.freezer ? 1 : 0) + (host.layout === 'hybrid' && host.cgroupKill ? 0 : host.v1.cpuacct ? 1 : 0);
const fdCount = () => readdirSync('/proc/self/fd').length;
const childCount = () => descendants(process.pid).length;

afterAll(() => {
  expect(removeCgroupBase(host, base)).toEqual([]);
});

describe.skipIf(host.layout === 'none')('guarantee 7: 100 concurrent sandboxes', () => {
  it('all run, all exit cleanly, and nothing is left behind', async () => {
    // Warm up once so lazily opened handles (pino's destination, the probe, and the owner
    // watchdog, which a confined sandbox starts only once it has run WATCHDOG_DEFER_MS) are not
    // counted as leaks.
    await runSandboxed('sleep', [String((WATCHDOG_DEFER_MS + 200) / 1000)], { cgroupBase: base });
    const before = { cgroups: cgroupCount(), fds: fdCount(), children: childCount() };
    const gate = mkdtempSync(`${tmpdir()}/captrap-cc-`);
    // Confined, the gate dir is shown read-only in each sandbox's view; the tool runs as 65534.
    chmodSync(gate, 0o755);
    // Every sandbox waits for the same gate file, so all 100 are provably alive at once.
    const sandboxes = Array.from({ length: 100 }, (_, i) =>
      runSandboxed('sh', ['-c', `while [ ! -e ${gate}/go ]; do sleep 0.05; done; echo $((${i} * 2))`], { cgroupBase: base, memory: '64M', pids: 16, timeout: 20_000, view: { readOnly: [gate] } }),
    );
    try {
      expect(cgroupCount()).toBe(100 * hierarchiesPerSandbox());
      expect(sandboxes.filter((s) => isAlive(s.pid)).length).toBe(100);
    } finally {
      // Even when an assertion above failed: release and reap every sandbox so nothing leaks.
      writeFileSync(`${gate}/go`, '');
      await Promise.allSettled(sandboxes);
    }
    const results = await Promise.all(sandboxes);
    rmSync(gate, { recursive: true, force: true });
    results.forEach((r, i) => {
      expect(r.reason).toEqual({ kind: 'exited', code: 0 });
      expect(r.stdout.trim()).toBe(String(i * 2));
      expect(r.cleanedUp).toBe(true);
    });
    await new Promise((r) => setTimeout(r, 50));
    expect({ cgroups: cgroupCount(), fds: fdCount(), children: childCount() }).toEqual(before);
  });
});
