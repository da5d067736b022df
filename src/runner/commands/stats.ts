// `captrap stats [--prom] [--json]`: counters of a running sidecar — kernel (issued, revoked,
// denials, ...), audit log, sandboxes by exit reason, agents, uptime and memory. --prom prints
// the Prometheus exposition text instead.
import { formatBytes, formatDuration, runAdminCommand, UsageError, type SidecarStats as AdminStats } from '../admin-client.js';
import type { TokenGateStats } from '../token-gate.js';
import type { RevocationStatus } from '../token-revocations.js';

/** What `stats` answers; ct2 figures from sidecars that have them. */
type SidecarStats = AdminStats & { tokens?: TokenGateStats; revocations?: RevocationStatus; auditShipping?: Record<string, unknown> };

const USAGE = `usage: captrap stats [--prom | --json] [--socket PATH]

Counters of a running sidecar. --prom prints Prometheus text exposition; --json the raw numbers.
`;

function section(title: string, entries: Array<[string, unknown]>): string {
  const shown = entries.filter(([, v]) => v !== undefined && (typeof v !== 'object' || v === null));
  if (shown.length === 0) return '';
  const width = Math.max(...shown.map(([k]) => k.length));
  return `${title}\n${shown.map(([k, v]) => `  ${k.padEnd(width)}  ${v === null ? '-' : String(v)}`).join('\n')}\n`;
}

/** A warning first when the audit log cannot write: what the sidecar does about it (audit.onFailure). */
function auditWarning(a: Record<string, unknown> | null): string {
  if (!a || a['available'] !== false) return '';
  const since = typeof a['unavailableSince'] === 'string' ? ` since ${a['unavailableSince']}` : '';
  const policy = a['onFailure'] === 'continue' ? 'tool calls and capability changes run UNAUDITED' : 'tool calls and capability changes are refused (E_AUDIT_UNAVAILABLE)';
  const err = typeof a['lastError'] === 'string' ? `: ${a['lastError']}` : '';
  return `AUDIT LOG UNAVAILABLE${since}${err}\n  ${policy}; ${Number(a['droppedRecords'] ?? 0)} record(s) dropped\n`;
}

const pct = (r: number | undefined): string | undefined => (r === undefined ? undefined : `${(r * 100).toFixed(1)}%`);

/** A warning first when ct2 calls are refused because the revocation set cannot be trusted. */
function revocationsWarning(r: RevocationStatus | undefined): string {
  if (!r || r.healthy) return '';
  return `TOKEN REVOCATIONS UNAVAILABLE (${r.backend}): ${r.detail}\n  every tool call with a ct2 token is refused (E_TOKEN_REVOKED) until the set is trusted again\n`;
}

/** The human-readable summary (exported for tests). */
export function renderStats(s: SidecarStats): string {
  const parts = [
    auditWarning(s.audit),
    revocationsWarning(s.revocations),
    section('sidecar', [
      ['uptime', formatDuration(s.uptimeMs)],
      ['rss', formatBytes(s.rssBytes)],
      ['agents running', s.agents?.running],
      ['agents exited', s.agents?.exited],
    ]),
    section('sandboxes', [
      ['running', s.sandboxes?.running],
      ['started', s.sandboxes?.started],
      ['exited', s.sandboxes?.exited],
      ...Object.entries(s.sandboxes?.byReason ?? {})
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([k, v]): [string, unknown] => [`  ${k}`, v]),
    ]),
    section('kernel', Object.entries(s.kernel ?? {})),
    s.audit ? section('audit', Object.entries(s.audit)) : 'audit\n  (no audit statistics)\n',
    s.tokens
      ? section('ct2 tokens', [
          ['calls allowed', s.tokens.verified],
          ['calls denied', s.tokens.denied],
          ['chain cache hit ratio', pct(s.tokens.cache?.chain?.hitRatio)],
          ['chain cache entries', s.tokens.cache?.chain ? `${s.tokens.cache.chain.size}/${s.tokens.cache.chain.maxEntries}` : undefined],
          ['decision cache hit ratio', pct(s.tokens.cache?.decision?.hitRatio)],
          ['decision cache entries', s.tokens.cache?.decision ? `${s.tokens.cache.decision.size}/${s.tokens.cache.decision.maxEntries}` : undefined],
          ['decisions not cacheable', s.tokens.cache?.decision?.uncacheable],
        ])
      : '',
    s.revocations
      ? section('token revocations', [
          ['backend', s.revocations.backend],
          ['healthy', s.revocations.healthy ? 'yes' : 'NO'],
          ['revoked ids', s.revocations.revoked],
          ['last sync', s.revocations.lastSyncAt === null ? null : new Date(s.revocations.lastSyncAt).toISOString()],
          ['detail', s.revocations.detail],
        ])
      : '',
    s.auditShipping ? section('audit shipping', Object.entries(s.auditShipping)) : '',
  ];
  return parts.filter(Boolean).join('\n');
}

export function main(argv: string[]): Promise<number> {
  return runAdminCommand(
    {
      name: 'stats',
      usage: USAGE,
      options: { prom: { type: 'boolean' }, json: { type: 'boolean' } },
      async run({ values, connect, out }) {
        if (values.prom && values.json) throw new UsageError('--prom and --json cannot be combined');
        const client = await connect();
        if (values.prom) {
          const { text } = await client.metrics();
          out.write(text.endsWith('\n') ? text : text + '\n');
          return 0;
        }
        const stats = await client.stats();
        out.write(values.json ? JSON.stringify(stats, null, 2) + '\n' : renderStats(stats));
        return 0;
      },
    },
    argv,
  );
}
