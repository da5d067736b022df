// The second core for `verify`: a worker thread checks record MACs while the main thread runs
// verify's structural pass (chain links, seqs, headers, checkpoints) over the very same bytes.
// The main thread reads each segment into a few shared slots; for every line whose MAC it leaves
// to the worker it notes where the line lies, and queues the slot for the worker when it moves
// on. The worker therefore checks exactly the bytes the structural pass judged (a file changing
// under verify cannot slip an unchecked line in), and needs no parsing of its own. When the
// worker falls behind, the main thread checks the next slot's MACs itself, and at the end it
// takes back the slots the worker has not started: neither thread waits for the other while
// there is work it could do.
//
// Everything here is a fast path that may give up (`FastPathAbandoned`): a bad MAC, a worker
// that fails or stalls, a line longer than a slot. The caller then runs the sequential verify,
// which says what is wrong; this module never decides that a log is fine on its own.
//
// The main thread waits for the worker with Atomics.wait, so verify stays synchronous. The
// worker is a self-contained script (`eval`), so it runs the same from TypeScript sources (tsx,
// vitest) and from the built dist/.
import { Worker } from 'node:worker_threads';
import { LINE_HEADROOM, LineScanner } from './audit-lines.js';
import { AuditMac, MAC_HEX_LEN, MAC_SUFFIX_LEN, PREV_FIELD_LEN, hmacSha256Pads } from './audit-record.js';

/** The fast path gave up; the reason is for tests and debugging, the caller verifies sequentially. */
export class FastPathAbandoned extends Error {}

/** What verify's structural pass reads lines through: LineReader and MacOffload both fit. */
export interface LineSource {
  buf: Buffer;
  start: number;
  end: number;
  terminated: boolean;
  next(): boolean;
  text(): string;
  open(path: string): void;
  close(): void;
}

export interface MacOffloadOptions {
  /** Data bytes per shared slot (a line longer than this abandons the fast path). Default 1 MiB. */
  slotBytes?: number;
  /** Slots in the ring (at least 3). Default 4. */
  slots?: number;
  /** Abandon when the worker finishes nothing for this long while the main thread waits for it. Default 10 s. */
  stallMs?: number;
  /** The main thread checks a slot's MACs itself while this many slots wait for the worker. Default 2. */
  helpAtBacklog?: number;
  /** Tests only: never take queued slots back from the worker at the end. */
  noSteal?: boolean;
  /** Tests only: the worker throws after this many slots, as a crashing worker would. */
  faultAfterSlots?: number;
}

// Slot states.
const FREE = 0;
const QUEUED = 1;
const TAKEN = 2;
const STOLEN = 3;
// The shared control array: counters, then the job ring, the slot states and the slot line counts.
const C_QUIT = 0;
const C_FAILED = 1;
const C_CHECKED = 2;
const C_BAD = 3;
const C_HEAD = 4; // jobs queued so far
const C_DONE = 5; // jobs the worker has passed (checked, or found taken back)
const C_JOBS = 6;

// The worker writes K^ipad (one 64-byte SHA-256 block) in front of each line: a slot keeps that much room before its first line.
if (LINE_HEADROOM < 64) throw new Error('LINE_HEADROOM must hold one SHA-256 block');

/** `,"mac":"` between a line's body and its MAC. */
const MAC_OFFSET = MAC_SUFFIX_LEN - MAC_HEX_LEN - 2;
/** The shortest line whose MAC is checked is longer than this (see verify's shape check), plus its newline. */
const MIN_CHECKED_LINE = MAC_SUFFIX_LEN + PREV_FIELD_LEN + 2;

