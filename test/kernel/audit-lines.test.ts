import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LINE_HEADROOM, LineReader, forEachLine } from '../../src/kernel/audit-lines.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'captrap-lines-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function readAll(path: string, chunk: number): { text: string; terminated: boolean; headroom: boolean }[] {
  const r = new LineReader(path, chunk);
  const out: { text: string; terminated: boolean; headroom: boolean }[] = [];
  try {
    while (r.next()) out.push({ text: r.text(), terminated: r.terminated, headroom: r.start >= LINE_HEADROOM });
  } finally {
    r.close();
  }
  return out;
}

describe('LineReader', () => {
  it('returns every line across chunk boundaries, grows for a line longer than its buffer, and flags a torn last line', () => {
    const lines = ['a', '', 'x'.repeat(50), 'é日本', 'y'.repeat(7), 'z'.repeat(200)];
    const path = join(dir, 'f');
    writeFileSync(path, lines.join('\n') + '\ntorn');
    for (const chunk of [1, 3, 16, 64, 4096]) {
      const got = readAll(path, chunk);
      expect(got.map((g) => g.text), `chunk ${chunk}`).toEqual([...lines, 'torn']);
      expect(got.map((g) => g.terminated)).toEqual([...lines.map(() => true), false]);
      // Every line keeps the headroom in front of it that the in-place MAC writes into.
      expect(got.every((g) => g.headroom)).toBe(true);
    }
  });

  it('reads an empty file as no lines, a lone newline as one empty line, and stops early when asked', () => {
    const empty = join(dir, 'empty');
    writeFileSync(empty, '');
    expect(readAll(empty, 8)).toEqual([]);
    const nl = join(dir, 'nl');
    writeFileSync(nl, '\n');
    expect(readAll(nl, 8)).toEqual([{ text: '', terminated: true, headroom: true }]);
    const many = join(dir, 'many');
    writeFileSync(many, 'a\nb\nc\n');
    const seen: string[] = [];
    forEachLine(many, (r) => {
      seen.push(r.text());
      return seen.length < 2;
    });
    expect(seen).toEqual(['a', 'b']);
  });

  it('reuses its buffer for the next file', () => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    writeFileSync(a, 'one\ntwo-partial');
    writeFileSync(b, 'three\n');
    const r = new LineReader(a, 4);
    const seen: string[] = [];
    while (r.next()) seen.push(r.text());
    r.open(b);
    while (r.next()) seen.push(r.text());
    r.close();
    expect(seen).toEqual(['one', 'two-partial', 'three']);
  });
});
