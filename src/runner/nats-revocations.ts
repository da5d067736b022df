// The nats revocation backend: one JetStream KV bucket, one key per revoked ct2 revocation id,
// watched by every host. isRevoked answers from memory; the feed keeps that memory complete and
// says how recently it was known complete (lastSyncAt). "Known complete at t" means: the stream's
// last sequence, read at t, has been delivered by this host's watch. A heartbeat re-establishes
// it every maxStaleness/4; when it cannot (server down, partition, dead watch) the set ages, and
// once it is older than maxStaleness isRevoked throws: a host that cannot hear revocations
// refuses ct2 calls rather than honour a token revoked elsewhere.
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV, type KvWatchEntry } from '@nats-io/kv';
import { CaptrapError } from '../errors.js';
import { natsConnectOptions, natsExposure } from './nats-connect.js';
import {
  RevocationsUnavailableError,
  type RevocationEntry,
  type RevocationsConfig,
  type RevocationStatus,
  type TokenRevocations,
} from './token-revocations.js';

export interface NatsRevocationsLog {
  info(obj: unknown, msg?: string): void;
  warn(obj: unknown, msg?: string): void;
  error(obj: unknown, msg?: string): void;
}

export interface NatsRevocationsOptions {
  log?: NatsRevocationsLog;
  /** How long open waits for the first complete load before returning a source that refuses (default: min(maxStaleness, 5 s)). */
  openWaitMs?: number;
}

/** A revocation that holds on this host but that the bucket has not acknowledged. */
export class RevocationNotPropagatedError extends CaptrapError {
  constructor(message: string, readonly entries: RevocationEntry[], cause?: unknown) {
    super('E_REVOCATION_NOT_PROPAGATED', message, { ids: entries.map((e) => e.id) }, { cause });
  }
}

/** A nats revocations section that cannot work (no url, a bucket name KV refuses...). */
export class RevocationsConfigError extends CaptrapError {
  constructor(message: string) {
    super('E_REVOCATIONS_CONFIG', message);
  }
}

const REVOCATION_ID = /^[0-9a-f]{64}$/;
const BUCKET_NAME = /^[-\w]+$/;
const SILENT_LOG: NatsRevocationsLog = { info() {}, warn() {}, error() {} };

function checkConfig(cfg: RevocationsConfig): string {
  if (cfg.backend !== 'nats') throw new RevocationsConfigError(`revocations: backend is '${cfg.backend}', not nats`);
  if (!cfg.url) throw new RevocationsConfigError('revocations: backend nats needs a url (e.g. nats://127.0.0.1:4222)');
  if (!BUCKET_NAME.test(cfg.bucket)) throw new RevocationsConfigError(`revocations: bucket '${cfg.bucket}' is not a valid KV bucket name ([A-Za-z0-9_-])`);
  if (!(Number.isFinite(cfg.maxStalenessMs) && cfg.maxStalenessMs >= 100)) {
    throw new RevocationsConfigError(`revocations: maxStaleness must be at least 100 ms (got ${cfg.maxStalenessMs})`);
  }
  return cfg.url;
}

/** Heartbeat period and per-request timeout derived from maxStaleness: four chances per window. */
export function natsTimings(maxStalenessMs: number): { heartbeatMs: number; requestTimeoutMs: number; reconnectWaitMs: number } {
  const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, Math.round(v)));
  return {
    heartbeatMs: clamp(maxStalenessMs / 4, 25, 10_000),
    requestTimeoutMs: clamp(maxStalenessMs / 2, 100, 5_000),
    reconnectWaitMs: clamp(maxStalenessMs / 4, 50, 2_000),
  };
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

interface Stamp {
  wall: number;
  mono: number;
}
const stamp = (): Stamp => ({ wall: Date.now(), mono: performance.now() });

