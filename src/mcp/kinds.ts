// What each argument of an MCP tool names, read from the tool's inputSchema: a file, a URL, a
// command, or nothing the kernel checks. MCP servers describe arguments with JSON Schema and
// names, not with captrap's catalogue, so the kind is guessed from the name (and `format: uri`)
// and the operator can correct a guess per server and tool. A guess errs towards checking: an
// argument that looks like a path is held to the roots even if the tool would not open it.
import type { AccessArguments, FileAccess } from '../kernel/constraints.js';
import { AccessDeniedError } from '../kernel/errors.js';
import type { ToolOperation } from '../kernel/policy.js';

export const ARGUMENT_KINDS = ['file', 'url', 'command', 'none'] as const;
export type ArgumentKind = (typeof ARGUMENT_KINDS)[number];

const FILE_WORDS = new Set(['path', 'paths', 'file', 'files', 'filename', 'filepath', 'dir', 'dirs', 'directory', 'directories', 'folder', 'source', 'sources', 'destination', 'dest', 'root', 'roots']);
const URL_WORDS = new Set(['url', 'urls', 'uri', 'uris', 'endpoint', 'endpoints', 'href']);
const COMMAND_WORDS = new Set(['command', 'commands', 'cmd', 'cmdline', 'commandline']);

/** `filePath`, `file_path`, `target-dir` -> ['file','path'], ['file','path'], ['target','dir']. */
function words(name: string): string[] {
  return name
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean)
    .map((w) => w.toLowerCase());
}

interface JsonSchemaProperty {
  type?: unknown;
  format?: unknown;
  items?: { format?: unknown } | unknown;
  writeOnly?: unknown;
}

/** The kind of one property, from its name (last word decides, so `file_path` and `sourceDir` are files) and its format. */
export function detectKind(name: string, schema: unknown): ArgumentKind {
  const s = (typeof schema === 'object' && schema !== null ? schema : {}) as JsonSchemaProperty;
  const items = (typeof s.items === 'object' && s.items !== null ? s.items : {}) as { format?: unknown };
  if (s.format === 'uri' || s.format === 'url' || s.format === 'iri' || items.format === 'uri') return 'url';
  const w = words(name);
  const last = w[w.length - 1];
  if (last === undefined) return 'none';
  if (URL_WORDS.has(last)) return 'url';
  if (COMMAND_WORDS.has(last)) return 'command';
  if (FILE_WORDS.has(last)) return 'file';
  return 'none';
}

/** What the operator says about one tool of one server (config `policy.tools.NAME`). */
export interface ToolOverride {
  /** Kind per argument name; wins over detection. */
  arguments?: Record<string, ArgumentKind>;
  /** The operation the tool performs; wins over its annotations. */
  operation?: ToolOperation;
  /** Argument names whose values never reach the audit log. */
  secret?: string[];
}

/** A tool as the upstream lists it (the fields the gate reads). */
export interface McpToolInfo {
  name: string;
  inputSchema?: { properties?: Record<string, unknown> } | undefined;
  annotations?: { readOnlyHint?: boolean | undefined; destructiveHint?: boolean | undefined } | undefined;
}

/** Every property's kind: detected, then overridden. */
export function argumentKinds(tool: McpToolInfo, override?: ToolOverride): Record<string, ArgumentKind> {
  const out: Record<string, ArgumentKind> = {};
  for (const [name, prop] of Object.entries(tool.inputSchema?.properties ?? {})) out[name] = detectKind(name, prop);
  for (const [name, kind] of Object.entries(override?.arguments ?? {})) out[name] = kind;
  return out;
}

/**
 * The operation a tool performs: the config's word, else `readOnlyHint: true` -> read, else
 * write. The spec's default for a tool that is not read-only is `destructiveHint: true`, so an
 * unannotated tool counts as one that writes: a read-only capability never reaches it.
 */
export function toolOperation(tool: McpToolInfo, override?: ToolOverride): ToolOperation {
  if (override?.operation) return override.operation;
  if (tool.annotations?.readOnlyHint === true) return 'read';
  return 'write';
}

/** Names whose values are secret: the config's list plus `writeOnly` and `format: password` properties. */
export function secretArguments(tool: McpToolInfo, override?: ToolOverride): Set<string> {
  const out = new Set(override?.secret ?? []);
  for (const [name, prop] of Object.entries(tool.inputSchema?.properties ?? {})) {
    const p = (typeof prop === 'object' && prop !== null ? prop : {}) as JsonSchemaProperty;
    if (p.writeOnly === true || p.format === 'password') out.add(name);
  }
  return out;
}

function invalid(tool: string, arg: string, message: string): never {
  throw new AccessDeniedError('E_INVALID_ARGUMENTS', `tool ${tool}: argument ${arg}: ${message}`, { tool, path: [arg] });
}

/** One string, or every element of an array of strings; anything else in a checked argument is refused (fail closed). */
function stringsOf(tool: string, arg: string, v: unknown): { value: string; key: string; index?: number }[] {
  if (typeof v === 'string') return [{ value: v, key: arg }];
  if (Array.isArray(v)) {
    return v.map((x, i) => {
      if (typeof x !== 'string') invalid(tool, `${arg}[${i}]`, 'expected a string');
      return { value: x, key: `${arg}[${i}]`, index: i };
    });
  }
  return invalid(tool, arg, 'expected a string or an array of strings');
}

/** The resources one call touches, in the form the kernel's constraints check. */
export function accessOf(toolName: string, args: Record<string, unknown>, kinds: Record<string, ArgumentKind>, operation: ToolOperation): AccessArguments {
  const files: FileAccess[] = [];
  const urls: { url: string; arg: string }[] = [];
  const commands: { command: string; arg: string }[] = [];
  const access = operation === 'read' || operation === 'list' ? 'read' : 'write';
  for (const [name, kind] of Object.entries(kinds)) {
    if (kind === 'none' || !(name in args) || args[name] === undefined || args[name] === null) continue;
    for (const s of stringsOf(toolName, name, args[name])) {
      if (kind === 'file') files.push({ path: s.value, access, arg: s.key });
      else if (kind === 'url') urls.push({ url: s.value, arg: s.key });
      else commands.push({ command: s.value, arg: s.key });
    }
  }
  return { tool: toolName, files, urls, commands };
}

/**
 * The arguments to forward: each checked path replaced by the real path the kernel judged and
 * each URL by its canonical spelling, so what was checked is what the server receives.
 */
export function rewriteArguments(args: Record<string, unknown>, realPaths: Record<string, string>, canonicalUrls: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...args };
  const replace = (key: string, value: string): void => {
    const m = /^(.*)\[(\d+)\]$/.exec(key);
    if (!m) {
      out[key] = value;
      return;
    }
    const arr = out[m[1]!];
    if (!Array.isArray(arr)) return;
    const copy = out[m[1]!] === args[m[1]!] ? [...arr] : arr;
    copy[Number(m[2])] = value;
    out[m[1]!] = copy;
  };
  for (const [k, v] of Object.entries(realPaths)) replace(k, v);
  for (const [k, v] of Object.entries(canonicalUrls)) replace(k, v);
  return out;
}
