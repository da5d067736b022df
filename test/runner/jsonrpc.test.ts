import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { LineDecoder, RPC_ERROR, RpcConnection, RpcError, parseMessage } from '../../src/runner/jsonrpc.js';

/** A server connection plus the raw client side: what we write to `toServer` the server reads. */
function serve(handlers: ConstructorParameters<typeof RpcConnection>[2] = {}) {
  const toServer = new PassThrough();
  const fromServer = new PassThrough();
  const conn = new RpcConnection(toServer, fromServer, handlers);
  const lines: unknown[] = [];
  let partial = '';
  fromServer.on('data', (c: Buffer) => {
    partial += c.toString();
    let i: number;
    while ((i = partial.indexOf('\n')) !== -1) {
      lines.push(JSON.parse(partial.slice(0, i)));
      partial = partial.slice(i + 1);
    }
  });
  const answers = async (n: number) => {
    for (let t = 0; t < 500 && lines.length < n; t++) await new Promise((r) => setTimeout(r, 5));
    return lines;
  };
  return { conn, toServer, fromServer, lines, answers };
}

describe('LineDecoder', () => {
  it('splits lines across chunk boundaries and strips CR', () => {
    const d = new LineDecoder(100);
    expect(d.push(Buffer.from('{"a":'))).toEqual([]);
    expect(d.push(Buffer.from('1}\r\n{"b"'))).toEqual([{ line: '{"a":1}' }]);
    expect(d.push(Buffer.from(':2}\n\n'))).toEqual([{ line: '{"b":2}' }, { line: '' }]);
  });

  it('drops a line longer than the limit without holding it, and recovers at the next newline', () => {
    const d = new LineDecoder(1024);
    const mb = Buffer.alloc(1024 * 1024, 0x61);
    let maxHeld = 0;
    for (let i = 0; i < 100; i++) {
      expect(d.push(mb)).toEqual([]);
      maxHeld = Math.max(maxHeld, d.buffered);
    }
    expect(maxHeld).toBeLessThanOrEqual(1024);
    expect(d.push(Buffer.from('\n{"ok":true}\n'))).toEqual([{ overflow: 100 * 1024 * 1024 }, { line: '{"ok":true}' }]);
  });

  it('counts the limit in bytes, not characters', () => {
    const d = new LineDecoder(4);
    expect(d.push(Buffer.from('ééé\n'))).toEqual([{ overflow: 6 }]);
  });
});

