// `when` constraints: a CEL expression that must evaluate to true for a call to be allowed,
// over { tool, args, principal, operation, resource, now, host }. Expressions come from token
// holders, who may be hostile, so each one is compiled once (parse + type check + a cost
// check) and cached, and evaluation cost is bounded before the first evaluation: a length
// limit, AST node and depth limits, at most one level of list comprehension (so cost grows
// with the size of the arguments, never with its square), and `matches` only with a literal
// pattern that cannot backtrack exponentially (cel-js hands patterns to JavaScript's
// backtracking RegExp, not to RE2).
import { Environment, type ASTNode } from '@marcbachmann/cel-js';
import { CaptrapError } from '../errors.js';

export const CEL_ERROR_CODES = ['E_CEL_PARSE', 'E_CEL_TYPE', 'E_CEL_TOO_COMPLEX', 'E_CEL_NOT_BOOLEAN', 'E_CEL_EVAL'] as const;
export type CelErrorCode = (typeof CEL_ERROR_CODES)[number];

export class CelError extends CaptrapError {
  declare readonly code: CelErrorCode;
  constructor(code: CelErrorCode, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(code, message, details, options);
  }
}

export const CEL_LIMITS = Object.freeze({
  /** Characters of source. */
  maxLength: 2048,
  maxAstNodes: 256,
  maxDepth: 32,
  /** Literal lists and maps. */
  maxListElements: 64,
  maxMapEntries: 64,
  maxCallArguments: 8,
  /** How deeply comprehensions (all, exists, exists_one, map, filter) may nest in each other's bodies. */
  maxComprehensionNesting: 1,
  /** Compiled expressions kept; the least recently used is dropped past this. */
  cacheSize: 4096,
});

/** What a `when` expression sees. `now` is milliseconds since the epoch or a Date. */
export interface CelRequest {
  tool: string;
  args: Readonly<Record<string, unknown>>;
  principal: string;
  operation: string;
  resource: string;
  now: number | Date;
  /** The name of the host evaluating the call (the verifier's, not the caller's claim). */
  host: string;
}

/** A request converted once into CEL values; reuse it for every block of a token. */
export interface CelActivation {
  readonly __celActivation: true;
}

const COMPREHENSIONS = new Set(['all', 'exists', 'exists_one', 'map', 'filter']);

const env = new Environment({
  unlistedVariablesAreDyn: false,
  limits: {
    maxAstNodes: CEL_LIMITS.maxAstNodes,
    maxDepth: CEL_LIMITS.maxDepth,
    maxListElements: CEL_LIMITS.maxListElements,
    maxMapEntries: CEL_LIMITS.maxMapEntries,
    maxCallArguments: CEL_LIMITS.maxCallArguments,
  },
})
  .registerVariable('tool', 'string')
  .registerVariable('args', 'map')
  .registerVariable('principal', 'string')
  .registerVariable('operation', 'string')
  .registerVariable('resource', 'string')
  .registerVariable('now', 'google.protobuf.Timestamp')
  .registerVariable('host', 'string');

