// Ships a copy of every audit record to a JetStream stream (subject captrap.audit.<host>), so a
// fleet's records can be read in one place. The local hash chain stays the authority: shipping
// is best effort, never blocks or fails the audit log, and a record that cannot be shipped is
// counted, not retried for ever. Each message carries Nats-Msg-Id = the record's chain MAC, so
// JetStream drops a re-sent copy (within the stream's duplicate window, 2 minutes by default).
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import type { AuditLog } from '../kernel/audit.js';
import type { AuditEvent } from '../kernel/events.js';
import { natsConnectOptions } from './nats-connect.js';
import { natsTimings, type NatsRevocationsLog } from './nats-revocations.js';
import type { RevocationsConfig } from './token-revocations.js';

export interface AuditShipOptions {
  log?: NatsRevocationsLog;
  /** Records waiting to be shipped, at most (default 10 000); beyond it new records are dropped and counted. */
  maxQueue?: number;
  /** Publishes in flight at once (default 128). */
  window?: number;
}

export interface AuditShipStatus {
  stream: string;
  subject: string;
  connected: boolean;
  /** Records the stream acknowledged (duplicates included). */
  shipped: number;
  /** Of those, how many the stream had already (a re-sent MAC). */
  duplicates: number;
  /** Waiting in memory. */
  queued: number;
  /** Never shipped: the queue was full (NATS down or slower than the log), or the record could not be encoded. */
  dropped: number;
  lastError: string | null;
}

export interface AuditShipping {
  status(): AuditShipStatus;
  /** Stops tapping, gives queued records a moment to go out, and drains the connection. */
  close(): Promise<void>;
}

interface Pending {
  seq: number;
  mac: string;
  event: AuditEvent;
}

/** A subject token from a host name: only [A-Za-z0-9_-], so no host can inject '.', '*' or '>'. */
export function auditSubject(host: string): string {
  const token = host.replace(/[^A-Za-z0-9_-]/g, '_') || '_';
  return `captrap.audit.${token}`;
}

const SILENT: NatsRevocationsLog = { info() {}, warn() {}, error() {} };
const message = (err: unknown) => (err instanceof Error ? err.message : String(err));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

