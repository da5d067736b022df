// The capability: one zod schema (the TypeScript type is inferred from it), its canonical
// encoding, HMAC-SHA256 signing and verification, tokens, and the pure `permits` check.
import { createHash, hash, randomBytes, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { checkArguments, checkNetworkResource, checkTool, ConstraintsSchema, type AccessArguments, type CheckedArguments, type Constraints } from './constraints.js';
import { AccessDeniedError } from './errors.js';
import type { Keyring } from './keyring.js';
import { matchPattern } from './pattern.js';
import { isWithin, resolveRealPath } from './paths.js';

export const RESOURCE_TYPES = ['tool', 'file', 'network', 'process'] as const;
export type ResourceType = (typeof RESOURCE_TYPES)[number];

export const ProcessRefSchema = z
  .object({ pid: z.number().int().positive(), startTime: z.number().int().nonnegative() })
  .strict();
/** A real process: pid plus field 22 of /proc/<pid>/stat. Callers read /proc; the kernel only compares. */
export type ProcessRef = z.infer<typeof ProcessRefSchema>;

const ID = /^cap_[A-Za-z0-9_-]{16,64}$/;

export const CapabilitySchema = z
  .object({
    /** Encoding version; bumps when the canonical encoding changes. */
    v: z.literal(1),
    id: z.string().regex(ID),
    principal: z.string().min(1).max(256),
    resourceType: z.enum(RESOURCE_TYPES),
    /** Resource pattern, see pattern.ts for the grammar. */
    resource: z.string().min(1).max(4096),
    operations: z.array(z.string().min(1)).min(1),
    constraints: ConstraintsSchema,
    parentId: z.string().regex(ID).nullable(),
    /** Every ancestor id, root first: lets any kernel refuse a token whose ancestor was revoked. */
    ancestors: z.array(z.string().regex(ID)),
    depth: z.number().int().nonnegative(),
    issuedAt: z.number().int().nonnegative(),
    expiresAt: z.number().int().nonnegative(),
    holder: ProcessRefSchema.nullable(),
    keyId: z.string().min(1).max(64),
    signature: z.string().regex(/^[A-Za-z0-9_-]{43}$/),
  })
  .strict()
  .refine((c) => c.depth === c.ancestors.length && c.parentId === (c.ancestors[c.ancestors.length - 1] ?? null), {
    message: 'depth and parentId must agree with ancestors',
  });
export type Capability = z.infer<typeof CapabilitySchema>;
export type UnsignedCapability = Omit<Capability, 'signature'>;

export function newCapabilityId(): string {
  return 'cap_' + randomBytes(16).toString('base64url');
}

/** Whether `s` has the form of a capability id (says nothing about whether it was ever issued). */
export function isCapabilityId(s: unknown): s is string {
  return typeof s === 'string' && ID.test(s);
}

/** One line for people: type, the first 8 characters of the id, principal. */
export function describeCapability(c: Pick<Capability, 'resourceType' | 'id' | 'principal'>): string {
  return `${c.resourceType} capability ${c.id.slice(0, 8)} for ${c.principal}`;
}

// ---------------------------------------------------------------------------------------------
// Canonical encoding, version 1: a JSON array with the fields in this fixed order, constraints
// and limits as nested arrays in fixed order (absent = null), lists in their stored order.
// Numbers are integers except limits.cpu, written with ECMAScript's shortest round-trip
// formatting (JSON.stringify), which is deterministic; the schema rejects NaN and Infinity.

function canonicalConstraints(c: Constraints): unknown[] {
  const l = c.limits;
  const out: unknown[] = [
    c.allowedTools ?? null,
    c.paths ?? null,
    c.maxFileSize ?? null,
    c.allowedDomains ?? null,
    c.allowedCommands ?? null,
    c.maxDelegationDepth ?? null,
    l ? [l.memoryBytes ?? null, l.pids ?? null, l.cpu ?? null, l.timeoutMs ?? null] : null,
  ];
  // Fields added after v1 are appended only when present, so every earlier signature still verifies.
  if (c.allowedSchemes !== undefined) out.push(['allowedSchemes', c.allowedSchemes]);
  return out;
}

export function canonicalEncoding(c: UnsignedCapability): string {
  return (
    'captrap-cap-v1\n' +
    JSON.stringify([
      c.v,
      c.id,
      c.principal,
      c.resourceType,
      c.resource,
      c.operations,
      canonicalConstraints(c.constraints),
      c.parentId,
      c.ancestors,
      c.depth,
      c.issuedAt,
      c.expiresAt,
      c.holder ? [c.holder.pid, c.holder.startTime] : null,
      c.keyId,
    ])
  );
}

/** Objects deepFreeze made immutable all the way down: their encoding can be remembered. */
const immutable = new WeakSet<object>();

interface Encoding {
  /** SHA256_BLOCK bytes of room (the HMAC's K^ipad goes there), then the canonical encoding. */
  padded: Buffer;
  /** The signature as given (base64url-decoded), when there is one. */
  signature: Buffer | undefined;
}
const encodings = new WeakMap<object, Encoding>();
const SHA256_BLOCK = 64;

function encodingOf(c: UnsignedCapability | Capability): Encoding {
  const hit = encodings.get(c);
  if (hit) return hit;
  const text = canonicalEncoding(c);
  const padded = Buffer.allocUnsafe(SHA256_BLOCK + Buffer.byteLength(text));
  padded.write(text, SHA256_BLOCK, 'utf8');
  const sig = (c as Partial<Capability>).signature;
  const e = { padded, signature: sig === undefined ? undefined : Buffer.from(sig, 'base64url') };
  // Only an object that cannot change keeps its encoding; anything else is re-encoded every time.
  if (immutable.has(c)) encodings.set(c, e);
  return e;
}

/**
 * HMAC-SHA256 (RFC 2104) as two one-shot hashes, H((K^opad) || H((K^ipad) || m)), over pads
 * computed once per key: the same bytes as createHmac at under half its cost, because no native
 * Hmac object is created per call. Cold validation is one of these.
 */
class KeyPads {
  readonly ipad: Buffer;
  /** K^opad, then room for the inner digest. */
  private readonly outer: Buffer;
  constructor(secret: KeyObject) {
    let k = secret.export();
    if (k.length > SHA256_BLOCK) k = createHash('sha256').update(k).digest();
    this.ipad = Buffer.alloc(SHA256_BLOCK, 0x36);
    this.outer = Buffer.alloc(SHA256_BLOCK + 32, 0x5c);
    for (let i = 0; i < k.length; i++) {
      this.ipad[i] = k[i]! ^ 0x36;
      this.outer[i] = k[i]! ^ 0x5c;
    }
  }
  /** The MAC of an encoding's bytes, as a 32-character latin1 string (one char per byte). */
  mac(e: Encoding): string {
    e.padded.set(this.ipad, 0);
    this.outer.write(hash('sha256', e.padded, 'binary'), SHA256_BLOCK, 'latin1');
    return hash('sha256', this.outer, 'binary');
  }
}
const pads = new WeakMap<KeyObject, KeyPads>();

function padsFor(secret: KeyObject): KeyPads {
  let p = pads.get(secret);
  if (!p) pads.set(secret, (p = new KeyPads(secret)));
  return p;
}

function mac(secret: KeyObject, c: UnsignedCapability): Buffer {
  return Buffer.from(padsFor(secret).mac(encodingOf(c)), 'latin1');
}

function deepFreeze<T>(o: T): T {
  const walk = (v: unknown): void => {
    if (v && typeof v === 'object') {
      for (const x of Object.values(v)) walk(x);
      Object.freeze(v);
    }
  };
  walk(o);
  if (o && typeof o === 'object') immutable.add(o);
  return o;
}

/** Signs with the keyring's active key; the result is deeply frozen. */
export function signCapability(c: Omit<UnsignedCapability, 'keyId'>, keys: Keyring): Capability {
  const keyId = keys.activeId;
  const unsigned: UnsignedCapability = { ...c, keyId };
  const signature = mac(keys.keyObject(keyId)!, unsigned).toString('base64url');
  return deepFreeze({ ...unsigned, signature });
}

export type SignatureVerdict = 'ok' | 'E_UNKNOWN_KEY' | 'E_BAD_SIGNATURE';

/** Constant-time check of the signature against the key named by `keyId`. */
export function verifySignature(c: Capability, keys: Keyring): SignatureVerdict {
  const secret = keys.keyObject(c.keyId);
  if (!secret) return 'E_UNKNOWN_KEY';
  const e = encodingOf(c);
  const given = e.signature!;
  const want = padsFor(secret).mac(e);
  if (given.length !== want.length) return 'E_BAD_SIGNATURE';
  // Constant time like timingSafeEqual: every byte is compared, no early exit.
  let diff = 0;
  for (let i = 0; i < given.length; i++) diff |= given[i]! ^ want.charCodeAt(i);
  return diff === 0 ? 'ok' : 'E_BAD_SIGNATURE';
}

/** Schema-checks an untrusted value; the result is deeply frozen. */
export function parseCapability(value: unknown): Capability {
  const r = CapabilitySchema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw new AccessDeniedError('E_MALFORMED_CAPABILITY', `malformed capability at ${issue.path.join('.') || '(root)'}: ${issue.message}`, {
      path: issue.path,
    });
  }
  return deepFreeze(r.data);
}

