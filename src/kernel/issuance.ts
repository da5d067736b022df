// The issuance policy: which root capabilities the kernel may grant to whom at all. Without one
// the kernel grants what its caller (the sidecar's templates) asks; with one, a request must fit
// a rule for its resource type whose principal patterns name the principal: operations among
// the rule's, a lifetime within its maximum, and files within its path roots. Delegation needs
// no rule: a child only ever narrows a capability that was issued under this policy.
import { z } from 'zod';
import { RESOURCE_TYPES, type ResourceType } from './capability.js';
import type { Constraints } from './constraints.js';
import { AccessDeniedError, PolicyConfigError } from './errors.js';
import { compilePattern, matchPattern } from './pattern.js';
import { filePatternFromSpelling, isWithin, resolveRealPath } from './paths.js';

export const IssuanceRuleSchema = z
  .object({
    /** Principal patterns (pattern.ts grammar): `agent-*`, `planner`, `*`. */
    principals: z.array(z.string().min(1)).min(1),
    /** Operations a grant may name; absent = any. */
    operations: z.array(z.string().min(1)).optional(),
    /** Roots a grant's files must lie within (file patterns, constraints.paths); absent = anywhere. */
    pathRoots: z.array(z.string().min(1)).optional(),
    /** Longest lifetime a grant may have; absent = no ceiling beyond the kernel's. */
    maxTtlMs: z.number().int().positive().optional(),
  })
  .strict();
export type IssuanceRule = z.infer<typeof IssuanceRuleSchema>;

/** Rules per resource type; a type with no rules cannot be issued at all. */
export const IssuancePolicySchema = z.object(Object.fromEntries(RESOURCE_TYPES.map((t) => [t, z.array(IssuanceRuleSchema).optional()])) as Record<ResourceType, z.ZodOptional<z.ZodArray<typeof IssuanceRuleSchema>>>).strict();
export type IssuancePolicy = Partial<Record<ResourceType, IssuanceRule[]>>;

export interface IssuanceRequest {
  principal: string;
  resourceType: ResourceType;
  /** The resource pattern as it will be signed. */
  resource: string;
  operations: readonly string[];
  /** Normalised constraints (real-path roots). */
  constraints: Constraints;
  ttlMs: number;
}

function deny(message: string, details: Record<string, unknown>): never {
  throw new AccessDeniedError('E_ISSUANCE_DENIED', message, details);
}

/** Whether every real path `pattern` can match lies within `root`. */
function patternWithin(pattern: string, root: string): boolean {
  const p = compilePattern(pattern);
  if (p.kind === 'exact') {
    const v = resolveRealPath(pattern);
    return v.ok && isWithin(v.realPath, root);
  }
  // Matches are real paths (no `..`) starting with the literal prefix.
  const base = root === '/' ? '/' : root + '/';
  return p.literalPrefix.startsWith(base);
}

export class IssuanceGate {
  private readonly rules: IssuancePolicy;

  /** Validates the policy and resolves its roots to real paths; PolicyConfigError names the field. */
  constructor(policy: IssuancePolicy) {
    const r = IssuancePolicySchema.safeParse(policy);
    if (!r.success) {
      const issue = r.error.issues[0]!;
      throw new PolicyConfigError(`issuance policy: ${issue.path.join('.') || '(root)'}: ${issue.message}`, { path: issue.path });
    }
    const rules: IssuancePolicy = {};
    for (const [type, list] of Object.entries(r.data) as [ResourceType, IssuanceRule[] | undefined][]) {
      if (!list) continue;
      rules[type] = list.map((rule, i) => {
        if (!rule.pathRoots) return rule;
        const pathRoots = rule.pathRoots.map((root) => {
          const v = resolveRealPath(root);
          if (!v.ok) throw new PolicyConfigError(`issuance policy: ${type}[${i}].pathRoots: ${v.reason}`, { root });
          return v.realPath;
        });
        return { ...rule, pathRoots };
      });
    }
    this.rules = rules;
  }

  /** Why `rule` refuses `req`, or null when it allows it. */
  private refusal(rule: IssuanceRule, req: IssuanceRequest): string | null {
    if (rule.operations) {
      const extra = req.operations.filter((o) => !rule.operations!.includes(o));
      if (extra.length > 0) return `operations [${extra.join(', ')}] are not among [${rule.operations.join(', ')}]`;
    }
    if (rule.maxTtlMs !== undefined && req.ttlMs > rule.maxTtlMs) return `a lifetime of ${req.ttlMs} ms exceeds the maximum ${rule.maxTtlMs} ms`;
    const roots = rule.pathRoots;
    if (roots && (req.resourceType === 'file' || req.resourceType === 'tool')) {
      const inside = (p: string): boolean => roots.some((r) => isWithin(p, r));
      const paths = req.constraints.paths;
      const pathsOk = paths !== undefined && paths.length > 0 && paths.every(inside);
      if (paths !== undefined && !pathsOk) return `constraints.paths [${paths.join(', ')}] are not all within [${roots.join(', ')}]`;
      const patternOk = req.resourceType === 'file' && roots.some((r) => patternWithin(filePatternFromSpelling(req.resource), r));
      if (!pathsOk && !patternOk) {
        return req.resourceType === 'file'
          ? `files matching '${req.resource}' are not all within [${roots.join(', ')}] (narrow the pattern or constraints.paths)`
          : `a tool capability needs constraints.paths within [${roots.join(', ')}]`;
      }
    }
    return null;
  }

  /** Throws AccessDeniedError('E_ISSUANCE_DENIED') unless some rule allows the request. */
  check(req: IssuanceRequest): void {
    const rules = (this.rules[req.resourceType] ?? []).filter((r) => r.principals.some((p) => matchPattern(p, req.principal)));
    if (rules.length === 0) {
      deny(`no issuance rule lets '${req.principal}' be granted ${req.resourceType} capabilities`, { principal: req.principal, resourceType: req.resourceType });
    }
    const reasons: string[] = [];
    for (const rule of rules) {
      const why = this.refusal(rule, req);
      if (why === null) return;
      reasons.push(why);
    }
    deny(`issuance policy refuses ${req.resourceType} '${req.resource}' for '${req.principal}': ${reasons.join('; ')}`, {
      principal: req.principal,
      resourceType: req.resourceType,
      reasons,
    });
  }
}
