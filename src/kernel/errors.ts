// Typed errors of the capability kernel. Every denial has its own stable code so the runner,
// the CLI and tests can tell "expired" from "forged" without parsing messages.
import { CaptrapError } from '../errors.js';

/** Why a capability did not authorise an action. */
export const DENY_CODES = [
  'E_MALFORMED_CAPABILITY',
  'E_UNKNOWN_CAPABILITY',
  'E_BAD_SIGNATURE',
  'E_UNKNOWN_KEY',
  'E_EXPIRED',
  'E_REVOKED',
  'E_ANCESTOR_REVOKED',
  'E_WRONG_PRINCIPAL',
  'E_WRONG_HOLDER',
  'E_OPERATION_NOT_PERMITTED',
  'E_RESOURCE_NOT_PERMITTED',
  'E_TOOL_NOT_ALLOWED',
  'E_UNKNOWN_TOOL',
  'E_INVALID_ARGUMENTS',
  // "argument outside constraints", split by the constraint it broke:
  'E_PATH_OUTSIDE_ROOTS',
  'E_FILE_TOO_LARGE',
  'E_DOMAIN_NOT_ALLOWED',
  'E_SCHEME_NOT_ALLOWED',
  'E_COMMAND_NOT_ALLOWED',
  // No live capability of the principal allows the action (checkPermission looks at all of them).
  'E_PERMISSION_DENIED',
  // The kernel's issuance policy does not let this principal be granted this capability.
  'E_ISSUANCE_DENIED',
] as const;
export type DenyCode = (typeof DENY_CODES)[number];

/** Codes that mean "an argument fell outside the capability's constraints". */
export const ARGUMENT_DENY_CODES: ReadonlySet<DenyCode> = new Set<DenyCode>([
  'E_PATH_OUTSIDE_ROOTS',
  'E_FILE_TOO_LARGE',
  'E_DOMAIN_NOT_ALLOWED',
  'E_SCHEME_NOT_ALLOWED',
  'E_COMMAND_NOT_ALLOWED',
]);

export class AccessDeniedError extends CaptrapError {
  declare readonly code: DenyCode;
  constructor(code: DenyCode, message: string, details?: Record<string, unknown>) {
    super(code, message, details);
  }
  /** True for the "argument outside constraints" family. */
  get isArgumentViolation(): boolean {
    return ARGUMENT_DENY_CODES.has(this.code);
  }
}

/** The dimensions a delegation can try to widen. */
export type Dimension =
  | 'resourceType'
  | 'resource'
  | 'operations'
  | 'expiresAt'
  | 'allowedTools'
  | 'paths'
  | 'maxFileSize'
  | 'allowedDomains'
  | 'allowedSchemes'
  | 'allowedCommands'
  | 'maxDelegationDepth'
  | 'limits.memoryBytes'
  | 'limits.pids'
  | 'limits.cpu'
  | 'limits.timeoutMs';

export class DelegationError extends CaptrapError {
  declare readonly code: 'E_WIDENS' | 'E_DEPTH_EXCEEDED' | 'E_ALREADY_BOUND';
  constructor(code: 'E_WIDENS' | 'E_DEPTH_EXCEEDED' | 'E_ALREADY_BOUND', message: string, details?: Record<string, unknown>) {
    super(code, message, details);
  }
}

/** A request that cannot be turned into a capability at all (bad pattern, relative root...). */
export class InvalidRequestError extends CaptrapError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('E_INVALID_REQUEST', message, details);
  }
}

export class RevocationStoreError extends CaptrapError {
  constructor(message: string, details?: Record<string, unknown>, cause?: unknown) {
    super('E_REVOCATION_STORE', message, details, { cause });
  }
}

export class PolicyConfigError extends CaptrapError {
  constructor(message: string, details?: Record<string, unknown>, cause?: unknown) {
    super('E_POLICY_CONFIG', message, details, { cause });
  }
}
