// The `monitor:` section of the sidecar config: a rule per violation type (threshold within a
// sliding window, per principal; severity; cooldown; actions) and the webhook alerts go to.
// Every type has a default rule, so `monitor: {}` (or no section at all) monitors everything.
import { z } from 'zod';
import { parseDuration } from '../isolation/limits.js';
import { VIOLATION_TYPES, type ViolationType } from './violations.js';

export const SEVERITIES = ['low', 'medium', 'high', 'critical'] as const;
export type Severity = (typeof SEVERITIES)[number];
export const ACTIONS = ['alert', 'quarantine'] as const;
export type MonitorAction = (typeof ACTIONS)[number];

export interface Rule {
  /** Violations of this type by one principal within `windowMs` that raise an alert. */
  threshold: number;
  windowMs: number;
  severity: Severity;
  /** After an alert for (type, principal), the next one waits this long. */
  cooldownMs: number;
  actions: MonitorAction[];
}

export interface WebhookConfig {
  url: string;
  /** Per attempt. */
  timeoutMs: number;
  /** Attempts after the first, with backoff. */
  retries: number;
  headers: Record<string, string>;
}

export interface MonitorConfig {
  enabled: boolean;
  rules: Record<ViolationType, Rule>;
  webhook?: WebhookConfig;
  /** Alerts also go to stderr as one line each. */
  stderr: boolean;
}

const FIVE_MIN = 5 * 60_000;
const COOLDOWN = 15 * 60_000;
const rule = (threshold: number, severity: Severity, actions: MonitorAction[] = ['alert']): Rule => ({ threshold, windowMs: FIVE_MIN, severity, cooldownMs: COOLDOWN, actions });

/** The defaults: one escape attempt quarantines; everything else alerts past a few in five minutes. */
export const DEFAULT_RULES: Readonly<Record<ViolationType, Rule>> = {
  'tool-not-allowed': rule(5, 'medium'),
  'path-outside-roots': rule(5, 'high'),
  'argument-outside-constraints': rule(5, 'medium'),
  'forged-token': rule(3, 'high'),
  'wrong-holder': rule(3, 'high'),
  'revoked-or-expired': rule(10, 'low'),
  'rate-limited': rule(3, 'medium'),
  'sandbox-oom': rule(5, 'low'),
  'sandbox-pids-limit': rule(3, 'medium'),
  'sandbox-timeout': rule(5, 'low'),
  'escape-attempt': rule(1, 'critical', ['alert', 'quarantine']),
  'egress-refused': rule(10, 'medium'),
};

const Duration = z.union([z.number(), z.string()]).transform((v, ctx) => {
  try {
    return parseDuration('duration', v);
  } catch {
    ctx.addIssue({ code: 'custom', message: `expected a duration such as 30000, '30s' or '5m', got ${JSON.stringify(v)}` });
    return z.NEVER;
  }
});

const RuleInput = z
  .object({
    threshold: z.number().int().positive().optional(),
    window: Duration.optional(),
    severity: z.enum(SEVERITIES).optional(),
    cooldown: Duration.optional(),
    actions: z.array(z.enum(ACTIONS)).optional(),
  })
  .strict();

export const MonitorInput = z
  .object({
    enabled: z.boolean().optional(),
    stderr: z.boolean().optional(),
    rules: z.partialRecord(z.enum(VIOLATION_TYPES), RuleInput).optional(),
    webhook: z
      .object({
        url: z.string().url().refine((u) => /^https?:$/.test(new URL(u).protocol), 'the webhook must be an http or https URL'),
        timeout: Duration.optional(),
        retries: z.number().int().min(0).max(10).optional(),
        headers: z.record(z.string(), z.string()).optional(),
      })
      .strict()
      .optional(),
  })
  .strict();
export type MonitorInputType = z.input<typeof MonitorInput>;

/** The monitor's config from the parsed `monitor:` section (undefined: all defaults). */
export function monitorConfig(input: z.output<typeof MonitorInput> | undefined): MonitorConfig {
  const rules = Object.fromEntries(
    VIOLATION_TYPES.map((t) => {
      const d = DEFAULT_RULES[t];
      const r = input?.rules?.[t];
      return [t, { threshold: r?.threshold ?? d.threshold, windowMs: r?.window ?? d.windowMs, severity: r?.severity ?? d.severity, cooldownMs: r?.cooldown ?? d.cooldownMs, actions: r?.actions ?? [...d.actions] }];
    }),
  ) as Record<ViolationType, Rule>;
  const w = input?.webhook;
  return {
    enabled: input?.enabled ?? true,
    stderr: input?.stderr ?? true,
    rules,
    ...(w ? { webhook: { url: w.url, timeoutMs: w.timeout ?? 2000, retries: w.retries ?? 3, headers: w.headers ?? {} } } : {}),
  };
}
