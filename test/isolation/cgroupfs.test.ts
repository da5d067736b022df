// rmdirTrees on real cgroup directories: a leaf goes with one rmdir, a tree with empty cgroups
// below goes deepest first, and a cgroup with a live process in it is named in the error and left
// in place with everything above it.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { rmdirTrees } from '../../src/isolation/cgroupfs.js';
import { probeHost } from '../../src/isolation/host.js';

const host = probeHost();
const root = host.unifiedRoot ?? host.v1.pids;
const base = root ? `${root}/captrap-test-cgroupfs-${process.pid}-${Date.now().toString(36)}` : undefined;

afterAll(() => {
  if (base && existsSync(base)) rmdirTrees([base]);
});

const usable = () => {
  if (base) return true;
  if (process.env.CI) throw new Error('no writable cgroup hierarchy in CI');
  console.log('skipping: no writable cgroup hierarchy here');
  return false;
};

describe('rmdirTrees', () => {
  it('removes a leaf, and a tree of empty cgroups deepest first', () => {
    if (!usable()) return;
    mkdirSync(base!);
    const leaf = `${base}/leaf`;
    mkdirSync(leaf);
    rmdirTrees([leaf]);
    expect(existsSync(leaf)).toBe(false);
    const top = `${base}/top`;
    mkdirSync(`${top}/a/b`, { recursive: true });
    mkdirSync(`${top}/c`);
    rmdirTrees([top]);
    expect(existsSync(top)).toBe(false);
    // Already gone is not an error.
    rmdirTrees([top]);
  });

  it('names a cgroup with a live process and leaves it and what is above it', async () => {
    if (!usable()) return;
    if (!existsSync(base!)) mkdirSync(base!);
    const top = `${base}/busy`;
    mkdirSync(`${top}/empty`, { recursive: true });
    mkdirSync(`${top}/held`);
    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      writeFileSync(`${top}/held/cgroup.procs`, String(sleeper.pid));
      expect(() => rmdirTrees([top])).toThrow(/held/);
      expect(existsSync(`${top}/held`)).toBe(true);
      expect(existsSync(`${top}/empty`)).toBe(false);
      expect(existsSync(top)).toBe(true);
    } finally {
      sleeper.kill('SIGKILL');
      await new Promise((r) => sleeper.once('exit', r));
    }
    // The killed process leaves its cgroup once reaped; then the directory can go.
    for (let i = 0; i < 100 && existsSync(`${top}/held`); i++) {
      try {
        rmdirSync(`${top}/held`);
      } catch {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    rmdirTrees([top]);
    expect(existsSync(top)).toBe(false);
  });
});
