import type { BenchSection } from './harness.js';

export async function bench(): Promise<BenchSection> {
  return { section: 'sidecar', rows: [] };
}
