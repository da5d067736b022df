// Groups: a cgroup tree that mirrors the agent tree, so an agent's limits bound the sum of the
// agent, its tools and its sub-agents. Real processes, real cgroups of this host. Sandboxes run
// unconfined here (no pid namespace, no launcher init) so task counts are exact.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { cgroupV1Backend, cleanupStaleCgroups, hierarchyRoots, newCgroupName, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost, type HostInfo } from '../../src/isolation/host.js';
import { isAlive, isSameProcess, processRef, type ProcessRef } from '../../src/isolation/proc.js';
import { createSandboxGroup, prioritiseSelf, runSandboxed, type RunOptions, type Sandbox, type SandboxGroup, type SandboxGroupOptions } from '../../src/isolation/sandbox.js';
import { cgroupOf } from './helpers.js';

const host = probeHost();
const base = `captrap-test-grp-${process.pid}-${Date.now().toString(36)}`;
const root = fileURLToPath(new URL('../../', import.meta.url));
const dir = mkdtempSync(`${tmpdir()}/captrap-grp-`);
const cg = host.layout !== 'none';
const hasMemory = host.v1.memory !== undefined || host.unifiedControllers.includes('memory');
const hasPids = host.v1.pids !== undefined || host.unifiedControllers.includes('pids');
const hasCpu = host.v1.cpu !== undefined || host.unifiedControllers.includes('cpu');
const perl = existsSync('/usr/bin/perl');
const owners: ChildProcess[] = [];
const groups: SandboxGroup[] = [];

const unconfined = (group: SandboxGroup, o: RunOptions = {}): RunOptions => ({ group, confine: false, namespaces: [], killGrace: 100, ...o });
const group = (o: SandboxGroupOptions = {}) => {
  const g = createSandboxGroup(o.parent ? o : { cgroupBase: base, ...o });
  groups.push(g);
  return g;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function waitLine(sb: Sandbox, re: RegExp, ms = 5000): Promise<RegExpMatchArray> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new Error(`no ${re} in ${JSON.stringify(buf)}`)), ms);
    sb.stdout!.on('data', (c: Buffer) => {
      buf += c.toString();
      const m = re.exec(buf);
      if (m) {
        clearTimeout(t);
        resolve(m);
      }
    });
  });
}

/** Every directory of `name` (a top-level group or sandbox) under the base, in every hierarchy. */
const dirsOf = (name: string) => hierarchyRoots(host).map((h) => `${h.root}/${base}/${name}`).filter((d) => existsSync(d));

/** The group's pids.current (v1 pids hierarchy, else the cgroup2 tree). */
function pidsCurrent(g: SandboxGroup): number {
  const d = g.dirs.find((x) => (host.v1.pids ? x.startsWith(`${host.v1.pids}/`) : true))!;
  return Number(readFileSync(`${d}/pids.current`, 'utf8'));
}

// Holds `n` children (plus itself) until killed; prints "ready" once they are all forked.
const holder = (n: number) => `$|=1; for (1..${n}) { my $p = fork(); die "fork: $!" unless defined $p; if (!$p) { sleep 60; exit 0 } } print "ready\\n"; sleep 60`;
// Tries `n` forks, keeps the children, prints how many it got; fails if any was refused.
const forker = (n: number) => `$|=1; my $k = 0; for (1..${n}) { my $p = fork(); last unless defined $p; if (!$p) { sleep 60; exit 0 } $k++ } print "forked $k\\n"; exit($k < ${n} ? 1 : 0)`;

afterAll(async () => {
  for (const o of owners) if (o.exitCode === null && o.signalCode === null) o.kill('SIGKILL');
  for (const g of groups.reverse()) await g.destroy().catch(() => undefined);
  await cleanupStaleCgroups(host, base);
  rmSync(dir, { recursive: true, force: true });
  expect(removeCgroupBase(host, base)).toEqual([]);
});

