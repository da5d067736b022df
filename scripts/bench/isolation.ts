// Isolation bench: spawn-to-exit latency of /bin/true, every variant measured side by side
// (interleaved in a fresh random order each round, see sampleInterleaved) against the floor,
// child_process.spawn of /bin/true, in two modes:
//   back-to-back  each launch starts as soon as the previous one ended;
//   sporadic      10-15 ms between launches, as agents' tool calls arrive. After an idle spell
//                 the first cgroup.procs write blocks for milliseconds in the kernel (an RCU
//                 wait during migration), a cost back-to-back blocks hide.
// Variants: a captrap sandbox confined (the default: six namespaces, a view, uid 65534, no
// capabilities) started cold and through a warm launcher (pool.ts), bwrap with the same
// confinement, and for attribution (back-to-back only) execa, bwrap --unshare-pid, the fallback
// chain, the compiled launcher alone and unconfined sandboxes. p50 and p99 are reported as
// ratios to the floor's p50 and p99 of the same run. Then the CLI start (`captrap run --
// /bin/true` against `node -e 0`) and the time a sandbox holding a 100-process tree (half of it
// setsid'd) takes from kill() until its cgroup is empty.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import { execa } from 'execa';
import { removeCgroupBase, waitUnifiedEmpty } from '../../src/isolation/cgroup.js';
import { probeHost, type HostInfo } from '../../src/isolation/host.js';
import { builtLauncherPath, builtProgramPath } from '../../src/isolation/launcher/launcher.js';
import { getSpawner } from '../../src/isolation/spawner.js';
import { configureWarmPool, drainWarmPool, runSandboxed, warmPoolStats, type RunOptions } from '../../src/isolation/sandbox.js';
import { latencyRow, percentile, sampleInterleaved, type BenchRow, type BenchSection, type Variant } from './harness.js';

const BACK_TO_BACK_ROUNDS = 200;
const SPORADIC_ROUNDS = 120;
const SPORADIC_GAP_MS = 10;
const CLI_ROUNDS = 20;
const TREE_RUNS = 40;
const FLOOR = 'floor: child_process.spawn /bin/true';
const CLI = fileURLToPath(new URL('../../dist/runner/captrap.cjs', import.meta.url));

function rawSpawn(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(env ? { env } : {}) });
    c.stdout.resume();
    c.stderr.resume();
    c.once('error', reject);
    c.once('close', () => resolve());
  });
}

function sandboxVariant(name: string, options: RunOptions, launcherPref?: 'sh'): Variant {
  return {
    name,
    run: async () => {
      const saved = process.env.CAPTRAP_LAUNCHER;
      // runSandboxed reads the preference synchronously, before its first await.
      if (launcherPref) process.env.CAPTRAP_LAUNCHER = launcherPref;
      let sb;
      try {
        sb = runSandboxed('/bin/true', [], options);
      } finally {
        if (saved === undefined) delete process.env.CAPTRAP_LAUNCHER;
        else process.env.CAPTRAP_LAUNCHER = saved;
      }
      const r = await sb;
      if (r.reason.kind !== 'exited' || r.reason.code !== 0 || !r.cleanedUp) throw new Error(`${name}: sandbox ended ${JSON.stringify(r.reason)}: ${r.stderr}`);
    },
  };
}

/** Rows for one mode: the floor, then each variant as ratios to it. */
function modeRows(mode: string, samples: Map<string, number[]>, judged: Record<string, { target: string; pass: (p50: number, p99: number) => boolean }>, notes: Record<string, string>): BenchRow[] {
  const floor = samples.get(FLOOR)!;
  const f50 = percentile(floor, 50);
  const f99 = percentile(floor, 99);
  const rows: BenchRow[] = [latencyRow(`[${mode}] ${FLOOR}`, floor, { note: `baseline; stdout/stderr piped like the others; ${floor.length} samples` })];
  for (const [name, s] of samples) {
    if (name === FLOOR) continue;
    const p50 = percentile(s, 50);
    const p99 = percentile(s, 99);
    const j = judged[name];
    rows.push(
      latencyRow(`[${mode}] ${name}`, s, {
        baseline: 'floor',
        ratio: p50 / f50,
        p99Ratio: p99 / f99,
        ...(j ? { target: j.target, pass: j.pass(p50, p99) } : {}),
        note: `p99 ${(p99 / f99).toFixed(2)}x the floor's p99${notes[name] ? `; ${notes[name]}` : ''}`,
      }),
    );
  }
  return rows;
}

