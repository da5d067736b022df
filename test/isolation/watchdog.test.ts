// The owner watchdog: when captrap dies (SIGKILL or a normal exit), the whole tree of every
// sandbox it started dies within ~1 s and its cgroups are removed — without pid namespaces —
// and nothing outside this captrap's own <ownerPid>.<ownerStartTime>. cgroups is touched.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanupStaleCgroups, hierarchyRoots, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { isSameProcess, processRef, type ProcessRef } from '../../src/isolation/proc.js';

const host = probeHost();
const base = `captrap-test-wd-${process.pid}-${Date.now().toString(36)}`;
const root = fileURLToPath(new URL('../../', import.meta.url));
const dir = mkdtempSync(`${tmpdir()}/captrap-wd-`);
// Where a decoy cgroup can hold a process: the unified tree (cgroup.kill) or the v1 freezer.
const trackRoot = host.unifiedRoot ?? host.v1.freezer;
const decoys: { dir: string; pid?: number }[] = [];
const owners: ChildProcess[] = [];

// A captrap-like owner: two sandboxes (no pid namespace) whose leaders start a setsid
// grandchild and a double-forked daemon; each prints its pid. Prints one JSON line when all
// four descendants are up, then either idles (to be SIGKILLed) or exits normally.
const OWNER = `
import { runSandboxed } from ${JSON.stringify(`${root}src/isolation/sandbox.ts`)};
import { ownerWatchdogs } from ${JSON.stringify(`${root}src/isolation/watchdog.ts`)};
const [base, mode] = process.argv.slice(2);
const tree = "setsid sh -c 'echo g $$; exec sleep 300' & (sh -c 'echo d $$; exec sleep 300' &); exec sleep 300";
// Unconfined: confinement puts every sandbox in a pid namespace, whose init's death alone would
// kill the tree; this tests the watchdog's own cgroup kill, for sandboxes without one.
const sbs = [0, 1].map(() => runSandboxed('sh', ['-c', tree], { cgroupBase: base, confine: false, namespaces: [] }));
const pids = [];
for (const sb of sbs) sb.stdout.on('data', (c) => {
  for (const m of c.toString().matchAll(/[gd] (\\d+)/g)) pids.push(Number(m[1]));
  if (pids.length === 4) {
    console.log(JSON.stringify({ leaders: sbs.map((s) => s.pid), pids, names: sbs.map((s) => s.cgroupName), watchdog: ownerWatchdogs()[0] }));
    if (mode === 'exit') process.exit(0);
  }
});
setInterval(() => {}, 1000);
`;

interface OwnerInfo {
  leaders: number[];
  pids: number[];
  names: string[];
  watchdog: { pid: number; prefix: string };
}

