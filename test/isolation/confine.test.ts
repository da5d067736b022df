// Confinement against a hostile tool, root or not: each attack is a named test on real processes
// and the real cgroups of this host, and each asserts something that would fail unconfined.
// Host-side facts (cgroup membership, host pids, limit files) are read from outside the sandbox.
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { cleanupStaleCgroups, hierarchyRoots, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { CONFINE_NAMESPACES, pidsInNamespace, sandboxPidNamespace } from '../../src/isolation/confine.js';
import { probeHost } from '../../src/isolation/host.js';
import { builtLauncherPath } from '../../src/isolation/launcher/launcher.js';
import { isAlive, isSameProcess, processRef, type ProcessRef } from '../../src/isolation/proc.js';
import { runSandboxed, type Sandbox, type SandboxOptions, type SandboxResult } from '../../src/isolation/sandbox.js';
import { cgroupOf, namespacePids } from './helpers.js';

const host = probeHost();
const base = `captrap-test-confine-${process.pid}-${Date.now().toString(36)}`;
const root = fileURLToPath(new URL('../../', import.meta.url));
const dir = mkdtempSync(`${tmpdir()}/captrap-confine-`);
// A place outside /tmp (whose private copy in a view is empty anyway) for things a view must not show.
const outsideBase = existsSync('/var/tmp') ? '/var/tmp' : tmpdir();
const outside = mkdtempSync(`${outsideBase}/captrap-confine-outside-`);
const canConfine = host.isRoot && builtLauncherPath() !== undefined && host.layout !== 'none' && CONFINE_NAMESPACES.every((n) => host.namespaces[n]);
if (!canConfine) console.log('skipping confinement tests: they need root, the built launcher (npm run build), cgroups and all six namespaces');
const hasMemory = host.v1.memory !== undefined || host.unifiedControllers.includes('memory');
const opts = (o: SandboxOptions = {}): SandboxOptions => ({ cgroupBase: base, killGrace: 200, ...o });
const savedLauncher = process.env.CAPTRAP_LAUNCHER;
const racers: ChildProcess[] = [];
// Refs (pid + start time) of root leaders that leave their cgroup, killed in afterAll if a test failed.
const strays: ProcessRef[] = [];

/** Every cgroup hierarchy mounted on this host (v1 controllers, name=systemd, the unified tree). */
const cgroupMounts = readFileSync('/proc/self/mounts', 'utf8')
  .split('\n')
  .map((l) => l.split(' '))
  .filter((f) => f[2] === 'cgroup' || f[2] === 'cgroup2')
  .map((f) => f[1]!);

/** The shell lines of a cgroup escape: join every root cgroup, then mount a cgroupfs of its own. */
const ESCAPE = [
  ...cgroupMounts.map((m) => `echo $$ > ${m}/cgroup.procs && echo "JOINED ${m}"`),
  'mkdir -p /tmp/m',
  'mount -t cgroup2 none /tmp/m && echo "MOUNTED cgroup2"',
  'mount -t cgroup -o memory none /tmp/m && echo "MOUNTED memory"',
].join('\n');

const waitGone = async (pids: number[], ms: number) => {
  const deadline = Date.now() + ms;
  while (pids.some(isAlive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  return pids.filter(isAlive);
};

function waitFor(sb: Sandbox, re: RegExp, ms = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new Error(`never saw ${re} in ${JSON.stringify(buf)}`)), ms);
    sb.stdout!.on('data', (c: Buffer) => {
      buf += c.toString();
      if (re.test(buf)) {
        clearTimeout(t);
        resolve(buf);
      }
    });
  });
}

/** The cgroup.procs files of the sandbox's cgroups, in every hierarchy it has one. */
const sandboxProcsFiles = (sb: Sandbox) => hierarchyRoots(host).map((h) => `${h.root}/${base}/${sb.cgroupName}/cgroup.procs`).filter((f) => existsSync(f));

/** Host pids of the sandbox: its leader and every process of its pid namespace. */
const members = (sb: Sandbox) => [sb.pid, ...namespacePids(sb.pid).values()];

afterEach(() => {
  if (savedLauncher === undefined) delete process.env.CAPTRAP_LAUNCHER;
  else process.env.CAPTRAP_LAUNCHER = savedLauncher;
});

