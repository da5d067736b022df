// Warm launchers (pool.ts): a sandbox handed to a launcher that already sits in its cgroup and
// namespaces must be indistinguishable from a cold one (identity, view, limits, exit reasons,
// kill tree), and the pool itself must leave nothing behind: not when drained, not when
// captrap is SIGKILLed (owner watchdog), not when even the watchdog is gone (stale cleanup).
// Real processes and real cgroups of this host.
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cleanupStaleCgroups, hierarchyRoots, ownerPrefix, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { builtLauncherPath } from '../../src/isolation/launcher/launcher.js';
import { isAlive } from '../../src/isolation/proc.js';
import { encodeRequest } from '../../src/isolation/pool.js';
import { configureWarmPool, createSandboxGroup, drainWarmPool, runSandboxed, warmPoolStats, type RunOptions } from '../../src/isolation/sandbox.js';

const host = probeHost();
const base = `captrap-test-pool-${process.pid}-${Date.now().toString(36)}`;
const root = fileURLToPath(new URL('../../', import.meta.url));
const dir = mkdtempSync(`${tmpdir()}/captrap-pool-`);
chmodSync(dir, 0o755);
const trackRoot = host.unifiedRoot ?? host.v1.freezer ?? host.v1.pids;
const usable = host.layout !== 'none' && builtLauncherPath() !== undefined && host.isRoot;
if (!usable) console.log(`pool tests skipped: ${host.layout === 'none' ? 'no cgroups' : !host.isRoot ? 'not root' : 'build/captrap-launch is not built'}`);
const opts = (o: RunOptions = {}): RunOptions => ({ cgroupBase: base, killGrace: 200, ...o });

/** Every cgroup directory (one per hierarchy) under the test's base. */
function cgroupsUnderBase(b = base): string[] {
  return hierarchyRoots(host).flatMap((h) => {
    try {
      return readdirSync(`${h.root}/${b}`).filter((n) => existsSync(`${h.root}/${b}/${n}/cgroup.procs`)).map((n) => `${h.root}/${b}/${n}`);
    } catch {
      return [];
    }
  });
}
const procsIn = (d: string) => readFileSync(`${d}/cgroup.procs`, 'utf8').split('\n').filter(Boolean).map(Number);

const waitFor = async (cond: () => boolean, ms: number) => {
  const deadline = Date.now() + ms;
  while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  return cond();
};
const waitGone = async (pids: number[], ms: number) => {
  await waitFor(() => !pids.some(isAlive), ms);
  return pids.filter(isAlive);
};
/** Ready launchers for sandboxes under base `b` outside any group, confined (namespaces made ahead) or not. */
const readyIn = (b: string, confined = true) => warmPoolStats().pools.filter((p) => p.key.includes(`|${b}||${confined ? 'pid' : '|'}`)).reduce((n, p) => n + p.ready, 0);

/** Runs once (cold: the pool is empty) so the pool of this shape fills, then waits until a launcher is ready. */
async function primed(o: RunOptions): Promise<void> {
  const ready = () => readyIn(o.cgroupBase ?? 'captrap', o.confine !== false);
  if (ready() > 0) return;
  await runSandboxed('true', [], o);
  expect(await waitFor(() => ready() > 0, 5000)).toBe(true);
}

beforeAll(() => configureWarmPool({ maxSize: 2 }));
afterEach(async () => {
  await drainWarmPool();
});
afterAll(async () => {
  configureWarmPool({ maxSize: 0 });
  await drainWarmPool();
  // The SIGKILL tests' own bases, also when one of them failed half-way.
  for (const b of [`${base}-k`, `${base}-s`]) {
    await cleanupStaleCgroups(host, b);
    removeCgroupBase(host, b);
  }
  rmSync(dir, { recursive: true, force: true });
  expect(cgroupsUnderBase()).toEqual([]);
  expect(removeCgroupBase(host, base)).toEqual([]);
});

