// The sandbox launcher: the compiled captrap-launch (argument protocol, failure exits) and the
// key guarantees — join-before-exec, parent-death, tree-kill, exit reasons — run through BOTH
// launchers (captrap-launch and the setpriv + sh fallback), selected by CAPTRAP_LAUNCHER.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cleanupStaleCgroups, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { builtLauncherPath, chooseLauncher, launcherPreference } from '../../src/isolation/launcher/launcher.js';
import { isAlive } from '../../src/isolation/proc.js';
import { hostReport } from '../../src/isolation/report.js';
import { runSandboxed, type SandboxOptions } from '../../src/isolation/sandbox.js';
import { cgroupOf, namespacePids, toHostPids } from './helpers.js';

const host = probeHost();
const bin = builtLauncherPath();
const base = `captrap-test-launch-${process.pid}-${Date.now().toString(36)}`;
const root = fileURLToPath(new URL('../../', import.meta.url));
const dir = mkdtempSync(`${tmpdir()}/captrap-launch-`);
const hasCgroups = host.layout !== 'none';
const opts = (o: SandboxOptions = {}): SandboxOptions => ({ cgroupBase: base, killGrace: 100, ...o });
const savedPref = process.env.CAPTRAP_LAUNCHER;
if (!bin) console.log("skipping captrap-launch tests: build/captrap-launch is not built (run 'npm run build'; needs a C compiler)");
if (!host.tools.setpriv) console.log('skipping setpriv + sh launcher tests: setpriv (util-linux) is not installed');

