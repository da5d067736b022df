// Reads a segment file line by line through one reused buffer: verify and the readers hold one
// chunk of a segment at a time, never a whole segment or log, so their memory does not grow
// with the log (only with its longest line).
import { closeSync, openSync, readSync } from 'node:fs';

/** Bytes kept free before every line (see AuditMac.ofLineInPlace): the HMAC's K^ipad block goes there. */
export const LINE_HEADROOM = 64;
const DEFAULT_CHUNK = 4 * 1024 * 1024;

export class LineReader {
  /** The line is buf[start, end) (without its newline); buf[start - LINE_HEADROOM, start) may be overwritten. */
  buf: Buffer;
  start = 0;
  end = 0;
  /** False for a last line without a newline (a torn write). */
  terminated = false;
  private view: Buffer;
  private pos = LINE_HEADROOM;
  private dataEnd = LINE_HEADROOM;
  private filePos = 0;
  private eof = false;
  private fd: number | undefined;

  constructor(path: string, chunkBytes = DEFAULT_CHUNK) {
    this.buf = Buffer.allocUnsafe(LINE_HEADROOM + chunkBytes);
    this.view = this.buf.subarray(0, this.dataEnd);
    this.open(path);
  }

  /** Closes the current file and starts on `path`, keeping the buffer: one buffer for a whole log. */
  open(path: string): void {
    this.close();
    this.fd = openSync(path, 'r');
    this.pos = this.dataEnd = LINE_HEADROOM;
    this.filePos = 0;
    this.eof = false;
    this.view = this.buf.subarray(0, this.dataEnd);
  }

  /** Advances to the next line; false at the end of the file. */
  next(): boolean {
    for (;;) {
      // `view` ends where the data read so far ends: a newline beyond it is stale bytes.
      const nl = this.view.indexOf(0x0a, this.pos);
      if (nl >= 0) {
        this.start = this.pos;
        this.end = nl;
        this.pos = nl + 1;
        this.terminated = true;
        return true;
      }
      if (this.eof) {
        if (this.pos >= this.dataEnd) return false;
        this.start = this.pos;
        this.end = this.dataEnd;
        this.pos = this.dataEnd;
        this.terminated = false;
        return true;
      }
      this.refill();
    }
  }

  /** Moves the unfinished line to the front (after the headroom) and reads more after it; grows only for a line longer than the buffer. */
  private refill(): void {
    const rest = this.dataEnd - this.pos;
    if (rest >= this.buf.length - LINE_HEADROOM) {
      const bigger = Buffer.allocUnsafe(LINE_HEADROOM + rest * 2);
      this.buf.copy(bigger, LINE_HEADROOM, this.pos, this.dataEnd);
      this.buf = bigger;
    } else if (rest > 0) this.buf.copy(this.buf, LINE_HEADROOM, this.pos, this.dataEnd);
    this.pos = LINE_HEADROOM;
    this.dataEnd = LINE_HEADROOM + rest;
    while (this.dataEnd < this.buf.length) {
      const n = readSync(this.fd!, this.buf, this.dataEnd, this.buf.length - this.dataEnd, this.filePos);
      if (n === 0) {
        this.eof = true;
        break;
      }
      this.dataEnd += n;
      this.filePos += n;
    }
    this.view = this.buf.subarray(0, this.dataEnd);
  }

  /** The current line as text. */
  text(): string {
    return this.buf.toString('utf8', this.start, this.end);
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/** Calls `fn` for every line of the file (the reader's current line), closing the file afterwards; `fn` returns false to stop early. */
export function forEachLine(path: string, fn: (r: LineReader) => boolean | void): void {
  const r = new LineReader(path);
  try {
    while (r.next()) if (fn(r) === false) return;
  } finally {
    r.close();
  }
}
