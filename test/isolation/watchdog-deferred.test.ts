// When the owner watchdog starts (sandbox.ts, armWatchdog). A sandbox without a pid namespace
// gets it before its launcher: captrap SIGKILLed right after the spawn must leave no setsid
// grandchild behind. A confined sandbox with a pid namespace dies whole with its leader, so its
// watchdog is started only if it is still running WATCHDOG_DEFER_MS later: captrap SIGKILLed
// before that leaves no process either (parent-death signal, the namespace's init, the kernel's
// kill of the namespace), only empty cgroups for the next stale cleanup.
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanupStaleCgroups, hierarchyRoots, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { builtLauncherPath } from '../../src/isolation/launcher/launcher.js';
import { pollUntil, subtreePids } from '../../src/isolation/cgroupfs.js';

const host = probeHost();
const root = fileURLToPath(new URL('../../', import.meta.url));
const dir = mkdtempSync(`${tmpdir()}/captrap-wdd-`);
// The sandbox runs as 65534: it must be able to leave its marker here.
chmodSync(dir, 0o777);
const bases: string[] = [];
const newBase = () => {
  const b = `captrap-test-wdd-${process.pid}-${Date.now().toString(36)}-${bases.length}`;
  bases.push(b);
  return b;
};
afterAll(async () => {
  for (const b of bases) {
    await cleanupStaleCgroups(host, b);
    removeCgroupBase(host, b);
  }
  rmSync(dir, { recursive: true, force: true });
});

// An owner that starts one sandbox whose command forks a setsid grandchild and a background
// child, then writes a marker. The owner waits for the marker by polling synchronously, so its
// event loop never turns and no deferred watchdog timer can fire; it prints what it saw and
// SIGKILLs itself.
const OWNER = `
import { existsSync, readFileSync } from 'node:fs';
import { runSandboxed } from ${JSON.stringify(`${root}src/isolation/sandbox.ts`)};
import { ownerWatchdogs } from ${JSON.stringify(`${root}src/isolation/watchdog.ts`)};
import { hierarchyRoots } from ${JSON.stringify(`${root}src/isolation/cgroup.ts`)};
import { probeHost } from ${JSON.stringify(`${root}src/isolation/host.ts`)};
const [base, mode, marker] = process.argv.slice(2);
const tree = "setsid sh -c 'exec sleep 300' & sh -c 'exec sleep 300' & echo > " + marker + "; exec sleep 300";
const options = mode === 'pidns' ? { cgroupBase: base, view: { readWrite: [marker.slice(0, marker.lastIndexOf('/'))] } } : { cgroupBase: base, confine: false, namespaces: [] };
const sb = runSandboxed('sh', ['-c', tree], options);
const watchdogsAtSpawn = ownerWatchdogs().filter((w) => w.base === base).length;
const deadline = Date.now() + 10000;
while (!existsSync(marker) && Date.now() < deadline);
const procs = (d) => { try { return readFileSync(d + '/cgroup.procs', 'utf8').split('\\n').filter(Boolean).length; } catch { return 0; } };
const members = Math.max(...hierarchyRoots(probeHost()).map((h) => procs(h.root + '/' + base + '/' + sb.cgroupName)));
console.log(JSON.stringify({ name: sb.cgroupName, watchdogsAtSpawn, watchdogsAtKill: ownerWatchdogs().filter((w) => w.base === base).length, ready: existsSync(marker), members }));
process.kill(process.pid, 'SIGKILL');
`;

interface Seen {
  name: string;
  watchdogsAtSpawn: number;
  watchdogsAtKill: number;
  ready: boolean;
  members: number;
}

