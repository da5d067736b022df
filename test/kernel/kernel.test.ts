import { mkdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { toToken } from '../../src/kernel/capability.js';
import { SecurityKernel } from '../../src/kernel/kernel.js';
import { REVOCATIONS_FILE } from '../../src/kernel/revocations.js';
import type { AuditStats } from '../../src/kernel/events.js';
import { codeOf, makeKernel, tempDir } from './helpers.js';

let t: { dir: string; cleanup: () => void };
let base: string;
beforeEach(() => {
  t = tempDir('kernel');
  base = realpathSync(t.dir);
  mkdirSync(join(base, 'ws', 'a', 'b'), { recursive: true });
  mkdirSync(join(base, 'other'));
});
afterEach(() => t.cleanup());

const P1 = { pid: 4242, startTime: 1000 };
const tool = (principal: string, tool: string, extra: object = {}) => ({ principal, tool, ...extra });

function rootCap(kernel: SecurityKernel, extra: object = {}) {
  return kernel.requestCapability('planner', { type: 'tool', pattern: '*' }, ['invoke', 'delegate'], {
    allowedTools: ['read_file', 'write_file', 'fetch'],
    paths: [join(base, 'ws')],
    maxFileSize: 10_000,
    maxDelegationDepth: 3,
    limits: { memoryBytes: 256 << 20, pids: 64, cpu: 1, timeoutMs: 60_000 },
    ...extra,
  });
}

describe('requesting and validating', () => {
  it('grants, validates, and audits requested/granted/validated', () => {
    const { kernel, audit } = makeKernel();
    const cap = rootCap(kernel);
    expect(cap.depth).toBe(0);
    expect(cap.constraints.paths).toEqual([join(base, 'ws')]);
    const ok = kernel.validateCapability(cap.id, 'invoke', 'read_file', tool('planner', 'read_file', { files: [{ path: join(base, 'ws', 'a', 'x'), access: 'read' }] }));
    expect(ok.realPaths[join(base, 'ws', 'a', 'x')]).toBe(join(base, 'ws', 'a', 'x'));
    expect(audit.events.map((e) => e.type)).toEqual(['capability_requested', 'capability_granted', 'capability_validated']);
  });

  it('each failing check has its own code, and each denial is audited as access_denied', () => {
    let now = 1_000_000;
    const { kernel, audit } = makeKernel({ clock: () => now });
    const cap = rootCap(kernel, { allowedDomains: ['example.com'], allowedCommands: ['ls'] });
    const v = (op: string, res: string, ctx: object) => codeOf(() => kernel.validateCapability(cap.id, op, res, { principal: 'planner', ...ctx }));
    expect(codeOf(() => kernel.validateCapability(cap.id, 'invoke', 'read_file', { principal: 'mallory' }))).toBe('E_WRONG_PRINCIPAL');
    expect(v('admin', 'read_file', {})).toBe('E_OPERATION_NOT_PERMITTED');
    expect(v('invoke', 'shell', { tool: 'shell' })).toBe('E_TOOL_NOT_ALLOWED');
    expect(v('invoke', 'read_file', { files: [{ path: join(base, 'other', 'x'), access: 'read' }] })).toBe('E_PATH_OUTSIDE_ROOTS');
    writeFileSync(join(base, 'ws', 'big'), Buffer.alloc(10_001));
    expect(v('invoke', 'read_file', { files: [{ path: join(base, 'ws', 'big'), access: 'read' }] })).toBe('E_FILE_TOO_LARGE');
    expect(v('invoke', 'write_file', { files: [{ path: join(base, 'ws', 'new'), access: 'write', size: 20_000 }] })).toBe('E_FILE_TOO_LARGE');
    expect(v('invoke', 'fetch', { urls: [{ url: 'https://evil.org/' }] })).toBe('E_DOMAIN_NOT_ALLOWED');
    expect(v('invoke', 'fetch', { commands: [{ command: 'rm -rf /' }] })).toBe('E_COMMAND_NOT_ALLOWED');
    expect(v('invoke', 'fetch', { commands: [{ command: 'ls; rm -rf /' }] })).toBe('E_COMMAND_NOT_ALLOWED');
    expect(v('invoke', 'run', {})).toBe('E_TOOL_NOT_ALLOWED');
    expect(codeOf(() => kernel.validateCapability('cap_nonexistentnonexistent', 'invoke', 'x', { principal: 'planner' }))).toBe('E_UNKNOWN_CAPABILITY');
    now = cap.expiresAt;
    expect(v('invoke', 'read_file', {})).toBe('E_EXPIRED');
    const denied = audit.ofType('access_denied');
    expect(denied).toHaveLength(12);
    expect(denied[0]).toMatchObject({ principal: 'mallory', capabilityId: cap.id, details: { code: 'E_WRONG_PRINCIPAL' } });
    expect(kernel.stats().denials).toBe(12);
  });

  it('file capabilities match their pattern on the real path', () => {
    const { kernel } = makeKernel();
    const cap = kernel.requestCapability('a', { type: 'file', pattern: join(base, 'ws') + '/*' }, ['read']);
    expect(kernel.validateCapability(cap.id, 'read', join(base, 'ws', 'a', 'f'), { principal: 'a' }).capability.id).toBe(cap.id);
    expect(codeOf(() => kernel.validateCapability(cap.id, 'read', join(base, 'ws', '..', 'other', 'f'), { principal: 'a' }))).toBe('E_RESOURCE_NOT_PERMITTED');
  });

  it('holds the resource itself to allowedTools (tool) and paths (file)', () => {
    const { kernel } = makeKernel();
    const tools = kernel.requestCapability('a', { type: 'tool', pattern: '*' }, ['invoke'], { allowedTools: ['read_file'] });
    expect(codeOf(() => kernel.validateCapability(tools.id, 'invoke', 'shell', { principal: 'a' }))).toBe('E_TOOL_NOT_ALLOWED');
    const files = kernel.requestCapability('a', { type: 'file', pattern: '*' }, ['read'], { paths: [join(base, 'ws', 'a')] });
    expect(kernel.validateCapability(files.id, 'read', join(base, 'ws', 'a', 'b'), { principal: 'a' }).capability.id).toBe(files.id);
    expect(codeOf(() => kernel.validateCapability(files.id, 'read', join(base, 'ws', 'a', '..', 'x'), { principal: 'a' }))).toBe('E_PATH_OUTSIDE_ROOTS');
  });

  it('rejects malformed requests as capability_denied', () => {
    const { kernel, audit } = makeKernel();
    expect(codeOf(() => kernel.requestCapability('a', { type: 'tool', pattern: 'x' }, ['invoke'], { paths: ['relative/dir'] }))).toBe('E_INVALID_REQUEST');
    expect(codeOf(() => kernel.requestCapability('a', { type: 'tool', pattern: 'x' }, [], {}))).toBe('E_INVALID_REQUEST');
    expect(codeOf(() => kernel.requestCapability('a', { type: 'tool', pattern: 'x' }, ['invoke'], { allowedDomains: ['bad domain'] }))).toBe('E_INVALID_REQUEST');
    expect(audit.ofType('capability_denied')).toHaveLength(3);
    const root = kernel.requestCapability('a', { type: 'tool', pattern: 'x' }, ['invoke']);
    expect(codeOf(() => kernel.delegate(root.id, 'b', { holder: { pid: -1, startTime: 0 } }))).toBe('E_INVALID_REQUEST');
    expect(codeOf(() => kernel.delegate(root.id, ''))).toBe('E_INVALID_REQUEST');
  });
});

describe('delegation', () => {
  it('narrows tools, paths and sizes, and the child is held to the narrower set', () => {
    const { kernel, audit } = makeKernel();
    const root = rootCap(kernel);
    const child = kernel.delegate(root.id, 'worker', {
      operations: ['invoke'],
      constraints: { allowedTools: ['read_file'], paths: [join(base, 'ws', 'a')], maxFileSize: 100 },
    });
    expect(child).toMatchObject({ parentId: root.id, depth: 1, ancestors: [root.id], principal: 'worker', expiresAt: root.expiresAt });
    expect(child.constraints).toMatchObject({ allowedTools: ['read_file'], paths: [join(base, 'ws', 'a')], maxFileSize: 100, maxDelegationDepth: 3 });
    expect(child.constraints.limits).toEqual(root.constraints.limits);
    const w = { principal: 'worker' };
    expect(kernel.validateCapability(child.id, 'invoke', 'read_file', { ...w, files: [{ path: join(base, 'ws', 'a', 'b', 'f'), access: 'read' }] }).capability.id).toBe(child.id);
    expect(codeOf(() => kernel.validateCapability(child.id, 'invoke', 'write_file', { ...w, tool: 'write_file' }))).toBe('E_TOOL_NOT_ALLOWED');
    expect(codeOf(() => kernel.validateCapability(child.id, 'invoke', 'read_file', { ...w, files: [{ path: join(base, 'ws', 'f'), access: 'read' }] }))).toBe('E_PATH_OUTSIDE_ROOTS');
    expect(codeOf(() => kernel.validateCapability(child.id, 'invoke', 'read_file', { ...w, files: [{ path: join(base, 'ws', 'a', 'n'), access: 'write', size: 101 }] }))).toBe('E_FILE_TOO_LARGE');
    expect(codeOf(() => kernel.validateCapability(child.id, 'delegate', 'x', w))).toBe('E_OPERATION_NOT_PERMITTED');
    expect(audit.ofType('capability_delegated')[0]).toMatchObject({ capabilityId: child.id, principal: 'worker', details: { parentId: root.id } });
  });

  it('refuses to widen, naming the dimension', () => {
    let now = 5_000_000;
    const { kernel, audit } = makeKernel({ clock: () => now });
    const root = rootCap(kernel, { allowedDomains: ['*.example.com'], allowedCommands: ['ls'] });
    const widen = (narrowing: object) => {
      try {
        kernel.delegate(root.id, 'w', narrowing);
      } catch (e) {
        return [(e as { code: string }).code, (e as { details: { dimension: string } }).details.dimension];
      }
      return ['none', ''];
    };
    expect(widen({ constraints: { allowedTools: ['read_file', 'shell'] } })).toEqual(['E_WIDENS', 'allowedTools']);
    expect(widen({ constraints: { paths: [join(base, 'other')] } })).toEqual(['E_WIDENS', 'paths']);
    expect(widen({ constraints: { paths: [join(base, 'ws', 'a', 'b', '..', '..', '..', 'other')] } })).toEqual(['E_WIDENS', 'paths']);
    expect(widen({ constraints: { maxFileSize: 10_001 } })).toEqual(['E_WIDENS', 'maxFileSize']);
    expect(widen({ constraints: { allowedDomains: ['example.com'] } })).toEqual(['E_WIDENS', 'allowedDomains']);
    expect(widen({ constraints: { allowedCommands: ['rm'] } })).toEqual(['E_WIDENS', 'allowedCommands']);
    expect(widen({ constraints: { maxDelegationDepth: 4 } })).toEqual(['E_WIDENS', 'maxDelegationDepth']);
    expect(widen({ constraints: { limits: { memoryBytes: 512 << 20 } } })).toEqual(['E_WIDENS', 'limits.memoryBytes']);
    expect(widen({ constraints: { limits: { cpu: 1.5 } } })).toEqual(['E_WIDENS', 'limits.cpu']);
    expect(widen({ operations: ['invoke', 'admin'] })).toEqual(['E_WIDENS', 'operations']);
    expect(widen({ resourceType: 'file' })).toEqual(['E_WIDENS', 'resourceType']);
    expect(widen({ expiresAt: root.expiresAt + 1 })).toEqual(['E_WIDENS', 'expiresAt']);
    // Narrower is fine, on every dimension at once.
    expect(widen({ constraints: { allowedDomains: ['api.example.com:443'], allowedCommands: [], limits: { cpu: 0.25 } }, ttlMs: 1000 })).toEqual(['none', '']);
    expect(audit.ofType('capability_denied').map((e) => e.details?.['dimension'])).toContain('limits.cpu');
    // A child of a narrower resource pattern cannot widen it back.
    const readers = kernel.delegate(root.id, 'w', { resource: 'read_*' });
    expect(codeOf(() => kernel.delegate(readers.id, 'v', { resource: '*' }))).toBe('E_WIDENS');
    now += 1;
  });

  it('enforces the depth limit from constraints and the kernel ceiling', () => {
    const { kernel } = makeKernel({ maxDelegationDepth: 5 });
    const root = rootCap(kernel, { maxDelegationDepth: 2 });
    const d1 = kernel.delegate(root.id, 'a');
    const d2 = kernel.delegate(d1.id, 'b');
    expect(d2.depth).toBe(2);
    expect(codeOf(() => kernel.delegate(d2.id, 'c'))).toBe('E_DEPTH_EXCEEDED');
    const { kernel: k2 } = makeKernel({ maxDelegationDepth: 1 });
    const r2 = k2.requestCapability('p', { type: 'tool', pattern: '*' }, ['invoke']);
    expect(codeOf(() => k2.delegate(k2.delegate(r2.id, 'a').id, 'b'))).toBe('E_DEPTH_EXCEEDED');
  });

  it('expiry: a child never outlives its parent, and expires on its own', () => {
    let now = 1_000;
    const { kernel } = makeKernel({ clock: () => now });
    const root = kernel.requestCapability('p', { type: 'tool', pattern: '*' }, ['invoke'], {}, { ttlMs: 10_000 });
    const child = kernel.delegate(root.id, 'c', { ttlMs: 5_000 });
    expect(child.expiresAt).toBe(6_000);
    now = 5_999;
    expect(kernel.validateCapability(child.id, 'invoke', 't', { principal: 'c' }).capability.id).toBe(child.id);
    now = 6_000;
    expect(codeOf(() => kernel.validateCapability(child.id, 'invoke', 't', { principal: 'c' }))).toBe('E_EXPIRED');
    expect(kernel.validateCapability(root.id, 'invoke', 't', { principal: 'p' }).capability.id).toBe(root.id);
    now = 11_000;
    expect(codeOf(() => kernel.delegate(root.id, 'c'))).toBe('E_EXPIRED');
  });

  it('multi-agent sharing: one delegated capability, its principal only, and its token on another kernel', () => {
    const t2 = tempDir('kernel-share');
    try {
      const { kernel, keys } = makeKernel({ stateDir: t2.dir });
      const root = rootCap(kernel);
      const shared = kernel.delegate(root.id, 'team-b', { constraints: { allowedTools: ['read_file'] } });
      const token = kernel.token(shared.id);
      // Two processes of team-b use the same unbound capability.
      for (const process of [{ pid: 10, startTime: 1 }, { pid: 11, startTime: 2 }]) {
        expect(kernel.validateCapability(token, 'invoke', 'read_file', { principal: 'team-b', process }).capability.id).toBe(shared.id);
      }
      expect(codeOf(() => kernel.validateCapability(token, 'invoke', 'read_file', { principal: 'team-c' }))).toBe('E_WRONG_PRINCIPAL');
      // Another kernel with the same key and state validates the token it never stored...
      const other = new SecurityKernel({ keys, stateDir: t2.dir });
      expect(other.validateCapability(token, 'invoke', 'read_file', { principal: 'team-b' }).capability.id).toBe(shared.id);
      // ...and can delegate from it further.
      const sub = other.delegate(token, 'team-b-1', { constraints: { maxFileSize: 1 } });
      expect(sub.ancestors).toEqual([root.id, shared.id]);
      kernel.revokeCapability(root.id);
      // The second kernel learns of revocations on restart (they share the state dir).
      const third = new SecurityKernel({ keys, stateDir: t2.dir });
      expect(codeOf(() => third.validateCapability(toToken(sub), 'invoke', 'read_file', { principal: 'team-b-1' }))).toBe('E_ANCESTOR_REVOKED');
      other.close();
      third.close();
      kernel.close();
    } finally {
      t2.cleanup();
    }
  });
});

describe('revocation', () => {
  it('cascades three levels deep and leaves siblings alone', () => {
    const { kernel, audit } = makeKernel();
    const root = rootCap(kernel);
    const a = kernel.delegate(root.id, 'a');
    const b = kernel.delegate(a.id, 'b');
    const c = kernel.delegate(b.id, 'c');
    const sibling = kernel.delegate(root.id, 's');
    const revoked = kernel.revokeCapability(a.id);
    expect(new Set(revoked)).toEqual(new Set([a.id, b.id, c.id]));
    for (const [cap, who] of [[a, 'a'], [b, 'b'], [c, 'c']] as const) {
      expect(codeOf(() => kernel.validateCapability(cap.id, 'invoke', 'read_file', { principal: who }))).toBe('E_REVOKED');
    }
    expect(kernel.validateCapability(sibling.id, 'invoke', 'read_file', { principal: 's' }).capability.id).toBe(sibling.id);
    expect(kernel.validateCapability(root.id, 'invoke', 'read_file', { principal: 'planner' }).capability.id).toBe(root.id);
    // One record for the cascade, listing every id it revoked and whose they were.
    const recs = audit.ofType('capability_revoked');
    expect(recs).toHaveLength(1);
    expect(recs[0]!.principal).toBeUndefined(); // three principals: none is named at the top
    expect(recs[0]!.capabilityId).toBeUndefined();
    expect(recs[0]!.details).toMatchObject({ reason: 'revoked', count: 3, direct: 1 });
    expect((recs[0]!.details!.ids as string[])[0]).toBe(a.id); // the directly revoked come first
    expect(new Set(recs[0]!.details!.ids as string[])).toEqual(new Set([a.id, b.id, c.id]));
    expect(new Set(recs[0]!.details!.principals as string[])).toEqual(new Set(['a', 'b', 'c']));
    expect(codeOf(() => kernel.delegate(b.id, 'x'))).toBe('E_REVOKED');
  });

  it('audits a single revocation with the capability and principal at the top level, and nothing for an id already revoked', () => {
    const { kernel, audit } = makeKernel();
    const root = rootCap(kernel);
    const a = kernel.delegate(root.id, 'a');
    kernel.revokeCapability(a.id, 'done');
    kernel.revokeCapability(a.id, 'again');
    const recs = audit.ofType('capability_revoked');
    expect(recs).toHaveLength(1);
    expect(recs[0]).toMatchObject({ principal: 'a', capabilityId: a.id, details: { reason: 'done', count: 1, direct: 1, principals: ['a'], ids: [a.id] } });
  });

  it('splits a cascade too long for one audit record into numbered parts that list every id once', () => {
    const { kernel, audit } = makeKernel();
    const root = rootCap(kernel);
    const kids = Array.from({ length: 3000 }, () => kernel.delegate(root.id, 'agent-x'));
    const revoked = kernel.revokeCapability(root.id);
    expect(revoked).toHaveLength(3001);
    const recs = audit.ofType('capability_revoked');
    expect(recs.length).toBeGreaterThan(1);
    const listed = recs.flatMap((r) => r.details!.ids as string[]);
    expect(listed).toHaveLength(3001);
    expect(new Set(listed)).toEqual(new Set([root.id, ...kids.map((k) => k.id)]));
    expect(listed[0]).toBe(root.id);
    recs.forEach((r, i) => {
      expect(r.details).toMatchObject({ part: i + 1, parts: recs.length, total: 3001, direct: i === 0 ? 1 : 0 });
      expect(JSON.stringify(r.details).length).toBeLessThan(64 * 1024);
    });
  });

  it('revokeAllForPrincipal revokes what the principal holds and everything below it', () => {
    const { kernel } = makeKernel();
    const root = rootCap(kernel);
    const x1 = kernel.delegate(root.id, 'agent-x');
    const x2 = kernel.delegate(root.id, 'agent-x');
    const y = kernel.delegate(x1.id, 'agent-y');
    const z = kernel.delegate(root.id, 'agent-z');
    expect(new Set(kernel.revokeAllForPrincipal('agent-x'))).toEqual(new Set([x1.id, x2.id, y.id]));
    expect(kernel.isRevoked(z.id)).toBe(false);
    expect(kernel.isRevoked(root.id)).toBe(false);
  });

  it('a cascade whose roots lie below one another revokes and lists each once; its file lines are JSON.stringify\'s bytes', () => {
    const { kernel } = makeKernel({ stateDir: t.dir });
    const root = rootCap(kernel);
    const x1 = kernel.delegate(root.id, 'agent-x');
    const x2 = kernel.delegate(x1.id, 'agent-x'); // a root (held by agent-x) below another root
    const x3 = kernel.delegate(x2.id, 'agent-x');
    const y = kernel.delegate(x2.id, 'agent-y');
    const revoked = kernel.revokeAllForPrincipal('agent-x', 'a "quoted" reason \u2028');
    expect(revoked).toHaveLength(4);
    expect(new Set(revoked)).toEqual(new Set([x1.id, x2.id, x3.id, y.id]));
    kernel.close();
    const lines = readFileSync(join(t.dir, REVOCATIONS_FILE), 'utf8').split('\n').filter(Boolean);
    expect(lines).toHaveLength(4);
    for (const line of lines) {
      const v = JSON.parse(line) as { id: string; at: number; reason: string; expiresAt: number };
      expect(line).toBe(JSON.stringify({ id: v.id, at: v.at, reason: 'a "quoted" reason \u2028', expiresAt: kernel.getCapability(v.id)!.expiresAt }));
    }
  });

  it('persists across a restart, fsynced, including descendants presented as tokens', () => {
    const { kernel, keys } = makeKernel({ stateDir: t.dir });
    const root = rootCap(kernel);
    const child = kernel.delegate(root.id, 'c');
    const grandchild = kernel.delegate(child.id, 'g');
    const tokens = [root, child, grandchild].map(toToken);
    kernel.revokeCapability(child.id, 'test');
    kernel.close();
    const lines = readFileSync(join(t.dir, REVOCATIONS_FILE), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { id: string; reason: string });
    expect(lines.map((l) => l.id).sort()).toEqual([child.id, grandchild.id].sort());
    const again = new SecurityKernel({ keys, stateDir: t.dir });
    expect(again.validateCapability(tokens[0]!, 'invoke', 'read_file', { principal: 'planner' }).capability.id).toBe(root.id);
    expect(codeOf(() => again.validateCapability(tokens[1]!, 'invoke', 'read_file', { principal: 'c' }))).toBe('E_REVOKED');
    expect(codeOf(() => again.validateCapability(tokens[2]!, 'invoke', 'read_file', { principal: 'g' }))).toBe('E_REVOKED');
    // Revoking a token-only root on the new kernel reaches descendants it never saw, via their ancestry.
    again.revokeCapability(root.id);
    const third = new SecurityKernel({ keys, stateDir: t.dir });
    expect(codeOf(() => third.validateCapability(tokens[0]!, 'invoke', 'read_file', { principal: 'planner' }))).toBe('E_REVOKED');
    again.close();
    third.close();
  });

  it('survives a torn last line, and refuses to start on a damaged list', () => {
    const { kernel, keys } = makeKernel({ stateDir: t.dir });
    const a = rootCap(kernel);
    const b = rootCap(kernel);
    kernel.revokeCapability(a.id);
    kernel.close();
    const file = join(t.dir, REVOCATIONS_FILE);
    writeFileSync(file, readFileSync(file, 'utf8') + '{"id":"cap_tor', { flag: 'w' });
    const k2 = new SecurityKernel({ keys, stateDir: t.dir });
    expect(k2.isRevoked(a.id)).toBe(true);
    k2.revokeCapability(b.id, 'revoked', { external: true }); // b was issued by the first kernel, never seen here
    k2.close();
    const k3 = new SecurityKernel({ keys, stateDir: t.dir });
    expect(k3.isRevoked(b.id)).toBe(true);
    k3.close();
    writeFileSync(file, 'garbage\n' + readFileSync(file, 'utf8'));
    expect(codeOf(() => new SecurityKernel({ keys, stateDir: t.dir }))).toBe('E_REVOCATION_STORE');
  });

  it("a holder's death is in the file at once and synced in the background; revokes and compaction meanwhile keep every line", async () => {
    const { kernel, keys } = makeKernel({ stateDir: t.dir });
    const root = rootCap(kernel);
    const held = kernel.delegate(root.id, 'agent', { holder: P1 });
    const sub = kernel.delegate(held.id, 'helper');
    const other = kernel.delegate(root.id, 'agent2');
    const file = join(t.dir, REVOCATIONS_FILE);
    expect(new Set(kernel.processExited(P1))).toEqual(new Set([held.id, sub.id]));
    // Written before processExited returned (a captrap crash now loses nothing), fdatasync pending or done.
    const ids = () => readFileSync(file, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { id: string }).id);
    expect(new Set(ids())).toEqual(new Set([held.id, sub.id]));
    // An explicit revoke and a compaction while that sync may still run: both complete, nothing is lost or doubled.
    kernel.revokeCapability(other.id, 'admin');
    kernel.pruneExpired();
    await kernel.whenRevocationsSynced();
    expect(kernel.stats().revocationSyncError).toBeUndefined();
    expect(new Set(ids())).toEqual(new Set([held.id, sub.id, other.id]));
    kernel.close();
    const again = new SecurityKernel({ keys, stateDir: t.dir });
    for (const id of [held.id, sub.id, other.id]) expect(again.isRevoked(id)).toBe(true);
    again.close();
  });
});

