// The kernel API beyond one capability: checkPermission, listCapabilities, pruneExpired,
// tool operations, file:// paths, the issuance policy, and the typed refusals of bad requests.
import { existsSync, mkdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { describeCapability, toToken } from '../../src/kernel/capability.js';
import { SecurityKernel } from '../../src/kernel/kernel.js';
import { redactArgs, REDACTED, ToolPolicy } from '../../src/kernel/policy.js';
import { REVOCATIONS_FILE } from '../../src/kernel/revocations.js';
import { codeOf, makeKernel, tempDir } from './helpers.js';

let t: { dir: string; cleanup: () => void };
let base: string;
let ws: string;
beforeEach(() => {
  t = tempDir('kernel-api');
  base = realpathSync(t.dir);
  ws = join(base, 'ws');
  mkdirSync(join(ws, 'a'), { recursive: true });
  mkdirSync(join(base, 'outside'));
  writeFileSync(join(ws, 'small.txt'), 'hello');
  writeFileSync(join(ws, 'a b.txt'), 'spaced');
});
afterEach(() => t.cleanup());

const CATALOGUE = {
  version: 1,
  tools: [
    { name: 'read_file', command: ['/bin/cat', '{path}'], args: { path: { type: 'string' } }, resources: [{ kind: 'file', arg: 'path', access: 'read' }] },
    {
      name: 'write_file',
      command: ['/usr/bin/tee', '{path}'],
      args: { path: { type: 'string' }, content: { type: 'string' } },
      resources: [{ kind: 'file', arg: 'path', access: 'write', sizeFrom: 'content' }],
    },
    { name: 'fetch', command: ['/usr/bin/curl', '{url}'], args: { url: { type: 'string' } }, resources: [{ kind: 'url', arg: 'url' }] },
    { name: 'run', command: ['/bin/sh', '-c', '{cmd}'], args: { cmd: { type: 'string' } }, resources: [{ kind: 'command', arg: 'cmd' }] },
    { name: 'ls', command: ['/bin/ls', '{path}'], args: { path: { type: 'string' } }, resources: [{ kind: 'file', arg: 'path', access: 'read' }], operation: 'list' },
    {
      name: 'login',
      command: ['/usr/bin/login-tool', '--user', '{user}', '--password={pw}', '{apiKey}', '{note}'],
      args: { user: { type: 'string' }, pw: { type: 'string', secret: true }, apiKey: { type: 'string', required: false }, note: { type: 'string' } },
    },
  ],
};
const policy = () => ToolPolicy.fromObject(CATALOGUE);

describe('checkPermission', () => {
  it('returns the first live capability of the principal that permits the action, else E_PERMISSION_DENIED', () => {
    let now = 1_000_000;
    const { kernel, audit } = makeKernel({ clock: () => now });
    const files = kernel.requestCapability('agent', { type: 'file', pattern: join(ws, '*') }, ['read'], {}, { ttlMs: 1000 });
    const tools = kernel.requestCapability('agent', { type: 'tool', pattern: '*' }, ['invoke'], { allowedTools: ['read_file'] });
    kernel.requestCapability('other', { type: 'file', pattern: '*' }, ['read', 'write']);
    expect(kernel.checkPermission('agent', 'file', 'read', join(ws, 'small.txt')).id).toBe(files.id);
    expect(kernel.checkPermission('agent', 'tool', 'invoke', 'read_file').id).toBe(tools.id);
    // `invoke` grants the tool operations too.
    expect(kernel.checkPermission('agent', 'tool', 'read', 'read_file').id).toBe(tools.id);
    expect(codeOf(() => kernel.checkPermission('agent', 'file', 'write', join(ws, 'small.txt')))).toBe('E_PERMISSION_DENIED');
    expect(codeOf(() => kernel.checkPermission('agent', 'file', 'read', join(base, 'outside', 'x')))).toBe('E_PERMISSION_DENIED');
    expect(codeOf(() => kernel.checkPermission('agent', 'tool', 'invoke', 'write_file'))).toBe('E_PERMISSION_DENIED');
    expect(codeOf(() => kernel.checkPermission('nobody', 'file', 'read', join(ws, 'small.txt')))).toBe('E_PERMISSION_DENIED');
    const denied = audit.ofType('access_denied').at(-1)!;
    expect(denied).toMatchObject({ principal: 'nobody', details: { code: 'E_PERMISSION_DENIED', operation: 'read' } });
    // Arguments in the context are held to the constraints.
    const scoped = kernel.requestCapability('agent', { type: 'tool', pattern: 'write_file' }, ['invoke'], { paths: [join(ws, 'a')] });
    expect(kernel.checkPermission('agent', 'tool', 'invoke', 'write_file', { files: [{ path: join(ws, 'a', 'n'), access: 'write' }] }).id).toBe(scoped.id);
    expect(codeOf(() => kernel.checkPermission('agent', 'tool', 'invoke', 'write_file', { files: [{ path: join(ws, 'n'), access: 'write' }] }))).toBe('E_PERMISSION_DENIED');
    // Revoked and expired capabilities do not count.
    kernel.revokeCapability(tools.id);
    expect(codeOf(() => kernel.checkPermission('agent', 'tool', 'invoke', 'read_file'))).toBe('E_PERMISSION_DENIED');
    now += 1000;
    expect(codeOf(() => kernel.checkPermission('agent', 'file', 'read', join(ws, 'small.txt')))).toBe('E_PERMISSION_DENIED');
    expect(codeOf(() => kernel.checkPermission('agent', 'bogus' as 'file', 'read', 'x'))).toBe('E_INVALID_REQUEST');
  });

  it('a bound capability counts only for its process', () => {
    const { kernel } = makeKernel();
    const p = { pid: 77, startTime: 5 };
    const cap = kernel.requestCapability('agent', { type: 'process', pattern: '/bin/*' }, ['spawn'], {}, { holder: p });
    expect(codeOf(() => kernel.checkPermission('agent', 'process', 'spawn', '/bin/ls'))).toBe('E_PERMISSION_DENIED');
    expect(kernel.checkPermission('agent', 'process', 'spawn', '/bin/ls', { process: p }).id).toBe(cap.id);
  });
});

describe('listCapabilities', () => {
  it('lists live capabilities by default, revoked and expired ones on request', () => {
    let now = 1_000;
    const { kernel } = makeKernel({ clock: () => now });
    const live = kernel.requestCapability('agent', { type: 'tool', pattern: '*' }, ['invoke', 'delegate']);
    const short = kernel.requestCapability('agent', { type: 'tool', pattern: 'x' }, ['invoke'], {}, { ttlMs: 10 });
    const parent = kernel.requestCapability('boss', { type: 'tool', pattern: '*' }, ['invoke', 'delegate']);
    const child = kernel.delegate(parent.id, 'agent');
    const revoked = kernel.requestCapability('agent', { type: 'tool', pattern: 'y' }, ['invoke']);
    kernel.revokeCapability(revoked.id);
    kernel.revokeCapability(parent.id); // the child is revoked through its ancestor
    now += 10;
    const ids = (o?: object) => kernel.listCapabilities('agent', o).map((c) => c.id);
    expect(ids()).toEqual([live.id]);
    expect(ids({ includeRevoked: true })).toEqual([live.id, child.id, revoked.id]);
    expect(ids({ includeExpired: true })).toEqual([live.id, short.id]);
    expect(ids({ includeExpired: true, includeRevoked: true })).toEqual([live.id, short.id, child.id, revoked.id]);
    expect(kernel.listCapabilities('nobody')).toEqual([]);
  });
});

describe('pruneExpired', () => {
  it('forgets expired capabilities and compacts the revocation file, never bringing a revoked capability back', () => {
    let now = 1_000_000;
    const { kernel, keys } = makeKernel({ clock: () => now, stateDir: t.dir });
    const expiredRevoked = kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke', 'delegate'], {}, { ttlMs: 1000 });
    const expiredChild = kernel.delegate(expiredRevoked.id, 'b');
    const liveRevoked = kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke'], {}, { ttlMs: 100_000 });
    const expired = kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke'], {}, { ttlMs: 1000 });
    const live = kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke'], {}, { ttlMs: 100_000 });
    const bound = kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke'], {}, { ttlMs: 1000, holder: { pid: 9, startTime: 9 } });
    kernel.revokeCapability(expiredRevoked.id);
    kernel.revokeCapability(liveRevoked.id);
    kernel.revokeCapability('cap_issuedElsewhere000000', 'admin', { external: true }); // expiry unknown: kept for ever
    const file = join(t.dir, REVOCATIONS_FILE);
    const lines = () => readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { id: string; expiresAt?: number });
    expect(lines().find((l) => l.id === liveRevoked.id)?.expiresAt).toBe(liveRevoked.expiresAt);
    expect(kernel.pruneExpired()).toBe(0);
    expect(lines()).toHaveLength(4);

    now += 1000;
    const tokens = [expiredRevoked, expiredChild, liveRevoked, expired, live].map(toToken);
    expect(kernel.pruneExpired()).toBe(4);
    for (const c of [expiredRevoked, expiredChild, expired, bound]) expect(kernel.getCapability(c.id)).toBeUndefined();
    expect(kernel.getCapability(live.id)).toBeDefined();
    expect(kernel.getCapability(liveRevoked.id)).toBeDefined();
    expect(lines().map((l) => l.id).sort()).toEqual([liveRevoked.id, 'cap_issuedElsewhere000000'].sort());
    expect(existsSync(file + '.tmp')).toBe(false);
    expect(kernel.descendants(expiredRevoked.id)).toEqual([]);
    expect(kernel.stats()).toMatchObject({ live: 1, bound: 0, revoked: 2 });
    // Revocations after a compaction go to the new file.
    kernel.revokeCapability(live.id);
    kernel.close();

    const again = new SecurityKernel({ keys, stateDir: t.dir, clock: () => now });
    const v = (token: string, principal = 'a') => codeOf(() => again.validateCapability(token, 'invoke', 'x', { principal }));
    expect(v(tokens[0]!)).toBe('E_EXPIRED');
    expect(v(tokens[1]!, 'b')).toBe('E_EXPIRED');
    expect(v(tokens[2]!)).toBe('E_REVOKED');
    expect(v(tokens[4]!)).toBe('E_REVOKED');
    expect(again.isRevoked('cap_issuedElsewhere000000')).toBe(true);
    again.close();
  });

  it('loads an old revocation file (no expiresAt) and fills expiries in from capabilities it knows', () => {
    let now = 5_000;
    const { kernel, keys } = makeKernel({ clock: () => now, stateDir: t.dir });
    const old = kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke'], {}, { ttlMs: 100 });
    const keep = kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke'], {}, { ttlMs: 10_000 });
    kernel.close();
    const file = join(t.dir, REVOCATIONS_FILE);
    writeFileSync(file, [old.id, keep.id, 'cap_unknownToEveryone0000'].map((id) => JSON.stringify({ id, at: 1, reason: 'old format' }) + '\n').join(''));
    const k2 = new SecurityKernel({ keys, stateDir: t.dir, clock: () => now });
    for (const c of [old, keep]) expect(codeOf(() => k2.validateCapability(toToken(c), 'invoke', 'x', { principal: 'a' }))).toBe('E_REVOKED');
    now += 100;
    k2.pruneExpired();
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { id: string; expiresAt?: number; reason: string });
    expect(lines).toEqual([
      { id: keep.id, at: 1, reason: 'old format', expiresAt: keep.expiresAt },
      { id: 'cap_unknownToEveryone0000', at: 1, reason: 'old format' },
    ]);
    expect(codeOf(() => k2.validateCapability(toToken(old), 'invoke', 'x', { principal: 'a' }))).toBe('E_EXPIRED');
    k2.close();
  });
});

