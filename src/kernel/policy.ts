// The tool catalogue: which tools exist, what command each runs, what arguments it takes,
// which arguments name resources (a file read or written, a URL, a command line), and the
// default sandbox limits. Loaded from JSON or YAML, validated with zod; argument schemas are
// written in a small declarative language and compiled to zod here.
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { LimitsSchema, type AccessArguments, type FileAccess, type Limits } from './constraints.js';
import { AccessDeniedError, PolicyConfigError } from './errors.js';
import { checkUrlSpelling } from './urls.js';

const NAME = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;

/** What a tool call does to its resources; a capability granting `read` runs only `read` tools. */
export const TOOL_OPERATIONS = ['read', 'write', 'list', 'execute'] as const;
export type ToolOperation = (typeof TOOL_OPERATIONS)[number];

const required = z.boolean().default(true);
/** A value never to be written anywhere (audit records, logs): a password, a token. */
const secret = z.boolean().optional();
const ArgSpecSchema = z.discriminatedUnion('type', [
  z
    .object({
      type: z.literal('string'),
      required,
      secret,
      minLength: z.number().int().nonnegative().optional(),
      maxLength: z.number().int().positive().optional(),
      /** A JavaScript regular expression the whole value must match. */
      pattern: z
        .string()
        .refine((p) => {
          try {
            new RegExp(p);
            return true;
          } catch {
            return false;
          }
        }, 'expected a valid regular expression')
        .optional(),
    })
    .strict(),
  z
    .object({
      type: z.literal('number'),
      required,
      secret,
      min: z.number().optional(),
      max: z.number().optional(),
      integer: z.boolean().default(false),
    })
    .strict(),
  z.object({ type: z.literal('boolean'), required, secret }).strict(),
  z.object({ type: z.literal('enum'), required, secret, values: z.array(z.string()).min(1) }).strict(),
]);
export type ArgSpec = z.infer<typeof ArgSpecSchema>;

const ResourceMappingSchema = z.discriminatedUnion('kind', [
  z
    .object({
      kind: z.literal('file'),
      arg: z.string(),
      access: z.enum(['read', 'write']),
      /** For writes: the argument whose UTF-8 byte length is the size written (checked against maxFileSize). */
      sizeFrom: z.string().optional(),
    })
    .strict(),
  z.object({ kind: z.literal('url'), arg: z.string() }).strict(),
  z.object({ kind: z.literal('command'), arg: z.string() }).strict(),
]);
export type ResourceMapping = z.infer<typeof ResourceMappingSchema>;

const ToolSchema = z
  .object({
    name: z.string().regex(NAME, 'expected a name of letters, digits, _ . - starting with a letter'),
    description: z.string().optional(),
    /** argv; an element `{arg}` is replaced by that argument's value (a file argument by its real path). */
    command: z.array(z.string().min(1)).min(1),
    args: z.record(z.string().regex(NAME), ArgSpecSchema).default({}),
    resources: z.array(ResourceMappingSchema).default([]),
    /** What a call does, for capabilities that grant operations rather than `invoke`; derived from `resources` when absent. */
    operation: z.enum(TOOL_OPERATIONS).optional(),
    limits: LimitsSchema.optional(),
  })
  .strict()
  .superRefine((t, ctx) => {
    t.resources.forEach((r, i) => {
      for (const [field, arg] of [['arg', r.arg], ['sizeFrom', r.kind === 'file' ? r.sizeFrom : undefined]] as const) {
        if (arg === undefined) continue;
        const spec = t.args[arg];
        if (!spec || spec.type !== 'string') {
          ctx.addIssue({ code: 'custom', path: ['resources', i, field], message: `expected the name of a string argument of ${t.name}, got '${arg}'` });
        }
      }
    });
    t.command.forEach((part, i) => {
      for (const m of part.matchAll(/\{([^}]*)\}/g)) {
        if (!(m[1]! in t.args)) ctx.addIssue({ code: 'custom', path: ['command', i], message: `expected {arg} to name an argument; '${m[1]}' is not one` });
      }
    });
  });
