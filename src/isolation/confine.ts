// Confinement: what a sandboxed process may see and be, on top of its cgroup limits. The
// default assumes a hostile tool that may run as root: its own pid, mount, network, ipc, uts and
// cgroup namespaces; a filesystem view of the system read-only plus the roots it was given; no
// cgroupfs; an unprivileged uid (65534 unless told otherwise); every capability dropped;
// no_new_privs; every inherited descriptor above 2 closed. The compiled launcher does the work
// (launcher/captrap-launch.c); this module turns plain lists into its arguments and says what
// holds. It never sees a capability: callers pass roots, access and network on/off.
import { lstatSync, readFileSync, readlinkSync, readdirSync, realpathSync } from 'node:fs';
import { isAbsolute, normalize, resolve, sep } from 'node:path';
import type { Degradation } from './cgroup.js';
import { SandboxOptionError } from './errors.js';
import type { HostInfo } from './host.js';
import type { LauncherChoice } from './launcher/launcher.js';
import { RealPaths } from './realpaths.js';

export type ConfineNamespace = 'pid' | 'mount' | 'net' | 'ipc' | 'uts' | 'cgroup';
export const CONFINE_NAMESPACES: readonly ConfineNamespace[] = ['pid', 'mount', 'net', 'ipc', 'uts', 'cgroup'];

/** What every view shows read-only: enough to run the system's programs. */
export const DEFAULT_SYSTEM_PATHS: readonly string[] = ['/usr', '/etc', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32'];
/** Secrets of the host that sit inside the system paths; covered in every view. */
export const DEFAULT_HIDDEN_PATHS: readonly string[] = ['/etc/shadow', '/etc/shadow-', '/etc/gshadow', '/etc/gshadow-', '/etc/sudoers', '/etc/sudoers.d', '/etc/ssh', '/etc/ssl/private', '/etc/security/opasswd'];
/** The uid and gid a tool runs as when captrap is root and nobody chose one. */
export const NOBODY = 65534;
/** Where the egress proxy answers inside a sandbox's network namespace. */
export const EGRESS_PORT = 3128;

export interface ViewOptions {
  /** Bound read-only at their own (symlink-resolved) paths. */
  readOnly?: string[];
  /** Bound writable at their own paths; the uid the tool runs as still needs permission. */
  readWrite?: string[];
  /** Covered with an empty, unreadable file or directory wherever they fall inside the view. */
  hide?: string[];
  /** Replaces DEFAULT_SYSTEM_PATHS. */
  system?: string[];
  /** A private, empty /tmp (default true). */
  tmp?: boolean;
}

export interface EgressOptions {
  /** captrap's proxy, a Unix socket on the host; the sandbox reaches it at 127.0.0.1:port. */
  proxySocket: string;
  port?: number;
}

export interface NormalizedView {
  readOnly: string[];
  readWrite: string[];
  hide: string[];
  system: string[];
  tmp: boolean;
}

/** What held for one sandbox (in every result) or what would hold on this host (doctor). */
export interface ConfinementReport {
  confined: boolean;
  namespaces: ConfineNamespace[];
  view: boolean;
  uid: number;
  gid: number;
  capabilities: 'dropped' | 'kept';
  noNewPrivs: boolean;
  network: 'none' | 'proxy' | 'host';
  inheritedFds: 'closed' | 'inherited';
}

function pathList(option: string, v: unknown): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || v.some((p) => typeof p !== 'string' || !isAbsolute(p) || p.includes('\0'))) {
    throw new SandboxOptionError(`option '${option}': expected a list of absolute paths`, { option, value: v });
  }
  return v.map((p: string) => normalize(p).replace(/(.)\/$/, '$1'));
}

