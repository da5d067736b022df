// The issuer's ct2 signing keys, kept in a directory of the state dir (default
// <stateDir>/token-keys, mode 0700): one PKCS#8 PEM private key per key id (`<id>.pem`, 0600,
// refused when group or others can read it), its public half (`<id>.pub`), and a file `active`
// naming the key that signs new tokens. Rotation adds a key and makes it active; older keys keep
// verifying what they signed (they stay in the exported key set) until retired. Retiring deletes
// the private key and leaves `<id>.retired`, so the id is never reused and never exported again.
import { createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { closeSync, fsyncSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { KeyError, readEd25519PrivateKey } from '../keys.js';
import { generateEd25519 } from './ed25519.js';
import { toJwks, type Jwks } from './jwks.js';
import type { TokenSigningKey } from './sign.js';
import type { PublicKeySet } from './verify.js';

export const TOKEN_KEYS_DIR = 'token-keys';
const ACTIVE_FILE = 'active';
const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;

export function tokenKeyDir(stateDir: string): string {
  return join(stateDir, TOKEN_KEYS_DIR);
}

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function writeFileAtomic(path: string, text: string, mode = 0o600): void {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = openSync(tmp, 'wx', mode);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** A new key: the private half 0600, created exclusively (never over an existing file), then its public half. */
function writeKeyPair(privatePath: string, publicPath: string): void {
  const { privateKey } = generateEd25519();
  let fd: number;
  try {
    fd = openSync(privatePath, 'wx', 0o600);
  } catch (err) {
    throw new KeyError('E_KEY_WRITE', `cannot create key file ${privatePath}: ${(err as Error).message}`, { path: privatePath }, { cause: err });
  }
  try {
    writeSync(fd, privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  writeFileAtomic(publicPath, createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }).toString(), 0o644);
}

function newKeyId(): string {
  const day = new Date().toISOString().slice(0, 10).replace(/-/g, '');
  return `ct2-${day}-${randomBytes(4).toString('hex')}`;
}

export class TokenKeyStore {
  private constructor(readonly dir: string) {}

  /**
   * Opens the key directory, creating it (0700) and a first active key when it holds none
   * (unless `create` is false, when a missing key is an error).
   */
  static open(dir: string, opts: { create?: boolean; firstKeyId?: string } = {}): TokenKeyStore {
    const create = opts.create ?? true;
    if (create) mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = (() => {
      try {
        return lstatSync(dir);
      } catch (err) {
        throw new KeyError('E_KEY_MISSING', `token key directory ${dir} does not exist; run 'captrap keys rotate --state-dir DIR' to create a key`, { path: dir }, { cause: err });
      }
    })();
    if (!st.isDirectory()) throw new KeyError('E_KEY_PERMISSIONS', `token key directory ${dir} is not a directory (or is a symlink)`, { path: dir });
    if ((st.mode & 0o022) !== 0) throw new KeyError('E_KEY_PERMISSIONS', `token key directory ${dir} is writable by group or others; run: chmod 700 ${dir}`, { path: dir });
    const store = new TokenKeyStore(dir);
    if (!exists(join(dir, ACTIVE_FILE))) {
      if (!create) throw new KeyError('E_KEY_MISSING', `no active token key in ${dir}; run 'captrap keys rotate' to create one`, { path: dir });
      store.rotate(opts.firstKeyId);
    }
    return store;
  }

  /** Whether `dir` already holds an active key (without creating anything). */
  static hasActiveKey(dir: string): boolean {
    return exists(join(dir, ACTIVE_FILE));
  }

  /** The id of the key that signs new tokens. */
  get activeId(): string {
    const path = join(this.dir, ACTIVE_FILE);
    let id: string;
    try {
      id = readFileSync(path, 'utf8').trim();
    } catch (err) {
      throw new KeyError('E_KEY_MISSING', `cannot read ${path}: ${(err as Error).message}`, { path }, { cause: err });
    }
    if (!KEY_ID.test(id)) throw new KeyError('E_KEY_FORMAT', `${path} does not name a key id`, { path });
    return id;
  }

  /** Ids of the keys that verify (not retired), sorted. */
  ids(): string[] {
    return readdirSync(this.dir)
      .filter((f) => f.endsWith('.pem'))
      .map((f) => f.slice(0, -'.pem'.length))
      .filter((id) => KEY_ID.test(id) && !exists(join(this.dir, `${id}.retired`)))
      .sort();
  }

  private privateKey(id: string): KeyObject {
    return readEd25519PrivateKey(join(this.dir, `${id}.pem`));
  }

  /** The active key, for issueToken. */
  signingKey(): TokenSigningKey {
    const id = this.activeId;
    return { id, privateKey: this.privateKey(id) };
  }

  /** Every key that verifies, for verifyToken. */
  publicKeys(): PublicKeySet {
    return new Map(this.ids().map((id) => [id, createPublicKey(this.privateKey(id))] as [string, KeyObject]));
  }

  /** The public key set as a JWKS document: what `captrap keys export` prints. */
  jwks(): Jwks {
    return toJwks(this.publicKeys());
  }

  /** Creates a key (0600) and makes it the active one; returns its id. */
  rotate(id: string = newKeyId()): string {
    if (!KEY_ID.test(id)) throw new KeyError('E_KEY_ID', `token key id '${id}' must match ${KEY_ID}`);
    if (exists(join(this.dir, `${id}.pem`)) || exists(join(this.dir, `${id}.retired`))) {
      throw new KeyError('E_KEY_ID', `token key id '${id}' is already used in ${this.dir}`);
    }
    writeKeyPair(join(this.dir, `${id}.pem`), join(this.dir, `${id}.pub`));
    writeFileAtomic(join(this.dir, ACTIVE_FILE), id + '\n');
    return id;
  }

  /** Deletes a key's private half: every token it signed stops verifying wherever the new key set is installed. */
  retire(id: string): void {
    if (id === this.activeId) throw new KeyError('E_KEY_ACTIVE', `token key '${id}' is active; rotate to another key first`);
    if (!this.ids().includes(id)) throw new KeyError('E_KEY_MISSING', `no token key '${id}' in ${this.dir}`);
    writeFileAtomic(join(this.dir, `${id}.retired`), new Date().toISOString() + '\n');
    unlinkSync(join(this.dir, `${id}.pem`));
    try {
      unlinkSync(join(this.dir, `${id}.pub`));
    } catch {
      // already gone: nothing to forget
    }
  }
}
