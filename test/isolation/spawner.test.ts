// captrap-spawn (src/isolation/spawner.ts, launcher/captrap-spawn.c) with real processes: what a
// process it starts gets (descriptors, environment, signals), how its end is reported, that a kill
// never reaches a process after it was reaped, that the helper dies with captrap and takes what it
// started with it, that a garbled request stops it, and that the warm pool refills through it.
import { spawn, spawnSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { pollUntil } from '../../src/isolation/cgroupfs.js';
import { probeHost } from '../../src/isolation/host.js';
import { builtLauncherPath, builtProgramPath } from '../../src/isolation/launcher/launcher.js';
import { readStat } from '../../src/isolation/proc.js';
import { configureWarmPool, drainWarmPool, runSandboxed } from '../../src/isolation/sandbox.js';
import { getSpawner, type SpawnedProcess } from '../../src/isolation/spawner.js';

const helperPath = builtProgramPath('captrap-spawn');
const host = probeHost();
const base = `captrap-test-spawner-${process.pid}-${Date.now().toString(36)}`;

afterAll(async () => {
  await drainWarmPool();
  configureWarmPool({ maxSize: 0 });
  removeCgroupBase(host, base);
});

const built = () => {
  if (helperPath) return true;
  if (process.env.CI) throw new Error('build/captrap-spawn is not built');
  console.log('skipping: build/captrap-spawn is not built (npm run build)');
  return false;
};

const alive = (pid: number) => {
  const st = readStat(pid);
  return st !== undefined && st.state !== 'Z';
};

const waitFor = (cond: () => boolean, ms = 5000) => pollUntil(cond, ms, 10);

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
  ready: string;
  pid: number | undefined;
}

/** Starts argv through the helper, writes `request` to its fd 3, collects fd 1, 2 and 4 until it ends. */
function run(argv: string[], request = ''): Promise<Ran> {
  const p = getSpawner()!.spawn(argv[0]!, argv)!;
  let out = '';
  let err = '';
  let ready = '';
  const streamsDone: Promise<void>[] = [];
  p.once('spawn', () => {
    for (const [s, add] of [
      [p.stdout!, (c: string) => (out += c)],
      [p.stderr!, (c: string) => (err += c)],
      [p.ready!, (c: string) => (ready += c)],
    ] as const) {
      s.setEncoding('utf8');
      s.on('data', add);
      streamsDone.push(new Promise((r) => s.once('close', () => r())));
    }
    p.request!.on('error', () => undefined);
    p.request!.end(request);
  });
  return new Promise((resolve) =>
    p.once('exit', (code, signal) => {
      void Promise.all(streamsDone).then(() => resolve({ code, signal, out, err, ready, pid: p.pid }));
    }),
  );
}

