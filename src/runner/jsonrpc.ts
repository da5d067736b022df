// Newline-delimited JSON-RPC 2.0 over a byte stream: the agent channels and the admin
// socket both speak it. The peer on the other side is untrusted, so every resource this
// module holds on its behalf is bounded: the bytes of one line, the requests in flight,
// and the bytes waiting to be written back (input is paused while the peer is not reading).
import { EventEmitter } from 'node:events';
import type { Readable, Writable } from 'node:stream';
import { CaptrapError } from '../errors.js';

/** Stable JSON-RPC error codes. Standard ones first, then captrap's (-32000..-32099 is the spec's server range). */
export const RPC_ERROR = {
  PARSE_ERROR: -32700,
  INVALID_REQUEST: -32600,
  METHOD_NOT_FOUND: -32601,
  INVALID_PARAMS: -32602,
  INTERNAL_ERROR: -32603,
  /** A capability check failed; `data.code` holds the kernel's reason code (E_REVOKED, E_TOOL_NOT_ALLOWED, ...). */
  ACCESS_DENIED: -32001,
  /** The sandbox could not be started or the tool failed to run. */
  SANDBOX_ERROR: -32002,
  /** A named thing (capability, agent, tool) does not exist. */
  NOT_FOUND: -32003,
  /** The line exceeded the channel's maximum line length and was discarded unread. */
  LINE_TOO_LONG: -32010,
  /** The server is shutting down or the connection is closed. */
  UNAVAILABLE: -32011,
  /** A request's own timeout ran out before its answer came. */
  TIMEOUT: -32012,
} as const;

export type RpcId = string | number | null;

export interface RpcErrorObject {
  code: number;
  message: string;
  data?: unknown;
}

/** An error a handler throws to answer with a specific JSON-RPC error; anything else becomes INTERNAL_ERROR. */
export class RpcError extends CaptrapError {
  readonly rpcCode: number;
  readonly data: unknown;

  constructor(rpcCode: number, message: string, data?: unknown) {
    super('E_RPC', message, data === undefined ? undefined : { data });
    this.rpcCode = rpcCode;
    this.data = data;
  }

  toJSON(): RpcErrorObject {
    return this.data === undefined ? { code: this.rpcCode, message: this.message } : { code: this.rpcCode, message: this.message, data: this.data };
  }
}

// ---------------------------------------------------------------------------------------------
// Framing

export type DecodedLine = { line: string } | { overflow: number };

/**
 * Splits a byte stream into lines of at most `maxLineBytes` bytes (newline excluded). A longer
 * line is not buffered: its bytes are counted and dropped up to the next newline, and one
 * `{overflow}` entry stands for it. Memory held is therefore at most `maxLineBytes` whatever
 * the peer sends.
 */
export class LineDecoder {
  private parts: Buffer[] = [];
  private size = 0;
  private discarding = false;
  private discarded = 0;

  constructor(readonly maxLineBytes: number) {
    if (!Number.isInteger(maxLineBytes) || maxLineBytes < 1) throw new RangeError('maxLineBytes must be a positive integer');
  }

  /** Bytes currently held for an unfinished line. */
  get buffered(): number {
    return this.size;
  }

  push(chunk: Buffer): DecodedLine[] {
    const out: DecodedLine[] = [];
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl === -1 ? chunk.length : nl;
      this.take(chunk.subarray(start, end));
      if (nl === -1) break;
      out.push(this.finishLine());
      start = nl + 1;
    }
    return out;
  }

  private take(piece: Buffer): void {
    if (piece.length === 0) return;
    if (this.discarding) {
      this.discarded += piece.length;
      return;
    }
    if (this.size + piece.length > this.maxLineBytes) {
      this.discarding = true;
      this.discarded = this.size + piece.length;
      this.parts = [];
      this.size = 0;
      return;
    }
    // Copy: the stream may reuse the chunk's memory once we return.
    this.parts.push(Buffer.from(piece));
    this.size += piece.length;
  }

  private finishLine(): DecodedLine {
    if (this.discarding) {
      const overflow = this.discarded;
      this.discarding = false;
      this.discarded = 0;
      return { overflow };
    }
    const buf = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.size);
    this.parts = [];
    this.size = 0;
    let line = buf.toString('utf8');
    if (line.endsWith('\r')) line = line.slice(0, -1);
    return { line };
  }
}

