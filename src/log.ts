// Operational (non-audit) logging for every layer. A leaf module: it imports nothing of
// captrap, so kernel and isolation can both use it without importing each other.
// Logs go to stderr so they never mix with a sandboxed command's stdout.
//
// pino is loaded on the first message at or above the level, not at import: most runs of a
// short command (`captrap run`) log nothing, and loading pino costs tens of milliseconds of
// start-up. It is CommonJS, so it can be required synchronously when that moment comes.
import { createRequire } from 'node:module';
import type { Logger } from 'pino';

export type { Logger };

const require = createRequire(import.meta.url);

export function createLogger(name: string, level = process.env.CAPTRAP_LOG_LEVEL ?? 'warn'): Logger {
  const { pino } = require('pino') as typeof import('pino');
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}

// pino's numeric levels; a method below the configured level is a no-op that loads nothing.
const LEVELS: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };
const threshold = (): number => {
  const l = process.env.CAPTRAP_LOG_LEVEL ?? 'warn';
  // 'silent' drops everything; an unknown name is left to pino, which reports it.
  return l === 'silent' ? Infinity : (LEVELS[l] ?? 0);
};
const noop = () => undefined;

let real: Logger | undefined;
const load = (): Logger => (real ??= createLogger('captrap'));

/** The process-wide logger (level from CAPTRAP_LOG_LEVEL, default warn). */
export const log: Logger = new Proxy({} as Logger, {
  get(_target, prop) {
    if (real === undefined && typeof prop === 'string' && LEVELS[prop] !== undefined && LEVELS[prop]! < threshold()) return noop;
    const l = load();
    const v: unknown = Reflect.get(l, prop, l);
    return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(l) : v;
  },
});
