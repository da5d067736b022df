// `npm run bench [-- section...]`: runs every benchmark section (or the named ones), prints
// one table per section and writes bench-results.json. Sections live in scripts/bench/<name>.ts
// and export `bench(): Promise<BenchSection>`.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import type { BenchRow, BenchSection } from './bench/harness.js';

/** Environment that changes the cost of every Node start (see main). */
const STARTUP_ENV = ['NODE_EXTRA_CA_CERTS'];

const SECTIONS: Record<string, () => Promise<{ bench(): Promise<BenchSection> }>> = {
  kernel: () => import('./bench/kernel.js'),
  isolation: () => import('./bench/isolation.js'),
  audit: () => import('./bench/audit.js'),
  sidecar: () => import('./bench/sidecar.js'),
  egress: () => import('./bench/egress.js'),
  tokens: () => import('./bench/tokens.js'),
  mcp: () => import('./bench/mcp.js'),
  revocations: () => import('./bench/revocations.js'),
  cli: () => import('./bench/cli.js'),
};

function fmt(n: number | undefined, digits = 1): string {
  if (n === undefined || Number.isNaN(n)) return '';
  if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (Math.abs(n) >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return n.toFixed(digits);
}

function printSection(s: BenchSection): void {
  const header = ['benchmark', 'ops/s', 'p50 µs', 'p99 µs', 'ratio', 'vs', 'target', 'ok'];
  const cells = s.rows.map((r: BenchRow) => [
    r.name,
    fmt(r.opsPerSec, 0),
    fmt(r.p50Us, 1),
    fmt(r.p99Us, 1),
    r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}x`,
    r.baseline ?? '',
    r.target ?? '',
    r.pass === undefined ? '' : r.pass ? 'yes' : 'NO',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((v, i) => (i === 0 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  ');
  console.log(`\n== ${s.section}`);
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const c of cells) console.log(line(c));
  for (const r of s.rows) if (r.note) console.log(`  * ${r.name}: ${r.note}`);
}

async function main(): Promise<void> {
  const wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'));
  const names = wanted.length > 0 ? wanted : Object.keys(SECTIONS);
  const unknown = names.filter((n) => !(n in SECTIONS));
  if (unknown.length > 0) {
    console.error(`bench: unknown section(s) ${unknown.join(', ')}; known: ${Object.keys(SECTIONS).join(', ')}`);
    process.exit(2);
  }
  // Node reads these at every start, before a line of ours runs: NODE_EXTRA_CA_CERTS (set on some
  // build machines, this one included) parses a CA bundle, about 80 ms here, which inflated
  // `node -e 0` and `captrap run` alike and hid captrap's own start cost in the ratios. Removed
  // here, so every section and every process it starts measures Node as a user runs it.
  const removedStartupEnv = STARTUP_ENV.filter((k) => process.env[k] !== undefined);
  for (const k of removedStartupEnv) delete process.env[k];
  // A section run alone writes its result where the parent asked and stops there.
  const childOut = process.env.CAPTRAP_BENCH_SECTION_OUT;
  if (childOut) {
    const section = await (await SECTIONS[names[0]!]!()).bench();
    printSection(section);
    writeFileSync(childOut, JSON.stringify(section));
    return;
  }
  console.log(`captrap bench — node ${process.version}, ${cpus().length} cpu(s) (${cpus()[0]?.model ?? '?'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB`);
  if (removedStartupEnv.length > 0) console.log(`(removed from the environment for every Node start measured: ${removedStartupEnv.join(', ')})`);
  // Each section runs in a fresh process: fork() and spawn cost grow with the parent's memory, so
  // a section measured after another one's buffers would compare its baselines unfairly.
  const results: BenchSection[] = [];
  const scratch = mkdtempSync(join(tmpdir(), 'captrap-bench-'));
  try {
    for (const name of names) {
      const out = join(scratch, `${name}.json`);
      const r = spawnSync(process.execPath, [...process.execArgv, process.argv[1]!, name], {
        stdio: 'inherit',
        env: { ...process.env, CAPTRAP_BENCH_SECTION_OUT: out, CAPTRAP_CLI_FROM_DIST: '1' },
      });
      if (r.status !== 0) throw new Error(`bench section ${name} failed (exit ${r.status ?? r.signal})`);
      results.push(JSON.parse(readFileSync(out, 'utf8')) as BenchSection);
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  writeFileSync(
    'bench-results.json',
    JSON.stringify({ at: new Date().toISOString(), node: process.version, cpus: cpus().length, sections: results }, null, 2) + '\n',
  );
  console.log('\nwrote bench-results.json');
  const failed = results.flatMap((s) => s.rows.filter((r) => r.pass === false).map((r) => `${s.section}: ${r.name}`));
  if (failed.length > 0) console.log(`targets missed: ${failed.join('; ')}`);
}

await main();
