// How captrap authenticates to the NATS server that carries revocations (and shipped audit
// records), and how it checks that server: both matter, because whoever can write the bucket can
// revoke every token (or, on a host that has not seen an id yet, keep one alive), and whoever
// sits between a host and the server can hide revocations from it.
import { readFileSync } from 'node:fs';
import { credsAuthenticator, type ConnectionOptions } from '@nats-io/transport-node';
import { CaptrapError } from '../errors.js';
import { checkOwnedPath } from './statedir.js';
import type { RevocationsConfig } from './token-revocations.js';

/** A credentials, password, token or key file that cannot be used (missing, unreadable, others can read it). */
export class NatsAuthFileError extends CaptrapError {
  constructor(message: string, details: Record<string, unknown>, cause?: unknown) {
    super('E_REVOCATIONS_AUTH', message, details, { cause });
  }
}

function secret(path: string, role: string): string {
  try {
    checkOwnedPath(path, 'secret', { role });
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new NatsAuthFileError(`revocations: ${role} ${path}: ${(err as Error).message}`, { path, role }, err);
  }
}

/** The connect options the config's auth and tls sections ask for; secrets are read here, at each connect. */
export function natsConnectOptions(cfg: RevocationsConfig): Partial<ConnectionOptions> {
  const o: Partial<ConnectionOptions> = {};
  const a = cfg.auth;
  if (a?.credentialsFile !== undefined) o.authenticator = credsAuthenticator(new TextEncoder().encode(secret(a.credentialsFile, 'NATS credentials file')));
  if (a?.user !== undefined) {
    o.user = a.user;
    // One trailing newline is the file's, not the password's.
    o.pass = a.passwordFile !== undefined ? secret(a.passwordFile, 'NATS password file').replace(/\r?\n$/, '') : '';
  }
  if (a?.tokenFile !== undefined) o.token = secret(a.tokenFile, 'NATS token file').trim();
  const t = cfg.tls;
  if (t !== undefined) {
    // An object, even empty, makes the client insist on TLS.
    o.tls = {
      ...(t.caFile !== undefined ? { caFile: t.caFile } : {}),
      ...(t.certFile !== undefined ? { certFile: t.certFile } : {}),
      ...(t.keyFile !== undefined ? { key: secret(t.keyFile, 'NATS client key file') } : {}),
    };
  }
  return o;
}

/** Whether revocations would cross the network in clear text or unauthenticated: doctor and the start log say so. */
export function natsExposure(cfg: RevocationsConfig): string | undefined {
  const url = cfg.url ?? '';
  let loopback = false;
  try {
    const host = new URL(url).hostname.replace(/^\[|\]$/g, '');
    loopback = host === 'localhost' || host === '::1' || /^127\./.test(host);
  } catch {
    // an unparsable URL fails at connect with its own error
  }
  if (loopback) return undefined;
  const tls = cfg.tls !== undefined || /^(tls|wss):/.test(url);
  const auth = cfg.auth !== undefined && (cfg.auth.credentialsFile ?? cfg.auth.user ?? cfg.auth.tokenFile) !== undefined;
  if (tls && auth) return undefined;
  return `revocations reach ${url} ${!tls ? 'without TLS' : ''}${!tls && !auth ? ' and ' : ''}${!auth ? 'without authenticating' : ''}: anyone on the path could hide revocations from this host, and anyone who can reach the server could write the bucket (set revocations.tls and revocations.auth)`;
}
