// Typed errors of ct2 tokens. Each refusal has its own stable code so callers can tell a forged
// token from an expired one without reading messages.
import { CaptrapError } from '../../errors.js';

export const TOKEN_ERROR_CODES = [
  /** Not a ct2 token: wrong prefix or version, bad base64url, non-canonical bytes, bad fields, too large. */
  'E_TOKEN_MALFORMED',
  /** A block's signature, the seal, or the proof key does not check out. */
  'E_TOKEN_SIGNATURE',
  /** Block 0 names a root key id that is not in the verifier's public key set. */
  'E_TOKEN_UNKNOWN_KEY',
  /** The earliest expiry of any block has passed. */
  'E_TOKEN_EXPIRED',
  /** A block's revocation id is in the revocation set. */
  'E_TOKEN_REVOKED',
  /** The token is valid but some block does not permit this call. */
  'E_TOKEN_DENIED',
  /** The token is sealed: no block can be appended. */
  'E_TOKEN_SEALED',
  /** The requested attenuation would allow more than the token already does. */
  'E_TOKEN_WIDENS',
  /** Issuance or attenuation input is not a valid block (bad constraints, bad CEL, no expiry...). */
  'E_TOKEN_INVALID_BLOCK',
] as const;
export type TokenErrorCode = (typeof TOKEN_ERROR_CODES)[number];

export class TokenError extends CaptrapError {
  declare readonly code: TokenErrorCode;
  constructor(code: TokenErrorCode, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(code, message, details, options);
  }
}
