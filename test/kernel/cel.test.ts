// `when` expressions: compilation errors with positions, cost limits, non-boolean results, and
// the original Phase 2 constraints (time_window, allowed_extensions) written in CEL.
import { describe, expect, it } from 'vitest';
import { CEL_LIMITS, compileWhen, evaluateWhen, toCelActivation, unsafeRegex, type CelRequest } from '../../src/kernel/cel.js';
import { attenuate, issueToken, verifyToken } from '../../src/kernel/tokens/index.js';
import { codeOf } from './helpers.js';
import { generateEd25519KeyObjects } from '../../src/kernel/tokens/ed25519.js';

const MONDAY_10_UTC = Date.UTC(2026, 0, 5, 10, 0, 0);
const SATURDAY_10_UTC = Date.UTC(2026, 0, 10, 10, 0, 0);
const MONDAY_20_UTC = Date.UTC(2026, 0, 5, 20, 0, 0);

const req = (over: Partial<CelRequest> = {}): CelRequest => ({
  tool: 'read_file',
  args: { path: '/data/in/report.csv', count: 3, tags: ['a', 'b'] },
  principal: 'planner/worker',
  operation: 'invoke',
  resource: 'read_file',
  now: MONDAY_10_UTC,
  host: 'build-1',
  ...over,
});

// The original system's Phase 2 constraints, as documented in docs/tokens.md.
const TIME_WINDOW = 'now.getDayOfWeek("UTC") >= 1 && now.getDayOfWeek("UTC") <= 5 && now.getHours("UTC") >= 9 && now.getHours("UTC") < 17';
const ALLOWED_EXTENSIONS = '[".csv", ".json"].exists(ext, args.path.endsWith(ext))';