describe.skipIf(!usable)('warm launchers', () => {
  it('a warm sandbox is what a cold one is: identity, view, environment, cwd, confinement report', async () => {
    writeFileSync(`${dir}/seen`, 'inside the view\n');
    chmodSync(`${dir}/seen`, 0o644);
    const o = opts({ memory: '64M', pids: 32, env: { GREETING: 'hi' }, cwd: dir, view: { readOnly: [dir] } });
    const script = 'echo "$(id -u) $(id -g) $(hostname) $GREETING $PWD"; cat seen; ls /; grep -c . /proc/self/status >/dev/null; cat /proc/1/cmdline | tr -d "\\0"; echo; grep Cap[EPB] /proc/self/status; echo x > /etc/x 2>/dev/null || echo read-only; ls -a /dev; echo x > /dev/shm/t && echo shm-writable; echo x > /dev/null && echo null-ok; cat /proc/keys 2>/dev/null | wc -c; echo 1 > /proc/sys/kernel/hostname 2>/dev/null || echo proc-sys-read-only; ls /proc/self/fd | tr "\\n" " "; echo';
    const cold = await runSandboxed('sh', ['-c', script], { ...o, warm: false });
    await primed(o);
    const warm = await runSandboxed('sh', ['-c', script], o);
    expect(cold.warm).toBe(false);
    expect(warm.warm).toBe(true);
    expect(warm.reason).toEqual({ kind: 'exited', code: 0 });
    expect(warm.stdout).toBe(cold.stdout);
    expect(warm.stdout).toContain(`65534 65534 captrap hi ${dir}\ninside the view\n`);
    expect(warm.stdout).toContain('shm-writable\nnull-ok\n0\nproc-sys-read-only\n');
    // Nothing the launcher held ahead (the host's mountinfo and mount namespace, its request channel) reaches the command: ls sees 0-2 and its own directory.
    expect(warm.stdout).toContain('\n0 1 2 3 \n');
    // The init's command line is wiped in both: no cgroup path or pid of the sidecar leaks.
    expect(warm.stdout).not.toContain(base);
    expect(warm.stderr).toBe(cold.stderr);
    expect(warm.confinement).toEqual(cold.confinement);
    expect(warm.cleanedUp).toBe(true);
    // Unconfined and without a cwd option, both start where captrap runs.
    const u = opts({ confine: false });
    const coldU = await runSandboxed('sh', ['-c', 'pwd; id -u'], { ...u, warm: false });
    await primed(u);
    const warmU = await runSandboxed('sh', ['-c', 'pwd; id -u'], u);
    expect(warmU.warm).toBe(true);
    expect(warmU.stdout).toBe(coldU.stdout);
    expect(warmU.stdout).toBe(`${process.cwd()}\n65534\n`);
  });

  it('the final limits are in place before the command runs, and the command is in the pool cgroup', async () => {
    const o = opts({ memory: '48M', pids: 12 });
    await primed(o);
    const sb = runSandboxed('sh', ['-c', 'echo ready; exec sleep 30'], o);
    expect(sb.warm).toBe(true);
    await new Promise<void>((r) => sb.stdout!.once('data', () => r()));
    const memDir = host.v1.memory ? `${host.v1.memory}/${base}/${sb.cgroupName}` : `${host.unifiedRoot}/${base}/${sb.cgroupName}`;
    const pidsDir = host.v1.pids ? `${host.v1.pids}/${base}/${sb.cgroupName}` : `${host.unifiedRoot}/${base}/${sb.cgroupName}`;
    const mem = readFileSync(`${memDir}/${host.v1.memory ? 'memory.limit_in_bytes' : 'memory.max'}`, 'utf8').trim();
    expect(Number(mem)).toBe(48 * 1024 * 1024);
    expect(readFileSync(`${pidsDir}/pids.max`, 'utf8').trim()).toBe('12');
    // Leader, init and command: all in the sandbox's cgroup in every hierarchy.
    for (const d of [memDir, pidsDir]) expect(procsIn(d).length).toBeGreaterThanOrEqual(3);
    expect(procsIn(memDir)).toContain(sb.pid);
    sb.kill();
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'killed' });
    expect(existsSync(memDir)).toBe(false);
  });

  it.skipIf(!(host.v1.memory || host.unifiedControllers.includes('memory')))('exit reasons come from the counters: oom', async () => {
    const o = opts({ memory: '32M', timeout: 10_000 });
    await primed(o);
    const r = await runSandboxed('sh', ['-c', 'x=a; while :; do x=$x$x; done'], o);
    expect(r.warm).toBe(true);
    expect(r.reason).toEqual({ kind: 'oom' });
    expect(r.counters.oomKills).toBeGreaterThan(0);
    expect(r.usage.memoryPeakBytes).toBeLessThanOrEqual(32 * 1024 * 1024);
  });

  it.skipIf(!(host.v1.pids || host.unifiedControllers.includes('pids')))('exit reasons come from the counters: pids-limit, and a clean exit stays clean', async () => {
    const o = opts({ pids: 20, timeout: 1500 });
    await primed(o);
    const r = await runSandboxed('sh', ['-c', 'b() { b & b & wait; }; b'], o);
    expect(r.warm).toBe(true);
    expect(r.reason).toEqual({ kind: 'pids-limit' });
    expect(r.counters.pidsMax).toBeGreaterThan(0);
    await primed(o);
    const ok = await runSandboxed('sh', ['-c', 'exit 3'], o);
    expect(ok.warm).toBe(true);
    expect(ok.reason).toEqual({ kind: 'exited', code: 3 });
    expect(ok.counters).toEqual({ oomKills: 0, pidsMax: 0 });
  });

  it('kill() takes the whole tree of a warm sandbox, setsid escapees included', async () => {
    const o = opts({ confine: false });
    await primed(o);
    const sb = runSandboxed('sh', ['-c', "trap '' TERM; setsid sh -c 'echo s $$; exec sleep 300' & (sh -c 'echo d $$; exec sleep 300' &) & echo l $$; while :; do sleep 0.1; done"], o);
    expect(sb.warm).toBe(true);
    const pids = await new Promise<number[]>((resolve) => {
      let buf = '';
      sb.stdout!.on('data', (c: Buffer) => {
        buf += c.toString();
        const found = [...buf.matchAll(/^[sdl] (\d+)$/gm)].map((m) => Number(m[1]));
        if (found.length === 3) resolve(found);
      });
    });
    sb.kill();
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'killed' });
    expect(await waitGone(pids, 2000)).toEqual([]);
    expect(r.cleanedUp).toBe(true);
  });

  it('requests a warm launcher cannot serve start cold: stdin, warm: false, a root below /dev, a v1 cpu limit', async () => {
    const o = opts();
    await primed(o);
    const piped = runSandboxed('cat', [], { ...o, stdin: 'pipe' });
    piped.stdin!.end('from stdin');
    expect((await piped).warm).toBe(false);
    expect((await piped).stdout).toBe('from stdin');
    expect((await runSandboxed('true', [], { ...o, warm: false })).warm).toBe(false);
    // A warm launcher's /dev and /proc are built already: a root below them is bound cold.
    const devRoot = await runSandboxed('sh', ['-c', 'ls -l /dev/full'], { ...o, view: { readOnly: ['/dev/full'] } });
    expect(devRoot.warm).toBe(false);
    expect(devRoot.reason).toEqual({ kind: 'exited', code: 0 });
    if (host.layout !== 'v2' && host.v1.cpu) expect((await runSandboxed('true', [], { ...o, cpu: 0.5 })).warm).toBe(false);
    // Still there for the next request that fits.
    expect((await runSandboxed('true', [], o)).warm).toBe(true);
  });

  it('a group has its own pool: launchers wait inside it, count against its limits, and die with killAll and destroy', async () => {
    const group = createSandboxGroup({ cgroupBase: base, limits: { pids: 24, memory: '256M' } });
    const groupDir = (h: string) => `${h}/${group.path}`;
    const dirs = hierarchyRoots(host).map((h) => groupDir(h.root)).filter((d) => existsSync(`${d}/cgroup.procs`));
    const groupPools = () => warmPoolStats().pools.filter((p) => p.key.includes(`|${group.path}|`));
    const inGroup = () => groupPools().reduce((n, p) => n + p.ready, 0);
    try {
      const first = await runSandboxed('true', [], { group, killGrace: 200 });
      expect(first.warm).toBe(false);
      // The miss grew the group's pool; wait until every launcher of it is ready.
      expect(await waitFor(() => groupPools().length === 1 && groupPools()[0]!.starting === 0 && inGroup() === groupPools()[0]!.target, 5000)).toBe(true);
      // Each idle launcher (leader and init) sits in a cgroup below the group, in every hierarchy the group has.
      for (const d of dirs) {
        const kids = readdirSync(d).filter((n) => existsSync(`${d}/${n}/cgroup.procs`));
        expect(kids.length).toBe(inGroup());
        for (const k of kids) expect(procsIn(`${d}/${k}`).length).toBe(2);
      }
      if (host.v1.pids) expect(Number(readFileSync(`${host.v1.pids}/${group.path}/pids.current`, 'utf8'))).toBeGreaterThanOrEqual(2);
      const warm = await runSandboxed('sh', ['-c', 'id -u; hostname'], { group, killGrace: 200, memory: '64M', pids: 8 });
      expect(warm.warm).toBe(true);
      expect(warm.stdout).toBe('65534\ncaptrap\n');
      expect(warm.cleanedUp).toBe(true);
      // Not the pool of the same base outside the group: flat sandboxes never get a launcher of the group's.
      expect(await waitFor(() => inGroup() > 0, 5000)).toBe(true);
      const idle = dirs.flatMap((d) => readdirSync(d).filter((n) => existsSync(`${d}/${n}/cgroup.procs`)).flatMap((n) => procsIn(`${d}/${n}`)));
      expect(idle.length).toBeGreaterThan(0);
      // Emptying the group (an agent stopped or quarantined) retires its pool at once.
      group.killAll('owner-exited');
      expect(await waitGone(idle, 3000)).toEqual([]);
      expect(inGroup()).toBe(0);
      // The group is usable again afterwards (a new pool starts with the next request), and destroy() is not held up.
      expect((await runSandboxed('true', [], { group, killGrace: 200 })).reason).toEqual({ kind: 'exited', code: 0 });
      expect(await waitFor(() => inGroup() > 0, 5000)).toBe(true);
    } finally {
      const t0 = Date.now();
      await group.destroy();
      expect(Date.now() - t0).toBeLessThan(3000);
    }
    expect(group.removed).toBe(true);
    for (const d of dirs) expect(existsSync(d)).toBe(false);
    expect(warmPoolStats().pools.filter((p) => p.key.includes(`|${group.path}|`))).toEqual([]);
  });

  it('a refill scheduled before the group is emptied starts nothing in it (destroy begins with the same killAll)', async () => {
    const group = createSandboxGroup({ cgroupBase: base, limits: { pids: 32 } });
    const dirs = hierarchyRoots(host).map((h) => `${h.root}/${group.path}`).filter((d) => existsSync(d));
    try {
      // A miss schedules the group's refill a moment later; the group is emptied before it fires.
      const sb = runSandboxed('sleep', ['5'], { group, killGrace: 200 });
      expect(sb.warm).toBe(false);
      group.killAll('owner-exited');
      expect((await sb).reason.kind).toBe('owner-exited');
      await new Promise((r) => setTimeout(r, 300));
      expect(warmPoolStats().pools.filter((p) => p.key.includes(`|${group.path}|`))).toEqual([]);
      for (const d of dirs) expect(readdirSync(d).filter((n) => existsSync(`${d}/${n}/cgroup.procs`))).toEqual([]);
    } finally {
      await group.destroy();
    }
    expect(group.removed).toBe(true);
  });

  it.skipIf(!host.v1.pids && host.layout !== 'v2')('a refill never takes a group over its pids limit: a launcher joins by migration, which pids.max does not refuse', async () => {
    const group = createSandboxGroup({ cgroupBase: base, limits: { pids: 8 } });
    const pidsDir = host.v1.pids ? `${host.v1.pids}/${group.path}` : `${host.unifiedRoot}/${group.path}`;
    const groupPools = () => warmPoolStats().pools.filter((p) => p.key.includes(`|${group.path}|`));
    try {
      // Leader, init, sh and four sleeps: 7 of the group's 8 (stdin piped: this one never takes a launcher).
      const holder = runSandboxed('sh', ['-c', 'sleep 30 & sleep 30 & sleep 30 & sleep 30 & echo up; read x; kill $(jobs -p)'], { group, killGrace: 200, stdin: 'pipe' });
      await new Promise<void>((r) => holder.stdout!.once('data', () => r()));
      let peak = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          peak = Math.max(peak, Number(readFileSync(`${pidsDir}/pids.current`, 'utf8')));
          await new Promise((r) => setTimeout(r, 2));
        }
      })();
      // A request that fits a pool misses (none ready) and cannot start either (no room for its own
      // tasks); the refill it schedules finds no room for a launcher's two tasks and starts none.
      await runSandboxed('true', [], { group, killGrace: 200 }).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 300));
      sampling = false;
      await sampler;
      expect(peak).toBeGreaterThanOrEqual(7);
      expect(peak).toBeLessThanOrEqual(8);
      expect(groupPools().reduce((n, p) => n + p.ready + p.starting, 0)).toBe(0);
      holder.stdin!.end('\n');
      await holder;
      // With room again, the group's pool fills.
      await runSandboxed('true', [], { group, killGrace: 200 });
      expect(await waitFor(() => groupPools().some((p) => p.ready > 0), 5000)).toBe(true);
    } finally {
      await group.destroy();
    }
  });

  it.skipIf(!host.v1.pids && host.layout !== 'v2')('a warm launcher checks for room right before it joins: with none under its cgroup\'s or an enclosing pids.max it exits 75 and never enters', async () => {
    // The pool checks for room before it spawns a launcher, but a tool can fill its group in the
    // milliseconds the spawn takes; the launcher's own check narrows that to the moment of the join.
    const hier = host.v1.pids ?? host.unifiedRoot!;
    const parent = `${hier}/${base}-room`;
    const child = `${parent}/c`;
    mkdirSync(child, { recursive: true });
    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    const slept = new Promise((r) => sleeper.once('exit', r));
    try {
      if (!existsSync(`${parent}/pids.max`)) {
        console.log(`launcher room check not tested: ${parent} has no pids.max (pids is not enabled above it)`);
        return;
      }
      writeFileSync(`${parent}/pids.max`, '1');
      writeFileSync(`${child}/cgroup.procs`, String(sleeper.pid));
      const launch = () =>
        new Promise<{ code: number | null; err: string; joined: boolean }>((resolve) => {
          const l = spawn(builtLauncherPath()!, ['--ppid', String(process.pid), '--pool', '--join', `${child}/cgroup.procs`], { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
          let err = '';
          let joined = false;
          l.stderr!.on('data', (d: Buffer) => (err += d.toString()));
          const ctl = l.stdio[3] as import('node:net').Socket;
          ctl.on('error', () => undefined);
          ctl.once('data', () => {
            joined = procsIn(child).includes(l.pid!);
            ctl.destroy(); // EOF instead of a request: the launcher exits 0
          });
          l.once('exit', (code) => resolve({ code, err, joined }));
        });
      const full = await launch();
      expect(full.code).toBe(75);
      expect(full.err).toMatch(/no room under pids\.max/);
      expect(full.joined).toBe(false);
      expect(readFileSync(`${parent}/pids.current`, 'utf8').trim()).toBe('1');
      // With room for it, the same launcher joins and waits for its request.
      writeFileSync(`${parent}/pids.max`, '2');
      const room = await launch();
      expect(room).toMatchObject({ code: 0, joined: true });
    } finally {
      sleeper.kill('SIGKILL');
      await slept;
      await waitFor(() => {
        try {
          rmdirSync(child);
          rmdirSync(parent);
          return true;
        } catch {
          return false;
        }
      }, 5000);
    }
    expect(existsSync(parent)).toBe(false);
  });

  it('the view\'s system part is built ahead, and a warm view hides exactly what a cold one hides, also under a root bound over a hidden path', async () => {
    // A system path of our own (outside /tmp, whose private copy comes with the request) with a secret file and a secret directory in it.
    const sys = mkdtempSync('/var/tmp/captrap-pool-sys-');
    try {
      mkdirSync(`${sys}/secretdir/inner`, { recursive: true });
      writeFileSync(`${sys}/secret`, 'top secret\n');
      writeFileSync(`${sys}/open`, 'open\n');
      writeFileSync(`${sys}/secretdir/inner/deep`, 'deep\n');
      chmodSync(sys, 0o755);
      const view = { system: ['/usr', '/etc', '/bin', '/lib', '/lib64', sys], hide: [`${sys}/secret`, `${sys}/secretdir`] };
      // As root (no capabilities), so a file's mode alone would not keep /etc/shadow out: only the hide does.
      const base0 = opts({ allowRoot: true, view });
      const script = `cat /etc/shadow >/dev/null 2>&1 && echo shadow-read || echo shadow-hidden; cat ${sys}/open; cat ${sys}/secret 2>&1 | head -c 0; cat ${sys}/secret >/dev/null 2>&1 && echo secret-read || echo secret-hidden; ls ${sys}/secretdir 2>&1 | grep -c inner; echo x > ${sys}/new 2>/dev/null && echo wrote || echo no-write`;
      const cases: RunOptions[] = [base0, opts({ allowRoot: true, view: { ...view, readWrite: [sys] } }), opts({ allowRoot: true, view: { ...view, readOnly: [`${sys}/secretdir`] } })];
      for (const o of cases) {
        const cold = await runSandboxed('sh', ['-c', script], { ...o, warm: false });
        await primed(o);
        // The idle launchers were started with the system part (binds, links, hides) to build ahead.
        const idle = cgroupsUnderBase().flatMap((d) => procsIn(d)).map((pid) => {
          try {
            return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
          } catch {
            return [];
          }
        });
        expect(idle.some((argv) => argv.includes('--pool') && argv.join(' ').includes(`--ro /usr --ro /etc --ro ${sys} `) && argv.join(' ').includes(`--hide ${sys}/secret`))).toBe(true);
        const warm = await runSandboxed('sh', ['-c', script], o);
        expect(warm.warm).toBe(true);
        expect(warm.stdout).toBe(cold.stdout);
        expect(warm.stdout).toMatch(/^shadow-hidden\nopen\nsecret-hidden\n0\n/);
        rmSync(`${sys}/new`, { force: true });
      }
      // Writable root over the system path: writes land, the hides still hold (re-applied over the request's bind).
      const rw = await runSandboxed('sh', ['-c', script], cases[1]!);
      expect(rw.stdout).toContain('secret-hidden\n0\nwrote\n');
      // A root below a path hidden ahead starts cold (it would land inside the hiding mount), and stays hidden.
      const below = await runSandboxed('sh', ['-c', `cat ${sys}/secretdir/inner/deep 2>/dev/null || echo deep-hidden`], opts({ allowRoot: true, view: { ...view, readWrite: [`${sys}/secretdir/inner`] } }));
      expect(below.warm).toBe(false);
      expect(below.stdout).toBe('deep-hidden\n');
    } finally {
      rmSync(sys, { recursive: true, force: true });
    }
  });

  it.skipIf(!host.isRoot || !host.namespaces.pid)('with --drop-caps a launcher empties its bounding set ahead, and refuses a request that would keep capabilities', async () => {
    const bin = builtLauncherPath()!;
    const run = (requestArgs: string[]) =>
      new Promise<{ code: number | null; out: string; err: string; initBoundAhead: string }>((resolve) => {
        const l = spawn(bin, ['--ppid', String(process.pid), '--pool', '--unshare', 'pid', '--drop-caps'], { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        let initBoundAhead = '';
        l.stdout!.on('data', (d: Buffer) => (out += d.toString()));
        l.stderr!.on('data', (d: Buffer) => (err += d.toString()));
        const ctl = l.stdio[3] as import('node:net').Socket;
        ctl.on('error', () => undefined);
        ctl.once('data', () => {
          // Ready: its init (the leader's only child) waits for the request with the bounding set already empty.
          const init = readFileSync(`/proc/${l.pid}/task/${l.pid}/children`, 'utf8').trim();
          initBoundAhead = /CapBnd:\s*(\S+)/.exec(readFileSync(`/proc/${init}/status`, 'utf8'))?.[1] ?? '';
          ctl.end(encodeRequest([bin, '--ppid', String(process.pid), '--unshare', 'pid', ...requestArgs], {}, '/'));
        });
        l.once('close', (code) => resolve({ code, out, err, initBoundAhead }));
      });
    const status = ['--', '/bin/sh', '-c', 'grep -E "^Cap(Bnd|Prm|Eff)" /proc/self/status'];
    const keeps = await run(['--uid', '65534', '--gid', '65534', ...status]);
    expect(keeps.code).toBe(125);
    expect(keeps.err).toMatch(/does not fit this warm launcher/);
    expect(keeps.out).toBe('');
    expect(keeps.initBoundAhead).toBe('0000000000000000');
    const drops = await run(['--drop-caps', '--uid', '65534', '--gid', '65534', ...status]);
    expect(drops).toMatchObject({ code: 0, err: '' });
    expect(drops.out).toBe('CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n');
  });

  it('a mount made on the host after the launchers started is seen: the launcher copies the table afresh', async () => {
    const o = opts();
    await primed(o);
    const mnt = mkdtempSync(`${tmpdir()}/captrap-pool-mnt-`);
    chmodSync(mnt, 0o755);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'mode=0755,size=1m', 'captrap-test', mnt]);
    try {
      writeFileSync(`${mnt}/on-the-new-mount`, 'fresh\n');
      chmodSync(`${mnt}/on-the-new-mount`, 0o644);
      const r = await runSandboxed('cat', [`${mnt}/on-the-new-mount`], { ...o, view: { readOnly: [mnt] } });
      expect(r.warm).toBe(true);
      expect(r.stdout).toBe('fresh\n');
      // The table is still as that launcher found it: the next one builds ahead as usual.
      await primed(o);
      const again = await runSandboxed('cat', [`${mnt}/on-the-new-mount`], { ...o, view: { readOnly: [mnt] } });
      expect(again.warm).toBe(true);
      expect(again.stdout).toBe('fresh\n');
    } finally {
      await drainWarmPool();
      execFileSync('umount', [mnt]);
      rmSync(mnt, { recursive: true, force: true });
    }
  });

  it('a mount removed from the host after the launchers started is gone from the view', async () => {
    const o = opts();
    const mnt = mkdtempSync(`${tmpdir()}/captrap-pool-mnt-`);
    chmodSync(mnt, 0o755);
    writeFileSync(`${mnt}/under-the-mount`, 'underneath\n');
    chmodSync(`${mnt}/under-the-mount`, 0o644);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'mode=0755,size=1m', 'captrap-test', mnt]);
    let mounted = true;
    try {
      writeFileSync(`${mnt}/on-the-mount`, 'mounted\n');
      chmodSync(`${mnt}/on-the-mount`, 0o644);
      await primed(o);
      execFileSync('umount', [mnt]);
      mounted = false;
      const r = await runSandboxed('cat', [`${mnt}/under-the-mount`, `${mnt}/on-the-mount`], { ...o, view: { readOnly: [mnt] } });
      expect(r.warm).toBe(true);
      // What the host shows now: the directory below, not the launcher's copy of the mount.
      expect(r.stdout).toBe('underneath\n');
      expect(r.stderr).toMatch(/on-the-mount: No such file/);
    } finally {
      await drainWarmPool();
      if (mounted) execFileSync('umount', [mnt]);
      rmSync(mnt, { recursive: true, force: true });
    }
  });

  it('draining retires every idle launcher and removes its cgroups; size 0 starts everything cold', async () => {
    const o = opts();
    await primed(o);
    const pool = cgroupsUnderBase();
    expect(pool.length).toBeGreaterThan(0);
    const launchers = pool.flatMap(procsIn);
    expect(launchers.length).toBeGreaterThan(0);
    await drainWarmPool();
    expect(cgroupsUnderBase()).toEqual([]);
    expect(await waitGone(launchers, 2000)).toEqual([]);
    configureWarmPool({ maxSize: 0 });
    try {
      expect((await runSandboxed('true', [], o)).warm).toBe(false);
      expect((await runSandboxed('true', [], o)).warm).toBe(false);
      expect(cgroupsUnderBase()).toEqual([]);
    } finally {
      configureWarmPool({ maxSize: 2 });
    }
    expect(() => configureWarmPool({ maxSize: -1 })).toThrow(expect.objectContaining({ code: 'E_SANDBOX_OPTION' }));
  });
});

