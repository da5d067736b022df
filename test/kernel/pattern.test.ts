import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compilePattern, matchPattern, patternCovers } from '../../src/kernel/pattern.js';
import { parseDomainEntry, destinationOf, entryMatches, entryCovers } from '../../src/kernel/domains.js';

describe('resource patterns', () => {
  it('exact, prefix and glob forms', () => {
    expect(compilePattern('read_file').kind).toBe('exact');
    expect(matchPattern('read_file', 'read_file')).toBe(true);
    expect(matchPattern('read_file', 'read_files')).toBe(false);
    expect(compilePattern('tools/*').kind).toBe('prefix');
    expect(matchPattern('tools/*', 'tools/a/b')).toBe(true);
    expect(matchPattern('tools/*', 'tool')).toBe(false);
    expect(matchPattern('*', 'anything/at/all')).toBe(true);
    expect(compilePattern('/data/*/in/*.csv').kind).toBe('glob');
    expect(matchPattern('/data/*/in/*.csv', '/data/x/in/a.csv')).toBe(true);
    expect(matchPattern('/data/*/in/*.csv', '/data/x/y/in/a.csv')).toBe(false);
    expect(matchPattern('/data/**/*.csv', '/data/x/y/in/a.csv')).toBe(true);
    expect(matchPattern('file?.txt', 'file1.txt')).toBe(true);
    expect(matchPattern('file?.txt', 'file/.txt')).toBe(false);
    expect(matchPattern('a.b', 'aXb')).toBe(false); // regex metacharacters are literal
  });

  it('covers: sound for the cases delegation uses', () => {
    expect(patternCovers('*', 'read_*')).toBe(true);
    expect(patternCovers('read_*', 'read_file')).toBe(true);
    expect(patternCovers('read_*', 'write_file')).toBe(false);
    expect(patternCovers('read_file', 'read_*')).toBe(false);
    expect(patternCovers('/data/*.csv', '/data/a.csv')).toBe(true);
    expect(patternCovers('/data/*.csv', '/data/*.csv.bak')).toBe(false);
  });

  it('property: whatever a covered pattern matches, its cover matches', () => {
    const seg = fc.constantFrom('a', 'b', 'ab', '/', '.', 'x');
    const pat = fc.array(fc.oneof(seg, fc.constantFrom('*', '**', '?')), { minLength: 1, maxLength: 5 }).map((p) => p.join(''));
    const str = fc.array(seg, { maxLength: 6 }).map((p) => p.join(''));
    fc.assert(
      fc.property(pat, pat, str, (p, c, s) => {
        if (patternCovers(p, c) && matchPattern(c, s)) expect(matchPattern(p, s)).toBe(true);
      }),
      { numRuns: 3000 },
    );
  });
});

describe('domains', () => {
  it('exact, wildcard, any, and ports', () => {
    const d = (u: string) => destinationOf(u)!;
    const e = (s: string) => parseDomainEntry(s)!;
    expect(entryMatches(e('example.com'), d('https://example.com/x'))).toBe(true);
    expect(entryMatches(e('example.com'), d('https://EXAMPLE.com.:8443/'))).toBe(true);
    expect(entryMatches(e('example.com:443'), d('https://example.com:8443/'))).toBe(false);
    expect(entryMatches(e('*.example.com'), d('http://api.example.com'))).toBe(true);
    expect(entryMatches(e('*.example.com'), d('http://example.com'))).toBe(false);
    expect(entryMatches(e('*.example.com'), d('http://evilexample.com'))).toBe(false);
    expect(entryMatches(e('example.com'), d('http://example.com@evil.org/'))).toBe(false);
    expect(entryMatches(e('*:443'), d('https://anything.org'))).toBe(true);
    expect(parseDomainEntry('exa mple.com')).toBeNull();
    expect(destinationOf('not a url')).toBeNull();
    expect(entryCovers(e('*.example.com'), e('*.api.example.com'))).toBe(true);
    expect(entryCovers(e('example.com:443'), e('example.com'))).toBe(false);
    expect(entryCovers(e('example.com'), e('example.com:443'))).toBe(true);
  });
});
