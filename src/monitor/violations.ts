// Which audit events are violations, and of which type. The monitor sees every audit event;
// this table is the only place that knows which deny codes and exit reasons mean misbehaviour
// (a denied call is a violation; an allowed one, or a sandbox that exited, is not).
import type { AuditEvent } from '../kernel/events.js';

export const VIOLATION_TYPES = [
  'tool-not-allowed',
  'path-outside-roots',
  'argument-outside-constraints',
  'forged-token',
  'wrong-holder',
  'revoked-or-expired',
  'rate-limited',
  'sandbox-oom',
  'sandbox-pids-limit',
  'sandbox-timeout',
  'escape-attempt',
  'egress-refused',
] as const;
export type ViolationType = (typeof VIOLATION_TYPES)[number];

const BY_CODE: Record<string, ViolationType> = {
  E_TOOL_NOT_ALLOWED: 'tool-not-allowed',
  E_UNKNOWN_TOOL: 'tool-not-allowed',
  E_OPERATION_NOT_PERMITTED: 'tool-not-allowed',
  E_RESOURCE_NOT_PERMITTED: 'tool-not-allowed',
  E_PATH_OUTSIDE_ROOTS: 'path-outside-roots',
  E_FILE_TOO_LARGE: 'argument-outside-constraints',
  E_DOMAIN_NOT_ALLOWED: 'argument-outside-constraints',
  E_SCHEME_NOT_ALLOWED: 'argument-outside-constraints',
  E_COMMAND_NOT_ALLOWED: 'argument-outside-constraints',
  E_BAD_SIGNATURE: 'forged-token',
  E_MALFORMED_CAPABILITY: 'forged-token',
  E_UNKNOWN_KEY: 'forged-token',
  E_NOT_ISSUED_HERE: 'forged-token',
  E_WRONG_PRINCIPAL: 'wrong-holder',
  E_WRONG_HOLDER: 'wrong-holder',
  E_NOT_OWNER: 'wrong-holder',
  E_REVOKED: 'revoked-or-expired',
  E_ANCESTOR_REVOKED: 'revoked-or-expired',
  E_EXPIRED: 'revoked-or-expired',
  E_RATE_LIMITED: 'rate-limited',
  // ct2 tokens (E_TOKEN_DENIED is classified by the block's own check, details.reason).
  E_TOKEN_MALFORMED: 'forged-token',
  E_TOKEN_SIGNATURE: 'forged-token',
  E_TOKEN_UNKNOWN_KEY: 'forged-token',
  E_TOKEN_REVOKED: 'revoked-or-expired',
  E_TOKEN_EXPIRED: 'revoked-or-expired',
  E_WHEN_FALSE: 'argument-outside-constraints',
};

const BY_EXIT: Record<string, ViolationType> = { oom: 'sandbox-oom', 'pids-limit': 'sandbox-pids-limit', timeout: 'sandbox-timeout' };

export interface Violation {
  type: ViolationType;
  /** Who is blamed: the event's principal (a tool's caller, an agent). */
  principal: string;
  /** The deny code or exit reason that made it a violation. */
  cause: string;
  at: number;
  /** The audit record's own detail, for the alert's sample. */
  details: Record<string, unknown>;
}

/** The violation an audit event records, if any. Events without a principal are nobody's to blame. */
export function classify(event: AuditEvent, now = Date.now()): Violation | undefined {
  const principal = event.principal;
  if (principal === undefined) return undefined;
  const details = event.details ?? {};
  const code = typeof details['code'] === 'string' ? details['code'] : undefined;
  let type: ViolationType | undefined;
  let cause: string | undefined;
  switch (event.type) {
    case 'access_denied':
    case 'capability_denied':
      if (code === 'E_TOKEN_DENIED') {
        const reason = typeof details['reason'] === 'string' ? details['reason'] : undefined;
        if (reason !== undefined) [type, cause] = [BY_CODE[reason], `${code}/${reason}`];
      } else if (code === 'E_TOKEN_REVOKED' && details['revocationCheckFailed'] === true) {
        // The revocation set could not be trusted (a stale feed): refused, but not the caller's doing.
      } else if (code !== undefined) [type, cause] = [BY_CODE[code], code];
      break;
    case 'sandbox_exited': {
      const reason = typeof details['reason'] === 'string' ? details['reason'] : undefined;
      if (reason !== undefined) [type, cause] = [BY_EXIT[reason], reason];
      break;
    }
    case 'sandbox_escape':
      [type, cause] = ['escape-attempt', 'sandbox_escape'];
      break;
    case 'egress':
      if (details['allowed'] === false) [type, cause] = ['egress-refused', code ?? 'E_EGRESS_DENIED'];
      break;
    default:
      break;
  }
  if (type === undefined || cause === undefined) return undefined;
  return { type, principal, cause, at: now, details };
}