const waitGone = async (pids: number[], ms = 2000) => {
  const deadline = Date.now() + ms;
  while (pids.some(isAlive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  return pids.filter(isAlive);
};

/** Runs the launcher binary directly, as a child of this process. */
function launch(args: string[], env: Record<string, string> = { PATH: '/usr/bin:/bin' }) {
  const r = spawnSync(bin!, args, { encoding: 'utf8', env, cwd: dir });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

afterEach(() => {
  if (savedPref === undefined) delete process.env.CAPTRAP_LAUNCHER;
  else process.env.CAPTRAP_LAUNCHER = savedPref;
});

afterAll(async () => {
  await cleanupStaleCgroups(host, base);
  rmSync(dir, { recursive: true, force: true });
  expect(removeCgroupBase(host, base)).toEqual([]);
});

describe.skipIf(!bin)('captrap-launch binary: argument protocol and failure exits', () => {
  const ppid = String(process.pid);
  const marker = () => `${dir}/ran-${Math.random().toString(36).slice(2)}`;

  it('execs the command with the same pid and exit status', () => {
    const r = launch(['--ppid', ppid, '--', 'sh', '-c', 'exit 9']);
    expect(r.status).toBe(9);
  });

  it('refuses to start the command when its parent is not the expected captrap (125)', () => {
    const m = marker();
    const r = launch(['--ppid', '1', '--', 'touch', m]);
    expect(r.status).toBe(125);
    expect(r.stderr).toMatch(/parent\) is already gone/);
    expect(existsSync(m)).toBe(false);
  });

  it('refuses to start the command when a cgroup cannot be joined, naming the file (125)', () => {
    const m = marker();
    const r = launch(['--ppid', ppid, '--join', `${dir}/no-such-cgroup/cgroup.procs`, '--', 'touch', m]);
    expect(r.status).toBe(125);
    expect(r.stderr).toContain(`cannot join cgroup ${dir}/no-such-cgroup/cgroup.procs`);
    expect(existsSync(m)).toBe(false);
  });

  it('writes exactly its own pid to each --join file before exec', () => {
    const files = [`${dir}/procs-a`, `${dir}/procs-b`];
    for (const f of files) writeFileSync(f, '');
    const r = launch(['--ppid', ppid, '--join', files[0]!, '--join', files[1]!, '--', 'sh', '-c', 'echo $$']);
    expect(r.status).toBe(0);
    for (const f of files) expect(readFileSync(f, 'utf8')).toBe(r.stdout);
  });

  it('rejects malformed arguments (125) and reports a missing or unrunnable command (127 / 126)', () => {
    expect(launch([]).status).toBe(125);
    expect(launch(['--ppid', 'x1', '--', 'true']).status).toBe(125);
    expect(launch(['--ppid', ppid, '--bogus', '--', 'true']).status).toBe(125);
    expect(launch(['--ppid', ppid, '--']).status).toBe(125);
    expect(launch(['--ppid', ppid, '--', 'captrap-no-such-command']).status).toBe(127);
    writeFileSync(`${dir}/not-executable`, 'echo no\n', { mode: 0o644 });
    expect(launch(['--ppid', ppid, '--', `${dir}/not-executable`]).status).toBe(126);
  });

  it('drops PWD unless --keep-pwd, and sets no_new_privs only with --no-new-privs', () => {
    const env = { PATH: '/usr/bin:/bin', PWD: '/somewhere', A: '1' };
    expect(launch(['--ppid', ppid, '--', 'env'], env).stdout.split('\n').sort().filter(Boolean)).toEqual(['A=1', 'PATH=/usr/bin:/bin']);
    expect(launch(['--ppid', ppid, '--keep-pwd', '--', 'env'], env).stdout).toContain('PWD=/somewhere');
    expect(launch(['--ppid', ppid, '--', 'grep', 'NoNewPrivs', '/proc/self/status']).stdout).toBe('NoNewPrivs:\t0\n');
    expect(launch(['--ppid', ppid, '--no-new-privs', '--', 'grep', 'NoNewPrivs', '/proc/self/status']).stdout).toBe('NoNewPrivs:\t1\n');
  });
});

describe('launcher choice', () => {
  it('reads CAPTRAP_LAUNCHER and rejects unknown values before anything is created', () => {
    expect(launcherPreference({})).toBe('auto');
    expect(launcherPreference({ CAPTRAP_LAUNCHER: 'sh' })).toBe('sh');
    expect(launcherPreference({ CAPTRAP_LAUNCHER: 'C' })).toBe('c');
    expect(() => launcherPreference({ CAPTRAP_LAUNCHER: 'bash' })).toThrow(expect.objectContaining({ code: 'E_SANDBOX_OPTION' }));
    process.env.CAPTRAP_LAUNCHER = 'bash';
    expect(() => runSandboxed('true', [], opts())).toThrow(expect.objectContaining({ code: 'E_SANDBOX_OPTION' }));
  });

  it('prefers the built binary, falls back to setpriv + sh, and doctor says which', () => {
    expect(chooseLauncher(true, 'sh').kind).toBe('setpriv+sh');
    expect(chooseLauncher(false, 'sh').kind).toBe('sh');
    expect(chooseLauncher(true, 'auto').kind).toBe(bin ? 'captrap-launch' : 'setpriv+sh');
    process.env.CAPTRAP_LAUNCHER = 'sh';
    const r = hostReport(host);
    expect(r.launcher.kind).toBe(host.tools.setpriv ? 'setpriv+sh' : 'sh');
    expect(r.launcher.why).toContain('CAPTRAP_LAUNCHER=sh');
    delete process.env.CAPTRAP_LAUNCHER;
    expect(hostReport(host).launcher.kind).toBe(bin ? 'captrap-launch' : host.tools.setpriv ? 'setpriv+sh' : 'sh');
  });
});

const MODES = [
  { pref: 'c', kind: 'captrap-launch', skip: !bin || !hasCgroups },
  { pref: 'sh', kind: 'setpriv+sh', skip: !host.tools.setpriv || !hasCgroups },
] as const;

describe.each(MODES)('guarantees through the $kind launcher', ({ pref, kind, skip }) => {
  beforeAll(() => {
    if (skip) console.log(`skipping guarantees through ${kind}: ${hasCgroups ? 'launcher unavailable' : 'no cgroups on this host'}`);
  });
  const use = () => {
    process.env.CAPTRAP_LAUNCHER = pref;
  };
  // The setpriv + sh chain cannot confine (a confined sandbox through it is refused with
  // E_LIMIT_UNENFORCEABLE, see confine.test.ts), so through it these guarantees are tested
  // unconfined; through captrap-launch they are tested with the default confinement.
  const confined = pref === 'c';
  const mode = (o: SandboxOptions = {}): SandboxOptions => opts(confined ? o : { confine: false, ...o });

  it.skipIf(skip)('join-before-exec: the command is in every cgroup of its sandbox at its first instruction', async () => {
    use();
    // cat reads its own membership first, then blocks on stdin while the host side looks.
    const sb = runSandboxed('cat', ['/proc/self/cgroup', '-'], mode({ memory: '64M', pids: 32, stdin: 'pipe' }));
    const text = await new Promise<string>((resolve) => {
      let buf = '';
      sb.stdout!.on('data', (c: Buffer) => {
        buf += c.toString();
        if (buf.includes('0::')) resolve(buf);
      });
    });
    const want = `/${base}/${sb.cgroupName}`;
    // Confined, cat is pid 2 of the sandbox's pid namespace and reads its membership relative to
    // the sandbox's cgroup namespace, whose root ('/') the host side shows to be the sandbox.
    const cat = confined ? namespacePids(sb.pid).get(2)! : sb.pid;
    expect(readFileSync(`/proc/${cat}/cmdline`, 'utf8')).toMatch(/cat\x00\/proc\/self\/cgroup\x00-\x00$/);
    if (host.v1.memory) expect(cgroupOf(cat, 'memory')).toBe(want);
    if (host.v1.pids) expect(cgroupOf(cat, 'pids')).toBe(want);
    if (host.unifiedRoot) expect(cgroupOf(cat, '')).toBe(want);
    sb.stdin!.end();
    const r = await sb;
    expect(r.launcher).toBe(kind);
    expect(r.reason).toEqual({ kind: 'exited', code: 0 });
    expect(r.stdout).toBe(text);
    // cat reads its own membership: it was never anywhere else, nothing moved it after start.
    const inside = confined ? '/' : want;
    const lines = text.trim().split('\n');
    const v1 = (c: string) => lines.find((l) => (l.split(':')[1] ?? '').split(',').includes(c))?.split(':')[2];
    if (host.v1.memory) expect(v1('memory')).toBe(inside);
    if (host.v1.pids) expect(v1('pids')).toBe(inside);
    if (host.unifiedRoot) expect(lines.find((l) => l.startsWith('0::'))).toBe(`0::${inside}`);
  });

  it.skipIf(skip)('exit reasons: exited, signaled, timeout, killed', async () => {
    use();
    const ex = await runSandboxed('sh', ['-c', 'exit 7'], mode());
    expect([ex.launcher, ex.reason, ex.confinement.confined]).toEqual([kind, { kind: 'exited', code: 7 }, confined]);
    expect((await runSandboxed('sh', ['-c', 'kill -USR1 $$'], mode())).reason).toEqual({ kind: 'signaled', signal: 'SIGUSR1' });
    expect((await runSandboxed('sleep', ['10'], mode({ timeout: 100 }))).reason).toEqual({ kind: 'timeout' });
    const sb = runSandboxed('sleep', ['10'], mode());
    expect(sb.launcher).toBe(kind);
    setTimeout(() => sb.kill(), 50);
    expect((await sb).reason).toEqual({ kind: 'killed' });
  });

  it.skipIf(skip)('tree-kill: kill() takes a setsid grandchild and a SIGTERM-ignoring child too', async () => {
    use();
    const sb = runSandboxed('sh', ['-c', `trap "" TERM; setsid sh -c 'echo s $$; exec sleep 300' & sh -c 'trap "" TERM; echo t $$; while :; do sleep 0.1; done' & wait`], mode());
    const printed = await new Promise<Record<string, number>>((resolve) => {
      let buf = '';
      sb.stdout!.on('data', (c: Buffer) => {
        buf += c.toString();
        const found = Object.fromEntries([...buf.matchAll(/^([st]) (\d+)$/gm)].map((m) => [m[1]!, Number(m[2])]));
        if (Object.keys(found).length === 2) resolve(found);
      });
    });
    // Confined, the printed pids are those inside the sandbox's pid namespace.
    const pids = Object.values(confined ? toHostPids(sb.pid, printed) : printed);
    expect(pids.every(isAlive)).toBe(true);
    sb.kill();
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'killed' });
    expect(await waitGone(pids, 500)).toEqual([]);
    expect(r.cleanedUp).toBe(true);
  });

  it.skipIf(skip)('parent-death: when captrap is SIGKILLed, the sandbox leader dies with it', async () => {
    const script = `${dir}/owner-${pref}.mts`;
    writeFileSync(
      script,
      `import { runSandboxed } from ${JSON.stringify(`${root}src/isolation/sandbox.ts`)};
const sb = runSandboxed('sleep', ['300'], { cgroupBase: process.argv[2], confine: process.argv[3] === 'confined' });
console.log(JSON.stringify({ pid: sb.pid, launcher: sb.launcher }));
setInterval(() => {}, 1000);
`,
    );
    const owner = spawn(process.execPath, ['--import', 'tsx', script, base, confined ? 'confined' : 'unconfined'], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, CAPTRAP_LAUNCHER: pref } });
    const info = await new Promise<{ pid: number; launcher: string }>((resolve, reject) => {
      let buf = '';
      owner.stdout.on('data', (c: Buffer) => {
        buf += c.toString();
        const line = buf.split('\n').find((l) => l.startsWith('{'));
        if (line) resolve(JSON.parse(line));
      });
      owner.once('exit', (code) => reject(new Error(`owner exited early (${code})`)));
    });
    expect(info.launcher).toBe(kind);
    // Only once sleep itself runs (past the launcher) is the test meaningful. Confined, the leader
    // stays the launcher (its argv ends with the command's) and sleep is pid 2 of its namespace.
    const sleepPid = () => (confined ? namespacePids(info.pid).get(2) : info.pid);
    const runsSleep = () => {
      const p = sleepPid();
      try {
        return p !== undefined && readFileSync(`/proc/${p}/comm`, 'utf8') === 'sleep\n' && readFileSync(`/proc/${p}/cmdline`, 'utf8').endsWith('sleep\x00300\x00');
      } catch {
        return false;
      }
    };
    const deadline = Date.now() + 3000;
    while (!runsSleep() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(runsSleep()).toBe(true);
    const sleeper = sleepPid()!;
    owner.kill('SIGKILL');
    await new Promise((r) => owner.once('exit', r));
    expect(await waitGone([info.pid, sleeper], 2000)).toEqual([]);
    expect((await cleanupStaleCgroups(host, base)).failed).toEqual([]);
  });
});
