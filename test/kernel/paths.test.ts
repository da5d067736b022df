// Path checks on a real temporary tree: a root, an outside directory, and symlinks that try
// to leave the root in every way we know.
import { mkdirSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkPathInRoots, resolveRealPath } from '../../src/kernel/paths.js';
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

const inRoot = (p: string) => checkPathInRoots(p, [root]);

describe('paths stay inside their roots', () => {
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
  });
});