describe('tool operations', () => {
  it('are declared or follow from the resources', () => {
    const p = policy();
    expect(['read_file', 'write_file', 'fetch', 'run', 'ls', 'login'].map((n) => p.tool(n)!.operation)).toEqual(['read', 'write', 'read', 'execute', 'list', 'execute']);
  });

  it('a capability granting read runs read tools and refuses write tools; invoke runs any', () => {
    const { kernel } = makeKernel({ policy: policy() });
    const me = { principal: 'agent' };
    const reader = kernel.requestCapability('agent', { type: 'tool', pattern: '*' }, ['read'], { paths: [ws] });
    expect(kernel.authorizeToolCall(reader.id, 'read_file', { path: join(ws, 'small.txt') }, me).argv).toEqual(['/bin/cat', join(ws, 'small.txt')]);
    expect(kernel.authorizeToolCall(reader.id, 'fetch', { url: 'https://example.com/' }, me).tool.name).toBe('fetch');
    expect(codeOf(() => kernel.authorizeToolCall(reader.id, 'write_file', { path: join(ws, 'n'), content: 'x' }, me))).toBe('E_OPERATION_NOT_PERMITTED');
    expect(codeOf(() => kernel.authorizeToolCall(reader.id, 'run', { cmd: 'ls' }, me))).toBe('E_OPERATION_NOT_PERMITTED');
    expect(codeOf(() => kernel.authorizeToolCall(reader.id, 'ls', { path: ws }, me))).toBe('E_OPERATION_NOT_PERMITTED');
    const lister = kernel.requestCapability('agent', { type: 'tool', pattern: '*' }, ['list']);
    expect(kernel.authorizeToolCall(lister.id, 'ls', { path: ws }, me).tool.name).toBe('ls');
    const invoker = kernel.requestCapability('agent', { type: 'tool', pattern: '*' }, ['invoke'], { paths: [ws] });
    expect(kernel.authorizeToolCall(invoker.id, 'write_file', { path: join(ws, 'n'), content: 'x' }, me).tool.name).toBe('write_file');
    expect(kernel.authorizeToolCall(invoker.id, 'run', { cmd: 'ls' }, me).tool.name).toBe('run');
  });

  it('a catalogue naming an unknown operation is refused', () => {
    const bad = { version: 1, tools: [{ name: 'x', command: ['/bin/true'], operation: 'delete' }] };
    expect(codeOf(() => ToolPolicy.fromObject(bad))).toBe('E_POLICY_CONFIG');
  });
});