export type ToolSpec = z.infer<typeof ToolSchema>;

export const CatalogueSchema = z
  .object({ version: z.literal(1), tools: z.array(ToolSchema) })
  .strict()
  .superRefine((c, ctx) => {
    const seen = new Set<string>();
    c.tools.forEach((t, i) => {
      if (seen.has(t.name)) ctx.addIssue({ code: 'custom', path: ['tools', i, 'name'], message: `expected a unique tool name; '${t.name}' appears twice` });
      seen.add(t.name);
    });
  });
export type Catalogue = z.infer<typeof CatalogueSchema>;

function argSchema(spec: ArgSpec): z.ZodType {
  let s: z.ZodType;
  switch (spec.type) {
    case 'string': {
      let str = z.string();
      if (spec.minLength !== undefined) str = str.min(spec.minLength);
      if (spec.maxLength !== undefined) str = str.max(spec.maxLength);
      if (spec.pattern !== undefined) str = str.regex(new RegExp(`^(?:${spec.pattern})$`));
      s = str;
      break;
    }
    case 'number': {
      let n = z.number();
      if (spec.integer) n = n.int();
      if (spec.min !== undefined) n = n.min(spec.min);
      if (spec.max !== undefined) n = n.max(spec.max);
      s = n;
      break;
    }
    case 'boolean':
      s = z.boolean();
      break;
    case 'enum':
      s = z.enum(spec.values as [string, ...string[]]);
      break;
  }
  return spec.required ? s : s.optional();
}

export type ToolArgs = Record<string, string | number | boolean>;

/** A catalogue entry ready to check calls: its argument schema compiled to zod. */
export class Tool {
  readonly spec: ToolSpec;
  private readonly schema: z.ZodType<ToolArgs>;

  constructor(spec: ToolSpec) {
    this.spec = spec;
    const shape: Record<string, z.ZodType> = {};
    for (const [name, a] of Object.entries(spec.args)) shape[name] = argSchema(a);
    this.schema = z.object(shape).strict() as unknown as z.ZodType<ToolArgs>;
  }

  get name(): string {
    return this.spec.name;
  }

  /** The declared operation, else: writes a file -> write; touches files or URLs -> read; otherwise execute. */
  get operation(): ToolOperation {
    if (this.spec.operation) return this.spec.operation;
    const rs = this.spec.resources;
    if (rs.some((r) => r.kind === 'file' && r.access === 'write')) return 'write';
    if (rs.some((r) => r.kind === 'file' || r.kind === 'url')) return 'read';
    return 'execute';
  }

  /** Validates call arguments; AccessDeniedError('E_INVALID_ARGUMENTS') names the zod path. */
  parseArgs(args: unknown): ToolArgs {
    const r = this.schema.safeParse(args);
    if (!r.success) {
      const issue = r.error.issues[0]!;
      const path = issue.path.map(String).join('.') || '(arguments)';
      throw new AccessDeniedError('E_INVALID_ARGUMENTS', `tool ${this.name}: argument ${path}: ${issue.message}`, {
        tool: this.name,
        path: issue.path.map(String),
      });
    }
    return r.data;
  }

  /** The resources a (parsed) call touches, in the form the constraints check. */
  accessOf(args: ToolArgs): AccessArguments {
    const files: FileAccess[] = [];
    const urls: { url: string; arg: string }[] = [];
    const commands: { command: string; arg: string }[] = [];
    for (const r of this.spec.resources) {
      const v = args[r.arg];
      if (typeof v !== 'string') continue; // optional and absent
      if (r.kind === 'file') {
        const f: FileAccess = { path: v, access: r.access, arg: r.arg };
        const content = r.sizeFrom === undefined ? undefined : args[r.sizeFrom];
        if (typeof content === 'string') f.size = Buffer.byteLength(content);
        files.push(f);
      } else if (r.kind === 'url') urls.push({ url: v, arg: r.arg });
      else commands.push({ command: v, arg: r.arg });
    }
    return { tool: this.name, files, urls, commands };
  }

