// Operational (non-audit) logging for every layer. A leaf module: it imports nothing of
// captrap, so kernel and isolation can both use it without importing each other.
// Logs go to stderr so they never mix with a sandboxed command's stdout.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(name: string, level = process.env.CAPTRAP_LOG_LEVEL ?? 'warn'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}

export const log: Logger = createLogger('captrap');
