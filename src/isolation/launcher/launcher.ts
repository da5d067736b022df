// Which program starts a sandbox: the compiled captrap-launch (one exec: parent-death signal,
// parent check, cgroup join, exec) or the portable chain `setpriv --pdeathsig KILL -- sh -c
// TRAMPOLINE` (two execs, same guarantees, needs util-linux for the parent-death signal).
// CAPTRAP_LAUNCHER=sh forces the chain; =c requires the binary (fails closed if it is missing);
// unset or =auto uses the binary when it is built.
import { accessSync, constants, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { SandboxOptionError, SandboxSpawnError } from '../errors.js';

export type LauncherKind = 'captrap-launch' | 'setpriv+sh' | 'sh';
export type LauncherPreference = 'auto' | 'c' | 'sh';

export interface LauncherChoice {
  kind: LauncherKind;
  /** The binary for captrap-launch. */
  path?: string;
  /** Why this one (shown by doctor). */
  why: string;
}

// This module lives at <root>/src/isolation/launcher/ (tsx, vitest) or <root>/dist/isolation/launcher/
// (built package): the package root is three levels up either way.
const BUILT = builtProgram('captrap-launch');

/** Where `npm run build` puts a compiled helper (scripts/build-launcher.mjs). */
export function builtProgram(name: string): string {
  return fileURLToPath(new URL(`../../../build/${name}`, import.meta.url));
}

/**
 * Path of a compiled helper if it is built and executable. Until it is found, checked on every
 * call (a build may land while captrap runs); once found, not again (two syscalls on every
 * launch's path): a helper removed later makes the spawn fail with its own clear error rather
 * than a launch quietly falling back to the chain.
 */
const found = new Set<string>();
export function builtProgramPath(name: string): string | undefined {
  const path = builtProgram(name);
  if (found.has(path)) return path;
  try {
    accessSync(path, constants.X_OK);
    if (!statSync(path).isFile()) return undefined;
  } catch {
    return undefined;
  }
  found.add(path);
  return path;
}

/** Path of the compiled launcher if it is built and executable. */
export function builtLauncherPath(): string | undefined {
  return builtProgramPath('captrap-launch');
}

export function launcherPreference(env: NodeJS.ProcessEnv = process.env): LauncherPreference {
  const v = (env.CAPTRAP_LAUNCHER ?? '').trim().toLowerCase();
  if (v === '' || v === 'auto') return 'auto';
  if (v === 'c' || v === 'captrap-launch') return 'c';
  if (v === 'sh' || v === 'setpriv+sh') return 'sh';
  throw new SandboxOptionError(`CAPTRAP_LAUNCHER must be 'auto', 'c' or 'sh', got '${env.CAPTRAP_LAUNCHER}'`);
}

export function chooseLauncher(hasSetpriv: boolean, preference: LauncherPreference = launcherPreference()): LauncherChoice {
  const chain: LauncherChoice = hasSetpriv
    ? { kind: 'setpriv+sh', why: 'setpriv --pdeathsig KILL, then a sh trampoline (2 extra execs)' }
    : { kind: 'sh', why: 'sh trampoline only: setpriv is missing, so no parent-death signal' };
  if (preference === 'sh') return { ...chain, why: `${chain.why}; forced by CAPTRAP_LAUNCHER=sh` };
  const path = builtLauncherPath();
  if (path) return { kind: 'captrap-launch', path, why: `${path} (1 extra exec)` };
  if (preference === 'c') {
    throw new SandboxSpawnError('E_SPAWN', `CAPTRAP_LAUNCHER=c but ${BUILT} is not built or not executable; run 'npm run build' (needs a C compiler)`, { path: BUILT });
  }
  return { ...chain, why: `${chain.why}; ${BUILT} is not built (run 'npm run build' with a C compiler for faster starts)` };
}

/** The argv that starts `tail` through captrap-launch (protocol documented in captrap-launch.c). */
export function launchArgv(path: string, o: { ownerPid: number; noNewPrivs: boolean; keepPwd: boolean; joinFiles: readonly string[]; extra?: readonly string[] }, tail: readonly string[]): string[] {
  const argv = [path, '--ppid', String(o.ownerPid)];
  if (o.noNewPrivs) argv.push('--no-new-privs');
  if (o.keepPwd) argv.push('--keep-pwd');
  for (const f of o.joinFiles) argv.push('--join', f);
  if (o.extra) argv.push(...o.extra);
  argv.push('--', ...tail);
  return argv;
}
