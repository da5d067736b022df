// Sandbox options: what callers pass (strings like '256M', '50%', '10s' allowed) and the
// normalised form the backends use. Parsing is strict: an unknown key or a malformed value is
// a SandboxOptionError before anything is created.
import { SandboxOptionError } from './errors.js';
import { CONFINE_NAMESPACES, normalizeEgress, normalizeNamespaces, normalizeView, type ConfineNamespace, type EgressOptions, type NormalizedView, type ViewOptions } from './confine.js';

export type BackendName = 'cgroup-v2' | 'cgroup-v1' | 'systemd-run' | 'none';
export const BACKEND_NAMES: readonly BackendName[] = ['cgroup-v2', 'cgroup-v1', 'systemd-run', 'none'];
export type NamespaceName = ConfineNamespace;
export const NAMESPACE_NAMES: readonly NamespaceName[] = CONFINE_NAMESPACES;

export interface SandboxOptions {
  /** Memory limit: bytes, or a string with a K/M/G/T suffix (powers of 1024), e.g. '256M'. */
  memory?: number | string;
  /** Swap allowed on top of `memory` (default 0: no swap). Same units as memory. */
  swap?: number | string;
  /** Maximum number of tasks (processes + threads) in the sandbox. */
  pids?: number;
  /** CPU limit as a fraction of one core (0.5) or a percentage ('50%'; '150%' = 1.5 cores). */
  cpu?: number | string;
  /** Wall-clock limit: milliseconds, or '500ms', '10s', '2m'. */
  timeout?: number | string;
  /** Time between SIGTERM to the leader and the whole-tree SIGKILL (default 2s). */
  killGrace?: number | string;
  cwd?: string;
  /** The child's whole environment, besides PATH (default a safe PATH) and names in `envAllow`. */
  env?: Record<string, string>;
  /** Names copied from captrap's own environment (nothing else of it reaches the child). */
  envAllow?: string[];
  /** Run as this uid/gid. When captrap is root and none is given, the sandbox runs as 65534 (nobody) unless allowRoot. */
  uid?: number;
  gid?: number;
  /** Let the command keep uid 0 (still without capabilities when confined). Default false. */
  allowRoot?: boolean;
  /** Set no_new_privs (setuid binaries gain nothing). Default true; always on when confined. */
  noNewPrivs?: boolean;
  /**
   * Namespaces (default: all of pid, mount, net, ipc, uts, cgroup when confined, none otherwise).
   * Confined, they are made by the compiled launcher; unconfined, by unshare(1).
   */
  namespaces?: NamespaceName[];
  /** Confinement (namespaces, a filesystem view, no capabilities, closed descriptors). Default true. */
  confine?: boolean;
  /** What the command sees of the filesystem when confined (see confine.ts). */
  view?: ViewOptions;
  /** Network through captrap's egress proxy (confined with a net namespace); without it, no network at all. */
  egress?: EgressOptions;
  /** Bytes of stdout and of stderr kept in the result; beyond it output is dropped and marked (default 1 MiB). */
  maxOutputBytes?: number | string;
  /** 'auto' (default) picks the best backend the host offers. */
  backend?: BackendName | 'auto';
  /** Run even if some requested limit cannot be enforced; the result lists what was degraded. */
  allowDegraded?: boolean;
  /** stdin of the child: 'ignore' (default), 'inherit', or 'pipe'. */
  stdin?: 'ignore' | 'inherit' | 'pipe';
  /** Base name of captrap's cgroups under each hierarchy (default 'captrap'). */
  cgroupBase?: string;
}

export interface Limits {
  memoryBytes?: number;
  swapBytes: number;
  pids?: number;
  /** Fraction of one core. */
  cpu?: number;
}