describe.skipIf(!cg)(`sandbox groups on this host (${host.layout})`, () => {
  it.skipIf(!hasCpu)('cpu 0.25 on a group bounds four cpu-1 spinners together to about a quarter core', async () => {
    const g = group({ limits: { cpu: 0.25 } });
    const sbs = [0, 1, 2, 3].map(() => runSandboxed('sh', ['-c', 'while :; do :; done'], unconfined(g, { cpu: 1 })));
    await sleep(300);
    const u0 = g.usage().cpuUsageUs!;
    const t0 = performance.now();
    await sleep(2000);
    const share = (g.usage().cpuUsageUs! - u0) / ((performance.now() - t0) * 1000);
    console.log(`group cpu 0.25, 4 spinners at cpu 1 -> measured ${(share * 100).toFixed(1)}% of a core in total`);
    for (const sb of sbs) sb.kill();
    const rs = await Promise.all(sbs);
    expect(rs.map((r) => r.reason.kind)).toEqual(['killed', 'killed', 'killed', 'killed']);
    // The quota caps from above; a busy host can only push the share down.
    expect(share).toBeLessThan(0.35);
    expect(share).toBeGreaterThan(0.1);
    g.remove();
    expect(dirsOf(g.name)).toEqual([]);
  });

  it.skipIf(!hasMemory || !perl)('memory 64M on a group: two 48 MB sandboxes (each allowed 1G) do not both fit, and the victim ends oom', async () => {
    const g = group({ limits: { memory: '64M' } });
    // In 1 MB pieces: one `"a" x 48M` string briefly needs two copies and would not fit alone.
    const hog = 'my @a; push @a, "a" x (1024 * 1024) for 1..48; sleep 1';
    const alone = await runSandboxed('perl', ['-e', hog], unconfined(g, { memory: '1G', timeout: 10_000 }));
    expect(alone.reason).toEqual({ kind: 'exited', code: 0 });
    const rs = await Promise.all([0, 1].map(() => runSandboxed('perl', ['-e', hog], unconfined(g, { memory: '1G', timeout: 10_000 }))));
    const kinds = rs.map((r) => r.reason.kind);
    console.log(`two 48 MB hogs in a 64M group -> ${kinds.join(', ')}`);
    expect(kinds).toContain('oom');
    for (const r of rs) {
      // The survivor (if any) exited normally: a sibling's OOM is never counted as its own.
      if (r.reason.kind === 'oom') expect(r.counters.oomKills).toBeGreaterThan(0);
      else expect(r.reason).toEqual({ kind: 'exited', code: 0 });
    }
    g.remove();
  });

  it.skipIf(!hasPids || !perl)('pids 10 on a group: a second sandbox gets exactly the remaining budget, a fork bomb ends pids-limit', async () => {
    const g = group({ limits: { pids: 10 } });
    const hold = runSandboxed('perl', ['-e', holder(5)], unconfined(g, { pids: 1000 }));
    await waitLine(hold, /^ready$/m);
    expect(pidsCurrent(g)).toBe(6);
    // 10 - 6 held - the forker itself = 3, though its own limit would allow 1000.
    const second = await runSandboxed('perl', ['-e', forker(8)], unconfined(g, { pids: 1000 }));
    expect(second.stdout).toBe('forked 3\n');
    expect(second.reason).toEqual({ kind: 'pids-limit' });
    const bomb = runSandboxed('sh', ['-c', 'b() { b & b & wait; }; b'], unconfined(g, { pids: 1000, timeout: 1500 }));
    let peak = 0;
    while (bomb.child.exitCode === null && bomb.child.signalCode === null) {
      peak = Math.max(peak, pidsCurrent(g));
      await sleep(20);
    }
    const r = await bomb;
    expect(r.reason).toEqual({ kind: 'pids-limit' });
    expect(r.counters.pidsMax).toBeGreaterThan(0);
    expect(peak).toBeLessThanOrEqual(10);
    hold.kill();
    const h = await hold;
    expect(h.reason).toEqual({ kind: 'killed' });
    // Its siblings' refused forks are not charged to it.
    if (host.v1.pids) expect(h.counters.pidsMax).toBe(0);
    g.remove();
  });

  it.skipIf(!hasPids || !perl)('nested groups (agent -> sub-agent): the agent limit bounds the sub-agent and the tools inside it', async () => {
    const agent = group({ limits: { pids: 8, ...(hasCpu ? { cpu: 0.25 } : {}) } });
    const sub = group({ parent: agent, limits: { pids: 100, ...(hasCpu ? { cpu: 1 } : {}) } });
    expect(sub.path).toBe(`${base}/${agent.name}/${sub.name}`);
    expect(sub.cgroupBase).toBe(base);
    // The agent itself runs in a leaf of its own group, holding 3 tasks.
    const self = runSandboxed('perl', ['-e', holder(2)], unconfined(agent));
    await waitLine(self, /^ready$/m);
    if (host.unifiedRoot) expect(cgroupOf(self.pid, '')).toBe(`/${agent.path}/${self.cgroupName}`);
    // A tool of the sub-agent: 8 - 3 - itself = 4 forks, though the sub-agent allows 100.
    const tool = runSandboxed('perl', ['-e', forker(20)], unconfined(sub, { pids: 1000 }));
    if (host.unifiedRoot) {
      await sleep(50);
      if (isAlive(tool.pid)) expect(cgroupOf(tool.pid, '')).toBe(`/${sub.path}/${tool.cgroupName}`);
    }
    const r = await tool;
    expect(r.stdout).toBe('forked 4\n');
    expect(r.reason).toEqual({ kind: 'pids-limit' });
    if (host.v1.cpu) {
      // v1 refuses a child quota above its parent's: the sub-agent's cpu 1 is clamped to 0.25.
      expect(readFileSync(`${host.v1.cpu}/${sub.path}/cpu.cfs_quota_us`, 'utf8').trim()).toBe('25000');
    }
    if (hasCpu) {
      const spin = runSandboxed('sh', ['-c', 'while :; do :; done'], unconfined(sub, { cpu: 1 }));
      await sleep(200);
      const u0 = agent.usage().cpuUsageUs!;
      const t0 = performance.now();
      await sleep(1000);
      const share = (agent.usage().cpuUsageUs! - u0) / ((performance.now() - t0) * 1000);
      spin.kill();
      await spin;
      expect(share).toBeLessThan(0.35);
    }
    self.kill();
    await self;
    expect(() => agent.remove()).toThrow(expect.objectContaining({ code: 'E_CGROUP' }));
    sub.remove();
    agent.remove();
    expect(dirsOf(agent.name)).toEqual([]);
  });

  it('killAll on a group kills every sandbox at any depth, setsid escapees included; remove() leaves no directory', async () => {
    const agent = group();
    const sub = group({ parent: agent });
    const tree = "setsid sh -c 'echo e $$; exec sleep 300' & (sh -c 'echo d $$; exec sleep 300' &); trap '' TERM; echo l $$; while :; do sleep 0.1; done";
    const sbs = [agent, agent, sub].map((g) => runSandboxed('sh', ['-c', tree], unconfined(g)));
    const pids = (await Promise.all(sbs.map(async (sb) => {
      const seen: number[] = [];
      await new Promise<void>((resolve) => {
        let buf = '';
        sb.stdout!.on('data', (c: Buffer) => {
          buf += c.toString();
          const m = [...buf.matchAll(/^[edl] (\d+)$/gm)];
          if (m.length === 3) {
            seen.push(...m.map((x) => Number(x[1])));
            resolve();
          }
        });
      });
      return seen;
    }))).flat();
    const refs = pids.map((p) => processRef(p)!);
    expect(refs.every(Boolean)).toBe(true);
    expect(agent.pids().length).toBeGreaterThanOrEqual(9);
    expect(() => agent.remove()).toThrow(expect.objectContaining({ code: 'E_CGROUP' }));
    agent.killAll();
    expect(await agent.waitEmpty(3000)).toBe(true);
    const rs = await Promise.all(sbs);
    expect(rs.map((r) => r.reason)).toEqual([{ kind: 'killed' }, { kind: 'killed' }, { kind: 'killed' }]);
    expect(refs.filter(isSameProcess)).toEqual([]);
    expect(rs.every((r) => r.cleanedUp)).toBe(true);
    await agent.destroy();
    expect(agent.removed && sub.removed).toBe(true);
    expect(dirsOf(agent.name)).toEqual([]);
    expect(() => runSandboxed('true', [], unconfined(sub))).toThrow(expect.objectContaining({ code: 'E_SANDBOX_OPTION' }));
  });

  it('fails closed: a group limit the backend cannot enforce is refused (nothing created), and a sandbox cannot leave its group\'s base or backend', () => {
    if (host.layout === 'hybrid' && host.unifiedControllers.length === 0 && host.cgroupKill) {
      const other = `${base}-v2`;
      expect(() => createSandboxGroup({ cgroupBase: other, backend: 'cgroup-v2', limits: { memory: '64M' } })).toThrow(expect.objectContaining({ code: 'E_LIMIT_UNENFORCEABLE' }));
      for (const h of hierarchyRoots(host)) expect(existsSync(`${h.root}/${other}`)).toBe(false);
    }
    const g = group();
    expect(() => runSandboxed('true', [], { group: g, cgroupBase: `${base}-elsewhere` })).toThrow(expect.objectContaining({ code: 'E_SANDBOX_OPTION' }));
    expect(() => runSandboxed('true', [], { group: g, backend: g.backend === 'none' ? 'cgroup-v1' : 'none' })).toThrow(expect.objectContaining({ code: 'E_SANDBOX_OPTION' }));
    expect(() => createSandboxGroup({ limits: { timeout: 5 } as never })).toThrow(expect.objectContaining({ code: 'E_SANDBOX_OPTION' }));
    g.remove();
  });

  it.skipIf(!(host.unifiedRoot && host.cgroupKill))('cgroup-v2 backend: a group in the cgroup2 tree holds, kills and removes nested sandboxes', async () => {
    const g = group({ backend: 'cgroup-v2' });
    const sub = group({ parent: g });
    expect(g.dirs).toEqual([`${host.unifiedRoot}/${g.path}`]);
    const sb = runSandboxed('sh', ['-c', "setsid sh -c 'echo $$; exec sleep 300' & exec sleep 300"], unconfined(sub));
    const escapee = Number((await waitLine(sb, /^(\d+)$/m))[1]);
    expect(cgroupOf(escapee, '')).toBe(`/${sub.path}/${sb.cgroupName}`);
    expect(g.populated()).toBe(true);
    await g.destroy('revoked');
    expect((await sb).reason).toEqual({ kind: 'revoked' });
    expect(isAlive(escapee)).toBe(false);
    expect(existsSync(`${host.unifiedRoot}/${g.path}`)).toBe(false);
  });

  it.skipIf(!host.v1.freezer)('v1 without cgroup.kill: a group\'s killAll freezes the nested tree and kills every member (freezer loop)', async () => {
    const { unifiedRoot: _dropped, ...rest } = host;
    const v1Only: HostInfo = { ...rest, layout: 'v1', cgroupKill: false, unifiedControllers: [] };
    const be = cgroupV1Backend(v1Only);
    const outer = be.createGroup(base, newCgroupName(), { swapBytes: 0, pids: 100 });
    const inner = be.createGroup(base, newCgroupName(), { swapBytes: 0 }, outer.placement);
    expect(outer.killMechanism).toMatch(/freezer/);
    expect(inner.placement.keys).toEqual(outer.placement.keys);
    const leaves = [be.create(base, newCgroupName(), { swapBytes: 0 }, undefined, outer.placement), be.create(base, newCgroupName(), { swapBytes: 0 }, undefined, inner.placement)];
    const script = `for f in "$@"; do echo $$ > "$f"; done; setsid sh -c 'echo $$; exec sleep 300' & (sh -c 'echo $$; exec sleep 300' &); trap "" TERM; echo $$; sleep 300`;
    const pids = (await Promise.all(leaves.map((leaf) => {
      const child = spawn('sh', ['-c', script, 'join', ...leaf.joinFiles], { stdio: ['ignore', 'pipe', 'ignore'] });
      return new Promise<number[]>((resolve) => {
        let buf = '';
        child.stdout.on('data', (c: Buffer) => {
          buf += c.toString();
          const ps = buf.split('\n').filter(Boolean).map(Number);
          if (ps.length >= 3) resolve(ps);
        });
      });
    }))).flat();
    // Each leader forks its own `sleep 300` after printing its pid: wait for all 8 members.
    for (let i = 0; i < 200 && outer.pids().length < 8; i++) await sleep(10);
    expect(outer.pids().length).toBeGreaterThanOrEqual(8);
    expect(outer.populated()).toBe(true);
    outer.killAll();
    expect(await outer.waitEmpty(3000)).toBe(true);
    await sleep(20);
    expect(pids.filter(isAlive)).toEqual([]);
    expect(() => outer.remove()).not.toThrow();
    for (const d of [...outer.dirs, ...inner.dirs, ...leaves.flatMap((l) => l.dirs)]) expect(existsSync(d)).toBe(false);
  });

  it.skipIf(!hasCpu)('prioritiseSelf gives the base a quarter of the default cpu weight and moves nothing', () => {
    const r = prioritiseSelf(base);
    expect(r.applied).toHaveLength(1);
    const { file, value } = r.applied[0]!;
    expect(readFileSync(file, 'utf8').trim()).toBe(value);
    expect(Number(value)).toBe(host.v1.cpu ? 256 : 25);
    expect(readFileSync(`${file.slice(0, file.lastIndexOf('/'))}/cgroup.procs`, 'utf8').trim()).toBe('');
  });
});

