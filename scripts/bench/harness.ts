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
  /** This row's p99 over the baseline's p99 (latency rows measured side by side). */
  p99Ratio?: number;
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

/** Fisher-Yates, in place. */
export function shuffle<T>(a: T[]): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

export interface Variant {
  name: string;
  run: () => Promise<unknown>;
}

/**
 * Latencies of several variants measured side by side: every round runs each variant once, in
 * a fresh random order, so drift in the machine's load (other jobs, thermal, a cache warming)
 * hits all of them alike. With `gapMs` each call waits that long (plus up to half as much
 * again, at random) after the previous one, like sporadic requests; without it they run back
 * to back. Returns per-variant latencies in µs, sorted.
 */
export async function sampleInterleaved(variants: readonly Variant[], rounds: number, opts: { gapMs?: number; warmupRounds?: number } = {}): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>(variants.map((v) => [v.name, []]));
  const warmup = opts.warmupRounds ?? 3;
  for (let r = 0; r < warmup + rounds; r++) {
    for (const v of shuffle([...variants])) {
      if (opts.gapMs) await new Promise((res) => setTimeout(res, opts.gapMs! * (1 + Math.random() / 2)));
      const t0 = performance.now();
      await v.run();
      const us = (performance.now() - t0) * 1000;
      if (r >= warmup) out.get(v.name)!.push(us);
    }
  }
  for (const a of out.values()) a.sort((x, y) => x - y);
  return out;
}
