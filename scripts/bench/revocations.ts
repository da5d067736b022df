// Revocation propagation across hosts (nats backend): host A revokes an id, host B's onRevoked
// fires. Both are full sources (own connection, watch, heartbeat) in this process, so one clock
// times both ends. Baseline in the same run: a core NATS publish on one connection received by a
// subscriber on another, the floor any propagation through that server pays. The two are sampled
// interleaved in random order so the load of other jobs hits them alike. Needs nats-server.
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { connect } from '@nats-io/transport-node';
import { openNatsRevocations } from '../../src/runner/nats-revocations.js';
import type { RevocationsConfig } from '../../src/runner/token-revocations.js';
import { findNatsServer, NatsServer } from '../../test/runner/nats-harness.js';
import { latencyRow, sampleSync, shuffle, type BenchSection } from './harness.js';

const RUNS = 1000;
const WARMUP = 50;

export async function bench(): Promise<BenchSection> {
  const bin = findNatsServer();
  if (!bin) return { section: 'revocations', rows: [{ name: 'revocation propagation A→B', note: 'skipped: nats-server is not installed (apt-get install nats-server)' }] };
  const server = await NatsServer.start(bin);
  const cfg = (host: string): RevocationsConfig => ({
    backend: 'nats',
    url: server.url,
    bucket: 'captrap-bench',
    maxStalenessMs: 5000,
    host,
    shipAudit: false,
    auditStream: 'CAPTRAP_AUDIT',
  });
  const a = await openNatsRevocations(cfg('A'));
  const b = await openNatsRevocations(cfg('B'));
  const pub = await connect({ servers: server.url });
  const sub = await connect({ servers: server.url });
  try {
    let arrived: ((id: string) => void) | null = null;
    b.onRevoked((entries) => {
      for (const e of entries) arrived?.(e.id);
    });
    const core = sub.subscribe('bench.core', { callback: (_err, m) => arrived?.(m.string()) });
    await sub.flush();

    /** Time from `send` to `id` arriving at the other end, in µs. */
    const timeOne = async (send: (id: string) => Promise<unknown>): Promise<{ total: number; ack: number }> => {
      const id = randomBytes(32).toString('hex');
      const got = new Promise<void>((resolve) => {
        arrived = (x) => {
          if (x === id) resolve();
        };
      });
      const t0 = performance.now();
      await send(id);
      const tAck = performance.now();
      await got;
      const t1 = performance.now();
      arrived = null;
      return { total: (t1 - t0) * 1000, ack: (tAck - t0) * 1000 };
    };
    const revoke = (id: string) => a.revoke([id], 'bench');
    const publish = async (id: string) => pub.publish('bench.core', id);

    for (let i = 0; i < WARMUP; i++) {
      await timeOne(revoke);
      await timeOne(publish);
    }
    const prop: number[] = [];
    const acks: number[] = [];
    const base: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      for (const which of shuffle(['rev', 'core'])) {
        if (which === 'rev') {
          const r = await timeOne(revoke);
          prop.push(r.total);
          acks.push(r.ack);
        } else base.push((await timeOne(publish)).total);
      }
    }
    core.unsubscribe();
    const sorted = (x: number[]) => x.sort((p, q) => p - q);
    const baseRow = latencyRow('core NATS publish→subscribe (baseline)', sorted(base));
    const propRow = latencyRow('revocation A→B (revoke → B onRevoked)', sorted(prop), {
      baseline: baseRow.name,
      target: 'p99 < 50 ms',
    });
    propRow.ratio = propRow.p50Us! / baseRow.p50Us!;
    propRow.p99Ratio = propRow.p99Us! / baseRow.p99Us!;
    propRow.pass = propRow.p99Us! < 50_000;
    propRow.note = `${RUNS} revocations on loopback, interleaved with the baseline; p99 ${(propRow.p99Us! / 1000).toFixed(1)} ms, ${propRow.p99Ratio.toFixed(1)}x the baseline's p99`;
    const ackRow = latencyRow('revoke() acknowledged by the bucket (on A)', sorted(acks), { baseline: baseRow.name });
    ackRow.ratio = ackRow.p50Us! / baseRow.p50Us!;

    // The token check's side: isRevoked answers from memory, whatever the bucket holds.
    const ids = Array.from({ length: 4 }, () => randomBytes(32).toString('hex'));
    const plain = new Set(Array.from({ length: b.status().revoked }, () => randomBytes(32).toString('hex')));
    const setRow = latencyRow('Set.has × 4 ids (baseline)', sampleSync(() => ids.some((id) => plain.has(id)), 200_000));
    const isRow = latencyRow(`isRevoked(4 ids), ${b.status().revoked} revoked`, sampleSync(() => b.isRevoked(ids), 200_000), { baseline: setRow.name });
    isRow.ratio = isRow.p50Us! / setRow.p50Us!;
    return { section: 'revocations', rows: [baseRow, propRow, ackRow, setRow, isRow] };
  } finally {
    await a.close();
    await b.close();
    await pub.close();
    await sub.close();
    await server.stop();
  }
}
