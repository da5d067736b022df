// Guarantee 5: a busy loop under cpu: 0.2 gets about 20% of one core, measured from the
// sandbox's own cgroup CPU counter over a few seconds. Tolerance: on a noisy 2-core box other
// tests compete for the CPU, which can only push the share DOWN (the quota caps it from above),
// so the upper bound is tight (quota + 30% for period-boundary slack) and the lower bound loose.
import { afterAll, describe, expect, it } from 'vitest';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { runSandboxed } from '../../src/isolation/sandbox.js';

const host = probeHost();
const base = `captrap-test-cpu-${process.pid}-${Date.now().toString(36)}`;
const canLimitCpu = host.v1.cpu !== undefined || host.unifiedControllers.includes('cpu');
if (!canLimitCpu) console.log('skipping CPU limit test: no writable cpu controller on this host');

afterAll(() => {
  expect(removeCgroupBase(host, base)).toEqual([]);
});

describe.skipIf(!canLimitCpu)('guarantee 5: CPU limit', () => {
  it('a busy loop under cpu 0.2 uses about 20% of a core', async () => {
    const sb = runSandboxed('sh', ['-c', 'while :; do :; done'], { cgroupBase: base, cpu: 0.2, killGrace: 100 });
    await new Promise((r) => setTimeout(r, 300));
    const u0 = (await sb.usage()).cgroup.cpuUsageUs!;
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, 2500));
    const u1 = (await sb.usage()).cgroup.cpuUsageUs!;
    const share = (u1 - u0) / ((performance.now() - t0) * 1000);
    sb.kill();
    await sb;
    console.log(`cpu 0.2 -> measured ${(share * 100).toFixed(1)}% of a core`);
    expect(share).toBeLessThan(0.26);
    expect(share).toBeGreaterThan(0.1);
  });
});
