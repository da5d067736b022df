// `captrap token verify | attenuate | seal | inspect | issue | revoke`: ct2 tokens from the command
// line. verify needs only the issuer's public key set (`captrap keys export`); attenuate and seal
// need nothing but the token (a holder narrows offline); issue signs with the state dir's active
// key; revoke asks a running sidecar (its admin socket) to revoke ids in its revocation set.
// A TOKEN argument of '-' is read from stdin (keeps tokens out of `ps` and shell history).
// Exit codes: 0 valid / allowed / done, 1 refused (the E_* code is printed), 2 usage or bad input.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { AccessArguments } from '../../kernel/constraints.js';
import { AccessDeniedError } from '../../kernel/errors.js';
import { ToolPolicy } from '../../kernel/policy.js';
import { RESOURCE_TYPES, type ResourceType } from '../../kernel/capability.js';
import {
  attenuate,
  inspectToken,
  issueToken,
  publicKeysFromJwks,
  seal,
  TokenError,
  verifyToken,
  type BlockBody,
  type TokenNarrowing,
  type TokenRequest,
  type VerifiedToken,
} from '../../kernel/tokens/index.js';
import { AdminCallError, AdminClient, resolveSocketPath } from '../admin-client.js';
import { describeError } from '../cli.js';
import { loadConfig } from '../config.js';
import type { RevocationEntry } from '../token-revocations.js';
import { openKeyStore, stateDirFrom } from './keys.js';

const USAGE = `usage:
  captrap token verify --pubkeys FILE TOKEN [--tool T [--args JSON]] [--principal P] [--operation OP]
                       [--resource R] [--catalogue FILE] [--revoked FILE] [--host H] [--json]
  captrap token attenuate TOKEN [--constraints JSON] [--when CEL] [--principal P] [--operations a,b]
                       [--resource PATTERN] [--ttl DURATION] [--seal]
  captrap token seal TOKEN
  captrap token inspect TOKEN [--json]
  captrap token issue [--state-dir DIR | --config FILE] --resource-type tool|file|network|process
                       --resource PATTERN --operations a,b --ttl DURATION [--principal P]
                       [--constraints JSON] [--when CEL]
  captrap token revoke [--config FILE | --socket PATH] [ID...] [--token TOKEN] [--reason TEXT] [--json]

verify checks every signature, the seal or proof, expiry and (with --revoked, a file of revocation
ids, one per line) revocation; with --tool it also checks that every block permits the call.
--principal defaults to the most specific principal the token names, --operation to 'invoke',
--resource to the tool. With --catalogue (the sidecar's tool catalogue) the arguments are mapped
to files, URLs and commands and checked against each block's constraints; without it only the
tool, the principal and the 'when' expressions see them.
revoke adds revocation ids (from verify --json) to a running sidecar's revocation set (its own
file, or the set every host shares); --token T revokes T's last block: that copy and whatever is
attenuated from it. The sidecar is the one --config names (its adminSocket), else --socket, else
$CAPTRAP_SOCKET, else ./.captrap/admin.sock.
TOKEN '-' reads the token from stdin. DURATION: 90s, 10m, 2h, 7d.
Exits 0 if valid (and allowed) or done, 1 if refused, 2 on bad input.
`;

class UsageError extends Error {}

function readToken(arg: string | undefined): string {
  if (arg === undefined) throw new UsageError('give a TOKEN (or - to read it from stdin)');
  return (arg === '-' ? readFileSync(0, 'utf8') : arg).trim();
}