export async function bench(): Promise<BenchSection> {
  const host = probeHost();
  const base = `captrap-bench-${process.pid}`;
  const rows: BenchRow[] = [];
  const launcher = builtLauncherPath();

  // What captrap's default confinement asks of bwrap: every namespace, the system read-only, a
  // fresh /proc, a minimal /dev, a private /tmp, uid 65534, no capabilities.
  const bwrapView = ['--ro-bind', '/usr', '/usr', '--ro-bind', '/etc', '/etc', '--symlink', 'usr/bin', '/bin', '--symlink', 'usr/sbin', '/sbin', '--symlink', 'usr/lib', '/lib', '--symlink', 'usr/lib64', '/lib64'];
  const bwrapConfined = ['--unshare-all', '--unshare-user', '--uid', '65534', '--gid', '65534', '--die-with-parent', '--new-session', '--cap-drop', 'ALL', ...bwrapView, '--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', '/bin/true'];
  const BWRAP = 'bwrap, same confinement as captrap (no cgroup)';
  const COLD = 'captrap sandbox confined, cold';
  const WARM = 'captrap sandbox confined, warm launcher';
  const limits = { memory: '64M', pids: 64, cgroupBase: base };

  const floor: Variant = { name: FLOOR, run: () => rawSpawn('/bin/true', []) };
  const main: Variant[] = [floor];
  const skipped: string[] = [];
  if (host.tools.bwrap) main.push({ name: BWRAP, run: () => rawSpawn(host.tools.bwrap!, bwrapConfined) });
  else skipped.push(`${BWRAP}: skipped: bwrap is not installed`);
  const sandboxes = host.layout !== 'none' && launcher !== undefined;
  if (sandboxes) {
    main.push(sandboxVariant(COLD, { ...limits, warm: false }), sandboxVariant(WARM, { ...limits, warm: true }));
  } else {
    skipped.push(`captrap sandbox rows: skipped: ${host.layout === 'none' ? 'no cgroup on this host' : "build/captrap-launch is not built (run 'npm run build' with a C compiler)"}`);
  }
  const attribution: Variant[] = [{ name: 'execa /bin/true', run: () => execa('/bin/true') }];
  if (host.tools.bwrap) {
    attribution.push({ name: 'bwrap --unshare-pid --die-with-parent', run: () => rawSpawn(host.tools.bwrap!, ['--unshare-pid', '--die-with-parent', '--ro-bind', '/', '/', '--dev', '/dev', '--proc', '/proc', '/bin/true']) });
  }
  if (host.tools.setpriv && host.tools.sh) {
    attribution.push({ name: 'setpriv -> sh -> true, no cgroup', run: () => rawSpawn(host.tools.setpriv!, ['--pdeathsig', 'KILL', '--no-new-privs', '--', host.tools.sh!, '-c', 'exec "$@"', 'x', '/bin/true']) });
  }
  if (launcher) attribution.push({ name: 'captrap-launch -> true, no cgroup', run: () => rawSpawn(launcher, ['--ppid', String(process.pid), '--no-new-privs', '--', '/bin/true']) });
  if (sandboxes) {
    const unconfined = { ...limits, confine: false, allowRoot: true };
    attribution.push(sandboxVariant('captrap sandbox unconfined, cold', { ...unconfined, warm: false }), sandboxVariant('captrap sandbox unconfined, warm launcher', { ...unconfined, warm: true }));
    if (host.tools.setpriv) attribution.push(sandboxVariant('captrap sandbox unconfined, setpriv+sh fallback chain', { ...unconfined, warm: false }, 'sh'));
  }

  const backendNote = `backend ${host.layout === 'hybrid' ? 'cgroup-v1 (hybrid: memory+pids v1 + cgroup2 tracking = 3 cgroups)' : 'auto'}`;
  const notes: Record<string, string> = {
    [BWRAP]: 'all namespaces (user ns for the uid), system read-only, /proc, /dev, /tmp, no capabilities',
    [COLD]: `${backendNote}; memory+pids limits, pdeathsig, tree-kill; 6 namespaces, view, uid 65534, no capabilities`,
    [WARM]: 'the same sandbox through a launcher that already sits in its cgroup and namespaces (pool of up to 2)',
  };
  const judge = (bw: number[] | undefined) => ({
    [WARM]: {
      target: `p50 <= 1.0x, p99 <= 2x floor${bw ? ', p50 < bwrap' : ''}`,
      pass: (p50: number, p99: number) => p50 <= 1.0 * percentile(floorOf(), 50) && p99 <= 2 * percentile(floorOf(), 99) && (!bw || p50 < percentile(bw, 50)),
    },
  });
  let current: Map<string, number[]> = new Map();
  const floorOf = () => current.get(FLOOR)!;

  configureWarmPool({ maxSize: 2 });
  try {
    for (const [mode, variants, rounds, gapMs] of [
      ['back-to-back', [...main, ...attribution], BACK_TO_BACK_ROUNDS, 0],
      ['sporadic', main, SPORADIC_ROUNDS, SPORADIC_GAP_MS],
    ] as const) {
      current = await sampleInterleaved(variants, rounds, { gapMs });
      rows.push(...modeRows(mode, current, judge(current.get(BWRAP)), notes));
      const bw = current.get(BWRAP);
      const warm = current.get(WARM);
      const cold = current.get(COLD);
      if (bw && warm && cold) {
        const last = rows.find((r) => r.name === `[${mode}] ${WARM}`)!;
        last.note += `; p50 vs bwrap ${(percentile(warm, 50) / percentile(bw, 50)).toFixed(2)}x, vs cold ${(percentile(warm, 50) / percentile(cold, 50)).toFixed(2)}x`;
        const c = rows.find((r) => r.name === `[${mode}] ${COLD}`)!;
        c.note += `; p50 vs bwrap ${(percentile(cold, 50) / percentile(bw, 50)).toFixed(2)}x`;
      }
    }
    const stats = warmPoolStats();
    rows.push({ name: 'warm pool hand-overs', note: `${stats.hits} warm, ${stats.misses} found none ready and started cold (over both modes, warm variants only)` });
  } finally {
    await drainWarmPool();
    configureWarmPool({ maxSize: 0 });
  }
  for (const s of skipped) rows.push({ name: s.split(':')[0]!, note: s.slice(s.indexOf(':') + 2) });

  // CLI start: a whole `captrap run` against a bare node start, side by side.
  if (existsSync(CLI) && sandboxes) {
    const env = { ...process.env, CAPTRAP_LOG_LEVEL: 'warn' };
    const cli = await sampleInterleaved(
      [
        { name: 'node -e 0', run: () => rawSpawn(process.execPath, ['-e', '0'], env) },
        { name: 'captrap run -- /bin/true', run: () => rawSpawn(process.execPath, [CLI, 'run', '--memory', '64M', '--pids', '32', '--cgroup-base', base, '--', '/bin/true'], env) },
      ],
      CLI_ROUNDS,
      { warmupRounds: 2 },
    );
    const node = cli.get('node -e 0')!;
    const run = cli.get('captrap run -- /bin/true')!;
    rows.push(latencyRow('cli start: node -e 0', node, { note: `baseline; ${CLI_ROUNDS} runs` }));
    rows.push(
      latencyRow('cli start: captrap run -- /bin/true', run, {
        baseline: 'node -e 0',
        ratio: percentile(run, 50) / percentile(node, 50),
        p99Ratio: percentile(run, 99) / percentile(node, 99),
        target: 'p50 <= 1.3x node -e 0',
        pass: percentile(run, 50) <= 1.3 * percentile(node, 50),
        note: 'dist/runner/captrap.cjs (the run bundle): stale cleanup, probe, one confined sandbox, exit',
      }),
    );
  } else {
    rows.push({ name: 'cli start', note: `skipped: ${existsSync(CLI) ? 'no sandbox on this host' : 'dist/runner/captrap.cjs is not built (npm run build)'}` });
  }

  rows.push(...(await processStartRows()));
  if (host.layout === 'none') return { section: 'isolation', rows };
  rows.push(...(await killTreeRows(host, base)));
  removeCgroupBase(host, base);
  return { section: 'isolation', rows };
}