describe('file:// URIs wherever a path is', () => {
  it('file arguments, roots and file resources accept file: URIs; other schemes are refused', () => {
    const { kernel } = makeKernel({ policy: policy() });
    const me = { principal: 'agent' };
    const cap = kernel.requestCapability('agent', { type: 'tool', pattern: '*' }, ['invoke'], { paths: [`file://${ws}`] });
    expect(cap.constraints.paths).toEqual([ws]);
    const read = (path: string) => kernel.authorizeToolCall(cap.id, 'read_file', { path }, me);
    expect(read(`file://${ws}/small.txt`).argv).toEqual(['/bin/cat', join(ws, 'small.txt')]);
    expect(read(`file://localhost${ws}/small.txt`).argv).toEqual(['/bin/cat', join(ws, 'small.txt')]);
    expect(read(`FILE://${ws}/a%20b.txt`).argv).toEqual(['/bin/cat', join(ws, 'a b.txt')]);
    expect(read(`file://${ws}/a%20b.txt`).realPaths).toEqual({ path: join(ws, 'a b.txt') });
    expect(codeOf(() => read(`file://${ws}/../outside/x`))).toBe('E_PATH_OUTSIDE_ROOTS');
    expect(codeOf(() => read(`file://${base}/outside/x`))).toBe('E_PATH_OUTSIDE_ROOTS');
    for (const bad of [`http://example.com${ws}/small.txt`, `file://evil.com${ws}/small.txt`, `file://${ws}/small.txt?x`, `file://${ws}/small.txt#x`, `file://${ws}/a%2Fb`, `ftp:${ws}/x`]) {
      expect([bad, codeOf(() => read(bad))]).toEqual([bad, 'E_INVALID_ARGUMENTS']);
    }
    const files = kernel.requestCapability('agent', { type: 'file', pattern: `file://${ws}/*` }, ['read']);
    expect(files.resource).toBe(`${ws}/*`);
    expect(kernel.validateCapability(files.id, 'read', `file://${ws}/small.txt`, me).capability.id).toBe(files.id);
    expect(kernel.delegate(files.id, 'b', { resource: `file://${ws}/a/*` }).resource).toBe(`${ws}/a/*`);
  });
});