function parseJson(what: string, text: string | undefined): unknown {
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new UsageError(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}

function parseTtl(text: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(text.trim());
  if (!m) throw new UsageError(`--ttl '${text}' is not a duration such as 90s, 10m, 2h or 7d`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
}

function list(text: string | undefined): string[] | undefined {
  return text === undefined ? undefined : text.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
}

function readRevoked(path: string | undefined): Set<string> {
  if (path === undefined) return new Set();
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`--revoked ${path}: ${(err as Error).message}`);
  }
  return new Set(text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#')));
}

function blockText(b: BlockBody, i: number): string {
  const parts: string[] = [];
  if (b.principal !== undefined) parts.push(`principal=${b.principal}`);
  if (b.resourceType !== undefined) parts.push(`type=${b.resourceType}`);
  if (b.resource !== undefined) parts.push(`resource=${b.resource}`);
  if (b.operations !== undefined) parts.push(`ops=${b.operations.join(',')}`);
  if (b.constraints !== undefined) parts.push(`constraints=${JSON.stringify(b.constraints)}`);
  if (b.when !== undefined) parts.push(`when=${JSON.stringify(b.when)}`);
  if (b.expiresAt !== undefined) parts.push(`expires=${new Date(b.expiresAt).toISOString()}`);
  return `  block ${i}: ${parts.join(' ') || '(no restriction of its own)'}`;
}

function summary(v: VerifiedToken): string {
  const lines = [
    `valid ct2 token ${v.tokenId}: key ${v.rootKeyId}, ${v.blocks.length} block${v.blocks.length === 1 ? '' : 's'}, ${v.sealed ? 'sealed' : 'open'}, expires ${new Date(v.expiresAt).toISOString()}`,
    ...v.blocks.map(blockText),
    `  revocation ids: ${v.revocationIds.join(' ')}`,
  ];
  return lines.join('\n') + '\n';
}

function verify(argv: string[]): number {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      pubkeys: { type: 'string' },
      tool: { type: 'string' },
      args: { type: 'string' },
      principal: { type: 'string' },
      operation: { type: 'string' },
      resource: { type: 'string' },
      catalogue: { type: 'string' },
      revoked: { type: 'string' },
      host: { type: 'string' },
      json: { type: 'boolean' },
    },
    strict: true,
    allowPositionals: true,
  });
  if (values.pubkeys === undefined) throw new UsageError('verify needs --pubkeys FILE (from captrap keys export)');
  if (positionals.length !== 1) throw new UsageError('verify takes one TOKEN');
  if (values.tool === undefined && (values.args !== undefined || values.catalogue !== undefined)) throw new UsageError('--args and --catalogue need --tool');
  let jwks: unknown;
  try {
    jwks = JSON.parse(readFileSync(values.pubkeys, 'utf8'));
  } catch (err) {
    throw new UsageError(`--pubkeys ${values.pubkeys}: ${(err as Error).message}`);
  }
  const publicKeys = publicKeysFromJwks(jwks, values.pubkeys);
  const token = readToken(positionals[0]);
  const revoked = readRevoked(values.revoked);
  const isRevoked = (ids: readonly string[]) => ids.some((id) => revoked.has(id));
  let request: TokenRequest | undefined;
  let verified: VerifiedToken;
  try {
    if (values.tool !== undefined) {
      const args = (parseJson('--args', values.args) ?? {}) as Record<string, unknown>;
      if (typeof args !== 'object' || args === null || Array.isArray(args)) throw new UsageError('--args must be a JSON object');
      let access: AccessArguments | undefined;
      if (values.catalogue !== undefined) {
        const tool = ToolPolicy.fromFile(values.catalogue).tool(values.tool);
        if (!tool) throw new AccessDeniedError('E_UNKNOWN_TOOL', `tool '${values.tool}' is not in ${values.catalogue}`, { tool: values.tool });
        access = tool.accessOf(tool.parseArgs(args));
      }
      // The principal defaults to the one the token names, so a bare check asks "may its holder do this?".
      const principal = values.principal ?? [...inspectToken(token).blocks].reverse().find((b) => b.principal !== undefined)?.principal ?? 'anonymous';
      request = {
        principal,
        operation: values.operation ?? 'invoke',
        resource: values.resource ?? values.tool,
        tool: values.tool,
        args,
        ...(access ? { access } : {}),
        ...(values.host !== undefined ? { host: values.host } : {}),
      };
    }
    verified = verifyToken(token, { publicKeys, isRevoked, ...(request ? { request } : {}) });
  } catch (err) {
    if (err instanceof TokenError || err instanceof AccessDeniedError) {
      if (values.json) process.stdout.write(JSON.stringify({ valid: false, code: err.code, message: err.message, details: err.details ?? {} }) + '\n');
      else process.stdout.write(`refused: ${err.message} [${err.code}]\n`);
      return 1;
    }
    throw err;
  }
  if (values.json) {
    process.stdout.write(
      JSON.stringify({
        valid: true,
        ...(request ? { allowed: true, request: { principal: request.principal, operation: request.operation, resource: request.resource, tool: request.tool } } : {}),
        tokenId: verified.tokenId,
        rootKeyId: verified.rootKeyId,
        sealed: verified.sealed,
        issuedAt: verified.issuedAt,
        expiresAt: verified.expiresAt,
        principal: verified.principal,
        resourceType: verified.resourceType,
        blocks: verified.blocks,
        revocationIds: verified.revocationIds,
        constraints: verified.constraints,
      }) + '\n',
    );
  } else {
    process.stdout.write(summary(verified));
    if (request) process.stdout.write(`allowed: ${request.operation} ${request.resource} for ${request.principal}\n`);
  }
  return 0;
}

function narrowingOptions() {
  return {
    constraints: { type: 'string' },
    when: { type: 'string' },
    principal: { type: 'string' },
    operations: { type: 'string' },
    resource: { type: 'string' },
    ttl: { type: 'string' },
  } as const;
}

function attenuateCmd(argv: string[]): number {
  const { values, positionals } = parseArgs({ args: argv, options: { ...narrowingOptions(), seal: { type: 'boolean' } }, strict: true, allowPositionals: true });
  if (positionals.length !== 1) throw new UsageError('attenuate takes one TOKEN');
  const token = readToken(positionals[0]);
  const n: TokenNarrowing = {};
  const constraints = parseJson('--constraints', values.constraints);
  if (constraints !== undefined) n.constraints = constraints;
  if (values.when !== undefined) n.when = values.when;
  if (values.principal !== undefined) n.principal = values.principal;
  const ops = list(values.operations);
  if (ops !== undefined) n.operations = ops;
  if (values.resource !== undefined) n.resource = values.resource;
  if (values.ttl !== undefined) n.ttlMs = parseTtl(values.ttl);
  const out = attenuate(token, n);
  process.stdout.write((values.seal ? seal(out) : out) + '\n');
  return 0;
}

