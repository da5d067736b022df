// `captrap serve` as a real child process: the ready line, the 0600 admin socket, graceful
// SIGTERM (exit 0, nothing left), and SIGKILL of the sidecar (agents die with it; the next start
// removes the stale cgroups and continues the audit chain).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanupStaleCgroups, removeCgroupBase } from '../../src/isolation/cgroup.js';
import { probeHost } from '../../src/isolation/host.js';
import { isSameProcess } from '../../src/isolation/proc.js';
import { readAuditRecords, verifyAuditLog } from '../../src/kernel/audit.js';
import { readEd25519PublicKey, readSecretFile } from '../../src/kernel/keys.js';
import { adminClient as admin } from './inproc.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BASE = `captrap-t-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const host = probeHost();
const dirs: string[] = [];
const children: ChildProcess[] = [];

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await Promise.all(children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once('exit', r)) : undefined)));
  // Whatever a failed test left: the owners (serve processes) are dead, so this kills and removes it.
  await cleanupStaleCgroups(host, BASE);
  removeCgroupBase(host, BASE);
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Host pids of every process in the cgroups under `base` (v1 pids hierarchy), at any depth (agents run in a leaf of their group). */
function pidsUnder(base: string): number[] {
  const out: number[] = [];
  const walk = (d: string) => {
    for (const n of readdirSync(d, { withFileTypes: true })) {
      if (!n.isDirectory()) continue;
      for (const l of readFileSync(join(d, n.name, 'cgroup.procs'), 'utf8').split('\n')) if (l.trim()) out.push(Number(l));
      walk(join(d, n.name));
    }
  };
  const d = join('/sys/fs/cgroup/pids', base);
  if (existsSync(d)) walk(d);
  return out;
}

/**
 * `escapee`: the agent also leaves a setsid escapee behind, which must die with its pid namespace.
 * 'confined' relies on the default confinement (whose namespaces include pid); 'legacy' is the
 * limits-only sidecar (`confine: false`) with an explicit `namespaces: [pid]` for the agent.
 */
function writeConfig(escapee?: 'confined' | 'legacy'): { dir: string; file: string } {
  const dir = mkdtempSync(join(tmpdir(), 'captrap-serve-'));
  dirs.push(dir);
  const file = join(dir, 'captrap.yaml');
  writeFileSync(
    file,
    [
      'stateDir: state',
      `cgroupBase: ${BASE}`,
      'audit: { flushIntervalMs: 20 }',
      'sandbox: { memory: 128M, pids: 32, timeout: 10s, killGrace: 200ms }',
      'tools:',
      "  - { name: echo, command: [echo, '{text}'], args: { text: { type: string } } }",
      'agents:',
      '  - id: sleeper',
      '    command: sh',
      // With a pid namespace, the agent also leaves a setsid escapee behind: it must die with the namespace.
      escapee ? "    args: ['-c', 'setsid sleep 300 & echo up; exec sleep 300']" : "    args: ['-c', 'echo up; exec sleep 300']",
      // Confined, a sub-list of namespaces is a weaker confinement (refused unless allowDegraded): the legacy form is unconfined.
      ...(escapee === 'legacy' ? ['    confine: false', '    namespaces: [pid]'] : []),
      '    limits: { memory: 64M, pids: 8 }',
      '    capabilities:',
      "      - { resource: { type: tool, pattern: '*' }, operations: [invoke], constraints: { allowedTools: [echo] } }",
      '',
    ].join('\n'),
  );
  return { dir, file };
}

interface Serve {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
  socket: string;
}

