// Alerts POSTed to a webhook. A decision never waits for it: send() queues and returns at once.
// One delivery at a time, each attempt bounded by a timeout, retried with backoff; the queue is
// bounded, and what overflows it or exhausts its retries is counted, not kept.
import type { WebhookConfig } from './config.js';

export interface WebhookStats {
  delivered: number;
  failed: number;
  dropped: number;
  queued: number;
  lastError: string | null;
}

const MAX_QUEUE = 1000;
const BACKOFF_MS = 250;

export class WebhookSender {
  private readonly queue: unknown[] = [];
  private busy = false;
  private closed = false;
  readonly stats: WebhookStats = { delivered: 0, failed: 0, dropped: 0, queued: 0, lastError: null };

  constructor(
    private readonly config: WebhookConfig,
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms).unref()),
  ) {}

  send(payload: unknown): void {
    if (this.closed) return;
    if (this.queue.length >= MAX_QUEUE) {
      this.queue.shift();
      this.stats.dropped++;
    }
    this.queue.push(payload);
    this.stats.queued = this.queue.length;
    if (!this.busy) void this.drain();
  }

  /** Stops sending; what is still queued is counted as dropped. */
  close(): void {
    this.closed = true;
    this.stats.dropped += this.queue.length;
    this.queue.length = 0;
    this.stats.queued = 0;
  }

  /** Resolves once the queue is empty (tests, shutdown). */
  async idle(timeoutMs = 10_000): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    while ((this.busy || this.queue.length > 0) && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    return !this.busy && this.queue.length === 0;
  }

  private async drain(): Promise<void> {
    this.busy = true;
    try {
      while (this.queue.length > 0 && !this.closed) {
        const payload = this.queue.shift();
        this.stats.queued = this.queue.length;
        if (await this.deliver(payload)) this.stats.delivered++;
        else this.stats.failed++;
      }
    } finally {
      this.busy = false;
    }
  }

  private async deliver(payload: unknown): Promise<boolean> {
    const body = JSON.stringify(payload);
    for (let attempt = 0; attempt <= this.config.retries && !this.closed; attempt++) {
      if (attempt > 0) await this.sleep(BACKOFF_MS * 2 ** (attempt - 1));
      try {
        const res = await fetch(this.config.url, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'user-agent': 'captrap-monitor', ...this.config.headers },
          body,
          signal: AbortSignal.timeout(this.config.timeoutMs),
        });
        // Drain the answer so the connection can be reused.
        await res.arrayBuffer().catch(() => undefined);
        if (res.ok) return true;
        this.stats.lastError = `HTTP ${res.status}`;
      } catch (err) {
        this.stats.lastError = (err as Error).message;
      }
    }
    return false;
  }
}