// The worker: takes queued slots in order, HMACs every listed line body (in place: the 64 bytes
// before a body take K^ipad, as AuditMac.ofBytesInPlace does) and compares the result with the
// MAC written after it. It reports counts only; the main thread falls back on any mismatch.
const workerSource = (slots: number) => `'use strict';
const { workerData } = require('node:worker_threads');
const ctl = new Int32Array(workerData.ctl);
const N = ${slots}, STATE = ${C_JOBS} + N, COUNT = ${C_JOBS} + 2 * N;
try {
  const { hash } = require('node:crypto');
  const slots = workerData.slots.map((s) => Buffer.from(s));
  const lines = workerData.lines.map((s) => new Int32Array(s));
  const ipad = Buffer.from(workerData.ipad);
  const outer = Buffer.alloc(${64 + 32});
  Buffer.from(workerData.opad).copy(outer, 0);
  for (let tail = 0; ; tail++) {
    if (tail === workerData.faultAfterSlots) throw new Error('injected fault');
    while (Atomics.load(ctl, ${C_HEAD}) === tail && Atomics.load(ctl, ${C_QUIT}) === 0) Atomics.wait(ctl, ${C_HEAD}, tail);
    if (Atomics.load(ctl, ${C_QUIT}) !== 0) break;
    const slot = Atomics.load(ctl, ${C_JOBS} + (tail % N));
    if (Atomics.compareExchange(ctl, STATE + slot, ${QUEUED}, ${TAKEN}) === ${QUEUED}) {
      const buf = slots[slot];
      const at = lines[slot];
      const n = Atomics.load(ctl, COUNT + slot);
      let bad = 0;
      for (let i = 0; i < n; i++) {
        const start = at[2 * i];
        const end = at[2 * i + 1];
        buf.set(ipad, start - 64);
        outer.write(hash('sha256', buf.subarray(start - 64, end), 'binary'), 64, 'latin1');
        const mac = hash('sha256', outer, 'hex');
        const m = end + ${MAC_OFFSET};
        for (let j = 0; j < ${MAC_HEX_LEN}; j++) {
          if (buf[m + j] !== mac.charCodeAt(j)) {
            bad++;
            break;
          }
        }
      }
      Atomics.add(ctl, ${C_CHECKED}, n);
      if (bad > 0) Atomics.add(ctl, ${C_BAD}, bad);
      Atomics.store(ctl, STATE + slot, ${FREE});
    }
    Atomics.store(ctl, ${C_DONE}, tail + 1);
    Atomics.notify(ctl, ${C_DONE});
  }
} catch {
  Atomics.store(ctl, ${C_FAILED}, 1);
  Atomics.notify(ctl, ${C_DONE});
}
`;

/**
 * Reads segment files line by line (the LineReader interface) through a ring of shared slots,
 * and lets the structural pass leave a line's MAC to the worker with `defer`. Call `finish` once
 * every line has been read, and `dispose` always.
 */
export class MacOffload extends LineScanner implements LineSource {
  private readonly slots: Buffer[];
  private readonly lines: Int32Array[];
  private readonly ctl: Int32Array;
  private readonly worker: Worker;
  private readonly mac: AuditMac;
  private readonly slotBytes: number;
  private readonly maxLines: number;
  private readonly stallMs: number;
  private readonly helpAtBacklog: number;
  private readonly noSteal: boolean;
  private readonly STATE: number;
  private readonly COUNT: number;
  private cur = 0;
  private n = 0;
  private selfCheck = true;
  private queued = 0;
  private deferred = 0;
  private mainChecked = 0;
  private disposed = false;

  constructor(key: Buffer, options: MacOffloadOptions = {}) {
    const slotBytes = options.slotBytes ?? 1024 * 1024;
    const count = Math.max(3, options.slots ?? 4);
    const slotBuffers = Array.from({ length: count }, () => new SharedArrayBuffer(LINE_HEADROOM + slotBytes));
    const slots = slotBuffers.map((sb) => Buffer.from(sb));
    super(slots[0]!);
    // Nothing is read until open().
    this.eof = true;
    this.slots = slots;
    this.slotBytes = slotBytes;
    this.stallMs = options.stallMs ?? 10_000;
    this.helpAtBacklog = options.helpAtBacklog ?? 2;
    this.noSteal = options.noSteal === true;
    this.STATE = C_JOBS + count;
    this.COUNT = C_JOBS + 2 * count;
    this.maxLines = Math.floor(this.slotBytes / MIN_CHECKED_LINE) + 1;
    const lineBuffers = Array.from({ length: count }, () => new SharedArrayBuffer(8 * this.maxLines));
    this.lines = lineBuffers.map((s) => new Int32Array(s));
    this.ctl = new Int32Array(new SharedArrayBuffer(4 * (C_JOBS + 3 * count)));
    this.mac = new AuditMac(key);
    const { ipad, opad } = hmacSha256Pads(key);
    this.worker = new Worker(workerSource(count), {
      eval: true,
      // Nothing of the parent's loaders (tsx under tests) is needed: the script uses node: modules only.
      execArgv: [],
      workerData: { ctl: this.ctl.buffer, slots: slotBuffers, lines: lineBuffers, ipad, opad, faultAfterSlots: options.faultAfterSlots ?? -1 },
      stdout: true,
      stderr: true,
      resourceLimits: { maxOldGenerationSizeMb: 64 },
    });
    // The main thread never waits on the event loop while verifying: the worker reports through
    // the control array. An 'error' event must still have a listener, or it would crash the process.
    this.worker.on('error', () => Atomics.store(this.ctl, C_FAILED, 1));
    this.worker.unref();
  }

  /**
   * Leaves the MAC of the current line (body buf[start, bodyEnd), MAC written after it) to the
   * worker. False when the main thread is checking this slot itself: the caller computes the MAC.
   */
  defer(start: number, bodyEnd: number): boolean {
    if (this.selfCheck) return false;
    if (this.n >= this.maxLines) throw new FastPathAbandoned('more lines in a slot than a slot can hold');
    const at = this.lines[this.cur]!;
    at[2 * this.n] = start;
    at[2 * this.n + 1] = bodyEnd;
    this.n++;
    return true;
  }

