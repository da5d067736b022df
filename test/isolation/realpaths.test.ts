// RealPaths must answer exactly what realpath(3) answers: it decides which paths a view binds
// and hides. Checked against realpathSync.native over a tree of awkward links.
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { afterAll, describe, expect, it } from 'vitest';
import { RealPaths } from '../../src/isolation/realpaths.js';

const root = realpathSync(mkdtempSync(`${tmpdir()}/captrap-realpaths-`));
afterAll(() => rmSync(root, { recursive: true, force: true }));

mkdirSync(`${root}/a/b/c`, { recursive: true });
writeFileSync(`${root}/a/b/c/file`, 'x');
writeFileSync(`${root}/a/plain`, 'x');
symlinkSync('b', `${root}/a/rel`); // relative, same directory
symlinkSync(`${root}/a/b/c`, `${root}/abs`); // absolute
symlinkSync('../a/rel/c', `${root}/a/up`); // relative with .. through another link
symlinkSync('up', `${root}/a/chain`); // a chain of links
symlinkSync('c/..', `${root}/a/b/dotdot`); // .. after a real directory
symlinkSync('rel/c/../c/file', `${root}/a/tofile`);
symlinkSync('nowhere', `${root}/a/dangling`);
symlinkSync('loop2', `${root}/a/loop1`);
symlinkSync('loop1', `${root}/a/loop2`);
symlinkSync('/', `${root}/a/toroot`);

function native(p: string): string | undefined {
  try {
    return realpathSync.native(p);
  } catch {
    return undefined;
  }
}

const cases = [
  '/',
  '/etc',
  '/etc/shadow',
  '/bin/sh',
  '/usr/bin/true',
  '/no/such/path',
  `${root}/a`,
  `${root}/a/rel`,
  `${root}/a/rel/c/file`,
  `${root}/abs`,
  `${root}/abs/file`,
  `${root}/a/up`,
  `${root}/a/up/file`,
  `${root}/a/chain/file`,
  `${root}/a/b/dotdot`,
  `${root}/a/b/dotdot/c`,
  `${root}/a/tofile`,
  `${root}/a/tofile/x`,
  `${root}/a/plain/x`,
  `${root}/a/dangling`,
  `${root}/a/dangling/x`,
  `${root}/a/loop1`,
  `${root}/a/loop1/x`,
  `${root}/a/toroot/etc`,
  `${root}/a/toroot/..`,
  `${root}/a/rel/../plain`,
  `${root}/a/./rel//c`,
  `${root}/a/rel/c/`,
  `${root}/a/plain/`,
];

describe('RealPaths', () => {
  it('answers what realpath(3) answers, path by path, in one instance and fresh', () => {
    const shared = new RealPaths();
    for (const p of cases) {
      expect([p, shared.real(p)]).toEqual([p, native(p)]);
      expect([p, new RealPaths().real(p)]).toEqual([p, native(p)]);
    }
    // Again in reverse order: what one path left in the memo must not change another's answer.
    const reverse = new RealPaths();
    for (const p of [...cases].reverse()) expect([p, reverse.real(p)]).toEqual([p, native(p)]);
  });

  it('resolves each directory once for all the paths below it', () => {
    const rp = new RealPaths();
    const n = (rp as unknown as { known: Map<string, unknown> }).known;
    rp.real('/etc/shadow');
    rp.real('/etc/gshadow');
    rp.real('/etc/ssl/private');
    expect([...n.keys()].filter((k) => k === '/etc')).toHaveLength(1);
    expect(n.size).toBe(5);
  });
});