export function normalizeView(v: unknown): NormalizedView {
  if (v === undefined) v = {};
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new SandboxOptionError("option 'view' must be an object", { option: 'view' });
  const o = v as ViewOptions;
  for (const k of Object.keys(o)) {
    if (!['readOnly', 'readWrite', 'hide', 'system', 'tmp'].includes(k)) throw new SandboxOptionError(`unknown view option '${k}' (known: readOnly, readWrite, hide, system, tmp)`, { option: `view.${k}` });
  }
  if (o.tmp !== undefined && typeof o.tmp !== 'boolean') throw new SandboxOptionError("option 'view.tmp' must be true or false", { option: 'view.tmp' });
  return {
    readOnly: pathList('view.readOnly', o.readOnly),
    readWrite: pathList('view.readWrite', o.readWrite),
    hide: pathList('view.hide', o.hide),
    system: o.system === undefined ? [...DEFAULT_SYSTEM_PATHS] : pathList('view.system', o.system),
    tmp: o.tmp ?? true,
  };
}

export function normalizeEgress(v: unknown): Required<EgressOptions> | undefined {
  if (v === undefined) return undefined;
  const o = v as EgressOptions;
  if (typeof o !== 'object' || o === null || typeof o.proxySocket !== 'string' || !isAbsolute(o.proxySocket)) {
    throw new SandboxOptionError("option 'egress' must be { proxySocket: <absolute path>, port?: number }", { option: 'egress' });
  }
  const port = o.port ?? EGRESS_PORT;
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new SandboxOptionError("option 'egress.port' must be a port number", { option: 'egress.port' });
  return { proxySocket: o.proxySocket, port };
}

export function normalizeNamespaces(v: unknown, fallback: readonly ConfineNamespace[]): ConfineNamespace[] {
  if (v === undefined) return [...fallback];
  if (!Array.isArray(v) || v.some((n) => !CONFINE_NAMESPACES.includes(n as ConfineNamespace))) {
    throw new SandboxOptionError(`option 'namespaces': expected a list drawn from ${CONFINE_NAMESPACES.join(', ')}`, { option: 'namespaces', value: v });
  }
  return [...new Set(v as ConfineNamespace[])];
}

const within = (path: string, root: string) => root === '/' || path === root || path.startsWith(root + sep);

function exists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/** The real path of p, or undefined if it does not exist (a root that is not there shows nothing). */
function real(p: string): string | undefined {
  try {
    // realpath(3): one syscall per component in C instead of Node's JS walk (same result).
    return realpathSync.native(p);
  } catch {
    return undefined;
  }
}

/**
 * The launcher arguments that build the view: system paths (a symlink such as /bin -> usr/bin is
 * recreated as a link), then read-only roots, then writable roots, parents before children, then
 * the hidden paths that fall inside anything bound. `extraReadOnly` are files the command needs
 * (its executable); `cwd` must be visible.
 */