// ---------------------------------------------------------------------------------------------
// Tokens: `ct1.` + base64url(JSON of the signed capability). A token carries everything needed
// to verify it, so a kernel holding the key (and the revocation store) can validate a
// capability it never stored. Tokens are bearer-proof only up to the principal and holder
// checks: a stolen token is useless from another principal or another process when bound.

export const TOKEN_PREFIX = 'ct1.';

export function toToken(c: Capability): string {
  return TOKEN_PREFIX + Buffer.from(JSON.stringify(c)).toString('base64url');
}

export function isToken(s: string): boolean {
  return s.startsWith(TOKEN_PREFIX);
}

export function parseToken(token: string): Capability {
  if (!isToken(token) || token.length > 64 * 1024) throw new AccessDeniedError('E_MALFORMED_CAPABILITY', 'not a captrap capability token');
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(token.slice(TOKEN_PREFIX.length), 'base64url').toString('utf8'));
  } catch {
    throw new AccessDeniedError('E_MALFORMED_CAPABILITY', 'capability token is not base64url JSON');
  }
  return parseCapability(json);
}

// ---------------------------------------------------------------------------------------------
// permits: the pure part of validation (no signature, revocation or holder state)

/**
 * Throws AccessDeniedError unless `c` allows `operation` on `resource` with these arguments;
 * checks the operation, the resource pattern and every constraint. Returns the real paths of
 * file arguments (the argument *names* `operation` and `resource` are the action's). Integrity, expiry and holder checks are the kernel's (validateCapability).
 */
