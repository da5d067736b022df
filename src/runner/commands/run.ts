// `captrap run [options] -- command args...`: runs one command in a sandbox, streams its output,
// and exits with its exit code (or 128+signal). When the exit was not a normal one (signal, oom,
// timeout, pids-limit, killed) the reason goes to stderr.
import { realpathSync } from 'node:fs';
import { cleanupStaleCgroups } from '../../isolation/cgroup.js';
import { probeHost } from '../../isolation/host.js';
import { primeCgroupMigration } from '../../isolation/migration-prime.js';
import { BACKEND_NAMES, NAMESPACE_NAMES, parseBytes, type NamespaceName, type SandboxOptions } from '../../isolation/limits.js';
import { describeExitReason, exitStatusOf, runSandboxed } from '../../isolation/sandbox.js';
import { SandboxOptionError } from '../../isolation/errors.js';
import { describeError } from '../describe-error.js';

const HELP = `usage: captrap run [options] -- command [args...]

  --memory SIZE         memory limit, e.g. 268435456 or 256M
  --swap SIZE           swap on top of --memory (default 0)
  --pids N              max tasks in the sandbox
  --cpu FRACTION        share of one core: 0.5 or 50%
  --timeout DURATION    e.g. 1500, 500ms, 10s, 2m
  --kill-grace DURATION SIGTERM -> grace -> SIGKILL of the whole tree (default 2s)
  --cwd DIR             working directory
  --env NAME=VALUE      set a variable (repeatable); nothing else of captrap's environment is passed
  --env-allow NAME      pass captrap's own NAME through (repeatable)
  --uid N / --gid N     run as this uid / gid (captrap must be root; default 65534 when it is)
  --allow-root          let the command keep uid 0 (confined, it still has no capabilities)
  --ro PATH             show PATH (at its real path) read-only in the sandbox's view (repeatable)
  --rw PATH             show PATH writable in the view (the uid must still have permission)
  --hide PATH           cover PATH wherever it falls inside the view (repeatable)
  --no-confine          no namespaces, no view, no capability drop: limits only (see docs/threat-model.md)
  --allow-new-privs     do not set no_new_privs (unconfined only)
  --ns LIST             namespaces (default all when confined): ${NAMESPACE_NAMES.join(',')}
  --max-output-bytes N  stop forwarding stdout/stderr after N bytes each (marked)
  --backend NAME        auto (default) or ${BACKEND_NAMES.join(', ')}
  --allow-degraded      run even if a requested limit cannot be enforced (reported on stderr)
  --cgroup-base NAME    base name of captrap's cgroups (default captrap)
`;

const VALUE_FLAGS: Record<string, keyof SandboxOptions> = {
  '--memory': 'memory',
  '--swap': 'swap',
  '--pids': 'pids',
  '--cpu': 'cpu',
  '--timeout': 'timeout',
  '--kill-grace': 'killGrace',
  '--cwd': 'cwd',
  '--uid': 'uid',
  '--gid': 'gid',
  '--max-output-bytes': 'maxOutputBytes',
  '--backend': 'backend',
  '--cgroup-base': 'cgroupBase',
};

export function parseRunArgs(argv: string[]): { options: SandboxOptions; command: string; args: string[] } | { help: true } {
  const options: SandboxOptions = { stdin: 'inherit' };
  const env: Record<string, string> = {};
  const envAllow: string[] = [];
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      i++;
      break;
    }
    if (a === '--help' || a === '-h') return { help: true };
    const [flag, inline] = a.startsWith('--') && a.includes('=') && !a.startsWith('--env=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const take = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new SandboxOptionError(`${flag} needs a value`);
      return v;
    };
    if (flag === '--allow-degraded') options.allowDegraded = true;
    else if (flag === '--allow-root') options.allowRoot = true;
    else if (flag === '--no-confine') options.confine = false;
    else if (flag === '--ro' || flag === '--rw' || flag === '--hide') {
      const key = flag === '--ro' ? 'readOnly' : flag === '--rw' ? 'readWrite' : 'hide';
      const view = (options.view ??= {});
      const path = take();
      // Resolved once, here: the sandbox binds roots at exactly the path it is given.
      let real: string;
      try {
        real = realpathSync(path);
      } catch {
        if (key === 'hide') real = path;
        else throw new SandboxOptionError(`${flag} ${path}: no such file or directory`);
      }
      (view[key] ??= []).push(real);
    }
    else if (flag === '--allow-new-privs') options.noNewPrivs = false;
    else if (flag === '--env') {
      const v = take();
      const eq = v.indexOf('=');
      if (eq <= 0) throw new SandboxOptionError(`--env needs NAME=VALUE, got '${v}'`);
      env[v.slice(0, eq)] = v.slice(eq + 1);
    } else if (flag === '--env-allow') envAllow.push(take());
    else if (flag === '--ns') options.namespaces = take().split(',').filter(Boolean) as NamespaceName[];
    else if (flag in VALUE_FLAGS) {
      const key = VALUE_FLAGS[flag]!;
      const v = take();
      // Numeric-only options arrive as numbers; sizes and durations keep their unit strings.
      (options as Record<string, unknown>)[key] = key === 'uid' || key === 'gid' || key === 'pids' ? (/^\d+$/.test(v) ? Number(v) : v) : v;
    } else if (a.startsWith('-')) throw new SandboxOptionError(`unknown option '${a}' (see captrap run --help)`);
    else break; // first non-option: the command (the '--' is optional when unambiguous)
  }
  const [command, ...args] = argv.slice(i);
  if (command === undefined) throw new SandboxOptionError('no command given: captrap run [options] -- command args...');
  if (Object.keys(env).length > 0) options.env = env;
  if (envAllow.length > 0) options.envAllow = envAllow;
  return { options, command, args };
}

