// realpath(3) for the many paths of one view, each directory looked at once. realpath walks a
// path component by component with a readlink each, so the nine hidden paths under /etc ask
// about /etc nine times and a view took ~50 syscalls on every launch's path. Here each resolved
// component is remembered for the rest of the same view, never longer: the host may change
// between launches (and the launcher checks what it binds again anyway).
import { lstatSync, readlinkSync, realpathSync, type Stats } from 'node:fs';

/** Symlinks followed in one resolution before it gives up, as the kernel's ELOOP does. */
const MAX_LINKS = 40;

export class RealPaths {
  /** `<real directory>/<name>` -> its real path, or null if it cannot be resolved. */
  private readonly known = new Map<string, string | null>();

  /** The real path of `p`, or undefined where realpath(3) fails (missing, a loop, no access). */
  real(p: string): string | undefined {
    // A trailing slash asks for a directory: rare here, and left to realpath(3) itself.
    if (!p.startsWith('/') || (p.endsWith('/') && p !== '/')) return native(p);
    return this.walk('/', p, { left: MAX_LINKS }) ?? undefined;
  }

  /** An lstat the caller made of a top-level path (`/name`) already tells whether it is its own real path. */
  noteLstat(p: string, st: Stats): void {
    if (/^\/[^/]+$/.test(p) && p !== '/.' && p !== '/..' && !st.isSymbolicLink()) this.known.set(p, p);
  }

  /** Resolves `rest` from the real directory `cur`; null when a component is missing or the links loop. */
  private walk(cur: string, rest: string, links: { left: number }): string | null {
    for (const name of rest.split('/')) {
      if (name === '' || name === '.') continue;
      if (name === '..') {
        // `cur` has no symlink in it, so its parent is found by name.
        cur = cur.slice(0, cur.lastIndexOf('/')) || '/';
        continue;
      }
      const path = cur === '/' ? `/${name}` : `${cur}/${name}`;
      let r = this.known.get(path);
      if (r === undefined) {
        r = this.component(cur, path, links);
        // A result that depended on the link budget left is not kept for a later walk.
        if (r !== null || links.left >= 0) this.known.set(path, r);
      }
      if (r === null) return null;
      cur = r;
    }
    return cur;
  }

  private component(dir: string, path: string, links: { left: number }): string | null {
    let st: Stats | undefined;
    let target: string;
    try {
      st = lstatSync(path, { throwIfNoEntry: false });
      if (st === undefined) return null;
      if (!st.isSymbolicLink()) return path;
      if (--links.left < 0) return null;
      target = readlinkSync(path);
    } catch {
      return null; // ENOTDIR, EACCES: realpath fails the same way
    }
    // The link's text is resolved from its own directory, or from / if absolute.
    return this.walk(target.startsWith('/') ? '/' : dir, target, links);
  }
}

function native(p: string): string | undefined {
  try {
    return realpathSync.native(p);
  } catch {
    return undefined;
  }
}