/** Reads a KV value as a RevocationEntry; a value some other writer left malformed still revokes its key. */
function decodeEntry(e: KvWatchEntry): RevocationEntry {
  const fallback: RevocationEntry = { id: e.key, host: '?', at: e.created.getTime(), reason: '' };
  try {
    const v = e.json<Partial<RevocationEntry>>();
    return {
      id: e.key,
      host: typeof v.host === 'string' ? v.host : fallback.host,
      at: typeof v.at === 'number' ? v.at : fallback.at,
      reason: typeof v.reason === 'string' ? v.reason : '',
    };
  } catch {
    return fallback;
  }
}

class NatsRevocations implements TokenRevocations {
  private readonly revoked = new Map<string, RevocationEntry>();
  /** Revoked here while the bucket could not be reached: re-put after every resync. */
  private readonly unpropagated = new Map<string, RevocationEntry>();
  /** Deletes and purges of ids this host knows revoked, ignored (revocations are not withdrawn). */
  private deletesIgnored = 0;
  private readonly listeners = new Set<(entries: RevocationEntry[]) => void>();
  private readonly timings: ReturnType<typeof natsTimings>;
  private readonly url: string;
  private nc: NatsConnection | null = null;
  private kv: KV | null = null;
  private jsm: JetStreamManager | null = null;
  private connected = false;
  private closed = false;
  private heartbeat: NodeJS.Timeout | undefined;
  private beating = false;
  /** Each (re)started watch gets a generation; entries and heartbeats of an older one are ignored. */
  private watchGen = 0;
  private watchStop: (() => void) | null = null;
  private watchLive = false;
  private watchStarting = 0;
  private watchMaxRev = 0;
  /** A heartbeat saw the stream at `seq` at `at`; the set is complete as of `at` once the watch delivers `seq`. */
  private pendingSync: { seq: number; at: Stamp; gen: number } | null = null;
  private lastSyncAt: number | null = null;
  /** The same moment on the monotonic clock: freshness must not move with a wall-clock step. */
  private lastSyncMono: number | null = null;
  private lostSince: number | null = null;
  private lostReason = 'not connected yet';
  private firstSync: { promise: Promise<void>; resolve: () => void };

  constructor(
    private readonly cfg: RevocationsConfig,
    private readonly log: NatsRevocationsLog,
  ) {
    this.url = checkConfig(cfg);
    this.timings = natsTimings(cfg.maxStalenessMs);
    let resolve!: () => void;
    this.firstSync = { promise: new Promise<void>((r) => (resolve = r)), resolve };
    this.lostSince = Date.now();
  }

  start(): void {
    this.heartbeat = setInterval(() => void this.beat(), this.timings.heartbeatMs);
    this.heartbeat.unref();
    void this.connectLoop();
  }

  waitFirstSync(ms: number): Promise<boolean> {
    return withTimeout(this.firstSync.promise, ms, 'first sync').then(
      () => true,
      () => false,
    );
  }

  // ---- the answer -------------------------------------------------------------------------

  private fresh(): boolean {
    return !this.closed && this.lastSyncMono !== null && performance.now() - this.lastSyncMono <= this.cfg.maxStalenessMs;
  }

  isRevoked(ids: readonly string[]): boolean {
    for (const id of ids) if (this.revoked.has(id)) return true;
    // Not known revoked: that only means something while the set is known complete.
    if (!this.fresh()) throw new RevocationsUnavailableError(`revocations unavailable: ${this.describe()}`);
    return false;
  }

  snapshot(): RevocationEntry[] {
    return [...this.revoked.values()];
  }

  status(): RevocationStatus {
    return {
      backend: 'nats',
      revoked: this.revoked.size,
      healthy: this.fresh(),
      lastSyncAt: this.lastSyncAt,
      detail: this.describe(),
    };
  }