// A real node process fills a pool and is SIGKILLed.
const STARTER = `
import { configureWarmPool, runSandboxed, warmPoolStats } from ${JSON.stringify(`${root}src/isolation/sandbox.ts`)};
import { ownerPrefix } from ${JSON.stringify(`${root}src/isolation/cgroup.ts`)};
const base = process.argv[2];
configureWarmPool({ maxSize: 2 });
await runSandboxed('true', [], { cgroupBase: base });
while (warmPoolStats().pools.reduce((n, p) => n + p.ready, 0) < 2) await new Promise((r) => setTimeout(r, 10));
console.log(JSON.stringify({ prefix: ownerPrefix() }));
setInterval(() => {}, 1000);
`;

async function startFilledPool(b: string, env: NodeJS.ProcessEnv = process.env) {
  const script = `${dir}/starter-${Date.now()}.mts`;
  writeFileSync(script, STARTER);
  const starter = spawn(process.execPath, ['--import', 'tsx', script, b], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], env });
  const info = await new Promise<{ prefix: string }>((resolve, reject) => {
    let buf = '';
    starter.stdout.on('data', (c: Buffer) => {
      buf += c.toString();
      const line = buf.split('\n').find((l) => l.startsWith('{'));
      if (line) resolve(JSON.parse(line));
    });
    starter.once('exit', (code) => reject(new Error(`starter exited early (${code})`)));
  });
  const mine = cgroupsUnderBase(b).filter((d) => d.split('/').pop()!.startsWith(info.prefix));
  return { starter, mine, launchers: [...new Set(mine.flatMap(procsIn))] };
}

