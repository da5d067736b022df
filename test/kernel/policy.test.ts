import { mkdirSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ToolPolicy } from '../../src/kernel/policy.js';
import { codeOf, makeKernel, tempDir } from './helpers.js';

let t: { dir: string; cleanup: () => void };
let base: string;
let ws: string;
beforeEach(() => {
  t = tempDir('policy');
  base = realpathSync(t.dir);
  ws = join(base, 'ws');
  mkdirSync(ws);
  mkdirSync(join(base, 'outside'));
  writeFileSync(join(base, 'outside', 'secret'), 'x');
  writeFileSync(join(ws, 'small.txt'), 'hello');
  writeFileSync(join(ws, 'big.txt'), Buffer.alloc(2000));
  symlinkSync(join(base, 'outside'), join(ws, 'link-out'));
});
afterEach(() => t.cleanup());

const CATALOGUE_YAML = `
version: 1
tools:
  - name: read_file
    command: [/bin/cat, "{path}"]
    args:
      path: { type: string, maxLength: 4096 }
    resources:
      - { kind: file, arg: path, access: read }
    limits: { memoryBytes: 67108864, pids: 8, timeoutMs: 5000 }
  - name: write_file
    command: [/usr/bin/tee, "{path}"]
    args:
      path: { type: string }
      content: { type: string, maxLength: 100000 }
    resources:
      - { kind: file, arg: path, access: write, sizeFrom: content }
  - name: fetch
    command: [/usr/bin/curl, -sS, "--max-time", "{timeout}", "{url}"]
    args:
      url: { type: string, pattern: "https?://.*" }
      timeout: { type: number, integer: true, min: 1, max: 60, required: false }
      method: { type: enum, values: [GET, HEAD], required: false }
    resources:
      - { kind: url, arg: url }
  - name: run
    command: [/bin/sh, -c, "{cmd}"]
    args:
      cmd: { type: string }
      verbose: { type: boolean, required: false }
    resources:
      - { kind: command, arg: cmd }
`;

function setup() {
  const file = join(base, 'tools.yaml');
  writeFileSync(file, CATALOGUE_YAML);
  const policy = ToolPolicy.fromFile(file);
  const env = makeKernel({ policy });
  const cap = env.kernel.requestCapability('agent', { type: 'tool', pattern: '*' }, ['invoke'], {
    allowedTools: ['read_file', 'write_file', 'fetch', 'run'],
    paths: [ws],
    maxFileSize: 1000,
    allowedDomains: ['*.example.com:443', 'example.com'],
    allowedCommands: ['ls', 'echo'],
    limits: { memoryBytes: 32 << 20, cpu: 0.5 },
  });
  return { ...env, policy, file, cap };
}

const me = { principal: 'agent' };

