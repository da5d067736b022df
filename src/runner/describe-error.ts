// How an error reaches the user of the CLI: one line, with its E_* code. A module of its own so
// that a command can use it without importing the dispatcher (and, through the dispatcher's
// lazy imports, every other command: the bundled `run` path would pull them all in).

/** Errors reach the user as one line; CAPTRAP_DEBUG=1 adds the stack. */
export function describeError(err: unknown): string {
  if (process.env.CAPTRAP_DEBUG && err instanceof Error && err.stack) return err.stack;
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === 'string' ? `${err.message} [${code}]` : err.message;
  }
  return String(err);
}