async function serve(file: string): Promise<Serve> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/runner/cli.ts'), 'serve', '--config', file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const t0 = Date.now();
  while (!out.includes('\n')) {
    if (child.exitCode !== null || Date.now() - t0 > 15_000) throw new Error(`serve did not become ready: ${err}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const m = /^captrap: ready (.+)\n$/.exec(out);
  if (!m) throw new Error(`unexpected stdout: ${out}`);
  return { child, stdout: () => out, stderr: () => err, exited, socket: m[1]! };
}

type Row = { id: string; pid: number; startTime: number; state: string };

function cgroupDirsOf(base: string): string[] {
  const out: string[] = [];
  for (const h of readdirSync('/sys/fs/cgroup')) {
    const d = join('/sys/fs/cgroup', h, base);
    if (existsSync(d)) for (const n of readdirSync(d, { withFileTypes: true })) if (n.isDirectory()) out.push(join(d, n.name));
  }
  return out;
}

describe('captrap serve', () => {
  it.skipIf(!host.namespaces.pid || !existsSync('/sys/fs/cgroup/pids')).each([
    // Confined (the default): launcher (host side), the namespace's init, the agent, its setsid child.
    { mode: 'confined' as const, expected: 4 },
    // Limits only, namespaces [pid]: unshare, the agent (namespace init), its setsid child.
    { mode: 'legacy' as const, expected: 3 },
  ])('with an agent pid namespace ($mode), a SIGKILLed sidecar takes the agent\'s whole tree (setsid escapees too) with it', async ({ mode, expected }) => {
    const { file } = writeConfig(mode);
    const s = await serve(file);
    let pids: number[] = [];
    const t0 = Date.now();
    while (pids.length < expected && Date.now() - t0 < 5000) {
      pids = pidsUnder(BASE);
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(pids.length).toBeGreaterThanOrEqual(expected);
    const refs = pids.map((pid) => ({ pid, startTime: Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[19]) }));
    s.child.kill('SIGKILL');
    await s.exited;
    const t1 = Date.now();
    while (refs.some(isSameProcess) && Date.now() - t1 < 1000) await new Promise((r) => setTimeout(r, 10));
    expect(refs.filter(isSameProcess)).toEqual([]);
    // The next start removes the dead sidecar's cgroups.
    const again = await serve(file);
    again.child.kill('SIGTERM');
    expect(await again.exited).toBe(0);
    expect(cgroupDirsOf(BASE)).toEqual([]);
  });

  it('exits 2 naming the file and field of a bad config', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'captrap-serve-'));
    dirs.push(dir);
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, 'agents:\n  - id: a\n    command: sh\n    limits: { memory: lots }\n');
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/runner/cli.ts'), 'serve', '--config', file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise((r) => child.once('exit', r));
    expect(code).toBe(2);
    expect(err).toContain(file);
    expect(err).toContain('agents[0].limits.memory');
  });

  it('starts, answers on a 0600 socket, and on SIGTERM exits 0 leaving no socket, cgroup or process', async () => {
    const { file } = writeConfig();
    const s = await serve(file);
    expect(statSync(s.socket).mode & 0o777).toBe(0o600);
    const a = await admin(s.socket);
    const { agents } = (await a.call('agents.list', {})) as { agents: Row[] };
    expect(agents).toHaveLength(1);
    expect(agents[0]).toMatchObject({ id: 'sleeper', state: 'running' });
    a.close();
    await new Promise((r) => setTimeout(r, 100));
    expect(s.stderr()).toContain('[sleeper] up');
    s.child.kill('SIGTERM');
    expect(await s.exited).toBe(0);
    expect(s.stdout()).toBe(`captrap: ready ${s.socket}\n`);
    expect(existsSync(s.socket)).toBe(false);
    expect(isSameProcess({ pid: agents[0]!.pid, startTime: agents[0]!.startTime })).toBe(false);
    expect(cgroupDirsOf(BASE)).toEqual([]);
  });

  it('SIGKILLed: its agents die with it; the next start removes stale cgroups and continues the audit chain', async () => {
    const { dir, file } = writeConfig();
    const s1 = await serve(file);
    const a = await admin(s1.socket);
    const { agents } = (await a.call('agents.list', {})) as { agents: Row[] };
    a.close();
    const agentRef = { pid: agents[0]!.pid, startTime: agents[0]!.startTime };
    await new Promise((r) => setTimeout(r, 200)); // past the audit flush interval: the first run's records are on disk
    s1.child.kill('SIGKILL');
    await s1.exited;
    const t0 = Date.now();
    while (isSameProcess(agentRef) && Date.now() - t0 < 1000) await new Promise((r) => setTimeout(r, 10));
    expect(isSameProcess(agentRef)).toBe(false);

    const auditDir = join(dir, 'state/audit');
    const s2 = await serve(file);
    // The agent's old cgroup is gone; only the new agent's exists.
    s2.child.kill('SIGTERM');
    expect(await s2.exited).toBe(0);
    expect(cgroupDirsOf(BASE)).toEqual([]);
    const report = verifyAuditLog(auditDir, { key: readSecretFile(join(dir, 'state/audit.key')), publicKey: readEd25519PublicKey(join(dir, 'state/audit-signing.pub')) });
    expect(report.ok).toBe(true);
    expect(report.firstSeq).toBe(1);
    // One chain holds both runs: the first agent's start and the second's.
    const starts = readAuditRecords(auditDir, (r) => r.type === 'sandbox_started' && r.details?.['kind'] === 'agent');
    expect(starts.map((r) => r.process?.pid)).toContain(agentRef.pid);
    expect(starts.length).toBe(2);
  });
});