export async function main(argv: string[]): Promise<number> {
  let parsed: ReturnType<typeof parseRunArgs>;
  try {
    parsed = parseRunArgs(argv);
  } catch (err) {
    process.stderr.write(`captrap run: ${describeError(err)}\n`);
    return 2;
  }
  if ('help' in parsed) {
    process.stdout.write(HELP);
    return 0;
  }
  const { options, command, args } = parsed;
  let cap: number | undefined;
  try {
    cap = options.maxOutputBytes === undefined ? undefined : parseBytes('maxOutputBytes', options.maxOutputBytes);
  } catch (err) {
    process.stderr.write(`captrap run: ${describeError(err)}\n`);
    return 2;
  }
  // The kernel's wait before the first cgroup join starts now, beside the planning below (from
  // the `captrap` executable it began at start-up, and this keeps it good: migration-prime.ts).
  if (options.backend !== 'none') primeCgroupMigration(probeHost());
  let sandbox: ReturnType<typeof runSandboxed>;
  try {
    sandbox = runSandboxed(command, args, options);
  } catch (err) {
    process.stderr.write(`captrap run: ${describeError(err)}\n`);
    await cleanupStale(options.cgroupBase);
    return 125;
  }
  // Leftovers of a captrap that was SIGKILLed are removed on every run, so they never pile up;
  // after the spawn, while the launcher works on another core, and not on the command's path.
  // They are other owners' cgroups: nothing of this sandbox depends on them being gone.
  const stale = cleanupStale(options.cgroupBase);
  if (sandbox.degraded.length > 0) {
    process.stderr.write(`captrap run: running DEGRADED: ${sandbox.degraded.map((d) => `${d.limit} (${d.reason})`).join('; ')}\n`);
  }
  forward(sandbox.stdout, process.stdout, cap);
  forward(sandbox.stderr, process.stderr, cap);
  const onSignal = () => sandbox.kill('killed');
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const s of signals) process.on(s, onSignal);
  try {
    const result = await sandbox;
    if (result.reason.kind !== 'exited') {
      process.stderr.write(`captrap run: ${describeExitReason(result.reason)} (exit status ${exitStatusOf(result)}, backend ${result.backend})\n`);
    }
    return exitStatusOf(result);
  } finally {
    for (const s of signals) process.off(s, onSignal);
    await stale;
  }
}

/** cleanupStaleCgroups for the run's base; reports what it removed, never throws. */
async function cleanupStale(base: string | undefined): Promise<void> {
  const stale = await cleanupStaleCgroups(probeHost(), base ?? 'captrap').catch((err: unknown) => {
    process.stderr.write(`captrap run: stale cgroup cleanup failed: ${describeError(err)}\n`);
    return undefined;
  });
  if (stale && stale.removed.length > 0) process.stderr.write(`captrap run: removed ${stale.removed.length} stale cgroup dir(s), killed ${stale.killed} leftover process(es)\n`);
}

/**
 * Copies the command's output to ours. A slow reader on our side slows the command (its pipe
 * fills) instead of growing captrap's memory: the source pauses until the destination drains.
 */
function forward(from: NodeJS.ReadableStream | null, to: NodeJS.WritableStream, cap: number | undefined): void {
  if (!from) return;
  let sent = 0;
  let marked = false;
  const write = (data: Buffer | string) => {
    if (!to.write(data)) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  };
  from.on('data', (chunk: Buffer) => {
    if (cap === undefined || !Number.isFinite(cap)) {
      write(chunk);
      return;
    }
    if (sent < cap) write(chunk.subarray(0, cap - sent));
    sent += chunk.length;
    if (sent > cap && !marked) {
      marked = true;
      write(`\n[captrap: output truncated at ${cap} bytes]\n`);
    }
  });
}