export interface NormalizedOptions {
  limits: Limits;
  timeoutMs?: number;
  killGraceMs: number;
  cwd?: string;
  env: Record<string, string>;
  uid?: number;
  gid?: number;
  allowRoot: boolean;
  noNewPrivs: boolean;
  namespaces: NamespaceName[];
  confine: boolean;
  view: NormalizedView;
  egress?: Required<EgressOptions>;
  maxOutputBytes: number;
  backend: BackendName | 'auto';
  allowDegraded: boolean;
  stdin: 'ignore' | 'inherit' | 'pipe';
  cgroupBase: string;
}

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const KNOWN_KEYS = new Set<string>([
  'memory', 'swap', 'pids', 'cpu', 'timeout', 'killGrace', 'cwd', 'env', 'envAllow', 'uid', 'gid', 'noNewPrivs',
  'namespaces', 'maxOutputBytes', 'backend', 'allowDegraded', 'stdin', 'cgroupBase', 'allowRoot', 'confine', 'view', 'egress',
]);
const UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

function bad(option: string, value: unknown, expected: string): SandboxOptionError {
  return new SandboxOptionError(`option '${option}': ${JSON.stringify(value)} is not ${expected}`, { option, value, expected });
}

export function parseBytes(option: string, value: unknown): number {
  if (typeof value === 'number') {
    if (Number.isSafeInteger(value) && value >= 0) return value;
    throw bad(option, value, 'a non-negative whole number of bytes');
  }
  if (typeof value === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtb]?)(?:i?b)?\s*$/i.exec(value);
    if (m) {
      const n = Math.floor(Number(m[1]) * UNITS[m[2]!.toLowerCase()]!);
      if (Number.isSafeInteger(n)) return n;
    }
  }
  throw bad(option, value, "a size such as 268435456 or '256M'");
}

export function parseDuration(option: string, value: unknown): number {
  if (typeof value === 'number') {
    if (Number.isFinite(value) && value >= 0) return value;
    throw bad(option, value, 'a non-negative number of milliseconds');
  }
  if (typeof value === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(value);
    if (m) return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? 'ms']!;
  }
  throw bad(option, value, "a duration such as 1500, '500ms', '10s' or '2m'");
}

export function parseCpu(value: unknown): number {
  let n: number | undefined;
  if (typeof value === 'number') n = value;
  else if (typeof value === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$/.exec(value);
    if (m) n = m[2] ? Number(m[1]) / 100 : Number(m[1]);
  }
  // Below 1% the kernel's minimum quota (1 ms per 100 ms period) is reached.
  if (n === undefined || !Number.isFinite(n) || n < 0.01 || n > 1024) throw bad('cpu', value, "a fraction of a core (0.01..1024) or a percentage such as '50%'");
  return n;
}

function positiveInt(option: string, value: unknown, max = 2 ** 31 - 1): number {
  if (typeof value === 'number' && Number.isInteger(value) && value > 0 && value <= max) return value;
  if (typeof value === 'string' && /^\d+$/.test(value) && Number(value) > 0 && Number(value) <= max) return Number(value);
  throw bad(option, value, `a whole number between 1 and ${max}`);
}

function idOption(option: string, value: unknown): number {
  // 4294967295 is (uid_t)-1, "no change", so it is never a valid target.
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < 4294967295) return value;
  throw bad(option, value, 'a numeric id between 0 and 4294967294');
}

