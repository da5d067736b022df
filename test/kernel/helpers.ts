// Shared fixtures for kernel tests: a fresh key, a temp state dir, a kernel with a memory sink.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Keyring } from '../../src/kernel/keyring.js';
import { SecurityKernel, type KernelOptions } from '../../src/kernel/kernel.js';
import { MemoryAuditSink, type AuditEvent } from '../../src/kernel/events.js';

export function tempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `captrap-${prefix}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function freshKeyring(id = 'k1'): Keyring {
  return new Keyring({ id, secret: randomBytes(32) });
}

export function makeKernel(opts: Partial<KernelOptions> = {}): { kernel: SecurityKernel; audit: MemoryAuditSink; keys: Keyring } {
  const audit = new MemoryAuditSink();
  const keys = opts.keys ?? freshKeyring();
  const kernel = new SecurityKernel({ keys, audit, ...opts });
  return { kernel, audit, keys };
}

/** Runs fn and returns the thrown error's code (fails the test if nothing was thrown). */
export function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? `(no code: ${(e as Error).message})`;
  }
  throw new Error('expected an error, none was thrown');
}

/** A segment file's lines, without the empty string after the last newline. */
export function readLines(path: string): string[] {
  const l = readFileSync(path, 'utf8').split('\n');
  l.pop();
  return l;
}

export function writeLines(path: string, lines: string[]): void {
  writeFileSync(path, lines.map((l) => l + '\n').join(''));
}

/** Index (0-based) of the record with this seq. */
export function indexOfSeq(lines: string[], seq: number): number {
  const i = lines.findIndex((l) => l.startsWith(`{"v":1,"seq":${seq},`));
  if (i < 0) throw new Error(`seq ${seq} not found`);
  return i;
}

/** The i-th event of the audit tests' logs: two types, five principals, a distinct capability and process each. */
export function event(i: number): AuditEvent {
  return {
    type: i % 2 === 0 ? 'capability_granted' : 'capability_validated',
    principal: `agent-${i % 5}`,
    capabilityId: `cap-${i}`,
    process: { pid: 1000 + i, startTime: 4242 },
    details: { tool: 'read_file', n: i },
  };
}
