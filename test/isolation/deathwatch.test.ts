// Early death notices (src/isolation/deathwatch.ts, launcher/captrap-deathwatch.c) with real
// processes: a SIGKILLed multi-threaded process is reported, a thread that ends is not, a ref
// whose start time does not match is not, and the helper says why when it cannot work.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { builtDeathWatchPath, DeathWatch, type DeathWatchStatus } from '../../src/isolation/deathwatch.js';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { builtLauncherPath } from '../../src/isolation/launcher/launcher.js';
import { commandOfLeader, processRef, readStat, type ProcessRef } from '../../src/isolation/proc.js';
import { runSandboxed } from '../../src/isolation/sandbox.js';

const path = builtDeathWatchPath();
let dw: DeathWatch | undefined;
let status: DeathWatchStatus = { available: false, reason: 'not started' };
const started: ChildProcess[] = [];

beforeAll(async () => {
  if (!path) return;
  dw = DeathWatch.start(path);
  status = await dw.status;
});

afterEach(() => {
  for (const c of started.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

const host = probeHost();
const base = `captrap-test-deathwatch-${process.pid}-${Date.now().toString(36)}`;

afterAll(() => {
  dw?.close();
  removeCgroupBase(host, base);
});

/** A node process with several threads and some heap, which says 'up' once running. */
async function nodeChild(script = 'const keep = []; for (let i = 0; i < 50000; i++) keep.push({ i, s: "x".repeat(100) }); console.log("up"); setInterval(() => keep.length, 1e6)'): Promise<{ child: ChildProcess; ref: ProcessRef; exited: Promise<void> }> {
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
  started.push(child);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', () => reject(new Error('child exited early')));
  });
  return { child, ref: processRef(child.pid!)!, exited };
}

const ready = () => {
  if (status.available) return true;
  // CI has the helper built and runs as root in the initial namespaces: there it must work.
  if (process.env.CI) throw new Error(`early death notices unavailable in CI: ${status.available ? '' : status.reason}`);
  console.log(`skipping: early death notices unavailable here (${status.available ? '' : status.reason})`);
  return false;
};

describe('DeathWatch', () => {
  it('reports a SIGKILLed multi-threaded process once, before or about when its parent sees it exit', async () => {
    if (!path) {
      if (process.env.CI) throw new Error('build/captrap-deathwatch is not built');
      console.log('skipping: build/captrap-deathwatch is not built (npm run build)');
      return;
    }
    if (!ready()) return;
    expect(status).toMatchObject({ available: true });
    const { child, ref, exited } = await nodeChild();
    let notices = 0;
    let noticedAt = 0;
    dw!.watch(ref, () => {
      notices++;
      noticedAt = performance.now();
    });
    await new Promise((r) => setTimeout(r, 50)); // the watch reaches the helper
    child.kill('SIGKILL');
    await exited;
    const exitAt = performance.now();
    await until(() => notices > 0, 5000);
    await new Promise((r) => setTimeout(r, 100));
    expect(notices).toBe(1);
    // Not a timing claim (the bench has those): only that it is the death just seen, not a late echo of something else.
    expect(noticedAt).toBeLessThan(exitAt + 1000);
  });

  it('does not report a thread that ends while its process lives on', async () => {
    if (!path || !ready()) return;
    // A worker thread starts and ends; the process stays until killed.
    const { child, ref, exited } = await nodeChild(
      'const { Worker } = require("node:worker_threads"); const w = new Worker("setTimeout(() => process.exit(0), 50)", { eval: true }); w.on("exit", () => console.log("up")); setInterval(() => {}, 1e6)',
    );
    let notices = 0;
    dw!.watch(ref, () => notices++);
    await new Promise((r) => setTimeout(r, 300));
    expect(notices).toBe(0);
    expect(child.exitCode).toBe(null);
    child.kill('SIGKILL');
    await exited;
    await until(() => notices > 0, 5000);
    expect(notices).toBe(1);
  });

  it('does not take the death of a process for that of a ref with another start time', async () => {
    if (!path || !ready()) return;
    const { child, ref, exited } = await nodeChild();
    let wrong = 0;
    let right = 0;
    // The same pid, as an earlier process that held it would have it (started long before).
    dw!.watch({ pid: ref.pid, startTime: ref.startTime - 500 }, () => wrong++);
    const stop = dw!.watch({ pid: ref.pid, startTime: ref.startTime }, () => right++);
    await new Promise((r) => setTimeout(r, 50));
    child.kill('SIGKILL');
    await exited;
    await until(() => right > 0, 5000);
    await new Promise((r) => setTimeout(r, 100));
    expect(wrong).toBe(0);
    expect(right).toBe(1);
    stop();
  });

  it('says nothing about a process no longer watched', async () => {
    if (!path || !ready()) return;
    const { child, ref, exited } = await nodeChild();
    let notices = 0;
    const stop = dw!.watch(ref, () => notices++);
    await new Promise((r) => setTimeout(r, 50));
    stop();
    await new Promise((r) => setTimeout(r, 50));
    child.kill('SIGKILL');
    await exited;
    await new Promise((r) => setTimeout(r, 300));
    expect(notices).toBe(0);
  });

  it('says it is unavailable, and why, outside the initial pid namespace', () => {
    if (!path) return;
    const unshare = spawnSync('sh', ['-c', 'command -v unshare'], { encoding: 'utf8' }).stdout.trim();
    if (!unshare || process.getuid?.() !== 0) {
      console.log('skipping: needs root and unshare(1)');
      return;
    }
    // The shell is pid 1 of the new namespace and the helper's parent (no exec: $$ must stay its parent).
    const r = spawnSync(unshare, ['--pid', '--fork', '--mount-proc', 'sh', '-c', `${path} $$ </dev/null; :`], { encoding: 'utf8', timeout: 10_000 });
    expect(r.stdout).toMatch(/^unavailable self test: no taskstats message with our pid numbers/);
  });

  it('a helper that dies leaves watching a no-op, never a false notice', async () => {
    if (!path || !ready()) return;
    const own = DeathWatch.start(path);
    expect((await own.status).available).toBe(true);
    const helper = (own as unknown as { child: ChildProcess }).child;
    const gone = new Promise((r) => helper.once('exit', r));
    helper.kill('SIGKILL');
    await gone;
    expect(own.available).toBe(false);
    const { child, ref, exited } = await nodeChild();
    let notices = 0;
    own.watch(ref, () => notices++);
    child.kill('SIGKILL');
    await exited;
    await new Promise((r) => setTimeout(r, 100));
    expect(notices).toBe(0);
    own.close();
  });
});

describe('a hostile tool and the helper', () => {
  it('a root tool in the default sandbox can neither see the helper nor signal it', async () => {
    if (!path || !ready() || !host.isRoot || host.layout === 'none' || !builtLauncherPath() || !host.namespaces.pid) return;
    const helper = (dw as unknown as { child: ChildProcess }).child.pid!;
    // Everything it can see, and a SIGKILL at the helper's host pid (which names nothing, or something of its own, in its namespace).
    const r = await runSandboxed('sh', ['-c', `cat /proc/[0-9]*/comm; kill -9 ${helper} 2>/dev/null; echo kill=$?`], { cgroupBase: base, allowRoot: true, killGrace: 100 });
    expect(r.stdout).toContain('sh'); // it does see its own namespace (its init and itself)
    expect(r.stdout).not.toContain('captrap-deathwa');
    expect(r.stdout).not.toContain('node');
    expect(r.stdout).toMatch(/kill=1/);
    expect(dw!.available).toBe(true);
    expect(readStat(helper)?.state).not.toBe('Z');
  });
});

describe('commandOfLeader', () => {
  it('finds the command under a launcher leader\'s pid namespace; without one, nothing (the leader is the command)', async () => {
    if (!host.isRoot || host.layout === 'none' || !builtLauncherPath() || !host.namespaces.pid) {
      if (process.env.CI) throw new Error('CI runs as root with cgroups, pid namespaces and the built launcher');
      console.log('skipping: needs root, cgroups, pid namespaces and the built launcher');
      return;
    }
    const confined = runSandboxed('sh', ['-c', 'echo up; exec sleep 30'], { cgroupBase: base, allowRoot: true, killGrace: 100 });
    const plain = runSandboxed('sh', ['-c', 'echo up; exec sleep 30'], { cgroupBase: base, confine: false, allowRoot: true, killGrace: 100 });
    try {
      // Both listeners at once (the sandbox's own capture reads the stream too), and never
      // longer than the sandbox lives.
      await Promise.all(
        [confined, plain].map(
          (sb) =>
            new Promise<void>((resolve, reject) => {
              sb.stdout!.once('data', () => resolve());
              sb.then((r) => reject(new Error(`the sandbox ended before it said up: ${JSON.stringify(r).slice(0, 400)}`)), reject);
            }),
        ),
      );
      const cmd = commandOfLeader(confined.ref!);
      expect(cmd).toBeDefined();
      expect(cmd!.pid).not.toBe(confined.pid);
      // "up" is written before the exec: on a busy machine the command may still be sh. An exec
      // keeps the pid and the start time, so the process found is the one that becomes sleep.
      await until(() => readStat(cmd!.pid)?.comm === 'sleep', 5000).catch(() => undefined);
      expect(readStat(cmd!.pid)).toMatchObject({ comm: 'sleep', startTime: cmd!.startTime });
      expect(commandOfLeader(plain.ref!)).toBeUndefined();
      // A ref that no longer names the leader (another start time) finds nothing.
      expect(commandOfLeader({ pid: confined.pid, startTime: confined.ref!.startTime + 1 })).toBeUndefined();
    } finally {
      confined.kill('killed');
      plain.kill('killed');
      await Promise.allSettled([confined, plain]);
    }
  });
});

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}
