// Real-path checks for path arguments. A path is judged by where the kernel would actually
// land after following every symlink and `..`, never by its spelling.
import { lstatSync, realpathSync, statSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkUrlSpelling } from './urls.js';

/** `malformed`: the spelling is not a path at all (another URI scheme, a broken file: URI), as opposed to a path that is not allowed. */
export type PathVerdict = { ok: true; realPath: string } | { ok: false; reason: string; malformed?: true };

const URI_SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):/;

/**
 * The path a spelling names: itself, or for a `file:` URI (`file:///tmp/x`, `file://localhost/tmp/x`)
 * its decoded path. Any other scheme is refused rather than read as a relative path.
 */
export function pathFromSpelling(spelling: string): { ok: true; path: string } | { ok: false; reason: string; malformed: true } {
  const m = URI_SCHEME.exec(spelling);
  if (!m) return { ok: true, path: spelling };
  if (m[1]!.toLowerCase() !== 'file') return { ok: false, reason: `'${m[1]}:' URIs do not name a file; give an absolute path or a file:// URI`, malformed: true };
  const v = checkUrlSpelling(spelling);
  if (!v.ok) return { ok: false, reason: `file URI: ${v.reason}`, malformed: true };
  // A query or fragment would be dropped silently by the conversion: refuse rather than guess.
  if (v.url.search !== '' || v.url.hash !== '' || /[?#]/.test(spelling)) return { ok: false, reason: 'file URI: a query or fragment does not name a file', malformed: true };
  try {
    return { ok: true, path: fileURLToPath(v.url) };
  } catch (err) {
    return { ok: false, reason: `file URI: ${(err as Error).message}`, malformed: true };
  }
}

/** A file resource pattern given as `file:///root/*`: the path pattern (globs are not URI syntax, so no decoding). */
export function filePatternFromSpelling(pattern: string): string {
  const m = /^file:\/\/(?:localhost)?(\/.*)$/i.exec(pattern);
  return m ? m[1]! : pattern;
}

function errCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Resolves an absolute path to the real path it refers to. A path that does not exist yet is
 * judged by its nearest existing parent: that parent's real path plus the missing tail. The
 * tail may not contain `..` (the OS would resolve it against something that does not exist,
 * and a tool that creates directories could make it escape), and the first missing component
 * may not be a dangling symlink (writing through it would create its target wherever it points).
 */
export function resolveRealPath(spelling: string): PathVerdict {
  if (typeof spelling !== 'string' || spelling.length === 0) return { ok: false, reason: 'empty path' };
  const p = pathFromSpelling(spelling);
  if (!p.ok) return p;
  const path = p.path;
  if (!isAbsolute(path)) return { ok: false, reason: `not an absolute path: ${path}` };
  if (path.includes('\0')) return { ok: false, reason: 'path contains a NUL byte' };
  try {
    return { ok: true, realPath: realpathSync.native(path) };
  } catch (err) {
    const code = errCode(err);
    if (code !== 'ENOENT' && code !== 'ENOTDIR') return { ok: false, reason: `cannot resolve ${path}: ${code ?? String(err)}` };
  }
  const parts = path.split('/').filter((p) => p.length > 0);
  for (let i = parts.length - 1; i >= 0; i--) {
    const prefix = '/' + parts.slice(0, i).join('/');
    let real: string;
    try {
      real = realpathSync.native(prefix);
    } catch {
      continue;
    }
    const tail = parts.slice(i);
    if (tail.includes('..')) return { ok: false, reason: `'..' below a path that does not exist: ${path}` };
    const first = (prefix === '/' ? '' : prefix) + '/' + tail[0]!;
    try {
      lstatSync(first);
      // It exists as a link but realpath failed: dangling or looping symlink.
      return { ok: false, reason: `dangling or looping symlink at ${first}` };
    } catch (err) {
      if (errCode(err) !== 'ENOENT' && errCode(err) !== 'ENOTDIR') return { ok: false, reason: `cannot inspect ${first}` };
    }
    const rest = tail.filter((t) => t !== '.').join('/');
    return { ok: true, realPath: (real === '/' ? '' : real) + (rest ? '/' + rest : '') || '/' };
  }
  return { ok: false, reason: `no existing parent for ${path}` };
}

/** Whether real path `p` is `root` or lies below it (both already real paths). */
export function isWithin(p: string, root: string): boolean {
  if (root === '/') return true;
  return p === root || (p.startsWith(root) && p.charCodeAt(root.length) === 47 /* '/' */);
}

/** Resolves `path` and checks it against real-path roots; returns the real path on success. */
export function checkPathInRoots(path: string, roots: readonly string[]): PathVerdict {
  const v = resolveRealPath(path);
  return v.ok ? inRoots(path, v, roots) : v;
}

function inRoots<V extends { ok: true; realPath: string }>(path: string, v: V, roots: readonly string[]): V | { ok: false; reason: string } {
  for (const root of roots) if (isWithin(v.realPath, root)) return v;
  return { ok: false, reason: `${path} resolves to ${v.realPath}, outside the allowed roots` };
}

/** A resolved path argument, with the size of the file it names when it exists. */
export type SizedPathVerdict = { ok: true; realPath: string; size: number | undefined } | { ok: false; reason: string; malformed?: true };

// realpath(3) costs one readlink per component, each a full syscall: on the hot path of every
// tool call that takes a path. A spelling resolved before is reused while stat() of the spelling
// still lands on the very file (device and inode) that its real path named then. Reuse cannot
// widen access: the real path handed on is one that was checked, is checked against the caller's
// roots again on every call, and names the same file the spelling names now; a swap after this
// check is the same race an uncached check has. Paths that do not exist are never memoized.
const REAL_PATH_MEMO_MAX = 4096;
type Memo = { dev: number; ino: number; realPath: string };
const realPathMemo = new Map<string, Memo>();

function remember(spelling: string, m: Memo): void {
  if (realPathMemo.size >= REAL_PATH_MEMO_MAX) realPathMemo.delete(realPathMemo.keys().next().value as string);
  realPathMemo.set(spelling, m);
}

/** `resolveRealPath` plus the size of an existing file, from one stat() when the spelling was resolved before. */
export function resolveRealPathSized(spelling: string): SizedPathVerdict {
  if (typeof spelling === 'string' && spelling.length > 0 && spelling.charCodeAt(0) === 47 /* '/' */ && !spelling.includes('\0')) {
    let st;
    try {
      st = statSync(spelling, { throwIfNoEntry: false });
    } catch {
      st = undefined;
    }
    if (st !== undefined) {
      const m = realPathMemo.get(spelling);
      if (m !== undefined && m.dev === st.dev && m.ino === st.ino) return { ok: true, realPath: m.realPath, size: st.size };
      try {
        const realPath = realpathSync.native(spelling);
        const rst = statSync(realPath);
        if (rst.dev === st.dev && rst.ino === st.ino) remember(spelling, { dev: rst.dev, ino: rst.ino, realPath });
        return { ok: true, realPath, size: rst.size };
      } catch {
        // Changed under us: judge it afresh below.
      }
    }
  }
  const v = resolveRealPath(spelling);
  if (!v.ok) return v;
  let size: number | undefined;
  try {
    size = statSync(v.realPath, { throwIfNoEntry: false })?.size;
  } catch {
    size = undefined;
  }
  return { ok: true, realPath: v.realPath, size };
}

/** `checkPathInRoots` with the size of an existing file (see `resolveRealPathSized`). */
export function checkPathInRootsSized(path: string, roots: readonly string[]): SizedPathVerdict {
  const v = resolveRealPathSized(path);
  return v.ok ? inRoots(path, v, roots) : v;
}