describe('issuance policy', () => {
  it('refuses requests outside its rules with E_ISSUANCE_DENIED, and audits them', () => {
    const { kernel, audit } = makeKernel({
      issuance: {
        file: [{ principals: ['agent-*'], pathRoots: [ws], operations: ['read'], maxTtlMs: 60_000 }],
        tool: [{ principals: ['planner'], pathRoots: [ws] }, { principals: ['fetcher'], operations: ['invoke'] }],
      },
    });
    const file = (principal: string, pattern: string, ops = ['read'], ttlMs = 1000, constraints = {}) =>
      kernel.requestCapability(principal, { type: 'file', pattern }, ops, constraints, { ttlMs });
    expect(file('agent-1', join(ws, '*')).resource).toBe(join(ws, '*'));
    expect(file('agent-1', join(ws, 'small.txt')).resource).toBe(join(ws, 'small.txt'));
    expect(file('agent-1', '*', ['read'], 1000, { paths: [join(ws, 'a')] }).resource).toBe('*');
    const refused: [string, () => unknown][] = [
      ['write op', () => file('agent-1', join(ws, '*'), ['read', 'write'])],
      ['ttl', () => file('agent-1', join(ws, '*'), ['read'], 60_001)],
      ['outside', () => file('agent-1', join(base, 'outside', '*'))],
      ['prefix sibling', () => file('agent-1', ws + '*')],
      ['dotdot', () => file('agent-1', join(ws, 'a') + '/../../outside/x')],
      ['anything', () => file('agent-1', '*')],
      ['paths outside', () => file('agent-1', '*', ['read'], 1000, { paths: [join(base, 'outside')] })],
      ['principal', () => file('planner', join(ws, '*'))],
      ['type without rules', () => kernel.requestCapability('agent-1', { type: 'network', pattern: '*' }, ['connect'])],
      ['tool without paths', () => kernel.requestCapability('planner', { type: 'tool', pattern: '*' }, ['invoke'])],
      ['tool op', () => kernel.requestCapability('fetcher', { type: 'tool', pattern: '*' }, ['admin'])],
    ];
    for (const [why, fn] of refused) expect([why, codeOf(fn)]).toEqual([why, 'E_ISSUANCE_DENIED']);
    expect(kernel.requestCapability('planner', { type: 'tool', pattern: '*' }, ['invoke'], { paths: [ws] }).principal).toBe('planner');
    const fetcher = kernel.requestCapability('fetcher', { type: 'tool', pattern: '*' }, ['invoke']);
    // Delegation only narrows what was issued: no rule needed for the child.
    expect(kernel.delegate(fetcher.id, 'anyone').principal).toBe('anyone');
    expect(audit.ofType('capability_denied').filter((e) => e.details?.['code'] === 'E_ISSUANCE_DENIED')).toHaveLength(refused.length);
    try {
      file('agent-1', join(ws, '*'), ['write']);
    } catch (e) {
      expect((e as Error).message).toMatch(/operations \[write\] are not among \[read\]/);
    }
  });

  it('a malformed policy is a configuration error', () => {
    expect(codeOf(() => makeKernel({ issuance: { file: [{ principals: ['*'], pathRoots: ['relative'] }] } }))).toBe('E_POLICY_CONFIG');
    expect(codeOf(() => makeKernel({ issuance: { bogus: [] } as never }))).toBe('E_POLICY_CONFIG');
  });
});

