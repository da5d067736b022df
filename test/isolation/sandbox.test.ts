// Guarantees 1, 2, 4, 6 and bad input, on real processes and the real cgroups of this host.
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { afterAll, describe, expect, it } from 'vitest';
import { hierarchyRoots, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { isAlive } from '../../src/isolation/proc.js';
import { runSandboxed, type Sandbox, type SandboxOptions } from '../../src/isolation/sandbox.js';
import { cgroupOf, namespacePids, toHostPids } from './helpers.js';

const host = probeHost();
const base = `captrap-test-${process.pid}-${Date.now().toString(36)}`;
const hasCgroups = host.layout !== 'none';
const opts = (o: SandboxOptions = {}): SandboxOptions => ({ cgroupBase: base, killGrace: 200, ...o });

function cgroupsUnderBase(): string[] {
  return hierarchyRoots(host).flatMap((h) => {
    try {
      return readdirSync(`${h.root}/${base}`).filter((n) => existsSync(`${h.root}/${base}/${n}/cgroup.procs`)).map((n) => `${h.root}/${base}/${n}`);
    } catch {
      return [];
    }
  });
}

/** Reads "<label> <pid>" lines from the sandbox's stdout until every label has been seen. */
function pidsFromOutput(sb: Sandbox, labels: string[]): Promise<Record<string, number>> {
  return new Promise((resolve, reject) => {
    const found: Record<string, number> = {};
    let buf = '';
    const t = setTimeout(() => reject(new Error(`saw only ${JSON.stringify(found)} of ${labels.join(',')}`)), 5000);
    sb.stdout!.on('data', (c: Buffer) => {
      buf += c.toString();
      for (const m of buf.matchAll(/^(\w+) (\d+)$/gm)) found[m[1]!] = Number(m[2]);
      if (labels.every((l) => found[l] !== undefined)) {
        clearTimeout(t);
        resolve(found);
      }
    });
  });
}

const waitGone = async (pids: number[], ms = 2000) => {
  const deadline = Date.now() + ms;
  while (pids.some(isAlive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  return pids.filter(isAlive);
};

// A leader that ignores SIGTERM and leaves behind: a setsid grandchild, a double-forked daemon,
// and a SIGTERM-ignoring child.
const ESCAPEES = [
  'trap "" TERM',
  `setsid sh -c 'echo setsid $$; exec sleep 300' &`,
  `(sh -c 'echo daemon $$; exec sleep 300' &) &`,
  `sh -c 'trap "" TERM; echo stubborn $$; while :; do sleep 0.1; done' &`,
  'echo leader $$',
  'while :; do sleep 0.1; done',
].join('\n');

afterAll(() => {
  expect(cgroupsUnderBase()).toEqual([]);
  expect(removeCgroupBase(host, base)).toEqual([]);
});

describe.skipIf(!hasCgroups)(`sandbox on this host (${host.layout})`, () => {
  it('guarantee 1: the command is in its cgroups when it starts, and so is everything it forks', async () => {
    // Confined, /proc/self/cgroup is relative to the sandbox's cgroup namespace: '/' is its root
    // (a process outside it would read '/..'). The host side then shows that this root is the
    // sandbox's cgroup, for the command, the process it forked and the launcher's init alike.
    const sb = runSandboxed('sh', ['-c', 'cat /proc/self/cgroup; echo ---; sh -c "cat /proc/self/cgroup; echo ---; read x"'], opts({ memory: '64M', pids: 32, stdin: 'pipe' }));
    const text = await new Promise<string>((resolve) => {
      let buf = '';
      sb.stdout!.on('data', (c: Buffer) => {
        buf += c.toString();
        if (buf.split('---\n').length === 3) resolve(buf);
      });
    });
    const suffix = `/${base}/${sb.cgroupName}`;
    const members = [sb.pid, ...namespacePids(sb.pid).values()];
    expect(members.length).toBeGreaterThanOrEqual(4); // launcher, its init, sh, the forked sh
    for (const pid of members) {
      if (host.v1.memory) expect(cgroupOf(pid, 'memory')).toBe(suffix);
      if (host.v1.pids) expect(cgroupOf(pid, 'pids')).toBe(suffix);
      if (host.unifiedRoot) expect(cgroupOf(pid, '')).toBe(suffix);
    }
    sb.stdin!.end('\n');
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'exited', code: 0 });
    const [own, forked] = text.split('---\n');
    for (const t of [own!, forked!]) {
      const lines = t.trim().split('\n');
      if (host.v1.memory) expect(lines.find((l) => /^\d+:memory:/.test(l))).toMatch(/:memory:\/$/);
      if (host.v1.pids) expect(lines.find((l) => /^\d+:pids:/.test(l))).toMatch(/:pids:\/$/);
      if (host.unifiedRoot) expect(lines.find((l) => l.startsWith('0::'))).toBe('0::/');
    }
    expect(r.cleanedUp).toBe(true);
  });

  it('guarantee 1: the leader is already a member when runSandboxed returns (no spawn-then-move window)', async () => {
    const sb = runSandboxed('sleep', ['5'], opts());
    // The trampoline joins before exec; once the command runs, /proc/<pid>/cgroup shows the sandbox.
    let cg = '';
    for (let i = 0; i < 200 && !cg.includes(sb.cgroupName); i++) {
      await new Promise((r) => setTimeout(r, 5));
      cg = existsSync(`/proc/${sb.pid}/cgroup`) ? (await import('node:fs')).readFileSync(`/proc/${sb.pid}/cgroup`, 'utf8') : '';
    }
    expect(cg).toContain(`/${base}/${sb.cgroupName}`);
    sb.kill();
    expect((await sb).reason.kind).toBe('killed');
  });

  it('guarantee 2: kill() takes the whole tree: setsid grandchild, double-forked daemon, SIGTERM-ignorers', async () => {
    const sb = runSandboxed('sh', ['-c', ESCAPEES], opts());
    const pids = toHostPids(sb.pid, await pidsFromOutput(sb, ['setsid', 'daemon', 'stubborn', 'leader']));
    expect(Object.values(pids).every(isAlive)).toBe(true);
    sb.kill();
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'killed' });
    expect(await waitGone(Object.values(pids), 200)).toEqual([]);
    expect(r.cleanedUp).toBe(true);
    expect(cgroupsUnderBase()).toEqual([]);
  });

  it('guarantee 2: a timeout takes the whole tree too', async () => {
    const sb = runSandboxed('sh', ['-c', ESCAPEES], opts({ timeout: 400 }));
    const pids = toHostPids(sb.pid, await pidsFromOutput(sb, ['setsid', 'daemon', 'stubborn']));
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'timeout' });
    expect(await waitGone(Object.values(pids), 200)).toEqual([]);
  });

  it('guarantee 2: when the leader exits normally, its leftover daemons are killed and the cgroup removed', async () => {
    // The leader lingers long enough for the host-side pid lookup below.
    const sb = runSandboxed('sh', ['-c', `(sh -c 'echo daemon $$; exec sleep 300' &) ; setsid sh -c 'echo setsid $$; exec sleep 300' & sleep 0.5; exit 0`], opts());
    const pids = toHostPids(sb.pid, await pidsFromOutput(sb, ['daemon', 'setsid']));
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'exited', code: 0 });
    expect(await waitGone(Object.values(pids), 200)).toEqual([]);
    expect(r.cleanedUp).toBe(true);
  });

  it('guarantee 4: exited(code) and signaled(signal)', async () => {
    expect((await runSandboxed('sh', ['-c', 'exit 7'], opts())).reason).toEqual({ kind: 'exited', code: 7 });
    const r = await runSandboxed('sh', ['-c', 'kill -USR1 $$'], opts());
    expect(r.reason).toEqual({ kind: 'signaled', signal: 'SIGUSR1' });
    expect(r.signal).toBe('SIGUSR1');
  });

  it.skipIf(!(host.v1.memory || host.unifiedControllers.includes('memory')))('guarantee 4: a memory hog over its limit is reported as oom (from the OOM counter)', async () => {
    const r = await runSandboxed('sh', ['-c', 'x=a; while :; do x=$x$x; done'], opts({ memory: '32M', timeout: 10_000 }));
    expect(r.reason).toEqual({ kind: 'oom' });
    expect(r.counters.oomKills).toBeGreaterThan(0);
    expect(r.usage.memoryPeakBytes).toBeGreaterThan(16 * 1024 * 1024);
    expect(r.usage.memoryPeakBytes).toBeLessThanOrEqual(32 * 1024 * 1024);
  });

  it.skipIf(!(host.v1.pids || host.unifiedControllers.includes('pids')))('guarantee 4: a fork bomb is contained, the host keeps working, and the reason is pids-limit', async () => {
    const sb = runSandboxed('sh', ['-c', 'b() { b & b & wait; }; b'], opts({ pids: 30, timeout: 1500 }));
    await new Promise((r) => setTimeout(r, 500));
    // The host can still fork while the bomb is at its limit.
    const other = await runSandboxed('true', [], opts());
    expect(other.reason).toEqual({ kind: 'exited', code: 0 });
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'pids-limit' });
    expect(r.counters.pidsMax).toBeGreaterThan(0);
    expect(r.cleanedUp).toBe(true);
  });

  it('guarantee 4: timeout and explicit kills carry their own reasons (recorded before the signal)', async () => {
    expect((await runSandboxed('sleep', ['10'], opts({ timeout: 150 }))).reason).toEqual({ kind: 'timeout' });
    const sb = runSandboxed('sleep', ['10'], opts());
    setTimeout(() => sb.kill('revoked'), 50);
    const r = await sb;
    expect(r.reason).toEqual({ kind: 'revoked' });
    // SIGTERM reached sleep first (killGrace), so the raw status is the signal, yet the reason is ours.
    expect(r.signal).toBe('SIGTERM');
  });

  it('guarantee 6: live usage from the cgroup and per process', async () => {
    const sb = runSandboxed('sh', ['-c', 'x=$(head -c 20000000 /dev/zero | tr "\\0" a); i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo ready $$; sleep 5'], opts({ memory: '256M' }));
    const inside = await pidsFromOutput(sb, ['ready']);
    // Confined, the leader captrap sees is the launcher; the shell holding the 20 MB is the command.
    const { ready: command } = toHostPids(sb.pid, inside);
    const u = await sb.usage();
    expect(u.cgroup.memoryCurrentBytes).toBeGreaterThan(15_000_000);
    expect(u.cgroup.memoryPeakBytes).toBeGreaterThanOrEqual(u.cgroup.memoryCurrentBytes!);
    expect(u.cgroup.cpuUsageUs).toBeGreaterThan(1000);
    expect(u.processes.map((p) => p.pid)).toContain(sb.pid);
    const shell = u.processes.find((p) => p.pid === command);
    expect(shell?.memoryBytes).toBeGreaterThan(15_000_000);
    sb.kill();
    await sb;
  });

  it('scrubs the environment, caps output and marks the truncation', async () => {
    process.env.CAPTRAP_TEST_SECRET = 'must-not-leak';
    const r = await runSandboxed('env', [], opts({ env: { ONLY: 'this' } }));
    expect(r.stdout.trim().split('\n').sort()).toEqual(['ONLY=this', expect.stringMatching(/^PATH=/)].sort());
    const big = await runSandboxed('head', ['-c', '100000', '/dev/zero'], opts({ maxOutputBytes: 1000 }));
    expect(big.stdoutTruncated).toBe(true);
    expect(big.stdout.startsWith('\0'.repeat(1000) + '\n[captrap: output truncated at 1000 bytes]')).toBe(true);
  });

  it('switches uid/gid and sets no_new_privs', async () => {
    const r = await runSandboxed('sh', ['-c', 'id -u; id -g; grep NoNewPrivs /proc/self/status'], opts({ uid: 65534, gid: 65534 }));
    expect(r.stdout.split('\n').slice(0, 3)).toEqual(['65534', '65534', 'NoNewPrivs:\t1']);
  });

  it.skipIf(!host.namespaces.pid)('runs in a pid namespace as its init when asked', async () => {
    // The legacy unconfined chain (unshare(1) --pid --fork): the command is the namespace's init.
    // It runs as 65534 like any sandbox: unshare runs first, setpriv switches after it.
    const r = await runSandboxed('sh', ['-c', 'echo $$; id -u'], opts({ confine: false, namespaces: ['pid', 'mount'] }));
    expect(r.stdout.trim().split('\n')).toEqual(['1', '65534']);
  });

  it.skipIf(!host.namespaces.pid)('confined, the command is pid 2 under the launcher\'s init (pid 1)', async () => {
    // The glob runs in the shell itself: no extra process shows up in /proc.
    const r = await runSandboxed('sh', ['-c', 'echo $$; read c < /proc/1/comm; echo $c; cd /proc && echo [0-9]*'], opts());
    expect(r.stdout.trim().split('\n')).toEqual(['2', 'captrap-launch', '1 2']);
  });
});