describe('compileWhen', () => {
  it('evaluates over tool, args, principal, operation, resource, now and host', () => {
    expect(evaluateWhen('tool == "read_file" && operation == "invoke" && resource == tool', req())).toBe(true);
    expect(evaluateWhen('principal.startsWith("planner/") && host in ["build-1", "build-2"]', req())).toBe(true);
    expect(evaluateWhen('args.count == 3 && args.count < 10 && "b" in args.tags', req())).toBe(true);
    expect(evaluateWhen('host == "build-9"', req())).toBe(false);
  });

  it('expresses time_window', () => {
    expect(evaluateWhen(TIME_WINDOW, req())).toBe(true);
    expect(evaluateWhen(TIME_WINDOW, req({ now: SATURDAY_10_UTC }))).toBe(false);
    expect(evaluateWhen(TIME_WINDOW, req({ now: MONDAY_20_UTC }))).toBe(false);
    // Time zones: 10:00 UTC is 11:00 in Berlin in January.
    expect(evaluateWhen('now.getHours("Europe/Berlin") == 11', req())).toBe(true);
    // Absolute windows compare timestamps.
    expect(evaluateWhen('now < timestamp("2026-02-01T00:00:00Z")', req())).toBe(true);
  });

  it('answers time-zone methods exactly as toLocaleString does (now carries a cached formatter)', () => {
    const zones = ['UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Kolkata', 'Pacific/Chatham'];
    let checked = 0;
    // Every 29 hours and 17 minutes over two years: every hour of the day, both sides of DST changes.
    for (let t = Date.UTC(2025, 0, 1); t < Date.UTC(2027, 0, 1); t += 29 * 3_600_000 + 17 * 60_000) {
      for (const z of zones) {
        const want = new Date(new Date(t).toLocaleString('en-US', { timeZone: z }));
        const expr = `now.getHours("${z}") == ${want.getHours()} && now.getMinutes("${z}") == ${want.getMinutes()} && now.getDayOfWeek("${z}") == ${want.getDay()} && now.getDate("${z}") == ${want.getDate()}`;
        expect(evaluateWhen(expr, req({ now: t }))).toBe(true);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(2500);
    expect(codeOf(() => evaluateWhen('now.getHours("Not/AZone") == 1', req()))).toBe('E_CEL_EVAL');
  });

  it('expresses allowed_extensions', () => {
    expect(evaluateWhen(ALLOWED_EXTENSIONS, req())).toBe(true);
    expect(evaluateWhen(ALLOWED_EXTENSIONS, req({ args: { path: '/data/x.exe' } }))).toBe(false);
    expect(evaluateWhen('args.path.matches("^/data/[a-z/]+\\\\.(csv|json)$")', req())).toBe(true);
  });

  it('refuses syntax and type errors with their position', () => {
    let e: { code?: string; details?: { position?: number }; message?: string } = {};
    try {
      compileWhen('tool == "a" &&');
    } catch (err) {
      e = err as typeof e;
    }
    expect(e.code).toBe('E_CEL_PARSE');
    expect(e.details?.position).toBe(14);
    expect(e.message).toMatch(/line 1, column 15/);
    expect(codeOf(() => compileWhen('undeclared == 1'))).toBe('E_CEL_TYPE');
    expect(codeOf(() => compileWhen('tool + 1 == 2'))).toBe('E_CEL_TYPE');
    expect(codeOf(() => compileWhen(''))).toBe('E_CEL_PARSE');
  });

  it('refuses a result that is not a bool, at compile time when the type says so and at run time otherwise', () => {
    expect(codeOf(() => compileWhen('1 + 2'))).toBe('E_CEL_NOT_BOOLEAN');
    expect(codeOf(() => compileWhen('tool'))).toBe('E_CEL_NOT_BOOLEAN');
    expect(codeOf(() => evaluateWhen('args.path', req()))).toBe('E_CEL_NOT_BOOLEAN');
  });

  it('bounds cost: length, AST size, comprehension nesting, backtracking patterns', () => {
    // Under the length limit, over the node limit:
    const wide = Array.from({ length: 150 }, () => 'tool=="x"').join('||');
    expect(wide.length).toBeLessThan(CEL_LIMITS.maxLength);
    expect(codeOf(() => compileWhen(wide))).toBe('E_CEL_TOO_COMPLEX');
    const deep = '('.repeat(40) + 'true' + ')'.repeat(40);
    expect(codeOf(() => compileWhen(deep))).toBe('E_CEL_TOO_COMPLEX');
    expect(codeOf(() => compileWhen('args.tags.all(a, args.tags.all(b, a == b))'))).toBe('E_CEL_TOO_COMPLEX');
    expect(codeOf(() => compileWhen('args.path.matches("(a+)+$")'))).toBe('E_CEL_TOO_COMPLEX');
    expect(codeOf(() => compileWhen('args.path.matches("(a|aa)*b")'))).toBe('E_CEL_TOO_COMPLEX');
    expect(codeOf(() => compileWhen('args.path.matches(args.pattern)'))).toBe('E_CEL_TOO_COMPLEX');
    expect(codeOf(() => compileWhen('args.path.matches("(x)\\\\1")'))).toBe('E_CEL_TOO_COMPLEX');
    expect(codeOf(() => compileWhen('args.path.matches("a.*b.*c.*d")'))).toBe('E_CEL_TOO_COMPLEX');
    expect(codeOf(() => compileWhen('"' + 'x'.repeat(CEL_LIMITS.maxLength) + '" == tool'))).toBe('E_CEL_TOO_COMPLEX');
  });

  it('unsafeRegex passes ordinary patterns', () => {
    for (const p of ['^/data/.*\\.csv$', '^[a-z]+(-[a-z]+)?$', '(csv|json)$', '[(+)*]+', 'a{2,5}b{3}']) expect(unsafeRegex(p)).toBeUndefined();
    expect(unsafeRegex('a{2,}b{3,}c{1,}')).toMatch(/unbounded/);
  });

  it('caches the compiled form', () => {
    expect(compileWhen('tool == "cached"')).toBe(compileWhen('tool == "cached"'));
  });

  it('fails closed when an argument is missing', () => {
    expect(codeOf(() => compileWhen('args.nope == "x"').test(toCelActivation(req())))).toBe('E_CEL_EVAL');
  });
});

describe('when in tokens', () => {
  const pair = generateEd25519KeyObjects();
  const publicKeys = new Map([['k', pair.publicKey]]);
  const base = () =>
    issueToken({ key: { id: 'k', privateKey: pair.privateKey }, resourceType: 'tool', resource: '*', operations: ['invoke'], when: TIME_WINDOW, expiresAt: MONDAY_10_UTC + 7 * 86_400_000, now: MONDAY_10_UTC });
  const call = (args: Record<string, unknown>, now: number) =>
    verifyToken(attenuate(base(), { when: ALLOWED_EXTENSIONS }), {
      publicKeys,
      isRevoked: () => false,
      now,
      request: { principal: 'p', operation: 'invoke', resource: 'read_file', args, host: 'h' },
    });

  it("ANDs a child's when with its parent's", () => {
    expect(() => call({ path: '/a.csv' }, MONDAY_10_UTC)).not.toThrow();
    expect(codeOf(() => call({ path: '/a.exe' }, MONDAY_10_UTC))).toBe('E_TOKEN_DENIED'); // child says no
    expect(codeOf(() => call({ path: '/a.csv' }, SATURDAY_10_UTC))).toBe('E_TOKEN_DENIED'); // parent says no
  });
});
