// The base of every typed error captrap throws. A leaf module (imports nothing of captrap)
// so every layer can extend it. `code` is stable and machine-readable (CLI output, JSON-RPC
// errors, tests); `message` is for people and says what was wrong and, where it helps, how to fix it.
export class CaptrapError extends Error {
  readonly code: string;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: string, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }
}
