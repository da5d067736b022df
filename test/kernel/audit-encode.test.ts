// The audit encoder's fast paths against a frozen copy of the encoder they replaced: the bytes on
// disk (canonical JSON, MAC, line layout) must not change for any input, hostile ones included.
import { createHash, createHmac, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AuditMac, ChunkPool, LineBuffer, MAX_RECORD_BYTES, RECORD_PREFIX, canonicalJson, encodeRecordBody, sealLine, sortKeys } from '../../src/kernel/audit-record.js';
import { AUDIT_EVENT_TYPES, type AuditEvent } from '../../src/kernel/events.js';
import { quoteJson } from '../../src/kernel/json-quote.js';

// ---- the reference: the encoder as it was before the fast paths (keep it frozen) ----------------

const REF_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;
function refQuote(s: string): string {
  if (s.length > 32) return REF_ESCAPE.test(s) ? JSON.stringify(s) : '"' + s + '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x22 || c === 0x5c || (c >= 0xd800 && c <= 0xdfff)) return JSON.stringify(s);
  }
  return '"' + s + '"';
}

function refCanonical(value: unknown): string {
  return refValue(value, []) ?? 'null';
}

function refValue(value: unknown, ancestors: object[]): string | undefined {
  switch (typeof value) {
    case 'string':
      return refQuote(value);
    case 'number':
      return Number.isFinite(value) ? String(value) : 'null';
    case 'boolean':
      return value ? 'true' : 'false';
    case 'bigint':
      return '"' + value.toString() + '"';
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined;
  }
  if (value === null) return 'null';
  if (ancestors.length >= 32) return '"[too deep]"';
  const obj = value as { toJSON?: () => unknown };
  if (ancestors.includes(obj)) return '"[circular]"';
  const isArray = Array.isArray(obj);
  const keys = isArray ? [] : Object.keys(obj);
  const proto: unknown = isArray ? undefined : Object.getPrototypeOf(obj);
  const mayHaveToJSON = isArray || !(proto === Object.prototype || proto === null) || keys.includes('toJSON');
  if (mayHaveToJSON && typeof obj.toJSON === 'function') return refValue(obj.toJSON(), ancestors);
  ancestors.push(obj);
  let out: string;
  if (isArray) {
    const arr = obj as unknown[];
    out = '[';
    for (let i = 0; i < arr.length; i++) out += (i > 0 ? ',' : '') + (refValue(arr[i], ancestors) ?? 'null');
    out += ']';
  } else {
    let sorted = true;
    for (let i = 1; i < keys.length; i++) if (keys[i - 1]! > keys[i]!) sorted = false;
    if (!sorted) keys.sort();
    out = '{';
    let first = true;
    for (const k of keys) {
      const v = refValue((obj as Record<string, unknown>)[k], ancestors);
      if (v === undefined) continue;
      out += (first ? '' : ',') + refQuote(k) + ':' + v;
      first = false;
    }
    out += '}';
  }
  ancestors.pop();
  return out;
}

const REF_TYPES = new Set<string>(AUDIT_EVENT_TYPES);
function refNumber(n: unknown): string {
  return typeof n === 'number' && Number.isFinite(n) ? String(n) : 'null';
}
function refBody(seq: number, ts: string, event: AuditEvent, prev: string): string {
  let s = RECORD_PREFIX + seq + ',"ts":"' + ts + (REF_TYPES.has(event.type) ? `","type":"${event.type}"` : '","type":' + refQuote(String(event.type)));
  if (event.principal !== undefined) s += ',"principal":' + refQuote(String(event.principal));
  if (event.capabilityId !== undefined) s += ',"capabilityId":' + refQuote(String(event.capabilityId));
  const p = event.process;
  if (p !== undefined && p !== null) s += ',"process":{"pid":' + refNumber(p.pid) + ',"startTime":' + refNumber(p.startTime) + '}';
  if (event.details !== undefined && event.details !== null) {
    let d: string;
    try {
      d = refCanonical(event.details);
    } catch (err) {
      d = refCanonical({ unserialisable: (err as Error).message ?? String(err) });
    }
    if (d.length > MAX_RECORD_BYTES) d = refCanonical({ truncated: true, bytes: Buffer.byteLength(d), sha256: createHash('sha256').update(d).digest('hex') });
    s += ',"details":' + d;
  }
  return s + ',"prev":"' + prev + '"';
}