  /**
   * The argv to run: placeholders filled, file arguments replaced by their checked real paths,
   * URL arguments by their canonical href (computed here when not given, so a caller that
   * forgets to pass them still never hands the tool a spelling it could read differently).
   */
  argv(args: ToolArgs, realPaths: Record<string, string> = {}, canonicalUrls: Record<string, string> = {}): string[] {
    const urls: Record<string, string> = {};
    for (const r of this.spec.resources) {
      const v = args[r.arg];
      if (r.kind !== 'url' || typeof v !== 'string' || realPaths[r.arg] !== undefined) continue;
      const given = canonicalUrls[r.arg];
      if (given !== undefined) {
        urls[r.arg] = given;
        continue;
      }
      const checked = checkUrlSpelling(v);
      if (!checked.ok) throw new AccessDeniedError('E_INVALID_ARGUMENTS', `tool ${this.name}: argument ${r.arg}: ${checked.reason}`, { tool: this.name, path: [r.arg] });
      urls[r.arg] = checked.href;
    }
    const out: string[] = [];
    const value = (name: string) => realPaths[name] ?? urls[name] ?? String(args[name] ?? '');
    for (const t of (this.template ??= compileCommand(this.spec.command))) {
      if (typeof t === 'string') out.push(t);
      else if (t.whole !== undefined) {
        if (args[t.whole] !== undefined) out.push(value(t.whole)); // else: optional argument left out
      } else {
        let s = '';
        for (const piece of t.pieces) s += typeof piece === 'string' ? piece : value(piece.name);
        out.push(s);
      }
    }
    return out;
  }

  /** The command parsed once into literals and `{name}` slots (argv() runs on every tool call). */
  private template: CommandPart[] | undefined;
}

/** A literal argument, a whole-argument `{name}` (left out when the argument is), or a mix of text and slots. */
type CommandPart = string | { whole: string; pieces?: undefined } | { whole?: undefined; pieces: (string | { name: string })[] };

function compileCommand(command: readonly string[]): CommandPart[] {
  return command.map((part): CommandPart => {
    const whole = /^\{([^}]*)\}$/.exec(part);
    if (whole) return { whole: whole[1]! };
    if (!part.includes('{')) return part;
    const pieces: (string | { name: string })[] = [];
    let last = 0;
    for (const m of part.matchAll(/\{([^}]*)\}/g)) {
      if (m.index > last) pieces.push(part.slice(last, m.index));
      pieces.push({ name: m[1]! });
      last = m.index + m[0].length;
    }
    if (last < part.length) pieces.push(part.slice(last));
    return { pieces };
  });
}

function formatPath(path: readonly PropertyKey[]): string {
  let s = '';
  for (const p of path) s += typeof p === 'number' ? `[${p}]` : s ? `.${String(p)}` : String(p);
  return s || '(root)';
}

/** Parses and validates a catalogue; PolicyConfigError names the source, the field path and what was expected. */
export function parseCatalogue(value: unknown, source: string): Catalogue {
  const r = CatalogueSchema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    let where = formatPath(issue.path);
    // Name the tool too: "tools[2]" alone makes people count.
    const ti = issue.path[0] === 'tools' && typeof issue.path[1] === 'number' ? issue.path[1] : undefined;
    const toolName = ti === undefined ? undefined : (value as { tools?: { name?: unknown }[] }).tools?.[ti]?.name;
    if (typeof toolName === 'string') where += ` (tool ${toolName})`;
    throw new PolicyConfigError(`${source}: ${where}: ${issue.message}`, { source, field: where, issues: r.error.issues.length });
  }
  return r.data;
}

function readConfigFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new PolicyConfigError(`${path}: cannot read: ${(err as Error).message}`, { source: path }, err);
  }
  const ext = extname(path).toLowerCase();
  try {
    if (ext === '.json') return JSON.parse(text);
    if (ext === '.yaml' || ext === '.yml') return parseYaml(text);
  } catch (err) {
    throw new PolicyConfigError(`${path}: not valid ${ext === '.json' ? 'JSON' : 'YAML'}: ${(err as Error).message}`, { source: path }, err);
  }
  throw new PolicyConfigError(`${path}: expected a .json, .yaml or .yml file`, { source: path });
}

/** The live tool catalogue. A failed load or reload throws and leaves the previous good one in force. */
export class ToolPolicy {
  private tools = new Map<string, Tool>();
  private sourcePath: string | undefined;
  private generationCount = 0;

  static fromFile(path: string): ToolPolicy {
    const p = new ToolPolicy();
    p.loadFile(path);
    return p;
  }

  static fromObject(value: unknown, source = 'inline catalogue'): ToolPolicy {
    const p = new ToolPolicy();
    p.loadObject(value, source);
    return p;
  }

  loadFile(path: string): void {
    this.loadObject(readConfigFile(path), path);
    this.sourcePath = path;
  }

  loadObject(value: unknown, source = 'inline catalogue'): void {
    const cat = parseCatalogue(value, source);
    const next = new Map<string, Tool>();
    for (const t of cat.tools) next.set(t.name, new Tool(t));
    this.tools = next;
    this.generationCount++;
  }

  /** Re-reads the file last loaded. */
  reload(): void {
    if (!this.sourcePath) throw new PolicyConfigError('no catalogue file to reload: the policy was loaded from an object');
    this.loadFile(this.sourcePath);
  }

  /** Bumps on every successful (re)load. */
  get generation(): number {
    return this.generationCount;
  }

  tool(name: string): Tool | undefined {
    return this.tools.get(name);
  }

  names(): string[] {
    return [...this.tools.keys()];
  }
}

/** The tighter of a tool's default limits and a capability's limits. */
export function effectiveLimits(toolDefaults: Limits | undefined, capLimits: Limits | undefined): Limits {
  const out: Limits = {};
  for (const k of ['memoryBytes', 'pids', 'cpu', 'timeoutMs'] as const) {
    const a = toolDefaults?.[k];
    const b = capLimits?.[k];
    const v = a === undefined ? b : b === undefined ? a : Math.min(a, b);
    if (v !== undefined) out[k] = v;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Redaction: what of a call may be written down (audit records, logs)

export const REDACTED = '[redacted]';
export const MAX_LOGGED_VALUE = 256;
/** Argument and flag names that say their value is a secret, whatever the catalogue says. */
const SECRET_NAME = /passw(or)?d|passphrase|token|secret|key|credential/i;

function truncateValue(v: string): string {
  return v.length <= MAX_LOGGED_VALUE ? v : `${v.slice(0, MAX_LOGGED_VALUE)}...[truncated ${v.length - MAX_LOGGED_VALUE} chars]`;
}

function isSecretArg(tool: Tool | undefined, name: string): boolean {
  return tool?.spec.args[name]?.secret === true || SECRET_NAME.test(name);
}

/** A regular expression for the argv element a template part with placeholders produces. */
function partPattern(part: string): RegExp {
  const literal = part.split(/\{[^}]*\}/).map((l) => l.replace(/[\\^$.*+?()[\]{}|/]/g, '\\$&'));
  return new RegExp(`^${literal.join('[\\s\\S]*')}$`);
}

/**
 * Every way argv can have come from the command template (an optional argument's whole
 * placeholder may be missing): for each, the template part behind each argv element. Bounded;
 * an argv that fits no way gives none.
 */
function alignments(tool: Tool, argv: readonly string[]): string[][] {
  const template = tool.spec.command;
  const wholeOptional = (part: string): boolean => {
    const m = /^\{([^}]*)\}$/.exec(part);
    return m !== null && tool.spec.args[m[1]!]?.required === false;
  };
  const found: string[][] = [];
  const path: string[] = [];
  const go = (ti: number, ai: number): void => {
    if (found.length >= 64) return;
    if (ai === argv.length) {
      if (template.slice(ti).every(wholeOptional)) found.push([...path]);
      return;
    }
    if (ti === template.length) return;
    const part = template[ti]!;
    if (part.includes('{') ? partPattern(part).test(argv[ai]!) : part === argv[ai]) {
      path.push(part);
      go(ti + 1, ai + 1);
      path.pop();
    }
    if (wholeOptional(part)) go(ti + 1, ai);
  };
  go(0, 0);
  return found;
}

