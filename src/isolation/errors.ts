// Typed errors of the isolation layer. Codes are stable (tests, CLI, JSON-RPC match on them).
import { CaptrapError } from '../errors.js';

/** An option the caller passed is unknown, malformed or out of range. Nothing was created. */
export class SandboxOptionError extends CaptrapError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('E_SANDBOX_OPTION', message, details);
  }
}

/** The command or its working directory cannot be used. Nothing was created. */
export class SandboxSpawnError extends CaptrapError {
  constructor(code: 'E_COMMAND_NOT_FOUND' | 'E_CWD' | 'E_UID' | 'E_SPAWN', message: string, details?: Record<string, unknown>) {
    super(code, message, details);
  }
}

/** A limit or guarantee the caller asked for cannot be enforced on this host (fail closed). */
export class LimitUnenforceableError extends CaptrapError {
  constructor(message: string, details: { limit: string; reason: string; fix: string; backend: string }) {
    super('E_LIMIT_UNENFORCEABLE', message, details);
  }
}

/** A cgroup operation failed (create, write, kill, remove). */
export class CgroupError extends CaptrapError {
  constructor(message: string, details?: Record<string, unknown>, cause?: unknown) {
    super('E_CGROUP', message, details, { cause });
  }
}
