// `captrap serve --config FILE [--state-dir DIR]`: runs the sidecar until SIGTERM or SIGINT.
// stdout carries exactly one line, `captrap: ready <adminSocketPath>`, so a supervisor (or a
// test) can wait for it; everything else (logs, agents' output) goes to stderr.
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig, type SidecarConfig } from '../config.js';
import { Sidecar } from '../sidecar.js';
import { startMcpHttp } from '../../mcp/serve.js';

const HELP = `usage: captrap serve --config FILE [--state-dir DIR]

Starts the sidecar: cleans stale cgroups, opens the audit log (continuing its chain), opens the
admin socket (mode 0600), launches the configured agents, then prints
  captrap: ready <admin socket path>
With mcpServers in the config it also serves each at http://127.0.0.1:PORT/mcp/NAME (MCP
Streamable HTTP, bearer tokens from the config; docs/mcp.md) and says where on stderr.
SIGTERM or SIGINT shuts it down gracefully (exit 0). Exit 2: bad usage or config.
`;

export async function main(argv: string[]): Promise<number> {
  let values: { config?: string | undefined; 'state-dir'?: string | undefined; help?: boolean | undefined };
  try {
    ({ values } = parseArgs({ args: argv, options: { config: { type: 'string', short: 'c' }, 'state-dir': { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false }));
  } catch (err) {
    process.stderr.write(`captrap serve: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (!values.config) {
    process.stderr.write(`captrap serve: --config FILE is required\n\n${HELP}`);
    return 2;
  }
  let config: SidecarConfig;
  try {
    config = loadConfig(values.config, values['state-dir']);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`captrap serve: ${err.message}\n`);
      return 2;
    }
    throw err;
  }

  // Signals that arrive while starting are honoured once start-up has finished.
  let signalled: NodeJS.Signals | undefined;
  let wake: (() => void) | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) return; // a second signal while stopping changes nothing: stop is already under way
    signalled = sig;
    wake?.();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  let sidecar: Sidecar;
  try {
    sidecar = await Sidecar.start(config);
  } catch (err) {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    const code = (err as { code?: unknown }).code;
    process.stderr.write(`captrap serve: cannot start: ${(err as Error).message}${typeof code === 'string' ? ` [${code}]` : ''}\n`);
    return 1;
  }
  // The MCP gateway's HTTP front (issue 12), when the config has mcpServers.
  let mcp: Awaited<ReturnType<typeof startMcpHttp>>;
  try {
    mcp = await startMcpHttp(sidecar, (line) => process.stderr.write(`captrap serve: ${line}\n`));
  } catch (err) {
    process.stderr.write(`captrap serve: cannot start the MCP front: ${(err as Error).message}\n`);
    await sidecar.stop().catch(() => undefined);
    return 1;
  }
  if (mcp) process.stderr.write(`captrap serve: mcp ${mcp.front.url('')}NAME (${sidecar.config.mcpServers!.map((m) => m.name).join(', ')})\n`);
  process.stdout.write(`captrap: ready ${sidecar.adminSocket}\n`);
  if (!signalled) await new Promise<void>((r) => (wake = r));
  process.stderr.write(`captrap serve: ${signalled}: shutting down\n`);
  let code = 0;
  await mcp?.close().catch((err: unknown) => process.stderr.write(`captrap serve: closing the MCP front: ${(err as Error).message}\n`));
  try {
    await sidecar.stop();
  } catch (err) {
    // Everything is stopped and removed; only the audit log's last records could not be written.
    const c = (err as { code?: unknown }).code;
    process.stderr.write(`captrap serve: stopped, but: ${(err as Error).message}${typeof c === 'string' ? ` [${c}]` : ''}\n`);
    code = 1;
  }
  process.off('SIGTERM', onSignal);
  process.off('SIGINT', onSignal);
  return code;
}
