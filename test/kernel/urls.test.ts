// URL arguments the tool cannot read differently from the kernel: refused spellings, schemes,
// canonical hrefs in argv, and network capabilities held to their own domains.
import { describe, expect, it } from 'vitest';
import { canonicalEncoding, parseCapability, verifySignature } from '../../src/kernel/capability.js';
import { checkNarrowing, intersectConstraints, normalizeConstraints } from '../../src/kernel/constraints.js';
import { ToolPolicy } from '../../src/kernel/policy.js';
import { checkUrlSpelling } from '../../src/kernel/urls.js';
import { codeOf, makeKernel } from './helpers.js';

const CATALOGUE = {
  version: 1,
  tools: [
    { name: 'fetch', command: ['/usr/bin/curl', '-sS', '{url}'], args: { url: { type: 'string' } }, resources: [{ kind: 'url', arg: 'url' }] },
    { name: 'post', command: ['/usr/bin/curl', '--url={url}', '-d', '{body}'], args: { url: { type: 'string' }, body: { type: 'string' } }, resources: [{ kind: 'url', arg: 'url' }] },
  ],
};

function setup(constraints: object = { allowedDomains: ['allowed.com', '*.allowed.com'] }) {
  const env = makeKernel({ policy: ToolPolicy.fromObject(CATALOGUE) });
  const cap = env.kernel.requestCapability('agent', { type: 'tool', pattern: '*' }, ['invoke', 'delegate'], constraints);
  const call = (url: string, c = cap.id, principal = 'agent') => env.kernel.authorizeToolCall(c, 'fetch', { url }, { principal });
  return { ...env, cap, call };
}

function errorOf(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (e) {
    return { code: (e as { code: string }).code, message: (e as Error).message };
  }
  throw new Error('expected an error');
}

describe('URL spellings another parser could read differently', () => {
  it('refuses the backslash trick that WHATWG reads as allowed.com and curl as evil.com', () => {
    const { call } = setup();
    // The WHATWG parser alone would let it through: that is the bug.
    expect(new URL('http://allowed.com\\@evil.com/').hostname).toBe('allowed.com');
    const e = errorOf(() => call('http://allowed.com\\@evil.com/'));
    expect(e.code).toBe('E_INVALID_ARGUMENTS');
    expect(e.message).toMatch(/backslash/);
  });

  it('refuses whitespace, control characters and userinfo, with or without allowedDomains', () => {
    for (const constraints of [{ allowedDomains: ['allowed.com', '*.allowed.com'] }, {}]) {
      const { call } = setup(constraints);
      const cases: [string, RegExp][] = [
        ['http://allowed.com/ x', /whitespace or control/],
        ['http://allowed.com/\tx', /whitespace or control/],
        ['http://allowed.com/\nx', /whitespace or control/],
        ['http://allowed.com/\u0000', /whitespace or control/],
        ['http://allowed.com/\u007f', /whitespace or control/],
        ['http://allowed.com/\u00a0', /whitespace or control/],
        [' http://allowed.com/', /whitespace or control/],
        ['http://allowed.com/\u2028', /whitespace or control/],
        ['http://user@allowed.com/', /userinfo/],
        ['http://user:pass@allowed.com/', /userinfo/],
        ['http://:@allowed.com/', /userinfo/],
        ['http://@allowed.com/', /userinfo/],
        ['http://allowed.com%5C@evil.com/', /userinfo/],
        ['http:@evil.com', /userinfo/],
        ['http://allowed.com:80@evil.com/', /userinfo/],
        ['not a url', /whitespace or control/],
        ['allowed.com/x', /not an absolute URL/],
      ];
      for (const [url, why] of cases) {
        const e = errorOf(() => call(url));
        expect([url, e.code]).toEqual([url, 'E_INVALID_ARGUMENTS']);
        expect(e.message).toMatch(why);
      }
    }
  });

  it('checks the parsed URL too: userinfo the raw scan misses is still refused', () => {
    // The parsed URL is the last word whatever the raw scan thinks.
    expect(checkUrlSpelling('https://a@b.com').ok).toBe(false);
    expect(checkUrlSpelling('https://example.com/@user').ok).toBe(true); // '@' in the path is not userinfo
    expect(checkUrlSpelling('https://example.com/?q=a@b').ok).toBe(true);
  });
});