  private describe(): string {
    const where = `nats ${this.url} bucket ${this.cfg.bucket}`;
    if (this.closed) return `${where}: closed`;
    const iso = (t: number) => new Date(t).toISOString();
    const pending =
      (this.unpropagated.size > 0 ? `; ${this.unpropagated.size} local revocation(s) not yet in the bucket` : '') +
      (this.deletesIgnored > 0 ? `; ${this.deletesIgnored} delete(s) of revoked ids in the bucket ignored` : '');
    if (this.lastSyncAt === null) {
      return `${where}: never synced (${this.lostReason}, since ${iso(this.lostSince ?? Date.now())}); ct2 calls are refused${pending}`;
    }
    const refuseAt = this.lastSyncAt + this.cfg.maxStalenessMs;
    if (this.lostSince === null && this.fresh()) return `${where}: in sync as of ${iso(this.lastSyncAt)}${pending}`;
    const since = `feed lost since ${iso(this.lostSince ?? this.lastSyncAt)} (${this.lostReason}); last in sync ${iso(this.lastSyncAt)}`;
    return this.fresh()
      ? `${where}: ${since}; ct2 calls will be refused from ${iso(refuseAt)}${pending}`
      : `${where}: ${since}; ct2 calls refused since ${iso(refuseAt)} (maxStaleness ${this.cfg.maxStalenessMs} ms)${pending}`;
  }

  // ---- revoking ---------------------------------------------------------------------------

  async revoke(ids: readonly string[], reason: string): Promise<RevocationEntry[]> {
    if (this.closed) throw new RevocationsUnavailableError('revocations: the nats source is closed');
    for (const id of ids) {
      if (!REVOCATION_ID.test(id)) throw new CaptrapError('E_INVALID_ARGUMENTS', `revocation id '${id}' is not 64 lowercase hex characters`);
    }
    const at = Date.now();
    const entries = ids.map((id) => ({ id, host: this.cfg.host || hostname(), at, reason }));
    // Held here at once: whatever happens to the put, this host refuses the token from now on.
    for (const e of entries) this.revoked.set(e.id, e);
    const kv = this.kv;
    if (!kv || !this.connected) {
      for (const e of entries) this.unpropagated.set(e.id, e);
      throw new RevocationNotPropagatedError(
        `revoked on this host only: not connected to ${this.url} (${this.lostReason}); other hosts still accept these tokens. ` +
          'It is retried when the connection returns.',
        entries,
      );
    }
    const failed: RevocationEntry[] = [];
    let firstErr: unknown;
    await Promise.all(
      entries.map((e) =>
        kv.put(e.id, JSON.stringify(e), { timeout: this.timings.requestTimeoutMs }).catch((err: unknown) => {
          failed.push(e);
          firstErr ??= err;
        }),
      ),
    );
    if (failed.length > 0) {
      for (const e of failed) this.unpropagated.set(e.id, e);
      throw new RevocationNotPropagatedError(
        `${failed.length} of ${entries.length} revocation(s) not acknowledged by ${this.url}: ${message(firstErr)}; ` +
          'they hold on this host only for now (retried when the feed is back in sync, and a timed-out put may still land)',
        failed,
        firstErr,
      );
    }
    return entries;
  }