  /** Queues the last slot, takes back what the worker has not started, waits for the rest: returns only if every deferred MAC matched. */
  finish(): void {
    this.submit();
    if (!this.noSteal) {
      for (let s = 0; s < this.slots.length; s++) {
        if (Atomics.compareExchange(this.ctl, this.STATE + s, QUEUED, STOLEN) === QUEUED) {
          this.checkSlot(s);
          Atomics.store(this.ctl, this.STATE + s, FREE);
        }
      }
    }
    // Done once no slot is the worker's: it frees a slot only after counting what it found there.
    for (;;) {
      const done = Atomics.load(this.ctl, C_DONE);
      this.checkWorker();
      let busy = false;
      for (let s = 0; s < this.slots.length && !busy; s++) busy = Atomics.load(this.ctl, this.STATE + s) !== FREE;
      if (!busy) break;
      if (Atomics.wait(this.ctl, C_DONE, done, this.stallMs) === 'timed-out') throw new FastPathAbandoned(`the MAC worker finished nothing for ${this.stallMs} ms`);
    }
    this.checkWorker();
    const checked = Atomics.load(this.ctl, C_CHECKED) + this.mainChecked;
    if (checked !== this.deferred) throw new FastPathAbandoned(`${checked} deferred MACs were checked, ${this.deferred} were deferred`);
  }

  /** Stops the worker (whatever state it is in) and closes the file. Safe to call twice. */
  dispose(): void {
    this.close();
    if (this.disposed) return;
    this.disposed = true;
    // C_QUIT first, then a change to C_HEAD: a worker waiting for a job wakes and sees C_QUIT.
    Atomics.store(this.ctl, C_QUIT, 1);
    Atomics.add(this.ctl, C_HEAD, 1);
    Atomics.notify(this.ctl, C_HEAD);
    void this.worker.terminate().catch(() => undefined);
  }

  /** Lines whose deferred MAC the worker checked (and found right, once `finish` has returned). */
  get workerLines(): number {
    return Atomics.load(this.ctl, C_CHECKED);
  }

  /** Moves the unfinished line into a free slot, queues the current one for the worker, and reads on. */
  protected refill(): void {
    const rest = this.dataEnd - this.pos;
    if (rest >= this.slotBytes) throw new FastPathAbandoned(`a line longer than ${this.slotBytes} bytes`);
    const next = this.freeSlot();
    const nb = this.slots[next]!;
    if (rest > 0) this.buf.copy(nb, LINE_HEADROOM, this.pos, this.dataEnd);
    this.submit();
    this.checkWorker();
    this.cur = next;
    this.selfCheck = this.queued - Atomics.load(this.ctl, C_DONE) >= this.helpAtBacklog;
    this.readInto(nb, rest);
  }

  /** Queues the current slot for the worker if it left any MAC to it. */
  private submit(): void {
    if (this.n === 0) return;
    const s = this.cur;
    Atomics.store(this.ctl, this.COUNT + s, this.n);
    Atomics.store(this.ctl, this.STATE + s, QUEUED);
    Atomics.store(this.ctl, C_JOBS + (this.queued % this.slots.length), s);
    this.queued++;
    Atomics.store(this.ctl, C_HEAD, this.queued);
    Atomics.notify(this.ctl, C_HEAD);
    this.deferred += this.n;
    this.n = 0;
  }

  /** A slot other than the current one that nobody is using; waits for the worker only if there is none. */
  private freeSlot(): number {
    for (;;) {
      const done = Atomics.load(this.ctl, C_DONE);
      for (let i = 1; i < this.slots.length; i++) {
        const s = (this.cur + i) % this.slots.length;
        if (Atomics.load(this.ctl, this.STATE + s) === FREE) return s;
      }
      this.checkWorker();
      if (Atomics.wait(this.ctl, C_DONE, done, this.stallMs) === 'timed-out') throw new FastPathAbandoned(`the MAC worker finished nothing for ${this.stallMs} ms`);
    }
  }

  /** Checks a queued slot's MACs here (the worker had not started it). */
  private checkSlot(s: number): void {
    const buf = this.slots[s]!;
    const at = this.lines[s]!;
    const n = Atomics.load(this.ctl, this.COUNT + s);
    for (let i = 0; i < n; i++) {
      const start = at[2 * i]!;
      const end = at[2 * i + 1]!;
      const mac = this.mac.ofBytesInPlace(buf, start, end);
      for (let j = 0; j < MAC_HEX_LEN; j++) if (buf[end + MAC_OFFSET + j] !== mac.charCodeAt(j)) throw new FastPathAbandoned('a record MAC does not match');
    }
    this.mainChecked += n;
  }

  private checkWorker(): void {
    if (Atomics.load(this.ctl, C_BAD) !== 0) throw new FastPathAbandoned('a record MAC does not match');
    if (Atomics.load(this.ctl, C_FAILED) !== 0) throw new FastPathAbandoned('the MAC worker failed');
  }
}