describe('captrap-spawn', () => {
  it('gives the process /dev/null, four pipes and nothing else, an empty environment, / and default signals', async () => {
    if (!built()) return;
    // Ignore and block signals here: nothing of captrap's own state may reach the process.
    const r = await run(
      ['/bin/sh', '-c', 'cat <&3; echo; ls /proc/self/fd | tr "\\n" " "; echo; env | grep -v "^PWD=" | wc -l; pwd; grep -E "^Sig(Ign|Blk)" /proc/self/status; readlink /proc/self/fd/0; echo up >&4; echo to-stderr >&2'],
      'the request',
    );
    expect(r.code).toBe(0);
    expect(r.signal).toBe(null);
    const lines = r.out.split('\n');
    expect(lines[0]).toBe('the request');
    // 0-4, and 5 is ls's own /proc/self/fd
    expect(lines[1]!.trim()).toBe('0 1 2 3 4 5');
    expect(lines[2]).toBe('0');
    expect(lines[3]).toBe('/');
    expect(lines[4]).toBe('SigBlk:\t0000000000000000');
    expect(lines[5]).toBe('SigIgn:\t0000000000000000');
    expect(lines[6]).toBe('/dev/null');
    expect(r.ready).toBe('up\n');
    expect(r.err).toBe('to-stderr\n');
  });

  it('reports an exit status and a signal as a ChildProcess would', async () => {
    if (!built()) return;
    expect(await run(['/bin/sh', '-c', 'exit 42'])).toMatchObject({ code: 42, signal: null });
    expect(await run(['/bin/sh', '-c', 'kill -TERM $$'])).toMatchObject({ code: null, signal: 'SIGTERM' });
    const missing = await run(['/nonexistent/program', 'x']);
    expect(missing.code).toBe(127);
    expect(missing.err).toContain('cannot execute /nonexistent/program');
  });

  it('kills a process asked for before its pipes were open, and never one it has reaped', async () => {
    if (!built()) return;
    const helper = getSpawner()!;
    const early = helper.spawn('/bin/sleep', ['sleep', '60'])!;
    expect(early.kill('SIGKILL')).toBe(true);
    const ended = await new Promise<[number | null, string | null]>((r) => early.once('exit', (c, s) => r([c, s])));
    expect(ended).toEqual([null, 'SIGKILL']);
    const done = helper.spawn('/bin/true', ['true'])!;
    await new Promise((r) => done.once('exit', r));
    expect(done.exitCode).toBe(0);
    // Reaped: its pid may belong to anyone now, so nothing is sent.
    expect(done.kill('SIGKILL')).toBe(false);
  });

  it('starts many processes without forking captrap, each one reported once', async () => {
    if (!built()) return;
    const helper = getSpawner()!;
    const ps: SpawnedProcess[] = Array.from({ length: 50 }, (_, i) => helper.spawn('/bin/sh', ['sh', '-c', `exit ${i % 7}`])!);
    const exits = await Promise.all(ps.map((p) => new Promise<number | null>((r) => p.once('exit', (c) => r(c)))));
    expect(exits).toEqual(ps.map((_, i) => i % 7));
    expect(new Set(ps.map((p) => p.pid)).size).toBe(50);
    for (const p of ps) expect(readStat(p.pid!)?.ppid ?? helper.pid).toBe(helper.pid);
  });

  it('dies with captrap, and what it started dies with it', async () => {
    if (!built()) return;
    // A captrap stand-in: a node process that starts the helper and, through it, a sleeper.
    const script = `
      const { getSpawner } = await import(${JSON.stringify(new URL('../../src/isolation/spawner.ts', import.meta.url).href)});
      const h = getSpawner();
      const p = h.spawn('/bin/sleep', ['sleep', '300']);
      p.once('spawn', () => { console.log(h.pid + ' ' + p.pid); });
      setInterval(() => {}, 1e6);`;
    const owner = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const line = await new Promise<string>((resolve, reject) => {
        owner.stdout!.once('data', (c: Buffer) => resolve(c.toString().trim()));
        owner.once('exit', () => reject(new Error('the owner exited early')));
      });
      const [helper, sleeper] = line.split(' ').map(Number) as [number, number];
      expect(readStat(helper)?.ppid).toBe(owner.pid);
      expect(readStat(sleeper)?.ppid).toBe(helper);
      owner.kill('SIGKILL');
      expect(await waitFor(() => !alive(helper) && !alive(sleeper))).toBe(true);
    } finally {
      if (owner.exitCode === null && owner.signalCode === null) owner.kill('SIGKILL');
    }
  });

  it('reports what it started as killed when it dies, and a new one starts on the next use', async () => {
    if (!built()) return;
    const helper = getSpawner()!;
    const p = helper.spawn('/bin/sleep', ['sleep', '300'])!;
    await new Promise((r) => p.once('spawn', r));
    const pid = p.pid!;
    const ended = new Promise<string | null>((r) => p.once('exit', (_c, s) => r(s)));
    process.kill(helper.pid, 'SIGKILL');
    expect(await ended).toBe('SIGKILL');
    expect(await waitFor(() => !alive(pid))).toBe(true);
    const next = getSpawner()!;
    expect(next.pid).not.toBe(helper.pid);
    expect(await run(['/bin/sh', '-c', 'exit 3'])).toMatchObject({ code: 3 });
  });

  it('refuses to run for a parent it does not have, and stops at a garbled request', () => {
    if (!built()) return;
    const wrong = spawnSync(helperPath!, ['1'], { input: '', encoding: 'utf8' });
    expect(wrong.status).toBe(1);
    expect(wrong.stderr).toContain('PPID must be the parent');
    // spawnSync's child has this process as parent.
    const garbage = spawnSync(helperPath!, [String(process.pid)], { input: 'GARBAGE-GARBAGE-GARBAGE', encoding: 'utf8' });
    expect(garbage.status).toBe(1);
    expect(garbage.stderr).toContain('unknown request');
    const header = Buffer.alloc(16);
    header.write('SPWN', 0, 'latin1');
    header.writeUInt32LE(1, 4);
    header.writeUInt32LE(3, 8);
    header.writeUInt32LE(4, 12);
    const cut = spawnSync(helperPath!, [String(process.pid)], { input: Buffer.concat([header, Buffer.from('/bin')]) });
    expect(cut.status).toBe(1);
    expect(cut.stderr.toString()).toContain('unterminated string');
  });

  it('refills the warm pool: a warm launcher is its child, the command runs as cold and sees nothing of the helper (CAPTRAP_SPAWNER=0: captrap\'s child)', async () => {
    if (!built()) return;
    if (host.layout === 'none' || !builtLauncherPath()) {
      if (process.env.CI) throw new Error('no cgroups or no launcher in CI');
      console.log('skipping: warm launchers need cgroups and build/captrap-launch');
      return;
    }
    configureWarmPool({ maxSize: 1 });
    const parentOfLeader = async (): Promise<{ parent: number | undefined; out: string; warm: boolean }> => {
      // A command that outlives its hand-over long enough to read its leader's parent.
      // It also shows what a hostile command sees of the helper: no process (its pid namespace) and no descriptor.
      const sb = runSandboxed('/bin/sh', ['-c', 'echo hi; cat /proc/[0-9]*/comm | sort -u | tr "\\n" " "; echo; ls /proc/self/fd | tr "\\n" " "; sleep 0.3'], { cgroupBase: base, memory: '64M', pids: 16 });
      const parent = readStat(sb.pid)?.ppid;
      const r = await sb;
      return { parent, out: r.stdout, warm: r.warm };
    };
    try {
      for (const off of [false, true]) {
        if (off) process.env.CAPTRAP_SPAWNER = '0';
        await drainWarmPool();
        await runSandboxed('/bin/true', [], { cgroupBase: base, memory: '64M', pids: 16 }); // a miss: the pool fills
        await new Promise((r) => setTimeout(r, 300));
        const r = await parentOfLeader();
        expect(r.warm).toBe(true);
        const [hi, comms, fds] = r.out.split('\n');
        expect(hi).toBe('hi');
        // Only the sandbox's init and the command's own processes.
        const seen = comms!.trim().split(' ');
        expect(seen).toContain('captrap-launch');
        expect(seen.filter((c) => !['captrap-launch', 'sh', 'cat', 'sort', 'tr'].includes(c))).toEqual([]);
        // ls's own directory is 3.
        expect(fds!.trim()).toBe('0 1 2 3');
        expect(r.parent).toBe(off ? process.pid : getSpawner()!.pid);
      }
    } finally {
      delete process.env.CAPTRAP_SPAWNER;
    }
  });
});
