// `captrap caps [--principal P] [--json]`: the capabilities a running sidecar knows, as the
// delegation tree (children under their parent), live and revoked.
import { formatDuration, indent, renderTable, runAdminCommand, tableStyle, treeOrder, type CapView, type TableStyle } from '../admin-client.js';

const USAGE = `usage: captrap caps [--principal P] [--json] [--socket PATH]

Lists the capabilities of a running sidecar as their delegation tree: id, principal, resource,
operations, the main constraints, the holder process, expiry, and whether it is revoked.
`;

function constraintsText(c: CapView['constraints']): string {
  const parts: string[] = [];
  if (c.allowedTools) parts.push(`tools=${c.allowedTools.join(',')}`);
  if (c.paths) parts.push(`paths=${c.paths.join(',')}`);
  if (c.allowedDomains) parts.push(`domains=${c.allowedDomains.join(',')}`);
  if (c.allowedCommands) parts.push(`commands=${c.allowedCommands.join(',')}`);
  if (c.maxFileSize !== undefined) parts.push(`maxFileSize=${c.maxFileSize}`);
  if (c.maxDelegationDepth !== undefined) parts.push(`maxDepth=${c.maxDelegationDepth}`);
  return parts.join(' ') || '-';
}

function expiresText(expiresAt: number | string | null, now: number): string {
  if (expiresAt === null) return 'never';
  const t = typeof expiresAt === 'number' ? expiresAt : Date.parse(expiresAt);
  if (!Number.isFinite(t)) return String(expiresAt);
  return t <= now ? 'expired' : `in ${formatDuration(t - now)}`;
}

/** The capabilities table (exported for tests). */
export function renderCaps(caps: readonly CapView[], style: TableStyle, now = Date.now()): string {
  if (caps.length === 0) return 'no capabilities\n';
  const ordered = treeOrder(caps, (c) => c.id, (c) => c.parent);
  const rows = ordered.map(({ item: c, depth }) => [
    indent(depth, c.id),
    c.principal,
    `${c.resource.type}:${c.resource.pattern}`,
    c.operations.join(','),
    constraintsText(c.constraints ?? {}),
    c.holder ? String(c.holder.pid) : '-',
    c.revoked ? '-' : expiresText(c.expiresAt, now),
    c.revoked ? 'revoked' : 'live',
  ]);
  return renderTable(['ID', 'PRINCIPAL', 'RESOURCE', 'OPS', 'CONSTRAINTS', '>HOLDER', 'EXPIRES', 'STATE'], rows, style, ordered.map(({ item }) => item.revoked));
}

export function main(argv: string[]): Promise<number> {
  return runAdminCommand(
    {
      name: 'caps',
      usage: USAGE,
      options: { principal: { type: 'string', short: 'p' }, json: { type: 'boolean' } },
      async run({ values, connect, out }) {
        const client = await connect();
        const { capabilities } = await client.capabilities(values.principal as string | undefined);
        out.write(values.json ? JSON.stringify({ capabilities }, null, 2) + '\n' : renderCaps(capabilities, tableStyle(out)));
        return 0;
      },
    },
    argv,
  );
}