afterAll(async () => {
  for (const r of racers) if (r.exitCode === null && r.signalCode === null) r.kill('SIGKILL');
  for (const ref of strays) if (isSameProcess(ref)) process.kill(ref.pid, 'SIGKILL');
  await cleanupStaleCgroups(host, base);
  rmSync(dir, { recursive: true, force: true });
  rmSync(outside, { recursive: true, force: true });
  expect(removeCgroupBase(host, base)).toEqual([]);
});

describe.skipIf(!canConfine)('confinement against a hostile tool', () => {
  it.each([
    ['default (uid 65534)', {}],
    ['allowRoot (uid 0, no capabilities)', { allowRoot: true }],
  ])('cgroup escape: a tool writing its pid into every root cgroup.procs is refused and stays in its cgroup — %s', async (_label, extra) => {
    const sb = runSandboxed('sh', ['-c', `${ESCAPE}\necho ready\nread x`], opts({ ...extra, memory: '64M', pids: 32, stdin: 'pipe' }));
    await waitFor(sb, /^ready$/m);
    // While the tool runs: every process of the sandbox is still a member of its own cgroup, in
    // every hierarchy captrap uses, as its cgroup.procs files and /proc/<pid>/cgroup both say.
    const pids = members(sb);
    expect(pids.length).toBeGreaterThanOrEqual(3); // launcher, its init, the shell
    const procsFiles = sandboxProcsFiles(sb);
    expect(procsFiles.length).toBeGreaterThanOrEqual(1);
    for (const f of procsFiles) {
      const procs = readFileSync(f, 'utf8').split('\n').filter(Boolean).map(Number);
      expect(procs).toEqual(expect.arrayContaining(pids));
    }
    for (const pid of pids) {
      if (host.v1.memory) expect(cgroupOf(pid, 'memory')).toBe(`/${base}/${sb.cgroupName}`);
      if (host.unifiedRoot) expect(cgroupOf(pid, '')).toBe(`/${base}/${sb.cgroupName}`);
    }
    sb.stdin!.end('\n');
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'exited', code: 0 });
    expect(r.stdout).not.toMatch(/JOINED|MOUNTED/);
    // No /sys in the view; no CAP_SYS_ADMIN for a mount of its own.
    expect(r.stderr).toMatch(/cgroup\.procs: (Directory nonexistent|No such file or directory)/);
    expect(r.stderr).toMatch(/mount: \/tmp\/m: (must be superuser|permission denied)/i);
    expect(r.escaped).toEqual([]);
  });

  it.skipIf(!hasMemory)('raising limits: a tool cannot raise memory.limit_in_bytes / memory.memsw / pids.max', async () => {
    // The tool is told every limit file it could name (at the hierarchy roots and at its own
    // cgroup, whose name it cannot see from inside), tries them and a cgroupfs mounted by itself,
    // then, once the host side has looked, hogs memory.
    const files = (name: string) =>
      cgroupMounts.flatMap((m) =>
        ['', `/${base}/${name}`].flatMap((cg) => ['memory.limit_in_bytes', 'memory.memsw.limit_in_bytes', 'memory.max', 'memory.swap.max', 'pids.max'].map((f) => `${m}${cg}/${f}`)),
      );
    const tool = [
      'read list',
      'for f in $list; do echo -1 > "$f" && echo "RAISED $f"; echo max > "$f" && echo "RAISED $f"; done',
      'mkdir -p /tmp/m',
      'mount -t cgroup -o memory none /tmp/m && echo -1 > /tmp/m/memory.limit_in_bytes && echo "RAISED mounted"',
      'echo tried',
      'read go',
      'x=a; while :; do x=$x$x; done',
    ].join('\n');
    const sb = runSandboxed('sh', ['-c', tool], opts({ allowRoot: true, memory: '64M', pids: 32, timeout: 10_000, stdin: 'pipe' }));
    sb.stdin!.write(`${files(sb.cgroupName).join(' ')}\n`);
    await waitFor(sb, /^tried$/m);
    // From the host: the limits are still the ones captrap set.
    const limit = 64 * 1024 * 1024;
    if (host.v1.memory) expect(Number(readFileSync(`${host.v1.memory}/${base}/${sb.cgroupName}/memory.limit_in_bytes`, 'utf8'))).toBe(limit);
    else expect(Number(readFileSync(`${host.unifiedRoot}/${base}/${sb.cgroupName}/memory.max`, 'utf8'))).toBe(limit);
    const pidsMax = host.v1.pids ? `${host.v1.pids}/${base}/${sb.cgroupName}/pids.max` : `${host.unifiedRoot}/${base}/${sb.cgroupName}/pids.max`;
    if (existsSync(pidsMax)) expect(readFileSync(pidsMax, 'utf8').trim()).toBe('32');
    sb.stdin!.end('go\n');
    const r = await sb;
    expect(r.stdout).not.toMatch(/RAISED/);
    expect(r.reason).toEqual({ kind: 'oom' });
    expect(r.counters.oomKills).toBeGreaterThan(0);
    expect(r.usage.memoryPeakBytes).toBeLessThanOrEqual(limit);
  });

  it('setsid child after an escape attempt dies at the timeout', async () => {
    const tool = [ESCAPE, `setsid sh -c 'trap "" TERM; sleep 60' &`, 'trap "" TERM', 'echo ready', 'while :; do sleep 0.1; done'].join('\n');
    const sb = runSandboxed('sh', ['-c', tool], opts({ allowRoot: true, timeout: 500, killGrace: 200 }));
    await waitFor(sb, /^ready$/m);
    const ns = sandboxPidNamespace(sb.pid);
    expect(ns).toBeDefined();
    // Collected from outside while it runs: every process whose pid namespace is the sandbox's.
    let seen: number[] = [];
    for (let i = 0; i < 50 && seen.length < 4; i++) {
      seen = pidsInNamespace(ns!);
      if (seen.length < 4) await new Promise((r) => setTimeout(r, 5));
    }
    expect(seen.length).toBeGreaterThanOrEqual(4); // init, the shell, the setsid shell, its sleep
    const refs = [sb.pid, ...seen].map((p) => processRef(p)).filter((r) => r !== undefined);
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'timeout' });
    expect(r.durationMs).toBeLessThan(500 + 200 + 1000);
    expect(r.stdout).not.toMatch(/JOINED|MOUNTED/);
    await waitGone([sb.pid, ...seen], 200);
    expect(refs.filter(isSameProcess)).toEqual([]);
    // Nothing of the namespace runs any more (its init may linger as a zombie until the host's
    // init reaps it: its parent, the launcher, was killed in the same cgroup kill).
    expect(pidsInNamespace(ns!).filter(isAlive)).toEqual([]);
  });

  it('unconfined escape is still killed: a root leader that moved itself to the root cgroup and ignores SIGTERM is SIGKILLed at the timeout and reported in escaped', async () => {
    // Unconfined on purpose: this is the attack confinement prevents, and the kill must still win.
    const tool = [
      'for f in /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/cgroup.procs; do [ -e "$f" ] && echo $$ > "$f" && echo "moved $f"; done',
      'trap "" TERM',
      'echo leader $$',
      'while :; do sleep 0.1; done',
    ].join('\n');
    const sb = runSandboxed('sh', ['-c', tool], opts({ confine: false, allowRoot: true, timeout: 500, killGrace: 200 }));
    if (sb.ref) strays.push(sb.ref);
    const out = await waitFor(sb, /^leader \d+$/m);
    const leader = Number(/^leader (\d+)$/m.exec(out)![1]);
    expect(leader).toBe(sb.pid);
    // The escape worked: the leader is no longer in its sandbox's cgroups.
    expect(out).toMatch(/^moved /m);
    if (host.unifiedRoot) expect(cgroupOf(leader, '')).toBe('/');
    const procsFiles = sandboxProcsFiles(sb);
    expect(procsFiles.length).toBeGreaterThanOrEqual(1);
    for (const f of procsFiles) expect(readFileSync(f, 'utf8').split('\n')).not.toContain(String(leader));
    const ref = processRef(leader)!;
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'timeout' });
    expect(r.durationMs).toBeLessThan(500 + 200 + 1000);
    expect(r.escaped).toContain(leader);
    expect(r.signal).toBe('SIGKILL');
    expect(isSameProcess(ref)).toBe(false);
  });

  it('an inherited descriptor is not visible in the sandbox', async () => {
    // A captrap started with fd 3 and fd 200 open without CLOEXEC (as a careless parent would
    // leave them): a plain child of it sees fd 200 (node itself keeps fd 3 from its children); no
    // sandboxed command sees either, confined or not. dash cannot name fds above 9: bash can.
    const high = existsSync('/bin/bash') ? 200 : 9;
    const f3 = `${dir}/fd3`;
    const f200 = `${dir}/fd${high}`;
    writeFileSync(f3, 'INHERITED-3\n');
    writeFileSync(f200, 'INHERITED-HIGH\n');
    const script = `${dir}/fds.mts`;
    writeFileSync(
      script,
      `import { spawnSync } from 'node:child_process';
import { runSandboxed } from ${JSON.stringify(`${root}src/isolation/sandbox.ts`)};
const base = process.argv[2];
const list = 'ls -l /proc/self/fd; cat <&3; cat /proc/self/fd/${high}';
const control = spawnSync('sh', ['-c', 'ls -l /proc/self/fd'], { encoding: 'utf8' }).stdout;
const confined = await runSandboxed('sh', ['-c', list], { cgroupBase: base });
const unconfined = await runSandboxed('sh', ['-c', list], { cgroupBase: base, confine: false });
console.log(JSON.stringify({ control, confined: confined.stdout, unconfined: unconfined.stdout, inheritedFds: [confined.confinement.inheritedFds, unconfined.confinement.inheritedFds] }));
`,
    );
    const fd = openSync(f3, 'r');
    let out = '';
    try {
      const child = spawn(high === 200 ? '/bin/bash' : 'sh', ['-c', `exec ${high}<"$1"; shift; exec "$@"`, 'wrapper', f200, process.execPath, '--import', 'tsx', script, base], {
        cwd: root,
        stdio: ['ignore', 'pipe', 'inherit', fd],
      });
      child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
      await new Promise((r) => child.once('exit', r));
    } finally {
      closeSync(fd);
    }
    const res = JSON.parse(out.split('\n').find((l) => l.startsWith('{'))!) as { control: string; confined: string; unconfined: string; inheritedFds: string[] };
    /** fd -> link target, from `ls -l /proc/self/fd`, leaving out the directory ls itself opened. */
    const fds = (text: string) =>
      Object.fromEntries(
        [...text.matchAll(/ (\d+) -> (.*)$/gm)].map((m) => [Number(m[1]), m[2]!]).filter(([, target]) => !/^\/proc\/\d+\/fd$/.test(target as string)),
      ) as Record<number, string>;
    // The control: the descriptor really is inherited by whatever this captrap starts.
    expect(fds(res.control)[high]).toBe(f200);
    for (const text of [res.confined, res.unconfined]) {
      expect(Object.keys(fds(text)).map(Number).sort()).toEqual([0, 1, 2]);
      expect(text).not.toMatch(/INHERITED/);
    }
    expect(res.inheritedFds).toEqual(['closed', 'closed']);
  });

  it('allowRoot tools are still contained', async () => {
    const secretDir = `${outside}/rootonly`;
    mkdirSync(secretDir, { mode: 0o700 });
    writeFileSync(`${secretDir}/secret`, 'ROOT-ONLY', { mode: 0o600 });
    const tool = [
      'id -u',
      "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status",
      `cat ${secretDir}/secret`,
      'cat /etc/shadow',
      'touch /usr/captrap-probe && echo WROTE-USR',
      'echo x > /captrap-probe && echo WROTE-ROOT',
      'kill -STOP 1',
      "grep '^State:' /proc/1/status",
      `kill -0 ${process.pid} && echo SEES-HOST`,
      'hostname',
      "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
      'cd /proc && echo pids [0-9]*',
      'echo done',
      'read x',
    ].join('\n');
    const sb = runSandboxed('sh', ['-c', tool], opts({ allowRoot: true, stdin: 'pipe' }));
    const out = await waitFor(sb, /^done$/m);
    // From the host: the sandbox's init (pid 1 inside) was not stopped by the tool.
    const init = namespacePids(sb.pid).get(1)!;
    expect(readFileSync(`/proc/${init}/status`, 'utf8')).not.toMatch(/^State:\s+T/m);
    sb.stdin!.end('\n');
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'exited', code: 0 });
    const lines = out.trim().split('\n');
    expect(lines[0]).toBe('0');
    for (const cap of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) expect(out).toMatch(new RegExp(`^${cap}:\\s+0{16}$`, 'm'));
    expect(out).toMatch(/^NoNewPrivs:\s+1$/m);
    expect(out).not.toMatch(/ROOT-ONLY|WROTE|SEES-HOST/);
    expect(r.stderr).toContain(`cat: ${secretDir}/secret: No such file or directory`);
    expect(r.stderr).toMatch(/cat: \/etc\/shadow: Permission denied/);
    expect(r.stderr).toMatch(/touch: cannot touch '\/usr\/captrap-probe': Read-only file system/);
    expect(existsSync('/usr/captrap-probe')).toBe(false);
    expect(existsSync('/captrap-probe')).toBe(false);
    expect(out).toMatch(/^State:\s+S/m);
    expect(lines).toContain('captrap');
    expect(lines.slice(lines.indexOf('captrap') + 1, lines.findIndex((l) => l.startsWith('pids ')))).toEqual(['lo']);
    // The glob runs in the shell itself: only the init and the shell exist in its /proc.
    expect(lines).toContain('pids 1 2');
  });

  /**
   * R/real/file says "public"; S/file (0600, outside every view) says "SECRET". A racer keeps R/d
   * alternating between the real directory and a symlink to S while `calls` sandboxes (8 at a
   * time) run `command(R, S)` with `view(R)`. Returns every result; the racer and dirs are gone.
   */
  async function swapRace(calls: number, command: (R: string, S: string) => string, view: (R: string) => string[]): Promise<SandboxResult[]> {
    const R = mkdtempSync(`${tmpdir()}/captrap-race-`);
    const S = mkdtempSync(`${outsideBase}/captrap-race-secret-`);
    try {
      chmodSync(R, 0o755);
      mkdirSync(`${R}/real`, { mode: 0o755 });
      writeFileSync(`${R}/real/file`, 'public\n', { mode: 0o644 });
      writeFileSync(`${S}/file`, 'SECRET\n', { mode: 0o600 });
      const racer = spawn(
        process.execPath,
        [
          '-e',
          `const fs = require('fs'); const [R, S] = process.argv.slice(1);
for (;;) {
  try { fs.renameSync(R + '/real', R + '/d'); } catch {}
  try { fs.renameSync(R + '/d', R + '/real'); } catch {}
  try { fs.symlinkSync(S, R + '/d'); } catch {}
  try { fs.unlinkSync(R + '/d'); } catch {}
}`,
          R,
          S,
        ],
        { stdio: 'ignore' },
      );
      racers.push(racer);
      const results: SandboxResult[] = [];
      let next = 0;
      const worker = async () => {
        while (next < calls) {
          next++;
          results.push(await runSandboxed('sh', ['-c', command(R, S)], opts({ view: { readOnly: view(R) }, allowRoot: true })));
        }
      };
      await Promise.all(Array.from({ length: 8 }, worker));
      racer.kill('SIGKILL');
      return results;
    } finally {
      for (const r of racers) if (r.exitCode === null && r.signalCode === null) r.kill('SIGKILL');
      rmSync(R, { recursive: true, force: true });
      rmSync(S, { recursive: true, force: true });
    }
  }

  it('symlink-swap race: 0 leaks in 1000 calls', async () => {
    // A view that followed the link (or no view at all) would show SECRET.
    const results = await swapRace(1000, (R, S) => `cat ${R}/d/file; cat ${S}/file`, (R) => [R]);
    expect(results.length).toBe(1000);
    expect(results.filter((r) => /SECRET/.test(r.stdout + r.stderr)).length).toBe(0);
    // The race was real: some calls saw the directory, some did not.
    expect(results.some((r) => r.stdout.includes('public'))).toBe(true);
    expect(results.some((r) => !r.stdout.includes('public'))).toBe(true);
  }, 60_000);

  it('symlink-swap race on the root itself: a root swapped for a symlink is refused, never followed (0 leaks in 300 calls)', async () => {
    // R/d is the root: checked as a real directory by the caller, swapped by the racer.
    const results = await swapRace(300, (R) => `cat ${R}/d/file`, (R) => [`${R}/d`]);
    expect(results.length).toBe(300);
    expect(results.filter((r) => /SECRET/.test(r.stdout + r.stderr)).length).toBe(0);
    // The race was real: some launches were refused (the root was a symlink), some showed it.
    expect(results.some((r) => r.stdout.includes('public'))).toBe(true);
  }, 60_000);

  it("the namespace's init shows no launcher arguments (cgroup paths, hidden paths, captrap's pid) in /proc/1/cmdline", async () => {
    const secret = mkdtempSync(`${tmpdir()}/captrap-cmdline-secret-`);
    try {
      const r = await runSandboxed('sh', ['-c', 'tr "\\0" " " < /proc/1/cmdline'], opts({ view: { hide: [secret] } }));
      expect(r.reason).toEqual({ kind: 'exited', code: 0 });
      expect(r.stdout.trim()).toBe('captrap-init');
      expect(r.stdout).not.toContain(secret);
      expect(r.stdout).not.toContain(String(process.pid));
    } finally {
      rmSync(secret, { recursive: true, force: true });
    }
  });

  it('doctor-style report: the default confinement lists all six namespaces, a view, uid 65534, no capabilities, no network, closed fds', async () => {
    const sb = runSandboxed('true', [], opts());
    expect(sb.confinement).toMatchObject({ confined: true });
    const r = await sb;
    expect(r.confinement).toEqual({
      confined: true,
      namespaces: expect.arrayContaining([...CONFINE_NAMESPACES]),
      view: true,
      uid: 65534,
      gid: 65534,
      capabilities: 'dropped',
      noNewPrivs: true,
      network: 'none',
      inheritedFds: 'closed',
    });
    expect(r.confinement.namespaces).toHaveLength(6);
    expect(r.degraded).toEqual([]);
  });

  const cgroupsUnderBase = () =>
    hierarchyRoots(host).flatMap((h) => {
      try {
        return readdirSync(`${h.root}/${base}`).filter((n) => existsSync(`${h.root}/${base}/${n}/cgroup.procs`));
      } catch {
        return [];
      }
    });

  it('a cwd outside the view is refused before anything starts (E_SANDBOX_OPTION) and leaves no cgroup', async () => {
    const before = cgroupsUnderBase();
    // A host directory, and one under /tmp (the view's /tmp is private and empty).
    for (const cwd of [outside, dir]) {
      expect(() => runSandboxed('pwd', [], opts({ cwd }))).toThrow(expect.objectContaining({ code: 'E_SANDBOX_OPTION', details: expect.objectContaining({ option: 'cwd' }) }));
    }
    expect(cgroupsUnderBase()).toEqual(before);
    // Inside the view it is accepted and used.
    chmodSync(outside, 0o755);
    const r = await runSandboxed('pwd', [], opts({ cwd: outside, view: { readOnly: [outside] } }));
    expect(r.stdout.trim()).toBe(outside);
  });

  it('CAPTRAP_LAUNCHER=sh refuses a confined sandbox unless allowDegraded', async () => {
    process.env.CAPTRAP_LAUNCHER = 'sh';
    const before = cgroupsUnderBase();
    let err: unknown;
    try {
      runSandboxed('true', [], opts());
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'E_LIMIT_UNENFORCEABLE', details: { limit: 'confinement' } });
    expect(String((err as Error).message)).toMatch(/confinement/);
    expect(cgroupsUnderBase()).toEqual(before);
    const r = await runSandboxed('true', [], opts({ allowDegraded: true }));
    expect(r.reason).toEqual({ kind: 'exited', code: 0 });
    expect(r.degraded.map((d) => d.limit)).toContain('confinement');
    expect(r.confinement).toMatchObject({ confined: false, view: false, namespaces: [], capabilities: 'kept' });
    // Unconfined on purpose, it runs without a degradation.
    const u = await runSandboxed('true', [], opts({ confine: false }));
    expect(u.degraded).toEqual([]);
  });
});
