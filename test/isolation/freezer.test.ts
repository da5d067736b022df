// The v1 freezer kill loop (freeze, SIGKILL each member, thaw), used on v1 hosts without a
// cgroup2 tree: exercised here by describing this host without its cgroup2 tree.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { cgroupV1Backend, newCgroupName, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost, type HostInfo } from '../../src/isolation/host.js';
import { isAlive } from '../../src/isolation/proc.js';

const real = probeHost();
const { unifiedRoot: _dropped, ...rest } = real;
const v1Only: HostInfo = { ...rest, layout: 'v1', cgroupKill: false, unifiedControllers: [] };
const base = `captrap-test-fz-${process.pid}-${Date.now().toString(36)}`;
if (!real.v1.freezer) console.log('skipping freezer test: no writable v1 freezer on this host');

afterAll(() => {
  expect(removeCgroupBase(real, base)).toEqual([]);
});

describe.skipIf(!real.v1.freezer)('cgroup-v1 backend without cgroup.kill: freezer kill loop', () => {
  it('kills a tree with setsid and double-forked members, then removes every hierarchy', async () => {
    const backend = cgroupV1Backend(v1Only);
    expect(backend.check({ swapBytes: 0, pids: 10 })).toEqual([]);
    const cg = backend.create(base, newCgroupName(), { swapBytes: 0, pids: 64 });
    expect(cg.killMechanism).toMatch(/freezer/);
    expect(cg.dirs.some((d) => d.startsWith(real.v1.freezer!))).toBe(true);
    // Join the same way the trampoline does, then build a tree that tries to escape.
    const script = `for f in "$@"; do echo $$ > "$f"; done; setsid sh -c 'echo $$; exec sleep 300' & (sh -c 'echo $$; exec sleep 300' &); trap "" TERM; echo $$; sleep 300`;
    const child = spawn('sh', ['-c', script, 'join', ...cg.joinFiles], { stdio: ['ignore', 'pipe', 'ignore'] });
    const pids = await new Promise<number[]>((resolve) => {
      let buf = '';
      child.stdout.on('data', (c: Buffer) => {
        buf += c.toString();
        const ps = buf.split('\n').filter(Boolean).map(Number);
        if (ps.length >= 3) resolve(ps);
      });
    });
    expect(cg.pids().length).toBeGreaterThanOrEqual(4);
    expect(cg.populated()).toBe(true);
    cg.killAll();
    expect(await cg.waitEmpty(3000)).toBe(true);
    await new Promise((r) => setTimeout(r, 20));
    expect(pids.filter(isAlive)).toEqual([]);
    cg.remove();
    for (const d of cg.dirs) expect(existsSync(d)).toBe(false);
  });
});
