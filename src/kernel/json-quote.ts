// JSON.stringify of one string, without the call for the common case: most names, ids and values
// need nothing escaped. Shared by every encoder that builds JSON by hand (audit records, the
// revocation file, the ct2 cache's request keys); the bytes are exactly JSON.stringify's.

// Characters JSON.stringify would escape (quote, backslash, controls, lone surrogates).
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;

export function quoteJson(s: string): string {
  // Very short strings are checked by hand; from about a dozen characters on the regex scan is
  // cheaper than a JS loop over charCodeAt (measured: some 25 instructions a character).
  if (s.length > 12) return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : '"' + s + '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x22 || c === 0x5c || (c >= 0xd800 && c <= 0xdfff)) return JSON.stringify(s);
  }
  return '"' + s + '"';
}
