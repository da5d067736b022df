// Constraints narrow what a capability allows. An absent field means "this capability adds
// no restriction on that dimension" (its parent's, if any, still applies through intersection,
// because a delegated capability carries the intersected set). Delegation never widens:
// `checkNarrowing` refuses a request that would, naming the dimension, and `intersectConstraints`
// computes what the child actually gets.
import { z } from 'zod';
import { destinationOf, destinationOfHost, entryCovers, entryMatches, parseDomainEntry, type Destination, type DomainEntry } from './domains.js';
import { AccessDeniedError, DelegationError, InvalidRequestError, type Dimension } from './errors.js';
import { checkPathInRootsSized, isWithin, resolveRealPath, resolveRealPathSized } from './paths.js';
import { checkUrlSpelling, effectiveSchemes, normalizeScheme, schemeAllowed } from './urls.js';

const nonNegInt = z.number().int().nonnegative();

/** Ceilings for sandboxes run under a capability; plain numbers the isolation layer takes as is. */
export const LimitsSchema = z
  .object({
    memoryBytes: z.number().int().positive().optional(),
    pids: z.number().int().positive().optional(),
    /** Fraction of one core, e.g. 0.5. */
    cpu: z.number().positive().finite().optional(),
    timeoutMs: z.number().int().positive().optional(),
  })
  .strict();
export type Limits = z.infer<typeof LimitsSchema>;
export const LIMIT_KEYS = ['memoryBytes', 'pids', 'cpu', 'timeoutMs'] as const;

export const ConstraintsSchema = z
  .object({
    allowedTools: z.array(z.string().min(1)).optional(),
    /** Allowed roots: absolute, stored as real paths. */
    paths: z.array(z.string().min(1)).optional(),
    maxFileSize: nonNegInt.optional(),
    allowedDomains: z.array(z.string().min(1)).optional(),
    /** URL schemes URL arguments may use; absent means http and https only (never "any"). */
    allowedSchemes: z.array(z.string().min(1)).optional(),
    allowedCommands: z.array(z.string().min(1)).optional(),
    /** The deepest delegation level (root = 0) any descendant may have. */
    maxDelegationDepth: nonNegInt.optional(),
    limits: LimitsSchema.optional(),
  })
  .strict();
export type Constraints = z.infer<typeof ConstraintsSchema>;

/** A file argument as the policy maps it. `size` is the bytes a write will produce, when known. */
export interface FileAccess {
  path: string;
  access: 'read' | 'write';
  size?: number;
  /** Argument name, for messages. */
  arg?: string;
}

/** The concrete things one action touches, checked against constraints. */
export interface AccessArguments {
  tool?: string;
  files?: readonly FileAccess[];
  urls?: readonly { url: string; arg?: string }[];
  commands?: readonly { command: string; arg?: string }[];
}

/** What `checkArguments` learned: the spellings the action may use (hand these to the tool). */
export interface CheckedArguments {
  realPaths: Record<string, string>;
  /** Canonical `href` of each URL argument, by argument name: what was checked is what the tool gets. */
  canonicalUrls: Record<string, string>;
}

// ---------------------------------------------------------------------------------------------
// Normalisation at grant time