describe('tool catalogue config', () => {
  it('loads YAML and JSON', () => {
    const { policy } = setup();
    expect(policy.names()).toEqual(['read_file', 'write_file', 'fetch', 'run']);
    const json = join(base, 'tools.json');
    writeFileSync(json, JSON.stringify({ version: 1, tools: [{ name: 'echo', command: ['/bin/echo', '{text}'], args: { text: { type: 'string' } } }] }));
    expect(ToolPolicy.fromFile(json).names()).toEqual(['echo']);
  });

  it('a malformed config names the file, the field and what was expected; the previous config stays', () => {
    const { policy, file } = setup();
    const cases: [string, RegExp][] = [
      [CATALOGUE_YAML.replace('type: string, maxLength: 4096', 'type: strin'), /tools\[0\]\.args\.path\.type \(tool read_file\):.*(expected|Invalid)/],
      [CATALOGUE_YAML.replace('access: read', 'access: readwrite'), /tools\[0\]\.resources\[0\]\.access \(tool read_file\)/],
      [CATALOGUE_YAML.replace('arg: url }', 'arg: uri }'), /tools\[2\]\.resources\[0\]\.arg \(tool fetch\): expected the name of a string argument/],
      [CATALOGUE_YAML.replace('"{url}"', '"{address}"'), /tools\[2\]\.command\[4\].*'address' is not one/],
      [CATALOGUE_YAML.replace('name: run', 'name: fetch'), /tools\[3\]\.name.*unique/],
      [CATALOGUE_YAML.replace('version: 1', 'version: 2'), /version/],
      [CATALOGUE_YAML.replace('pattern: "https?://.*"', 'pattern: "(unclosed"'), /pattern.*regular expression/],
      ['tools: [\n  - : : :', /not valid YAML/],
    ];
    for (const [text, message] of cases) {
      writeFileSync(file, text);
      let err: unknown;
      try {
        policy.reload();
      } catch (e) {
        err = e;
      }
      expect((err as { code?: string }).code).toBe('E_POLICY_CONFIG');
      expect((err as Error).message).toContain(file);
      expect((err as Error).message).toMatch(message);
      expect(policy.names()).toEqual(['read_file', 'write_file', 'fetch', 'run']);
    }
    expect(policy.generation).toBe(1);
    writeFileSync(file, CATALOGUE_YAML.replace('name: run', 'name: run2'));
    policy.reload();
    expect(policy.generation).toBe(2);
    expect(policy.tool('run2')).toBeDefined();
    expect(codeOf(() => ToolPolicy.fromFile(join(base, 'missing.yaml')))).toBe('E_POLICY_CONFIG');
  });
});

