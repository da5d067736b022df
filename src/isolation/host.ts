// What this host offers for isolation: the cgroup layout and which controllers captrap can
// write, cgroup.kill, setpriv/unshare/prlimit, namespaces and a reachable systemd manager.
// Probed once per process (hosts do not change layout under a running captrap).
import { accessSync, constants, existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

export type CgroupLayout = 'v2' | 'hybrid' | 'v1' | 'none';
export const V1_CONTROLLERS = ['memory', 'pids', 'cpu', 'cpuacct', 'freezer'] as const;
export type V1Controller = (typeof V1_CONTROLLERS)[number];

export interface HostInfo {
  layout: CgroupLayout;
  /** Mount point of the cgroup2 tree (pure v2: /sys/fs/cgroup; hybrid: /sys/fs/cgroup/unified). */
  unifiedRoot?: string;
  /** Controllers enabled at the cgroup2 root (empty on a hybrid host). */
  unifiedControllers: string[];
  /** Whether a child of the cgroup2 tree has cgroup.kill (Linux >= 5.14). */
  cgroupKill: boolean;
  /** Mount point of each v1 controller hierarchy captrap can write. */
  v1: Partial<Record<V1Controller, string>>;
  /** v1 memory.memsw.* present (swap accounting). */
  v1Memsw: boolean;
  tools: { sh?: string; setpriv?: string; unshare?: string; prlimit?: string; systemdRun?: string; bwrap?: string };
  /** systemd is the init and its manager answers (systemd-run --scope can work). */
  systemdManager: boolean;
  /** Namespaces `unshare` can create here, tested for real on first read (see lazyNamespaces). */
  namespaces: Record<'pid' | 'mount' | 'net' | 'ipc' | 'uts' | 'cgroup' | 'user', boolean>;
  isRoot: boolean;
}

interface Mount {
  dir: string;
  type: string;
  options: string[];
}

function readMounts(): Mount[] {
  try {
    return readFileSync('/proc/self/mounts', 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const f = l.split(' ');
        return { dir: (f[1] ?? '').replace(/\\040/g, ' '), type: f[2] ?? '', options: (f[3] ?? '').split(',') };
      });
  } catch {
    return [];
  }
}