// ---- hostile inputs --------------------------------------------------------------------------

/** Strings that exercise every branch of quoting: escapes, controls, DEL, non-ASCII, surrogate pairs and lone halves, at lengths around the thresholds. */
const hostileChar = fc.constantFrom('a', 'Z', '0', ' ', '"', '\\', '\n', '\u0000', '\u001f', '\u007f', '\u0080', 'é', '日', '\u2028', '\ud83d\ude00', '\ud800', '\udfff', '/', ':');
const hostileString = fc.oneof(
  fc.string(),
  fc.string({ unit: 'grapheme' }),
  fc.string({ unit: 'binary' }),
  fc.array(hostileChar, { maxLength: 48 }).map((cs) => cs.join('')),
  fc.nat({ max: 40 }).chain((n) => fc.tuple(fc.constant('x'.repeat(n)), hostileChar)).map(([s, c]) => s + c),
  fc.constantFrom('toJSON', '__proto__', 'constructor', '1', '10', '2', '-1', '01', ''),
);
const hostileNumber = fc.oneof(fc.double(), fc.integer(), fc.constantFrom(-0, 0, NaN, Infinity, -Infinity, 1e21, 2 ** 31, -(2 ** 31), Number.MAX_SAFE_INTEGER, 5e-324));

/** Objects with user code in them: getters (throwing or not), toJSON (returning anything, or throwing), class instances, null prototypes. */
function withUserCode(inner: fc.Arbitrary<unknown>): fc.Arbitrary<unknown> {
  return fc.oneof(
    inner.map((v) => ({ toJSON: () => v })),
    inner.map((v) => ({ get g() { return v; }, b: 1 })),
    hostileString.map((m) => ({ a: 1, get boom(): never { throw new Error(m); } })),
    fc.constant({ get boom(): never { throw 'a string'; } }),
    fc.constant({ toJSON(): never { throw new RangeError('no JSON'); } }),
    inner.map((v) => Object.assign(Object.create(null) as Record<string, unknown>, { z: v, a: 2 })),
    inner.map((v) => new (class Thing { constructor(readonly x: unknown) {} })(v)),
    fc.constant(new Date(0)),
    fc.constant(new Map([[1, 2]])),
    fc.constant(Object.assign([1, 2], { toJSON: () => 'arr' })),
  );
}

const { value: hostileValue } = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    hostileString,
    hostileNumber,
    fc.boolean(),
    fc.bigInt(),
    fc.constantFrom(null, undefined, Symbol('s'), () => 1),
    fc.array(tie('value'), { maxLength: 5 }),
    fc.dictionary(hostileString, tie('value'), { maxKeys: 20 }),
    withUserCode(tie('value')),
  ),
}));

const hostileEvent: fc.Arbitrary<AuditEvent> = fc
  .record(
    {
      type: fc.oneof(fc.constantFrom(...AUDIT_EVENT_TYPES), hostileString),
      principal: fc.oneof(hostileString, hostileNumber),
      capabilityId: hostileString,
      process: fc.oneof(fc.constant(null), fc.record({ pid: fc.oneof(hostileNumber, hostileString), startTime: hostileNumber })),
      details: fc.oneof(hostileValue, fc.dictionary(hostileString, hostileValue, { maxKeys: 20 })),
    },
    { requiredKeys: ['type'] },
  )
  .map((e) => e as unknown as AuditEvent);

function outcome(f: () => string): { ok: true; value: string } | { ok: false; thrown: unknown } {
  try {
    return { ok: true, value: f() };
  } catch (thrown) {
    return { ok: false, thrown: thrown instanceof Error ? `${thrown.name}: ${thrown.message}` : thrown };
  }
}

function sealed(mac: AuditMac, body: string): { line: Buffer; mac: string } {
  const out = new LineBuffer(new ChunkPool(1024, 0));
  const m = mac.sealInto(out, body);
  return { line: Buffer.concat(out.take().views), mac: m };
}

