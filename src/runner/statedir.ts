// The sidecar's state directory and the key and state files it reads at start-up. captrap runs
// as root and trusts what it finds there (a capability key forges grants, revocations.jsonl is
// appended to), so a directory or file another local user could have created, replaced or
// written is refused before anything is opened, with the path, the problem and the fix.
// Checks never follow a symlink (lstat): a planted link is the attack, not a way to the target.
import { lstatSync, mkdirSync, type Stats } from 'node:fs';
import { userInfo } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { CaptrapError } from '../errors.js';
import { REVOCATIONS_FILE } from '../kernel/revocations.js';
import { publicKeyFileFor, type SidecarConfig } from './config.js';

export class StateDirError extends CaptrapError {
  constructor(message: string, details: { path: string; role: string; problem: string }) {
    super('E_STATE_DIR', message, details);
  }
}

/**
 * - `dir`: a directory we own that nobody else can write (no group/other write bit).
 * - `secret`: a key file: a regular file we own with no group/other permission bit at all.
 * - `file`: a state file: a regular file we own that nobody else can write.
 */
export type OwnedKind = 'dir' | 'secret' | 'file';

export interface CheckOptions {
  /** Create a missing directory (and missing parents) with mode 0700. Files are never created here. */
  create?: boolean;
  /** What the path is, for the message: 'state directory', 'capability key file'. */
  role?: string;
}

function myUid(): number {
  // Without getuid (not POSIX) there is no owner to compare with; captrap only runs on Linux.
  return process.getuid?.() ?? -1;
}

function ownerName(uid: number): string {
  try {
    const u = userInfo();
    if (u.uid === uid && u.username) return u.username;
  } catch {
    // no passwd entry (containers): the number works for chown just as well
  }
  return String(uid);
}

function mode(st: Stats): string {
  return '0' + (st.mode & 0o7777).toString(8).padStart(3, '0');
}

function fail(path: string, role: string, problem: string, fix: string): never {
  throw new StateDirError(`${role} ${path}: ${problem}; refusing to use it. Fix: ${fix}`, { path, role, problem });
}

function lstatOrUndefined(path: string, role: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    return fail(path, role, `cannot be examined (${(err as Error).message})`, `make ${path} reachable by captrap's user, or choose another path`);
  }
}

/** Judges what lstat found at `path` against `kind`; throws StateDirError naming the first problem. */
function judge(path: string, st: Stats, kind: OwnedKind, role: string): void {
  const uid = myUid();
  const who = ownerName(uid);
  if (st.isSymbolicLink()) {
    fail(path, role, 'is a symlink', `remove the symlink (rm ${path}) and let captrap create it, or configure the real path`);
  }
  if (kind === 'dir' && !st.isDirectory()) fail(path, role, 'is not a directory', `remove it (rm ${path}) or choose another path`);
  if (kind !== 'dir' && !st.isFile()) fail(path, role, 'is not a regular file', `remove it (rm -r ${path}) or choose another path`);
  const perm = kind === 'dir' ? '700' : kind === 'secret' ? '600' : 'go-w';
  if (st.uid !== uid) {
    fail(path, role, `is owned by uid ${st.uid}, not ${uid} (captrap's uid)`, `check nobody else planted it, then chown ${who} ${path} && chmod ${perm} ${path}`);
  }
  // A key file must not even be readable by others (a leaked key forges capabilities or the
  // audit chain); for directories and state files, writable is what lets someone plant or edit.
  const forbidden = kind === 'secret' ? 0o077 : 0o022;
  if ((st.mode & forbidden) !== 0) {
    const what = kind === 'secret' ? 'accessible to group or others' : 'writable by group or others';
    fail(path, role, `has mode ${mode(st)}, ${what}`, `chmod ${perm} ${path}`);
  }
  // A second name for a key or state file lives in a directory we did not check: whoever can
  // reach it there can read or rewrite the file here.
  if (kind !== 'dir' && st.nlink > 1) {
    fail(path, role, `has ${st.nlink} hard links`, `check nobody else linked it, then replace it with a copy (cp ${path} ${path}.new && mv ${path}.new ${path})`);
  }
}

/**
 * Creates `path` (and any missing parents) one level at a time, mode 0700. Every directory we
 * attempt to create is judged afterwards: an EEXIST means someone else got there first, so what
 * is there now must pass like any existing directory (a symlink planted in the race is refused,
 * never followed). Parents that already existed are not judged: the state dir may live under a
 * directory we do not own (/var/lib).
 */
function createDir(path: string, role: string): void {
  const parent = dirname(path);
  if (parent !== path && lstatOrUndefined(parent, `parent of ${role}`) === undefined) createDir(parent, `parent of ${role}`);
  try {
    mkdirSync(path, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      fail(path, role, `cannot be created (${(err as Error).message})`, `create it yourself (mkdir -m 700 ${path}) or choose another path`);
    }
  }
  const st = lstatOrUndefined(path, role);
  if (st === undefined) fail(path, role, 'disappeared right after it was created', `check what else is using ${dirname(path)}`);
  judge(path, st, 'dir', role);
}

/**
 * Refuses `path` unless it is what `kind` asks for (see OwnedKind) and owned by captrap's uid.
 * A missing file passes (its owner creates it, O_EXCL, mode 0600); a missing directory is
 * created 0700 with `create`, else passes too.
 */
export function checkOwnedPath(path: string, kind: OwnedKind, opts: CheckOptions = {}): void {
  const p = resolve(path);
  const role = opts.role ?? (kind === 'dir' ? 'directory' : kind === 'secret' ? 'key file' : 'state file');
  const st = lstatOrUndefined(p, role);
  if (st !== undefined) return judge(p, st, kind, role);
  if (kind === 'dir' && opts.create) createDir(p, role);
}

/** The capability key's directory (created 0700 when missing) and the key file itself. */
export function checkCapabilityKeyFile(file: string): void {
  checkOwnedPath(dirname(file), 'dir', { create: true, role: 'capability key directory' });
  checkOwnedPath(file, 'secret', { role: 'capability key file' });
}

/**
 * Everything `captrap serve` is about to use, checked before anything is started: the state
 * dir (created 0700), the key files and their directories, the audit dir, the revocation list
 * and the admin socket's directory. Directories captrap has always created are created here;
 * the others are left for their owners to report missing, as before.
 */
export function prepareStateDir(config: SidecarConfig): void {
  const { stateDir, audit } = config;
  checkOwnedPath(stateDir, 'dir', { create: true, role: 'state directory' });
  checkCapabilityKeyFile(config.capabilityKeyFile);
  for (const [file, role] of [
    [audit.keyFile, 'audit key file'],
    [audit.signingKeyFile, 'audit signing key'],
  ] as const) {
    checkOwnedPath(dirname(file), 'dir', { role: `${role} directory` });
    checkOwnedPath(file, 'secret', { role });
  }
  const pub = publicKeyFileFor(audit.signingKeyFile);
  checkOwnedPath(dirname(pub), 'dir', { role: 'audit public key directory' });
  checkOwnedPath(pub, 'file', { role: 'audit public key' });
  checkOwnedPath(audit.dir, 'dir', { create: true, role: 'audit directory' });
  checkOwnedPath(join(stateDir, REVOCATIONS_FILE), 'file', { role: 'revocation list' });
  checkOwnedPath(dirname(config.adminSocket), 'dir', { role: 'admin socket directory' });
}