const TREE = 'for i in $(seq 1 50); do sleep 300 & done; for i in $(seq 1 49); do setsid sleep 300 & done; echo ready; wait';
const TREE_SANDBOX = 'kill 100-process tree (49 setsid) until cgroup empty';
const TREE_FLOOR = 'kernel floor: cgroup.kill of the same tree in a bare cgroup2 until empty';
const TREE_FLOOR_PIDNS = 'kernel floor: the same, tree in a pid namespace of its own (unshare -pf)';

function waitReady(c: { stdout: NodeJS.ReadableStream | null }): Promise<void> {
  return new Promise<void>((r) => c.stdout!.on('data', (b: Buffer) => b.toString().includes('ready') && r()));
}

async function waitProcs(dir: string, n: number): Promise<void> {
  while (readFileSync(`${dir}/cgroup.procs`, 'utf8').trim().split('\n').length < n) await new Promise((r) => setTimeout(r, 2));
}

/**
 * The same tree killed three ways, interleaved: through a sandbox (kill(), killGrace 0, until its
 * cgroup reports populated 0), and, as the kernel's own floor, by a bare cgroup.kill of a cgroup2
 * directory holding it, without and with a pid namespace (the sandbox has one: its teardown is
 * kernel work captrap cannot skip). Most of the time is 100 process exits on two cores.
 */
