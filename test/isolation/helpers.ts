// Test plumbing for confined sandboxes: inside a pid namespace `$$` is not the host pid, and
// /proc/self/cgroup shows paths relative to the sandbox's cgroup namespace. These helpers read
// the truth from the host side while the sandbox runs.
import { readFileSync } from 'node:fs';
import { pidsInNamespace, sandboxPidNamespace } from '../../src/isolation/confine.js';

/** Host pids of every process in the sandbox's pid namespace, keyed by their pid inside it. */
export function namespacePids(leader: number): Map<number, number> {
  const out = new Map<number, number>();
  const ns = sandboxPidNamespace(leader);
  if (!ns) return out;
  for (const pid of pidsInNamespace(ns)) {
    try {
      const m = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      const ids = m![1]!.trim().split(/\s+/).map(Number);
      out.set(ids.at(-1)!, pid);
    } catch {
      // exited while we looked
    }
  }
  return out;
}

/**
 * Translates labelled pids printed from inside a confined sandbox (`echo name $$`) to host pids.
 * Throws if one is not found: the process must still be alive when this is called.
 */
export function toHostPids(leader: number, inside: Record<string, number>): Record<string, number> {
  const map = namespacePids(leader);
  const out: Record<string, number> = {};
  for (const [label, nsPid] of Object.entries(inside)) {
    const host = map.get(nsPid);
    if (host === undefined) throw new Error(`no process with pid ${nsPid} ('${label}') in the sandbox's pid namespace (${JSON.stringify([...map])})`);
    out[label] = host;
  }
  return out;
}

/** The cgroup path of `pid` in the v1 hierarchy holding `controller`, or in the unified tree ('' ). */
export function cgroupOf(pid: number, controller: string): string | undefined {
  const lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').trim().split('\n');
  const line = controller === '' ? lines.find((l) => l.startsWith('0::')) : lines.find((l) => (l.split(':')[1] ?? '').split(',').includes(controller));
  return line?.split(':').slice(2).join(':');
}