describe('audit encoder fast paths (differential, against the encoder they replaced)', () => {
  it('quoteJson is JSON.stringify for every string, at every length around its thresholds', () => {
    fc.assert(
      fc.property(hostileString, (s) => {
        expect(quoteJson(s)).toBe(JSON.stringify(s));
        expect(quoteJson(s)).toBe(refQuote(s));
      }),
      { numRuns: 3000 },
    );
  });

  it('sortKeys orders like Array#sort (UTF-16 code units), for short and long key lists', () => {
    fc.assert(
      fc.property(fc.uniqueArray(hostileString, { maxLength: 24 }), (keys) => {
        const a = keys.slice();
        sortKeys(a);
        expect(a).toEqual(keys.slice().sort());
      }),
      { numRuns: 2000 },
    );
  });

  it('canonicalJson gives the same bytes as before for hostile values (getters, toJSON, cycles, depth, bigint, -0, NaN, lone surrogates)', () => {
    fc.assert(
      fc.property(hostileValue, (v) => {
        // Outside a record a throwing getter throws out of both: the same value.
        expect(outcome(() => canonicalJson(v))).toEqual(outcome(() => refCanonical(v)));
      }),
      { numRuns: 2000 },
    );
    const cyc: Record<string, unknown> = { b: 1 };
    cyc.a = [cyc, { cyc }];
    let deep: unknown = 'bottom';
    for (let i = 0; i < 40; i++) deep = { [`k${i}`]: deep, a: [i] };
    for (const v of [cyc, deep, { x: -0, y: NaN, z: [undefined, () => 1, Symbol('q')], w: 10n }]) expect(canonicalJson(v)).toBe(refCanonical(v));
  });

  it('encodeRecordBody + sealInto give the same line and MAC as before, for hostile events', () => {
    const key = randomBytes(32);
    const mac = new AuditMac(key);
    const prev = createHash('sha256').update('prev').digest('hex');
    fc.assert(
      fc.property(hostileEvent, fc.nat(), (e, seq) => {
        const ts = new Date(1_790_000_000_000 + seq).toISOString();
        const ref = outcome(() => refBody(seq, ts, e, prev));
        expect(outcome(() => encodeRecordBody(seq, ts, e, prev))).toEqual(ref);
        if (!ref.ok) return; // a header field whose String() throws: the same throw from both
        const body = ref.value;
        const { line, mac: m } = sealed(mac, body);
        expect(m).toBe(createHmac('sha256', key).update(body).digest('hex'));
        expect(line.equals(Buffer.from(sealLine(body, m), 'utf8'))).toBe(true);
      }),
      { numRuns: 1500 },
    );
  });

  it('keeps the oversize-details digest and the unserialisable fallback byte for byte', () => {
    const key = randomBytes(32);
    const mac = new AuditMac(key);
    const prev = '0'.repeat(64);
    const cases: AuditEvent[] = [
      { type: 'access_denied', details: { big: 'x'.repeat(MAX_RECORD_BYTES) } },
      { type: 'access_denied', details: { big: 'é'.repeat(MAX_RECORD_BYTES / 2 + 1) } },
      { type: 'access_denied', details: { big: '日'.repeat(MAX_RECORD_BYTES / 3), ok: true } },
      { type: 'access_denied', details: { get boom(): never { throw new Error('x'.repeat(MAX_RECORD_BYTES + 10)); } } },
      { type: 'access_denied', principal: 'p'.repeat(200_000), capabilityId: '\ud800'.repeat(30_000) },
    ];
    for (const e of cases) {
      const body = encodeRecordBody(5, '2026-01-01T00:00:00.000Z', e, prev);
      expect(body).toBe(refBody(5, '2026-01-01T00:00:00.000Z', e, prev));
      const { line, mac: m } = sealed(mac, body);
      expect(m).toBe(createHmac('sha256', key).update(body).digest('hex'));
      expect(line.equals(Buffer.from(sealLine(body, m), 'utf8'))).toBe(true);
    }
  });

  it('seals many lines into one buffer back to back, across chunk boundaries, exactly as sealLine would', () => {
    const key = randomBytes(32);
    const mac = new AuditMac(key);
    const out = new LineBuffer(new ChunkPool(4096, 4));
    let expected = '';
    let prev = '0'.repeat(64);
    for (let i = 0; i < 500; i++) {
      const body = encodeRecordBody(i + 1, '2026-01-01T00:00:00.000Z', { type: 'capability_validated', principal: `agent-${i % 7}`, details: { i, pad: 'é'.repeat(i % 50) } }, prev);
      const m = mac.sealInto(out, body);
      expected += sealLine(body, m);
      prev = m;
    }
    expect(Buffer.concat(out.take().views).toString('utf8')).toBe(expected);
  });
});