async function ownerKilledAtOnce(base: string, mode: 'pidns' | 'plain'): Promise<Seen> {
  const script = `${dir}/owner-${mode}.mts`;
  writeFileSync(script, OWNER);
  const owner = spawn(process.execPath, ['--import', 'tsx', script, base, mode, `${dir}/ready-${mode}`], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  owner.stdout.on('data', (c: Buffer) => (out += c.toString()));
  const signal = await new Promise<NodeJS.Signals | null>((r) => owner.once('exit', (_c, s) => r(s)));
  expect(signal).toBe('SIGKILL');
  const line = out.split('\n').find((l) => l.startsWith('{'));
  expect(line, `owner printed nothing: ${out}`).toBeDefined();
  return JSON.parse(line!) as Seen;
}

const dirsOf = (base: string, name: string) => hierarchyRoots(host).map((h) => `${h.root}/${base}/${name}`).filter((d) => existsSync(d));
const alive = (base: string, name: string) => dirsOf(base, name).flatMap((d) => subtreePids(d));

const waitFor = (cond: () => boolean, ms: number) => pollUntil(cond, ms, 10);

const canConfine = builtLauncherPath() !== undefined && host.namespaces.pid && host.namespaces.mount && host.isRoot;

describe.skipIf(host.layout === 'none' || !host.tools.setpriv)('owner watchdog: when it starts', () => {
  it('without a pid namespace it starts before the launcher: captrap SIGKILLed right after the spawn leaves no setsid grandchild', async () => {
    const base = newBase();
    const seen = await ownerKilledAtOnce(base, 'plain');
    expect(seen.ready).toBe(true);
    expect(seen.watchdogsAtSpawn).toBe(1);
    // leader, the setsid grandchild, the background child, their two sleeps at most: at least three
    expect(seen.members).toBeGreaterThanOrEqual(3);
    // The watchdog alone (no stale cleanup here) kills the whole tree and removes the cgroups.
    expect(await waitFor(() => dirsOf(base, seen.name).length === 0, 3000)).toBe(true);
  });

  it.skipIf(!canConfine)('in a pid namespace it is deferred: captrap SIGKILLed before it starts leaves no process, and stale cleanup removes the cgroups', async () => {
    const base = newBase();
    const seen = await ownerKilledAtOnce(base, 'pidns');
    expect(seen.ready).toBe(true);
    expect(seen.watchdogsAtSpawn).toBe(0);
    expect(seen.watchdogsAtKill).toBe(0);
    // leader, the namespace's init, sh, the setsid grandchild, the background child
    expect(seen.members).toBeGreaterThanOrEqual(4);
    expect(await waitFor(() => alive(base, seen.name).length === 0, 3000)).toBe(true);
    // No watchdog ran: the empty cgroups are left to the next stale cleanup.
    expect(dirsOf(base, seen.name).length).toBeGreaterThan(0);
    const r = await cleanupStaleCgroups(host, base);
    expect(r.killed).toBe(0);
    expect(dirsOf(base, seen.name)).toEqual([]);
  });

  it.skipIf(!canConfine)('in a pid namespace a sandbox still running after WATCHDOG_DEFER_MS gets its watchdog', async () => {
    const { runSandboxed, WATCHDOG_DEFER_MS } = await import('../../src/isolation/sandbox.js');
    const { ownerWatchdogs } = await import('../../src/isolation/watchdog.js');
    const base = newBase();
    const mine = () => ownerWatchdogs().filter((w) => w.base === base);
    const short = await runSandboxed('true', [], { cgroupBase: base });
    expect(short.reason).toEqual({ kind: 'exited', code: 0 });
    await new Promise((r) => setTimeout(r, WATCHDOG_DEFER_MS + 50));
    // Over before the deferral ran out: it never needed one.
    expect(mine()).toEqual([]);
    const sb = runSandboxed('sleep', ['30'], { cgroupBase: base });
    expect(mine()).toEqual([]);
    expect(await waitFor(() => mine().length === 1, WATCHDOG_DEFER_MS + 2000)).toBe(true);
    const pid = mine()[0]!.pid;
    expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8')).toContain('captrap-watchdog');
    sb.kill();
    await sb;
  });

  it.skipIf(!canConfine)('a deferred watchdog that cannot start stops its sandbox (killed), or with allowDegraded is reported as a degradation', async () => {
    const { runSandboxed, WATCHDOG_DEFER_MS } = await import('../../src/isolation/sandbox.js');
    const shell = `${dir}/vanishing-sh`;
    const saved = process.env.CAPTRAP_WATCHDOG_SH;
    process.env.CAPTRAP_WATCHDOG_SH = shell;
    try {
      for (const allowDegraded of [false, true]) {
        // There when the sandbox is planned (checked before anything exists), gone when the deferred start comes.
        symlinkSync(host.tools.sh ?? '/bin/sh', shell);
        const sb = runSandboxed('sleep', ['1'], { cgroupBase: newBase(), allowDegraded, killGrace: 0 });
        unlinkSync(shell);
        const r = await sb;
        if (allowDegraded) {
          expect(r.reason).toEqual({ kind: 'exited', code: 0 });
          expect(r.degraded.map((d) => d.limit)).toContain('die-with-parent');
        } else {
          expect(r.reason).toEqual({ kind: 'killed' });
          expect(r.durationMs).toBeLessThan(1000);
          expect(r.durationMs).toBeGreaterThanOrEqual(WATCHDOG_DEFER_MS - 5);
        }
      }
    } finally {
      if (saved === undefined) delete process.env.CAPTRAP_WATCHDOG_SH;
      else process.env.CAPTRAP_WATCHDOG_SH = saved;
      rmSync(shell, { force: true });
    }
  });
});