function writable(dir: string): boolean {
  try {
    accessSync(dir, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export function which(name: string, path = process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin'): string | undefined {
  if (name.includes('/')) return isExecutable(name) ? name : undefined;
  for (const dir of path.split(':')) {
    if (!dir) continue;
    const p = `${dir}/${name}`;
    if (isExecutable(p)) return p;
  }
  return undefined;
}

function isExecutable(p: string): boolean {
  try {
    // Most candidates of a PATH walk do not exist (probeHost walks six names through six
    // directories): throwIfNoEntry answers that without a thrown ENOENT, and with one syscall
    // for a path that is there (it is on every launch's path for the command itself).
    const st = statSync(p, { throwIfNoEntry: false });
    if (st === undefined || st.isDirectory()) return false;
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

const SYS_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function canUnshare(unshare: string | undefined, flag: string): boolean {
  if (!unshare) return false;
  const r = spawnSync(unshare, [flag, ...(flag === '--pid' ? ['--fork'] : []), '--', '/bin/true'], { stdio: 'ignore', timeout: 3000 });
  return r.status === 0;
}

type NamespaceKey = keyof HostInfo['namespaces'];
const CONFINE_KEYS: readonly NamespaceKey[] = ['pid', 'mount', 'net', 'ipc', 'uts', 'cgroup'];

/**
 * The namespace answers, probed when first read rather than at probeHost: a command that asks
 * for none (captrap run --no-confine, ps, audit) never pays the unshare(1) runs. The six that
 * confinement uses are tried together first (one run; as root on a usual host that settles
 * all of them), one by one only if that fails. 'user' is probed on its own.
 */
function lazyNamespaces(unshare: string | undefined, useCache: boolean): HostInfo['namespaces'] {
  const known: Partial<Record<NamespaceKey, boolean>> = {};
  let allTried = false;
  const probe = (key: NamespaceKey): boolean => {
    if (known[key] === undefined && key !== 'user' && !allTried) {
      allTried = true;
      if ((useCache && rememberedAllNamespaces(unshare)) || canUnshareAll(unshare)) for (const k of CONFINE_KEYS) known[k] = true;
    }
    known[key] ??= canUnshare(unshare, `--${key}`);
    return known[key]!;
  };
  const ns = {} as HostInfo['namespaces'];
  for (const key of [...CONFINE_KEYS, 'user'] as const) Object.defineProperty(ns, key, { enumerable: true, get: () => probe(key) });
  return ns;
}

function canUnshareAll(unshare: string | undefined): boolean {
  if (!unshare) return false;
  const r = spawnSync(unshare, ['--pid', '--fork', '--mount', '--net', '--ipc', '--uts', '--cgroup', '--', '/bin/true'], { stdio: 'ignore', timeout: 3000 });
  if (r.status !== 0) return false;
  rememberAllNamespaces(unshare);
  return true;
}

// The unshare(1) run above costs a fork and two execs (about a twentieth of a `captrap run`), and
// its answer only changes with what the key below names. So a yes is remembered for this boot in
// a file only this uid can write (tmpfs: gone at reboot), keyed by everything that decides it: the
// boot, the kernel, the unshare binary, captrap's uid, capabilities and seccomp state, the
// namespaces captrap itself runs in (a container has its own) and the namespace limits. Only a
// yes is kept: a file claiming yes can at worst make captrap try, and the launcher fails closed
// (it exits 125 with "cannot create a pid namespace" or "cannot create namespaces", and the
// command never runs); a remembered no could quietly take confinement away from a run that
// allows degradation. CAPTRAP_NS_CACHE_DIR moves the file's directory; empty turns this off.
// A refresh (probeHost(true)) asks the host itself and does not read it.
function nsCacheDir(): string | undefined {
  const dir = process.env.CAPTRAP_NS_CACHE_DIR ?? (process.geteuid?.() === 0 ? '/run/captrap' : process.env.XDG_RUNTIME_DIR ? `${process.env.XDG_RUNTIME_DIR}/captrap` : undefined);
  return dir || undefined;
}
const NS_KINDS = ['pid', 'mnt', 'net', 'ipc', 'uts', 'cgroup'] as const;

/** What the remembered answer is keyed by (exported for tests); undefined when any part is unreadable. */
export function namespaceProbeKey(unshare: string): string | undefined {
  try {
    const read = (p: string) => readFileSync(p, 'utf8').trim();
    const status = read('/proc/self/status');
    const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1]?.trim() ?? '?';
    const bin = statSync(unshare);
    return [
      'v1',
      read('/proc/sys/kernel/random/boot_id'),
      read('/proc/sys/kernel/osrelease'),
      `${unshare}:${bin.ino}:${bin.size}:${bin.mtimeMs}`,
      `uid:${process.geteuid?.() ?? '?'}`,
      `cap:${field('CapEff')}`,
      `seccomp:${field('Seccomp')}:${field('Seccomp_filters')}`,
      ...['user', ...NS_KINDS].map((n) => `${n}:${readlinkSync(`/proc/self/ns/${n}`)}`),
      ...NS_KINDS.map((n) => `max_${n}:${read(`/proc/sys/user/max_${n}_namespaces`)}`),
    ].join('\n');
  } catch {
    return undefined; // anything unreadable: no cache, probe for real
  }
}

/** The cache file, if it and its directory are this uid's and nobody else can write them. */
function nsCacheFile(): string | undefined {
  const dir = nsCacheDir();
  if (!dir) return undefined;
  const uid = process.geteuid?.();
  const safe = (p: string) => {
    const st = lstatSync(p);
    return st.uid === uid && (st.mode & 0o022) === 0;
  };
  try {
    if (!safe(dir)) return undefined;
    const file = `${dir}/namespaces-probe`;
    return lstatSync(file).isFile() && safe(file) ? file : undefined;
  } catch {
    return undefined;
  }
}

/** Whether a safe cache file says this host passed the six-namespace probe under the current key. */
export function rememberedAllNamespaces(unshare: string | undefined): boolean {
  if (!unshare) return false;
  const file = nsCacheFile();
  if (!file) return false;
  const key = namespaceProbeKey(unshare);
  try {
    return key !== undefined && readFileSync(file, 'utf8') === key;
  } catch {
    return false;
  }
}

function rememberAllNamespaces(unshare: string): void {
  const dir = nsCacheDir();
  const key = dir ? namespaceProbeKey(unshare) : undefined;
  if (!dir || key === undefined) return;
  const file = `${dir}/namespaces-probe`;
  const tmp = `${file}.${process.pid}`;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeFileSync(tmp, key, { mode: 0o600, flag: 'wx' });
    renameSync(tmp, file);
  } catch {
    // A cache only: a read-only /run costs the next run one probe.
    rmSync(tmp, { force: true });
  }
}

const TOOLS = [['sh', 'sh'], ['setpriv', 'setpriv'], ['unshare', 'unshare'], ['prlimit', 'prlimit'], ['systemdRun', 'systemd-run'], ['bwrap', 'bwrap']] as const;

/**
 * The tools, each looked up in the system PATH when first read: a `captrap run` needs three of
 * the six, and a PATH walk for a missing one is six failed lookups. A tool that is not there
 * reads as undefined (and, like before, is left out of JSON).
 */
function lazyTools(): HostInfo['tools'] {
  const tools: HostInfo['tools'] = {};
  for (const [key, bin] of TOOLS) {
    let found: string | null | undefined = null;
    Object.defineProperty(tools, key, { enumerable: true, get: () => (found === null ? (found = which(bin, SYS_PATH)) : found) });
  }
  return tools;
}

let cached: HostInfo | undefined;

export function probeHost(refresh = false): HostInfo {
  if (cached && !refresh) return cached;
  const mounts = readMounts();
  const v1: Partial<Record<V1Controller, string>> = {};
  let unifiedRoot: string | undefined;
  for (const m of mounts) {
    if (m.type === 'cgroup2' && (unifiedRoot === undefined || m.dir === '/sys/fs/cgroup')) unifiedRoot = m.dir;
    if (m.type === 'cgroup') {
      for (const c of V1_CONTROLLERS) if (m.options.includes(c) && v1[c] === undefined && writable(m.dir)) v1[c] = m.dir;
    }
  }
  let unifiedControllers: string[] = [];
  let cgroupKill = false;
  if (unifiedRoot && writable(unifiedRoot)) {
    try {
      unifiedControllers = readFileSync(`${unifiedRoot}/cgroup.controllers`, 'utf8').trim().split(/\s+/).filter(Boolean);
    } catch {
      unifiedControllers = [];
    }
    // The root cgroup has no cgroup.kill; the feature exists iff the kernel is >= 5.14, which
    // also added it to every non-root cgroup. cgroup.stat.local / memory.peak are not enough, so
    // test the kernel's file list through any existing child, else the kernel version.
    cgroupKill = kernelAtLeast(5, 14);
  } else {
    unifiedRoot = undefined;
  }
  const v1Count = Object.keys(v1).length;
  let layout: CgroupLayout;
  if (unifiedRoot && unifiedControllers.length > 0 && v1Count === 0) layout = 'v2';
  else if (unifiedRoot && v1Count > 0) layout = 'hybrid';
  else if (v1Count > 0) layout = 'v1';
  else if (unifiedRoot) layout = 'v2';
  else layout = 'none';
  const tools = lazyTools();
  const systemdManager = existsSync('/run/systemd/system') && tools.systemdRun !== undefined;
  // A refresh (doctor) asks the host itself, not what an earlier run remembered.
  const namespaces = lazyNamespaces(tools.unshare, !refresh);
  const host: HostInfo = {
    layout,
    unifiedControllers,
    cgroupKill,
    v1,
    v1Memsw: v1.memory !== undefined && existsSync(`${v1.memory}/memory.memsw.limit_in_bytes`),
    tools,
    systemdManager,
    namespaces,
    isRoot: process.getuid?.() === 0,
  };
  if (unifiedRoot) host.unifiedRoot = unifiedRoot;
  cached = host;
  return host;
}

function kernelAtLeast(major: number, minor: number): boolean {
  try {
    const m = /^(\d+)\.(\d+)/.exec(readFileSync('/proc/sys/kernel/osrelease', 'utf8'));
    if (!m) return false;
    const [a, b] = [Number(m[1]), Number(m[2])];
    return a > major || (a === major && b >= minor);
  } catch {
    return false;
  }
}