describe.skipIf(!usable || !trackRoot)('warm launchers when captrap is SIGKILLed', () => {
  it('the idle launchers die with it and the owner watchdog removes their cgroups', async () => {
    const b = `${base}-k`;
    const { starter, mine, launchers } = await startFilledPool(b);
    // Two idle confined launchers: each a leader and its namespace's init.
    expect(launchers.length).toBe(4);
    expect(mine.length).toBeGreaterThan(0);
    starter.kill('SIGKILL');
    await new Promise((r) => starter.once('exit', r));
    expect(await waitGone(launchers, 2000)).toEqual([]);
    // The watchdog is a shell loop: give it time on a loaded machine.
    await waitFor(() => mine.every((d) => !existsSync(d)), 6000);
    expect(mine.filter((d) => existsSync(d)).map((d) => [d, procsIn(d)])).toEqual([]);
    expect(await cleanupStaleCgroups(host, b)).toEqual({ removed: [], killed: 0, failed: [] });
    expect(removeCgroupBase(host, b)).toEqual([]);
  });

  it('without a live watchdog, stale cleanup at the next start removes the pool cgroups', async () => {
    const b = `${base}-s`;
    // A watchdog that exits at once stands in for one that was itself killed.
    const { starter, mine, launchers } = await startFilledPool(b, { ...process.env, CAPTRAP_WATCHDOG_SH: '/bin/true' });
    starter.kill('SIGKILL');
    await new Promise((r) => starter.once('exit', r));
    expect(await waitGone(launchers, 2000)).toEqual([]);
    expect(mine.filter((d) => existsSync(d)).length).toBeGreaterThan(0);
    const r = await cleanupStaleCgroups(host, b);
    expect(r.failed).toEqual([]);
    expect(r.removed.sort()).toEqual(mine.sort());
    expect(removeCgroupBase(host, b)).toEqual([]);
    expect(ownerPrefix()).not.toBe('');
  });
});
