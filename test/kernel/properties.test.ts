// Property-based checks of the two promises delegation makes: a descendant never permits
// what its ancestor does not, and revoking any node invalidates exactly its subtree.
import { mkdirSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Capability } from '../../src/kernel/capability.js';
import type { Constraints } from '../../src/kernel/constraints.js';
import type { DelegationRequest, ValidationContext } from '../../src/kernel/kernel.js';
import { makeKernel, tempDir } from './helpers.js';

let t: { dir: string; cleanup: () => void };
let base: string;
beforeAll(() => {
  t = tempDir('props');
  base = realpathSync(t.dir);
  for (const d of ['a/b/c', 'a/d', 'e']) mkdirSync(join(base, d), { recursive: true });
  writeFileSync(join(base, 'a', 'b', 'f50'), Buffer.alloc(50));
  writeFileSync(join(base, 'a', 'f500'), Buffer.alloc(500));
  symlinkSync(join(base, 'e'), join(base, 'a', 'b', 'to-e'));
});
afterAll(() => t.cleanup());

const TOOLS = ['t1', 't2', 't3', 'x/y'];
const DOMAINS = ['example.com', '*.example.com', 'api.example.com:443', '*', 'other.org:80'];
const COMMANDS = ['ls', 'cat', 'echo'];
const OPS = ['invoke', 'read', 'write'];
const PATTERNS = ['*', 't*', 't1', 'x/*', 't?', 'x/y'];

const sub = <T>(xs: readonly T[]) => fc.subarray([...xs]);
/** `a` or undefined, undefined `nilPercent`% of the time. */
const maybe = <T>(a: fc.Arbitrary<T>, nilPercent = 20): fc.Arbitrary<T | undefined> =>
  fc.oneof({ arbitrary: fc.constant(undefined), weight: nilPercent }, { arbitrary: a, weight: 100 - nilPercent });

