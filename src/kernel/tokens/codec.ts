// A small canonical binary encoding for token payloads. JSON has more than one spelling for the
// same value (key order, whitespace, number forms, escapes), so two encoders could disagree on
// the bytes a signature covers; here every value has exactly one encoding: map keys sorted by
// their UTF-8 bytes, integers as minimal LEB128, no duplicate keys. The decoder checks each of
// these rules as it reads (strictly increasing keys, minimal varints, an integer never written
// as a float), so a non-canonical input is refused, never "fixed"; a property test checks that
// decoding accepts exactly what the encoder produces.
//
// Values: null, booleans, non-negative safe integers, other finite numbers (float64), strings,
// byte arrays, arrays and string-keyed maps. Nothing else is representable.

export type CanonicalValue =
  | null
  | boolean
  | number
  | string
  | Uint8Array
  | readonly CanonicalValue[]
  | { readonly [key: string]: CanonicalValue | undefined };

const NULL = 0x00;
const FALSE = 0x01;
const TRUE = 0x02;
const UINT = 0x03;
const FLOAT = 0x04;
const STRING = 0x05;
const BYTES = 0x06;
const ARRAY = 0x07;
const MAP = 0x08;

/** How deep arrays and maps may nest; token payloads need four or five levels. */
const MAX_NESTING = 16;

export class CodecError extends Error {}

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

class Writer {
  private buf = Buffer.allocUnsafe(256);
  private len = 0;

  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  byte(b: number): void {
    this.ensure(1);
    this.buf[this.len++] = b;
  }

  varint(n: number): void {
    // Non-negative safe integers only: 7 bits per byte, high bit = more.
    this.ensure(8);
    while (n >= 0x80) {
      this.buf[this.len++] = (n % 0x80) | 0x80;
      n = Math.floor(n / 0x80);
    }
    this.buf[this.len++] = n;
  }

  bytes(b: Uint8Array): void {
    this.varint(b.length);
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  float(n: number): void {
    this.ensure(8);
    this.buf.writeDoubleBE(n, this.len);
    this.len += 8;
  }

  result(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.len));
  }
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  return Buffer.compare(a, b);
}

function write(w: Writer, v: CanonicalValue, depth: number): void {
  if (depth > MAX_NESTING) throw new CodecError(`nested deeper than ${MAX_NESTING}`);
  if (v === null) return w.byte(NULL);
  switch (typeof v) {
    case 'boolean':
      return w.byte(v ? TRUE : FALSE);
    case 'number':
      if (!Number.isFinite(v)) throw new CodecError('numbers must be finite');
      if (Number.isSafeInteger(v) && v >= 0 && !Object.is(v, -0)) {
        w.byte(UINT);
        return w.varint(v);
      }
      w.byte(FLOAT);
      return w.float(v);
    case 'string':
      w.byte(STRING);
      return w.bytes(utf8.encode(v));
    case 'object':
      break;
    default:
      throw new CodecError(`cannot encode a ${typeof v}`);
  }
  if (v instanceof Uint8Array) {
    w.byte(BYTES);
    return w.bytes(v);
  }
  if (Array.isArray(v)) {
    w.byte(ARRAY);
    w.varint(v.length);
    for (const x of v as readonly CanonicalValue[]) write(w, x, depth + 1);
    return;
  }
  const entries: [Uint8Array, CanonicalValue][] = [];
  for (const [k, x] of Object.entries(v)) if (x !== undefined) entries.push([utf8.encode(k), x]);
  entries.sort((a, b) => compareBytes(a[0], b[0]));
  w.byte(MAP);
  w.varint(entries.length);
  for (const [k, x] of entries) {
    w.bytes(k);
    write(w, x, depth + 1);
  }
}

/** The one encoding of `v`. Keys whose value is `undefined` are left out, as if absent. */
export function encodeCanonical(v: CanonicalValue): Buffer {
  const w = new Writer();
  write(w, v, 0);
  return w.result();
}

class Reader {
  pos = 0;
  constructor(private readonly buf: Uint8Array) {}

  byte(): number {
    if (this.pos >= this.buf.length) throw new CodecError('truncated');
    return this.buf[this.pos++]!;
  }

  varint(): number {
    let n = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.byte();
      n += (b & 0x7f) * scale;
      if (!Number.isSafeInteger(n)) throw new CodecError('integer too large');
      if ((b & 0x80) === 0) {
        // A final zero byte after the first adds nothing: the same number has a shorter spelling.
        if (b === 0 && i > 0) throw new CodecError('not in canonical form: padded integer');
        return n;
      }
      scale *= 0x80;
    }
    throw new CodecError('integer too long');
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  take(n: number): Uint8Array {
    if (n > this.buf.length - this.pos) throw new CodecError('truncated');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

function read(r: Reader, depth: number): CanonicalValue {
  if (depth > MAX_NESTING) throw new CodecError(`nested deeper than ${MAX_NESTING}`);
  const tag = r.byte();
  switch (tag) {
    case NULL:
      return null;
    case FALSE:
      return false;
    case TRUE:
      return true;
    case UINT:
      return r.varint();
    case FLOAT: {
      const b = r.take(8);
      const n = Buffer.from(b.buffer, b.byteOffset, 8).readDoubleBE(0);
      if (!Number.isFinite(n)) throw new CodecError('numbers must be finite');
      if (Number.isSafeInteger(n) && n >= 0 && !Object.is(n, -0)) throw new CodecError('not in canonical form: integer written as a float');
      return n;
    }
    case STRING:
      return decodeUtf8(r.take(r.varint()));
    case BYTES:
      return Buffer.from(r.take(r.varint()));
    case ARRAY: {
      const n = r.varint();
      // Each element takes at least one byte: a count larger than what is left is a lie.
      if (n > r.remaining) throw new CodecError('truncated');
      const out: CanonicalValue[] = [];
      for (let i = 0; i < n; i++) out.push(read(r, depth + 1));
      return out;
    }
    case MAP: {
      const n = r.varint();
      if (n > r.remaining) throw new CodecError('truncated');
      // A null-prototype object: a key named __proto__ stays data.
      const out: Record<string, CanonicalValue> = Object.create(null) as Record<string, CanonicalValue>;
      let previous: Uint8Array | undefined;
      for (let i = 0; i < n; i++) {
        const kb = r.take(r.varint());
        if (previous !== undefined) {
          const order = compareBytes(previous, kb);
          if (order === 0) throw new CodecError(`duplicate key '${decodeUtf8(kb)}'`);
          if (order > 0) throw new CodecError('not in canonical form: map keys out of order');
        }
        previous = kb;
        out[decodeUtf8(kb)] = read(r, depth + 1);
      }
      return out;
    }
    default:
      throw new CodecError(`unknown type tag 0x${tag.toString(16)}`);
  }
}

function decodeUtf8(b: Uint8Array): string {
  try {
    return strictUtf8.decode(b);
  } catch {
    throw new CodecError('invalid UTF-8');
  }
}

/**
 * Decodes `bytes`, refusing anything that is not the canonical encoding of what it decodes to
 * (unsorted keys, padded integers, integers written as floats, trailing bytes...).
 */
export function decodeCanonical(bytes: Uint8Array): CanonicalValue {
  const r = new Reader(bytes);
  const v = read(r, 0);
  if (r.pos !== bytes.length) throw new CodecError(`${bytes.length - r.pos} trailing bytes`);
  return v;
}
