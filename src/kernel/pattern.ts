// Resource patterns: how a capability names the resources it covers.
//
// Grammar (a pattern is matched against the whole resource string):
//   exact   — no metacharacter: `read_file`, `/srv/data/report.csv` matches only itself.
//   prefix  — the only metacharacter is one trailing `*`: `tools/*`, `fs:*`, `*` match every
//             string that starts with the text before the `*`, across `/` too.
//   glob    — anything else: `*` matches a run of characters other than `/`, `**` matches any
//             run including `/`, `?` matches one character other than `/`.
// There is no escaping: `*` and `?` cannot occur literally in a resource name a pattern
// matches, which keeps containment between patterns decidable in the cases delegation needs.
export type PatternKind = 'exact' | 'prefix' | 'glob';

export interface CompiledPattern {
  readonly source: string;
  readonly kind: PatternKind;
  /** The text before the first metacharacter: every match starts with it. */
  readonly literalPrefix: string;
  matches(resource: string): boolean;
}

const META = /[*?]/;
const cache = new Map<string, CompiledPattern>();

function globToRegExp(p: string): RegExp {
  let re = '^';
  for (let i = 0; i < p.length; i++) {
    const c = p[i]!;
    if (c === '*') {
      if (p[i + 1] === '*') {
        re += '.*';
        i++;
      } else re += '[^/]*';
    } else if (c === '?') re += '[^/]';
    else re += c.replace(/[\\^$.|+()[\]{}]/g, '\\$&');
  }
  return new RegExp(re + '$', 's');
}

export function compilePattern(source: string): CompiledPattern {
  const hit = cache.get(source);
  if (hit) return hit;
  const m = META.exec(source);
  let compiled: CompiledPattern;
  if (!m) {
    compiled = { source, kind: 'exact', literalPrefix: source, matches: (r) => r === source };
  } else if (m.index === source.length - 1 && source.endsWith('*')) {
    const prefix = source.slice(0, -1);
    compiled = { source, kind: 'prefix', literalPrefix: prefix, matches: (r) => r.startsWith(prefix) };
  } else {
    const re = globToRegExp(source);
    compiled = { source, kind: 'glob', literalPrefix: source.slice(0, m.index), matches: (r) => re.test(r) };
  }
  if (cache.size > 10_000) cache.clear();
  cache.set(source, compiled);
  return compiled;
}

export function matchPattern(pattern: string, resource: string): boolean {
  return compilePattern(pattern).matches(resource);
}

/**
 * Whether every resource `child` matches is also matched by `parent`. Sound but not complete:
 * when containment between two globs is not obvious it answers false, so delegation refuses
 * rather than risk widening.
 */
export function patternCovers(parent: string, child: string): boolean {
  if (parent === child) return true;
  const p = compilePattern(parent);
  const c = compilePattern(child);
  if (c.kind === 'exact') return p.matches(child);
  // Every match of a prefix or glob child starts with its literal prefix.
  if (p.kind === 'prefix') return c.literalPrefix.startsWith(p.literalPrefix);
  return false;
}
