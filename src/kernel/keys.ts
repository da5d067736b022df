// Secret key files (capability HMAC keys, the audit MAC key). A key file holds one secret
// as base64 or hex text. captrap creates them 0600 and refuses to use one that group or
// others can read: a leaked key forges capabilities or rewrites the audit log.
import { createPrivateKey, createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { CaptrapError } from '../errors.js';
import { generateEd25519KeyObjects } from './tokens/ed25519.js';

export const MIN_SECRET_BYTES = 32;

export class KeyError extends CaptrapError {}

export function generateSecret(bytes = MIN_SECRET_BYTES): Buffer {
  return randomBytes(bytes);
}

/** Parses a secret given as hex or base64 text; at least MIN_SECRET_BYTES bytes. */
export function parseSecret(text: string, source = 'key'): Buffer {
  const t = text.trim();
  let buf: Buffer;
  if (/^[0-9a-fA-F]+$/.test(t) && t.length % 2 === 0) buf = Buffer.from(t, 'hex');
  else if (/^[A-Za-z0-9+/_-]+={0,2}$/.test(t)) buf = Buffer.from(t, t.includes('-') || t.includes('_') ? 'base64url' : 'base64');
  else throw new KeyError('E_KEY_FORMAT', `${source}: not a hex or base64 secret`);
  if (buf.length < MIN_SECRET_BYTES) {
    throw new KeyError('E_KEY_TOO_SHORT', `${source}: secret is ${buf.length} bytes; at least ${MIN_SECRET_BYTES} are required`);
  }
  return buf;
}

/** Refuses a secret file that is missing or that group or others can access: a leaked key forges capabilities or audit records. */
function assertOwnerOnly(path: string): void {
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch (err) {
    throw new KeyError('E_KEY_MISSING', `key file ${path} cannot be read: ${(err as Error).message}`, { path }, { cause: err });
  }
  if ((mode & 0o077) !== 0) {
    throw new KeyError(
      'E_KEY_PERMISSIONS',
      `key file ${path} is accessible to group or others (mode ${(mode & 0o777).toString(8)}); run: chmod 600 ${path}`,
      { path },
    );
  }
}

/** Reads a key file, refusing one that is missing, malformed, or readable by group/others. */
export function readSecretFile(path: string): Buffer {
  assertOwnerOnly(path);
  return parseSecret(readFileSync(path, 'utf8'), `key file ${path}`);
}

/** Writes a new key file with mode 0600; never overwrites an existing file. */
export function writeSecretFile(path: string, secret: Buffer): void {
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (err) {
    throw new KeyError('E_KEY_WRITE', `cannot create key file ${path}: ${(err as Error).message}`, { path }, { cause: err });
  }
  try {
    writeSync(fd, secret.toString('base64') + '\n');
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Reads the key file at `path`, creating it (0600, fresh random secret) when it does not exist. */
export function loadOrCreateSecretFile(path: string, bytes = MIN_SECRET_BYTES): { secret: Buffer; created: boolean } {
  try {
    statSync(path);
  } catch {
    const secret = generateSecret(bytes);
    try {
      writeSecretFile(path, secret);
      return { secret, created: true };
    } catch (err) {
      // Lost a race with another creator: fall through and read theirs.
      if (!(err instanceof KeyError)) throw err;
    }
  }
  return { secret: readSecretFile(path), created: false };
}

// Ed25519 key pairs sign audit checkpoints. The private key lives in a 0600 PEM file (like
// the secrets above); the public key is world-readable so anyone can check checkpoints.

function readPemFile(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new KeyError('E_KEY_MISSING', `key file ${path} cannot be read: ${(err as Error).message}`, { path }, { cause: err });
  }
}

/** Reads an Ed25519 private key (PKCS#8 PEM), refusing a file readable by group/others. */
export function readEd25519PrivateKey(path: string): KeyObject {
  assertOwnerOnly(path);
  let key: KeyObject;
  try {
    key = createPrivateKey(readPemFile(path));
  } catch (err) {
    if (err instanceof KeyError) throw err;
    throw new KeyError('E_KEY_FORMAT', `key file ${path}: not a PEM private key`, { path }, { cause: err });
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new KeyError('E_KEY_FORMAT', `key file ${path}: expected an Ed25519 key, found ${key.asymmetricKeyType ?? 'unknown'}`, { path });
  }
  return key;
}

/** Reads an Ed25519 public key (SPKI PEM). */
export function readEd25519PublicKey(path: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey(readPemFile(path));
  } catch (err) {
    if (err instanceof KeyError) throw err;
    throw new KeyError('E_KEY_FORMAT', `key file ${path}: not a PEM public key`, { path }, { cause: err });
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new KeyError('E_KEY_FORMAT', `key file ${path}: expected an Ed25519 key, found ${key.asymmetricKeyType ?? 'unknown'}`, { path });
  }
  return key;
}

/**
 * Reads the Ed25519 key pair at `privatePath`/`publicPath`, creating both when the private
 * key does not exist (private 0600, public 0644). An existing private key always wins: the
 * public file is rewritten from it if missing, so the pair can never disagree silently.
 */
export function loadOrCreateEd25519KeyPair(
  privatePath: string,
  publicPath: string,
): { privateKey: KeyObject; publicKey: KeyObject; created: boolean } {
  let created = false;
  try {
    statSync(privatePath);
  } catch {
    // From a random seed, not generateKeyPairSync: on Node 20 exporting a key from a
    // generateKeyPairSync job can deadlock with the GC finalising that job (seen in gdb).
    const pem = generateEd25519KeyObjects().privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    let fd: number | undefined;
    try {
      fd = openSync(privatePath, 'wx', 0o600);
      writeSync(fd, pem);
      fsyncSync(fd);
      created = true;
    } catch (err) {
      // Lost a race with another creator (EEXIST): read theirs below.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new KeyError('E_KEY_WRITE', `cannot create key file ${privatePath}: ${(err as Error).message}`, { path: privatePath }, { cause: err });
      }
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }
  const privateKey = readEd25519PrivateKey(privatePath);
  const publicKey = createPublicKey(privateKey);
  const publicPem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
  let existing: string | undefined;
  try {
    existing = readFileSync(publicPath, 'utf8');
  } catch {
    existing = undefined;
  }
  if (existing !== publicPem) {
    try {
      writeFileSync(publicPath, publicPem, { mode: 0o644 });
    } catch (err) {
      throw new KeyError('E_KEY_WRITE', `cannot write public key file ${publicPath}: ${(err as Error).message}`, { path: publicPath }, { cause: err });
    }
  }
  return { privateKey, publicKey, created };
}
