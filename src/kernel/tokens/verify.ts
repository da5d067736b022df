// Verifying ct2 tokens: every signature (root key for block 0, then each block's `next` key),
// the proof or the seal, every block's revocation id, the earliest expiry, and, when a request
// is given, that EVERY block permits it. Narrowing therefore holds by construction: a block can
// only add conditions, never lift one. Needs only public keys; no kernel, no secret.
import { hostname } from 'node:os';
import type { KeyObject } from 'node:crypto';
import { toCelActivation, CelError, compileWhen, type CelActivation } from '../cel.js';
import { checkArguments, checkNetworkResource, checkTool, intersectConstraints, type AccessArguments, type CheckedArguments, type Constraints } from '../constraints.js';
import { AccessDeniedError } from '../errors.js';
import { isWithin, resolveRealPath } from '../paths.js';
import { matchPattern } from '../pattern.js';
import type { ResourceType } from '../capability.js';
import { privateKeyFromSeed, publicKeyFromRaw, rawPublicKey, verifyEd25519 } from './ed25519.js';
import { TokenError } from './errors.js';
import { blockMessage, decodeBody, decodeEnvelope, revocationId, sealMessage, type AuthorityBody, type BlockBody } from './format.js';

/** Root public keys by key id (see jwks.ts to read an exported key set). */
export type PublicKeySet = ReadonlyMap<string, KeyObject>;

/** One call to check against every block. */
export interface TokenRequest {
  /** The caller, as the channel identified it (never what the caller claims). */
  principal: string;
  /** e.g. 'invoke'. */
  operation: string;
  /** The resource acted on: the tool name for a tool token, a path, a URL... */
  resource: string;
  /** Defaults to `resource` for a tool token. */
  tool?: string;
  /** The call's raw arguments, as `when` expressions see them. */
  args?: Readonly<Record<string, unknown>>;
  /** What the tool catalogue maps the arguments to (files, URLs, commands), checked against each block's constraints. */
  access?: AccessArguments;
  /** The verifying host's name for `when`; defaults to os.hostname(). */
  host?: string;
}

export interface VerifyTokenOptions {
  publicKeys: PublicKeySet;
  /** True when any of these revocation ids (one per block, root first) is revoked. Fail closed: a throw refuses the token. */
  isRevoked: (ids: readonly string[]) => boolean;
  /** Milliseconds since the epoch; defaults to Date.now(). */
  now?: number;
  request?: TokenRequest;
}

export interface VerifiedToken {
  tokenId: string;
  rootKeyId: string;
  issuedAt: number;
  /** The earliest expiry of any block. */
  expiresAt: number;
  resourceType: ResourceType;
  /** The most specific principal any block names (the caller must be it or below it), or null. */
  principal: string | null;
  blocks: readonly BlockBody[];
  /** One per block, root first. */
  revocationIds: readonly string[];
  sealed: boolean;
  /** What every block's constraints allow together (for limits and display; the per-block checks are what decide). */
  readonly constraints: Constraints;
  /** When a request was checked: the real paths and canonical URLs the tool must receive. */
  checked?: CheckedArguments;
}

function sigFail(message: string, details?: Record<string, unknown>): never {
  throw new TokenError('E_TOKEN_SIGNATURE', message, details);
}

/** Checks every signature and the proof or seal; returns the decoded blocks. */
function verifyChain(token: string, publicKeys: PublicKeySet): { env: ReturnType<typeof decodeEnvelope>; blocks: BlockBody[] } {
  const env = decodeEnvelope(token);
  const root = publicKeys.get(env.key);
  if (!root) throw new TokenError('E_TOKEN_UNKNOWN_KEY', `token is signed by key '${env.key}', which is not among the trusted public keys`, { keyId: env.key });
  let key: KeyObject = root;
  let previous: Buffer | null = null;
  for (let i = 0; i < env.blocks.length; i++) {
    const b = env.blocks[i]!;
    // Signatures are checked before a payload is decoded: nothing unauthenticated is parsed.
    if (!verifyEd25519(key, blockMessage(env.key, i, previous, b.payload, b.next), b.sig)) {
      sigFail(i === 0 ? `block 0 is not signed by root key '${env.key}'` : `block ${i} is not signed by the key block ${i - 1} names`, { block: i });
    }
    try {
      key = publicKeyFromRaw(b.next);
    } catch {
      sigFail(`block ${i} names a next key that is not an Ed25519 public key`, { block: i });
    }
    previous = b.sig;
  }
  const lastIndex = env.blocks.length - 1;
  if ('seal' in env.proof) {
    if (!verifyEd25519(key, sealMessage(env.key, lastIndex, previous!), env.proof.seal)) sigFail('the seal does not match the last block');
  } else {
    let derived: Buffer;
    try {
      derived = rawPublicKey(privateKeyFromSeed(env.proof.secret, env.blocks[lastIndex]!.next));
    } catch {
      sigFail('the token proof is not an Ed25519 key');
    }
    if (!derived.equals(env.blocks[lastIndex]!.next)) sigFail("the token proof does not match the last block's key");
  }
  return { env, blocks: env.blocks.map((b, i) => decodeBody(b.payload, i)) };
}