export function startAuditShipping(audit: AuditLog, cfg: RevocationsConfig, opts: AuditShipOptions = {}): AuditShipping {
  const log = opts.log ?? SILENT;
  const maxQueue = opts.maxQueue ?? 10_000;
  const window = opts.window ?? 128;
  const url = cfg.url ?? '';
  const subject = auditSubject(cfg.host);
  const timings = natsTimings(cfg.maxStalenessMs);
  const timeout = Math.max(1_000, timings.requestTimeoutMs);
  const queue: Pending[] = [];
  const st = { shipped: 0, duplicates: 0, dropped: 0, lastError: null as string | null };
  let nc: NatsConnection | null = null;
  let js: JetStreamClient | null = null;
  let connected = false;
  let closed = false;
  let wake: (() => void) | null = null;
  const poke = () => {
    const w = wake;
    wake = null;
    w?.();
  };

  // The tap runs inside the audit log's append: it only enqueues, and it cannot throw.
  const untap = audit.tap((seq, event, mac) => {
    try {
      if (closed) return;
      if (queue.length >= maxQueue) {
        st.dropped++;
        return;
      }
      queue.push({ seq, mac, event });
      if (connected) poke();
    } catch {
      /* never into the audit log */
    }
  });

  async function ensureStream(jsm: JetStreamManager): Promise<void> {
    try {
      const info = await jsm.streams.info(cfg.auditStream);
      const subjects = info.config.subjects ?? [];
      if (!subjects.some((s) => s === 'captrap.audit.>' || s === subject || s === '>')) {
        log.warn({ stream: cfg.auditStream, subjects }, `audit shipping: stream does not take ${subject}; publishes will fail`);
      }
    } catch (err) {
      if (!/not found/i.test(message(err))) throw err;
      await jsm.streams.add({ name: cfg.auditStream, subjects: ['captrap.audit.>'] });
      log.info({ stream: cfg.auditStream }, 'audit shipping: stream created');
    }
  }

  async function connectLoop(): Promise<void> {
    while (!closed && nc === null) {
      let c: NatsConnection | null = null;
      try {
        c = await connect({
          ...natsConnectOptions(cfg),
          servers: url,
          name: `captrap-audit-${cfg.host}`,
          timeout,
          reconnect: true,
          maxReconnectAttempts: -1,
          reconnectTimeWait: timings.reconnectWaitMs,
          pingInterval: Math.max(100, timings.heartbeatMs * 2),
          maxPingOut: 2,
        });
        const client = jetstream(c, { timeout });
        await ensureStream(await client.jetstreamManager());
        if (closed) {
          await c.close().catch(() => {});
          return;
        }
        nc = c;
        js = client;
        connected = true;
        void followStatus(c);
        void c.closed().then((err) => {
          // Reconnects are unlimited, so this is rare (an auth change...): start over unless we are closing.
          if (closed || nc !== c) return;
          nc = null;
          js = null;
          connected = false;
          st.lastError = `connection closed${err ? `: ${err.message}` : ''}`;
          void connectLoop();
        });
        poke();
      } catch (err) {
        st.lastError = `cannot reach ${url}: ${message(err)}`;
        await c?.close().catch(() => {});
        await sleep(timings.reconnectWaitMs);
      }
    }
  }

  async function followStatus(c: NatsConnection): Promise<void> {
    try {
      for await (const s of c.status()) {
        if (s.type === 'disconnect' || s.type === 'staleConnection') {
          connected = false;
          st.lastError = s.type === 'disconnect' ? 'disconnected from the server' : 'the server stopped answering pings';
        } else if (s.type === 'reconnect') {
          connected = true;
          poke();
        }
      }
    } catch {
      /* the connection is gone; closed() below reconnects */
    }
  }

  async function sendLoop(): Promise<void> {
    while (!closed || queue.length > 0) {
      if (!connected || !js || queue.length === 0) {
        if (closed) return;
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, timings.heartbeatMs).unref();
        });
        continue;
      }
      const batch = queue.splice(0, window);
      const client = js;
      const failed: Pending[] = [];
      await Promise.all(
        batch.map(async (p) => {
          let payload: string;
          try {
            payload = JSON.stringify({ host: cfg.host, seq: p.seq, mac: p.mac, event: p.event });
          } catch (err) {
            st.dropped++;
            st.lastError = `record ${p.seq} cannot be encoded: ${message(err)}`;
            return;
          }
          try {
            const ack = await client.publish(subject, payload, { msgID: p.mac, timeout });
            st.shipped++;
            if (ack.duplicate) st.duplicates++;
          } catch (err) {
            failed.push(p);
            st.lastError = message(err);
          }
        }),
      );
      if (failed.length > 0) {
        // Re-sent later: the stream drops any copy it already stored (same Nats-Msg-Id).
        const room = Math.max(0, maxQueue - queue.length);
        st.dropped += Math.max(0, failed.length - room);
        queue.unshift(...failed.slice(0, room).sort((a, b) => a.seq - b.seq));
        if (closed) return;
        await sleep(timings.reconnectWaitMs);
      }
    }
  }

  void connectLoop();
  const sending = sendLoop().catch((err: unknown) => log.error({ err: message(err) }, 'audit shipping stopped'));

  return {
    status: () => ({
      stream: cfg.auditStream,
      subject,
      connected,
      shipped: st.shipped,
      duplicates: st.duplicates,
      queued: queue.length,
      dropped: st.dropped,
      lastError: st.lastError,
    }),
    async close() {
      if (closed) return;
      untap();
      closed = true;
      poke();
      // Give what is queued a moment to go out; what is left is counted as dropped.
      await Promise.race([sending, sleep(2_000)]);
      st.dropped += queue.splice(0).length;
      const c = nc;
      nc = null;
      js = null;
      connected = false;
      if (c) await Promise.race([c.drain(), sleep(2_000)]).catch(() => c.close().catch(() => {}));
    },
  };
}
