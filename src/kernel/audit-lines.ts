// Reads a segment file line by line through one reused buffer: verify and the readers hold one
// chunk of a segment at a time, never a whole segment or log, so their memory does not grow
// with the log (only with its longest line).
import { closeSync, openSync, readSync } from 'node:fs';

/** Bytes kept free before every line (see AuditMac.ofLineInPlace): the HMAC's K^ipad block goes there. */
export const LINE_HEADROOM = 64;
const DEFAULT_CHUNK = 4 * 1024 * 1024;

/**
 * Line scanning over a buffer refilled from one file at a time; how the buffer is refilled is the
 * subclass's (LineReader: one reused buffer; verify's MacOffload: a ring of shared slots).
 */
export abstract class LineScanner {
  /** The line is buf[start, end) (without its newline); buf[start - LINE_HEADROOM, start) may be overwritten. */
  buf: Buffer;
  start = 0;
  end = 0;
  /** False for a last line without a newline (a torn write). */
  terminated = false;
  protected view: Buffer;
  protected pos = LINE_HEADROOM;
  protected dataEnd = LINE_HEADROOM;
  protected filePos = 0;
  protected eof = false;
  protected fd: number | undefined;

  protected constructor(buf: Buffer) {
    this.buf = buf;
    this.view = buf.subarray(0, this.dataEnd);
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

  /** Moves the unfinished line, buf[pos, dataEnd), to the front of a buffer and reads more after it. */
  protected abstract refill(): void;

  /** Fills `into` after its first `rest` data bytes (which the caller placed after the headroom) from the file; it becomes the buffer. */
  protected readInto(into: Buffer, rest: number): void {
    this.buf = into;
    this.pos = LINE_HEADROOM;
    this.dataEnd = LINE_HEADROOM + rest;
    while (this.dataEnd < into.length) {
      const n = readSync(this.fd!, into, this.dataEnd, into.length - this.dataEnd, this.filePos);
      if (n === 0) {
        this.eof = true;
        break;
      }
      this.dataEnd += n;
      this.filePos += n;
    }
    this.view = into.subarray(0, this.dataEnd);
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

export class LineReader extends LineScanner {
  constructor(path: string, chunkBytes = DEFAULT_CHUNK) {
    super(Buffer.allocUnsafe(LINE_HEADROOM + chunkBytes));
    this.open(path);
  }

  /** Grows only for a line longer than the buffer. */
  protected refill(): void {
    const rest = this.dataEnd - this.pos;
    let into = this.buf;
    if (rest >= this.buf.length - LINE_HEADROOM) {
      into = Buffer.allocUnsafe(LINE_HEADROOM + rest * 2);
      this.buf.copy(into, LINE_HEADROOM, this.pos, this.dataEnd);
    } else if (rest > 0) this.buf.copy(this.buf, LINE_HEADROOM, this.pos, this.dataEnd);
    this.readInto(into, rest);
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
