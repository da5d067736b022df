// JSON.stringify of one string, without the call for the common case: most names, ids and values
// need nothing escaped. Shared by every encoder that builds JSON by hand (audit records, the
// revocation file, the ct2 cache's request keys); the bytes are exactly JSON.stringify's.

// Characters JSON.stringify would escape (quote, backslash, controls, lone surrogates).
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;

export function quoteJson(s: string): string {
  // Short strings (most names and values) are checked by hand: a regex call costs more than the scan.
  if (s.length > 32) return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : '"' + s + '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x22 || c === 0x5c || (c >= 0xd800 && c <= 0xdfff)) return JSON.stringify(s);
  }
  return '"' + s + '"';
}