function deny(block: number, reason: string, message: string, cause?: unknown): never {
  throw new TokenError('E_TOKEN_DENIED', `block ${block}: ${message}`, { block, reason }, { cause });
}

function principalAdmits(p: string, caller: string): boolean {
  return caller === p || caller.startsWith(p + '/');
}

interface PreparedRequest {
  request: TokenRequest;
  resource: string;
  tool: string;
  activation: CelActivation | undefined;
}

/** Throws E_TOKEN_DENIED (details.reason = the constraint's own code) unless block `i` permits the request. */
function checkBlock(b: BlockBody, i: number, type: ResourceType, r: PreparedRequest): CheckedArguments | undefined {
  const req = r.request;
  if (b.principal !== undefined && !principalAdmits(b.principal, req.principal)) {
    deny(i, 'E_WRONG_PRINCIPAL', `principal '${req.principal}' is not '${b.principal}' or below it`);
  }
  if (b.operations !== undefined && !b.operations.includes(req.operation)) {
    deny(i, 'E_OPERATION_NOT_PERMITTED', `operation '${req.operation}' is not among [${b.operations.join(', ')}]`);
  }
  if (b.resource !== undefined && !matchPattern(b.resource, r.resource)) {
    deny(i, type === 'tool' ? 'E_TOOL_NOT_ALLOWED' : 'E_RESOURCE_NOT_PERMITTED', `${type} '${r.resource}' does not match '${b.resource}'`);
  }
  let checked: CheckedArguments | undefined;
  const c = b.constraints;
  if (c !== undefined) {
    try {
      if (type === 'tool') checkTool(c, r.resource);
      else if (type === 'file' && c.paths && !c.paths.some((root) => isWithin(r.resource, root))) {
        throw new AccessDeniedError('E_PATH_OUTSIDE_ROOTS', `file resource ${r.resource} is outside the allowed roots`);
      } else if (type === 'network') checkNetworkResource(c, r.resource);
      checked = checkArguments(c, r.tool ? { ...req.access, tool: r.tool } : (req.access ?? {}));
    } catch (err) {
      if (err instanceof AccessDeniedError) deny(i, err.code, err.message, err);
      throw err;
    }
  }
  if (b.when !== undefined) {
    let ok: boolean;
    try {
      ok = compileWhen(b.when).test(r.activation!);
    } catch (err) {
      // An expression that cannot decide (missing key, wrong type) refuses: fail closed.
      if (err instanceof CelError) deny(i, err.code, err.message, err);
      throw err;
    }
    if (!ok) deny(i, 'E_WHEN_FALSE', `when '${b.when}' is false for this call`);
  }
  return checked;
}

/**
 * Verifies `token` and, with `request`, that every block permits it. Throws TokenError:
 * E_TOKEN_MALFORMED, E_TOKEN_UNKNOWN_KEY, E_TOKEN_SIGNATURE, E_TOKEN_REVOKED, E_TOKEN_EXPIRED,
 * E_TOKEN_DENIED (details.block and details.reason say which block refused and why).
 */
export function verifyToken(token: string, o: VerifyTokenOptions): VerifiedToken {
  return checkVerifiedChain(verifyTokenChain(token, o.publicKeys), o);
}

/** What the signatures of a token establish; depends only on the token and the public keys (cache.ts keeps it). */
export interface VerifiedChain {
  rootKeyId: string;
  blocks: readonly BlockBody[];
  revocationIds: readonly string[];
  sealed: boolean;
}

