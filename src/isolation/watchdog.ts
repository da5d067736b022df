// The owner watchdog: kills what a dead captrap left running in its sandbox cgroups.
//
// A parent-death signal only reaches a sandbox's leader; what the leader forked (a setsid
// grandchild, a double-forked daemon) would live on inside the sandbox's cgroup until the next
// captrap start ran stale cleanup. So the first time this process creates a sandbox cgroup
// under a base (for a sandbox in its own pid namespace, which dies whole with its leader, only
// once it has run a while: see armWatchdog in sandbox.ts), it starts one small sh process
// whose stdin is a pipe captrap never writes to
// or closes. Whenever captrap dies (SIGKILL, crash, normal exit) the kernel closes the write
// end, the watchdog's `read` sees EOF, and it kills and removes every cgroup under that base
// whose name starts with `<ownerPid>.<ownerStartTime>.` — this process's cgroups and nothing
// else — then exits.
//
// The watchdog is not in any sandbox cgroup (it is a direct child of captrap, in captrap's own
// cgroups), has no parent-death signal (it must outlive captrap), runs in its own session (a
// terminal's SIGINT to captrap's process group must not take it down too) and ignores
// SIGHUP/SIGINT/SIGQUIT/SIGPIPE.
import { spawn, type ChildProcess } from 'node:child_process';
import { CaptrapError } from '../errors.js';
import { ownerPrefix, registerOwnHelper, unifiedHome, unregisterOwnHelper } from './cgroup.js';
import { which, type HostInfo } from './host.js';
import { sliceFor } from './systemd-run.js';

/** The owner watchdog could not be started, so descendants of a sandbox would not die with captrap. */
export class WatchdogError extends CaptrapError {
  constructor(message: string, details?: Record<string, unknown>, cause?: unknown) {
    super('E_WATCHDOG', message, details, { cause });
  }
}

// $1 owner prefix, $2 cgroup2 base dirs (space-separated) or '', $3 freezer base dir or '', $4..
// every base dir. Only names that are exactly <prefix><digits>, or <prefix><digits>.scope (a
// systemd-run sandbox's scope, in the base's slice), are touched; the base dirs come from captrap.
// A name may be a group: its sandboxes and sub-groups are directories below it. cgroup.kill,
// cgroup.freeze and the v1 freezer act on the whole subtree; what lists members (tprocs) and
// what removes directories (rmtree, deepest first) walk it.
const SCRIPT = `
trap '' HUP INT QUIT PIPE
prefix=$1; unified=$2; freezer=$3; shift 3
while read -r _; do :; done
ours() { o_="\${1##*/}"; o_="\${o_%.scope}"; case "$o_" in "$prefix"*[!0-9]*) return 1;; "$prefix"[0-9]*) return 0;; esac; return 1; }
procs() { p=; while read -r x; do p="$p $x"; done < "$1/cgroup.procs"; echo "$p"; }
tprocs() { procs "$1"; for s in "$1"/*/; do [ -d "$s" ] && tprocs "\${s%/}"; done; }
rmtree() { for s in "$1"/*/; do [ -d "$s" ] && rmtree "\${s%/}"; done; rmdir "$1"; }
for u in $unified; do
  for c in "$u"/"$prefix"*; do
    ours "$c" && [ -d "$c" ] || continue
    if [ -e "$c/cgroup.kill" ]; then echo 1 > "$c/cgroup.kill"
    elif [ -e "$c/cgroup.freeze" ]; then
      echo 1 > "$c/cgroup.freeze"; for p in $(tprocs "$c"); do kill -9 "$p"; done; echo 0 > "$c/cgroup.freeze"
    fi
  done 2>/dev/null
done
if [ -n "$freezer" ]; then
  for c in "$freezer"/"$prefix"*; do
    ours "$c" && [ -d "$c" ] || continue
    n=0
    while [ $n -lt 200 ]; do
      case "$(tprocs "$c")" in *[0-9]*) ;; *) break;; esac
      echo FROZEN > "$c/freezer.state"
      m=0; while [ "$(cat "$c/freezer.state")" != FROZEN ] && [ $m -lt 100 ]; do m=$((m+1)); sleep 0.002; done
      for p in $(tprocs "$c"); do kill -9 "$p"; done
      echo THAWED > "$c/freezer.state"
      n=$((n+1)); sleep 0.005
    done
  done 2>/dev/null
fi
n=0
while [ $n -lt 400 ]; do
  left=0
  for b in "$@"; do
    for c in "$b"/"$prefix"*; do
      ours "$c" && [ -d "$c" ] || continue
      # Tree not caught above (no cgroup.kill, no freezer): SIGKILL what is listed, then retry.
      if [ -z "$unified$freezer" ]; then for p in $(tprocs "$c"); do kill -9 "$p"; done; fi
      rmtree "$c" || left=1
    done
  done 2>/dev/null
  [ $left = 0 ] && exit 0
  n=$((n+1)); sleep 0.005
done
exit 1
`;