describe('describeCapability', () => {
  it('is one line: type, the first 8 characters of the id, principal', () => {
    const { kernel } = makeKernel();
    const c = kernel.requestCapability('planner', { type: 'file', pattern: '/tmp/*' }, ['read']);
    const d = describeCapability(c);
    expect(d).toBe(`file capability ${c.id.slice(0, 8)} for planner`);
    expect(d).not.toContain('\n');
    expect(d).not.toContain(c.id);
  });
});

describe('malformed requests are typed E_INVALID_REQUEST', () => {
  it('operations that are not a list', () => {
    const { kernel, audit } = makeKernel();
    expect(codeOf(() => kernel.requestCapability('a', { type: 'tool', pattern: '*' }, 'not_a_list' as unknown as string[]))).toBe('E_INVALID_REQUEST');
    expect(codeOf(() => kernel.requestCapability('a', { type: 'tool', pattern: '*' }, [42] as unknown as string[]))).toBe('E_INVALID_REQUEST');
    expect(codeOf(() => kernel.requestCapability('a', null as never, ['invoke']))).toBe('E_INVALID_REQUEST');
    expect(audit.ofType('capability_granted')).toHaveLength(0);
    const root = kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke', 'delegate']);
    expect(codeOf(() => kernel.delegate(root.id, 'b', { operations: 'invoke' as unknown as string[] }))).toBe('E_INVALID_REQUEST');
    expect(codeOf(() => kernel.delegate(root.id, 'b', { operations: { length: 1 } as unknown as string[] }))).toBe('E_INVALID_REQUEST');
    expect(codeOf(() => kernel.delegate(root.id, 'b', null as never))).toBe('E_INVALID_REQUEST');
  });

  it('revokeCapability refuses malformed ids and unknown ones unless told they were issued elsewhere', () => {
    const { kernel, keys } = makeKernel({ stateDir: t.dir });
    expect(codeOf(() => kernel.revokeCapability('anything'))).toBe('E_INVALID_REQUEST');
    expect(codeOf(() => kernel.revokeCapability('anything', 'x', { external: true }))).toBe('E_INVALID_REQUEST');
    expect(codeOf(() => kernel.revokeCapability(42 as unknown as string))).toBe('E_INVALID_REQUEST');
    expect(codeOf(() => kernel.revokeCapability('cap_wellFormedButUnknown00'))).toBe('E_UNKNOWN_CAPABILITY');
    expect(kernel.revokeCapability('cap_wellFormedButUnknown00', 'issued by another sidecar', { external: true })).toEqual(['cap_wellFormedButUnknown00']);
    const mine = kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke']);
    expect(kernel.revokeCapability(mine.id)).toEqual([mine.id]);
    expect(kernel.revokeCapability(mine.id)).toEqual([]); // already revoked: idempotent
    kernel.close();
    const text = readFileSync(join(t.dir, REVOCATIONS_FILE), 'utf8');
    expect(text).not.toContain('anything');
    // A token this kernel verified is known: its id may be revoked without `external`.
    const other = makeKernel({ keys });
    const foreign = other.kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke']);
    const k2 = new SecurityKernel({ keys });
    expect(codeOf(() => k2.revokeCapability(foreign.id))).toBe('E_UNKNOWN_CAPABILITY');
    k2.validateCapability(toToken(foreign), 'invoke', 'x', { principal: 'a' });
    expect(k2.revokeCapability(foreign.id)).toEqual([foreign.id]);
  });
});