export function permits(c: Capability, operation: string, resource: string, args: AccessArguments = {}): CheckedArguments {
  if (!c.operations.includes(operation)) {
    throw new AccessDeniedError('E_OPERATION_NOT_PERMITTED', `operation '${operation}' is not among [${c.operations.join(', ')}]`, {
      operation,
    });
  }
  if (c.resourceType === 'file') {
    // File patterns are judged on the real path, so a symlink cannot smuggle a path in.
    const v = resolveRealPath(resource);
    if (!v.ok) throw new AccessDeniedError('E_RESOURCE_NOT_PERMITTED', `file resource: ${v.reason}`, { resource });
    resource = v.realPath;
  }
  if (c.resourceType === 'tool') {
    // The tool named as the resource is held to allowedTools even when no `tool` argument is given.
    checkTool(c.constraints, resource);
  } else if (c.resourceType === 'file' && c.constraints.paths && !c.constraints.paths.some((root) => isWithin(resource, root))) {
    throw new AccessDeniedError('E_PATH_OUTSIDE_ROOTS', `file resource ${resource} is outside the allowed roots`, { resource });
  } else if (c.resourceType === 'network') {
    checkNetworkResource(c.constraints, resource);
  }
  if (!matchPattern(c.resource, resource)) {
    const code = c.resourceType === 'tool' ? 'E_TOOL_NOT_ALLOWED' : 'E_RESOURCE_NOT_PERMITTED';
    throw new AccessDeniedError(code, `${c.resourceType} '${resource}' does not match the capability's pattern '${c.resource}'`, {
      resource,
      pattern: c.resource,
    });
  }
  return checkArguments(c.constraints, args);
}
