// Shared pieces of `npm run bench`: timing loops, percentiles, and the row format every
// section returns. Figures are always reported next to a baseline measured in the same run.
import { performance } from 'node:perf_hooks';

export interface BenchRow {
  /** What was measured, e.g. "validateCapability warm". */
  name: string;
  /** Operations per second (throughput rows). */
  opsPerSec?: number;
  /** Latency percentiles in microseconds (latency rows). */
  p50Us?: number;
  p99Us?: number;
  /** Name of the baseline row in the same section and this row's ratio to it (this / baseline, by p50 or ops/s as stated). */
  baseline?: string;
  ratio?: number;
  /** The target from the issue, as text, and whether this run met it (undefined: no target). */
  target?: string;
  pass?: boolean;
  note?: string;
}

export interface BenchSection {
  section: string;
  rows: BenchRow[];
}

export function percentile(sortedAsc: readonly number[], p: number): number {
  if (sortedAsc.length === 0) return NaN;
  const idx = Math.min(sortedAsc.length - 1, Math.max(0, Math.ceil((p / 100) * sortedAsc.length) - 1));
  return sortedAsc[idx]!;
}

/** Runs `fn` `iterations` times after `warmup` runs; returns per-call latencies in µs, sorted. */
export function sampleSync(fn: () => unknown, iterations: number, warmup = Math.min(1000, iterations)): number[] {
  for (let i = 0; i < warmup; i++) fn();
  const out = new Array<number>(iterations);
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now();
    fn();
    out[i] = (performance.now() - t0) * 1000;
  }
  return out.sort((a, b) => a - b);
}

export async function sampleAsync(fn: () => Promise<unknown>, iterations: number, warmup = 5): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await fn();
  const out = new Array<number>(iterations);
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now();
    await fn();
    out[i] = (performance.now() - t0) * 1000;
  }
  return out.sort((a, b) => a - b);
}

/** Throughput of a synchronous call: runs batches until `ms` have passed. */
export function throughputSync(fn: () => unknown, ms = 1000, batch = 1000): number {
  for (let i = 0; i < batch; i++) fn();
  let n = 0;
  const t0 = performance.now();
  let elapsed = 0;
  while (elapsed < ms) {
    for (let i = 0; i < batch; i++) fn();
    n += batch;
    elapsed = performance.now() - t0;
  }
  return (n / elapsed) * 1000;
}

export function latencyRow(name: string, sortedUs: readonly number[], extra: Partial<BenchRow> = {}): BenchRow {
  return { name, p50Us: percentile(sortedUs, 50), p99Us: percentile(sortedUs, 99), ...extra };
}