export function normalizeOptions(input: SandboxOptions = {}): NormalizedOptions {
  if (typeof input !== 'object' || input === null) throw new SandboxOptionError('sandbox options must be an object');
  for (const key of Object.keys(input)) {
    if (!KNOWN_KEYS.has(key)) throw new SandboxOptionError(`unknown sandbox option '${key}' (known: ${[...KNOWN_KEYS].join(', ')})`, { option: key });
  }
  const o = input;
  const limits: Limits = { swapBytes: o.swap === undefined ? 0 : parseBytes('swap', o.swap) };
  if (o.memory !== undefined) {
    limits.memoryBytes = parseBytes('memory', o.memory);
    // Below a few pages nothing, not even the trampoline, can run; refuse rather than OOM at once.
    if (limits.memoryBytes < 1024 * 1024) throw bad('memory', o.memory, 'at least 1M');
  } else if (o.swap !== undefined && limits.swapBytes > 0) {
    throw new SandboxOptionError("option 'swap' needs 'memory' (swap is allowed on top of the memory limit)", { option: 'swap' });
  }
  if (o.pids !== undefined) limits.pids = positiveInt('pids', o.pids);
  if (o.cpu !== undefined) limits.cpu = parseCpu(o.cpu);

  const env: Record<string, string> = { PATH: DEFAULT_PATH };
  if (o.envAllow !== undefined) {
    if (!Array.isArray(o.envAllow) || o.envAllow.some((n) => typeof n !== 'string')) throw bad('envAllow', o.envAllow, 'a list of variable names');
    for (const name of o.envAllow) {
      const v = process.env[name];
      if (v !== undefined) env[name] = v;
    }
  }
  if (o.env !== undefined) {
    if (typeof o.env !== 'object' || o.env === null) throw bad('env', o.env, 'an object of strings');
    for (const [k, v] of Object.entries(o.env)) {
      if (typeof v !== 'string' || k === '' || k.includes('=') || k.includes('\0') || v.includes('\0')) throw bad('env', { [k]: v }, 'NAME=string pairs');
      env[k] = v;
    }
  }
  for (const flag of ['confine', 'allowRoot'] as const) {
    if (o[flag] !== undefined && typeof o[flag] !== 'boolean') throw bad(flag, o[flag], 'true or false');
  }
  const confine = o.confine ?? true;
  const namespaces = normalizeNamespaces(o.namespaces, confine ? CONFINE_NAMESPACES : []);
  const egress = normalizeEgress(o.egress);
  const backend = o.backend ?? 'auto';
  if (backend !== 'auto' && !BACKEND_NAMES.includes(backend)) throw bad('backend', backend, `'auto' or one of ${BACKEND_NAMES.join(', ')}`);
  const stdin = o.stdin ?? 'ignore';
  if (!['ignore', 'inherit', 'pipe'].includes(stdin)) throw bad('stdin', stdin, "'ignore', 'inherit' or 'pipe'");
  const cgroupBase = o.cgroupBase ?? 'captrap';
  if (typeof cgroupBase !== 'string' || !/^captrap[A-Za-z0-9_.-]*$/.test(cgroupBase)) {
    throw bad('cgroupBase', cgroupBase, "a name starting with 'captrap' (letters, digits, '_', '.', '-'), so stale-cgroup cleanup can recognise it");
  }
  if (o.cwd !== undefined && (typeof o.cwd !== 'string' || o.cwd === '')) throw bad('cwd', o.cwd, 'a directory path');
  for (const flag of ['noNewPrivs', 'allowDegraded'] as const) {
    if (o[flag] !== undefined && typeof o[flag] !== 'boolean') throw bad(flag, o[flag], 'true or false');
  }
  const out: NormalizedOptions = {
    limits,
    killGraceMs: o.killGrace === undefined ? 2000 : parseDuration('killGrace', o.killGrace),
    env,
    allowRoot: o.allowRoot ?? false,
    noNewPrivs: o.noNewPrivs ?? true,
    namespaces,
    confine,
    view: normalizeView(o.view),
    maxOutputBytes: o.maxOutputBytes === undefined ? 1024 * 1024 : parseBytes('maxOutputBytes', o.maxOutputBytes),
    backend,
    allowDegraded: o.allowDegraded ?? false,
    stdin,
    cgroupBase,
  };
  if (o.timeout !== undefined) {
    out.timeoutMs = parseDuration('timeout', o.timeout);
    if (out.timeoutMs <= 0) throw bad('timeout', o.timeout, 'a positive duration');
  }
  if (egress) out.egress = egress;
  if (o.cwd !== undefined) out.cwd = o.cwd;
  if (o.uid !== undefined) out.uid = idOption('uid', o.uid);
  if (o.gid !== undefined) out.gid = idOption('gid', o.gid);
  return out;
}