/** JSON-ish values as CEL sees them: integers become CEL ints (bigint), so `args.n == 5` holds for 5. */
function toCel(v: unknown, depth = 0): unknown {
  if (depth > 32) throw new CelError('E_CEL_EVAL', 'arguments nest too deeply for a when expression');
  if (typeof v === 'number') return Number.isSafeInteger(v) ? BigInt(v) : v;
  if (v === undefined) return null;
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map((x) => toCel(x, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) out[k] = toCel(x, depth + 1);
  return out;
}

// cel-js answers now.getHours("Europe/Berlin") and the other time-zone methods by calling
// toLocaleString('en-US', { timeZone }) on the timestamp, which builds a new formatter on every
// call: about 130 µs each, measured, so a time_window expression cost more than the whole
// signature check. `now` is therefore a Date whose toLocaleString reuses one formatter per zone,
// configured as toLocaleString's defaults are, so the text (and the answer) is the same
// (test/kernel/cel.test.ts compares them over two years of hours in zones with odd offsets).
const LOCALE_DEFAULTS = { year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric' } as const;
const formatters = new Map<string, Intl.DateTimeFormat>();
const MAX_FORMATTERS = 1024;

/** Date.prototype.toLocaleString, with one cached formatter per zone for the call cel-js makes. */
function toLocaleStringCached(this: Date, locales?: string | string[], options?: Intl.DateTimeFormatOptions): string {
  const zone = options?.timeZone;
  if (locales !== 'en-US' || zone === undefined || Object.keys(options!).length !== 1) return Date.prototype.toLocaleString.call(this, locales, options);
  let f = formatters.get(zone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { ...LOCALE_DEFAULTS, timeZone: zone }); // throws RangeError for an unknown zone, as toLocaleString does
    if (formatters.size >= MAX_FORMATTERS) formatters.clear();
    formatters.set(zone, f);
  }
  return f.format(this);
}

/** A plain Date (cel-js checks the constructor) carrying the cached toLocaleString as an own property. */
function celNow(ms: number): Date {
  const d = new Date(ms);
  Object.defineProperty(d, 'toLocaleString', { value: toLocaleStringCached });
  return d;
}

export function toCelActivation(r: CelRequest): CelActivation {
  return {
    tool: r.tool,
    args: toCel(r.args),
    principal: r.principal,
    operation: r.operation,
    resource: r.resource,
    now: celNow(r.now instanceof Date ? r.now.getTime() : r.now),
    host: r.host,
  } as unknown as CelActivation;
}

export interface CompiledWhen {
  readonly source: string;
  /** True or false; throws CelError (E_CEL_EVAL, E_CEL_NOT_BOOLEAN) when it cannot decide, which callers treat as a refusal. */
  test(activation: CelActivation): boolean;
}

function positionOf(err: unknown): number | undefined {
  const e = err as { range?: { start?: number }; node?: { pos?: number } };
  return e.range?.start ?? e.node?.pos;
}

function lineColumn(source: string, pos: number): { line: number; column: number } {
  const before = source.slice(0, pos).split('\n');
  return { line: before.length, column: before[before.length - 1]!.length + 1 };
}

function summaryOf(err: unknown): string {
  const e = err as { summary?: unknown; message?: unknown };
  if (typeof e.summary === 'string' && e.summary) return e.summary;
  return String(e.message ?? err).split('\n')[0]!;
}

function located(code: CelErrorCode, what: string, source: string, err: unknown): CelError {
  const pos = positionOf(err);
  const where = pos === undefined ? '' : ` at position ${pos} (line ${lineColumn(source, pos).line}, column ${lineColumn(source, pos).column})`;
  return new CelError(code, `when: ${what}${where}: ${summaryOf(err)}`, { expression: source, position: pos }, { cause: err });
}

/**
 * Whether a regular expression literal could take exponential time in a backtracking engine:
 * a quantified group that itself holds a quantifier or an alternation ((a+)+, (a|aa)*), a
 * backreference, or more than two unbounded repetitions (polynomial backtracking: .*.*.*x). Sound for the patterns people write in constraints; may refuse a few safe ones.
 */
export function unsafeRegex(pattern: string): string | undefined {
  if (/\\[1-9]|\\k</.test(pattern)) return 'backreferences are not allowed';
  const groups: { risky: boolean }[] = [];
  // k unbounded repetitions in a row (.*.*.*x) backtrack in O(n^k) even without groups.
  let unbounded = 0;
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i]!;
    if (ch === '\\') {
      i++;
      continue;
    }
    if (ch === '[') {
      // Skip a character class: its metacharacters are literal.
      for (i++; i < pattern.length && pattern[i] !== ']'; i++) if (pattern[i] === '\\') i++;
      continue;
    }
    if (ch === '(') groups.push({ risky: false });
    else if (ch === ')') {
      const g = groups.pop();
      const next = pattern[i + 1];
      const quantified = next === '*' || next === '+' || next === '{' || next === '?';
      if (g?.risky && quantified && next !== '?') return 'a repeated group may not contain a quantifier or an alternation';
      if (g?.risky && groups.length > 0) groups[groups.length - 1]!.risky = true;
      if (quantified && groups.length > 0) groups[groups.length - 1]!.risky = true;
    } else if ((ch === '*' || ch === '+' || ch === '{' || ch === '|') && groups.length > 0) {
      groups[groups.length - 1]!.risky = true;
    }
    if (ch === '*' || ch === '+' || (ch === '{' && /^\{\d+,\}/.test(pattern.slice(i)))) unbounded++;
  }
  if (unbounded > MAX_UNBOUNDED_REPEATS) return `at most ${MAX_UNBOUNDED_REPEATS} unbounded repetitions (*, +, {n,}) are allowed`;
  return undefined;
}

const MAX_UNBOUNDED_REPEATS = 2;

type Node = ASTNode & { op: string; args: unknown; pos: number };

