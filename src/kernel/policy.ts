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

const NAME = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;

const required = z.boolean().default(true);
const ArgSpecSchema = z.discriminatedUnion('type', [
  z
    .object({
      type: z.literal('string'),
      required,
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
      min: z.number().optional(),
      max: z.number().optional(),
      integer: z.boolean().default(false),
    })
    .strict(),
  z.object({ type: z.literal('boolean'), required }).strict(),
  z.object({ type: z.literal('enum'), required, values: z.array(z.string()).min(1) }).strict(),
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

  /** The argv to run: placeholders filled, file arguments replaced by their checked real paths. */
  argv(args: ToolArgs, realPaths: Record<string, string> = {}): string[] {
    const out: string[] = [];
    for (const part of this.spec.command) {
      const whole = /^\{([^}]*)\}$/.exec(part);
      if (whole && args[whole[1]!] === undefined) continue; // optional argument left out
      out.push(part.replace(/\{([^}]*)\}/g, (_, name: string) => realPaths[name] ?? String(args[name] ?? '')));
    }
    return out;
  }
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
