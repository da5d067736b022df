// `captrap keys export | rotate | retire | list`: the issuer keys that sign ct2 tokens, kept in
// <state-dir>/token-keys. `export` prints the public key set (JWKS) that verifiers need:
//   captrap keys export --state-dir /var/lib/captrap > keys.json
// Exit codes: 0 done, 1 refused (no such key, active key), 2 usage or an unusable state dir.
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { TokenKeyStore, tokenKeyDir } from '../../kernel/tokens/index.js';
import { loadConfig } from '../config.js';
import { checkOwnedPath } from '../statedir.js';
import { describeError } from '../cli.js';

const USAGE = `usage:
  captrap keys export [--state-dir DIR | --config FILE]      print the public key set (JWKS) to stdout
  captrap keys rotate [--state-dir DIR | --config FILE] [--id ID]
                                                            create a key and sign new tokens with it
  captrap keys retire ID [--state-dir DIR | --config FILE]   delete a key: tokens it signed stop verifying
  captrap keys list [--state-dir DIR | --config FILE] [--json]

The state directory is --state-dir, else the stateDir of --config, else $CAPTRAP_STATE_DIR, else
./.captrap. Keys live in <state-dir>/token-keys (0700; private keys 0600). Older keys stay in the
exported set until retired, so tokens they signed keep verifying after a rotation.
`;

export class KeysUsageError extends Error {}

/** The state dir a token or keys command works on (see USAGE). */
export function stateDirFrom(values: { 'state-dir'?: string | undefined; config?: string | undefined }, env: NodeJS.ProcessEnv = process.env): string {
  if (values['state-dir'] !== undefined && values.config !== undefined) throw new KeysUsageError('give --state-dir or --config, not both');
  if (values['state-dir'] !== undefined) return resolve(values['state-dir']);
  if (values.config !== undefined) return loadConfig(values.config).stateDir;
  return resolve(env.CAPTRAP_STATE_DIR ?? '.captrap');
}

/**
 * Opens the token key store of `stateDir` after the same ownership checks `serve` makes (a
 * planted symlink or a directory others can write is refused). `create` makes the directories
 * and a first key when missing.
 */
export function openKeyStore(stateDir: string, create: boolean, firstKeyId?: string): TokenKeyStore {
  checkOwnedPath(stateDir, 'dir', { create, role: 'state directory' });
  const dir = tokenKeyDir(stateDir);
  checkOwnedPath(dir, 'dir', { create, role: 'token key directory' });
  return TokenKeyStore.open(dir, { create, ...(firstKeyId !== undefined ? { firstKeyId } : {}) });
}

export async function main(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  try {
    if (sub === undefined || sub === '-h' || sub === '--help' || sub === 'help') {
      process.stdout.write(USAGE);
      return sub === undefined ? 2 : 0;
    }
    const { values, positionals } = parseArgs({
      args: rest,
      options: { 'state-dir': { type: 'string' }, config: { type: 'string', short: 'c' }, id: { type: 'string' }, json: { type: 'boolean' } },
      strict: true,
      allowPositionals: true,
    });
    const stateDir = stateDirFrom(values);
    switch (sub) {
      case 'export': {
        if (positionals.length > 0) throw new KeysUsageError('export takes no arguments');
        process.stdout.write(JSON.stringify(openKeyStore(stateDir, false).jwks(), null, 2) + '\n');
        return 0;
      }
      case 'rotate': {
        if (positionals.length > 0) throw new KeysUsageError('rotate takes no arguments (use --id ID)');
        // Opening an empty store creates its first key (with --id's id): that is the rotation.
        const existed = TokenKeyStore.hasActiveKey(tokenKeyDir(stateDir));
        const store = openKeyStore(stateDir, true, values.id);
        const id = existed ? store.rotate(values.id) : store.activeId;
        process.stdout.write(`${id}\n`);
        return 0;
      }
      case 'retire': {
        if (positionals.length !== 1) throw new KeysUsageError('retire takes one key id');
        openKeyStore(stateDir, false).retire(positionals[0]!);
        process.stdout.write(`retired ${positionals[0]}\n`);
        return 0;
      }
      case 'list': {
        const store = openKeyStore(stateDir, false);
        const active = store.activeId;
        const ids = store.ids();
        if (values.json) process.stdout.write(JSON.stringify({ active, keys: ids }) + '\n');
        else for (const id of ids) process.stdout.write(`${id}${id === active ? '  (active)' : ''}\n`);
        return 0;
      }
      default:
        throw new KeysUsageError(`unknown subcommand '${sub}'`);
    }
  } catch (err) {
    if (err instanceof KeysUsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`captrap keys: ${(err as Error).message}\n\n${USAGE}`);
      return 2;
    }
    process.stderr.write(`captrap keys: ${describeError(err)}\n`);
    const code = (err as { code?: string }).code;
    return code === 'E_KEY_ACTIVE' || code === 'E_KEY_ID' || (code === 'E_KEY_MISSING' && sub === 'retire') ? 1 : 2;
  }
}