describe('parseMessage', () => {
  it.each([
    ['not json', RPC_ERROR.PARSE_ERROR],
    ['\u0000\u0001\u00ff garbage', RPC_ERROR.PARSE_ERROR],
    ['[{"jsonrpc":"2.0","id":1,"method":"x"}]', RPC_ERROR.INVALID_REQUEST],
    ['42', RPC_ERROR.INVALID_REQUEST],
    ['{"id":1,"method":"x"}', RPC_ERROR.INVALID_REQUEST],
    ['{"jsonrpc":"2.0","id":1,"method":7}', RPC_ERROR.INVALID_REQUEST],
    ['{"jsonrpc":"2.0","id":{"x":1},"method":"m"}', RPC_ERROR.INVALID_REQUEST],
    ['{"jsonrpc":"2.0","id":1,"method":"m","params":"str"}', RPC_ERROR.INVALID_REQUEST],
    ['{"jsonrpc":"2.0","id":1}', RPC_ERROR.INVALID_REQUEST],
  ])('rejects %j with code %i', (line, code) => {
    const m = parseMessage(line);
    expect(m.kind).toBe('invalid');
    if (m.kind === 'invalid') expect(m.error.code).toBe(code);
  });

  it('keeps the id of a malformed request so the caller can match the error', () => {
    const m = parseMessage('{"jsonrpc":"1.0","id":"abc","method":"m"}');
    expect(m).toMatchObject({ kind: 'invalid', id: 'abc' });
  });

  it('does not let "__proto__" params or method names reach prototypes', () => {
    const m = parseMessage('{"jsonrpc":"2.0","id":1,"method":"m","params":{"__proto__":{"polluted":true}}}');
    expect(m.kind).toBe('request');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe('RpcConnection', () => {
  it('answers requests, errors, unknown methods, and ignores notifications without replying', async () => {
    const seen: unknown[] = [];
    const { toServer, answers } = serve({
      handlers: {
        echo: (p) => p,
        fail: () => {
          throw new RpcError(RPC_ERROR.ACCESS_DENIED, 'denied', { code: 'E_TOOL_NOT_ALLOWED' });
        },
        boom: () => {
          throw new Error('secret internal detail');
        },
        note: (p) => void seen.push(p),
      },
    });
    toServer.write('{"jsonrpc":"2.0","method":"note","params":{"n":1}}\n');
    toServer.write('{"jsonrpc":"2.0","id":1,"method":"echo","params":{"x":1}}\n');
    toServer.write('{"jsonrpc":"2.0","id":2,"method":"fail"}\n');
    toServer.write('{"jsonrpc":"2.0","id":3,"method":"boom"}\n');
    toServer.write('{"jsonrpc":"2.0","id":4,"method":"toString"}\n');
    const out = (await answers(4)) as Array<{ id: number }>;
    const byId = new Map(out.map((l) => [l.id, l]));
    expect(byId.get(1)).toEqual({ jsonrpc: '2.0', id: 1, result: { x: 1 } });
    expect(byId.get(2)).toEqual({ jsonrpc: '2.0', id: 2, error: { code: RPC_ERROR.ACCESS_DENIED, message: 'denied', data: { code: 'E_TOOL_NOT_ALLOWED' } } });
    expect(byId.get(3)).toEqual({ jsonrpc: '2.0', id: 3, error: { code: RPC_ERROR.INTERNAL_ERROR, message: 'internal error' } });
    expect(byId.get(4)).toMatchObject({ error: { code: RPC_ERROR.METHOD_NOT_FOUND } });
    expect(out).toHaveLength(4);
    expect(seen).toEqual([{ n: 1 }]);
  });

  it('survives garbage and an oversized line, then keeps serving', async () => {
    const { conn, toServer, answers } = serve({ handlers: { ping: () => 'pong' }, maxLineBytes: 64 * 1024 });
    const errors: number[] = [];
    conn.on('protocolError', (e) => errors.push(e.code));
    toServer.write(Buffer.from([0xff, 0xfe, 0x00, 0x0a]));
    toServer.write('x'.repeat(1024 * 1024) + '\n');
    toServer.write('{"jsonrpc":"2.0","id":"p","method":"ping"}\n');
    const out = (await answers(3)) as Array<{ id: unknown; result?: unknown }>;
    expect(errors).toEqual([RPC_ERROR.PARSE_ERROR, RPC_ERROR.LINE_TOO_LONG]);
    expect(out.find((l) => l.id === 'p')?.result).toBe('pong');
    expect(conn.isClosed).toBe(false);
  });

  it('bounds requests in flight and answers every one of a 10 000-request flood', async () => {
    let running = 0;
    let peak = 0;
    const { toServer, answers } = serve({
      maxInFlight: 8,
      handlers: {
        slow: async () => {
          running++;
          peak = Math.max(peak, running);
          await new Promise((r) => setImmediate(r));
          running--;
          return 1;
        },
      },
    });
    const flood = Array.from({ length: 10_000 }, (_, i) => `{"jsonrpc":"2.0","id":${i},"method":"slow"}\n`).join('');
    toServer.write(flood);
    const out = await answers(10_000);
    expect(out).toHaveLength(10_000);
    expect(peak).toBeLessThanOrEqual(8);
  });

  it('stops reading a peer that does not read its answers', async () => {
    const { toServer, fromServer } = serve({ handlers: { big: () => 'y'.repeat(64 * 1024) }, maxPendingWriteBytes: 256 * 1024, maxInFlight: 4 });
    fromServer.pause();
    fromServer.removeAllListeners('data');
    for (let i = 0; i < 200; i++) toServer.write(`{"jsonrpc":"2.0","id":${i},"method":"big"}\n`);
    await new Promise((r) => setTimeout(r, 100));
    // Queued answers stay within the cap plus the in-flight answers (256 KiB + 4 x 64 KiB + one
    // stream buffer), not 200 x 64 KiB.
    expect(fromServer.writableLength + fromServer.readableLength).toBeLessThan(600 * 1024);
    expect(toServer.isPaused()).toBe(true);
  });

  it('calls the peer and matches answers by id; rejects pending calls on close', async () => {
    const a2b = new PassThrough();
    const b2a = new PassThrough();
    const server = new RpcConnection(a2b, b2a, { handlers: { add: (p) => (p as number[]).reduce((x, y) => x + y, 0) } });
    const client = new RpcConnection(b2a, a2b);
    await expect(client.call('add', [1, 2, 3])).resolves.toBe(6);
    await expect(client.call('nope')).rejects.toMatchObject({ rpcCode: RPC_ERROR.METHOD_NOT_FOUND });
    const never = new RpcConnection(new PassThrough(), new PassThrough());
    const p = never.call('x');
    never.close();
    await expect(p).rejects.toMatchObject({ rpcCode: RPC_ERROR.UNAVAILABLE });
    await expect(never.call('x', undefined, { timeoutMs: 10 })).rejects.toBeInstanceOf(RpcError);
    server.close();
    client.close();
  });

  it('times out a call whose answer never comes', async () => {
    const silent = new RpcConnection(new PassThrough(), new PassThrough());
    await expect(silent.call('x', undefined, { timeoutMs: 20 })).rejects.toMatchObject({ rpcCode: RPC_ERROR.TIMEOUT });
    silent.close();
  });
});