describe('process binding', () => {
  it('a bound capability works only from its process (pid AND start time)', () => {
    const { kernel } = makeKernel();
    const root = rootCap(kernel);
    const cap = kernel.delegate(root.id, 'agent');
    const unboundToken = toToken(cap);
    const bound = kernel.bindToProcess(cap.id, P1);
    expect(bound.holder).toEqual(P1);
    expect(kernel.validateCapability(cap.id, 'invoke', 'read_file', { principal: 'agent', process: P1 }).capability.holder).toEqual(P1);
    expect(codeOf(() => kernel.validateCapability(cap.id, 'invoke', 'read_file', { principal: 'agent', process: { pid: P1.pid, startTime: P1.startTime + 1 } }))).toBe('E_WRONG_HOLDER');
    expect(codeOf(() => kernel.validateCapability(cap.id, 'invoke', 'read_file', { principal: 'agent', process: { pid: P1.pid + 1, startTime: P1.startTime } }))).toBe('E_WRONG_HOLDER');
    expect(codeOf(() => kernel.validateCapability(cap.id, 'invoke', 'read_file', { principal: 'agent' }))).toBe('E_WRONG_HOLDER');
    // The token handed out before binding does not dodge the binding on this kernel.
    expect(codeOf(() => kernel.validateCapability(unboundToken, 'invoke', 'read_file', { principal: 'agent', process: { pid: 1, startTime: 1 } }))).toBe('E_WRONG_HOLDER');
    expect(codeOf(() => kernel.validateCapability(cap, 'invoke', 'read_file', { principal: 'agent', process: { pid: 1, startTime: 1 } }))).toBe('E_WRONG_HOLDER');
    expect(codeOf(() => kernel.bindToProcess(cap.id, { pid: 9, startTime: 9 }))).toBe('E_ALREADY_BOUND');
  });

  it('processExited revokes what the process held and every descendant, and audits principal_cleanup', () => {
    const { kernel, audit } = makeKernel();
    const root = rootCap(kernel);
    const held = kernel.delegate(root.id, 'agent', {}, undefined);
    kernel.bindToProcess(held.id, P1);
    const sub = kernel.delegate(held.id, 'helper', {}, { principal: 'agent', process: P1 });
    const other = kernel.delegate(root.id, 'agent2', { holder: { pid: P1.pid, startTime: P1.startTime + 5 } }); // same pid, other process
    expect(kernel.stats().bound).toBe(2);
    const revoked = kernel.processExited(P1);
    expect(new Set(revoked)).toEqual(new Set([held.id, sub.id]));
    expect(kernel.isRevoked(other.id)).toBe(false);
    expect(codeOf(() => kernel.validateCapability(sub.id, 'invoke', 'x', { principal: 'helper' }))).toBe('E_REVOKED');
    expect(audit.ofType('principal_cleanup')[0]).toMatchObject({ process: P1, principal: 'agent', details: { revoked: 2 } });
    // A new process reusing the pid inherits nothing.
    expect(codeOf(() => kernel.validateCapability(held.id, 'invoke', 'x', { principal: 'agent', process: { pid: P1.pid, startTime: 2000 } }))).toBe('E_REVOKED');
  });

  it('processExited after part of the tree was revoked lists only the rest, with their own principals, and says how the death was noticed', () => {
    const { kernel, audit } = makeKernel();
    const root = rootCap(kernel);
    const held = kernel.delegate(root.id, 'agent', { holder: P1 });
    const a = kernel.delegate(held.id, 'helper-a', {}, { principal: 'agent', process: P1 });
    const a2 = kernel.delegate(a.id, 'helper-a2', {}, { principal: 'helper-a' });
    const b = kernel.delegate(held.id, 'helper-b', {}, { principal: 'agent', process: P1 });
    kernel.revokeCapability(a.id);
    const revoked = kernel.processExited(P1, 'agent agent exited', 'death-notice');
    // Roots first, then the rest of the tree; what was already revoked is not revoked again.
    expect(revoked).toEqual([held.id, b.id]);
    expect(kernel.isRevoked(a2.id)).toBe(true);
    const cascade = audit.ofType('capability_revoked').at(-1)!;
    expect(cascade.details).toMatchObject({ count: 2, direct: 1, ids: [held.id, b.id] });
    expect(new Set(cascade.details!['principals'] as string[])).toEqual(new Set(['agent', 'helper-b']));
    expect(audit.ofType('principal_cleanup').at(-1)).toMatchObject({ process: P1, details: { revoked: 2, noticedBy: 'death-notice' } });
  });

  it('delegate with a caller checks the caller may use the parent', () => {
    const { kernel } = makeKernel();
    const root = rootCap(kernel, {}, );
    const held = kernel.delegate(root.id, 'agent', { holder: P1 });
    expect(codeOf(() => kernel.delegate(held.id, 'x', {}, { principal: 'agent', process: { pid: 1, startTime: 1 } }))).toBe('E_WRONG_HOLDER');
    expect(codeOf(() => kernel.delegate(held.id, 'x', {}, { principal: 'mallory', process: P1 }))).toBe('E_WRONG_PRINCIPAL');
  });
});

