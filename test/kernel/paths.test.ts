// Path checks on a real temporary tree: a root, an outside directory, and symlinks that try
// to leave the root in every way we know.
import { appendFileSync, mkdirSync, realpathSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkPathInRoots, checkPathInRootsSized, resolveRealPath, resolveRealPathSized } from '../../src/kernel/paths.js';
import { tempDir } from './helpers.js';

let t: { dir: string; cleanup: () => void };
let root: string;
let outside: string;

beforeAll(() => {
  t = tempDir('paths');
  const base = realpathSync(t.dir);
  root = join(base, 'root');
  outside = join(base, 'outside');
  mkdirSync(join(root, 'sub', 'deep'), { recursive: true });
  mkdirSync(outside);
  writeFileSync(join(root, 'sub', 'a.txt'), 'inside');
  writeFileSync(join(outside, 'secret.txt'), 'secret');
  symlinkSync(outside, join(root, 'escape-dir')); // directory link out of the root
  symlinkSync(join(outside, 'secret.txt'), join(root, 'escape-file')); // file link out
  symlinkSync(join(root, 'sub'), join(root, 'inner-link')); // link that stays inside
  symlinkSync('../../outside', join(root, 'sub', 'rel-escape')); // relative link out
  symlinkSync(join(outside, 'not-yet'), join(root, 'dangling')); // dangling link out
});
afterAll(() => t.cleanup());

// Both checks, the plain one and the memoized one the kernel uses for tool arguments, must give
// the same verdicts; the sized one is asked twice so the second answer comes from its memo.
const checks = {
  plain: (p: string) => checkPathInRoots(p, [root]),
  memoized: (p: string) => {
    const first = checkPathInRootsSized(p, [root]);
    const again = checkPathInRootsSized(p, [root]);
    expect(again).toEqual(first);
    if (!again.ok) return again;
    return { ok: true as const, realPath: again.realPath };
  },
};

describe.each(Object.entries(checks))('paths stay inside their roots (%s)', (_name, inRoot) => {
  it('accepts plain paths inside, including ones that do not exist yet', () => {
    expect(inRoot(join(root, 'sub', 'a.txt'))).toEqual({ ok: true, realPath: join(root, 'sub', 'a.txt') });
    expect(inRoot(join(root, 'sub', 'new', 'file.txt'))).toEqual({ ok: true, realPath: join(root, 'sub', 'new', 'file.txt') });
    expect(inRoot(root).ok).toBe(true);
  });

  it('follows symlinks that stay inside to their real path', () => {
    expect(inRoot(join(root, 'inner-link', 'a.txt'))).toEqual({ ok: true, realPath: join(root, 'sub', 'a.txt') });
  });

  it('refuses .. traversal out of the root', () => {
    expect(inRoot(join(root, 'sub', '..', '..', 'outside', 'secret.txt')).ok).toBe(false);
    expect(inRoot(`${root}/sub/../../outside/secret.txt`).ok).toBe(false);
  });

  it('refuses symlinks pointing outside: directory, file, relative, and below them', () => {
    expect(inRoot(join(root, 'escape-dir', 'secret.txt')).ok).toBe(false);
    expect(inRoot(join(root, 'escape-file')).ok).toBe(false);
    expect(inRoot(join(root, 'sub', 'rel-escape', 'secret.txt')).ok).toBe(false);
    // A file that does not exist yet below an escaping link is judged by the link's target.
    expect(inRoot(join(root, 'escape-dir', 'new-file')).ok).toBe(false);
  });

  it('refuses `..` after a missing component (spelling cannot be judged) and dangling links', () => {
    expect(inRoot(`${root}/missing/../../outside/x`).ok).toBe(false);
    const d = inRoot(join(root, 'dangling'));
    expect(d.ok).toBe(false);
    expect(d.ok ? '' : d.reason).toMatch(/dangling/);
  });

  it('does not confuse a sibling sharing the root as a prefix', () => {
    mkdirSync(root + '-sibling', { recursive: true });
    expect(inRoot(join(root + '-sibling', 'x')).ok).toBe(false);
  });

  it('refuses relative paths and NUL bytes', () => {
    expect(resolveRealPath('sub/a.txt').ok).toBe(false);
    expect(resolveRealPath(`${root}/a\0b`).ok).toBe(false);
    expect(resolveRealPathSized('sub/a.txt').ok).toBe(false);
    expect(resolveRealPathSized(`${root}/a\0b`).ok).toBe(false);
  });
});

describe('the real-path memo follows the file system', () => {
  it('a link swapped to point outside after a check is refused on the next check', () => {
    const link = join(root, 'swap-link');
    symlinkSync(join(root, 'sub'), link);
    const spelling = join(link, 'a.txt');
    expect(checkPathInRootsSized(spelling, [root])).toMatchObject({ ok: true, realPath: join(root, 'sub', 'a.txt'), size: 6 });
    rmSync(link);
    symlinkSync(outside, link);
    writeFileSync(join(outside, 'a.txt'), 'outside');
    const v = checkPathInRootsSized(spelling, [root]);
    expect(v.ok).toBe(false);
    expect(v.ok ? '' : v.reason).toMatch(/outside the allowed roots/);
  });

  it('a file replaced under the same spelling is resolved afresh, and sizes are never stale', () => {
    mkdirSync(join(root, 'other'), { recursive: true });
    writeFileSync(join(root, 'other', 'b.txt'), '12');
    const link = join(root, 'moving');
    symlinkSync(join(root, 'other'), link);
    const spelling = join(link, 'b.txt');
    expect(checkPathInRootsSized(spelling, [root])).toEqual({ ok: true, realPath: join(root, 'other', 'b.txt'), size: 2 });
    appendFileSync(join(root, 'other', 'b.txt'), '345');
    expect(checkPathInRootsSized(spelling, [root])).toEqual({ ok: true, realPath: join(root, 'other', 'b.txt'), size: 5 });
    // Same spelling, the directory behind the link moved: the memo entry no longer matches.
    renameSync(join(root, 'other'), join(root, 'other2'));
    rmSync(link);
    mkdirSync(join(root, 'fresh'));
    writeFileSync(join(root, 'fresh', 'b.txt'), 'x');
    symlinkSync(join(root, 'fresh'), link);
    expect(checkPathInRootsSized(spelling, [root])).toEqual({ ok: true, realPath: join(root, 'fresh', 'b.txt'), size: 1 });
  });

  it('a path that does not exist yet has no size and is not memoized', () => {
    const p = join(root, 'sub', 'later.txt');
    expect(checkPathInRootsSized(p, [root])).toEqual({ ok: true, realPath: p, size: undefined });
    writeFileSync(p, 'now');
    expect(checkPathInRootsSized(p, [root])).toEqual({ ok: true, realPath: p, size: 3 });
  });
});