/** Validates and normalises constraints for a new root capability: roots become real paths. */
export function normalizeConstraints(input: unknown): Constraints {
  const parsed = ConstraintsSchema.safeParse(input ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new InvalidRequestError(`constraints.${issue.path.join('.')}: ${issue.message}`, { path: issue.path });
  }
  const c = parsed.data;
  if (c.paths) {
    c.paths = c.paths.map((root) => {
      const v = resolveRealPath(root);
      if (!v.ok) throw new InvalidRequestError(`constraints.paths: ${v.reason}`, { root });
      return v.realPath;
    });
  }
  if (c.allowedDomains) {
    for (const d of c.allowedDomains) {
      if (!parseDomainEntry(d)) {
        throw new InvalidRequestError(`constraints.allowedDomains: '${d}' is not host, *.host or *, with an optional :port`, { entry: d });
      }
    }
  }
  if (c.allowedSchemes) {
    c.allowedSchemes = [
      ...new Set(
        c.allowedSchemes.map((s) => {
          const n = normalizeScheme(s);
          if (n === null) throw new InvalidRequestError(`constraints.allowedSchemes: '${s}' is not a URL scheme name`, { entry: s });
          return n;
        }),
      ),
    ];
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Delegation: refuse widening, then intersect

function widens(dimension: Dimension, message: string, details: Record<string, unknown> = {}): never {
  throw new DelegationError('E_WIDENS', `delegation would widen ${dimension}: ${message}`, { dimension, ...details });
}

function listSubset(dim: Dimension, parent: readonly string[] | undefined, child: readonly string[] | undefined): void {
  if (parent === undefined || child === undefined) {
    if (parent !== undefined && child === undefined) return; // child inherits parent's list
    return;
  }
  const allowed = new Set(parent);
  const extra = child.filter((x) => !allowed.has(x));
  if (extra.length > 0) widens(dim, `${extra.join(', ')} not in the parent's list`, { extra });
}

function maxNotAbove(dim: Dimension, parent: number | undefined, child: number | undefined): void {
  if (parent !== undefined && child !== undefined && child > parent) widens(dim, `${child} > parent's ${parent}`, { parent, child });
}

/**
 * Throws DelegationError('E_WIDENS') naming the first dimension on which `requested` allows
 * more than `parent`. A dimension the request leaves out is inherited, so it never widens.
 */
export function checkNarrowing(parent: Constraints, requested: Constraints): void {
  listSubset('allowedTools', parent.allowedTools, requested.allowedTools);
  if (parent.paths && requested.paths) {
    for (const r of requested.paths) {
      if (!parent.paths.some((p) => isWithin(r, p))) widens('paths', `${r} is not inside any parent root`, { root: r });
    }
  }
  maxNotAbove('maxFileSize', parent.maxFileSize, requested.maxFileSize);
  if (parent.allowedDomains && requested.allowedDomains) {
    const pe = parent.allowedDomains.map(parseDomainEntry).filter((e): e is DomainEntry => e !== null);
    for (const d of requested.allowedDomains) {
      const ce = parseDomainEntry(d);
      if (!ce || !pe.some((p) => entryCovers(p, ce))) widens('allowedDomains', `${d} is not covered by the parent's domains`, { entry: d });
    }
  }
  // An absent allowedSchemes means the defaults, not "any": a child naming ftp under a parent
  // that names nothing would widen.
  if (requested.allowedSchemes) listSubset('allowedSchemes', effectiveSchemes(parent.allowedSchemes), effectiveSchemes(requested.allowedSchemes));
  listSubset('allowedCommands', parent.allowedCommands, requested.allowedCommands);
  maxNotAbove('maxDelegationDepth', parent.maxDelegationDepth, requested.maxDelegationDepth);
  for (const k of LIMIT_KEYS) maxNotAbove(`limits.${k}`, parent.limits?.[k], requested.limits?.[k]);
}

function intersectList(a: readonly string[] | undefined, b: readonly string[] | undefined): string[] | undefined {
  if (a === undefined) return b === undefined ? undefined : [...b];
  if (b === undefined) return [...a];
  const s = new Set(b);
  return a.filter((x) => s.has(x));
}

function minOf(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return Math.min(a, b);
}

/** The tighter of two limit sets, field by field. */
export function intersectLimits(a: Limits | undefined, b: Limits | undefined): Limits | undefined {
  if (!a && !b) return undefined;
  const out: Limits = {};
  for (const k of LIMIT_KEYS) {
    const v = minOf(a?.[k], b?.[k]);
    if (v !== undefined) out[k] = v;
  }
  return out;
}

/**
 * The constraints allowing only what both `a` and `b` allow. Roots and domains keep, for each
 * pair, the narrower of the two when one contains the other (pairs that merely overlap are
 * dropped, which can only narrow).
 */
export function intersectConstraints(a: Constraints, b: Constraints): Constraints {
  const out: Constraints = {};
  const tools = intersectList(a.allowedTools, b.allowedTools);
  if (tools) out.allowedTools = tools;
  if (a.paths && b.paths) {
    const roots = new Set<string>();
    for (const x of a.paths) for (const y of b.paths) {
      if (isWithin(x, y)) roots.add(x);
      else if (isWithin(y, x)) roots.add(y);
    }
    out.paths = [...roots];
  } else if (a.paths || b.paths) out.paths = [...(a.paths ?? b.paths)!];
  const size = minOf(a.maxFileSize, b.maxFileSize);
  if (size !== undefined) out.maxFileSize = size;
  if (a.allowedDomains && b.allowedDomains) {
    const doms = new Set<string>();
    for (const x of a.allowedDomains) for (const y of b.allowedDomains) {
      const ex = parseDomainEntry(x);
      const ey = parseDomainEntry(y);
      if (!ex || !ey) continue;
      if (entryCovers(ey, ex)) doms.add(x);
      else if (entryCovers(ex, ey)) doms.add(y);
    }
    out.allowedDomains = [...doms];
  } else if (a.allowedDomains || b.allowedDomains) out.allowedDomains = [...(a.allowedDomains ?? b.allowedDomains)!];
  if (a.allowedSchemes || b.allowedSchemes) {
    const other = new Set(effectiveSchemes(b.allowedSchemes));
    out.allowedSchemes = effectiveSchemes(a.allowedSchemes).filter((s) => other.has(s));
  }
  const cmds = intersectList(a.allowedCommands, b.allowedCommands);
  if (cmds) out.allowedCommands = cmds;
  const depth = minOf(a.maxDelegationDepth, b.maxDelegationDepth);
  if (depth !== undefined) out.maxDelegationDepth = depth;
  const limits = intersectLimits(a.limits, b.limits);
  if (limits) out.limits = limits;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Checking one action's arguments

const SHELL_META = /[;&|`$<>(){}\\\n\r*?~!#'"]/;

function deny(code: ConstructorParameters<typeof AccessDeniedError>[0], message: string, details: Record<string, unknown>): never {
  throw new AccessDeniedError(code, message, details);
}

/** Tool check alone (cheap; run before argument schemas). */
export function checkTool(c: Constraints, tool: string): void {
  if (c.allowedTools && !c.allowedTools.includes(tool)) {
    deny('E_TOOL_NOT_ALLOWED', `tool '${tool}' is not in allowedTools [${c.allowedTools.join(', ')}]`, { tool });
  }
}

const NO_PATHS: Readonly<Record<string, string>> = Object.freeze({});
const NO_ARGUMENTS: CheckedArguments = Object.freeze({ realPaths: NO_PATHS as Record<string, string>, canonicalUrls: NO_PATHS as Record<string, string> });

function domainAllowed(c: Constraints, d: Destination): boolean {
  return c.allowedDomains!.some((s) => {
    const e = parseDomainEntry(s);
    return e !== null && entryMatches(e, d);
  });
}

/**
 * Checks one URL against `c`: a spelling every parser reads alike (E_INVALID_ARGUMENTS), an
 * allowed scheme, an allowed host and port. Returns the canonical href the tool must receive.
 */
export function checkUrl(c: Constraints, raw: string, arg: string, invalidCode: 'E_INVALID_ARGUMENTS' | 'E_RESOURCE_NOT_PERMITTED' = 'E_INVALID_ARGUMENTS'): string {
  const v = checkUrlSpelling(raw);
  if (!v.ok) deny(invalidCode, `argument ${arg}: ${v.reason}`, { arg, url: raw });
  if (!schemeAllowed(v.scheme, c.allowedSchemes)) {
    deny('E_SCHEME_NOT_ALLOWED', `argument ${arg}: scheme '${v.scheme}' is not in allowedSchemes [${effectiveSchemes(c.allowedSchemes).join(', ')}]`, { arg, scheme: v.scheme });
  }
  if (c.allowedDomains) {
    const d = destinationOf(v.href);
    if (!d) deny('E_DOMAIN_NOT_ALLOWED', `argument ${arg}: not a URL with a host and port`, { arg, url: raw });
    if (!domainAllowed(c, d)) deny('E_DOMAIN_NOT_ALLOWED', `argument ${arg}: ${d.host}:${d.port} is not in allowedDomains`, { arg, host: d.host, port: d.port });
  }
  return v.href;
}

/**
 * A network capability's own resource must satisfy its constraints, or a capability limited to
 * example.com would validate http://evil.com/. The resource is a URL or a bare `host[:port]`.
 */
export function checkNetworkResource(c: Constraints, resource: string): void {
  const host = destinationOfHost(resource);
  if (host === undefined) {
    checkUrl(c, resource, 'resource', 'E_RESOURCE_NOT_PERMITTED');
    return;
  }
  if (!c.allowedDomains) return;
  // A bare host without a port names every port, so only an entry without a port covers it.
  const ok = c.allowedDomains.some((s) => {
    const e = parseDomainEntry(s);
    if (e === null) return false;
    return host.port === null ? e.port === null && entryMatches(e, { host: host.host, port: 0 }) : entryMatches(e, { host: host.host, port: host.port });
  });
  if (!ok) deny('E_DOMAIN_NOT_ALLOWED', `network resource ${resource} is not in allowedDomains`, { resource });
}

/**
 * Throws AccessDeniedError for the first argument outside `c`: a path outside the real-path
 * roots (traversal and symlink escapes included), a file over maxFileSize, a URL with an
 * ambiguous spelling or whose scheme, host or port is not allowed, a command not in
 * allowedCommands (or one carrying shell syntax). Returns the spellings the tool must receive.
 */
export function checkArguments(c: Constraints, a: AccessArguments): CheckedArguments {
  if (a.tool !== undefined) checkTool(c, a.tool);
  // The hot path (no resource arguments) allocates nothing.
  if (!a.files?.length && !a.urls?.length && !a.commands?.length) return NO_ARGUMENTS;
  const realPaths: Record<string, string> = {};
  for (const f of a.files ?? []) {
    const arg = f.arg ?? f.path;
    const v = c.paths ? checkPathInRootsSized(f.path, c.paths) : resolveRealPathSized(f.path);
    if (!v.ok) deny(v.malformed ? 'E_INVALID_ARGUMENTS' : 'E_PATH_OUTSIDE_ROOTS', `argument ${arg}: ${v.reason}`, { arg, path: f.path });
    realPaths[arg] = v.realPath;
    if (c.maxFileSize !== undefined) {
      let size = f.size;
      if (f.access === 'read' || size === undefined) {
        size = v.size === undefined ? size ?? 0 : f.access === 'read' ? v.size : Math.max(v.size, size ?? 0);
      }
      if (size > c.maxFileSize) {
        deny('E_FILE_TOO_LARGE', `argument ${arg}: ${size} bytes exceeds maxFileSize ${c.maxFileSize}`, { arg, size, max: c.maxFileSize });
      }
    }
  }
  const canonicalUrls: Record<string, string> = {};
  for (const u of a.urls ?? []) {
    const arg = u.arg ?? u.url;
    canonicalUrls[arg] = checkUrl(c, u.url, arg);
  }
  for (const cmd of a.commands ?? []) {
    const arg = cmd.arg ?? 'command';
    if (!c.allowedCommands) continue;
    if (SHELL_META.test(cmd.command)) {
      deny('E_COMMAND_NOT_ALLOWED', `argument ${arg}: shell syntax is not allowed in a command line`, { arg });
    }
    const argv0 = cmd.command.trim().split(/\s+/)[0] ?? '';
    if (!c.allowedCommands.includes(argv0)) {
      deny('E_COMMAND_NOT_ALLOWED', `argument ${arg}: command '${argv0}' is not in allowedCommands`, { arg, command: argv0 });
    }
  }
  return { realPaths, canonicalUrls };
}
