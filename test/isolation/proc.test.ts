import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { cgroupsOf, descendants, isAlive, isSameProcess, parseStat, processRef } from '../../src/isolation/proc.js';

describe('proc: process refs (guarantee 8)', () => {
  it('parses stat lines whose comm contains spaces and parentheses', () => {
    const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
    fields[0] = 'S';
    fields[19] = '987654';
    const line = `4242 (a) b (c)) ${fields.join(' ')}`;
    const st = parseStat(line);
    expect(st).toMatchObject({ pid: 4242, comm: 'a) b (c)', state: 'S', ppid: 4, startTime: 987654 });
    expect(parseStat('garbage')).toBeUndefined();
  });

  it('gives {pid, startTime} for this process, stable across reads', () => {
    const a = processRef(process.pid);
    expect(a?.pid).toBe(process.pid);
    expect(a!.startTime).toBeGreaterThan(0);
    expect(processRef(process.pid)).toEqual(a);
    expect(isSameProcess(a!)).toBe(true);
  });

  it('a ref with the same pid but another start time (a reused PID) does not match', () => {
    const me = processRef(process.pid)!;
    expect(isSameProcess({ pid: me.pid, startTime: me.startTime + 1 })).toBe(false);
    expect(isSameProcess({ pid: me.pid, startTime: me.startTime - 1 })).toBe(false);
  });

  it('a ref stops matching once its process has exited, and a missing pid has no ref', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    await new Promise((r) => child.once('spawn', r));
    const ref = processRef(child.pid!)!;
    expect(isSameProcess(ref)).toBe(true);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    expect(isSameProcess(ref)).toBe(false);
    expect(isAlive(child.pid!)).toBe(false);
    expect(processRef(0)).toBeUndefined();
    expect(processRef(2 ** 30)).toBeUndefined();
  });

  it('lists descendants through several generations, and reads /proc/<pid>/cgroup', async () => {
    const child = spawn('sh', ['-c', 'sh -c "sleep 30 & echo \\$!; wait" & wait'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const grandchild = await new Promise<number>((r) => child.stdout.once('data', (d: Buffer) => r(Number(d.toString().trim()))));
    try {
      const pids = descendants(child.pid!).map((d) => d.pid);
      expect(pids).toContain(grandchild);
      expect(pids.length).toBeGreaterThanOrEqual(2);
      expect(cgroupsOf(process.pid)?.has('')).toBe(true);
    } finally {
      for (const d of descendants(child.pid!)) if (isSameProcess(d)) process.kill(d.pid, 'SIGKILL');
      child.kill('SIGKILL');
    }
  });
});
