#!/usr/bin/env node
// `captrap <command> ...`: a thin dispatcher. Each command lives in ./commands/<name>.ts
// and exports `main(argv): Promise<number>` (the process exit code), so one command's
// dependencies are never loaded to run another.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describeError } from './describe-error.js';

export { describeError };

type CommandModule = { main(argv: string[]): Promise<number> };

const COMMANDS: Record<string, { summary: string; load: () => Promise<CommandModule> }> = {
  run: { summary: 'run a command in a sandbox: captrap run [options] -- cmd args...', load: () => import('./commands/run.js') },
  doctor: { summary: 'report what this host provides and which guarantees hold', load: () => import('./commands/doctor.js') },
  audit: { summary: 'audit log: verify | tail | show', load: () => import('./commands/audit.js') },
  serve: { summary: 'run the sidecar: captrap serve --config captrap.yaml', load: () => import('./commands/serve.js') },
  ps: { summary: 'list agents of a running sidecar (tree, pids, limits, usage)', load: () => import('./commands/ps.js') },
  caps: { summary: 'list capabilities of a running sidecar', load: () => import('./commands/caps.js') },
  revoke: { summary: 'revoke a capability: captrap revoke <id> | --principal P', load: () => import('./commands/revoke.js') },
  kill: { summary: 'kill an agent of a running sidecar: captrap kill <agent>', load: () => import('./commands/kill.js') },
  release: { summary: "lift the monitor's quarantine of a principal: captrap release <principal>", load: () => import('./commands/release.js') },
  token: { summary: 'ct2 tokens: verify | attenuate | seal | inspect | issue', load: () => import('./commands/token.js') },
  keys: { summary: 'ct2 issuer keys: export | rotate | retire | list', load: () => import('./commands/keys.js') },
  mcp: { summary: 'put captrap in front of an MCP server: captrap mcp [options] -- cmd args...', load: () => import('./commands/mcp.js') },
  stats: { summary: 'kernel, audit and sandbox counters of a running sidecar', load: () => import('./commands/stats.js') },
};

export function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `usage: captrap <command> [options]\n\ncommands:\n${lines.join('\n')}\n\nRun 'captrap <command> --help' for a command's options.\n`;
}

export async function cli(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`captrap: unknown command '${name}'\n\n${usage()}`);
    return 2;
  }
  const mod = await command.load();
  return mod.main(rest);
}

/** True when the module at `moduleUrl` is the script node was started with (not imported). */
export function isEntryPoint(moduleUrl: string): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(moduleUrl));
  } catch {
    return false;
  }
}

if (isEntryPoint(import.meta.url)) {
  cli(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`captrap: ${describeError(err)}\n`);
      process.exitCode = 1;
    },
  );
}