describe('bad input: a typed error before anything is created', () => {
  const dir = mkdtempSync(`${tmpdir()}/captrap-bad-`);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  it.each([
    ['unknown option', 'true', { bogus: 1 }, 'E_SANDBOX_OPTION'],
    ['malformed limit', 'true', { memory: 'lots' }, 'E_SANDBOX_OPTION'],
    ['negative limit', 'true', { pids: -3 }, 'E_SANDBOX_OPTION'],
    ['missing command', 'no-such-command-captrap', {}, 'E_COMMAND_NOT_FOUND'],
    ['missing cwd', 'true', { cwd: `${dir}/nope` }, 'E_CWD'],
    ['invalid uid', 'true', { uid: 4294967295 }, 'E_SANDBOX_OPTION'],
    ['unavailable backend', 'true', { backend: 'systemd-run' }, 'E_LIMIT_UNENFORCEABLE'],
  ])('%s', (_label, cmd, o, code) => {
    expect(() => runSandboxed(cmd, [], opts(o as SandboxOptions))).toThrow(expect.objectContaining({ code }));
    expect(cgroupsUnderBase()).toEqual([]);
  });

  it.skipIf(!host.isRoot)('a uid a non-root captrap cannot switch to: E_UID (checked from a real unprivileged process)', () => {
    chmodSync(dir, 0o755);
    const script = `${dir}/as-nobody.mts`;
    writeFileSync(
      script,
      `import { runSandboxed } from ${JSON.stringify(fileURLToPath(new URL('../../src/isolation/sandbox.ts', import.meta.url)))};
try { runSandboxed('true', [], { uid: 0 }); console.log('started'); } catch (e) { console.log(e.code); }`,
    );
    chmodSync(script, 0o644);
    const r = spawnSync(process.execPath, ['--import', 'tsx', script], {
      cwd: fileURLToPath(new URL('../../', import.meta.url)),
      uid: 65534,
      gid: 65534,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir },
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.stdout.trim()).toBe('E_UID');
  });

  it('fails closed on a limit this backend cannot enforce, naming the limit and the fix', () => {
    let err: unknown;
    try {
      runSandboxed('true', [], opts({ backend: 'none', pids: 10 }));
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'E_LIMIT_UNENFORCEABLE', details: { limit: 'tree-kill', backend: 'none' } });
    expect(String((err as Error).message)).toMatch(/pids .*RLIMIT_NPROC.*allowDegraded/s);
    expect(cgroupsUnderBase()).toEqual([]);
  });
});
