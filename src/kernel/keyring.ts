// Signing keys by id. One key is active (signs new capabilities); older keys stay to verify
// what they signed until they are retired, so rotation never invalidates live capabilities
// by surprise, and retirement does so on purpose.
import { createSecretKey, type KeyObject } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { CaptrapError } from '../errors.js';
import { loadOrCreateSecretFile, MIN_SECRET_BYTES } from './keys.js';

export class KeyringError extends CaptrapError {}

const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;

export class Keyring {
  private readonly keys = new Map<string, Buffer>();
  /** The same secrets imported once: HMAC with a KeyObject skips re-importing the key per call. */
  private readonly keyObjects = new Map<string, KeyObject>();
  private active: string | undefined;
  /** Retired ids are never reused: a cached verification under the old secret must not carry over. */
  private readonly retired = new Set<string>();

  constructor(initial?: { id: string; secret: Buffer }) {
    if (initial) this.rotate(initial.id, initial.secret);
  }

  /** A keyring whose active key lives in `<dir>/<id>.key` (created 0600 on first use). */
  static fromDir(dir: string, id = 'k1'): Keyring {
    if (!KEY_ID.test(id)) throw new KeyringError('E_KEY_ID', `key id '${id}' must match ${KEY_ID}`);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    return new Keyring({ id, secret: loadOrCreateSecretFile(join(dir, `${id}.key`)).secret });
  }

  /** Adds a key without making it active (to verify capabilities another instance signed). */
  add(id: string, secret: Buffer): void {
    if (!KEY_ID.test(id)) throw new KeyringError('E_KEY_ID', `key id '${id}' must match ${KEY_ID}`);
    if (secret.length < MIN_SECRET_BYTES) {
      throw new KeyringError('E_KEY_TOO_SHORT', `key ${id}: secret is ${secret.length} bytes; at least ${MIN_SECRET_BYTES} are required`);
    }
    if (this.retired.has(id)) throw new KeyringError('E_KEY_ID', `key id '${id}' was retired and cannot be reused`);
    const existing = this.keys.get(id);
    if (existing && !existing.equals(secret)) throw new KeyringError('E_KEY_ID', `key id '${id}' is already in use with another secret`);
    this.keys.set(id, Buffer.from(secret));
    this.keyObjects.set(id, createSecretKey(Buffer.from(secret)));
  }

  /** Adds a key and makes it the one that signs from now on. */
  rotate(id: string, secret: Buffer): void {
    this.add(id, secret);
    this.active = id;
  }

  /** Forgets a key: everything it signed stops verifying. The active key cannot be retired. */
  retire(id: string): void {
    if (id === this.active) throw new KeyringError('E_KEY_ACTIVE', `key '${id}' is active; rotate to another key first`);
    this.keys.delete(id);
    this.keyObjects.delete(id);
    this.retired.add(id);
  }

  get activeId(): string {
    if (!this.active) throw new KeyringError('E_NO_KEY', 'the keyring has no active key');
    return this.active;
  }

  get(id: string): Buffer | undefined {
    return this.keys.get(id);
  }

  keyObject(id: string): KeyObject | undefined {
    return this.keyObjects.get(id);
  }

  ids(): string[] {
    return [...this.keys.keys()];
  }
}
