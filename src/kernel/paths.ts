// Real-path checks for path arguments. A path is judged by where the kernel would actually
// land after following every symlink and `..`, never by its spelling.
import { lstatSync, realpathSync } from 'node:fs';
import { isAbsolute } from 'node:path';

export type PathVerdict = { ok: true; realPath: string } | { ok: false; reason: string };

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
export function resolveRealPath(path: string): PathVerdict {
  if (typeof path !== 'string' || path.length === 0) return { ok: false, reason: 'empty path' };
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
  if (!v.ok) return v;
  for (const root of roots) if (isWithin(v.realPath, root)) return v;
  return { ok: false, reason: `${path} resolves to ${v.realPath}, outside the allowed roots` };
}
