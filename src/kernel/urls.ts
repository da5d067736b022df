// URL arguments. The kernel judges a URL by the WHATWG parser, but the tool that receives it
// (curl, wget, a Python script) has a parser of its own: `http://allowed.com\@evil.com/` is
// host allowed.com to one and evil.com to the other. So a URL is refused when its spelling is
// one that parsers disagree on (backslash, whitespace or control characters, userinfo), and the
// tool is handed the canonical `href` that was checked, never the caller's spelling.

/** Schemes a URL argument may use when the capability names none (`allowedSchemes`). */
export const DEFAULT_SCHEMES: readonly string[] = Object.freeze(['http', 'https']);

const SCHEME = /^[a-z][a-z0-9+.-]*$/;

/** `HTTPS:` and `https` name the same scheme; null when it is not a scheme name at all. */
export function normalizeScheme(s: string): string | null {
  const n = s.trim().toLowerCase().replace(/:$/, '');
  return SCHEME.test(n) ? n : null;
}

// Any Unicode whitespace, C0 and C1 controls, DEL: WHATWG strips or percent-encodes them,
// other parsers stop at them or keep them, so the two would read different URLs.
// eslint-disable-next-line no-control-regex
const UNSAFE_CHARS = /[\s\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028\u2029\ufeff]/u;

export type UrlVerdict = { ok: true; url: URL; href: string; scheme: string } | { ok: false; reason: string };

/**
 * Parses a URL argument the way the kernel will judge it, refusing spellings another parser
 * could read differently. `href` is what the tool must be given.
 */
export function checkUrlSpelling(raw: string): UrlVerdict {
  if (typeof raw !== 'string' || raw.length === 0) return { ok: false, reason: 'empty URL' };
  if (raw.includes('\\')) return { ok: false, reason: 'a backslash in a URL is read as / by some parsers and kept by others' };
  if (UNSAFE_CHARS.test(raw)) return { ok: false, reason: 'whitespace or control characters are not allowed in a URL' };
  // The authority as a lenient parser sees it: after `scheme:` and any slashes, up to the path.
  const afterScheme = raw.replace(/^[A-Za-z][A-Za-z0-9+.-]*:/, '');
  const authority = afterScheme.replace(/^\/*/, '').split(/[/?#]/, 1)[0]!;
  if (authority.includes('@')) return { ok: false, reason: 'userinfo (user@ or user:pass@) is not allowed in a URL' };
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return { ok: false, reason: 'not an absolute URL' };
  }
  if (url.username !== '' || url.password !== '') return { ok: false, reason: 'userinfo (user@ or user:pass@) is not allowed in a URL' };
  return { ok: true, url, href: url.href, scheme: url.protocol.slice(0, -1) };
}

/** Whether `scheme` is among `allowed` (absent = DEFAULT_SCHEMES); entries may carry a trailing colon or capitals. */
export function schemeAllowed(scheme: string, allowed: readonly string[] | undefined): boolean {
  const s = normalizeScheme(scheme);
  if (s === null) return false;
  return (allowed ?? DEFAULT_SCHEMES).some((a) => normalizeScheme(a) === s);
}

/** The schemes a constraint set allows, normalised; absent means the defaults, so it is never "anything". */
export function effectiveSchemes(allowed: readonly string[] | undefined): string[] {
  return [...new Set((allowed ?? DEFAULT_SCHEMES).map(normalizeScheme).filter((s): s is string => s !== null))];
}
