// Per-agent request rate limiting on the agent channel: a token bucket per agent, so one agent's
// flood costs the sidecar little (a refused request is answered without touching the kernel or
// the audit log) and cannot starve the others. A limiting episode is audited twice, not once per
// request: an `access_denied` (E_RATE_LIMITED) when it starts and a `rate_limited` record with the
// number refused when it ends (after `quietMs` without a refusal, or when the agent is gone).
import type { ProcessRef } from '../kernel/capability.js';
import type { AuditSink } from '../kernel/events.js';

export interface RateLimit {
  /** Tokens added per second (sustained requests per second). */
  perSecond: number;
  /** Bucket size: requests that may arrive at once after a quiet spell. */
  burst: number;
}

export const DEFAULT_RATE_LIMIT: RateLimit = { perSecond: 500, burst: 1000 };

export interface TokenBucketOptions extends RateLimit {
  /** Milliseconds, monotonic; injectable for tests. */
  clock?: () => number;
}

/** A token bucket: `take()` is true while tokens are left; tokens refill continuously. */
export class TokenBucket {
  private tokens: number;
  private last: number;
  private readonly clock: () => number;

  constructor(readonly o: TokenBucketOptions) {
    if (!(o.perSecond > 0) || !(o.burst >= 1)) throw new RangeError('rate limit: perSecond must be > 0 and burst >= 1');
    this.clock = o.clock ?? (() => performance.now());
    this.tokens = o.burst;
    this.last = this.clock();
  }

  take(): boolean {
    const now = this.clock();
    this.tokens = Math.min(this.o.burst, this.tokens + ((now - this.last) * this.o.perSecond) / 1000);
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Milliseconds until the next token. */
  retryAfterMs(): number {
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) * 1000) / this.o.perSecond);
  }
}

export interface AgentRateLimiterOptions {
  limit: RateLimit;
  audit: AuditSink;
  principal: string;
  process: ProcessRef;
  /** An episode ends after this long without a refusal (default 1000 ms). */
  quietMs?: number;
  /** False once the agent is gone or the sidecar stops: the episode is closed at the next tick. */
  alive?: () => boolean;
  clock?: () => number;
}

/** One agent's limiter: the bucket plus the audit of limiting episodes. */
export class AgentRateLimiter {
  private readonly bucket: TokenBucket;
  private readonly clock: () => number;
  private readonly quietMs: number;
  private episode: { startedAt: number; lastRefusedAt: number; refused: number; methods: Set<string> } | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Requests refused over this limiter's life. */
  refusedTotal = 0;
  episodes = 0;

  constructor(private readonly o: AgentRateLimiterOptions) {
    this.clock = o.clock ?? (() => performance.now());
    this.bucket = new TokenBucket({ ...o.limit, clock: this.clock });
    this.quietMs = o.quietMs ?? 1000;
  }

  /** True if the request may proceed; false if it must be refused with E_RATE_LIMITED. */
  admit(method: string): boolean {
    if (this.bucket.take()) return true;
    const now = this.clock();
    this.refusedTotal++;
    if (!this.episode) {
      this.episodes++;
      this.episode = { startedAt: now, lastRefusedAt: now, refused: 0, methods: new Set() };
      this.o.audit.record({
        type: 'access_denied',
        principal: this.o.principal,
        process: this.o.process,
        details: {
          code: 'E_RATE_LIMITED',
          message: `'${this.o.principal}' exceeded ${this.o.limit.perSecond} requests/s (burst ${this.o.limit.burst}); further requests are refused until the rate drops`,
          operation: 'rpc',
          method,
          perSecond: this.o.limit.perSecond,
          burst: this.o.limit.burst,
        },
      });
      this.timer = setInterval(() => this.tick(), Math.max(50, Math.min(250, this.quietMs / 4)));
      this.timer.unref();
    }
    this.episode.refused++;
    this.episode.lastRefusedAt = now;
    if (this.episode.methods.size < 16) this.episode.methods.add(method);
    return false;
  }

  retryAfterMs(): number {
    return this.bucket.retryAfterMs();
  }

  get limitPerSecond(): number {
    return this.o.limit.perSecond;
  }

  /** True while an episode is open (refusals within the last `quietMs`). */
  get limiting(): boolean {
    return this.episode !== undefined;
  }

  private tick(): void {
    const e = this.episode;
    if (!e) return;
    const alive = this.o.alive?.() ?? true;
    if (alive && this.clock() - e.lastRefusedAt < this.quietMs) return;
    this.end();
  }

  /** Closes an open episode now, recording how many requests it refused. */
  end(): void {
    const e = this.episode;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (!e) return;
    this.episode = undefined;
    this.o.audit.record({
      type: 'rate_limited',
      principal: this.o.principal,
      process: this.o.process,
      details: { code: 'E_RATE_LIMITED', refused: e.refused, durationMs: Math.round(e.lastRefusedAt - e.startedAt), methods: [...e.methods], perSecond: this.o.limit.perSecond, burst: this.o.limit.burst },
    });
  }
}