/** Cost checks the parser's limits do not make: comprehension nesting and `matches` patterns. */
function checkCost(root: ASTNode, source: string): void {
  const visit = (n: Node, nesting: number): void => {
    if (n.op === 'rcall' || n.op === 'call') {
      const [name, ...rest] = n.args as [string, ...unknown[]];
      const receiver = n.op === 'rcall' ? (rest[0] as Node) : undefined;
      const params = (n.op === 'rcall' ? rest[1] : rest[0]) as Node[];
      if (name === 'matches') {
        const pattern = params[params.length - 1];
        if (!pattern || pattern.op !== 'value' || typeof pattern.args !== 'string') {
          throw new CelError('E_CEL_TOO_COMPLEX', `when: matches() needs a string literal pattern at position ${n.pos}`, { expression: source, position: n.pos });
        }
        const why = unsafeRegex(pattern.args);
        if (why) throw new CelError('E_CEL_TOO_COMPLEX', `when: pattern at position ${pattern.pos}: ${why}`, { expression: source, position: pattern.pos });
      }
      const comprehension = n.op === 'rcall' && COMPREHENSIONS.has(name);
      if (comprehension && nesting + 1 > CEL_LIMITS.maxComprehensionNesting) {
        throw new CelError('E_CEL_TOO_COMPLEX', `when: ${name}() at position ${n.pos} nests comprehensions deeper than ${CEL_LIMITS.maxComprehensionNesting}`, {
          expression: source,
          position: n.pos,
        });
      }
      if (receiver) visit(receiver, nesting);
      for (const p of params) visit(p, comprehension ? nesting + 1 : nesting);
      return;
    }
    const a = n.args;
    if (Array.isArray(a)) {
      for (const x of a) {
        if (Array.isArray(x)) for (const y of x) isNode(y) && visit(y, nesting);
        else if (isNode(x)) visit(x, nesting);
      }
    } else if (isNode(a)) visit(a, nesting);
  };
  visit(root as Node, 0);
}

function isNode(x: unknown): x is Node {
  return typeof x === 'object' && x !== null && 'op' in x && 'args' in x;
}

const cache = new Map<string, CompiledWhen>();

function compileUncached(source: string): CompiledWhen {
  if (typeof source !== 'string' || source.trim() === '') throw new CelError('E_CEL_PARSE', 'when: the expression is empty', { expression: source });
  if (source.length > CEL_LIMITS.maxLength) {
    throw new CelError('E_CEL_TOO_COMPLEX', `when: the expression is ${source.length} characters; at most ${CEL_LIMITS.maxLength} are allowed`, { expression: source.slice(0, 64) });
  }
  let program: ReturnType<Environment['parse']>;
  try {
    program = env.parse(source);
  } catch (err) {
    // cel-js reports its structural limits as parse errors; both are refusals at issuance.
    const code = /limit|exceed|maximum/i.test(summaryOf(err)) ? 'E_CEL_TOO_COMPLEX' : 'E_CEL_PARSE';
    throw located(code, code === 'E_CEL_PARSE' ? 'syntax error' : 'too complex', source, err);
  }
  const checked = program.check();
  if (!checked.valid) throw located('E_CEL_TYPE', 'type error', source, checked.error);
  if (checked.type !== 'bool' && checked.type !== 'dyn') {
    throw new CelError('E_CEL_NOT_BOOLEAN', `when: the expression has type ${checked.type}; it must be bool`, { expression: source, type: checked.type });
  }
  checkCost(program.ast, source);
  return Object.freeze({
    source,
    test(activation: CelActivation): boolean {
      let v: unknown;
      try {
        v = program(activation as unknown as Record<string, unknown>);
      } catch (err) {
        throw located('E_CEL_EVAL', 'evaluation failed', source, err);
      }
      if (typeof v !== 'boolean') throw new CelError('E_CEL_NOT_BOOLEAN', `when: evaluated to a ${typeof v}, not a bool`, { expression: source });
      return v;
    },
  });
}

/**
 * The compiled form of `source`, from the cache when seen before. Throws CelError with the
 * position for a syntax or type error (E_CEL_PARSE, E_CEL_TYPE), E_CEL_TOO_COMPLEX past a cost
 * limit, E_CEL_NOT_BOOLEAN when the type is known not to be bool.
 */
export function compileWhen(source: string): CompiledWhen {
  const hit = cache.get(source);
  if (hit) {
    // Re-insert: Map keeps insertion order, so the oldest entry is the least recently used.
    cache.delete(source);
    cache.set(source, hit);
    return hit;
  }
  const compiled = compileUncached(source);
  if (cache.size >= CEL_LIMITS.cacheSize) cache.delete(cache.keys().next().value!);
  cache.set(source, compiled);
  return compiled;
}

/** Compiles (cached) and evaluates in one step; see CompiledWhen.test. */
export function evaluateWhen(source: string, request: CelRequest): boolean {
  return compileWhen(source).test(toCelActivation(request));
}
