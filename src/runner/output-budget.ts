// How much of an agent's own stdout and stderr the sidecar forwards: a byte rate (token bucket)
// and a lifetime total per agent. An agent that writes faster, or more, loses lines, never the
// sidecar's memory or the operator's disk: what is dropped is counted and the cut is marked in
// the forwarded stream (one line when dropping starts, one with the count when it stops).

export interface OutputBudgetLimits {
  /** Sustained bytes per second forwarded. */
  bytesPerSecond: number;
  /** Bytes that may be forwarded in a burst above the rate. */
  burstBytes: number;
  /** Bytes forwarded over the agent's whole life; past it, everything is dropped. */
  maxBytes: number;
}

export const DEFAULT_OUTPUT_BUDGET: OutputBudgetLimits = { bytesPerSecond: 256 * 1024, burstBytes: 1024 * 1024, maxBytes: 64 * 1024 * 1024 };

export class OutputBudget {
  private tokens: number;
  private last: number;
  forwarded = 0;
  dropped = 0;
  private droppingSince: number | undefined;
  private droppedInEpisode = 0;

  constructor(
    private readonly limits: OutputBudgetLimits,
    private readonly mark: (line: string) => void,
    private readonly now: () => number = () => Date.now(),
  ) {
    this.tokens = limits.burstBytes;
    this.last = this.now();
  }

  /** Forwards the line through `emit` if the budget allows, else counts it. */
  offer(line: string, emit: (line: string) => void): void {
    const bytes = Buffer.byteLength(line) + 1;
    const t = this.now();
    this.tokens = Math.min(this.limits.burstBytes, this.tokens + ((t - this.last) / 1000) * this.limits.bytesPerSecond);
    this.last = t;
    if (this.forwarded + bytes > this.limits.maxBytes || this.tokens < bytes) {
      if (this.droppingSince === undefined) {
        this.droppingSince = t;
        const why = this.forwarded + bytes > this.limits.maxBytes ? `its ${this.limits.maxBytes} byte total` : `${this.limits.bytesPerSecond} bytes/s`;
        this.mark(`[captrap: output over ${why}; dropping lines]`);
      }
      this.dropped += bytes;
      this.droppedInEpisode += bytes;
      return;
    }
    this.endEpisode();
    this.tokens -= bytes;
    this.forwarded += bytes;
    emit(line);
  }

  /** Marks the end of a dropping episode with its count (also called when the stream ends). */
  endEpisode(): void {
    if (this.droppingSince === undefined) return;
    this.mark(`[captrap: ${this.droppedInEpisode} bytes of output dropped]`);
    this.droppingSince = undefined;
    this.droppedInEpisode = 0;
  }
}
