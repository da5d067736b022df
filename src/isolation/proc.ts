// /proc helpers. A process ref is { pid, startTime }: startTime is field 22 of /proc/<pid>/stat
// (clock ticks since boot), so a PID the kernel has handed to a new process never matches an
// old ref. Everything here reads /proc synchronously: each read is one small pseudo-file.
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';

export interface ProcessRef {
  readonly pid: number;
  readonly startTime: number;
}

export interface ProcStat {
  pid: number;
  comm: string;
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  startTime: number;
}

function readOrUndefined(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * Parses one /proc/<pid>/stat line. `comm` (field 2) is in parentheses and may itself contain
 * spaces and parentheses, so the fields after it are found from the LAST ')' in the line.
 */
export function parseStat(line: string): ProcStat | undefined {
  const open = line.indexOf('(');
  const close = line.lastIndexOf(')');
  if (open < 0 || close < open) return undefined;
  const pid = Number(line.slice(0, open).trim());
  const rest = line.slice(close + 2).split(' ');
  // rest[0] is field 3 (state); field N is rest[N - 3].
  const state = rest[0];
  const ppid = Number(rest[1]);
  const pgrp = Number(rest[2]);
  const session = Number(rest[3]);
  const startTime = Number(rest[19]);
  if (!Number.isInteger(pid) || state === undefined || !Number.isInteger(ppid) || !Number.isFinite(startTime)) return undefined;
  return { pid, comm: line.slice(open + 1, close), state, ppid, pgrp, session, startTime };
}

export function readStat(pid: number): ProcStat | undefined {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  const text = readOrUndefined(`/proc/${pid}/stat`);
  return text === undefined ? undefined : parseStat(text);
}

/** The ref of a live process, or undefined if there is no such process. */
export function processRef(pid: number): ProcessRef | undefined {
  const st = readStat(pid);
  return st ? { pid: st.pid, startTime: st.startTime } : undefined;
}

function childPids(pid: number): number[] {
  const text = readOrUndefined(`/proc/${pid}/task/${pid}/children`);
  if (text === undefined) return [];
  return text
    .split(' ')
    .filter((x) => x.length > 0)
    .map(Number);
}

function pidNamespace(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/pid`);
  } catch {
    return undefined;
  }
}

/**
 * The command a captrap-launch leader runs in a pid namespace of its own (P2 in
 * captrap-launch.c): the first child of the leader's only child, the namespace's init, which
 * exits when that command exits. Undefined when `leader` is not such a leader (no pid
 * namespace: the leader is the command itself) or the command has not been forked yet.
 */
export function commandOfLeader(leader: ProcessRef): ProcessRef | undefined {
  if (!isSameProcess(leader)) return undefined;
  const kids = childPids(leader.pid);
  if (kids.length !== 1) return undefined;
  const init = readStat(kids[0]!);
  if (!init || init.ppid !== leader.pid || init.comm !== 'captrap-launch') return undefined;
  const leaderNs = pidNamespace(leader.pid);
  const initNs = pidNamespace(init.pid);
  if (leaderNs === undefined || initNs === undefined || leaderNs === initNs) return undefined;
  // The command is the init's oldest child: anything else the init has is an orphan of it.
  let first: ProcStat | undefined;
  for (const pid of childPids(init.pid)) {
    const st = readStat(pid);
    if (!st || st.ppid !== init.pid || st.state === 'Z' || st.state === 'X') continue;
    if (!first || st.startTime < first.startTime || (st.startTime === first.startTime && st.pid < first.pid)) first = st;
  }
  // The leader (and so its init) must still be the one asked about once the list is read.
  if (!first || !isSameProcess(leader)) return undefined;
  return { pid: first.pid, startTime: first.startTime };
}

/** True while `ref` names the same process it was taken from and that process has not exited (zombies count as gone). */
export function isSameProcess(ref: ProcessRef): boolean {
  const st = readStat(ref.pid);
  return st !== undefined && st.startTime === ref.startTime && st.state !== 'Z' && st.state !== 'X';
}

/** True if the process exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  const st = readStat(pid);
  return st !== undefined && st.state !== 'Z' && st.state !== 'X';
}

export function listPids(): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    const n = Number(name);
    if (Number.isInteger(n) && n > 0) out.push(n);
  }
  return out;
}

/** Every live descendant of `pid` (children, grandchildren, ...), found from the ppid links in /proc. */
export function descendants(pid: number): ProcessRef[] {
  const children = new Map<number, ProcStat[]>();
  for (const p of listPids()) {
    const st = readStat(p);
    if (!st || st.state === 'Z') continue;
    const list = children.get(st.ppid);
    if (list) list.push(st);
    else children.set(st.ppid, [st]);
  }
  const out: ProcessRef[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const next = queue.shift()!;
    for (const c of children.get(next) ?? []) {
      out.push({ pid: c.pid, startTime: c.startTime });
      queue.push(c.pid);
    }
  }
  return out;
}

/** /proc/<pid>/cgroup as hierarchy-controllers -> path ('' for the unified tree). */
export function cgroupsOf(pid: number): Map<string, string> | undefined {
  const text = readOrUndefined(`/proc/${pid}/cgroup`);
  if (text === undefined) return undefined;
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line);
    if (m) out.set(m[1]!, m[2]!);
  }
  return out;
}