// ---------------------------------------------------------------------------------------------
// Messages

export type RpcMessage =
  | { kind: 'request'; id: string | number; method: string; params: unknown }
  | { kind: 'notification'; method: string; params: unknown }
  | { kind: 'response'; id: RpcId; result?: unknown; error?: RpcErrorObject }
  | { kind: 'invalid'; id: RpcId; error: RpcErrorObject };

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function validId(v: unknown): v is string | number {
  return (typeof v === 'string' && v.length <= 256) || (typeof v === 'number' && Number.isFinite(v));
}

/** Classifies one line. Never throws: malformed input becomes an `invalid` message carrying the error to send back. */
export function parseMessage(line: string): RpcMessage {
  let msg: unknown;
  try {
    msg = JSON.parse(line);
  } catch {
    return { kind: 'invalid', id: null, error: { code: RPC_ERROR.PARSE_ERROR, message: 'parse error: not valid JSON' } };
  }
  if (Array.isArray(msg)) {
    return { kind: 'invalid', id: null, error: { code: RPC_ERROR.INVALID_REQUEST, message: 'invalid request: batches are not supported' } };
  }
  if (!isPlainObject(msg)) {
    return { kind: 'invalid', id: null, error: { code: RPC_ERROR.INVALID_REQUEST, message: 'invalid request: not a JSON object' } };
  }
  const id = validId(msg.id) ? msg.id : null;
  if (msg.jsonrpc !== '2.0') {
    return { kind: 'invalid', id, error: { code: RPC_ERROR.INVALID_REQUEST, message: 'invalid request: "jsonrpc" must be "2.0"' } };
  }
  if ('method' in msg) {
    if (typeof msg.method !== 'string' || msg.method.length === 0 || msg.method.length > 128) {
      return { kind: 'invalid', id, error: { code: RPC_ERROR.INVALID_REQUEST, message: 'invalid request: "method" must be a non-empty string' } };
    }
    if ('params' in msg && !isPlainObject(msg.params) && !Array.isArray(msg.params)) {
      return { kind: 'invalid', id, error: { code: RPC_ERROR.INVALID_REQUEST, message: 'invalid request: "params" must be an object or an array' } };
    }
    if (!('id' in msg)) return { kind: 'notification', method: msg.method, params: msg.params };
    if (!validId(msg.id)) {
      return { kind: 'invalid', id: null, error: { code: RPC_ERROR.INVALID_REQUEST, message: 'invalid request: "id" must be a string or a finite number' } };
    }
    return { kind: 'request', id: msg.id, method: msg.method, params: msg.params };
  }
  if ('result' in msg || 'error' in msg) {
    const error = msg.error;
    if (error !== undefined && !(isPlainObject(error) && typeof error.code === 'number' && typeof error.message === 'string')) {
      return { kind: 'invalid', id, error: { code: RPC_ERROR.INVALID_REQUEST, message: 'invalid response: malformed "error"' } };
    }
    return error === undefined ? { kind: 'response', id, result: msg.result } : { kind: 'response', id, error: error as unknown as RpcErrorObject };
  }
  return { kind: 'invalid', id, error: { code: RPC_ERROR.INVALID_REQUEST, message: 'invalid request: neither a request nor a response' } };
}

// ---------------------------------------------------------------------------------------------
// Connection

export type RpcHandler = (params: unknown, method: string) => unknown;

export interface RpcConnectionOptions {
  /** Methods this side serves. A method not listed answers METHOD_NOT_FOUND. */
  handlers?: Readonly<Record<string, RpcHandler>>;
  /** Longest accepted line in bytes (default 1 MiB). */
  maxLineBytes?: number;
  /** Requests handled at once; input is paused beyond this (default 64). */
  maxInFlight?: number;
  /**
   * Output bytes queued before input is paused until the peer reads (default 1 MiB). Answers
   * of requests already in flight still land on top, so what a non-reading peer can pin is
   * about this plus `maxInFlight` answers.
   */
  maxPendingWriteBytes?: number;
  /**
   * Lines handled in one turn of the event loop before this connection yields (default 32).
   * Handlers that answer at once settle in microtasks, so without a turn budget one peer's
   * pipelined backlog would be worked off in a single macrotask while every other connection
   * waits; with it, connections take turns (round-robin through the event loop).
   */
  maxPerTurn?: number;
}