/** The signature half of verifyToken: decode, every signature, the proof or seal. */
export function verifyTokenChain(token: string, publicKeys: PublicKeySet): VerifiedChain {
  const { env, blocks } = verifyChain(token, publicKeys);
  return { rootKeyId: env.key, blocks, revocationIds: env.blocks.map((b) => revocationId(b.sig)), sealed: 'seal' in env.proof };
}

/** Throws E_TOKEN_REVOKED when any id is revoked or the check itself fails (fail closed). */
export function checkNotRevoked(revocationIds: readonly string[], isRevoked: VerifyTokenOptions['isRevoked']): void {
  let revoked: boolean;
  try {
    revoked = isRevoked(revocationIds);
  } catch (err) {
    throw new TokenError('E_TOKEN_REVOKED', `revocation check failed, refusing: ${(err as Error).message}`, { revocationIds }, { cause: err });
  }
  if (revoked) throw new TokenError('E_TOKEN_REVOKED', 'the token or one of its blocks is revoked', { revocationIds });
}

export function checkNotExpired(expiresAt: number, now: number): void {
  if (now >= expiresAt) throw new TokenError('E_TOKEN_EXPIRED', `the token expired at ${new Date(expiresAt).toISOString()}`, { expiresAt });
}

/** The rest of verifyToken, run on every call: revocation, depth, expiry, and the request against every block. */
export function checkVerifiedChain(chain: VerifiedChain, o: Omit<VerifyTokenOptions, 'publicKeys'>): VerifiedToken {
  const { blocks, revocationIds } = chain;
  const authority = blocks[0] as AuthorityBody;
  checkNotRevoked(revocationIds, o.isRevoked);
  const now = o.now ?? Date.now();
  let expiresAt = authority.expiresAt;
  let principal: string | null = null;
  for (const [i, b] of blocks.entries()) {
    if (b.expiresAt !== undefined && b.expiresAt < expiresAt) expiresAt = b.expiresAt;
    if (b.principal !== undefined) principal = b.principal;
    const d = b.constraints?.maxDelegationDepth;
    if (d !== undefined && blocks.length - 1 > d) {
      throw new TokenError('E_TOKEN_DENIED', `block ${i} allows at most ${d} attenuations; the token has ${blocks.length - 1}`, { block: i, reason: 'E_DEPTH_EXCEEDED' });
    }
  }
  checkNotExpired(expiresAt, now);
  const type = authority.resourceType;
  let checked: CheckedArguments | undefined;
  if (o.request) {
    const req = o.request;
    let resource = req.resource;
    if (type === 'file') {
      // File patterns are judged on the real path, so a symlink cannot smuggle a path in.
      const v = resolveRealPath(resource);
      if (!v.ok) deny(0, 'E_RESOURCE_NOT_PERMITTED', `file resource: ${v.reason}`);
      resource = v.realPath;
    }
    const needsCel = blocks.some((b) => b.when !== undefined);
    const prepared: PreparedRequest = {
      request: req,
      resource,
      tool: req.tool ?? (type === 'tool' ? resource : ''),
      activation: needsCel
        ? toCelActivation({
            tool: req.tool ?? (type === 'tool' ? resource : ''),
            args: req.args ?? {},
            principal: req.principal,
            operation: req.operation,
            resource,
            now,
            host: req.host ?? hostname(),
          })
        : undefined,
    };
    for (const [i, b] of blocks.entries()) checked = checkBlock(b, i, type, prepared) ?? checked;
    if (checked === undefined && req.access) {
      // No block constrains the arguments: still hand back the spellings the tool must receive
      // (real paths, canonical URLs), refusing one that parsers would read differently.
      try {
        checked = checkArguments({}, req.access);
      } catch (err) {
        if (err instanceof AccessDeniedError) deny(0, err.code, err.message, err);
        throw err;
      }
    }
  }
  let constraints: Constraints | undefined;
  return {
    tokenId: authority.tokenId,
    rootKeyId: chain.rootKeyId,
    issuedAt: authority.issuedAt,
    expiresAt,
    resourceType: type,
    principal,
    blocks,
    revocationIds,
    sealed: chain.sealed,
    get constraints(): Constraints {
      constraints ??= blocks.reduce<Constraints>((acc, b) => (b.constraints ? intersectConstraints(acc, b.constraints) : acc), {});
      return constraints;
    },
    ...(checked !== undefined ? { checked } : {}),
  };
}
