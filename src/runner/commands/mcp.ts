// `captrap mcp`: put captrap in front of an MCP server on stdio (docs/mcp.md). Parses the quick
// form's flags or reads a `mcpServers` entry of a config file; the gateway is src/mcp/.
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Constraints } from '../../kernel/constraints.js';
import { parseBytes, parseCpu, parseDuration } from '../../isolation/limits.js';
import { SandboxOptionError } from '../../isolation/errors.js';
import type { McpClientSpec, McpServerSpec } from '../../mcp/gateway.js';
import { serverSpec } from '../../mcp/serve.js';
import { runStdioGateway } from '../../mcp/stdio.js';
import { describeError } from '../cli.js';
import { loadConfig } from '../config.js';

const HELP = `usage: captrap mcp [options] -- COMMAND [ARGS...]
       captrap mcp --config captrap.yaml --server NAME [--principal P]

Runs the MCP server COMMAND in one confined, limited sandbox and speaks MCP on stdin/stdout:
tools/list shows only the tools the capability allows, every tools/call and resources/read is
decided by captrap's kernel first, and every decision is in the audit log.

  --allow-tools a,b     tools the client may see and call (default: all)
  --operations LIST     invoke (default: any tool) or read,write,list,execute (by tool annotations)
  --paths P,...         roots that file arguments must resolve inside (bound writable into the view)
  --domains D,...       hosts URL arguments may name (host, *.host, host:port)
  --schemes S,...       URL schemes URL arguments and resources may use (default http,https)
  --commands C,...      programs command arguments may start
  --memory SIZE         memory limit of the server's sandbox, e.g. 256M
  --pids N              task limit of the server's sandbox
  --cpu FRACTION        CPU share of the server's sandbox: 0.5 or 50%
  --timeout DURATION    per-call timeout (default 60s), e.g. 30s
  --ro PATH / --rw PATH show PATH read-only / writable in the server's view (repeatable)
  --env NAME=VALUE      set a variable for the server (repeatable)
  --uid N / --gid N     run the server as this uid/gid (default 65534 when captrap is root)
  --name NAME           the server's name in the audit log (default: the command's basename)
  --principal P         the client's principal (default mcp-client)
  --audit-dir DIR       the audit log (default STATE_DIR/audit-NAME)
  --state-dir DIR       captrap's keys (default ~/.captrap/mcp)
  --cgroup-base NAME    base name of the server's cgroups (default captrap-mcp)
`;

const LIST_FLAGS = new Set(['--allow-tools', '--operations', '--paths', '--domains', '--schemes', '--commands']);

export interface ParsedMcpArgs {
  server: McpServerSpec;
  client: McpClientSpec;
  stateDir: string;
  auditDir: string;
}

function list(v: string): string[] {
  return v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

export function parseMcpArgs(argv: string[]): ParsedMcpArgs | { help: true } {
  const lists: Record<string, string[]> = {};
  const env: Record<string, string> = {};
  const ro: string[] = [];
  const rw: string[] = [];
  const one: Record<string, string> = {};
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      i++;
      break;
    }
    if (a === '--help' || a === '-h') return { help: true };
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const [flag, inline] = eq > 0 ? [a.slice(0, eq), a.slice(eq + 1)] : [a, undefined];
    const take = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new SandboxOptionError(`${flag} needs a value`);
      return v;
    };
    if (LIST_FLAGS.has(flag)) (lists[flag] ??= []).push(...list(take()));
    else if (flag === '--ro') ro.push(take());
    else if (flag === '--rw') rw.push(take());
    else if (flag === '--env') {
      const v = take();
      const k = v.indexOf('=');
      if (k <= 0) throw new SandboxOptionError(`--env needs NAME=VALUE, got '${v}'`);
      env[v.slice(0, k)] = v.slice(k + 1);
    } else if (['--memory', '--pids', '--cpu', '--timeout', '--uid', '--gid', '--name', '--principal', '--audit-dir', '--state-dir', '--config', '--server', '--cgroup-base'].includes(flag)) one[flag] = take();
    else if (a.startsWith('-')) throw new SandboxOptionError(`unknown option '${a}' (see captrap mcp --help)`);
    else break;
  }
  const stateDir = resolve(one['--state-dir'] ?? join(homedir(), '.captrap', 'mcp'));
  if (one['--config'] !== undefined || one['--server'] !== undefined) return fromConfig(one, stateDir);
  const [command, ...args] = argv.slice(i);
  if (command === undefined) throw new SandboxOptionError('no server command given: captrap mcp [options] -- COMMAND ARGS...');
  const name = one['--name'] ?? defaultName(command, args);
  const constraints: Constraints = {};
  if (lists['--allow-tools']) constraints.allowedTools = lists['--allow-tools'];
  if (lists['--paths']) {
    // A root that does not exist is a typo more often than a plan: refuse it rather than bind nothing.
    constraints.paths = lists['--paths'].map((p) => {
      if (!existsSync(p)) throw new SandboxOptionError(`--paths ${p}: no such file or directory`, { option: '--paths', path: p });
      return resolve(p);
    });
  }
  for (const [flag, paths] of [['--ro', ro], ['--rw', rw]] as const) {
    for (const p of paths) if (!existsSync(p)) throw new SandboxOptionError(`${flag} ${p}: no such file or directory`, { option: flag, path: p });
  }
  if (lists['--domains']) constraints.allowedDomains = lists['--domains'];
  if (lists['--schemes']) constraints.allowedSchemes = lists['--schemes'];
  if (lists['--commands']) constraints.allowedCommands = lists['--commands'];
  if (one['--timeout'] !== undefined) constraints.limits = { timeoutMs: Math.ceil(parseDuration('--timeout', one['--timeout'])) };
  const server: McpServerSpec = { name, command, args, env, view: { readOnly: ro.map((p) => resolve(p)), readWrite: rw.map((p) => resolve(p)) } };
  const limits: NonNullable<McpServerSpec['limits']> = {};
  if (one['--memory'] !== undefined) limits.memoryBytes = parseBytes('--memory', one['--memory']);
  if (one['--pids'] !== undefined) limits.pids = Number(one['--pids']);
  if (one['--cpu'] !== undefined) limits.cpu = parseCpu(one['--cpu']);
  server.limits = limits;
  if (one['--cgroup-base'] !== undefined) server.cgroupBase = one['--cgroup-base'];
  if (one['--uid'] !== undefined) server.uid = Number(one['--uid']);
  if (one['--gid'] !== undefined) server.gid = Number(one['--gid']);
  return {
    server,
    client: { principal: one['--principal'] ?? 'mcp-client', operations: lists['--operations'] ?? ['invoke'], constraints },
    stateDir,
    auditDir: resolve(one['--audit-dir'] ?? join(stateDir, `audit-${name}`)),
  };
}