describe('stats', () => {
  it('counts and includes the audit sink stats when it has them', () => {
    const auditStats: AuditStats = { eventsLogged: 3, eventsFlushed: 3, bytesWritten: 10, segments: 1, lastFlushAt: null, bufferDepth: 0 };
    const sink = { events: 0, record() { this.events++; }, stats: () => auditStats };
    const { kernel } = makeKernel({ audit: sink });
    const root = rootCap(kernel);
    kernel.delegate(root.id, 'a');
    kernel.validateCapability(root.id, 'invoke', 'read_file', { principal: 'planner' });
    kernel.validateCapability(root.id, 'invoke', 'read_file', { principal: 'planner' });
    const s = kernel.stats();
    expect(s).toMatchObject({ issued: 1, delegated: 1, validations: 2, denials: 0, live: 2, revoked: 0, audit: auditStats });
    expect(s.verifyCacheHits).toBeGreaterThanOrEqual(2);
    const { kernel: plain } = makeKernel();
    expect(plain.stats().audit).toBeUndefined();
  });

  it('a sink that throws cannot flip a decision', () => {
    const { kernel } = makeKernel({ audit: { record() { throw new Error('disk full'); } } });
    const root = rootCap(kernel);
    expect(kernel.validateCapability(root.id, 'invoke', 'read_file', { principal: 'planner' }).capability.id).toBe(root.id);
    expect(codeOf(() => kernel.validateCapability(root.id, 'invoke', 'read_file', { principal: 'x' }))).toBe('E_WRONG_PRINCIPAL');
    expect(kernel.stats().auditFailures).toBeGreaterThan(0);
  });
});