describe('redactArgs', () => {
  const login = () => policy().tool('login')!;

  it('redacts secret and secret-named arguments in an argument record, and truncates long values', () => {
    const long = 'x'.repeat(1000);
    const out = redactArgs(login(), { user: 'bob', pw: 'hunter2', apiKey: 'k-123', note: long });
    expect(out).toEqual({ user: 'bob', pw: REDACTED, apiKey: REDACTED, note: 'x'.repeat(256) + '...[truncated 744 chars]' });
    expect(redactArgs(undefined, { password: 'a', access_token: 'b', clientSecret: 'c', credentials: 'd', path: '/x', n: 3, ok: true })).toEqual({
      password: REDACTED,
      access_token: REDACTED,
      clientSecret: REDACTED,
      credentials: REDACTED,
      path: '/x',
      n: 3,
      ok: true,
    });
  });

  it('redacts the same values in an argv built from them, optional arguments missing or not', () => {
    const tool = login();
    const full = tool.argv({ user: 'bob', pw: 'hunter2', apiKey: 'k-123', note: 'hi' });
    expect(redactArgs(tool, full)).toEqual(['/usr/bin/login-tool', '--user', 'bob', `--password=${REDACTED}`, REDACTED, 'hi']);
    const short = tool.argv({ user: 'bob', pw: 'hunter2', note: 'hi' });
    expect(redactArgs(tool, short)).toEqual(['/usr/bin/login-tool', '--user', 'bob', `--password=${REDACTED}`, 'hi']);
    expect(JSON.stringify(redactArgs(tool, full))).not.toMatch(/hunter2|k-123/);
  });

  it('without a tool, redacts secret-named flags and auth headers, and truncates', () => {
    expect(redactArgs(undefined, ['curl', '--token', 'abc', '--api-key=def', '-H', 'Authorization: Bearer ghi', 'https://x/', 'y'.repeat(300)])).toEqual([
      'curl',
      '--token',
      REDACTED,
      `--api-key=${REDACTED}`,
      '-H',
      `Authorization: ${REDACTED}`,
      'https://x/',
      'y'.repeat(256) + '...[truncated 44 chars]',
    ]);
  });
});

describe('redactArgs on an argv the template cannot explain', () => {
  it('keeps only the program when the tool has secrets', () => {
    const tool = policy().tool('login')!;
    expect(redactArgs(tool, ['/usr/bin/login-tool', 'hunter2'])).toEqual(['/usr/bin/login-tool', REDACTED]);
    const cat = policy().tool('read_file')!;
    expect(redactArgs(cat, ['/bin/cat', '/a', '/b'])).toEqual(['/bin/cat', '/a', '/b']);
  });
});