// ---------------------------------------------------------------- owner death and stale cleanup

async function waitAllGone(refs: ProcessRef[], ms: number): Promise<ProcessRef[]> {
  const deadline = Date.now() + ms;
  while (refs.some(isSameProcess) && Date.now() < deadline) await sleep(10);
  return refs.filter(isSameProcess);
}

async function waitNoDirs(name: string, ms: number): Promise<string[]> {
  const deadline = Date.now() + ms;
  while (dirsOf(name).length > 0 && Date.now() < deadline) await sleep(10);
  return dirsOf(name);
}

async function startOwner(source: string): Promise<{ owner: ChildProcess; exited: Promise<unknown>; info: { pids: number[]; top: string; watchdog: number } }> {
  const script = `${dir}/owner-${owners.length}.mts`;
  writeFileSync(script, source);
  const owner = spawn(process.execPath, ['--import', 'tsx', script, base], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
  owners.push(owner);
  const exited = new Promise((r) => owner.once('exit', r));
  const info = await new Promise<{ pids: number[]; top: string; watchdog: number }>((resolve, reject) => {
    let buf = '';
    owner.stdout!.on('data', (c: Buffer) => {
      buf += c.toString();
      const line = buf.split('\n').find((l) => l.startsWith('{'));
      if (line) resolve(JSON.parse(line));
    });
    owner.once('exit', (code) => reject(new Error(`owner exited before it was ready (${code})`)));
  });
  return { owner, exited, info };
}

const src = (f: string) => JSON.stringify(`${root}src/isolation/${f}`);

describe.skipIf(!cg || !host.tools.setpriv)('groups when their owner dies', () => {
  it('a SIGKILLed owner with nested groups: the watchdog kills every sandbox at every depth and removes the whole tree', async () => {
    const { owner, exited, info } = await startOwner(`
import { createSandboxGroup, runSandboxed } from ${src('sandbox.ts')};
import { ownerWatchdogs } from ${src('watchdog.ts')};
const base = process.argv[2];
const agent = createSandboxGroup({ cgroupBase: base, limits: { pids: 200 } });
const sub = createSandboxGroup({ parent: agent, limits: { pids: 100 } });
const tree = "setsid sh -c 'echo g $$; exec sleep 300' & (sh -c 'echo d $$; exec sleep 300' &); echo l $$; exec sleep 300";
const sbs = [agent, sub, sub].map((group) => runSandboxed('sh', ['-c', tree], { group, confine: false, namespaces: [] }));
const pids = [];
for (const sb of sbs) sb.stdout.on('data', (c) => {
  for (const m of c.toString().matchAll(/[gdl] (\\d+)/g)) pids.push(Number(m[1]));
  if (pids.length === 9) console.log(JSON.stringify({ pids, top: agent.name, watchdog: ownerWatchdogs()[0].pid }));
});
setInterval(() => {}, 1000);
`);
    const refs = [...info.pids, info.watchdog].map((p) => processRef(p)!);
    expect(refs.every(Boolean)).toBe(true);
    expect(dirsOf(info.top).length).toBeGreaterThan(0);
    owner.kill('SIGKILL');
    await exited;
    expect(await waitAllGone(refs, 2000)).toEqual([]);
    expect(await waitNoDirs(info.top, 1000)).toEqual([]);
  });

  it.skipIf(!host.v1.freezer)('without a cgroup2 tree the watchdog freezes the whole nested tree, kills it and removes it deepest first', async () => {
    // As on a pure v1 host: the watchdog is told there is no cgroup2 tree; the owner builds a
    // group with a sandbox in it and a nested group with another, in freezer + pids, by hand.
    const { owner, exited, info } = await startOwner(`
import { mkdirSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { ensureOwnerWatchdog } from ${src('watchdog.ts')};
import { newCgroupName } from ${src('cgroup.ts')};
import { probeHost } from ${src('host.ts')};
const base = process.argv[2];
const host = probeHost();
const w = ensureOwnerWatchdog({ ...host, unifiedRoot: undefined, cgroupKill: false }, base);
const top = newCgroupName(), inner = newCgroupName();
const roots = [host.v1.freezer, host.v1.pids].filter(Boolean).map((r) => r + '/' + base);
const leaves = [top + '/' + newCgroupName(), top + '/' + inner + '/' + newCgroupName()];
for (const r of roots) { try { mkdirSync(r); } catch {} for (const p of [top, top + '/' + inner, ...leaves]) mkdirSync(r + '/' + p); }
const pids = [];
for (const leaf of leaves) {
  const join = roots.map((r) => 'echo $$ > ' + r + '/' + leaf + '/cgroup.procs').join('; ');
  const c = spawn('sh', ['-c', join + "; setsid sh -c 'echo g $$; exec sleep 300' & (sh -c 'echo d $$; exec sleep 300' &); echo l $$; exec sleep 300"], { stdio: ['ignore', 'pipe', 'inherit'], detached: true });
  c.stdout.on('data', (b) => {
    for (const m of b.toString().matchAll(/[gdl] (\\d+)/g)) pids.push(Number(m[1]));
    if (pids.length === 6) console.log(JSON.stringify({ pids, top, watchdog: w.pid }));
  });
}
setInterval(() => {}, 1000);
`);
    const refs = [...info.pids, info.watchdog].map((p) => processRef(p)!);
    expect(refs.every(Boolean)).toBe(true);
    owner.kill('SIGKILL');
    await exited;
    expect(await waitAllGone(refs, 2000)).toEqual([]);
    expect(await waitNoDirs(info.top, 1000)).toEqual([]);
  });

  it('stale cleanup kills and removes a dead owner\'s nested groups depth-first (cgroup.kill, and the v1 freezer)', async () => {
    // A dead owner: a process that has exited, so its <pid>.<startTime>. names are stale.
    const gone = spawn('true');
    const ref = processRef(gone.pid!) ?? { pid: gone.pid!, startTime: 1 };
    await new Promise((r) => gone.once('exit', r));
    await sleep(20);
    const v1Only: HostInfo = { ...host, layout: 'v1', cgroupKill: false, unifiedControllers: [] };
    delete v1Only.unifiedRoot;
    const variants: [string, HostInfo][] = [['as probed', host]];
    if (host.v1.freezer) variants.push(['v1 freezer only', v1Only]);
    for (const [label, h] of variants) {
      const top = `${ref.pid}.${ref.startTime}.${label.length}`;
      const leaf = `${top}/${ref.pid}.${ref.startTime}.100/${ref.pid}.${ref.startTime}.101`;
      const roots = hierarchyRoots(h).map((x) => `${x.root}/${base}`);
      for (const r of roots) {
        if (!existsSync(r)) mkdirSync(r);
        mkdirSync(`${r}/${leaf}`, { recursive: true });
      }
      const join = roots.filter((r) => !r.includes('/cpu')).map((r) => `echo $$ > ${r}/${leaf}/cgroup.procs`).join('; ');
      const p = spawn('sh', ['-c', `${join}; setsid sh -c 'echo $$; exec sleep 300' & exec sleep 300`], { stdio: ['ignore', 'pipe', 'ignore'], detached: true });
      const escapee = await new Promise<number>((resolve) => p.stdout!.once('data', (c: Buffer) => resolve(Number(c.toString().trim()))));
      const refs = [processRef(p.pid!)!, processRef(escapee)!];
      const r = await cleanupStaleCgroups(h, base);
      expect(r.failed, label).toEqual([]);
      expect(r.killed, label).toBeGreaterThanOrEqual(2);
      expect(await waitAllGone(refs, 1000), label).toEqual([]);
      expect(dirsOf(top), label).toEqual([]);
    }
  });
});
