// Small cgroupfs helpers shared by the backends (cgroup.ts) and groups (group.ts): reading and
// writing control files, and walking a cgroup's subtree — a group holds no process itself, its
// sandboxes sit in child directories, so kill, wait and rmdir must all look below it.
import { mkdirSync, readdirSync, readFileSync, rmdirSync, watch, writeFileSync } from 'node:fs';
import { CgroupError } from './errors.js';
import { cgroupsOf, isSameProcess, processRef } from './proc.js';

export function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

export function readNumber(path: string): number | undefined {
  const t = readText(path);
  if (t === undefined) return undefined;
  const n = Number(t.trim());
  return Number.isFinite(n) ? n : undefined;
}

/** Value of `key` in a flat-keyed file such as memory.events or cpu.stat. */
export function readKeyed(path: string, key: string): number | undefined {
  const t = readText(path);
  if (t === undefined) return undefined;
  for (const line of t.split('\n')) {
    const [k, v] = line.split(/\s+/);
    if (k === key) return Number(v);
  }
  return undefined;
}

export function write(path: string, value: string): void {
  try {
    writeFileSync(path, value);
  } catch (err) {
    throw new CgroupError(`cannot write '${value}' to ${path}: ${(err as Error).message}`, { path, value }, err);
  }
}

export function readPids(dir: string): number[] {
  const t = readText(`${dir}/cgroup.procs`);
  if (t === undefined) return [];
  return t.split('\n').filter(Boolean).map(Number);
}

export function mkdirOwned(dir: string): void {
  try {
    mkdirSync(dir);
  } catch (err) {
    throw new CgroupError(`cannot create cgroup ${dir}: ${(err as Error).message}`, { dir }, err);
  }
}

export function ensureDir(dir: string): void {
  try {
    mkdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new CgroupError(`cannot create cgroup base ${dir}: ${(err as Error).message}`, { dir }, err);
  }
}

/** `dir` and every cgroup below it, deepest first (the order rmdir needs). */
export function subtreeDeepestFirst(dir: string): string[] {
  const out: string[] = [];
  let entries: import('node:fs').Dirent[] = [];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    // gone, or not a directory: nothing below it
  }
  for (const e of entries) if (e.isDirectory()) out.push(...subtreeDeepestFirst(`${dir}/${e.name}`));
  out.push(dir);
  return out;
}

/** Every pid in `dir` or any cgroup below it. */
export function subtreePids(dir: string): number[] {
  return subtreeDeepestFirst(dir).flatMap(readPids);
}

/** rmdir each directory with whatever empty cgroups are left below it, deepest first. Throws CgroupError naming what is busy. */
export function rmdirTrees(dirs: readonly string[]): void {
  const busy: string[] = [];
  for (const top of [...dirs].reverse()) {
    // Usually a leaf: one rmdir, without listing the directory first (half the cost on every sandbox's result path).
    try {
      rmdirSync(top);
      continue;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
    }
    for (const d of subtreeDeepestFirst(top)) {
      try {
        rmdirSync(d);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT') busy.push(`${d} (${code})`);
      }
    }
  }
  if (busy.length > 0) throw new CgroupError(`cannot remove cgroup(s): ${busy.join(', ')}`, { dirs: busy });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function pollUntil(cond: () => boolean, timeoutMs: number, everyMs = 2): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() >= deadline) return cond();
    await sleep(everyMs);
  }
  return true;
}

/**
 * Waits for `populated 0` in a cgroup2 cgroup.events (which covers the whole subtree), watched
 * with inotify, with a fast poll as a safety net.
 */
export function waitUnifiedEmpty(dir: string, timeoutMs: number): Promise<boolean> {
  const events = `${dir}/cgroup.events`;
  const isEmpty = () => readKeyed(events, 'populated') !== 1;
  if (isEmpty()) return Promise.resolve(true);
  return new Promise<boolean>((resolve) => {
    let done = false;
    let watcher: ReturnType<typeof watch> | undefined;
    const finish = (v: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearInterval(poll);
      watcher?.close();
      resolve(v);
    };
    const check = () => {
      if (isEmpty()) finish(true);
    };
    try {
      watcher = watch(events, check);
      watcher.on('error', () => undefined);
    } catch {
      watcher = undefined;
    }
    // Only called after a kill, so the wait is short: a 5 ms poll backs up inotify, which a
    // busy 2-core host was seen to deliver late.
    const poll = setInterval(check, watcher ? 5 : 2);
    const timer = setTimeout(() => finish(isEmpty()), timeoutMs);
    check();
  });
}

/** SIGKILL a pid only if it is still the process we read and still in `dir` (never a recycled PID). */
export function killIfMember(pid: number, dir: string, hierarchyKey: string, hierarchyRoot: string): void {
  const ref = processRef(pid);
  if (!ref) return;
  const cg = cgroupsOf(pid)?.get(hierarchyKey);
  if (cg === undefined || `${hierarchyRoot}${cg}` !== dir) return;
  if (!isSameProcess(ref)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** Checked SIGKILL of every member of `dir` and of every cgroup below it. */
export function killSubtreeMembers(dir: string, hierarchyKey: string, hierarchyRoot: string): void {
  for (const d of subtreeDeepestFirst(dir)) for (const pid of readPids(d)) killIfMember(pid, d, hierarchyKey, hierarchyRoot);
}

/**
 * Freeze, SIGKILL every member, thaw, until the cgroup and everything below it is empty (v1
 * hosts without cgroup.kill). The v1 freezer is hierarchical: freezing a group freezes its
 * sandboxes too, so the member lists read while frozen are exact and no PID in them is recycled.
 */
export async function freezerKill(freezerDir: string, freezerRoot: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (subtreePids(freezerDir).length > 0 && Date.now() < deadline) {
    write(`${freezerDir}/freezer.state`, 'FROZEN');
    // A parent reads FROZEN only once every descendant is frozen.
    await pollUntil(() => readText(`${freezerDir}/freezer.state`)?.trim() === 'FROZEN', 200, 1);
    killSubtreeMembers(freezerDir, 'freezer', freezerRoot);
    write(`${freezerDir}/freezer.state`, 'THAWED');
    await pollUntil(() => subtreePids(freezerDir).length === 0, 50, 1);
  }
}

/** Pre-5.14 cgroup2: freeze (hierarchical), SIGKILL each member of the subtree, thaw. */
export function unifiedFreezeKill(dir: string, root: string): void {
  try {
    write(`${dir}/cgroup.freeze`, '1');
    killSubtreeMembers(dir, '', root);
  } finally {
    write(`${dir}/cgroup.freeze`, '0');
  }
}