export function viewArgs(view: NormalizedView, extraReadOnly: readonly string[], cwd: string | undefined): { args: string[]; bound: string[]; system: string[] } {
  const args: string[] = [];
  const rp = new RealPaths();
  const real = (p: string) => rp.real(p);
  // The system part (links, system binds, the hides inside them): the same for every request, so a warm launcher builds it ahead.
  const system: string[] = [];
  const binds: { path: string; rw: boolean; order: number; system?: true }[] = [];
  let order = 0;
  for (const p of view.system) {
    const st = rp.lstat(p);
    if (!st) continue;
    if (st.isSymbolicLink()) {
      const target = rp.readlink(p);
      if (target === undefined) continue; // replaced since the lstat: as if it were not there
      const r = real(p);
      args.push('--symlink', target, p);
      if (!(view.tmp && within(p, '/tmp'))) system.push('--symlink', target, p);
      if (r && !view.system.some((s) => s !== p && within(r, s))) binds.push({ path: r, rw: false, order: order++, system: true });
    } else {
      const r = real(p);
      if (r) binds.push({ path: r, rw: false, order: order++, system: true });
    }
  }
  // Roots are bound at the path given, never re-resolved here: a root checked as a real path and
  // swapped for a symlink since must be refused (the launcher does), not followed to its target.
  // Whoever names a root with a symlink in it (config, CLI) resolves it first.
  for (const p of view.readOnly) if (exists(p)) binds.push({ path: p, rw: false, order: order++ });
  for (const p of extraReadOnly) {
    const r = real(p);
    if (r) binds.push({ path: r, rw: false, order: order++ });
  }
  for (const p of view.readWrite) if (exists(p)) binds.push({ path: p, rw: true, order: order++ });
  // Parents before children; for the same path the later (writable) entry wins.
  binds.sort((a, b) => a.path.split('/').length - b.path.split('/').length || a.order - b.order);
  const bound: string[] = [];
  const systemBound: string[] = [];
  const kept: { path: string; rw: boolean }[] = [];
  for (const b of binds) {
    if (b.path === '/') throw new SandboxOptionError("the view cannot bind '/': name the directories the tool needs", { option: 'view' });
    // Already shown with the same access by the innermost entry that contains it: nothing to add.
    const parent = [...kept].reverse().find((k) => within(b.path, k.path));
    if (parent && parent.rw === b.rw) continue;
    args.push(b.rw ? '--rw' : '--ro', b.path);
    kept.push({ path: b.path, rw: b.rw });
    bound.push(b.path);
    // Only a system bind no request entry came before (parents first) can be made ahead of the request.
    // Nor one below /tmp: the request's private /tmp is mounted first, cold, and would cover it.
    if (b.system && kept.length === systemBound.length + 1 && !(view.tmp && within(b.path, '/tmp'))) {
      system.push('--ro', b.path);
      systemBound.push(b.path);
    }
  }
  if (cwd !== undefined) {
    const r = real(resolve(cwd)) ?? resolve(cwd);
    // The private /tmp starts empty: /tmp itself is there, a host directory below it is not
    // (unless a root binds it, which `bound` already covers).
    const visible = bound.some((b) => within(r, b)) || r === '/' || (view.tmp && r === '/tmp');
    if (!visible) throw new SandboxOptionError(`working directory '${cwd}' is not inside the sandbox's view; add it to view.readOnly or view.readWrite, or use '/'`, { option: 'cwd', cwd });
  }
  for (const h of [...DEFAULT_HIDDEN_PATHS, ...view.hide]) {
    const r = real(h);
    if (r && bound.some((b) => within(r, b))) args.push('--hide', r);
    if (r && systemBound.some((b) => within(r, b))) system.push('--hide', r);
    // A hidden path reached through a symlink in the view is hidden at its link too.
    if (r && r !== h && bound.some((b) => within(h, b))) args.push('--hide', h);
    if (r && r !== h && systemBound.some((b) => within(h, b))) system.push('--hide', h);
  }
  if (!view.tmp) args.push('--no-tmp');
  return { args, bound, system };
}

export interface ConfinementPlan {
  launcherArgs: string[];
  /** The view's system part, a subsequence of launcherArgs (see viewArgs): what a warm launcher builds ahead. */
  systemViewArgs: string[];
  degraded: Degradation[];
  report: ConfinementReport;
  /** Environment the sandbox needs (proxy variables). */
  env: Record<string, string>;
}

export interface ConfinementInput {
  confine: boolean;
  namespaces: ConfineNamespace[];
  view: NormalizedView;
  egress?: Required<EgressOptions>;
  uid?: number;
  gid?: number;
  noNewPrivs: boolean;
  /** The resolved executable (bound read-only if no other entry shows it). */
  file: string;
  cwd?: string;
}

/** Whether the host can create a namespace for captrap (cgroup namespaces are probed as part of the launcher's own). */
export function hostHasNamespace(host: HostInfo, n: ConfineNamespace): boolean {
  return host.namespaces[n];
}