async function startOwner(mode: 'idle' | 'exit') {
  const script = `${dir}/owner.mts`;
  writeFileSync(script, OWNER);
  const owner = spawn(process.execPath, ['--import', 'tsx', script, base, mode], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
  owners.push(owner);
  const exited = new Promise((r) => owner.once('exit', r));
  const info = await new Promise<OwnerInfo>((resolve, reject) => {
    let buf = '';
    owner.stdout.on('data', (c: Buffer) => {
      buf += c.toString();
      const line = buf.split('\n').find((l) => l.startsWith('{'));
      if (line) resolve(JSON.parse(line) as OwnerInfo);
    });
    owner.once('exit', (code) => reject(new Error(`owner exited before it was ready (${code})`)));
  });
  // Refs taken while everything is provably alive: a recycled pid will not match later.
  const refs = [...info.leaders, ...info.pids, info.watchdog.pid].map((p) => processRef(p));
  expect(refs.every((r) => r !== undefined)).toBe(true);
  return { owner, exited, info, refs: refs as ProcessRef[] };
}

async function waitAllGone(refs: ProcessRef[], ms: number): Promise<ProcessRef[]> {
  const deadline = Date.now() + ms;
  while (refs.some(isSameProcess) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  return refs.filter(isSameProcess);
}

const cgroupDirsOf = (names: string[]) => names.flatMap((n) => hierarchyRoots(host).map((h) => `${h.root}/${base}/${n}`)).filter((d) => existsSync(d));

async function waitNoDirs(names: string[], ms: number): Promise<string[]> {
  const deadline = Date.now() + ms;
  while (cgroupDirsOf(names).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  return cgroupDirsOf(names);
}

afterAll(async () => {
  // A failed test may leave its owner running: its sandboxes would then never be stale.
  for (const o of owners) if (o.exitCode === null && o.signalCode === null) o.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, 100));
  for (const d of decoys) {
    if (d.pid !== undefined) {
      const ref = processRef(d.pid);
      if (ref && isSameProcess(ref)) process.kill(d.pid, 'SIGKILL');
    }
    for (let i = 0; i < 100 && existsSync(d.dir); i++) {
      try {
        rmdirSync(d.dir);
      } catch {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }
  await cleanupStaleCgroups(host, base);
  rmSync(dir, { recursive: true, force: true });
  expect(removeCgroupBase(host, base)).toEqual([]);
});

describe.skipIf(!trackRoot || !host.tools.setpriv || host.layout === 'none')('owner watchdog', () => {
  it('SIGKILLed owner: leaders, setsid grandchildren and double-forked daemons die within 1.5 s, cgroups removed', async () => {
    const { owner, exited, info, refs } = await startOwner('idle');
    expect(info.names.every((n) => n.startsWith(info.watchdog.prefix))).toBe(true);
    expect(cgroupDirsOf(info.names).length).toBeGreaterThanOrEqual(2);
    const t0 = Date.now();
    owner.kill('SIGKILL');
    await exited;
    // Everything, the watchdog itself included (it exits after cleaning).
    expect(await waitAllGone(refs, 1500)).toEqual([]);
    expect(await waitNoDirs(info.names, 1500 - (Date.now() - t0))).toEqual([]);
  });

  it('a normal owner exit leaves no process and no cgroup either', async () => {
    const { exited, info, refs } = await startOwner('exit');
    await exited;
    expect(await waitAllGone(refs, 1500)).toEqual([]);
    expect(await waitNoDirs(info.names, 1500)).toEqual([]);
  });

  it("never touches cgroups of another owner, even one that shares the owner's pid", async () => {
    const { owner, exited, info, refs } = await startOwner('idle');
    const [pid, start] = info.watchdog.prefix.split('.');
    // Another owner with the same pid but another start time, an unrelated owner, and a name
    // that only begins like ours: each holds a live process the watchdog must leave alone.
    for (const name of [`${pid}.${Number(start) + 1}.1`, `1.1.${info.names[0]!.split('.')[2]}`, `${info.watchdog.prefix}1x`]) {
      const d = `${trackRoot}/${base}/${name}`;
      mkdirSync(d);
      const decoy: { dir: string; pid?: number } = { dir: d };
      decoys.push(decoy);
      const p = spawn('sh', ['-c', `echo $$ > ${d}/cgroup.procs && exec sleep 300`], { stdio: 'ignore', detached: true });
      p.unref();
      decoy.pid = p.pid;
    }
    await new Promise((r) => setTimeout(r, 100));
    const decoyRefs = decoys.map((d) => processRef(d.pid!)!);
    expect(decoyRefs.every((r) => r !== undefined && isSameProcess(r))).toBe(true);
    owner.kill('SIGKILL');
    await exited;
    expect(await waitAllGone(refs, 1500)).toEqual([]);
    expect(await waitNoDirs(info.names, 1000)).toEqual([]);
    expect(decoyRefs.filter(isSameProcess)).toEqual(decoyRefs);
    for (const d of decoys) expect(existsSync(d.dir)).toBe(true);
    expect(readdirSync(`${trackRoot}/${base}`).filter((n) => /^\d/.test(n)).sort()).toEqual(decoys.map((d) => d.dir.split('/').pop()).sort());
  });

  it('fails closed with E_WATCHDOG when the watchdog cannot start, creating nothing; allowDegraded runs and says so', async () => {
    const { runSandboxed } = await import('../../src/isolation/sandbox.js');
    const lonely = `${base}-nowd`;
    const saved = process.env.CAPTRAP_WATCHDOG_SH;
    process.env.CAPTRAP_WATCHDOG_SH = `${dir}/no-such-shell`;
    try {
      expect(() => runSandboxed('true', [], { cgroupBase: lonely })).toThrow(expect.objectContaining({ code: 'E_WATCHDOG' }));
      for (const h of hierarchyRoots(host)) expect(existsSync(`${h.root}/${lonely}`)).toBe(false);
      const r = await runSandboxed('true', [], { cgroupBase: lonely, allowDegraded: true });
      expect(r.reason).toEqual({ kind: 'exited', code: 0 });
      expect(r.degraded.map((d) => d.limit)).toContain('die-with-parent');
    } finally {
      if (saved === undefined) delete process.env.CAPTRAP_WATCHDOG_SH;
      else process.env.CAPTRAP_WATCHDOG_SH = saved;
      expect(removeCgroupBase(host, lonely)).toEqual([]);
    }
  });

  it.skipIf(!host.v1.freezer)('without a cgroup2 tree it kills through the v1 freezer (freeze, SIGKILL, thaw) and removes every hierarchy', async () => {
    // The watchdog is told this host has no cgroup2 tree, as on a pure v1 host; the owner puts
    // a tree (leader, setsid grandchild, double-forked daemon) into freezer + pids cgroups itself.
    const script = `${dir}/v1owner.mts`;
    writeFileSync(
      script,
      `import { mkdirSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { ensureOwnerWatchdog } from ${JSON.stringify(`${root}src/isolation/watchdog.ts`)};
import { newCgroupName } from ${JSON.stringify(`${root}src/isolation/cgroup.ts`)};
import { probeHost } from ${JSON.stringify(`${root}src/isolation/host.ts`)};
const base = process.argv[2];
const host = probeHost();
const v1only = { ...host, unifiedRoot: undefined, cgroupKill: false };
const w = ensureOwnerWatchdog(v1only, base);
const name = newCgroupName();
const dirs = [host.v1.freezer, host.v1.pids].filter(Boolean).map((r) => r + '/' + base);
for (const d of dirs) { try { mkdirSync(d); } catch {} mkdirSync(d + '/' + name); }
const join = dirs.map((d) => 'echo $$ > ' + d + '/' + name + '/cgroup.procs').join('; ');
const c = spawn('sh', ['-c', join + "; setsid sh -c 'echo g $$; exec sleep 300' & (sh -c 'echo d $$; exec sleep 300' &); echo l $$; exec sleep 300"], { stdio: ['ignore', 'pipe', 'inherit'], detached: true });
const pids = [];
c.stdout.on('data', (b) => {
  for (const m of b.toString().matchAll(/[gdl] (\\d+)/g)) pids.push(Number(m[1]));
  if (pids.length === 3) console.log(JSON.stringify({ pids, name, watchdog: w.pid }));
});
setInterval(() => {}, 1000);
`,
    );
    const owner = spawn(process.execPath, ['--import', 'tsx', script, base], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
    owners.push(owner);
    const exited = new Promise((r) => owner.once('exit', r));
    const info = await new Promise<{ pids: number[]; name: string; watchdog: number }>((resolve, reject) => {
      let buf = '';
      owner.stdout.on('data', (c: Buffer) => {
        buf += c.toString();
        const line = buf.split('\n').find((l) => l.startsWith('{'));
        if (line) resolve(JSON.parse(line));
      });
      owner.once('exit', (code) => reject(new Error(`owner exited before it was ready (${code})`)));
    });
    const refs = [...info.pids, info.watchdog].map((p) => processRef(p));
    expect(refs.every((r) => r !== undefined)).toBe(true);
    expect(existsSync(`${host.v1.freezer}/${base}/${info.name}`)).toBe(true);
    owner.kill('SIGKILL');
    await exited;
    expect(await waitAllGone(refs as ProcessRef[], 1500)).toEqual([]);
    expect(await waitNoDirs([info.name], 500)).toEqual([]);
  });
});
