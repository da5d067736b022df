import { describe, expect, it, vi } from 'vitest';
import { probeHost } from '../../src/isolation/host.js';
import { builtProgramPath } from '../../src/isolation/launcher/launcher.js';
import { main } from '../../src/runner/commands/doctor.js';

const host = probeHost();

async function doctor(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
  const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    const code = await main(argv);
    return { code, out: out.mock.calls.map((c) => String(c[0])).join(''), err: err.mock.calls.map((c) => String(c[0])).join('') };
  } finally {
    out.mockRestore();
    err.mockRestore();
  }
}

describe('captrap doctor', () => {
  it('--json reports the layout, controllers, tools and every guarantee with its mechanism', async () => {
    const r = await doctor(['--json']);
    const report = JSON.parse(r.out);
    expect(report.layout).toBe(host.layout);
    expect(report.cgroupKill).toBe(host.cgroupKill);
    expect(Object.keys(report.v1Controllers).sort()).toEqual(Object.keys(host.v1).sort());
    expect(report.guarantees.map((g: { name: string }) => g.name)).toEqual(
      expect.arrayContaining(['join-before-exec', 'tree-kill', 'die-with-parent', 'stale-cleanup', 'memory', 'pids', 'cpu', 'exit-reasons']),
    );
    for (const g of report.guarantees) expect(typeof g.mechanism).toBe('string');
    expect(report.systemdRun.available).toBe(host.systemdManager);
    expect(r.code).toBe(report.ok ? 0 : 1);
  });

  it('says how warm launchers are refilled, and CAPTRAP_SPAWNER=0 turns the helper off', async () => {
    const built = builtProgramPath('captrap-spawn') !== undefined;
    const on = JSON.parse((await doctor(['--json'])).out);
    expect(on.warmRefills.available).toBe(built);
    expect((await doctor([])).out).toMatch(built ? /warm refills: +through captrap-spawn/ : /warm refills: +spawned by captrap itself \(build\/captrap-spawn is not built/);
    process.env.CAPTRAP_SPAWNER = '0';
    try {
      expect((await doctor([])).out).toMatch(/warm refills: +spawned by captrap itself \(CAPTRAP_SPAWNER=0\)/);
    } finally {
      delete process.env.CAPTRAP_SPAWNER;
    }
  });

  it.skipIf(host.systemdManager)('says systemd-run is unavailable on a host without a systemd manager', async () => {
    const r = await doctor([]);
    expect(r.out).toMatch(/systemd-run: +unavailable/);
  });

  it('with the no-cgroup backend: exits 1 and says plainly that setsid escapees are not contained', async () => {
    const r = await doctor(['--backend', 'none']);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/NO +tree-kill +process group SIGKILL/);
    expect(r.out).toMatch(/setsid .* NOT contained/);
    expect(r.out).toMatch(/NOT OK: .*tree-kill/);
  });

  it.skipIf(host.layout !== 'hybrid')('on this hybrid host every default guarantee holds via v1 limits and the cgroup2 tree', async () => {
    const r = await doctor([]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/yes +tree-kill +cgroup\.kill in the hybrid cgroup2 tree/);
    expect(r.out).toMatch(/yes +memory +v1 memory\.limit_in_bytes/);
  });

  it('a narrower --require can pass where the default fails, and bad flags exit 2', async () => {
    expect((await doctor(['--backend', 'none', '--require', 'die-with-parent'])).code).toBe(host.tools.setpriv ? 0 : 1);
    expect((await doctor(['--require', 'bogus'])).code).toBe(2);
    expect((await doctor(['--verbose'])).code).toBe(2);
  });
});
