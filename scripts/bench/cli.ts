// CLI start bench: a whole `captrap run --memory 64M --pids 32 -- /bin/true` (the built `captrap`
// executable, dist/runner/captrap.cjs, default confinement) against `node -e 0`, interleaved in a
// fresh random order each round so the machine's load hits every variant alike, as p50 (and p99)
// ratios to the baseline's. For attribution, the same run with a start-up shortcut turned off:
//   ES modules          CAPTRAP_CLI_BUNDLE=0: the ES module dispatcher (cli.js), then run.js and
//                       its ~18 modules through Node's ES module loader, instead of the one-file
//                       CommonJS bundle (scripts/build-cli-bundle.mjs)
//   ES module entry     node dist/runner/cli.js run: the bundle is not used from there
//   namespace probe     CAPTRAP_NS_CACHE_DIR='': the unshare(1) probe on every run instead of
//                       the answer remembered for this boot (src/isolation/host.ts)
// and `captrap run --help` (the start alone: node, the executable, the bundle; no sandbox).
// CAPTRAP_BENCH_CLI=/path/to/dist/runner/captrap.cjs measures another build.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { builtLauncherPath } from '../../src/isolation/launcher/launcher.js';
import { latencyRow, percentile, sampleInterleaved, type BenchRow, type BenchSection } from './harness.js';

const ROUNDS = 40;
const CLI = process.env.CAPTRAP_BENCH_CLI ?? fileURLToPath(new URL('../../dist/runner/captrap.cjs', import.meta.url));
const ESM_CLI = join(dirname(CLI), 'cli.js');
const NODE = 'node -e 0';
const RUN = 'captrap run --memory 64M --pids 32 -- /bin/true';

function runToEnd(argv: string[], env: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let err = '';
    c.stdout.resume();
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.once('error', reject);
    c.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`${argv.join(' ')}: exit ${code}: ${err}`))));
  });
}

export async function bench(): Promise<BenchSection> {
  const host = probeHost();
  if (!existsSync(CLI)) return { section: 'cli', rows: [{ name: 'cli start', note: `skipped: ${CLI} is not built (npm run build)` }] };
  if (host.layout === 'none' || !builtLauncherPath()) return { section: 'cli', rows: [{ name: 'cli start', note: 'skipped: no cgroup or no built launcher on this host' }] };
  const base = `captrap-bench-cli-${process.pid}`;
  const env = { ...process.env, CAPTRAP_LOG_LEVEL: 'warn' };
  const runArgv = [CLI, 'run', '--memory', '64M', '--pids', '32', '--cgroup-base', base, '--', '/bin/true'];
  const variants = [
    { name: NODE, run: () => runToEnd(['-e', '0'], env) },
    { name: RUN, run: () => runToEnd(runArgv, env) },
    { name: `${RUN}, ES modules (CAPTRAP_CLI_BUNDLE=0)`, run: () => runToEnd(runArgv, { ...env, CAPTRAP_CLI_BUNDLE: '0' }) },
    { name: `${RUN}, ES module entry (node dist/runner/cli.js)`, run: () => runToEnd([ESM_CLI, ...runArgv.slice(1)], env) },
    { name: `${RUN}, namespace probe every run (CAPTRAP_NS_CACHE_DIR='')`, run: () => runToEnd(runArgv, { ...env, CAPTRAP_NS_CACHE_DIR: '' }) },
    { name: 'captrap run --help (start only, no sandbox)', run: () => runToEnd([CLI, 'run', '--help'], env) },
  ];
  let samples: Map<string, number[]>;
  try {
    samples = await sampleInterleaved(variants, ROUNDS, { warmupRounds: 3 });
  } finally {
    removeCgroupBase(host, base);
  }
  const node = samples.get(NODE)!;
  const rows: BenchRow[] = [latencyRow(NODE, node, { note: `baseline; ${ROUNDS} rounds, interleaved` })];
  for (const [name, s] of samples) {
    if (name === NODE) continue;
    const judged = name === RUN;
    rows.push(
      latencyRow(name, s, {
        baseline: NODE,
        ratio: percentile(s, 50) / percentile(node, 50),
        p99Ratio: percentile(s, 99) / percentile(node, 99),
        ...(judged ? { target: 'p50 <= 1.3x node -e 0', pass: percentile(s, 50) <= 1.3 * percentile(node, 50) } : {}),
        note: `p99 ${(percentile(s, 99) / percentile(node, 99)).toFixed(2)}x the baseline's p99`,
      }),
    );
  }
  return { section: 'cli', rows };
}