describe('authorizeToolCall', () => {
  it('allows a good call: real paths in argv, tighter limits', () => {
    const { kernel, cap } = setup();
    const a = kernel.authorizeToolCall(cap.id, 'read_file', { path: join(ws, '.', 'small.txt') }, me);
    expect(a.argv).toEqual(['/bin/cat', join(ws, 'small.txt')]);
    expect(a.limits).toEqual({ memoryBytes: 32 << 20, pids: 8, cpu: 0.5, timeoutMs: 5000 });
    const f = kernel.authorizeToolCall(cap.id, 'fetch', { url: 'https://api.example.com/x' }, me);
    expect(f.argv).toEqual(['/usr/bin/curl', '-sS', '--max-time', 'https://api.example.com/x']);
    expect(kernel.authorizeToolCall(cap.id, 'run', { cmd: 'ls -la /tmp' }, me).argv).toEqual(['/bin/sh', '-c', 'ls -la /tmp']);
  });

  it('denies each kind of bad call with its reason, and audits it', () => {
    const { kernel, cap, audit } = setup();
    const deny = (tool: string, args: unknown) => codeOf(() => kernel.authorizeToolCall(cap.id, tool, args, me));
    expect(deny('rm_rf', {})).toBe('E_UNKNOWN_TOOL');
    expect(deny('read_file', { path: 42 })).toBe('E_INVALID_ARGUMENTS');
    expect(deny('read_file', { path: 'x', extra: 1 })).toBe('E_INVALID_ARGUMENTS');
    expect(deny('read_file', {})).toBe('E_INVALID_ARGUMENTS');
    expect(deny('fetch', { url: 'ftp://example.com' })).toBe('E_INVALID_ARGUMENTS');
    expect(deny('fetch', { url: 'https://example.com', timeout: 61 })).toBe('E_INVALID_ARGUMENTS');
    expect(deny('read_file', { path: join(ws, '..', 'outside', 'secret') })).toBe('E_PATH_OUTSIDE_ROOTS');
    expect(deny('read_file', { path: join(ws, 'link-out', 'secret') })).toBe('E_PATH_OUTSIDE_ROOTS');
    expect(deny('write_file', { path: join(ws, 'link-out', 'new'), content: 'x' })).toBe('E_PATH_OUTSIDE_ROOTS');
    expect(deny('read_file', { path: join(ws, 'big.txt') })).toBe('E_FILE_TOO_LARGE');
    expect(deny('write_file', { path: join(ws, 'new.txt'), content: 'y'.repeat(1001) })).toBe('E_FILE_TOO_LARGE');
    expect(deny('fetch', { url: 'https://evil.org/' })).toBe('E_DOMAIN_NOT_ALLOWED');
    expect(deny('fetch', { url: 'http://api.example.com/' })).toBe('E_DOMAIN_NOT_ALLOWED'); // port 80 not allowed for the wildcard
    expect(deny('run', { cmd: 'rm -rf /' })).toBe('E_COMMAND_NOT_ALLOWED');
    expect(deny('run', { cmd: 'echo hi && rm -rf /' })).toBe('E_COMMAND_NOT_ALLOWED');
    const denials = audit.ofType('access_denied');
    expect(denials).toHaveLength(15);
    expect(denials[1]).toMatchObject({ principal: 'agent', capabilityId: cap.id, details: { code: 'E_INVALID_ARGUMENTS', tool: 'read_file' } });
    // The zod path of the failing argument is in the error.
    try {
      kernel.authorizeToolCall(cap.id, 'fetch', { url: 'https://example.com', timeout: 'soon' }, me);
    } catch (e) {
      expect((e as { details: { path: string[] } }).details.path).toEqual(['timeout']);
      expect((e as Error).message).toMatch(/argument timeout/);
    }
  });

  it('denies a tool outside allowedTools of a delegated capability', () => {
    const { kernel, cap } = setup();
    const child = kernel.delegate(cap.id, 'reader', { constraints: { allowedTools: ['read_file'] } });
    expect(kernel.authorizeToolCall(child.id, 'read_file', { path: join(ws, 'small.txt') }, { principal: 'reader' }).tool.name).toBe('read_file');
    expect(codeOf(() => kernel.authorizeToolCall(child.id, 'run', { cmd: 'ls' }, { principal: 'reader' }))).toBe('E_TOOL_NOT_ALLOWED');
    const patterned = kernel.delegate(cap.id, 'reader', { resource: 'read_*' });
    expect(codeOf(() => kernel.authorizeToolCall(patterned.id, 'fetch', { url: 'https://example.com' }, { principal: 'reader' }))).toBe('E_TOOL_NOT_ALLOWED');
  });

  it('checks the capability before the call: revoked, wrong principal, not a tool capability', () => {
    const { kernel, cap } = setup();
    expect(codeOf(() => kernel.authorizeToolCall(cap.id, 'read_file', { path: join(ws, 'small.txt') }, { principal: 'other' }))).toBe('E_WRONG_PRINCIPAL');
    const fileCap = kernel.requestCapability('agent', { type: 'file', pattern: '*' }, ['invoke']);
    expect(codeOf(() => kernel.authorizeToolCall(fileCap.id, 'read_file', { path: join(ws, 'small.txt') }, me))).toBe('E_RESOURCE_NOT_PERMITTED');
    kernel.revokeCapability(cap.id);
    expect(codeOf(() => kernel.authorizeToolCall(cap.id, 'read_file', { path: join(ws, 'small.txt') }, me))).toBe('E_REVOKED');
  });
});

describe('Tool.argv', () => {
  it('fills whole-argument slots, slots inside text, leaves out optional arguments not given, and keeps literals', () => {
    const policy = ToolPolicy.fromObject({
      version: 1,
      tools: [
        {
          name: 'grep',
          command: ['/bin/grep', '--max-count={n}', '{flag}', '-e', '{pattern}', 'lit{', '{path}', 'x{pattern}y{n}z'],
          args: { pattern: { type: 'string' }, path: { type: 'string' }, n: { type: 'string' }, flag: { type: 'string', required: false } },
          resources: [{ kind: 'file', arg: 'path', access: 'read' }],
        },
      ],
    });
    const tool = policy.tool('grep')!;
    expect(tool.argv({ pattern: 'a b', path: 'p', n: '3' }, { path: '/real/p' })).toEqual(['/bin/grep', '--max-count=3', '-e', 'a b', 'lit{', '/real/p', 'xa by3z']);
    expect(tool.argv({ pattern: 'q', path: 'p', n: '1', flag: '-i' }, { path: '/r' })).toEqual(['/bin/grep', '--max-count=1', '-i', '-e', 'q', 'lit{', '/r', 'xqy1z']);
  });
});