export interface WatchdogInfo {
  pid: number;
  base: string;
  prefix: string;
}

const watchdogs = new Map<string, { child: ChildProcess; info: WatchdogInfo }>();

/** The base directory of `base` in every hierarchy captrap may create sandbox cgroups in. */
function baseDirs(host: HostInfo, base: string): { unified: string; freezer: string; all: string[] } {
  const all: string[] = [];
  for (const root of Object.values(host.v1)) if (root) all.push(`${root}/${base}`);
  const home = unifiedHome(host);
  const unifiedDirs = home ? [`${home}/${base}`] : [];
  // systemd-run sandboxes are scopes in the base's slice (see systemd-run.ts).
  if (host.systemdManager && host.layout === 'v2' && host.unifiedRoot) unifiedDirs.push(`${host.unifiedRoot}/${sliceFor(base)}`);
  all.push(...unifiedDirs);
  const unified = unifiedDirs.join(' ');
  const freezer = host.v1.freezer ? `${host.v1.freezer}/${base}` : '';
  // cgroup.kill/cgroup.freeze in the unified tree catch the whole tree; the freezer is only
  // needed where there is no usable cgroup2 tree.
  return { unified, freezer: unified ? '' : freezer, all };
}

/**
 * Starts this process's watchdog for `base` unless one is already running. Cheap after the
 * first call (a map lookup). Throws WatchdogError when it cannot be started.
 */
export function ensureOwnerWatchdog(host: HostInfo, base: string): WatchdogInfo {
  const have = runningWatchdog(base);
  if (have) return have;
  const sh = watchdogShell(host, base);
  const prefix = ownerPrefix();
  const dirs = baseDirs(host, base);
  let child: ChildProcess;
  try {
    child = spawn(sh, ['-c', SCRIPT, 'captrap-watchdog', prefix, dirs.unified, dirs.freezer, ...dirs.all], {
      stdio: ['pipe', 'ignore', 'ignore'],
      detached: true,
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' },
      cwd: '/',
    });
  } catch (err) {
    throw new WatchdogError(`cannot start the owner watchdog (${sh}): ${(err as Error).message}`, { base, sh }, err);
  }
  // Spawn failures are also reported asynchronously; a missing pid means it never ran.
  child.on('error', () => undefined);
  if (child.pid === undefined) throw new WatchdogError(`cannot start the owner watchdog (${sh}): spawn failed`, { base, sh });
  // Neither the process nor its pipe may keep captrap's event loop alive; the pipe's write end
  // is close-on-exec, so no sandbox inherits it and only captrap's death closes it.
  child.unref();
  const stdin = child.stdin as (NodeJS.WritableStream & { unref?: () => void; on: (e: string, f: () => void) => void }) | null;
  stdin?.on('error', () => undefined);
  stdin?.unref?.();
  // It shares captrap's cgroup: if captrap must leave it for a leaf (a container's delegated
  // cgroup, see enableSubtreeControllers), the watchdog goes along.
  const pid = child.pid;
  registerOwnHelper(pid);
  child.once('exit', () => unregisterOwnHelper(pid));
  const info: WatchdogInfo = { pid: child.pid, base, prefix };
  watchdogs.set(base, { child, info });
  return info;
}

function runningWatchdog(base: string): WatchdogInfo | undefined {
  const have = watchdogs.get(base);
  return have && have.child.exitCode === null && have.child.signalCode === null ? have.info : undefined;
}

/** The shell the watchdog of `base` runs in; throws WatchdogError for a base that is not captrap's. */
function watchdogShell(host: HostInfo, base: string): string {
  // The watchdog kills what it finds: only ever point it at a captrap base.
  if (!/^captrap[A-Za-z0-9_.-]*$/.test(base)) throw new WatchdogError(`'${base}' is not a captrap cgroup base name`, { base });
  return process.env.CAPTRAP_WATCHDOG_SH ?? host.tools.sh ?? '/bin/sh';
}

/**
 * Whether ensureOwnerWatchdog(host, base) still has to start a watchdog. Throws the WatchdogError
 * it would throw for a bad base or a shell that is missing or not executable, so a caller that
 * starts the watchdog only after its sandbox's launcher (see sandbox.ts) refuses before it has
 * created anything, as it would have with the watchdog first. Starts nothing.
 */
export function ownerWatchdogPending(host: HostInfo, base: string): boolean {
  if (runningWatchdog(base)) return false;
  const sh = watchdogShell(host, base);
  if (!which(sh)) throw new WatchdogError(`cannot start the owner watchdog (${sh}): not found or not executable`, { base, sh });
  return true;
}

/** The watchdogs this process runs (for tests and diagnostics). */
export function ownerWatchdogs(): WatchdogInfo[] {
  return [...watchdogs.values()].filter((w) => w.child.exitCode === null && w.child.signalCode === null).map((w) => w.info);
}