function issueCmd(argv: string[]): number {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ...narrowingOptions(), 'resource-type': { type: 'string' }, 'state-dir': { type: 'string' }, config: { type: 'string', short: 'c' } },
    strict: true,
    allowPositionals: true,
  });
  if (positionals.length > 0) throw new UsageError('issue takes no positional arguments');
  const type = values['resource-type'];
  if (type === undefined || !(RESOURCE_TYPES as readonly string[]).includes(type)) throw new UsageError(`--resource-type must be one of ${RESOURCE_TYPES.join(', ')}`);
  if (values.resource === undefined) throw new UsageError('issue needs --resource PATTERN');
  const ops = list(values.operations);
  if (!ops?.length) throw new UsageError('issue needs --operations a,b');
  if (values.ttl === undefined) throw new UsageError('issue needs --ttl DURATION: every token expires');
  const store = openKeyStore(stateDirFrom(values), true);
  const constraints = parseJson('--constraints', values.constraints);
  const token = issueToken({
    key: store.signingKey(),
    resourceType: type as ResourceType,
    resource: values.resource,
    operations: ops,
    ttlMs: parseTtl(values.ttl),
    ...(values.principal !== undefined ? { principal: values.principal } : {}),
    ...(constraints !== undefined ? { constraints } : {}),
    ...(values.when !== undefined ? { when: values.when } : {}),
  });
  process.stdout.write(token + '\n');
  return 0;
}

async function revokeCmd(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { config: { type: 'string', short: 'c' }, socket: { type: 'string' }, token: { type: 'string' }, reason: { type: 'string' }, json: { type: 'boolean' } },
    strict: true,
    allowPositionals: true,
  });
  if (values.config !== undefined && values.socket !== undefined) throw new UsageError('give --config or --socket, not both');
  const token = values.token === undefined ? undefined : readToken(values.token);
  if (positionals.length === 0 && token === undefined) throw new UsageError('revoke needs revocation ids or --token TOKEN');
  for (const id of positionals) if (!/^[0-9a-f]{64}$/.test(id)) throw new UsageError(`'${id}' is not a revocation id (64 hex characters; captrap token verify --json prints them)`);
  const socket = values.config !== undefined ? loadConfig(values.config).adminSocket : resolveSocketPath(values.socket);
  const client = await AdminClient.connect(socket);
  try {
    const { revoked } = await client.call<{ revoked: RevocationEntry[] }>('tokens.revoke', {
      ...(positionals.length > 0 ? { ids: positionals } : {}),
      ...(token !== undefined ? { token } : {}),
      ...(values.reason !== undefined ? { reason: values.reason } : {}),
    });
    if (values.json) process.stdout.write(JSON.stringify({ revoked }) + '\n');
    else for (const e of revoked) process.stdout.write(`revoked ${e.id} (host ${e.host}, ${new Date(e.at).toISOString()}: ${e.reason})\n`);
    return 0;
  } finally {
    client.close();
  }
}

function inspectCmd(argv: string[]): number {
  const { values, positionals } = parseArgs({ args: argv, options: { json: { type: 'boolean' } }, strict: true, allowPositionals: true });
  if (positionals.length !== 1) throw new UsageError('inspect takes one TOKEN');
  const t = inspectToken(readToken(positionals[0]));
  if (values.json) process.stdout.write(JSON.stringify(t) + '\n');
  else process.stdout.write(`ct2 token (NOT verified): key ${t.rootKeyId}, ${t.blocks.length} blocks, ${t.sealed ? 'sealed' : 'open'}\n${t.blocks.map(blockText).join('\n')}\n`);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  try {
    switch (sub) {
      case 'verify':
        return verify(rest);
      case 'attenuate':
        return attenuateCmd(rest);
      case 'seal': {
        if (rest.length !== 1) throw new UsageError('seal takes one TOKEN');
        process.stdout.write(seal(readToken(rest[0])) + '\n');
        return 0;
      }
      case 'inspect':
        return inspectCmd(rest);
      case 'issue':
        return issueCmd(rest);
      case 'revoke':
        return await revokeCmd(rest);
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        process.stdout.write(USAGE);
        return sub === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown subcommand '${sub}'`);
    }
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`captrap token: ${(err as Error).message}\n\n${USAGE}`);
      return 2;
    }
    process.stderr.write(`captrap token: ${describeError(err)}\n`);
    // A token the holder may not narrow that way, or a sealed one, or the sidecar said no: refused. Anything else: bad input.
    return (err instanceof TokenError && err.code !== 'E_TOKEN_MALFORMED') || err instanceof AdminCallError ? 1 : 2;
  }
}