  onRevoked(fn: (entries: RevocationEntry[]) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  // ---- the connection ---------------------------------------------------------------------

  private lost(reason: string): void {
    if (this.closed) return;
    if (this.lostSince === null) {
      this.lostSince = Date.now();
      this.log.warn({ url: this.url, bucket: this.cfg.bucket, reason }, 'revocations feed lost');
    }
    this.lostReason = reason;
  }

  private async connectLoop(): Promise<void> {
    while (!this.closed && this.nc === null) {
      let nc: NatsConnection | null = null;
      try {
        nc = await connect({
          ...natsConnectOptions(this.cfg),
          servers: this.url,
          name: `captrap-revocations-${this.cfg.host}`,
          timeout: this.timings.requestTimeoutMs,
          reconnect: true,
          maxReconnectAttempts: -1,
          reconnectTimeWait: this.timings.reconnectWaitMs,
          reconnectJitter: Math.min(100, this.timings.reconnectWaitMs),
          // A silent peer (partition, not a reset) is noticed by the heartbeat; pings make the
          // client drop the dead socket and reconnect within about the same window.
          pingInterval: Math.max(100, this.timings.heartbeatMs * 2),
          maxPingOut: 2,
        });
        if (this.closed) {
          await nc.close().catch(() => {});
          return;
        }
        const js = jetstream(nc, { timeout: this.timings.requestTimeoutMs });
        this.jsm = await js.jetstreamManager();
        this.kv = await new Kvm(js).create(this.cfg.bucket, { history: 1, timeout: this.timings.requestTimeoutMs });
        this.nc = nc;
        this.connected = true;
        void this.followStatus(nc);
        void nc.closed().then((err) => this.onClosed(nc!, err));
        this.log.info({ url: this.url, bucket: this.cfg.bucket }, 'revocations: connected');
        await this.restartWatch('connected');
      } catch (err) {
        this.lost(`cannot reach ${this.url}: ${message(err)}`);
        this.jsm = null;
        this.kv = null;
        await nc?.close().catch(() => {});
        await sleep(this.timings.reconnectWaitMs);
      }
    }
  }

  private async followStatus(nc: NatsConnection): Promise<void> {
    try {
      for await (const s of nc.status()) {
        if (this.closed || this.nc !== nc) return;
        switch (s.type) {
          case 'disconnect':
            this.connected = false;
            this.lost('disconnected from the server');
            break;
          case 'staleConnection':
            this.connected = false;
            this.lost('the server stopped answering pings');
            break;
          case 'reconnect':
            this.connected = true;
            // Whatever was revoked while we were away is read again before the set is trusted.
            void this.restartWatch('reconnected');
            break;
          case 'error':
            this.log.warn({ url: this.url, err: message((s as { error?: unknown }).error) }, 'revocations: connection error');
            break;
          default:
            break;
        }
      }
    } catch (err) {
      this.log.warn({ err: message(err) }, 'revocations: status feed ended');
    }
  }

  private onClosed(nc: NatsConnection, err: void | Error): void {
    if (this.closed || this.nc !== nc) return;
    this.connected = false;
    this.nc = null;
    this.kv = null;
    this.jsm = null;
    this.stopWatch();
    this.lost(`connection closed${err ? `: ${err.message}` : ''}`);
    void this.connectLoop();
  }

  // ---- the watch --------------------------------------------------------------------------

  private stopWatch(): void {
    this.watchGen++;
    this.watchLive = false;
    this.pendingSync = null;
    const stop = this.watchStop;
    this.watchStop = null;
    try {
      stop?.();
    } catch {
      /* an iterator already stopped */
    }
  }

  private async restartWatch(why: string): Promise<void> {
    const kv = this.kv;
    if (!kv || this.closed) return;
    this.stopWatch();
    const gen = this.watchGen;
    this.watchMaxRev = 0;
    let it: Awaited<ReturnType<KV['watch']>>;
    this.watchStarting++;
    try {
      it = await kv.watch();
    } catch (err) {
      if (gen === this.watchGen) this.lost(`cannot watch bucket ${this.cfg.bucket}: ${message(err)}`);
      return;
    } finally {
      this.watchStarting--;
    }
    if (gen !== this.watchGen || this.closed) {
      it.stop();
      return;
    }
    this.watchStop = () => it.stop();
    this.watchLive = true;
    this.log.info({ bucket: this.cfg.bucket, why }, 'revocations: watching');
    void (async () => {
      try {
        for await (const e of it) {
          if (gen !== this.watchGen) return;
          this.apply(e);
        }
      } catch (err) {
        if (gen === this.watchGen) this.lost(`watch failed: ${message(err)}`);
      }
      if (gen === this.watchGen && !this.closed) {
        this.watchLive = false;
        this.lost('the watch ended');
      }
    })();
    void this.beat();
  }

  private apply(e: KvWatchEntry): void {
    if (e.revision > this.watchMaxRev) this.watchMaxRev = e.revision;
    if (e.operation === 'PUT') {
      if (!this.revoked.has(e.key)) {
        const entry = decodeEntry(e);
        this.revoked.set(e.key, entry);
        this.unpropagated.delete(e.key);
        this.emit([entry]);
      } else {
        this.unpropagated.delete(e.key);
      }
    } else if (this.revoked.has(e.key)) {
      // A revocation is never withdrawn: a delete or purge in the bucket (a mistake, or someone
      // with write access keeping a token alive) is ignored by every host that has seen the id.
      this.deletesIgnored++;
      this.log.warn({ id: e.key, op: e.operation }, 'revocations: an id was deleted from the bucket; it stays revoked here (revocations are not withdrawn)');
    }
    const p = this.pendingSync;
    if (p && p.gen === this.watchGen && this.watchMaxRev >= p.seq) {
      this.pendingSync = null;
      this.synced(p.at);
    }
  }

  private toEmit: RevocationEntry[] = [];
  /** Entries learned in one burst (a reload after a partition) reach listeners as one batch. */
  private emit(entries: RevocationEntry[]): void {
    if (this.toEmit.length === 0) setImmediate(() => this.flushEmit());
    this.toEmit.push(...entries);
  }

  private flushEmit(): void {
    const entries = this.toEmit;
    this.toEmit = [];
    if (entries.length === 0 || this.closed) return;
    for (const fn of this.listeners) {
      try {
        fn(entries);
      } catch (err) {
        this.log.error({ err: message(err) }, 'revocations: an onRevoked listener threw');
      }
    }
  }

  // ---- freshness --------------------------------------------------------------------------

  private async beat(): Promise<void> {
    if (this.beating || this.closed) return;
    const jsm = this.jsm;
    if (!jsm || !this.connected) return;
    if (!this.watchLive) {
      if (this.watchStarting > 0) return;
      void this.restartWatch('the previous watch is gone');
      return;
    }
    this.beating = true;
    const gen = this.watchGen;
    const at = stamp();
    try {
      const info = await withTimeout(jsm.streams.info(`KV_${this.cfg.bucket}`), this.timings.requestTimeoutMs, 'bucket status');
      if (gen !== this.watchGen || this.closed) return;
      const seq = info.state.last_seq;
      if (info.state.messages === 0 || this.watchMaxRev >= seq) {
        this.pendingSync = null;
        this.synced(at);
      } else if (this.pendingSync && at.mono - this.pendingSync.at.mono > 2 * this.timings.heartbeatMs + this.timings.requestTimeoutMs) {
        // The watch has not delivered what the stream held two heartbeats ago: it is stuck
        // (a consumer lost with a server restart), so read everything again.
        this.lost(`the watch fell behind (at revision ${this.watchMaxRev}, bucket at ${this.pendingSync.seq})`);
        void this.restartWatch('the watch fell behind');
      } else if (!this.pendingSync) {
        this.pendingSync = { seq, at, gen };
      }
    } catch (err) {
      // The client's own request timeout says only "timeout": name what went unanswered.
      const m = message(err);
      if (gen === this.watchGen) this.lost(/^timeout$/i.test(m) ? `bucket status: no answer within ${this.timings.requestTimeoutMs} ms` : `bucket status: ${m}`);
    } finally {
      this.beating = false;
    }
  }

  private synced(at: Stamp): void {
    if (this.closed) return;
    const first = this.lastSyncMono === null;
    if (this.lastSyncMono === null || at.mono > this.lastSyncMono) {
      this.lastSyncMono = at.mono;
      this.lastSyncAt = at.wall;
    }
    if (this.lostSince !== null) {
      this.log.info({ url: this.url, bucket: this.cfg.bucket, revoked: this.revoked.size, lostMs: Date.now() - this.lostSince }, first ? 'revocations loaded' : 'revocations feed in sync again');
      this.lostSince = null;
      this.lostReason = '';
    }
    this.firstSync.resolve();
    if (this.unpropagated.size > 0) void this.republish();
  }

  private republishing = false;
  /** Puts the ids revoked here while the bucket was out of reach, so other hosts learn them. */
  private async republish(): Promise<void> {
    const kv = this.kv;
    if (this.republishing || !kv) return;
    this.republishing = true;
    try {
      for (const e of [...this.unpropagated.values()]) {
        await kv.put(e.id, JSON.stringify(e), { timeout: this.timings.requestTimeoutMs });
        this.unpropagated.delete(e.id);
        this.log.info({ id: e.id }, 'revocations: a revocation made while disconnected is now in the bucket');
      }
    } catch (err) {
      this.log.warn({ err: message(err), left: this.unpropagated.size }, 'revocations: re-publishing local revocations failed; retried at the next sync');
    } finally {
      this.republishing = false;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    this.stopWatch();
    const nc = this.nc;
    this.nc = null;
    this.kv = null;
    this.jsm = null;
    this.connected = false;
    if (nc) {
      await withTimeout(nc.drain(), 2_000, 'drain').catch(() => nc.close().catch(() => {}));
    }
  }
}

/**
 * Opens the nats revocation source: connects, creates the bucket if absent, loads the whole set
 * and watches it. Resolves once the set is loaded, or after openWaitMs with a source that refuses
 * (status says why) and keeps trying: it never rejects because the server is down.
 */
export async function openNatsRevocations(cfg: RevocationsConfig, opts: NatsRevocationsOptions = {}): Promise<TokenRevocations> {
  const log = opts.log ?? SILENT_LOG;
  // A credentials, password or key file that cannot be used stops the start here, not in a retry loop.
  natsConnectOptions(cfg);
  const exposure = natsExposure(cfg);
  if (exposure) log.warn({ url: cfg.url }, exposure);
  const source = new NatsRevocations(cfg, log);
  source.start();
  const waitMs = opts.openWaitMs ?? Math.min(cfg.maxStalenessMs, 5_000);
  if (!(await source.waitFirstSync(waitMs))) {
    log.warn({ url: cfg.url, bucket: cfg.bucket, detail: source.status().detail }, 'revocations: not loaded yet; ct2 calls are refused until they are');
  }
  return source;
}

export interface NatsRevocationsProbe {
  ok: boolean;
  url: string;
  bucket: string;
  /** Revoked ids in the bucket (null when it could not be read). */
  revoked: number | null;
  /** Whether the bucket exists yet (the first sidecar creates it). */
  bucketExists: boolean;
  detail: string;
}

/** One look at the server for `captrap doctor`: reachable, JetStream on, how many ids revoked. */
export async function probeNatsRevocations(cfg: RevocationsConfig, timeoutMs = 3_000): Promise<NatsRevocationsProbe> {
  const url = cfg.url ?? '';
  const base = { url, bucket: cfg.bucket };
  let nc: NatsConnection | undefined;
  try {
    checkConfig(cfg);
    nc = await connect({ ...natsConnectOptions(cfg), servers: url, timeout: timeoutMs, reconnect: false, name: 'captrap-doctor' });
    const js = jetstream(nc, { timeout: timeoutMs });
    const jsm = await js.jetstreamManager();
    try {
      await jsm.streams.info(`KV_${cfg.bucket}`);
    } catch (err) {
      if (/not found/i.test(message(err))) {
        return { ...base, ok: true, revoked: 0, bucketExists: false, detail: 'reachable, bucket not created yet (the first sidecar creates it), 0 revoked' };
      }
      throw err;
    }
    const kv = await new Kvm(js).open(cfg.bucket, { timeout: timeoutMs });
    const revoked = await withTimeout(
      (async () => {
        let n = 0;
        for await (const _key of await kv.keys()) n++;
        return n;
      })(),
      timeoutMs,
      'listing revoked ids',
    );
    return { ...base, ok: true, revoked, bucketExists: true, detail: `reachable, ${revoked} revoked` };
  } catch (err) {
    return { ...base, ok: false, revoked: null, bucketExists: false, detail: message(err) };
  } finally {
    await nc?.close().catch(() => {});
  }
}
