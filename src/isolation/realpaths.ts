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
  private readonly stats = new Map<string, Stats | null>();
  private readonly targets = new Map<string, string | null>();

  /** lstat(2) of `p`, once per view; undefined if it is not there (or cannot be looked at). */
  lstat(p: string): Stats | undefined {
    let st = this.stats.get(p);
    if (st === undefined) {
      try {
        st = lstatSync(p, { throwIfNoEntry: false }) ?? null;
      } catch {
        st = null; // ENOTDIR, EACCES: realpath fails the same way
      }
      this.stats.set(p, st);
    }
    return st ?? undefined;
  }

  /** readlink(2) of `p`, once per view; undefined if it is not a symlink (any more). */
  readlink(p: string): string | undefined {
    let t = this.targets.get(p);
    if (t === undefined) {
      try {
        t = readlinkSync(p);
      } catch {
        t = null;
      }
      this.targets.set(p, t);
    }
    return t ?? undefined;
  }

  /** The real path of `p`, or undefined where realpath(3) fails (missing, a loop, no access). */
  real(p: string): string | undefined {
    // A trailing slash asks for a directory: rare here, and left to realpath(3) itself.
    if (!p.startsWith('/') || (p.endsWith('/') && p !== '/')) return native(p);
    return this.walk('/', p, { left: MAX_LINKS }) ?? undefined;
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
    const st = this.lstat(path);
    if (st === undefined) return null;
    if (!st.isSymbolicLink()) return path;
    if (--links.left < 0) return null;
    const target = this.readlink(path);
    if (target === undefined) return null;
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