function redactArgv(tool: Tool | undefined, argv: readonly string[]): string[] {
  const out = argv.map(truncateValue);
  const readings = tool ? alignments(tool, argv) : [];
  // An argv this tool's template cannot explain, from a tool with secrets: keep only the program.
  if (tool && readings.length === 0 && Object.keys(tool.spec.args).some((n) => isSecretArg(tool, n))) return out.map((v, i) => (i === 0 ? v : REDACTED));
  // Where the alignment is ambiguous, an element is redacted if any reading makes it a secret.
  for (const parts of readings) {
    parts.forEach((part, i) => {
      const names = [...part.matchAll(/\{([^}]*)\}/g)].map((m) => m[1]!);
      if (!names.some((n) => isSecretArg(tool, n))) return;
      // Keep the literal text around a single placeholder (`--token={token}` stays readable).
      const one = names.length === 1 ? /^([^{]*)\{[^}]*\}([^{]*)$/.exec(part) : null;
      out[i] = one && argv[i]!.startsWith(one[1]!) && argv[i]!.endsWith(one[2]!) ? one[1]! + REDACTED + one[2]! : REDACTED;
    });
  }
  // Flags that name a secret, whatever the template: `--password=x`, `--token x`.
  for (let i = 0; i < argv.length; i++) {
    const m = /^(--?[A-Za-z0-9_.-]+)=/.exec(argv[i]!);
    if (m && SECRET_NAME.test(m[1]!)) out[i] = `${m[1]}=${REDACTED}`;
    else if (/^--?[A-Za-z0-9_.-]+$/.test(argv[i]!) && SECRET_NAME.test(argv[i]!) && i + 1 < argv.length && !argv[i + 1]!.startsWith('-')) out[++i] = REDACTED;
    else {
      const h = /^((?:proxy-)?authorization|cookie|x-api-key)(\s*:\s*)/i.exec(argv[i]!);
      if (h) out[i] = h[1]! + h[2]! + REDACTED;
    }
  }
  return out;
}

/**
 * A copy of a call's arguments fit to be written down: values of arguments the catalogue marks
 * `secret: true`, or named like a password, token, secret, key or credential, become
 * `[redacted]`; other strings longer than 256 characters are cut with a marker. Takes either
 * the argument record or the argv built from it (then aligned with the tool's command).
 */
export function redactArgs(tool: Tool | undefined, args: readonly string[]): string[];
export function redactArgs(tool: Tool | undefined, args: Readonly<Record<string, unknown>>): Record<string, unknown>;
export function redactArgs(tool: Tool | undefined, args: readonly string[] | Readonly<Record<string, unknown>>): string[] | Record<string, unknown> {
  if (Array.isArray(args)) return redactArgv(tool, args as readonly string[]);
  const out: Record<string, unknown> = {};
  for (const [name, v] of Object.entries(args)) {
    if (isSecretArg(tool, name)) out[name] = REDACTED;
    else if (typeof v === 'string') out[name] = truncateValue(v);
    else if (v === null || typeof v === 'number' || typeof v === 'boolean' || v === undefined) out[name] = v;
    else {
      let text: string;
      try {
        text = JSON.stringify(v) ?? String(v);
      } catch {
        text = String(v);
      }
      out[name] = truncateValue(text);
    }
  }
  return out;
}