export interface RpcConnectionEvents {
  /** A line that was not a valid message, or a too-long line: the connection answered it and goes on. */
  protocolError: [error: RpcErrorObject];
  close: [];
}

/**
 * One JSON-RPC peer over a readable and a writable stream: serves `handlers` and can call
 * the other side. A bad line is answered and the connection goes on serving; nothing the
 * peer sends can make this side throw or hold unbounded memory.
 */
export class RpcConnection extends EventEmitter<RpcConnectionEvents> {
  private readonly decoder: LineDecoder;
  private readonly handlers: Readonly<Record<string, RpcHandler>>;
  private readonly maxInFlight: number;
  private readonly maxPendingWriteBytes: number;
  private readonly pending = new Map<string | number, { resolve(v: unknown): void; reject(e: unknown): void; timer?: NodeJS.Timeout }>();
  private queue: DecodedLine[] = [];
  private inFlight = 0;
  private nextId = 1;
  private closed = false;
  private paused = false;
  private readonly maxPerTurn: number;
  /** Lines handled in the current turn; reset by the setImmediate scheduled when the turn began. */
  private turnCount = 0;

  constructor(
    private readonly input: Readable,
    private readonly output: Writable,
    options: RpcConnectionOptions = {},
  ) {
    super();
    this.decoder = new LineDecoder(options.maxLineBytes ?? 1024 * 1024);
    this.handlers = options.handlers ?? {};
    this.maxInFlight = options.maxInFlight ?? 64;
    this.maxPendingWriteBytes = options.maxPendingWriteBytes ?? 1024 * 1024;
    this.maxPerTurn = options.maxPerTurn ?? 32;
    if (!Number.isInteger(this.maxPerTurn) || this.maxPerTurn < 1) throw new RangeError('maxPerTurn must be a positive integer');
    input.on('data', (chunk: Buffer | string) => this.onData(typeof chunk === 'string' ? Buffer.from(chunk) : chunk));
    input.on('end', () => this.close());
    input.on('close', () => this.close());
    input.on('error', () => this.close());
    output.on('error', () => this.close());
    output.on('drain', () => this.pump());
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Calls `method` on the peer. Rejects with RpcError on an error answer, a timeout, or a closed connection. */
  call(method: string, params?: unknown, options: { timeoutMs?: number } = {}): Promise<unknown> {
    if (this.closed) return Promise.reject(new RpcError(RPC_ERROR.UNAVAILABLE, 'connection closed'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const entry: { resolve(v: unknown): void; reject(e: unknown): void; timer?: NodeJS.Timeout } = { resolve, reject };
      if (options.timeoutMs !== undefined) {
        entry.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new RpcError(RPC_ERROR.TIMEOUT, `${method}: no answer within ${options.timeoutMs} ms`));
        }, options.timeoutMs);
      }
      this.pending.set(id, entry);
      this.send(params === undefined ? { jsonrpc: '2.0', id, method } : { jsonrpc: '2.0', id, method, params });
    });
  }

  notify(method: string, params?: unknown): void {
    this.send(params === undefined ? { jsonrpc: '2.0', method } : { jsonrpc: '2.0', method, params });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    for (const [, p] of this.pending) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(new RpcError(RPC_ERROR.UNAVAILABLE, 'connection closed'));
    }
    this.pending.clear();
    this.emit('close');
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    for (const item of this.decoder.push(chunk)) this.queue.push(item);
    this.pump();
  }

  /** Handles queued lines while in-flight and output limits allow; pauses the input otherwise. */
  private pump(): void {
    while (!this.closed && this.queue.length > 0 && this.inFlight < this.maxInFlight && !this.outputFull() && this.turnCount < this.maxPerTurn) {
      if (this.turnCount++ === 0) setImmediate(this.endTurn);
      this.handle(this.queue.shift()!);
    }
    // Lines queued while paused are bounded: at most what one read delivered after the pause.
    const shouldPause = !this.closed && (this.queue.length > 0 || this.inFlight >= this.maxInFlight || this.outputFull());
    if (shouldPause && !this.paused) {
      this.paused = true;
      this.input.pause();
    } else if (!shouldPause && this.paused) {
      this.paused = false;
      this.input.resume();
    }
  }

  /**
   * The turn ends once the event loop has gone round (poll, where other peers' input is read,
   * comes before check): the rest of this peer's backlog waits behind everyone else's.
   */
  private readonly endTurn = (): void => {
    this.turnCount = 0;
    if (!this.closed && this.queue.length > 0) this.pump();
  };

  private outputFull(): boolean {
    return this.output.writableLength > this.maxPendingWriteBytes;
  }

  private handle(item: DecodedLine): void {
    if ('overflow' in item) {
      this.protocolError(null, { code: RPC_ERROR.LINE_TOO_LONG, message: `line of ${item.overflow} bytes exceeds the limit of ${this.decoder.maxLineBytes} bytes` });
      return;
    }
    if (item.line.trim() === '') return;
    const msg = parseMessage(item.line);
    switch (msg.kind) {
      case 'invalid':
        this.protocolError(msg.id, msg.error);
        return;
      case 'response':
        this.settle(msg);
        return;
      case 'notification':
      case 'request':
        this.dispatch(msg);
        return;
    }
  }

  private protocolError(id: RpcId, error: RpcErrorObject): void {
    this.emit('protocolError', error);
    this.send({ jsonrpc: '2.0', id, error });
  }

  private settle(msg: { id: RpcId; result?: unknown; error?: RpcErrorObject }): void {
    if (msg.id === null) return;
    const p = this.pending.get(msg.id);
    if (!p) return; // an answer to nothing we asked: ignore rather than trust it
    this.pending.delete(msg.id);
    if (p.timer) clearTimeout(p.timer);
    if (msg.error) p.reject(new RpcError(msg.error.code, msg.error.message, msg.error.data));
    else p.resolve(msg.result);
  }

  private dispatch(msg: { kind: 'request' | 'notification'; method: string; params: unknown; id?: string | number }): void {
    const id = msg.kind === 'request' ? msg.id! : undefined;
    const handler = Object.hasOwn(this.handlers, msg.method) ? this.handlers[msg.method] : undefined;
    if (!handler) {
      if (id !== undefined) this.send({ jsonrpc: '2.0', id, error: { code: RPC_ERROR.METHOD_NOT_FOUND, message: `method not found: ${msg.method}` } });
      return;
    }
    this.inFlight++;
    let result: Promise<unknown>;
    try {
      result = Promise.resolve(handler(msg.params, msg.method));
    } catch (err) {
      result = Promise.reject(err);
    }
    result.then(
      (value) => {
        if (id !== undefined) this.send({ jsonrpc: '2.0', id, result: value === undefined ? null : value });
      },
      (err: unknown) => {
        if (id !== undefined) this.send({ jsonrpc: '2.0', id, error: toRpcError(err) });
      },
    ).finally(() => {
      this.inFlight--;
      this.pump();
    });
  }

  private send(msg: object): void {
    if (this.closed || this.output.destroyed || this.output.writableEnded) return;
    let line: string;
    try {
      line = JSON.stringify(msg);
    } catch {
      const id = (msg as { id?: RpcId }).id ?? null;
      line = JSON.stringify({ jsonrpc: '2.0', id, error: { code: RPC_ERROR.INTERNAL_ERROR, message: 'internal error: result is not serialisable' } });
    }
    this.output.write(line + '\n');
  }
}

/** Maps a thrown value to the error object sent to the peer: RpcError as is, typed captrap errors with their code, anything else opaque. */
export function toRpcError(err: unknown): RpcErrorObject {
  if (err instanceof RpcError) return err.toJSON();
  if (err instanceof CaptrapError) return { code: RPC_ERROR.INTERNAL_ERROR, message: err.message, data: { code: err.code } };
  // Internal failures are not described to an untrusted peer; the sidecar logs them.
  return { code: RPC_ERROR.INTERNAL_ERROR, message: 'internal error' };
}
