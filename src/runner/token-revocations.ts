// Where a sidecar learns which ct2 revocation ids are revoked. The local backend is a file in the
// state dir; the nats backend is a JetStream KV bucket every host watches, so a revocation made on
// any host is refused on all of them. Both answer isRevoked synchronously from memory: a token
// check never waits on the network. A source that cannot vouch for its set (a feed silent for
// longer than maxStaleness) throws from isRevoked, and the verifier refuses (fail closed).

export type RevocationBackend = 'file' | 'nats';

export interface RevocationsConfig {
  backend: RevocationBackend;
  /** nats only: the server, e.g. nats://127.0.0.1:4222. */
  url?: string;
  /** nats only: the KV bucket holding one key per revoked id. */
  bucket: string;
  /** nats only: how long the feed may be lost before ct2 calls are refused. */
  maxStalenessMs: number;
  /** This host's name in revocation records and shipped audit subjects (default: os.hostname()). */
  host: string;
  /** nats only: also publish every audit record to the stream, subject captrap.audit.<host>. */
  shipAudit: boolean;
  /** nats only: the JetStream stream audit records are shipped to. */
  auditStream: string;
  /** nats only: how to authenticate to the server (at most one way; the files are read at connect and never logged). */
  auth?: NatsAuthConfig;
  /** nats only: TLS to the server: the CA that signs its certificate, and a client certificate if it asks for one. */
  tls?: NatsTlsConfig;
}

export interface NatsAuthConfig {
  /** A NATS user credentials file (JWT + NKey seed), as `nsc` writes it. */
  credentialsFile?: string;
  /** A user name, with its password in passwordFile. */
  user?: string;
  passwordFile?: string;
  /** A file holding an authorization token. */
  tokenFile?: string;
}

export interface NatsTlsConfig {
  caFile?: string;
  certFile?: string;
  keyFile?: string;
}

export interface RevocationEntry {
  id: string;
  /** The host that revoked it. */
  host: string;
  at: number;
  reason: string;
}

export interface RevocationStatus {
  backend: RevocationBackend;
  /** How many ids are known revoked. */
  revoked: number;
  /** False when isRevoked is refusing (stale feed, closed source). */
  healthy: boolean;
  /** When the set was last known complete (the feed's last message or heartbeat); null if never. */
  lastSyncAt: number | null;
  /** Why it is unhealthy, or what it is connected to. */
  detail: string;
}

export class RevocationsUnavailableError extends Error {
  readonly code = 'E_REVOCATIONS_STALE';
  constructor(message: string) {
    super(message);
    this.name = 'RevocationsUnavailableError';
  }
}

export interface TokenRevocations {
  /** True when any id is revoked. Throws RevocationsUnavailableError when the set cannot be trusted. */
  isRevoked(ids: readonly string[]): boolean;
  /** Revokes ids wherever this source reaches; resolves once durable (file synced, KV put acknowledged). */
  revoke(ids: readonly string[], reason: string): Promise<RevocationEntry[]>;
  /** Calls fn with ids learned from elsewhere (another host), after they are in the set. */
  onRevoked(fn: (entries: RevocationEntry[]) => void): () => void;
  status(): RevocationStatus;
  /** Every entry known revoked now (the nats backend's local copy starts from it). */
  snapshot?(): RevocationEntry[];
  close(): Promise<void>;
}
