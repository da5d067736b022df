// Isolation bench: spawn-to-exit latency of /bin/true for raw child_process.spawn (baseline),
// execa, a captrap sandbox (memory+pids limits, parent-death signal, tree-kill armed) through
// each launcher (the setpriv + sh fallback and the compiled captrap-launch), unconfined and
// confined (the default: six namespaces, a view, uid 65534, no capabilities), and bubblewrap
// alone (--unshare-pid, and with the same confinement as captrap's default); and the time a
// sandbox holding a 100-process tree (half of it setsid'd) takes from kill() until its cgroup is
// empty.
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { execa } from 'execa';
import { removeCgroupBase, waitUnifiedEmpty } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { builtLauncherPath } from '../../src/isolation/launcher/launcher.js';
import { runSandboxed } from '../../src/isolation/sandbox.js';
import { latencyRow, percentile, sampleAsync, type BenchRow, type BenchSection } from './harness.js';

const RUNS = 300;
const TREE_RUNS = 40;

function rawSpawn(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    c.stdout.resume();
    c.stderr.resume();
    c.once('error', reject);
    c.once('close', () => resolve());
  });
}

export async function bench(): Promise<BenchSection> {
  const host = probeHost();
  const base = `captrap-bench-${process.pid}`;
  const rows: BenchRow[] = [];
  const raw = await sampleAsync(() => rawSpawn('/bin/true', []), RUNS);
  const rawP50 = percentile(raw, 50);
  rows.push(latencyRow('spawn /bin/true: child_process.spawn', raw, { note: 'baseline; stdout/stderr piped like the others' }));
  const ex = await sampleAsync(() => execa('/bin/true'), RUNS);
  rows.push(latencyRow('spawn /bin/true: execa', ex, { baseline: 'child_process.spawn', ratio: percentile(ex, 50) / rawP50 }));

  let bwrapP50: number | undefined;
  if (host.tools.bwrap) {
    const bw = await sampleAsync(() => rawSpawn(host.tools.bwrap!, ['--unshare-pid', '--die-with-parent', '--ro-bind', '/', '/', '--dev', '/dev', '--proc', '/proc', '/bin/true']), RUNS);
    bwrapP50 = percentile(bw, 50);
    rows.push(latencyRow('spawn /bin/true: bwrap --unshare-pid --die-with-parent', bw, { baseline: 'child_process.spawn', ratio: bwrapP50 / rawP50 }));
  }
  let bwrapConfinedP50: number | undefined;
  if (host.tools.bwrap) {
    // What captrap's default confinement asks of bwrap: every namespace, the system read-only, a
    // fresh /proc, a minimal /dev, a private /tmp, uid 65534, no capabilities.
    const view = ['--ro-bind', '/usr', '/usr', '--ro-bind', '/etc', '/etc', '--symlink', 'usr/bin', '/bin', '--symlink', 'usr/sbin', '/sbin', '--symlink', 'usr/lib', '/lib', '--symlink', 'usr/lib64', '/lib64'];
    const args = ['--unshare-all', '--unshare-user', '--uid', '65534', '--gid', '65534', '--die-with-parent', '--new-session', '--cap-drop', 'ALL', ...view, '--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', '/bin/true'];
    const bw = await sampleAsync(() => rawSpawn(host.tools.bwrap!, args), RUNS);
    bwrapConfinedP50 = percentile(bw, 50);
    rows.push(latencyRow('spawn /bin/true: bwrap, same confinement as captrap (no cgroup)', bw, { baseline: 'child_process.spawn', ratio: bwrapConfinedP50 / rawP50, note: 'all namespaces (user ns for the uid), system read-only, /proc, /dev, /tmp, no capabilities' }));
  }

  if (host.tools.setpriv && host.tools.sh) {
    // The launch chain without any cgroup work: what the parent-death signal + join trampoline cost.
    const chain = await sampleAsync(() => rawSpawn(host.tools.setpriv!, ['--pdeathsig', 'KILL', '--no-new-privs', '--', host.tools.sh!, '-c', 'exec "$@"', 'x', '/bin/true']), RUNS);
    rows.push(latencyRow('spawn /bin/true: setpriv -> sh -> true, no cgroup', chain, { baseline: 'child_process.spawn', ratio: percentile(chain, 50) / rawP50, note: "captrap's fallback exec chain alone (2 extra execs), for attribution" }));
  }
  const launcher = builtLauncherPath();
  if (launcher) {
    const one = await sampleAsync(() => rawSpawn(launcher, ['--ppid', String(process.pid), '--no-new-privs', '--', '/bin/true']), RUNS);
    rows.push(latencyRow('spawn /bin/true: captrap-launch -> true, no cgroup', one, { baseline: 'child_process.spawn', ratio: percentile(one, 50) / rawP50, note: 'the compiled launcher alone (1 extra exec), for attribution' }));
  }
  if (host.layout === 'none') {
    rows.push({ name: 'spawn /bin/true: captrap sandbox', note: 'skipped: no cgroup on this host' });
    return { section: 'isolation', rows };
  }
  const target = `p50 <= 1.5x spawn${bwrapP50 !== undefined ? ' and < bwrap' : ''}`;
  const backendNote = `backend ${host.layout === 'hybrid' ? 'cgroup-v1 (hybrid: memory+pids v1 + cgroup2 tracking = 3 mkdir/rmdir)' : 'auto'}`;
  // The target is judged on the launcher sandboxes actually use by default (the C one when
  // built); the other row is there to show what the fallback costs.
  const sandboxRow = async (name: string, launcherPref: 'c' | 'sh', chainNote: string, judged: boolean, confine = false): Promise<BenchRow> => {
    const saved = process.env.CAPTRAP_LAUNCHER;
    process.env.CAPTRAP_LAUNCHER = launcherPref;
    try {
      const sb = await sampleAsync(async () => {
        const r = await runSandboxed('/bin/true', [], { memory: '64M', pids: 64, cgroupBase: base, ...(confine ? {} : { confine: false, allowRoot: true }) });
        if (r.reason.kind !== 'exited' || !r.cleanedUp) throw new Error(`sandbox ended ${JSON.stringify(r.reason)}`);
      }, RUNS);
      const sbP50 = percentile(sb, 50);
      return latencyRow(name, sb, {
        baseline: 'child_process.spawn',
        ratio: sbP50 / rawP50,
        ...(judged ? { target, pass: sbP50 <= 1.5 * rawP50 && (bwrapP50 === undefined || sbP50 < bwrapP50) } : {}),
        note: `${backendNote}; ${chainNote}; p50 vs bwrap ${bwrapP50 !== undefined ? (sbP50 / bwrapP50).toFixed(2) + 'x' : 'n/a'}`,
      });
    } finally {
      if (saved === undefined) delete process.env.CAPTRAP_LAUNCHER;
      else process.env.CAPTRAP_LAUNCHER = saved;
    }
  };
  if (host.tools.setpriv) {
    rows.push(await sandboxRow('spawn /bin/true: captrap sandbox (memory+pids, pdeathsig, tree-kill)', 'sh', `fallback chain setpriv -> sh trampoline -> command = 2 extra execs${launcher ? ' (CAPTRAP_LAUNCHER=sh; not judged: the C launcher is the default here)' : ' (the default here: no C launcher built)'}`, !launcher));
  }
  if (launcher) {
    rows.push(await sandboxRow('spawn /bin/true: captrap sandbox (C launcher), unconfined', 'c', 'chain captrap-launch -> command = 1 extra exec; confine: false', true));
    const confined = await sandboxRow('spawn /bin/true: captrap sandbox confined (the default)', 'c', 'launcher forks a pid-1 init and the command: 6 namespaces, view, uid 65534, no capabilities', false, true);
    confined.target = `p50 <= 2x spawn${bwrapConfinedP50 !== undefined ? ' and < bwrap with the same confinement' : ''}`;
    confined.pass = confined.p50Us! <= 2 * rawP50 && (bwrapConfinedP50 === undefined || confined.p50Us! < bwrapConfinedP50);
    confined.note += `; p50 vs bwrap same confinement ${bwrapConfinedP50 !== undefined ? (confined.p50Us! / bwrapConfinedP50).toFixed(2) + 'x' : 'n/a'}`;
    rows.push(confined);
  } else {
    rows.push({ name: 'spawn /bin/true: captrap sandbox (C launcher)', note: "skipped: build/captrap-launch is not built (run 'npm run build' with a C compiler)" });
  }

  // Kill-tree latency: kill() (killGrace 0) until the cgroup reports populated 0.
  const killUs: number[] = [];
  const resolvedUs: number[] = [];
  const tree = 'for i in $(seq 1 50); do sleep 300 & done; for i in $(seq 1 49); do setsid sleep 300 & done; echo ready; wait';
  for (let i = 0; i < TREE_RUNS; i++) {
    // The default sandbox (confined, uid 65534): a root, unconfined one also scans /proc for
    // descendants that left the cgroup before killing (about 10 ms for this tree).
    const s = runSandboxed('sh', ['-c', tree], { cgroupBase: base, killGrace: 0, pids: 512 });
    await new Promise<void>((r) => s.stdout!.on('data', (c: Buffer) => c.toString().includes('ready') && r()));
    const dir = host.unifiedRoot && host.cgroupKill ? `${host.unifiedRoot}/${base}/${s.cgroupName}` : undefined;
    while (dir && (await import('node:fs')).readFileSync(`${dir}/cgroup.procs`, 'utf8').trim().split('\n').length < 100) await new Promise((r) => setTimeout(r, 2));
    const t0 = performance.now();
    s.kill();
    if (dir) {
      await waitUnifiedEmpty(dir, 5000);
      killUs.push((performance.now() - t0) * 1000);
    }
    await s;
    resolvedUs.push((performance.now() - t0) * 1000);
  }
  killUs.sort((a, b) => a - b);
  resolvedUs.sort((a, b) => a - b);
  if (killUs.length > 0) {
    rows.push(latencyRow('kill 100-process tree (49 setsid) until cgroup empty', killUs, { target: 'p99 <= 20 ms', pass: percentile(killUs, 99) <= 20_000, note: `${TREE_RUNS} runs; cgroup.kill, watched via cgroup.events` }));
  }
  rows.push(latencyRow('kill 100-process tree until result resolved (cgroups removed)', resolvedUs, { note: 'includes pipe close and rmdir of every hierarchy' }));
  removeCgroupBase(host, base);
  return { section: 'isolation', rows };
}
