// `captrap ps [--watch] [--json]`: the agents of a running sidecar as a tree (sub-agents under
// their parent) with pids, state, limits and usage. --watch redraws the table until Ctrl-C.
import {
  formatBytes,
  formatDuration,
  indent,
  renderTable,
  runAdminCommand,
  tableStyle,
  treeOrder,
  UsageError,
  type AdminClient,
  type AgentRow,
  type TableStyle,
} from '../admin-client.js';

const USAGE = `usage: captrap ps [--watch [--interval MS]] [--json] [--socket PATH]

Lists the agents of a running sidecar: tree, pid, state, memory (now / peak / limit), CPU time,
capabilities held and tools running. --watch refreshes until Ctrl-C (default every 1000 ms).
The socket is --socket, else $CAPTRAP_SOCKET, else ./.captrap/admin.sock.
`;

function limitText(v: unknown): string {
  if (typeof v === 'number') return formatBytes(v);
  if (typeof v === 'string') return v;
  return '-';
}

/** The agents table (exported for tests). */
export function renderAgents(agents: readonly AgentRow[], style: TableStyle): string {
  if (agents.length === 0) return 'no agents\n';
  const ordered = treeOrder(agents, (a) => a.id, (a) => a.parent);
  const rows = ordered.map(({ item: a, depth }) => [
    indent(depth, a.id),
    String(a.pid),
    a.state === 'running' ? 'running' : `exited (${a.exitReason ?? '?'})`,
    formatBytes(a.usage?.memoryBytes),
    formatBytes(a.usage?.memoryPeakBytes),
    limitText(a.limits?.['memoryBytes'] ?? a.limits?.['memory']),
    a.limits?.['pids'] === undefined ? '-' : String(a.limits['pids']),
    a.usage?.cpuUsageUs === null || a.usage?.cpuUsageUs === undefined ? '-' : formatDuration(a.usage.cpuUsageUs / 1000),
    String(a.capabilities),
    String(a.toolsRunning),
  ]);
  return renderTable(
    ['AGENT', '>PID', 'STATE', '>MEM', '>PEAK', '>MEM LIMIT', '>PIDS', '>CPU', '>CAPS', '>TOOLS'],
    rows,
    style,
    ordered.map(({ item }) => item.state !== 'running'),
  );
}

async function watch(client: AdminClient, intervalMs: number, json: boolean, out: NodeJS.WriteStream): Promise<number> {
  let stop = false;
  let wake: (() => void) | undefined;
  const onSignal = () => {
    stop = true;
    wake?.();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    while (!stop) {
      const { agents } = await client.agents();
      if (json) out.write(JSON.stringify({ time: new Date().toISOString(), agents }) + '\n');
      else {
        const head = `captrap ps — ${client.socketPath} — ${new Date().toLocaleTimeString()} (Ctrl-C to stop)\n\n`;
        // Clear and redraw on a terminal; elsewhere (a log, a pipe) append one table per refresh.
        out.write((out.isTTY ? '\x1b[H\x1b[2J' : '') + head + renderAgents(agents, tableStyle(out)) + (out.isTTY ? '' : '\n'));
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, intervalMs);
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
    }
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

export function main(argv: string[]): Promise<number> {
  return runAdminCommand(
    {
      name: 'ps',
      usage: USAGE,
      options: { watch: { type: 'boolean', short: 'w' }, interval: { type: 'string' }, json: { type: 'boolean' } },
      async run({ values, connect, out }) {
        const intervalMs = values.interval === undefined ? 1000 : Number(values.interval);
        if (!Number.isInteger(intervalMs) || intervalMs < 50) throw new UsageError(`--interval must be a whole number of milliseconds >= 50, got '${String(values.interval)}'`);
        const client = await connect();
        if (values.watch) return watch(client, intervalMs, values.json === true, out);
        const { agents } = await client.agents();
        out.write(values.json ? JSON.stringify({ agents }, null, 2) + '\n' : renderAgents(agents, tableStyle(out)));
        return 0;
      },
    },
    argv,
  );
}