const LAUNCHERS = new Set(['node', 'npx', 'uvx', 'uv', 'python', 'python3', 'deno', 'bun', 'bunx', 'pipx', 'docker']);

/** `node /x/server-filesystem/dist/index.js` and `npx -y @scope/server-x` name their server by its package or script. */
function defaultName(command: string, args: string[]): string {
  const base = (p: string): string => p.split('/').filter(Boolean).pop() ?? p;
  let name = base(command);
  if (LAUNCHERS.has(name)) {
    const target = args.find((a) => !a.startsWith('-') && a !== 'run');
    if (target) {
      const parts = target.split('/').filter(Boolean);
      const dist = parts.findIndex((p) => p === 'dist' || p === 'build' || p === 'src');
      name = dist > 0 ? parts[dist - 1]! : base(target).replace(/\.(m?js|cjs|ts|py)$/, '');
    }
  }
  return name.replace(/^@/, '').replace(/[^A-Za-z0-9_.-]/g, '-') || 'server';
}

function fromConfig(one: Record<string, string>, stateDirFlag: string): ParsedMcpArgs {
  if (one['--config'] === undefined || one['--server'] === undefined) throw new SandboxOptionError('the config form needs both --config FILE and --server NAME');
  const config = loadConfig(one['--config'], one['--state-dir']);
  const entry = (config.mcpServers ?? []).find((m) => m.name === one['--server']);
  if (!entry) throw new SandboxOptionError(`${config.source}: no mcpServers entry named '${one['--server']}' (known: ${(config.mcpServers ?? []).map((m) => m.name).join(', ') || 'none'})`);
  const who = one['--principal'];
  const client = who === undefined ? entry.clients[0]! : entry.clients.find((c) => c.principal === who);
  if (!client) throw new SandboxOptionError(`mcpServers.${entry.name}: no client with principal '${who}'`);
  const server = serverSpec(entry, config);
  const stateDir = one['--state-dir'] !== undefined ? stateDirFlag : config.stateDir;
  return {
    server,
    client: { principal: client.principal, operations: client.operations, constraints: client.constraints },
    stateDir,
    auditDir: resolve(one['--audit-dir'] ?? join(stateDir, `audit-mcp-${entry.name}`)),
  };
}

export async function main(argv: string[]): Promise<number> {
  let parsed: ReturnType<typeof parseMcpArgs>;
  try {
    parsed = parseMcpArgs(argv);
  } catch (err) {
    process.stderr.write(`captrap mcp: ${describeError(err)}\n`);
    return 2;
  }
  if ('help' in parsed) {
    process.stdout.write(HELP);
    return 0;
  }
  try {
    return await runStdioGateway(parsed);
  } catch (err) {
    process.stderr.write(`captrap mcp: ${describeError(err)}\n`);
    return 1;
  }
}