export function planConfinement(i: ConfinementInput, host: HostInfo, launcher: LauncherChoice): ConfinementPlan {
  const myUid = process.getuid?.() ?? 0;
  const myGid = process.getgid?.() ?? 0;
  const report: ConfinementReport = {
    confined: i.confine,
    namespaces: [],
    view: false,
    uid: i.uid ?? myUid,
    gid: i.gid ?? myGid,
    capabilities: 'kept',
    noNewPrivs: i.noNewPrivs,
    network: 'host',
    inheritedFds: launcher.kind === 'captrap-launch' ? 'closed' : 'inherited',
  };
  const degraded: Degradation[] = [];
  const env: Record<string, string> = {};
  if (!i.confine) return { launcherArgs: [], systemViewArgs: [], degraded, report, env };
  if (launcher.kind !== 'captrap-launch') {
    // Nothing of the confinement holds: the report says so (the degradation says why).
    report.confined = false;
    degraded.push({
      limit: 'confinement',
      reason: `confinement needs the compiled launcher, and this sandbox starts through ${launcher.kind} (${launcher.why})`,
      fix: "run 'npm run build' with a C compiler and leave CAPTRAP_LAUNCHER unset",
    });
    return { launcherArgs: [], systemViewArgs: [], degraded, report, env };
  }
  const args: string[] = ['--drop-caps'];
  let systemViewArgs: string[] = [];
  report.capabilities = 'dropped';
  report.noNewPrivs = true;
  const ns = i.namespaces.filter((n) => hostHasNamespace(host, n));
  for (const n of i.namespaces) {
    if (!ns.includes(n)) {
      degraded.push({ limit: `namespace:${n}`, reason: `this host does not let captrap create a ${n} namespace${host.isRoot ? '' : ' (captrap is not root)'}`, fix: 'run captrap as root on a kernel with namespaces enabled' });
    }
  }
  if (i.egress && !(ns.includes('net') && ns.includes('pid'))) {
    degraded.push({ limit: 'egress', reason: 'egress through the proxy needs net and pid namespaces', fix: "keep 'net' and 'pid' in namespaces" });
  }
  if (ns.length > 0) args.push('--unshare', ns.join(','));
  report.namespaces = ns;
  if (ns.includes('uts')) args.push('--hostname', 'captrap');
  if (ns.includes('mount')) {
    const { args: v, system } = viewArgs(i.view, [i.file], i.cwd);
    args.push('--view', ...v);
    systemViewArgs = system;
    report.view = true;
  } else {
    degraded.push({ limit: 'view', reason: 'without a mount namespace the tool sees the whole filesystem (and, as root, the cgroupfs)', fix: "keep 'mount' in namespaces" });
  }
  if (ns.includes('net')) {
    report.network = 'none';
    if (i.egress && ns.includes('pid')) {
      args.push('--net-proxy', String(i.egress.port), i.egress.proxySocket);
      report.network = 'proxy';
      const url = `http://127.0.0.1:${i.egress.port}`;
      for (const k of ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'ALL_PROXY', 'all_proxy']) env[k] = url;
      env.NO_PROXY = env.no_proxy = '';
    }
  }
  if (i.uid !== undefined) args.push('--uid', String(i.uid));
  if (i.gid !== undefined) args.push('--gid', String(i.gid));
  if (i.cwd !== undefined && report.view) args.push('--chdir', real(resolve(i.cwd)) ?? resolve(i.cwd));
  return { launcherArgs: args, systemViewArgs, degraded, report, env };
}

/**
 * Processes of a sandbox that are alive outside its cgroup: members of its pid namespace (found
 * through the leader's child, the namespace's init) or, without one, the leader's descendants.
 * Read at kill time, so a process that left its cgroup is still found and killed.
 */
export function sandboxPidNamespace(leader: number): string | undefined {
  try {
    const kids = readdirSync(`/proc/${leader}/task`).flatMap((t) => {
      try {
        return readFileSync(`/proc/${leader}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
      } catch {
        return [];
      }
    });
    const mine = readlinkSync(`/proc/${leader}/ns/pid`);
    for (const k of kids) {
      const n = readlinkSync(`/proc/${k}/ns/pid`);
      if (n !== mine) return n;
    }
  } catch {
    // the leader is gone: its namespace died with its init
  }
  return undefined;
}

/** Pids whose pid namespace is `ns` (a `pid:[inode]` link text). */
export function pidsInNamespace(ns: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readlinkSync(`/proc/${e}/ns/pid`) === ns) out.push(Number(e));
    } catch {
      // exited while we looked
    }
  }
  return out;
}