async function killTreeRows(host: HostInfo, base: string): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const killUs: number[] = [];
  const resolvedUs: number[] = [];
  const floorUs: number[] = [];
  const floorNsUs: number[] = [];
  const unified = host.unifiedRoot && host.cgroupKill ? `${host.unifiedRoot}/${base}` : undefined;
  const bare = async (i: number, pidns: boolean): Promise<number> => {
    const dir = `${unified}/tree-floor-${process.pid}-${i}-${pidns ? 'ns' : 'plain'}`;
    mkdirSync(dir);
    try {
      const inner = pidns ? `exec ${host.tools.unshare} -pf --mount-proc=/proc sh -c '${TREE}'` : `exec sh -c '${TREE}'`;
      const c = spawn('sh', ['-c', `echo $$ > ${dir}/cgroup.procs && ${inner}`], { stdio: ['ignore', 'pipe', 'inherit'] });
      const exited = new Promise((r) => c.once('close', r));
      await waitReady(c);
      await waitProcs(dir, pidns ? 101 : 100);
      const t0 = performance.now();
      writeFileSync(`${dir}/cgroup.kill`, '1');
      await waitUnifiedEmpty(dir, 5000);
      const us = (performance.now() - t0) * 1000;
      await exited;
      return us;
    } finally {
      rmdirSync(dir);
    }
  };
  for (let i = 0; i < TREE_RUNS; i++) {
    // The default sandbox (confined, uid 65534): a root, unconfined one also scans /proc for
    // descendants that left the cgroup before killing (about 10 ms for this tree).
    const s = runSandboxed('sh', ['-c', TREE], { cgroupBase: base, killGrace: 0, pids: 512 });
    await waitReady(s);
    const dir = unified ? `${unified}/${s.cgroupName}` : undefined;
    if (dir) await waitProcs(dir, 100);
    const t0 = performance.now();
    s.kill();
    if (dir) {
      await waitUnifiedEmpty(dir, 5000);
      killUs.push((performance.now() - t0) * 1000);
    }
    await s;
    resolvedUs.push((performance.now() - t0) * 1000);
    if (unified) {
      floorUs.push(await bare(i, false));
      if (host.tools.unshare) floorNsUs.push(await bare(i, true));
    }
  }
  for (const xs of [killUs, resolvedUs, floorUs, floorNsUs]) xs.sort((a, b) => a - b);
  if (floorUs.length > 0) rows.push(latencyRow(TREE_FLOOR, floorUs, { note: `baseline; ${TREE_RUNS} runs, interleaved with the sandbox's` }));
  if (floorNsUs.length > 0) rows.push(latencyRow(TREE_FLOOR_PIDNS, floorNsUs, { baseline: TREE_FLOOR, ratio: percentile(floorNsUs, 50) / percentile(floorUs, 50), p99Ratio: percentile(floorNsUs, 99) / percentile(floorUs, 99), note: 'attribution' }));
  if (killUs.length > 0) {
    const vs = floorNsUs.length > 0 ? floorNsUs : floorUs;
    rows.push(
      latencyRow(TREE_SANDBOX, killUs, {
        ...(vs.length > 0 ? { baseline: vs === floorNsUs ? TREE_FLOOR_PIDNS : TREE_FLOOR, ratio: percentile(killUs, 50) / percentile(vs, 50), p99Ratio: percentile(killUs, 99) / percentile(vs, 99) } : {}),
        target: 'p99 <= 20 ms',
        pass: percentile(killUs, 99) <= 20_000,
        note: `${TREE_RUNS} runs; cgroup.kill, watched via cgroup.events`,
      }),
    );
  }
  rows.push(latencyRow('kill 100-process tree until result resolved (cgroups removed)', resolvedUs, { note: 'includes pipe close and rmdir of every hierarchy' }));
  return rows;
}