// Requests leave most dimensions out (so many delegations succeed and trees grow deep);
// the ones they name are random, so some narrow and some try to widen.
const constraintsArb = (nilPercent: number): fc.Arbitrary<Constraints> => {
  const opt = <T>(a: fc.Arbitrary<T>) => maybe(a, nilPercent);
  return fc
  .record({
    allowedTools: opt(sub(TOOLS)),
    paths: opt(sub(['a', 'a/b', 'a/b/c', 'a/d', 'e', ''])),
    maxFileSize: opt(fc.constantFrom(0, 49, 50, 100, 499, 1000)),
    allowedDomains: opt(sub(DOMAINS)),
    allowedCommands: opt(sub(COMMANDS)),
    maxDelegationDepth: opt(fc.integer({ min: 0, max: 4 })),
    limits: opt(fc.record({ memoryBytes: opt(fc.constantFrom(1 << 20, 1 << 24)), cpu: opt(fc.constantFrom(0.25, 0.5, 1)), timeoutMs: opt(fc.constantFrom(100, 1000)) })),
  })
  .map((c) => {
    const out: Constraints = {};
    for (const [k, v] of Object.entries(c)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
    if (c.paths) out.paths = c.paths.map((p) => join(base, p));
    if (c.limits) out.limits = Object.fromEntries(Object.entries(c.limits).filter(([, v]) => v !== undefined));
    return out;
  });
};

const narrowingArb: fc.Arbitrary<DelegationRequest> = fc.record(
  {
    resource: maybe(fc.constantFrom(...PATTERNS), 60),
    operations: maybe(sub(OPS), 60),
    constraints: maybe(constraintsArb(75), 30),
    ttlMs: maybe(fc.integer({ min: 1, max: 20_000 })),
  },
  { requiredKeys: [] },
);

const queryArb: fc.Arbitrary<{ op: string; res: string; ctx: Omit<ValidationContext, 'principal'> }> = fc.record({
  op: fc.constantFrom(...OPS),
  res: fc.constantFrom(...TOOLS),
  file: maybe(fc.record({ p: fc.constantFrom('a/b/f50', 'a/f500', 'a/b/c/new', 'a/b/to-e/x', 'e/x', 'a/b/../d/n', 'z'), access: fc.constantFrom('read', 'write'), size: maybe(fc.constantFrom(0, 60, 600)) })),
  url: maybe(fc.constantFrom('https://example.com/', 'https://api.example.com/', 'http://api.example.com/', 'http://other.org/', 'https://x.y.example.com:8443/')),
  command: maybe(fc.constantFrom('ls -l', 'cat f', 'rm x', 'echo $HOME')),
}).map(({ op, res, file, url, command }) => {
  const ctx: Omit<ValidationContext, 'principal'> = { tool: res };
  if (file) ctx.files = [{ path: join(base, file.p), access: file.access as 'read' | 'write', ...(file.size === undefined ? {} : { size: file.size }) }];
  if (url) ctx.urls = [{ url }];
  if (command) ctx.commands = [{ command }];
  return { op, res, ctx };
});

/** A tree: each step names an existing node (by index mod size) and a narrowing request. */
const treeArb = fc.record({
  root: constraintsArb(35),
  steps: fc.array(fc.tuple(fc.nat(), narrowingArb), { minLength: 1, maxLength: 12 }),
});

function build(root: Constraints, steps: [number, DelegationRequest][]) {
  const now = 1_000_000;
  const { kernel } = makeKernel({ clock: () => now, maxDelegationDepth: 6 });
  const nodes: Capability[] = [kernel.requestCapability('p0', { type: 'tool', pattern: '*' }, OPS, root, { ttlMs: 10_000 })];
  steps.forEach(([pick, req], i) => {
    const parent = nodes[pick % nodes.length]!;
    try {
      nodes.push(kernel.delegate(parent.id, `p${i + 1}`, req));
    } catch (e) {
      // Widening and depth refusals are expected for random requests; anything else is a bug.
      expect(['E_WIDENS', 'E_DEPTH_EXCEEDED']).toContain((e as { code?: string }).code);
    }
  });
  return { kernel, nodes };
}

describe('delegation properties', () => {
  const seen = { delegated: 0, descendantAllowed: 0 };
  afterAll(() => {
    // Guard against a vacuous pass: trees must grow and descendants must allow things.
    expect(seen.delegated).toBeGreaterThan(150); // typically ~300
    expect(seen.descendantAllowed).toBeGreaterThan(50); // typically ~250
  });

  it('no descendant permits anything its ancestor does not, and is never wider on expiry or limits', () => {
    fc.assert(
      fc.property(treeArb, fc.array(queryArb, { minLength: 1, maxLength: 12 }), ({ root, steps }, queries) => {
        const { kernel, nodes } = build(root, steps);
        const byId = new Map(nodes.map((n) => [n.id, n]));
        seen.delegated += nodes.length - 1;
        for (const n of nodes) {
          const parent = n.parentId ? byId.get(n.parentId)! : undefined;
          if (!parent) continue;
          expect(n.expiresAt).toBeLessThanOrEqual(parent.expiresAt);
          for (const k of ['memoryBytes', 'pids', 'cpu', 'timeoutMs'] as const) {
            const pv = parent.constraints.limits?.[k];
            if (pv !== undefined) expect(n.constraints.limits?.[k]).toBeLessThanOrEqual(pv);
          }
          if (parent.constraints.maxDelegationDepth !== undefined) expect(n.constraints.maxDelegationDepth).toBeLessThanOrEqual(parent.constraints.maxDelegationDepth);
        }
        const allows = (c: Capability, q: (typeof queries)[number]) => {
          try {
            kernel.validateCapability(c.id, q.op, q.res, { principal: c.principal, ...q.ctx });
            return true;
          } catch (e) {
            expect((e as { code?: string }).code).toMatch(/^E_/);
            return false;
          }
        };
        for (const q of queries) {
          for (const n of nodes) {
            if (!allows(n, q)) continue;
            if (n.depth > 0) seen.descendantAllowed++;
            for (const a of n.ancestors) expect(allows(byId.get(a)!, q)).toBe(true);
          }
        }
      }),
      { numRuns: 150 },
    );
  });

  it('revoking any node invalidates exactly its subtree', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(), { minLength: 1, maxLength: 15 }), fc.nat(), (parents, pick) => {
        const { kernel } = makeKernel({ maxDelegationDepth: 20 });
        const nodes = [kernel.requestCapability('p0', { type: 'tool', pattern: '*' }, ['invoke'])];
        parents.forEach((p, i) => nodes.push(kernel.delegate(nodes[p % nodes.length]!.id, `p${i + 1}`)));
        const target = nodes[pick % nodes.length]!;
        kernel.revokeCapability(target.id);
        for (const n of nodes) {
          const inSubtree = n.id === target.id || n.ancestors.includes(target.id);
          let valid = true;
          try {
            kernel.validateCapability(n.id, 'invoke', 't', { principal: n.principal });
          } catch (e) {
            valid = false;
            expect(['E_REVOKED', 'E_ANCESTOR_REVOKED']).toContain((e as { code?: string }).code);
          }
          expect(valid).toBe(!inSubtree);
        }
      }),
      { numRuns: 300 },
    );
  });
});
