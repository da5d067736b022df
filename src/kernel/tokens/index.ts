// ct2: public-key capability tokens that any host can verify and any holder can narrow.
export { TokenError, TOKEN_ERROR_CODES, type TokenErrorCode } from './errors.js';
export { TOKEN_V2_PREFIX, MAX_TOKEN_CHARS, MAX_BLOCKS, MAX_BLOCK_BYTES, isTokenV2, revocationId, type BlockBody } from './format.js';
export { issueToken, attenuate, seal, inspectToken, type IssueOptions, type TokenNarrowing, type TokenSigningKey, type InspectedToken } from './sign.js';
export { verifyToken, type PublicKeySet, type TokenRequest, type VerifyTokenOptions, type VerifiedToken } from './verify.js';
export { toJwks, publicKeysFromJwks, type Jwks } from './jwks.js';
export { TokenKeyStore, TOKEN_KEYS_DIR, tokenKeyDir } from './keys.js';
export { TokenVerifier, DEFAULT_CACHE_ENTRIES, type TokenVerifierOptions, type TokenVerifierStats, type CacheLevelStats } from './cache.js';