const START_ROUNDS = 60;
const BALLAST_MB = 256;

/**
 * What starting one process costs this process's event loop (its active time from the start to
 * the exit, per start): a spawn from here, which forks this whole process and copies its page
 * tables, against a request to captrap-spawn (how the warm pool refills: spawner.ts), which
 * forks itself. Then both again with BALLAST_MB more of this process resident, as a sidecar holding
 * many agents' state would be. Interleaved in random order per round.
 */
async function processStartRows(): Promise<BenchRow[]> {
  const helper = builtProgramPath('captrap-spawn') ? getSpawner() : undefined;
  if (!helper) return [{ name: 'process start on the event loop', note: 'skipped: build/captrap-spawn is not built (npm run build)' }];
  const activeUs = async (start: () => Promise<void>): Promise<number> => {
    const e0: EventLoopUtilization = performance.eventLoopUtilization();
    await start();
    return performance.eventLoopUtilization(e0).active * 1000;
  };
  const viaNode = () =>
    new Promise<void>((resolve) => {
      const c = spawn('/bin/true', [], { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
      c.once('close', () => resolve());
    });
  const viaHelper = () =>
    new Promise<void>((resolve) => {
      const p = helper.spawn('/bin/true', ['/bin/true'])!;
      p.once('spawn', () => {
        for (const s of [p.stdout, p.stderr, p.ready]) s?.resume();
        p.request?.end();
      });
      p.once('exit', () => resolve());
    });
  const measure = async (label: string): Promise<BenchRow[]> => {
    const node: number[] = [];
    const spawner: number[] = [];
    for (let i = 0; i < 5; i++) {
      await viaNode();
      await viaHelper();
    }
    for (let i = 0; i < START_ROUNDS; i++) {
      if (Math.random() < 0.5) {
        node.push(await activeUs(viaNode));
        spawner.push(await activeUs(viaHelper));
      } else {
        spawner.push(await activeUs(viaHelper));
        node.push(await activeUs(viaNode));
      }
    }
    node.sort((a, b) => a - b);
    spawner.sort((a, b) => a - b);
    const rss = Math.round(process.memoryUsage().rss / 2 ** 20);
    const baseName = `process start, event-loop time${label}: child_process.spawn /bin/true`;
    return [
      latencyRow(baseName, node, { note: `baseline; ${START_ROUNDS} starts, this process ${rss} MB resident; stdio as a warm launcher's` }),
      latencyRow(`process start, event-loop time${label}: captrap-spawn /bin/true`, spawner, {
        baseline: baseName,
        ratio: percentile(spawner, 50) / percentile(node, 50),
        p99Ratio: percentile(spawner, 99) / percentile(node, 99),
        note: 'request, reply, four opens of its pipes through /proc, exit record: how the warm pool refills',
      }),
    ];
  };
  const rows = await measure('');
  let ballast: Buffer[] | undefined = Array.from({ length: BALLAST_MB }, () => Buffer.alloc(2 ** 20, 1));
  try {
    rows.push(...(await measure(`, +${BALLAST_MB} MB`)));
  } finally {
    ballast.length = 0;
    ballast = undefined;
  }
  return rows;
}
