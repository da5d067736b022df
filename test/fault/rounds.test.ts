// A few randomized fault-injection rounds (the same code as `npm run fault-inject`, which runs many):
// zero violations means no capability valid for a dead process, nothing left behind after each
// round and at the end, and a verifying audit log.
import { describe, expect, it } from 'vitest';
import { formatSummary, runRounds } from '../../scripts/fault-inject.js';
import { host } from './harness.js';

describe.skipIf(host.layout === 'none')('randomized fault rounds', () => {
  it('6 rounds, fixed seed: no violations', async () => {
    const s = await runRounds({ rounds: 6, seed: 20261124, sidecarKillRate: 0 });
    expect(s.violations, formatSummary(s)).toEqual([]);
    expect(s.rounds).toBe(6);
    expect(s.agentsSpawned).toBeGreaterThanOrEqual(6);
    expect(Object.values(s.kills).reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(5);
    expect(s.audit?.ok).toBe(true);
  }, 60_000);
});

describe.skipIf(host.layout === 'none' || !host.namespaces.pid)('randomized fault rounds with sidecar kills', () => {
  // Confined (the default), agents and tools are in pid namespaces of their own.
  it('4 rounds, confined (agents and tools in pid namespaces), the sidecar SIGKILLed half the time and restarted: no violations', async () => {
    const s = await runRounds({ rounds: 4, seed: 11, sidecarKillRate: 0.5 });
    expect(s.violations, formatSummary(s)).toEqual([]);
    expect(s.confine).toBe(true);
    expect(s.sidecarRestarts).toBeGreaterThanOrEqual(1);
    expect(s.audit?.ok).toBe(true);
  }, 60_000);

  // The limits-only sidecar (confine: false) with tools in pid namespaces: what this test ran before confinement.
  it('4 rounds, unconfined, tools in pid namespaces, the sidecar SIGKILLed half the time and restarted: no violations', async () => {
    const s = await runRounds({ rounds: 4, seed: 11, sidecarKillRate: 0.5, confine: false, pidNamespace: true });
    expect(s.violations, formatSummary(s)).toEqual([]);
    expect(s.confine).toBe(false);
    expect(s.sidecarRestarts).toBeGreaterThanOrEqual(1);
    expect(s.audit?.ok).toBe(true);
  }, 60_000);
});