describe('URL schemes', () => {
  it('allows http and https only, unless allowedSchemes names others', () => {
    const { call } = setup({});
    expect(call('https://allowed.com/').argv[2]).toBe('https://allowed.com/');
    expect(call('http://allowed.com/').argv[2]).toBe('http://allowed.com/');
    for (const url of ['ftp://allowed.com/x', 'file:///etc/passwd', 'gopher://allowed.com/', 'javascript:alert(1)', 'data:text/plain,hi']) {
      expect([url, codeOf(() => call(url))]).toEqual([url, 'E_SCHEME_NOT_ALLOWED']);
    }
    const ftp = setup({ allowedSchemes: ['FTP:', 'https'], allowedDomains: ['allowed.com'] });
    expect(ftp.cap.constraints.allowedSchemes).toEqual(['ftp', 'https']);
    expect(ftp.call('ftp://allowed.com/x').argv[2]).toBe('ftp://allowed.com/x');
    expect(codeOf(() => ftp.call('http://allowed.com/'))).toBe('E_SCHEME_NOT_ALLOWED');
    expect(codeOf(() => ftp.call('ftp://evil.com/'))).toBe('E_DOMAIN_NOT_ALLOWED');
  });

  it('rejects a scheme name that is not one', () => {
    const { kernel } = makeKernel();
    expect(codeOf(() => kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke'], { allowedSchemes: ['ht tp'] }))).toBe('E_INVALID_REQUEST');
  });

  it('delegation: a child cannot widen the schemes, and gets the intersection', () => {
    const { kernel, cap } = setup({});
    // The parent names none, which means http and https: ftp would widen.
    expect(codeOf(() => kernel.delegate(cap.id, 'c', { constraints: { allowedSchemes: ['ftp'] } }))).toBe('E_WIDENS');
    const child = kernel.delegate(cap.id, 'c', { constraints: { allowedSchemes: ['https'] } });
    expect(child.constraints.allowedSchemes).toEqual(['https']);
    expect(codeOf(() => kernel.authorizeToolCall(child.id, 'fetch', { url: 'http://allowed.com/' }, { principal: 'c' }))).toBe('E_SCHEME_NOT_ALLOWED');
    expect(codeOf(() => kernel.delegate(child.id, 'd', { constraints: { allowedSchemes: ['http', 'https'] } }))).toBe('E_WIDENS');
    // An inherited list stays as narrow as the parent's.
    expect(kernel.delegate(child.id, 'd').constraints.allowedSchemes).toEqual(['https']);

    const p = normalizeConstraints({ allowedSchemes: ['https', 'ftp'] });
    expect(() => checkNarrowing(p, normalizeConstraints({ allowedSchemes: ['ftp'] }))).not.toThrow();
    expect(codeOf(() => checkNarrowing(p, normalizeConstraints({ allowedSchemes: ['ws'] })))).toBe('E_WIDENS');
    expect(intersectConstraints(p, normalizeConstraints({ allowedSchemes: ['ftp', 'ws'] })).allowedSchemes).toEqual(['ftp']);
    // Absent on one side means the defaults, not "anything".
    expect(intersectConstraints(p, {}).allowedSchemes).toEqual(['https']);
    expect(intersectConstraints({}, {}).allowedSchemes).toBeUndefined();
  });

  it('is signed: the encoding of capabilities without it is unchanged, and it cannot be edited', () => {
    const { kernel, keys } = makeKernel();
    const plain = kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke'], { allowedDomains: ['x.com'] });
    expect(canonicalEncoding(plain)).not.toContain('allowedSchemes');
    expect(JSON.parse(canonicalEncoding(plain).split('\n')[1]!)[6]).toHaveLength(7);
    const ftp = kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke'], { allowedSchemes: ['https'] });
    const forged = parseCapability({ ...ftp, constraints: { allowedSchemes: ['https', 'ftp'] } });
    expect(verifySignature(ftp, keys)).toBe('ok');
    expect(verifySignature(forged, keys)).toBe('E_BAD_SIGNATURE');
  });
});

describe('the tool receives the canonical href that was checked', () => {
  it('authorizeToolCall builds argv from canonical URLs, placeholders inside words included', () => {
    const { kernel, cap, call } = setup();
    const a = call('HTTPS://API.Allowed.COM:443/a/./b/../c?q=1#frag');
    expect(a.argv).toEqual(['/usr/bin/curl', '-sS', 'https://api.allowed.com/a/c?q=1#frag']);
    expect(a.canonicalUrls).toEqual({ url: 'https://api.allowed.com/a/c?q=1#frag' });
    // A spelling WHATWG repairs (missing slashes) reaches the tool repaired.
    expect(call('https:api.allowed.com/x').argv[2]).toBe('https://api.allowed.com/x');
    expect(call('https://allowed.com').argv[2]).toBe('https://allowed.com/');
    const p = kernel.authorizeToolCall(cap.id, 'post', { url: 'https://ALLOWED.com', body: 'HTTPS://NOT.a.url' }, { principal: 'agent' });
    expect(p.argv).toEqual(['/usr/bin/curl', '--url=https://allowed.com/', '-d', 'HTTPS://NOT.a.url']);
  });

  it('Tool.argv canonicalises URL arguments even when the caller passes none, and refuses a bad spelling', () => {
    const tool = ToolPolicy.fromObject(CATALOGUE).tool('fetch')!;
    expect(tool.argv({ url: 'HTTP://Allowed.com' })).toEqual(['/usr/bin/curl', '-sS', 'http://allowed.com/']);
    expect(tool.argv({ url: 'http://x/' }, {}, { url: 'http://given/' })).toEqual(['/usr/bin/curl', '-sS', 'http://given/']);
    expect(codeOf(() => tool.argv({ url: 'http://allowed.com\\@evil.com/' }))).toBe('E_INVALID_ARGUMENTS');
  });

  it('validateCapability returns the canonical URLs too', () => {
    const { kernel, cap } = setup();
    const v = kernel.validateCapability(cap.id, 'invoke', 'fetch', { principal: 'agent', urls: [{ url: 'https://Allowed.com', arg: 'u' }] });
    expect(v.canonicalUrls).toEqual({ u: 'https://allowed.com/' });
    expect(codeOf(() => kernel.validateCapability(cap.id, 'invoke', 'fetch', { principal: 'agent', urls: [{ url: 'http://allowed.com\\@evil.com/' }] }))).toBe('E_INVALID_ARGUMENTS');
  });
});

describe('a network capability is held to its own domain constraint', () => {
  it('its resource must be an allowed URL or host', () => {
    const { kernel } = makeKernel();
    const net = kernel.requestCapability('a', { type: 'network', pattern: '*' }, ['connect'], { allowedDomains: ['example.com'] });
    const v = (resource: string) => kernel.validateCapability(net.id, 'connect', resource, { principal: 'a' });
    expect(codeOf(() => v('http://evil.com/x'))).toBe('E_DOMAIN_NOT_ALLOWED');
    expect(v('https://example.com/x').capability.id).toBe(net.id);
    expect(v('example.com').capability.id).toBe(net.id);
    expect(v('example.com:8443').capability.id).toBe(net.id);
    expect(codeOf(() => v('evil.com'))).toBe('E_DOMAIN_NOT_ALLOWED');
    expect(codeOf(() => v('evil.com:443'))).toBe('E_DOMAIN_NOT_ALLOWED');
    expect(codeOf(() => v('ftp://example.com/'))).toBe('E_SCHEME_NOT_ALLOWED');
    expect(codeOf(() => v('http://example.com\\@evil.com/'))).toBe('E_RESOURCE_NOT_PERMITTED');
    // A port-limited entry does not cover a bare host, which names every port.
    const port = kernel.requestCapability('a', { type: 'network', pattern: '*' }, ['connect'], { allowedDomains: ['example.com:443'] });
    expect(codeOf(() => kernel.validateCapability(port.id, 'connect', 'example.com', { principal: 'a' }))).toBe('E_DOMAIN_NOT_ALLOWED');
    expect(kernel.validateCapability(port.id, 'connect', 'example.com:443', { principal: 'a' }).capability.id).toBe(port.id);
  });
});
